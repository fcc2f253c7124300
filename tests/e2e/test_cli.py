"""
End-to-end: the command line without a config file, the short flags and
C{--demo}; C{--check}, C{--version}, flag errors and C{--log-format json}.
"""

from __future__ import annotations

import json
import re
import socket

from stickyproxy import __version__

from tests.e2e._harness import (
    CONFIG_ERROR,
    HOST,
    IO_TIMEOUT,
    STARTUP_TIMEOUT,
    E2ETestCase,
    LineReader,
    connect,
    free_port,
    http_config,
    loopback_sources,
    require_loopback_aliases,
)


class ShortFlagsTests(E2ETestCase):
    """
    C{--mode}, C{--listen}, C{--backend} and C{--persistence} describe one
    frontend without a config file.
    """

    def test_short_flags_proxy_and_stick(self) -> None:
        """
        C{--mode tcp --listen ... --backend a=... --backend b=...
        --persistence source-ip} proxies to the named backends, each source
        address keeps its backend, and different sources use both.
        """
        require_loopback_aliases()
        a, b = self.start_backend("a"), self.start_backend("b")
        port = free_port()
        self.start_proxy(
            "--mode",
            "tcp",
            "--listen",
            f"tcp:{port}:interface={HOST}",
            "--backend",
            f"a={HOST}:{a.port}",
            "--backend",
            f"b={HOST}:{b.port}",
            "--persistence",
            "source-ip",
            port=port,
        )
        sources = loopback_sources(2, 21)
        first = {source: self.greeting(port, source) for source in sources}
        again = {source: self.greeting(port, source) for source in sources}
        self.assertEqual(set(first.values()), {"a", "b"}, first)
        self.assertEqual(again, first)
        repeated = [self.greeting(port) for _ in range(4)]
        self.assertEqual(len(set(repeated)), 1, repeated)
        self.assertIn(repeated[0], {"a", "b"})


class DemoTests(E2ETestCase):
    """
    C{--demo} runs three backends inside the proxy's process.
    """

    GREETING = re.compile(r"^hello (\S+), this is backend (demo\d+)$")

    def test_demo_greets_from_one_backend(self) -> None:
        """
        With C{--demo --listen ...}, every connection from one source is
        greeted by the same demo backend (which names the client address it
        learnt from the PROXY header), and the log names the host:port to
        try.
        """
        port = free_port()
        proxy = self.start_proxy(
            "--demo", "--listen", f"tcp:{port}:interface={HOST}", port=port
        )
        lines = [self.greeting(port) for _ in range(5)]
        matches = [self.GREETING.match(line) for line in lines]
        if not all(matches):
            self.fail_with_output(f"unexpected demo greetings: {lines}")
        self.assertEqual(len(set(lines)), 1, lines)
        self.assertEqual(matches[0].group(1), HOST)  # type: ignore[union-attr]
        where = f"{HOST}:{port}"
        self.wait(
            lambda: where in proxy.output(),
            STARTUP_TIMEOUT,
            f"a hint naming {where} in the demo's log",
            proxy,
        )

    def test_demo_names_other_sources(self) -> None:
        """
        A demo client from another source address is greeted with that
        address, so the demo backends see the real client.
        """
        require_loopback_aliases()
        port = free_port()
        self.start_proxy(
            "--demo", "--listen", f"tcp:{port}:interface={HOST}", port=port
        )
        line = self.greeting(port, "127.0.0.7")
        match = self.GREETING.match(line)
        if match is None:
            self.fail_with_output(f"unexpected demo greeting: {line!r}")
        self.assertEqual(match.group(1), "127.0.0.7")

    def test_demo_echo_after_half_close(self) -> None:
        """
        C{printf 'ping\\n' | nc HOST PORT}: a client that sends a line and
        shuts its sending side at once gets the greeting and the echo, every
        time (the demo backend used to drop the echo on the half-close).
        """
        port = free_port()
        self.start_proxy(
            "--demo", "--listen", f"tcp:{port}:interface={HOST}", port=port
        )
        for attempt in range(20):
            with connect(port) as sock:
                sock.sendall(b"ping\n")
                sock.shutdown(socket.SHUT_WR)
                lines = b"".join(LineReader(sock).chunks()).decode().splitlines()
            if len(lines) != 2 or not lines[1].endswith(": ping"):
                self.fail_with_output(f"attempt {attempt}: got {lines!r}")
            self.assertRegex(lines[0], self.GREETING)


class CommandLineTests(E2ETestCase):
    """
    What an operator types before starting the proxy, and how it logs.
    """

    def lines(self, *args: str) -> tuple[int, list[str]]:
        """
        Run C{twistd -n stickyproxy ARGS} to its end.

        :returns: its exit status and its output lines.
        """
        proxy = self.run_proxy_to_exit(*args)
        status = proxy.returncode
        assert status is not None
        return status, proxy.output().splitlines()

    def config(self, port: int, address: str) -> str:
        """
        A cookie-persistence HTTP config whose only backend is C{address}.
        """
        text = http_config(port, {"b1": 1}, persistence={"strategy": "cookie"})
        return self.write_config(text.replace(f"{HOST}:1", address))

    def test_check(self) -> None:
        """
        C{--check} of a good config prints one line and exits with 0,
        without listening or writing anything (here, the cookie secret the
        proxy would make in the state directory); of a bad one, the one-line
        error and 1.
        """
        port = free_port()
        good = self.config(port, f"{HOST}:8001")
        status, lines = self.lines("--check", "--config", good)
        self.assertEqual(
            (status, lines),
            (
                0,
                [
                    f"stickyproxy: configuration OK: {good} (1 frontend, 1 pool, 1 backend)"
                ],
            ),
        )
        self.assertFalse((self.workdir / "stickyproxy.key").exists())
        bad = self.config(port, f"{HOST}:99999")
        status, lines = self.lines("--check", "--config", bad)
        self.assertEqual(status, 1, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(
            lines[0].startswith(f"{CONFIG_ERROR}pool.main.backend[0].address: "),
            lines,
        )

    def test_version(self) -> None:
        """
        C{--version} prints stickyproxy's version and exits with 0.
        """
        status, lines = self.lines("--version")
        self.assertEqual(status, 0, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"stickyproxy {__version__} ("), lines)

    def test_flag_mistakes(self) -> None:
        """
        A bad value and an unknown flag each print one line naming the flag
        (no usage text) and exit non-zero; C{--help} prints the usage.
        """
        for args, flag in [
            (["--balance", "nope", "--config", "x.toml"], "--balance"),
            (["--no-such-flag"], "--no-such-flag"),
        ]:
            status, lines = self.lines(*args)
            self.assertNotEqual(status, 0, lines)
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(lines[0].startswith("stickyproxy: "), lines)
            self.assertIn(flag, lines[0])
        status, lines = self.lines("--help")
        self.assertEqual(status, 0, lines)
        self.assertIn("source-ip", "\n".join(lines))

    def test_json_logs(self) -> None:
        """
        With C{--log-format json}, every line the proxy writes is one JSON
        object, its own lines and Twisted's alike, with the message as text.
        """
        backend = self.start_http_backend("b1")
        port = free_port()
        proxy = self.start_proxy(
            "--log-format",
            "json",
            "--config",
            self.config(port, f"{HOST}:{backend.port}"),
            port=port,
        )
        self.curl(f"http://{HOST}:{port}/")
        self.wait_for_line(proxy, "cookie keys: made a new secret", IO_TIMEOUT)
        proxy.stop()
        records = []
        for line in proxy.output().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                self.fail_with_output(f"not a JSON line: {line!r}")
        texts = [record["log_text"] for record in records]
        self.assertTrue(any(f"starting on {port}" in text for text in texts), texts)
        secret = [
            r for r in records if r.get("log_format", "").startswith("cookie keys")
        ]
        self.assertEqual(secret[0]["path"], str(self.workdir / "stickyproxy.key"))
        self.assertEqual({r["log_level"] for r in secret}, {"info"})
