"""
End-to-end: the L7 (HTTP) frontend in front of real HTTP backends
(L{tests.e2e.http_backend}), driven with curl, raw sockets, C{http.client}
and a WebSocket client: cookie, app-cookie and route persistence, failover
when the bound backend dies, WebSockets, and bad input.
"""

from __future__ import annotations

import http.client
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websocket_connect

from tests.e2e._harness import (
    COOKIE_KEYS,
    HOST,
    HTTP_NAMES,
    IO_TIMEOUT,
    HTTPE2ETestCase,
    free_port,
    http_config,
)

NAMES = HTTP_NAMES
COOKIE = "STICKY"
COOKIE_PERSISTENCE = {"strategy": "cookie", "keys": list(COOKIE_KEYS)}


class CookieTestCase(HTTPE2ETestCase):
    """
    C{strategy = "cookie"}: the proxy's signed cookie, in front of three
    backends balanced round-robin.
    """

    def jar_bound_to(self, backend: str) -> tuple[str, ...]:
        """
        A new cookie jar whose cookie binds it to C{backend} (new clients go
        round the backends, so one of the first few lands there).
        """
        for n in range(len(self.backends)):
            jar = self.jar(f"{backend}-{n}")
            if self.served("/", *jar).backend == backend:
                return jar
        self.fail_with_output(f"no new client was sent to {backend}")


class CookieTests(CookieTestCase):
    """
    C{strategy = "cookie"}: stickiness, forged cookies.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start_http_proxy(COOKIE_PERSISTENCE)

    def test_cookie_jar_stays(self) -> None:
        """
        curl with a cookie jar (C{-c jar -b jar}) gets the proxy's cookie
        with its first response and then reaches the same backend for 20
        requests in a row, each one a hit, and the backend never sees the
        proxy's cookie; cookieless requests spread over all three backends.
        """
        jar = self.jar()
        first = self.served("/", *jar)
        self.assertIsNotNone(first.set_cookie(COOKIE), first.describe())
        results = [self.served("/", *jar) for _ in range(20)]
        backends = [result.backend for result in results]
        self.assertEqual(set(backends), {first.backend}, backends)
        decisions = {self.decision(result)[:2] for result in results}
        self.assertEqual(decisions, {("cookie", "hit")})
        forwarded = {result.header("x-request-cookie") for result in results}
        self.assertEqual(forwarded, {"-"}, "the Cookie headers backends received")
        spread = Counter(self.served().backend for _ in range(9))
        self.assertEqual(set(spread), set(NAMES), spread)

    def test_access_log(self) -> None:
        """
        The access log (a subscriber of the event stream) has one line per
        request in the proxy's output: the new client, its hit, and a
        forged cookie reported as invalid.
        """
        jar = self.jar()
        first = self.served("/logged/first", *jar)
        again = self.served("/logged/again", *jar)
        self.served("/logged/forged", "-H", f"Cookie: {COOKIE}=forged")
        expected = [
            rf'"GET /logged/first" 200 {first.backend} balancer new \d+ms ok$',
            rf'"GET /logged/again" 200 {again.backend} cookie hit \d+ms ok$',
            r'"GET /logged/forged" 200 b\d cookie invalid \d+ms ok$',
        ]
        for pattern in expected:
            self.wait_for_line(self.proxy, pattern, IO_TIMEOUT)

    def test_forged_cookies(self) -> None:
        """
        A cookie the proxy did not make with its key -- one of its own with
        a character changed, garbage, or a well-formed one that another
        proxy signed with another key -- is not honoured: the request is
        balanced afresh, answered 200 by a backend, and given a new cookie,
        which is honoured from then on.
        """
        genuine = self.served().set_cookie(COOKIE)
        assert genuine is not None
        middle = len(genuine) // 2
        changed = "A" if genuine[middle] != "A" else "B"
        tampered = genuine[:middle] + changed + genuine[middle + 1 :]
        other_port = free_port()
        other_config = self.http_proxy_config(
            other_port,
            {"strategy": "cookie", "keys": ["another proxy's key, not ours"]},
        )
        self.start_proxy_with_config(other_config, other_port, config_name="other.toml")
        foreign = self.curl(f"http://{HOST}:{other_port}/").set_cookie(COOKIE)
        assert foreign is not None
        forged = {
            "tampered": tampered,
            "garbage": "garbage-that-is-no-cookie",
            "signed with another key": foreign,
        }
        for label, value in forged.items():
            result = self.served("/", "-H", f"Cookie: {COOKIE}={value}")
            self.assertEqual(self.decision(result)[:2], ("balancer", "new"), label)
            new = result.set_cookie(COOKIE)
            self.assertIsNotNone(new, f"{label}: no new cookie\n{result.describe()}")
            self.assertNotEqual(new, value, label)
            again = self.served("/", "-H", f"Cookie: {COOKIE}={new}")
            self.assertEqual(
                self.decision(again), ("cookie", "hit", result.backend), label
            )


class CookieFailoverTests(CookieTestCase):
    """
    Killing (by PID) the backend a client's cookie names, with the pool's
    default connect retries and passive health checks only.
    """

    def test_bound_backend_killed(self) -> None:
        """
        When the backend a client's cookie names is killed, every one of the
        client's next requests succeeds (the failed connect is retried on
        another backend, so not one gets a 5xx); the first of them moves it
        (a redispatch) and gives it a new cookie, and it then stays on its
        new backend, each request a hit.
        """
        self.start_http_proxy(COOKIE_PERSISTENCE)
        jar = self.jar()
        bound = self.served("/", *jar).backend
        assert bound is not None
        again = [self.served("/", *jar).backend for _ in range(2)]
        self.assertEqual(again, [bound, bound])
        self.backends[bound].kill()
        live = set(NAMES) - {bound}
        after = [self.get("/", *jar) for _ in range(12)]
        failed = [
            (i, result.status, result.backend)
            for i, result in enumerate(after)
            if result.status != 200 or result.backend not in live
        ]
        if failed:
            self.fail_with_output(
                f"after killing {bound}, requests (index, status, backend) {failed} "
                f"of {len(after)} were not served by a live backend"
            )
        moved = after[0]
        self.assertEqual(self.decision(moved)[:2], ("cookie", "redispatch"))
        self.assertIsNotNone(moved.set_cookie(COOKIE), moved.describe())
        self.assertEqual({result.backend for result in after}, {moved.backend})
        outcomes = [self.decision(result)[1] for result in after[1:]]
        self.assertEqual(set(outcomes), {"hit"}, outcomes)


class AppCookieFollowTests(HTTPE2ETestCase):
    """
    C{strategy = "app-cookie"}, C{mode = "follow"}: the proxy's cookie lives
    as long as the application's session cookie.
    """

    MAX_AGE = 5
    #: How long before C{MAX_AGE} a request must be sent to be sure it
    #: reaches the proxy before then.
    MARGIN = 0.3

    def test_binding_ends_with_app_cookie(self) -> None:
        """
        When the application sets C{JSESSIONID} with C{Max-Age=5}, the
        proxy's cookie binds the client for those 5 s: a client that keeps
        sending both cookies as it got them (ignoring their expiry, as
        C{curl -H "Cookie: ..."} does) reaches the same backend, as a hit,
        until 5 s after the login, and from then on is balanced afresh like
        a new client (no binding, no new cookie).  The login is timed just
        before a whole second of the clock, where an expiry kept in whole
        seconds must be rounded up, not down.
        """
        self.start_http_proxy(
            {"strategy": "app-cookie", "mode": "follow", "keys": list(COOKIE_KEYS)},
            backend_args=("--max-age", str(self.MAX_AGE)),
        )
        self.wait(
            lambda: time.time() % 1 >= 0.85,
            2.0,
            "the wall clock's next x.85 s",
            interval=0.002,
        )
        start = time.monotonic()
        login = self.served("/login")
        app, sticky = login.set_cookie("JSESSIONID"), login.set_cookie(COOKIE)
        if app is None or sticky is None:
            self.fail_with_output("the login set no cookies:\n" + login.describe())
        bound = login.backend
        cookies = ("-H", f"Cookie: JSESSIONID={app}; {COOKIE}={sticky}")
        samples: list[tuple[float, tuple[str, str, str]]] = []

        def binding_gone() -> bool:
            sent = time.monotonic() - start
            decision = self.decision(self.served("/", *cookies))
            samples.append((round(sent, 2), decision))
            return decision[1] != "hit"

        self.wait(
            binding_gone,
            self.MAX_AGE + 5,
            "the proxy to stop honouring the binding",
            self.proxy,
            interval=0.2,
        )
        early = [s for s in samples if s[0] < self.MAX_AGE - self.MARGIN]
        self.assertGreaterEqual(len(early), 10, samples)
        wrong = [s for s in early if s[1] != ("app-cookie", "hit", bound)]
        self.assertEqual(
            wrong,
            [],
            f"requests sent less than {self.MAX_AGE - self.MARGIN}s after the login "
            f"(seconds, decision) that were not hits on {bound}",
        )
        self.assertLessEqual(samples[-1][0], self.MAX_AGE + 2, samples)
        later = [self.served("/", *cookies) for _ in range(6)]
        decisions = [self.decision(result) for result in later]
        self.assertEqual({d[:2] for d in decisions}, {("balancer", "new")}, decisions)
        self.assertGreater(len({d[2] for d in decisions}), 1, decisions)
        self.assertEqual([r.set_cookie(COOKIE) for r in later], [None] * len(later))


class RouteTests(HTTPE2ETestCase):
    """
    C{strategy = "route"}: a session id ending in C{.ROUTE} (a backend's
    route; by default its name) goes to that backend, whether it comes in
    the C{JSESSIONID} cookie, a C{;jsessionid=} path parameter or a
    C{jsessionid} query parameter.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start_http_proxy({"strategy": "route"})

    def assert_routed(self, path: str, *args: str, route: str) -> None:
        """
        Three requests in a row (which round-robin would send to three
        backends) all reach the backend called C{route}, as route hits.
        """
        for _ in range(3):
            result = self.served(path, *args)
            self.assertEqual(self.decision(result), ("route", "hit", route), path)

    def test_cookie(self) -> None:
        """
        C{Cookie: JSESSIONID=x.b2} reaches backend b2 (and likewise for b1
        and b3).
        """
        for name in ("b2", "b1", "b3"):
            self.assert_routed("/", "-H", f"Cookie: JSESSIONID=x.{name}", route=name)

    def test_path_parameter(self) -> None:
        """
        C{/cart;jsessionid=x.b2} reaches backend b2 (and likewise for b1
        and b3).
        """
        for name in ("b2", "b1", "b3"):
            self.assert_routed(f"/cart;jsessionid=x.{name}", route=name)

    def test_query_parameter(self) -> None:
        """
        C{/cart?jsessionid=x.b2} reaches backend b2 (and likewise for b1
        and b3).
        """
        for name in ("b2", "b1", "b3"):
            self.assert_routed(f"/cart?jsessionid=x.{name}", route=name)

    def test_unknown_route_balanced(self) -> None:
        """
        The control: a session id with a route no backend has, or none at
        all, is balanced over all three backends.
        """
        for args in [("-H", "Cookie: JSESSIONID=x.b9"), ("-H", "Cookie: JSESSIONID=x")]:
            results = [self.served("/", *args) for _ in range(3)]
            self.assertEqual({r.backend for r in results}, set(NAMES), args)
            self.assertEqual(
                {self.decision(r)[:2] for r in results}, {("balancer", "new")}
            )


class WebSocketTests(CookieTestCase):
    """
    WebSocket upgrades through the L7 frontend, with cookie persistence.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start_http_proxy(COOKIE_PERSISTENCE)

    @contextmanager
    def websocket(self, cookie: str | None = None) -> Iterator[ClientConnection]:
        """
        A WebSocket to C{/ws} through the proxy (sending C{cookie} as the
        proxy's cookie), closed on the way out.
        """
        headers = {} if cookie is None else {"Cookie": f"{COOKIE}={cookie}"}
        try:
            connection = websocket_connect(
                f"ws://{HOST}:{self.port}/ws",
                additional_headers=headers,
                proxy=None,
                compression=None,
                open_timeout=IO_TIMEOUT,
                close_timeout=IO_TIMEOUT,
            )
        except (OSError, WebSocketException) as error:
            self.fail_with_output(f"the WebSocket handshake failed: {error!r}")
        with connection:
            yield connection

    def echo(self, connection: ClientConnection, message: Any) -> None:
        """
        Send C{message} and check that the same comes back.
        """
        connection.send(message)
        try:
            answer = connection.recv(timeout=IO_TIMEOUT)
        except (TimeoutError, WebSocketException) as error:
            self.fail_with_output(f"no echo of a {type(message).__name__}: {error!r}")
        self.assertEqual(answer, message)

    def test_echo_both_ways(self) -> None:
        """
        A WebSocket through the proxy carries text and binary messages
        (small, and up to 256 KiB) both ways, in order, also several sent
        before any answer is read; it closes cleanly (code 1000 both ways),
        and the proxy goes on serving HTTP requests.
        """
        with self.websocket() as connection:
            for message in [
                "hello",
                "unicode: \u00e9\u00e8 \u2713",
                "x" * 70_000,
                b"\x00\x01\x02 binary",
                os.urandom(256 * 1024),
            ]:
                self.echo(connection, message)
            batch = [f"message {n}" for n in range(10)]
            for message in batch:
                connection.send(message)
            answers = [connection.recv(timeout=IO_TIMEOUT) for _ in batch]
            self.assertEqual(answers, batch)
            connection.close()
            self.assertEqual(connection.close_code, 1000)
        self.served()

    def test_routed_by_cookie(self) -> None:
        """
        A WebSocket handshake carrying the proxy's cookie for a backend is
        answered (101) by that backend, for each of the three, every time.
        """
        for name in NAMES:
            jar = self.jar_bound_to(name)
            cookie = self.served("/", *jar).header("x-request-cookie")
            self.assertEqual(cookie, "-")  # the proxy keeps its own cookie
            value = self.jar_cookie(jar[1])
            for _ in range(2):
                with self.websocket(value) as connection:
                    response = connection.response
                    assert response is not None
                    self.assertEqual(response.headers.get("X-Backend"), name)
                    self.echo(connection, f"to {name}")

    def jar_cookie(self, path: str) -> str:
        """
        The value of the proxy's cookie in the curl cookie jar at C{path}.
        """
        with open(path, encoding="utf-8") as jar:
            for line in jar:
                fields = line.rstrip("\n").split("\t")
                if len(fields) == 7 and fields[5] == COOKIE:
                    return fields[6]
        self.fail_with_output(f"no {COOKIE} cookie in the jar {path}")


#: Requests the proxy must refuse with 400, by what is wrong with them.
MALFORMED = {
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two different Content-Lengths": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!"
    ),
    "a space before a header's colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "a garbage request line": b"\x16\x03\x01\x02\x00 not HTTP at all\r\n\r\n",
    "a bad chunk size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    ),
}


class BadInputTests(HTTPE2ETestCase):
    """
    What the proxy answers itself: malformed requests, and pools with no
    backend to take a request.
    """

    def test_malformed_requests(self) -> None:
        """
        Malformed requests on raw sockets (Content-Length with
        Transfer-Encoding, two Content-Lengths, a space before a colon, no
        Host, a garbage request line, a bad chunk size) each get a 400 and a
        closed connection; meanwhile a keep-alive client connected before
        them goes on being served on its connection, and so is a curl
        request after each.
        """
        self.start_http_proxy(None)
        keep = http.client.HTTPConnection(HOST, self.port, timeout=IO_TIMEOUT)
        self.addCleanup(keep.close)

        def keep_alive_request() -> None:
            keep.request("GET", "/")
            response = keep.getresponse()
            body = response.read()
            self.assertEqual(response.status, 200, body)
            self.assertIn(response.getheader("X-Backend"), NAMES)

        keep_alive_request()
        for label, request in MALFORMED.items():
            answer = self.raw_exchange(self.port, request)
            status_line = answer.split(b"\r\n", 1)[0]
            self.assertTrue(
                status_line.startswith(b"HTTP/1.1 400 "), f"{label}: {answer!r}"
            )
            self.served()
            keep_alive_request()

    def test_no_backend_503(self) -> None:
        """
        A frontend whose pool's backends are all down (HTTP probes that
        never pass) answers 503 at once with its configured Retry-After;
        so does one whose backends all refuse connections (every connect
        and retry failed); a frontend of the same proxy on another pool
        goes on serving.
        """
        backends = self.start_http_backends(*NAMES)
        ports = {name: backend.port for name, backend in backends.items()}
        main, down, gone = free_port(), free_port(), free_port()
        nowhere = {"d1": free_port(), "d2": free_port()}
        config = "".join(
            [
                http_config(main, ports),
                http_config(
                    down,
                    nowhere,
                    name="down",
                    frontend={"retry_after": 7},
                    health={"type": "http", "init_state": "down", "interval": 0.5},
                ),
                http_config(gone, nowhere, name="gone", frontend={"retry_after": 9}),
            ]
        )
        self.start_proxy_with_config(config, main)
        for port, retry_after in [(down, "7"), (gone, "9")]:
            started = time.monotonic()
            result = self.curl(f"http://{HOST}:{port}/")
            took = time.monotonic() - started
            self.assertEqual(result.status, 503, result.describe())
            self.assertEqual(result.header("retry-after"), retry_after)
            self.assertLess(took, 2.0, "the 503 was not immediate")
            served = self.curl(f"http://{HOST}:{main}/")
            self.assertEqual(served.status, 200, served.describe())
