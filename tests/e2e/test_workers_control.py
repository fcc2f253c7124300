"""
End-to-end: what the parent of C{twistd -n stickyproxy} with C{workers =
2} owns reaches both workers over their control channel: a drain made
through the parent's admin API, a backend its probes find down; and its
C{/metrics} counts what both workers served.

Which worker served a request is read from the access log: the parent
relays each worker's log lines as C{[worker N] ...}.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e._harness import (
    COOKIE_KEYS,
    HOST,
    IO_TIMEOUT,
    STARTUP_TIMEOUT,
    HTTPE2ETestCase,
    free_port,
)

COOKIE = "STICKY"
#: The most requests a test makes while waiting for something to happen.
MOST_REQUESTS = 400
#: An access log line of one of these tests' requests, as the parent
#: relays it: the worker, the request's number, the backend.
BOTH = {1, 2}
ACCESS = re.compile(r'\[worker (\d+)\] main \S+ "GET /c/(\d+)" \d+ (\S+)')


class WorkersControlTests(HTTPE2ETestCase):
    """
    Two workers behind one HTTP frontend with cookie persistence, in front
    of two L{tests.e2e.http_backend} processes probed over HTTP by the
    parent, which has an admin listener.
    """

    def setUp(self) -> None:
        super().setUp()
        self.backends = self.start_http_backends("b1", "b2")
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.admin = f"http://{HOST}:{self.admin_port}"
        config = "workers = 2\n" + self.http_proxy_config(
            self.port,
            {"strategy": "cookie", "name": COOKIE, "keys": list(COOKIE_KEYS)},
            health={"type": "http", "path": "/health", "interval": 0.5, "fall": 1},
        )
        self.proxy = self.start_proxy_with_admin(
            config,
            self.port,
            {"listen": f"tcp:{self.admin_port}:interface={HOST}"},
            self.admin_port,
        )
        self.wait_workers("Starting reactor", "both workers to run")
        self.sent = 0

    def wait_workers(
        self, fragment: str, what: str, since: int = 0, workers: set[int] = BOTH
    ) -> None:
        """
        Wait until C{workers} logged a line holding C{fragment} (after
        character C{since} of the parent's output).
        """

        def logged() -> bool:
            found = re.findall(
                r"\[worker (\d+)\][^\n]*" + re.escape(fragment),
                self.proxy.output()[since:],
            )
            return {int(worker) for worker in found} >= workers

        self.wait(logged, STARTUP_TIMEOUT * 2, what, self.proxy)

    def request(self, cookie: str | None = None) -> tuple[int, str, str | None]:
        """
        GET C{/c/NUMBER} on a new connection, numbered in order.

        :returns: the request's number, the backend that answered, and
            the persistence cookie it set, if any.
        """
        self.sent += 1
        if self.sent > MOST_REQUESTS:
            self.fail_with_output(f"still waiting after {MOST_REQUESTS} requests")
        connection = http.client.HTTPConnection(HOST, self.port, timeout=IO_TIMEOUT)
        try:
            headers = {"Connection": "close"}
            if cookie is not None:
                headers["Cookie"] = f"{COOKIE}={cookie}"
            connection.request("GET", f"/c/{self.sent}", headers=headers)
            response = connection.getresponse()
            response.read()
        except OSError as error:
            self.fail_with_output(f"request {self.sent} failed: {error!r}")
        finally:
            connection.close()
        if response.status != 200:
            self.fail_with_output(f"request {self.sent}: status {response.status}")
        backend = response.getheader("X-Backend") or ""
        issued = None
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name.strip() == COOKIE:
                issued = rest.split(";", 1)[0]
        return self.sent, backend, issued

    def served_by(self) -> dict[int, int]:
        """
        :returns: the worker that served each request the access log shows.
        """
        return {
            int(number): int(worker)
            for worker, number, _ in ACCESS.findall(self.proxy.output())
        }

    def from_both(self, cookie: str | None = None) -> set[str]:
        """
        Make requests until both workers have served one of them.

        :returns: the backends that answered them.
        """
        numbers: list[int] = []
        backends: set[str] = set()

        def both() -> bool:
            number, backend, _ = self.request(cookie)
            numbers.append(number)
            backends.add(backend)
            served = self.served_by()
            return {served.get(n) for n in numbers} >= {1, 2}

        self.wait(both, IO_TIMEOUT * 3, "requests served by both workers", self.proxy)
        return backends

    def cookie_for(self, wanted: str) -> str:
        """
        :returns: a persistence cookie bound to backend C{wanted}.
        """
        found: list[str] = []

        def issued() -> bool:
            _, backend, cookie = self.request()
            if backend == wanted and cookie is not None:
                found.append(cookie)
            return bool(found)

        self.wait(issued, IO_TIMEOUT * 3, f"a cookie for {wanted}", self.proxy)
        return found[0]

    def api(self, method: str, path: str, body: object = None) -> object:
        connection = http.client.HTTPConnection(
            HOST, self.admin_port, timeout=IO_TIMEOUT
        )
        try:
            data = None if body is None else json.dumps(body)
            connection.request(method, path, body=data)
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        if response.status >= 300:
            self.fail_with_output(f"{method} {path}: {response.status} {answer!r}")
        return json.loads(answer) if answer else None

    def requests_total(self) -> float:
        """
        :returns: the parent's C{/metrics} count of the frontend's requests.
        """
        connection = http.client.HTTPConnection(
            HOST, self.admin_port, timeout=IO_TIMEOUT
        )
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode("utf-8")
        finally:
            connection.close()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "stickyproxy_requests_total"
            and sample.labels.get("frontend") == "main"
        )

    def wait_counted(self) -> None:
        """
        Wait until the parent's C{/metrics} counts every request sent.
        """
        self.wait(
            lambda: self.requests_total() == self.sent,
            IO_TIMEOUT,
            f"/metrics to count {self.sent} requests",
            self.proxy,
        )

    def test_drain_through_the_api_applies_in_both_workers(self) -> None:
        """
        A drain made through the parent's API is applied by both workers:
        new clients, whichever worker takes them, never reach the drained
        backend, while clients bound to it still do, in both workers.
        """
        sticky = self.cookie_for("b1")
        mark = len(self.proxy.output())
        self.api("PUT", "/api/pools/main/backends/b1", {"admin_state": "drain"})
        self.wait_workers(
            "b1 admin state: ready -> drain", "both workers to drain", mark
        )
        self.assertEqual(self.from_both(), {"b2"})
        self.assertEqual(self.from_both(sticky), {"b1"})
        backend = self.api("GET", "/api/pools/main/backends/b1")
        assert isinstance(backend, dict)
        self.assertEqual(backend["admin_state"], "drain")

    def test_backend_down_is_avoided_by_both_workers(self) -> None:
        """
        A backend whose process stopped fails the parent's probes; both
        workers then send every client elsewhere, those bound to it too.
        """
        sticky = self.cookie_for("b1")
        mark = len(self.proxy.output())
        self.backends["b1"].stop()
        self.wait_workers(
            "b1 health state: up -> down", "both workers to see b1 down", mark
        )
        self.assertEqual(self.from_both(), {"b2"})
        self.assertEqual(self.from_both(sticky), {"b2"})

    def test_api_totals_count_every_worker(self) -> None:
        """
        The parent's admin API, which the dashboard reads (and computes its
        request rates from), counts per backend every request both workers
        served, with its persistence outcome.
        """
        self.from_both()
        cookie = self.cookie_for("b2")
        before = self.sent
        self.from_both(cookie)
        hits = self.sent - before

        def counted() -> bool:
            backends = self.api("GET", "/api/backends")
            assert isinstance(backends, list)
            totals = {b["name"]: b["traffic"] for b in backends}
            requests = sum(t["requests"] for t in totals.values())
            return requests == self.sent and totals["b2"]["outcomes"]["hit"] == hits

        self.wait(counted, IO_TIMEOUT, "the API to count every request", self.proxy)

    def test_metrics_count_every_worker(self) -> None:
        """
        The parent's C{/metrics} counts every request both workers served,
        and still counts those of a worker killed since the last scrape
        before its death.
        """
        self.from_both()
        self.wait_counted()
        pid = re.findall(r"started worker 1 \(pid (\d+)\)", self.proxy.output())[-1]
        mark = len(self.proxy.output())
        os.kill(int(pid), signal.SIGKILL)
        self.wait_workers("Starting reactor", "worker 1 to run again", mark, {1})
        self.from_both()
        self.wait_counted()
