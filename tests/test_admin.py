"""
Tests for the admin listener, L{stickyproxy.admin}: the site
L{stickyproxy.service.ProxyService} builds for C{[admin]}, and its JSON API.
"""

import json
import os

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.web.server import Site

from stickyproxy import ConfigError, load_config
from stickyproxy.admin import AdminRoot, TrafficCounter
from stickyproxy.admin._api import iso_time
from stickyproxy.model import AdminState, ConnectionOpened, RequestFinished
from stickyproxy.persistence._cookie import cookie
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ProxyService
from stickyproxy.tap import Options, _makeService

from tests._base import TestCase
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
                "persistence": {"strategy": "cookie"},
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

    def request(self, method, path, body=None, token=None, raw=None):
        """
        Send one request to the admin site.

        :returns: the status, the headers and the body (parsed as JSON when
            it is JSON).
        """
        headers = {}
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
        no warning about it.
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
        self.assertEqual(
            body[1]["drain"],
            {"sessions_left": 2, "deadline": iso_time(self.reactor.seconds() + 600)},
        )
        self.assertNotIn("drain", body[0])
        self.pool.drain("a")
        self.assertEqual(
            self.get("/api/backends")[0]["drain"],
            {"sessions_left": 0, "deadline": None},
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
            events.request_finished(_finished("a", status, outcome))
        events.request_finished(_finished(None, 503, "none", ended="no-backend"))
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


def _finished(backend, status, persistence, ended="ok"):
    return RequestFinished(
        frontend="web",
        pool="app",
        backend=backend,
        client="10.0.0.1",
        method="GET",
        target="/",
        status=status,
        persistence=persistence,
        strategy=None,
        bytes_in=0,
        bytes_out=0,
        head_time=0.0,
        total_time=0.0,
        ended=ended,
    )


class TrafficCounterTests(TestCase):
    def test_survives_removal(self):
        """
        Totals are kept by name: a backend removed and added again goes on
        counting from where it was.
        """
        counter = TrafficCounter()
        counter.request_finished(_finished("a", 200, "new"))
        counter.request_finished(_finished("a", 200, "hit"))
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
                    "backends": ["a", "b"],
                    "panic": False,
                    "no_backend": 0,
                },
                {
                    "name": "spare",
                    "balance": "roundrobin",
                    "backends": ["s"],
                    "panic": False,
                    "no_backend": 0,
                },
            ],
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
        collections.
        """
        code, headers, body = self.request("GET", "/")
        self.assertEqual(code, 200)
        self.assertIn(b"text/html", headers.getRawHeaders(b"content-type")[0])
        self.assertIn(b'<main id="dashboard">', body)
        self.assertEqual(
            self.get("/api")["resources"], ["backends", "frontends", "pools"]
        )

    def test_not_found(self):
        """
        An unknown path, at the root, under C{/api} or below a collection,
        is a JSON 404.
        """
        for path in ("/nothing", "/api/nothing", "/api/backends/x", "/api/pools/x/y"):
            self.assertError(404, "GET", path, "no such resource")

    def test_method_not_allowed(self):
        """
        A method a resource does not take is a JSON 405 with C{Allow}.
        """
        code, headers, body = self.request("POST", "/api/backends")
        self.assertEqual(code, 405)
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET"])
        self.assertEqual(body, {"error": "method POST not allowed here"})

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
        self.get("/api/backends")
        # With the token, the request reaches the resource (which refuses POST).
        self.assertError(405, "POST", "/api/backends", "not allowed", token=TOKEN)


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
            ({"token": ""}, "admin.token", "non-empty token"),
            ({"token": "a b"}, "admin.token", "without spaces"),
            ({"token": "a", "token_file": path}, "admin.token_file", "not both"),
            ({"token_file": path}, "admin.token_file", "one line"),
            ({"token_file": path + ".missing"}, "admin.token_file", "cannot read"),
            ({"lisen": "x"}, "admin.lisen", "unknown key"),
        ]
        for admin, key, message in cases:
            data = config_data(**admin)
            if "listen" not in admin:
                data["admin"]["listen"] = "tcp:8081"
            error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
            self.assertEqual(error.path, key, admin)
            self.assertIn(message, error.message)
        data = config_data()
        del data["admin"]["listen"]
        error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
        self.assertEqual(error.path, "admin.listen")
