"""
End-to-end: two real proxies sharing a real C{redis-server}: an admin
change made through one proxy's API is shown and applied by the other,
both keep serving while the store is away and catch up when it is back,
and C{leastsessions} fills a newly added backend with new sessions first
on both, from the shared session counts.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.e2e._harness import (
    COOKIE_KEYS,
    DEBUG_HEADER,
    HOST,
    HTTPE2ETestCase,
    HTTPResult,
    Process,
    free_port,
    http_config,
    toml_table,
)
from tests.e2e._redis import RedisServer, start_redis, store_config

#: Generous bounds for what the proxies do on their own.
SETTLES = 30.0
#: The most requests a test makes while waiting for both workers to serve.
MOST_REQUESTS = 400
#: An access log line of a request to C{/n/NUMBER}, as the parent of
#: workers relays it: the worker and the request's number.
ACCESS = re.compile(r'\[worker (\d+)\] main \S+ "GET /n/(\d+)"')


class Proxy:
    """
    One of the two proxies: its process, where it serves, and its admin API.
    """

    def __init__(self, name: str, process: Process, port: int, admin: int) -> None:
        self.name = name
        self.process = process
        self.url = f"http://{HOST}:{port}"
        self.admin = f"http://{HOST}:{admin}"


class SeveralProxiesTests(HTTPE2ETestCase):
    """
    Proxies A and B, with the same configuration but their listeners, in
    front of the same backends, sharing one C{redis-server}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.redis: RedisServer = start_redis(self)
        self.backends = {
            name: self.start_http_backend(name) for name in ("b1", "b2", "b3")
        }
        self.jars = 0

    def start_proxies(self, names: tuple[str, ...] = ("b1", "b2"), **pool: Any) -> None:
        self.a = self.start_sharing_proxy("a", names, pool)
        self.b = self.start_sharing_proxy("b", names, pool)

    def start_sharing_proxy(
        self,
        name: str,
        names: tuple[str, ...],
        pool: dict[str, Any],
        persistence: dict[str, Any] | None = None,
        workers: int = 1,
    ) -> Proxy:
        port, admin = free_port(), free_port()
        config = f"workers = {workers}\n" + http_config(
            port,
            {n: self.backends[n].port for n in names},
            persistence=persistence
            or {"strategy": "cookie", "keys": list(COOKIE_KEYS)},
            frontend={"debug_header": DEBUG_HEADER, "access_log": True},
            pool=pool or None,
        )
        config += "\n".join(toml_table("admin", {"listen": f"tcp:{admin}"}))
        config += "\n" + store_config(self.redis.port)
        process = self.start_proxy_with_config(
            config + "\n", port, config_name=f"{name}.toml"
        )
        proxy = Proxy(name, process, port, admin)
        self.wait_for_line(process, "store connected", SETTLES)
        return proxy

    # Talking to the proxies

    def api(self, proxy: Proxy, method: str, path: str, body: Any = None) -> Any:
        """
        One request to a proxy's admin API, failing unless it succeeds.
        """
        args = ["-X", method]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        result = self.curl(proxy.admin + path, *args)
        if result.status not in (200, 201, 204):
            self.fail_with_output(
                f"{method} {path} on {proxy.name} answered {result.status}: "
                f"{result.body!r}"
            )
        return json.loads(result.body) if result.body else None

    def workers_serve(self, proxy: Proxy, *args: str) -> list[HTTPResult]:
        """
        Requests through C{proxy} (a parent of two workers), each on a new
        connection, until both workers served one.

        :returns: every request's result.
        """
        results: list[HTTPResult] = []
        while len(results) < MOST_REQUESTS:
            number = len(results)
            result = self.curl(f"{proxy.url}/n/{number}", *args)
            if result.status != 200 or result.backend not in self.backends:
                self.fail_with_output(f"/n/{number} failed: {result.describe()}")
            results.append(result)
            served = ACCESS.findall(proxy.process.output())
            if {worker for worker, n in served if int(n) < len(results)} == {"1", "2"}:
                return results
        self.fail_with_output(f"both workers did not serve {MOST_REQUESTS} requests")

    def backend(self, proxy: Proxy, name: str) -> dict[str, Any]:
        for found in self.api(proxy, "GET", "/api/backends"):
            if found["name"] == name:
                return found  # type: ignore[no-any-return]
        self.fail_with_output(f"{proxy.name} has no backend {name}")

    def request(self, proxy: Proxy, *args: str) -> HTTPResult:
        """
        A request through C{proxy}, failing unless a backend answered 200.
        """
        result = self.curl(proxy.url + "/", *args)
        if result.status != 200 or result.backend not in self.backends:
            self.fail_with_output(
                f"GET / through {proxy.name} was not served: {result.describe()}"
            )
        return result

    def new_client(self) -> tuple[str, str, str, str]:
        """
        The curl options of a fresh cookie jar: a new client.
        """
        self.jars += 1
        return self.jar(f"client{self.jars}")

    def client_on(self, proxy: Proxy, backend: str) -> tuple[str, str, str, str]:
        """
        A client with a session on C{backend}, made through C{proxy}.
        """
        for _ in range(20):
            jar = self.new_client()
            if self.request(proxy, *jar).backend == backend:
                return jar
        self.fail_with_output(f"no new client of {proxy.name} went to {backend}")

    # The tests

    def test_drain_reaches_the_other_proxy(self) -> None:
        """
        A drain with a deadline made through A's API is shown by B's API
        and dashboard, with the sessions both proxies gave the backend, and
        applied by B: new clients of B avoid the backend, its sticky
        clients stay.
        """
        self.start_proxies()
        sticky = self.client_on(self.b, "b1")
        self.client_on(self.a, "b1")
        self.wait(
            lambda: self.backend(self.b, "b1")["sessions"] >= 2,
            SETTLES,
            "B to count the sessions A and B gave b1",
        )
        self.api(
            self.a,
            "PUT",
            "/api/pools/main/backends/b1",
            {"admin_state": "drain", "deadline": 600},
        )
        seen = self.wait(
            lambda: (
                (found := self.backend(self.b, "b1"))["admin_state"] == "drain"
                and found
            ),
            SETTLES,
            "B to show b1 draining",
        )
        deadline = self.backend(self.a, "b1")["drain"]["deadline"]
        self.assertEqual(seen["drain"]["deadline"], deadline)
        self.assertGreaterEqual(seen["drain"]["sessions_left"], 2)
        page = self.curl(self.b.admin + "/").body.decode()
        self.assertRegex(page, r'data-backend="b1"[^>]*data-admin="drain"')
        for _ in range(6):
            self.assertEqual(self.request(self.b, *self.new_client()).backend, "b2")
        for _ in range(3):
            self.assertEqual(self.request(self.b, *sticky).backend, "b1")
        self.assertIn("peer", self.b.process.output())

    def test_store_lost_and_back(self) -> None:
        """
        With C{redis-server} killed, both proxies keep serving (no 5xx); a
        change made on A meanwhile reaches B once a new server is up on the
        same port.
        """
        self.start_proxies()
        clients = [
            (proxy, self.client_on(proxy, backend))
            for proxy in (self.a, self.b)
            for backend in ("b1", "b2")
        ]
        self.redis.kill()
        for proxy in (self.a, self.b):
            self.wait_for_line(proxy.process, "store lost", SETTLES)
        for proxy, jar in clients:
            for _ in range(3):
                self.request(proxy, *jar)
        self.api(self.a, "PUT", "/api/pools/main/backends/b2", {"admin_state": "maint"})
        self.assertEqual(self.backend(self.b, "b2")["admin_state"], "ready")
        for _ in range(4):
            self.request(self.a, *self.new_client())
            self.request(self.b, *self.new_client())
        self.redis = start_redis(self, self.redis.port)
        for proxy in (self.a, self.b):
            self.wait_for_line(proxy.process, "store back after", SETTLES)
        self.wait(
            lambda: self.backend(self.b, "b2")["admin_state"] == "maint",
            SETTLES,
            "B to apply the maint A set while the store was away",
        )
        for proxy, jar in clients:
            self.request(proxy, *jar)

    def test_leastsessions_fills_a_new_backend_first(self) -> None:
        """
        With C{leastsessions} on both proxies, a backend added to both gets
        the new sessions of both first: each proxy sees the sessions the
        other placed.
        """
        self.start_proxies(balance="leastsessions")
        for proxy in (self.a, self.b):
            for _ in range(6):
                self.request(proxy, *self.new_client())
        self.wait(
            lambda: all(
                self.backend(p, n)["sessions"] >= 5
                for p in (self.a, self.b)
                for n in ("b1", "b2")
            ),
            SETTLES,
            "both proxies to count every session",
        )
        added = {"name": "b3", "address": f"{HOST}:{self.backends['b3'].port}"}
        for proxy in (self.a, self.b):
            self.api(proxy, "POST", "/api/pools/main/backends", added)
        # Four new sessions: b3 holds fewer than b1 and b2 (5 or more each)
        # after every one of them, however soon each proxy learns of the
        # other's (the counts are shared once a second).
        placed = []
        for _ in range(2):
            for proxy in (self.a, self.b):
                placed.append(self.request(proxy, *self.new_client()).backend)
        self.assertEqual(placed, ["b3"] * 4)

    def start_workers(self, persistence: dict[str, Any] | None = None) -> None:
        """
        Start A with two workers and B with none, sharing the store, and
        wait until both of A's workers run.
        """
        names = ("b1", "b2")
        self.a = self.start_sharing_proxy("a", names, {}, persistence, workers=2)
        self.b = self.start_sharing_proxy("b", names, {}, persistence)
        self.wait(
            lambda: (
                len(
                    re.findall(
                        r"\[worker \d\] Starting reactor", self.a.process.output()
                    )
                )
                == 2
            ),
            SETTLES,
            "both of A's workers to run",
        )

    def test_drain_reaches_the_workers_of_another_proxy(self) -> None:
        """
        A drain made through B's API reaches both workers of A: A's API
        shows it, and every new client of A, whichever worker serves it,
        goes to the other backend (round-robin would send half to b1),
        while a sticky client of b1 stays there.
        """
        self.start_workers()
        sticky = self.client_on(self.a, "b1")
        self.wait(
            lambda: self.backend(self.b, "b1")["sessions"] >= 1,
            SETTLES,
            "B to count the session A gave b1",
        )
        self.api(
            self.b,
            "PUT",
            "/api/pools/main/backends/b1",
            {"admin_state": "drain", "deadline": 600},
        )
        self.wait(
            lambda: self.backend(self.a, "b1")["admin_state"] == "drain",
            SETTLES,
            "A to show b1 draining",
        )
        backends = {r.backend for r in self.workers_serve(self.a)}
        self.assertEqual(backends, {"b2"}, self.outputs())
        self.assertEqual(
            {r.backend for r in self.workers_serve(self.a, *sticky)}, {"b1"}
        )

    def test_learned_in_one_worker_honoured_by_the_other(self) -> None:
        """
        An app-cookie C{learn} binding made through one of A's workers is
        honoured by the other (a hit on the same backend), and by B.
        """
        self.start_workers(
            {"strategy": "app-cookie", "mode": "learn", "store": "redis"}
        )
        login = self.curl(self.a.url + "/login")
        session, backend = login.set_cookie("JSESSIONID"), login.backend
        if session is None or backend is None:
            self.fail_with_output("the login set no session:\n" + login.describe())
        cookie = ("-b", f"JSESSIONID={session}")
        hit = ("app-cookie", "hit", backend)
        decisions = {self.decision(r) for r in self.workers_serve(self.a, *cookie)}
        self.assertEqual(decisions, {hit})
        self.assertEqual(self.decision(self.request(self.b, *cookie)), hit)
