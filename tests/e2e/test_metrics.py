"""
End-to-end: the real proxy's Prometheus metrics at C{/metrics} on its admin
listener, after real traffic through an HTTP and a TCP frontend, read with
curl and parsed with C{prometheus_client}'s own parser.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e._harness import (
    COOKIE_KEYS,
    HOST,
    IO_TIMEOUT,
    HTTPE2ETestCase,
    connect,
    free_port,
    frontend_config,
)

COOKIE = "STICKY"
#: What each TCP client sends before it half-closes.
SENT = b"x" * 1000


class Scrape:
    """
    One parsed exposition: sample values by name and labels.
    """

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def total(self, name: str, **labels: str) -> float:
        """
        The sum of the samples C{name} whose labels include C{labels}.
        """
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and labels.items() <= sample_labels.items()
        )

    def series(self, name: str) -> list[dict[str, str]]:
        """
        The label sets of the samples C{name}.
        """
        return [labels for sample, labels, _ in self.samples if sample == name]


class MetricsTests(HTTPE2ETestCase):
    """
    C{[admin] listen}: an HTTP frontend C{main} with cookie persistence and
    HTTP health probes in front of two HTTP backends, and a TCP frontend
    C{l4} in front of two TCP backends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.backends = self.start_http_backends("b1", "b2")
        tcp = self.start_backends("t1", "t2")
        self.port, self.tcp_port, self.admin_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        self.url = f"http://{HOST}:{self.port}"
        config = self.http_proxy_config(
            self.port,
            {"strategy": "cookie", "name": COOKIE, "keys": list(COOKIE_KEYS)},
            health={"type": "http", "path": "/health", "interval": 0.5},
        )
        config += frontend_config(
            self.tcp_port, {name: b.port for name, b in tcp.items()}, name="l4"
        )
        self.proxy = self.start_proxy_with_admin(
            config,
            self.port,
            {"listen": f"tcp:{self.admin_port}:interface={HOST}"},
            self.admin_port,
        )

    def scrape(self) -> Scrape:
        result = self.curl(f"http://{HOST}:{self.admin_port}/metrics")
        if result.status != 200:
            self.fail_with_output("GET /metrics:\n" + result.describe())
        content_type = result.header("content-type") or ""
        self.assertTrue(content_type.startswith("text/plain"), content_type)
        return Scrape(result.body.decode("utf-8"))

    def tcp_exchange(self) -> int:
        """
        Send L{SENT} through the TCP frontend, half-close, and read the
        backend's whole reply.

        :returns: how many bytes came back.
        """
        received = 0
        with connect(self.tcp_port) as sock:
            sock.sendall(SENT)
            sock.shutdown(socket.SHUT_WR)
            while data := sock.recv(65536):
                received += len(data)
        return received

    def wait_scrape(self, condition: Callable[[Scrape], bool], what: str) -> Scrape:
        """
        Scrape until C{condition} holds of the scrape (events of what just
        happened may be on their way), and return that scrape.
        """
        last: list[Scrape] = []

        def reached() -> bool:
            last[:] = [self.scrape()]
            return condition(last[0])

        self.wait(reached, IO_TIMEOUT, what, self.proxy)
        return last[0]

    def test_metrics_after_traffic(self) -> None:
        """
        After cookie clients, a forged cookie and TCP connections, the
        exposition parses, and its families say what happened: every
        backend up and ready, requests by backend and code, persistence
        hits, new clients and the invalid cookie, the request-time
        histogram, TCP connections and bytes each way, and health probes.
        """
        jar = self.jar()
        first = self.served("/", *jar)
        for _ in range(4):
            self.assertEqual(self.served("/", *jar).backend, first.backend)
        self.served("/")
        self.served("/", "-H", f"Cookie: {COOKIE}=forged")
        replies = [self.tcp_exchange() for _ in range(3)]

        tcp_bytes = "stickyproxy_tcp_bytes_total"
        requests = "stickyproxy_requests_total"
        scrape = self.wait_scrape(
            lambda s: (
                s.total(tcp_bytes, frontend="l4", direction="in") == 3000
                and s.total(requests, frontend="main") == 7
            ),
            "the seven requests, and the bytes of the three TCP connections",
        )
        self.assertEqual(
            scrape.total(tcp_bytes, frontend="l4", direction="out"),
            sum(replies),
        )
        self.assertEqual(
            scrape.total("stickyproxy_tcp_connections_total", frontend="l4"), 3
        )
        up = {
            (labels["pool"], labels["backend"]): value
            for name, labels, value in scrape.samples
            if name == "stickyproxy_backend_up"
        }
        self.assertEqual(
            up,
            {("main", "b1"): 1, ("main", "b2"): 1, ("l4", "t1"): 1, ("l4", "t2"): 1},
        )
        for backend in ("b1", "b2", "t1", "t2"):
            self.assertEqual(
                scrape.total(
                    "stickyproxy_backend_admin_state", backend=backend, state="ready"
                ),
                1,
            )
            self.assertEqual(
                scrape.total(
                    "stickyproxy_backend_admin_state", backend=backend, state="maint"
                ),
                0,
            )
        self.assertEqual(scrape.total(requests, frontend="main", code="200"), 7)
        # The cookie client's five, and perhaps the two new clients.
        self.assertGreaterEqual(
            scrape.total(requests, frontend="main", backend=first.backend or "?"), 5
        )
        decisions = "stickyproxy_persistence_decisions_total"
        self.assertEqual(
            scrape.total(decisions, frontend="main", strategy="cookie", outcome="hit"),
            4,
        )
        self.assertEqual(
            scrape.total(decisions, frontend="main", strategy="", outcome="new"), 2
        )
        self.assertEqual(
            scrape.total(
                decisions, frontend="main", strategy="cookie", outcome="invalid"
            ),
            1,
        )
        self.assertEqual(scrape.total(decisions, frontend="l4"), 3)
        self.assertEqual(
            scrape.total("stickyproxy_request_duration_seconds_count", frontend="main"),
            7,
        )
        self.assertEqual(
            scrape.total("stickyproxy_backend_active_connections", pool="main"), 0
        )
        # Probes every half second: each backend has had some by now.
        scrape = self.wait_scrape(
            lambda s: all(
                s.total("stickyproxy_probe_duration_seconds_count", backend=b) > 0
                for b in ("b1", "b2")
            ),
            "a probe of each HTTP backend",
        )
        self.assertEqual(scrape.total("stickyproxy_probe_failures_total"), 0)
        self.assertEqual(
            sorted(
                labels["backend"]
                for labels in scrape.series("stickyproxy_probe_failures_total")
            ),
            ["b1", "b2"],
        )
