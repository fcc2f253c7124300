"""
End-to-end: what each timeout bounds, over real sockets against the real
C{twistd} process (issue 8, defect 4: slow request bodies and silent
clients of C{haproxy:} listeners).
"""

from __future__ import annotations

import re
import select
import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e._harness import (
    HOST,
    IO_TIMEOUT,
    E2ETestCase,
    connect,
    free_port,
    http_config,
)

#: How many slow clients at once.
CLIENTS = 20
#: The body deadline the tests configure, in seconds.
TIMEOUT_BODY = 2.0
#: How late past its bound an answer may come, on a loaded machine.
SLACK = 3.0


def trickle_body(
    port: int, length: int = 1000, every: float = 0.2
) -> tuple[float, bytes]:
    """
    POST a C{length}-byte body 5 bytes at a time, every C{every} seconds,
    until the proxy answers or closes.

    :returns: how long that took, and what the proxy answered.
    """
    start = time.monotonic()
    answer = b""
    with connect(port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length
        )
        sent = 0
        while time.monotonic() - start < IO_TIMEOUT:
            readable, _, _ = select.select([sock], [], [], every)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            elif sent < length and not answer:
                try:
                    sock.sendall(b"xxxxx")
                except OSError:
                    break
                sent += 5
    return time.monotonic() - start, answer


class SlowBodyTests(E2ETestCase):
    def test_trickled_bodies_get_408(self) -> None:
        """
        20 clients that each send a body a few bytes at a time get C{408}
        within C{timeout_body} (and the little credit their bytes earn), and
        the backend sees every one of their connections closed by the proxy
        rather than kept for later requests.
        """
        backend = self.start_http_backend("b1", "--log-connections")
        port = free_port()
        config = http_config(
            port,
            {"b1": backend.port},
            frontend={"timeout_body": TIMEOUT_BODY, "body_min_rate": 500},
        )
        self.start_proxy_with_config(config, port)
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda _: trickle_body(port), range(CLIENTS)))
        for elapsed, answer in results:
            if not answer.startswith(b"HTTP/1.1 408 "):
                self.fail_with_output(f"a slow client got {answer[:200]!r}")
            self.assertIn(b"the request body took too long", answer)
            # 25 bytes a second earn 0.05 s a second at 500 bytes a second.
            self.assertGreaterEqual(elapsed, TIMEOUT_BODY)
            self.assertLess(elapsed, TIMEOUT_BODY * 1.05 + SLACK, results)

        def closed() -> bool:
            output = backend.output()
            opened = set(re.findall(r"connection from (\d+) opened", output))
            gone = set(re.findall(r"connection from (\d+) closed", output))
            return len(opened) == CLIENTS and gone == opened

        self.wait(closed, IO_TIMEOUT, f"the backend to see {CLIENTS} closed", backend)


class ProxyHeaderTimeoutTests(E2ETestCase):
    def test_silent_client_closed(self) -> None:
        """
        On a C{haproxy:} listener, a client that never sends its PROXY
        header is closed after C{timeout_proxy_header}, while one that
        sends it in time is served.
        """
        backend = self.start_http_backend("b1")
        port = free_port()
        config = http_config(
            port,
            {"b1": backend.port},
            frontend={
                "listen": f"haproxy:tcp:{port}:interface={HOST}",
                "timeout_proxy_header": 1.0,
            },
        )
        self.start_proxy_with_config(config, port)
        silent = [connect(port) for _ in range(5)]
        start = time.monotonic()
        with connect(port) as sock:
            sock.sendall(
                b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\n"
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        for sock in silent:
            with sock:
                self.assertEqual(sock.recv(1), b"")  # closed, with nothing said
        self.assertLess(time.monotonic() - start, 1.0 + SLACK)


class IdleSweepTests(E2ETestCase):
    def test_idle_backend_connections_swept_after_a_burst(self) -> None:
        """
        After a burst of keep-alive traffic (issue 8, defect 9: the sweep of
        idle backend connections once died on a negative delay and was never
        rescheduled), every pooled backend connection is closed by the
        proxy within C{keepalive_timeout}, and the proxy logs nothing
        critical or unhandled.
        """
        backend = self.start_http_backend("b1", "--log-connections")
        port = free_port()
        config = http_config(
            port, {"b1": backend.port}, pool={"keepalive_timeout": 1.0}
        )
        proxy = self.start_proxy_with_config(config, port)

        def burst(_: int) -> None:
            with connect(port) as sock:
                reader = sock.makefile("rb")
                for _ in range(50):
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    length = 0
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    reader.read(length)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(burst, range(8)))

        def all_closed() -> bool:
            output = backend.output()
            opened = set(re.findall(r"connection from (\d+) opened", output))
            gone = set(re.findall(r"connection from (\d+) closed", output))
            return bool(opened) and gone == opened

        self.wait(all_closed, IO_TIMEOUT, "the idle backend connections to go", proxy)
        log = proxy.output()
        for bad in ("critical", "Unhandled", "Traceback"):
            if bad in log:
                self.fail_with_output(f"the proxy logged {bad!r}")
