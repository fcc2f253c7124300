"""
End-to-end: the command line without a config file, the short flags and
C{--demo}.
"""

from __future__ import annotations

import re
import socket

from tests.e2e._harness import (
    HOST,
    STARTUP_TIMEOUT,
    E2ETestCase,
    LineReader,
    connect,
    free_port,
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
