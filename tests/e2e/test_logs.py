"""
End-to-end: the access log of an HTTP frontend written to a file and
reopened on C{kill -USR1} after logrotate renamed it, and the connection
log of a TCP frontend on standard output.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.e2e._harness import (
    HOST,
    IO_TIMEOUT,
    E2ETestCase,
    Process,
    free_port,
    frontend_config,
    http_config,
)

#: The start of a line of the combined log format, up to the request.
COMBINED = r"^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "


class LogFileTests(E2ETestCase):
    def wait_for_file_line(
        self, path: Path, pattern: str, proxy: Process
    ) -> re.Match[str]:
        """
        Wait until a line of the file at C{path} matches C{pattern}.
        """

        def search() -> re.Match[str] | None:
            text = path.read_text(encoding="utf-8") if path.exists() else ""
            return re.search(pattern, text, re.MULTILINE)

        return self.wait(
            search, IO_TIMEOUT, f"a line matching {pattern!r} in {path}", proxy
        )

    def test_reopened_on_sigusr1(self) -> None:
        """
        Requests are logged in the combined format (plus frontend, backend,
        strategy, outcome, duration and how they ended) to the file
        C{access_log} names; after the file is renamed, C{kill -USR1} makes
        the proxy write the next lines to a new file of that name, and none
        to the renamed one.
        """
        backend = self.start_http_backend("b1")
        port = free_port()
        log = self.workdir / "access.log"
        config = http_config(
            port,
            {"b1": backend.port},
            frontend={"access_log": str(log)},
        )
        proxy = self.start_proxy_with_config(config, port)
        url = f"http://{HOST}:{port}"
        self.curl(f"{url}/before", "-A", "e2e-agent", "-e", "http://referrer/")
        self.wait_for_file_line(
            log,
            COMBINED + r'"GET /before HTTP/1\.1" 200 \d+ "http://referrer/" '
            r'"e2e-agent" main b1 balancer new \d+ms ok$',
            proxy,
        )
        rotated = log.with_name("access.log.1")
        log.rename(rotated)
        since = len(proxy.output())
        proxy.send_signal(signal.SIGUSR1)
        self.wait_for_line(
            proxy, r"reopened the log files: .*access\.log", IO_TIMEOUT, since
        )
        self.curl(f"{url}/after")
        self.wait_for_file_line(log, COMBINED + r'"GET /after HTTP/1\.1" 200 ', proxy)
        old = rotated.read_text(encoding="utf-8")
        self.assertIn("/before", old)
        self.assertNotIn("/after", old)
        self.assertNotIn("/before", log.read_text(encoding="utf-8"))
        self.assertFalse(proxy.exited(), "SIGUSR1 stopped the proxy")

    def test_connection_log_on_stdout(self) -> None:
        """
        A TCP frontend with C{access_log = "stdout"} writes one line per
        connection when it closes: client, time, frontend, backend,
        strategy, outcome, bytes each way, duration and how it ended.
        """
        backend = self.start_backend("b1")
        port = free_port()
        config = frontend_config(
            port, {"b1": backend.port}, frontend={"access_log": "stdout"}
        )
        proxy = self.start_proxy_with_config(config, port)
        self.greeting(port)
        self.wait_for_line(
            proxy,
            COMBINED + r"main b1 balancer new in=\d+ out=[1-9]\d* \d+ms "
            r"(client|backend)-closed$",
            IO_TIMEOUT,
        )
