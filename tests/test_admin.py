"""
Tests for the admin listener, L{stickyproxy.admin}: the site
L{stickyproxy.service.ProxyService} builds for C{[admin]}, and its JSON API.
"""

import json
import os

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.web.server import Site

from stickyproxy import ConfigError, load_config
from stickyproxy.admin import AdminRoot, TrafficCounter
from stickyproxy.admin._api import PoolsResource, iso_time
from stickyproxy.admin._root import MAX_BODY
from stickyproxy.interfaces import IListableStickTable, IStickTableStrategy
from stickyproxy.model import (
    AdminState,
    ConnectionOpened,
    TableEntry,
)
from stickyproxy.persistence._affinity import TableAffinity
from stickyproxy.persistence._appcookie import app_cookie
from stickyproxy.persistence._cookie import cookie
from stickyproxy.persistence._header import header
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._secrets import RandomSecrets
from stickyproxy.persistence._sourceip import SourceIPKey, source_ip
from stickyproxy.persistence.tables._memory import StickTable
from stickyproxy.service import ProxyService
from stickyproxy.tap import Options, _makeService
from stickyproxy.testing import SlowStickTable, make_pool, routing_context

from tests._base import TestCase, finished_request
from tests.test_service import BusyReactor

REGISTRY = StrategyRegistry.of([source_ip, cookie])
TOKEN = "s3cret-token-of-the-admin"


def config_data(**admin):
    """
    A proxy with an HTTP and a TCP frontend on one pool (probed over TCP),
    and an admin listener.
    """
    return {
        "admin": {"listen": "tcp:8081", **admin},
        "frontend": [
            {
                "name": "web",
                "mode": "http",
                "listen": "tcp:8080",
                "pool": "app",
                # Its own key: no stickyproxy.key is written into the working directory.
                "persistence": {"strategy": "cookie", "keys": ["admin-tests-" * 3]},
            },
            {
                "name": "db",
                "listen": "tcp:7000",
                "pool": "app",
                "persistence": {"strategy": "source-ip", "mode": "table"},
            },
        ],
        "pool": {
            "app": {
                "balance": "leastconn",
                "backend": [
                    {"name": "a", "address": "127.0.0.1:9001"},
                    {"name": "b", "address": "127.0.0.1:9002", "weight": 2},
                ],
                "health": {"type": "tcp", "interval": 10, "jitter": 0},
            },
            "spare": {"backend": [{"name": "s", "address": "127.0.0.1:9003"}]},
        },
    }


class AdminTestCase(TestCase):
    """
    A proxy on a memory reactor, and a treq client for its admin site.
    """

    admin: dict[str, object] = {}

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)  # a plausible epoch time
        data = config_data(**self.admin)
        data["state_dir"] = self.mktemp()
        os.mkdir(data["state_dir"])
        self.proxy = ProxyService(load_config(data, REGISTRY), self.reactor, REGISTRY)
        self.pool = self.proxy.pools["app"]
        self.site = self.proxy.admin.factory
        self.client = StubTreq(self.site.resource)

    def request(self, method, path, body=None, token=None, raw=None, headers=None):
        """
        Send one request to the admin site (with more C{headers}, by name).

        :returns: the status, the headers and the body (parsed as JSON when
            it is JSON).
        """
        headers = {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        if token is not None:
            headers[b"authorization"] = [f"Bearer {token}".encode()]
        data = raw if raw is not None else None
        if body is not None:
            data = json.dumps(body).encode()
        response = self.successResultOf(
            self.client.request(
                method, "http://127.0.0.1:8081" + path, data=data, headers=headers
            )
        )
        content = self.successResultOf(response.content())
        kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if kind == b"application/json" and content:
            content = json.loads(content)
        return response.code, response.headers, content

    def get(self, path, **kwargs):
        code, _, body = self.request("GET", path, **kwargs)
        self.assertEqual(code, 200, body)
        return body

    def assertError(self, code, method, path, match, **kwargs):
        """
        The request fails with C{code} and a JSON error that matches.
        """
        got, _, body = self.request(method, path, **kwargs)
        self.assertEqual((got, list(body)), (code, ["error"]), body)
        self.assertRegex(body["error"], match)
        return body


class ListenerTests(TestCase):
    def test_built_and_bound(self):
        """
        With C{[admin]}, the proxy listens there (on 127.0.0.1 when the
        endpoint names no interface) with a site over L{AdminRoot}, and logs
        no warning about it; its port's log lines name it.
        """
        reactor = MemoryReactorClock()
        data = config_data()
        with capturedLogs() as events:
            proxy = ProxyService(load_config(data, REGISTRY), reactor, REGISTRY)
        self.assertFalse([e for e in events if "admin" in str(e.get("log_format"))])
        proxy.bind()
        (port, factory, _, interface) = reactor.tcpServers[-1]
        self.assertEqual((port, interface), (8081, "127.0.0.1"))
        self.assertIsInstance(factory, Site)
        self.assertIsInstance(factory.resource, AdminRoot)
        self.assertIs(factory, proxy.admin.factory)
        self.assertFalse(factory.displayTracebacks)
        self.assertEqual(factory.logPrefix(), "stickyproxy admin listener")

    def test_frontend_names_free(self):
        """
        Any frontend name may sit beside the admin listener and the health
        monitors: a frontend called C{admin} or C{health:app} no longer
        collides with their service names (a traceback at start).
        """
        data = config_data()
        data["frontend"][0]["name"] = "admin"
        data["frontend"][1]["name"] = "health:app"
        proxy = ProxyService(
            load_config(data, REGISTRY), MemoryReactorClock(), REGISTRY
        )
        self.assertEqual(set(proxy.listeners), {"admin", "health:app"})
        self.assertIsNotNone(proxy.admin)

    def test_no_admin(self):
        """
        Without C{[admin]}, nothing more listens.
        """
        data = config_data()
        del data["admin"]
        proxy = ProxyService(
            load_config(data, REGISTRY), MemoryReactorClock(), REGISTRY
        )
        self.assertIsNone(proxy.admin)

    def test_port_in_use(self):
        """
        An admin listener that cannot listen is a L{ConfigError} naming
        C{admin.listen}, from L{ProxyService.bind}.
        """
        data = config_data(listen="tcp:7001")  # taken on a BusyReactor
        proxy = ProxyService(load_config(data, REGISTRY), BusyReactor(), REGISTRY)
        error = self.assertRaises(ConfigError, proxy.bind)
        self.assertEqual(error.path, "admin.listen")
        self.assertIn("Address in use", error.message)

    def test_flag(self):
        """
        C{--admin ENDPOINT} starts the admin listener of a proxy described
        by the short flags.
        """
        reactor = MemoryReactorClock()
        options = Options()
        options.parseOptions(
            [
                "--listen",
                "tcp:7000",
                "--backend",
                "127.0.0.1:9001",
                "--admin",
                "tcp:9900",
                "--state-dir",
                os.getcwd(),
            ]
        )
        proxy = _makeService(options, reactor)
        self.assertEqual(
            [(s[0], s[3]) for s in reactor.tcpServers],
            [(7000, ""), (9900, "127.0.0.1")],
        )
        self.assertIsInstance(proxy.admin.factory.resource, AdminRoot)


class BackendsTests(AdminTestCase):
    def test_schema(self):
        """
        C{GET /api/backends} lists every backend of every pool with its
        state, health, admin state, weight, counts and traffic.
        """
        body = self.get("/api/backends")
        self.assertEqual(
            [(b["pool"], b["name"]) for b in body],
            [("app", "a"), ("app", "b"), ("spare", "s")],
        )
        self.assertEqual(
            body[1],
            {
                "pool": "app",
                "name": "b",
                "address": "127.0.0.1:9002",
                "state": "up",
                "health": {"state": "up", "probe": None},
                "admin_state": "ready",
                "weight": 2,
                "active": 0,
                "sessions": 0,
                "traffic": {
                    "requests": 0,
                    "errors": 0,
                    "connections": 0,
                    "outcomes": {"hit": 0, "new": 0, "redispatch": 0, "invalid": 0},
                },
            },
        )

    def test_live(self):
        """
        Each request reads the live state: a failed probe shows as "going
        down 1/3" with its reason and time; a drain shows the sessions
        left and the deadline; counts are the pool's.
        """
        self.proxy.startService()
        self.addCleanup(self.proxy.stopService)
        # The first probe starts within one interval (10 s) and times out
        # after 1 s; the next times out 11 s after that.
        for _ in range(115):
            self.reactor.advance(0.1)
        a, b = self.pool.get("a"), self.pool.get("b")
        b.active = 2
        self.pool.drain("b", deadline=600)
        body = self.get("/api/backends")
        health = body[0]["health"]
        self.assertEqual(health["state"], "going down 1/3")
        self.assertEqual(
            (health["probe"]["ok"], health["probe"]["reason"]),
            (False, "probe timed out after 1s"),
        )
        self.assertRegex(health["probe"]["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(body[0]["state"], "up")
        self.assertEqual(
            (body[1]["admin_state"], body[1]["active"], body[1]["sessions"]),
            ("drain", 2, 2),
        )
        now = self.reactor.seconds()
        self.assertEqual(
            body[1]["drain"],
            {
                "sessions_left": 2,
                "deadline": iso_time(now + 600),
                "started": iso_time(now),
                "sessions_at_start": 2,
            },
        )
        self.assertNotIn("drain", body[0])
        self.pool.drain("a")
        self.assertEqual(
            self.get("/api/backends")[0]["drain"],
            {
                "sessions_left": 0,
                "deadline": None,
                "started": iso_time(now),
                "sessions_at_start": 0,
            },
        )
        self.pool.set_admin_state("a", AdminState.MAINT)
        a.health = a.health.DOWN
        self.assertEqual(
            [(x["state"], x["admin_state"]) for x in self.get("/api/backends")[:1]],
            [("down", "maint")],
        )

    def test_traffic(self):
        """
        The traffic totals count each backend's requests, its 5xx answers,
        its connections and its persistence outcomes, from the event stream.
        """
        events = self.proxy.events
        for status, outcome in [(200, "new"), (200, "hit"), (502, "hit")]:
            events.request_finished(
                finished_request(status, pool="app", persistence=outcome)
            )
        events.request_finished(
            finished_request(
                503, backend=None, pool="app", persistence="none", ended="no-backend"
            )
        )
        events.connection_opened(
            ConnectionOpened("db", "app", "a", "10.0.0.1:1", "redispatch", "x")
        )
        traffic = self.get("/api/backends")[0]["traffic"]
        self.assertEqual(
            traffic,
            {
                "requests": 3,
                "errors": 1,
                "connections": 1,
                "outcomes": {"hit": 2, "new": 1, "redispatch": 1, "invalid": 0},
            },
        )
        self.assertEqual(self.get("/api/pools")[0]["no_backend"], 1)


class TrafficCounterTests(TestCase):
    def test_survives_removal(self):
        """
        Totals are kept by name: a backend removed and added again goes on
        counting from where it was.
        """
        counter = TrafficCounter()
        counter.request_finished(finished_request(pool="app", persistence="new"))
        counter.request_finished(finished_request(pool="app", persistence="hit"))
        self.assertEqual(counter.traffic("app", "a").requests, 2)
        self.assertEqual(counter.traffic("app", "zz").requests, 0)


class CollectionsTests(AdminTestCase):
    def test_pools(self):
        """
        C{GET /api/pools} lists each pool's balancer and backend names.
        """
        self.assertEqual(
            self.get("/api/pools"),
            [
                {
                    "name": "app",
                    "balance": "leastconn",
                    "session_balance_factor": None,
                    "backends": ["a", "b"],
                    "panic": False,
                    "no_backend": 0,
                },
                {
                    "name": "spare",
                    "balance": "roundrobin",
                    "session_balance_factor": None,
                    "backends": ["s"],
                    "panic": False,
                    "no_backend": 0,
                },
            ],
        )

    def test_pool_session_balance_factor(self):
        """
        A pool's C{session_balance_factor} is shown beside its balancer,
        which keeps its own name under the cap.
        """
        data = config_data()
        data["state_dir"] = self.proxy.config.state_dir
        data["pool"]["app"].update(balance="leastsessions", session_balance_factor=1.25)
        proxy = ProxyService(load_config(data, REGISTRY), self.reactor, REGISTRY)
        client = StubTreq(proxy.admin.factory.resource)
        response = self.successResultOf(
            client.get("http://127.0.0.1:8081/api/pools/app")
        )
        pool = json.loads(self.successResultOf(response.content()))
        self.assertEqual(
            (pool["balance"], pool["session_balance_factor"]),
            ("leastsessions", 1.25),
        )

    def test_frontends(self):
        """
        C{GET /api/frontends} lists each frontend's mode, listen string,
        pool and strategies.
        """
        self.assertEqual(
            self.get("/api/frontends"),
            [
                {
                    "name": "web",
                    "mode": "http",
                    "listen": "tcp:8080",
                    "pool": "app",
                    "strategies": ["cookie"],
                },
                {
                    "name": "db",
                    "mode": "tcp",
                    "listen": "tcp:7000",
                    "pool": "app",
                    "strategies": ["source-ip"],
                },
            ],
        )

    def test_index(self):
        """
        C{/} serves the dashboard (an HTML page); C{/api} lists its
        collections (and C{reload}).
        """
        code, headers, body = self.request("GET", "/")
        self.assertEqual(code, 200)
        self.assertIn(b"text/html", headers.getRawHeaders(b"content-type")[0])
        self.assertIn(b'<main id="dashboard">', body)
        self.assertEqual(
            self.get("/api")["resources"],
            ["backends", "frontends", "pools", "reload"],
        )

    def test_not_found(self):
        """
        An unknown path, at the root, under C{/api} or below a collection,
        is a JSON 404.
        """
        for path in ("/nothing", "/api/nothing", "/api/backends/x", "/api/pools/app/y"):
            self.assertError(404, "GET", path, "no such resource")

    def test_method_not_allowed(self):
        """
        A method a resource does not take is a JSON 405 with C{Allow}.
        """
        code, headers, body = self.request("POST", "/api/backends")
        self.assertEqual(code, 405)
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET"])
        self.assertEqual(body, {"error": "method POST not allowed here"})

    def test_api_index(self):
        """
        C{/api/} lists the collections as C{/api} does; a change to either
        is a JSON 405.
        """
        self.assertEqual(self.get("/api/"), self.get("/api"))
        for path in ("/api", "/api/"):
            code, headers, body = self.request("POST", path)
            self.assertEqual(
                (code, body), (405, {"error": "method POST not allowed here"})
            )
            self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET"])

    def test_internal_error(self):
        """
        A bug in a resource is logged, and answered with a JSON 500 (not
        Twisted's HTML page, nor a traceback).
        """
        self.patch(PoolsResource, "listing", lambda self: 1 // 0)
        code, headers, body = self.request("GET", "/api/pools")
        self.assertEqual((code, body), (500, {"error": "internal error (see the log)"}))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_head(self):
        """
        C{HEAD} is answered as C{GET}, without a body.
        """
        code, _, body = self.request("HEAD", "/api/backends")
        self.assertEqual((code, body), (200, b""))


class TokenTests(AdminTestCase):
    admin = {"token": TOKEN}

    def test_write_needs_token(self):
        """
        With a token configured, a request that could change something
        without it (or with a wrong one) gets 401 and C{WWW-Authenticate},
        whatever the path; reads stay open.
        """
        for token in (None, "wrong", TOKEN + "x"):
            code, headers, body = self.request("POST", "/api/backends", token=token)
            self.assertEqual(code, 401)
            self.assertEqual(
                headers.getRawHeaders(b"www-authenticate"),
                [b'Bearer realm="stickyproxy"'],
            )
            self.assertRegex(body["error"], "admin token")
        self.assertError(401, "DELETE", "/anything", "admin token")
        for method, path, body in [
            ("PUT", "/api/pools/app/backends/a", {"weight": 7}),
            ("POST", "/api/pools/app/backends", {"name": "c", "address": "x:1"}),
            ("DELETE", "/api/pools/app/backends/a", None),
            ("DELETE", "/api/frontends/db/table", None),
        ]:
            self.assertError(401, method, path, "admin token", body=body)
        self.assertEqual([b.name for b in self.pool.backends], ["a", "b"])
        self.assertEqual(self.pool.get("a").weight, 1)
        self.get("/api/backends")
        # With the token, the request reaches the resource (which refuses POST).
        self.assertError(405, "POST", "/api/backends", "not allowed", token=TOKEN)
        code, _, body = self.request(
            "PUT", "/api/pools/app/backends/a", body={"weight": 7}, token=TOKEN
        )
        self.assertEqual((code, body["weight"]), (200, 7))

    def test_table_needs_token(self):
        """
        Stick-table keys are client addresses and session ids: with a
        token, listing them needs it too.
        """
        self.assertError(401, "GET", "/api/frontends/db/table", "admin token")
        self.get("/api/frontends/db/table", token=TOKEN)


class BodySizeTests(AdminTestCase):
    def send(self, head, body):
        """
        Send raw bytes to the admin site over one connection.

        :returns: what it answered.
        """
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(head + body)
        return transport.value()

    def test_too_large(self):
        """
        A body over 64 KiB, announced by its length or sent in chunks, is
        not kept (nor spooled to a temporary file) and gets a JSON 413;
        nothing changes.
        """
        head = b"PUT /api/pools/app/backends/a HTTP/1.1\r\nHost: x\r\n"
        body = b'{"weight": 7}' + b" " * MAX_BODY
        sized = self.send(head + b"Content-Length: %d\r\n\r\n" % len(body), body)
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:1000], body[1000:])
        )
        chunked = self.send(
            head + b"Transfer-Encoding: chunked\r\n\r\n", chunks + b"0\r\n\r\n"
        )
        for answer in (sized, chunked):
            self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
            self.assertIn(b"Content-Type: application/json", answer)
            self.assertIn(b'"error": "the body is larger than 65536 bytes"', answer)
        self.assertEqual(self.pool.get("a").weight, 1)

    def test_small(self):
        """
        A body up to 64 KiB is read as before.
        """
        body = b'{"weight": 7}'.ljust(MAX_BODY)
        answer = self.send(
            b"PUT /api/pools/app/backends/a HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body),
            body,
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:100])
        self.assertEqual(self.pool.get("a").weight, 7)


class CrossSiteTests(AdminTestCase):
    def test_refused(self):
        """
        Without a token, a change a browser sends for a page of another
        site (C{Sec-Fetch-Site}, or an C{Origin} other than the C{Host})
        gets 403 and changes nothing: any web page could add a backend
        with a simple C{POST}.
        """
        add = {"name": "evil", "address": "192.0.2.66:80"}
        for headers in [
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": "http://evil.example"},
            {"Origin": "http://127.0.0.1:9999"},
            {"Origin": "null"},
        ]:
            self.assertError(
                403,
                "POST",
                "/api/pools/app/backends",
                "another site",
                body=add,
                headers=headers,
            )
        self.assertEqual([b.name for b in self.pool.backends], ["a", "b"])

    def test_allowed(self):
        """
        Reads from anywhere, and changes from the dashboard's own origin
        or from clients that are no browser, are served.
        """
        self.get("/api/backends", headers={"Sec-Fetch-Site": "cross-site"})
        for n, headers in enumerate(
            [
                {},
                {"Sec-Fetch-Site": "same-origin", "Origin": "http://elsewhere"},
                {"Sec-Fetch-Site": "none"},
                {"Origin": "http://127.0.0.1:8081"},
            ]
        ):
            body = {"name": f"c{n}", "address": "127.0.0.1:9009"}
            code, _, found = self.request(
                "POST", "/api/pools/app/backends", body=body, headers=headers
            )
            self.assertEqual(code, 201, found)


class ConfigTests(TestCase):
    def load(self, **admin):
        return load_config(config_data(**admin), REGISTRY).admin

    def test_loopback_by_default(self):
        """
        A C{tcp:}, C{tcp6:} or C{ssl:} admin endpoint without an interface
        listens on the loopback interface; one with an interface (by name or
        position) and other endpoint types are kept as written.
        """
        cases = {
            "tcp:8081": "tcp:8081:interface=127.0.0.1",
            "tcp:port=8081": "tcp:port=8081:interface=127.0.0.1",
            "tcp6:8081": "tcp6:8081:interface=\\:\\:1",
            "ssl:8443:privateKey=k.pem": (
                "ssl:8443:privateKey=k.pem:interface=127.0.0.1"
            ),
            "tcp:8081:interface=0.0.0.0": "tcp:8081:interface=0.0.0.0",
            "tcp:8081:10.0.0.1": "tcp:8081:10.0.0.1",
            "unix:/run/admin.sock:mode=600": "unix:/run/admin.sock:mode=600",
            "haproxy:tcp:8081": "haproxy:tcp:8081:interface=127.0.0.1",
            "haproxy:tcp:8081:interface=0.0.0.0": "haproxy:tcp:8081:interface=0.0.0.0",
        }
        for listen, expected in cases.items():
            self.assertEqual(self.load(listen=listen).listen, expected)

    def test_token(self):
        """
        C{token}, or C{token_file} (its one line), is the admin token;
        there is none by default, and it never shows in a repr.
        """
        self.assertIsNone(self.load().token)
        self.assertEqual(self.load(token=TOKEN).token, TOKEN)
        path = self.mktemp()
        with open(path, "w") as stream:
            stream.write(f"  {TOKEN}\n\n")
        admin = self.load(token_file=path)
        self.assertEqual(admin.token, TOKEN)
        self.assertNotIn(TOKEN, repr(admin))

    def test_errors(self):
        """
        Mistakes in C{[admin]} name the key and what was expected.
        """
        path = self.mktemp()
        with open(path, "w") as stream:
            stream.write("one\ntwo\n")
        cases = [
            ({"listen": ""}, "admin.listen", "endpoint string"),
            ({"listen": 8081}, "admin.listen", "a string"),
            ({"token": ""}, "admin.token", "expected a bearer token"),
            ({"token": "a b"}, "admin.token", "letters, digits and -._~+/"),
            ({"token": "abc=d"}, "admin.token", "expected a bearer token"),
            ({"token": "a", "token_file": path}, "admin.token_file", "not both"),
            ({"token_file": path}, "admin.token_file", "one line"),
            ({"token_file": path + ".missing"}, "admin.token_file", "cannot read"),
            ({"lisen": "x"}, "admin.lisen", "unknown key"),
        ]
        with open(path + ".spaced", "w") as stream:
            stream.write("a secret with spaces\n")
        cases.append(({"token_file": path + ".spaced"}, "admin.token_file", "bearer"))
        for admin, key, message in cases:
            data = config_data(**admin)
            if "listen" not in admin:
                data["admin"]["listen"] = "tcp:8081"
            error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
            self.assertEqual(error.path, key, admin)
            self.assertIn(message, error.message)
            self.assertNotIn("secret", error.message)
        data = config_data()
        del data["admin"]["listen"]
        error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
        self.assertEqual(error.path, "admin.listen")


class ChangeTests(AdminTestCase):
    """
    C{PUT /api/pools/POOL/backends/NAME}.
    """

    path = "/api/pools/app/backends/b"

    def setUp(self):
        super().setUp()
        self.b = self.pool.get("b")
        self.b.active = 2  # sessions, so that a drain lasts
        self.changes = []
        self.pool.observe(self.changes.append)

    def put(self, body, **kwargs):
        code, _, answer = self.request("PUT", self.path, body=body, **kwargs)
        self.assertEqual(code, 200, answer)
        return answer

    def test_drain_with_deadline(self):
        """
        C{{"admin_state": "drain", "deadline": 600}} drains the backend, and
        puts it in maint at the deadline; the answer is its object.
        """
        answer = self.put({"admin_state": "drain", "deadline": 600})
        self.assertEqual(answer["admin_state"], "drain")
        now = self.reactor.seconds()
        self.assertEqual(
            answer["drain"],
            {
                "sessions_left": 2,
                "deadline": iso_time(now + 600),
                "started": iso_time(now),
                "sessions_at_start": 2,
            },
        )
        self.assertEqual(
            [(c.kind, c.new, c.reason) for c in self.changes],
            [("admin", "drain", "admin API")],
        )
        self.reactor.advance(599)
        self.assertIs(self.b.admin_state, AdminState.DRAIN)
        self.reactor.advance(1)
        self.assertIs(self.b.admin_state, AdminState.MAINT)

    def test_drain_to_zero(self):
        """
        A drain with a deadline ends in maint as soon as the backend holds
        no sessions.
        """
        self.put({"admin_state": "drain", "deadline": 600})
        self.b.active = 0
        self.reactor.advance(1)
        self.assertIs(self.b.admin_state, AdminState.MAINT)

    def test_drain_without_deadline(self):
        """
        Without a deadline, the backend drains until told otherwise.
        """
        answer = self.put({"admin_state": "drain"})
        self.assertEqual(
            answer["drain"],
            {
                "sessions_left": 2,
                "deadline": None,
                "started": iso_time(self.reactor.seconds()),
                "sessions_at_start": 2,
            },
        )
        self.b.active = 0
        self.reactor.advance(3600)
        self.assertIs(self.b.admin_state, AdminState.DRAIN)

    def test_ready_and_maint(self):
        """
        C{ready} and C{maint} set the state, and cancel a drain's deadline.
        """
        self.put({"admin_state": "drain", "deadline": 60})
        self.assertEqual(self.put({"admin_state": "ready"})["admin_state"], "ready")
        self.reactor.advance(120)
        self.assertIs(self.b.admin_state, AdminState.READY)
        self.assertEqual(self.put({"admin_state": "maint"})["admin_state"], "maint")
        self.assertIs(self.b.admin_state, AdminState.MAINT)

    def test_weight(self):
        """
        C{{"weight": N}} sets the weight; 0 keeps the backend for its bound
        clients and sends it no new ones.
        """
        self.assertEqual(self.put({"weight": 5})["weight"], 5)
        self.assertEqual(self.put({"weight": 0})["weight"], 0)
        self.assertNotIn(self.b, self.pool.accepting_new())
        self.assertIn(self.b, self.pool.serving_bound())
        both = self.put({"weight": 3, "admin_state": "maint"})
        self.assertEqual((both["weight"], both["admin_state"]), (3, "maint"))

    def test_bad_bodies(self):
        """
        A body that is not a JSON object with known, valid keys gets 400
        naming what is wrong, and changes nothing, not even its valid part.
        """
        cases = [
            (b"", "expected a JSON object"),
            (b"{", "expected a JSON object"),
            (b"[1]", "expected a JSON object"),
            (b"{}", 'expected "admin_state" or "weight"'),
            ({"admin_state": "off"}, "admin_state: expected one of"),
            ({"admin_state": 1}, "admin_state: expected"),
            ({"deadline": 60}, "deadline: expected only with"),
            ({"admin_state": "maint", "deadline": 60}, "deadline: expected only"),
            ({"admin_state": "drain", "deadline": 0}, "deadline: expected a"),
            ({"admin_state": "drain", "deadline": "60"}, "deadline: expected"),
            ({"weight": -1}, "weight: expected an integer from 0 to 256"),
            ({"weight": 1.5}, "weight: expected an integer"),
            ({"weight": True}, "weight: expected an integer"),
            ({"weight": 257}, "weight: expected an integer from 0 to 256"),
            ({"weight": 3, "admin_state": "bogus"}, "admin_state: expected"),
            ({"weight": 3, "wieght": 3}, "wieght: unknown key"),
        ]
        for body, message in cases:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.assertError(400, "PUT", self.path, message, raw=raw)
        self.assertEqual((self.b.weight, self.b.admin_state), (2, AdminState.READY))
        self.assertEqual(self.changes, [])

    def test_null(self):
        """
        A JSON C{null} is named as such in the error, not as Python's type.
        """
        self.assertError(
            400,
            "PUT",
            self.path,
            r"^weight: expected an integer from 0 to 256, got null$",
            body={"weight": None},
        )

    def test_deeply_nested_body(self):
        """
        A body nested deeper than the JSON parser recurses gets 400, not a
        500.
        """
        raw = b"[" * 100_000 + b"]" * 100_000
        self.assertError(400, "PUT", self.path, "nested too deeply", raw=raw)

    def test_not_found(self):
        """
        An unknown pool or backend gets 404 naming the known ones.
        """
        self.assertError(
            404,
            "PUT",
            "/api/pools/nope/backends/b",
            r"no pool 'nope' \(pools: app, spare\)",
            body={"weight": 1},
        )
        self.assertError(
            404,
            "PUT",
            "/api/pools/app/backends/zz",
            r"pool app has no backend 'zz' \(a, b\)",
            body={"weight": 1},
        )

    def test_get_one(self):
        """
        C{GET} on a backend (and on a pool, and a pool's backends) answers
        its object; a method a resource does not take is a 405.
        """
        self.assertEqual(self.get(self.path)["name"], "b")
        self.assertEqual(self.get("/api/pools/app")["backends"], ["a", "b"])
        self.assertEqual(
            [b["name"] for b in self.get("/api/pools/app/backends")], ["a", "b"]
        )
        self.assertError(405, "POST", self.path, "not allowed")
        self.assertError(405, "DELETE", "/api/pools/app/backends", "not allowed")
        self.assertError(405, "PUT", "/api/pools/app", "not allowed")


class AddTests(AdminTestCase):
    """
    C{POST /api/pools/POOL/backends}.
    """

    path = "/api/pools/app/backends"

    def test_add(self):
        """
        A backend described as in the config file is added: 201, its
        object and its C{Location}; the health monitor tracks it, and it
        takes new clients.
        """
        code, headers, body = self.request(
            "POST",
            self.path,
            body={"name": "c", "address": "127.0.0.1:9004", "weight": 3},
        )
        self.assertEqual(code, 201, body)
        self.assertEqual(
            headers.getRawHeaders(b"location"), [b"/api/pools/app/backends/c"]
        )
        self.assertEqual(
            (body["name"], body["address"], body["weight"], body["admin_state"]),
            ("c", "127.0.0.1:9004", 3, "ready"),
        )
        c = self.pool.get("c")
        self.assertIn(c, self.pool.accepting_new())
        self.assertEqual(c.route, "c")
        self.assertEqual(self.proxy.monitors["app"].status(c).detail, "up")
        self.assertEqual(
            [b["name"] for b in self.get("/api/backends")], ["a", "b", "c", "s"]
        )

    def test_location_quoted(self):
        """
        The C{Location} of a backend whose name holds C{/} or a space
        quotes them, so that it names that backend.
        """
        code, headers, _ = self.request(
            "POST", self.path, body={"name": "v2/a b", "address": "127.0.0.1:9004"}
        )
        self.assertEqual(code, 201)
        [location] = headers.getRawHeaders(b"location")
        self.assertEqual(location, b"/api/pools/app/backends/v2%2Fa%20b")
        self.assertEqual(self.get(location.decode())["name"], "v2/a b")

    def test_add_options(self):
        """
        C{route} and C{admin_state} are taken as the config file takes them;
        the address may be any client endpoint string.
        """
        code, _, body = self.request(
            "POST",
            self.path,
            body={
                "name": "c",
                "address": "tcp:host=127.0.0.1:port=9004",
                "route": "node3",
                "admin_state": "maint",
            },
        )
        self.assertEqual((code, body["admin_state"]), (201, "maint"))
        self.assertEqual(self.pool.get("c").route, "node3")

    def test_bad_bodies(self):
        """
        A backend the config file would refuse gets 400 with the config's
        message, naming the key; nothing is added.
        """
        cases = [
            ({"address": "127.0.0.1:9004"}, "name: expected a non-empty string"),
            ({"name": "", "address": "127.0.0.1:9004"}, "name: expected a non-empty"),
            ({"name": "c"}, "address: is required"),
            ({"name": "c", "address": "nowhere:port"}, "address: expected host:port"),
            ({"name": "c", "address": "x:1", "weight": 300}, "weight: expected"),
            ({"name": "c", "address": "x:1", "admin_state": "x"}, "admin_state"),
            ({"name": "c", "address": "x:1", "colour": "red"}, "colour: unknown key"),
            ({"name": 3, "address": "x:1"}, "name: expected a string"),
        ]
        for body, message in cases:
            self.assertError(400, "POST", self.path, message, body=body)
        self.assertError(400, "POST", self.path, "JSON object", raw=b"[]")
        self.assertEqual([b.name for b in self.pool.backends], ["a", "b"])

    def test_duplicate(self):
        """
        A name the pool has already gets 409.
        """
        self.assertError(
            409,
            "POST",
            self.path,
            "already has a backend 'a'",
            body={"name": "a", "address": "127.0.0.1:9009"},
        )
        self.assertEqual(self.pool.get("a").address, "127.0.0.1:9001")

    def test_unknown_pool(self):
        """
        A pool the proxy does not have gets 404.
        """
        self.assertError(
            404,
            "POST",
            "/api/pools/nope/backends",
            "no pool 'nope'",
            body={"name": "c", "address": "127.0.0.1:9004"},
        )


class RemoveTests(AdminTestCase):
    """
    C{DELETE /api/pools/POOL/backends/NAME}.
    """

    def test_remove(self):
        """
        A backend in maint, or one without sessions, is removed: 204.
        """
        self.pool.get("a").active = 1
        self.pool.set_admin_state("a", AdminState.MAINT)
        for name in ("a", "b"):
            code, _, body = self.request("DELETE", f"/api/pools/app/backends/{name}")
            self.assertEqual((code, body), (204, b""))
        self.assertEqual(self.pool.backends, ())

    def test_in_use(self):
        """
        A backend that holds sessions and is not in maint gets 409, and
        stays.
        """
        self.pool.get("a").active = 1
        self.assertError(
            409,
            "DELETE",
            "/api/pools/app/backends/a",
            "holds 1 sessions and is ready: drain it",
        )
        self.assertIsNotNone(self.pool.get("a"))

    def test_unknown(self):
        """
        An unknown backend gets 404.
        """
        self.assertError(404, "DELETE", "/api/pools/app/backends/zz", "no backend")


class TableTests(AdminTestCase):
    """
    C{GET} and C{DELETE /api/frontends/NAME/table}.
    """

    path = "/api/frontends/db/table"

    def setUp(self):
        super().setUp()
        self.strategy = self.proxy.routers["db"].strategies[0]
        self.a, self.b = self.pool.get("a"), self.pool.get("b")

    def bind(self, host, backend, held=False):
        context = routing_context(host)
        self.strategy.persist(context, backend)
        if not held:
            self.strategy.release(context, backend)

    def test_list(self):
        """
        The entries of the frontend's table: key as text, backend, and
        expiry (C{null} while open connections hold the entry).
        """
        self.bind("10.0.0.1", self.a, held=True)
        self.reactor.advance(10)
        self.bind("10.0.0.2", self.b)
        self.assertEqual(
            self.get(self.path),
            {
                "entries": [
                    {
                        "key": "10.0.0.1",
                        "backend": "a",
                        "expires": None,
                        "strategy": "source-ip",
                    },
                    {
                        "key": "10.0.0.2",
                        "backend": "b",
                        "expires": iso_time(self.reactor.seconds() + 1800),
                        "strategy": "source-ip",
                    },
                ],
                "total": 2,
                "offset": 0,
                "limit": 100,
            },
        )

    def test_pages(self):
        """
        C{offset} and C{limit} page through the entries; C{total} counts
        them all.
        """
        for n in range(5):
            self.bind(f"10.0.0.{n}", self.a)
        page = self.get(self.path + "?offset=1&limit=2")
        self.assertEqual(
            ([e["key"] for e in page["entries"]], page["total"]),
            (["10.0.0.1", "10.0.0.2"], 5),
        )
        self.assertEqual(self.get(self.path + "?offset=9")["entries"], [])
        for query, message in [
            ("limit=0", "limit: expected an integer from 1 to 1000, got '0'"),
            ("limit=1001", "limit: expected an integer from 1 to 1000"),
            ("offset=-1", "offset: expected an integer of at least 0"),
            ("offset=x", "offset: expected an integer"),
            ("offset=1&offset=2", "'offset' given more than once"),
            ("key=10.0.0.1", "unknown query argument 'key'"),
        ]:
            self.assertError(400, "GET", f"{self.path}?{query}", message)

    def test_page_numbers_not_ascii_or_huge(self):
        """
        An offset of digits that are not ASCII (C{²}, which C{str.isdigit}
        accepts), or of more digits than C{int()} reads, gets 400 rather
        than a 500.
        """
        for text in ["%C2%B2", "9" * 5000]:
            self.assertError(
                400, "GET", f"{self.path}?offset={text}", "offset: expected an integer"
            )

    def test_forget_one(self):
        """
        C{DELETE ...?key=K} forgets one entry (the backend's sessions drop);
        a key no table has gets 404, one no strategy can read gets 400.
        """
        self.bind("10.0.0.1", self.a)
        self.bind("10.0.0.2", self.a)
        code, _, _ = self.request("DELETE", self.path + "?key=10.0.0.1")
        self.assertEqual(code, 204)
        self.assertEqual(
            [e["key"] for e in self.get(self.path)["entries"]], ["10.0.0.2"]
        )
        self.assertEqual(self.pool.sessions("a"), 1)
        self.assertError(404, "DELETE", self.path + "?key=10.0.0.1", "no entry")
        self.assertError(400, "DELETE", self.path + "?key=nope", "expected an IP")

    def test_clear(self):
        """
        C{DELETE} without a key forgets every entry, held or not; a typo in
        the query forgets nothing.
        """
        self.bind("10.0.0.1", self.a, held=True)
        self.bind("10.0.0.2", self.b)
        self.assertError(400, "DELETE", self.path + "?kye=10.0.0.1", "unknown query")
        self.assertEqual(self.get(self.path)["total"], 2)
        code, _, _ = self.request("DELETE", self.path)
        self.assertEqual(code, 204)
        self.assertEqual(self.get(self.path)["total"], 0)
        self.assertEqual(self.pool.sessions("b"), 0)

    def test_no_table(self):
        """
        A frontend whose strategies keep no table, or whose table cannot be
        listed, gets 404 saying so; so does an unknown frontend.
        """
        self.assertError(
            404,
            "GET",
            "/api/frontends/web/table",
            r"frontend web keeps no stick table \(strategies: cookie\)",
        )
        self.assertError(404, "GET", "/api/frontends/zz/table", "no frontend 'zz'")
        router = self.proxy.routers["db"]
        router.strategies = (
            TableAffinity(
                "source-ip", self.pool, SlowStickTable(self.reactor), SourceIPKey()
            ),
        )
        self.assertError(404, "GET", self.path, "cannot be listed")
        self.assertError(405, "PUT", self.path, "not allowed", body={})
        self.assertEqual(self.get("/api/frontends/db")["name"], "db")


class TableSeamTests(TestCase):
    """
    The optional seam that lets a table be listed and a strategy show its
    table: L{IListableStickTable} and L{IStickTableStrategy}.
    """

    def test_memory_table(self):
        """
        The memory table lists its live entries, least recently used first,
        with their expiry (none while held), and can be cleared.
        """
        clock = Clock()
        table = StickTable(clock=clock, timeout=10, size=10)
        self.assertProvides(IListableStickTable, table)
        table.bind(b"old", "a")
        table.release(b"old")
        clock.advance(5)
        table.bind(b"held", "b")
        table.bind(b"new", "a")
        table.release(b"new")
        self.assertEqual(
            list(table.entries()),
            [
                TableEntry(b"old", "a", 10.0),
                TableEntry(b"held", "b", None),
                TableEntry(b"new", "a", 15.0),
            ],
        )
        clock.advance(5)
        self.assertEqual([e.key for e in table.entries()], [b"held", b"new"])
        table.clear()
        self.assertEqual(
            (list(table.entries()), len(table), table.count("b")), ([], 0, 0)
        )

    def test_strategies(self):
        """
        Table-backed strategies provide L{IStickTableStrategy}, and show
        their keys as operators write them: a source address (masked as
        clients' are), a header value, an application session id.
        """
        clock = Clock()
        pool = make_pool("a")
        source = source_ip.build({"mode": "table", "mask": 24}, pool, clock, "p")
        self.assertProvides(IStickTableStrategy, source)
        self.assertEqual(source.key_bytes("10.1.2.3"), bytes([10, 1, 2, 0]))
        self.assertEqual(source.key_text(bytes([10, 1, 2, 0])), "10.1.2.0")
        self.assertEqual(source.key_text(source.key_bytes("2001:db8::1")), "2001:db8::")
        self.assertRaises(ValueError, source.key_bytes, "example.com")
        by_header = header.build(
            {"header": "X-User", "mode": "table"}, pool, clock, "p"
        )
        self.assertProvides(IStickTableStrategy, by_header)
        self.assertEqual(by_header.key_bytes("caf\xe9"), b"caf\xe9")
        self.assertEqual(by_header.key_text(b"caf\xe9"), "caf\xe9")
        self.assertRaises(ValueError, by_header.key_bytes, "\u20ac")
        learn = app_cookie.build_keyed(
            {"mode": "learn"}, pool, clock, "p", RandomSecrets("p")
        )
        self.assertProvides(IStickTableStrategy, learn)
        self.assertEqual(learn.key_bytes('"abc"'), b"abc")
        self.assertEqual(learn.key_text(b"abc"), "abc")
        hashed = source_ip.build({}, pool, clock, "p")
        self.assertFalse(IStickTableStrategy.providedBy(hashed))
