"""
End-to-end: reloading the real C{twistd} process with C{SIGHUP} while a
large download runs through it, a rejected reload, and the graceful stop
on C{SIGTERM} (and the quick one on a second C{SIGTERM}).
"""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

from tests.e2e._harness import (
    EXIT_TIMEOUT,
    HOST,
    HTTPE2ETestCase,
    Process,
    accepts,
    curl_path,
    free_port,
    http_config,
)
from tests.e2e.http_backend import body_pattern

MiB = 1 << 20
SIZE = 8 * MiB


def pattern_digest(size: int) -> str:
    """
    :returns: the SHA-256 (hex) of what C{/bytes/SIZE} serves.
    """
    digest = hashlib.sha256()
    for piece in body_pattern(size):
        digest.update(piece)
    return digest.hexdigest()


class LifecycleTests(HTTPE2ETestCase):
    """
    An HTTP frontend without persistence (round-robin), in front of
    L{tests.e2e.http_backend} processes.
    """

    def config(self, names: list[str], **options: object) -> str:
        """
        The proxy's config with the backends C{names} (on the port the
        proxy uses).
        """
        ports = {name: self.backends[name].port for name in names}
        text = http_config(
            self.port, ports, frontend={"debug_header": "X-Sticky-Debug"}
        )
        extra = "".join(f"{k} = {v!r}\n" for k, v in options.items())
        return extra + text

    def start(self, names: list[str], **options: object) -> None:
        self.backends = self.start_http_backends("b1", "b2", "b3")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proxy = self.start_proxy_with_config(
            self.config(names, **options), self.port
        )
        self.served("/")  # the reactor runs, with its signal handlers

    def download(self, rate: int, size: int = SIZE) -> tuple[Process, Path]:
        """
        Start curl downloading C{size} bytes through the proxy, into a file,
        from a backend that sends them at C{rate} bytes a second: the proxy
        streams them all along.

        :returns: the curl process and the file.
        """
        executable = curl_path()
        if executable is None:
            self.fail("no curl on PATH (apt-get install curl)")
        target = self.workdir / "download"
        argv = [executable, "-sS", "--noproxy", "*", "--max-time", "120"]
        argv += ["-o", str(target), f"{self.url}/bytes/{size}?rate={rate}"]
        process = self.start_process("curl", argv)
        self.wait(
            lambda: target.exists() and target.stat().st_size > 0,
            20,
            "the download to get going",
            process,
        )
        return process, target

    def assert_complete(self, curl: Process, target: Path, size: int = SIZE) -> None:
        """
        curl ends well, with every byte, intact.
        """
        status = curl.wait_exit(120)
        self.assertEqual(status, 0, curl.output())
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        self.assertEqual((target.stat().st_size, digest), (size, pattern_digest(size)))

    def served_by(self, count: int) -> list[str]:
        """
        Send C{count} requests, each on a new connection.

        :returns: the backends that answered them.
        """
        return [self.served("/").backend or "" for _ in range(count)]

    def hup(self, config: str, outcome: str) -> str:
        """
        Write C{config} over the proxy's file, send C{SIGHUP}, and wait for
        the log line that starts with C{outcome}.

        :returns: that line.
        """
        since = len(self.proxy.output())
        self.write_config(config)
        self.proxy.send_signal(signal.SIGHUP)
        found = self.wait_for_line(self.proxy, f"{outcome}.*$", 20, since)
        return found.group(0)

    def test_hup_during_download(self) -> None:
        """
        C{SIGHUP} with b2 removed and b3 added takes effect at once (new
        requests go to b1 and b3, none to b2), on the same socket, while an
        8 MiB download through the proxy runs on and completes intact.
        """
        self.start(["b1", "b2"])
        self.assertEqual(set(self.served_by(4)), {"b1", "b2"})
        curl, target = self.download(MiB)  # 8 s
        line = self.hup(self.config(["b1", "b3"]), "reloaded: ")
        self.assertIn("backend b3 added", line)
        self.assertIn("b2", line)
        self.assertFalse(curl.exited(), "the download ended before the reload")
        self.assertEqual(set(self.served_by(6)), {"b1", "b3"})
        self.assert_complete(curl, target)
        self.assertNotIn("Traceback", self.proxy.output())

    def test_hup_bad_config(self) -> None:
        """
        A broken file on C{SIGHUP} is rejected with one line naming the
        mistake, and the proxy serves on as before.
        """
        self.start(["b1", "b2"])
        broken = self.config(["b1", "b2"]).replace(
            f"{HOST}:{self.backends['b2'].port}", "nope:"
        )
        line = self.hup(broken, "reload rejected")
        self.assertIn("pool.main.backend[1].address", line)
        self.assertEqual(self.proxy.output().count("reload rejected"), 1)
        self.assertEqual(set(self.served_by(4)), {"b1", "b2"})
        self.assertNotIn("Traceback", self.proxy.output())

    def test_term_lets_download_finish(self) -> None:
        """
        C{SIGTERM} during a slow download: the proxy stops accepting at
        once, lets the download finish intact, then exits.
        """
        self.start(["b1"])
        curl, target = self.download(2 * MiB)  # 4 s
        self.proxy.send_signal(signal.SIGTERM)
        self.wait_for_line(self.proxy, "shutting down: waiting up to 30 s for 1", 10)
        self.wait(lambda: not accepts(self.port), 10, "the proxy to stop accepting")
        self.assertFalse(self.proxy.exited(), "the proxy did not wait")
        self.assert_complete(curl, target)
        self.proxy.wait_exit(EXIT_TIMEOUT)
        self.assertNotIn("cutting off", self.proxy.output())

    def test_second_term_stops_at_once(self) -> None:
        """
        A second C{SIGTERM} while a slow download is waited for cuts it off
        and the proxy exits at once.
        """
        self.start(["b1"], shutdown_timeout=600)
        curl, target = self.download(MiB // 4)  # 32 s
        self.proxy.send_signal(signal.SIGTERM)
        self.wait_for_line(self.proxy, "shutting down: waiting up to 600 s", 10)
        self.proxy.send_signal(signal.SIGTERM)
        self.proxy.wait_exit(EXIT_TIMEOUT)
        self.assertIn("received SIGTERM again: stopping at once", self.proxy.output())
        self.assertNotEqual(curl.wait_exit(EXIT_TIMEOUT), 0)
        self.assertLess(target.stat().st_size, SIZE)
