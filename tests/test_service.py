"""
Tests for L{stickyproxy.service.ProxyService} and C{twistd} glue in
L{stickyproxy.tap}.
"""

import os

import attrs

from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError

from stickyproxy import ConfigError, load_config
from stickyproxy._demo import DemoTCPBackend
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ProxyService
from stickyproxy.tap import Options, _makeService, makeService

from tests._base import TestCase

REGISTRY = StrategyRegistry.of([source_ip])

CONFIG = {
    "frontend": [
        {
            "name": "db",
            "listen": "tcp:7000:interface=127.0.0.1",
            "pool": "pg",
            "persistence": {"strategy": "source-ip"},
        },
        {"name": "cache", "listen": "tcp:7001", "pool": "pg"},
    ],
    "pool": {
        "pg": {
            "backend": [
                {"name": "pg1", "address": "127.0.0.1:5432"},
                {"name": "pg2", "address": "127.0.0.1:5433"},
            ]
        }
    },
}


class BusyReactor(MemoryReactorClock):
    """
    A memory reactor on which port 7001 is taken.
    """

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == 7001:
            raise CannotListenError(interface, port, OSError(98, "Address in use"))
        return super().listenTCP(port, factory, backlog, interface)


class PortAssigningReactor(MemoryReactorClock):
    """
    A memory reactor that gives listeners on port 0 a port of their own.
    """

    next_port = 40000

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == 0:
            self.next_port += 1
            port = self.next_port
        return super().listenTCP(port, factory, backlog, interface)


def _options(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


class ProxyServiceTests(TestCase):
    def test_embedded(self):
        """
        A L{ProxyService} added to an ordinary L{MultiService} listens on
        every frontend when the parent starts, serves through the same
        reactor, and stops listening when the parent stops.
        """
        reactor = MemoryReactorClock()
        parent = MultiService()
        proxy = ProxyService(load_config(CONFIG, REGISTRY), reactor, REGISTRY)
        proxy.setServiceParent(parent)
        self.assertProvides(IService, proxy)
        self.assertEqual(reactor.tcpServers, [])
        parent.privilegedStartService()
        parent.startService()
        listening = [(port, interface) for port, _, _, interface in reactor.tcpServers]
        self.assertEqual(listening, [(7000, "127.0.0.1"), (7001, "")])
        factory = reactor.tcpServers[0][1]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(
            StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1))
        )
        self.assertIn(
            reactor.tcpClients[0][:2], [("127.0.0.1", 5432), ("127.0.0.1", 5433)]
        )
        self.successResultOf(parent.stopService())
        self.assertFalse(proxy.running)
        self.assertEqual(proxy.addresses(), {"db": None, "cache": None})

    def test_bind_early_and_once(self):
        """
        L{ProxyService.bind} listens at once; starting the service later
        does not listen a second time.
        """
        reactor = MemoryReactorClock()
        proxy = ProxyService(load_config(CONFIG, REGISTRY), reactor, REGISTRY)
        proxy.bind()
        self.assertEqual(len(reactor.tcpServers), 2)
        proxy.privilegedStartService()
        proxy.startService()
        self.assertEqual(len(reactor.tcpServers), 2)
        self.assertEqual(proxy.addresses()["db"].port, 7000)

    def test_port_in_use(self):
        """
        A frontend that cannot listen is a L{ConfigError} naming its
        C{listen} key and the reason.
        """
        proxy = ProxyService(load_config(CONFIG, REGISTRY), BusyReactor(), REGISTRY)
        error = self.assertRaises(ConfigError, proxy.bind)
        self.assertEqual(error.path, "frontend[1].listen")
        self.assertIn("Address in use", error.message)

    def test_pools_exposed(self):
        """
        The live pools are reachable by name, for embedding programs.
        """
        proxy = ProxyService(
            load_config(CONFIG, REGISTRY), MemoryReactorClock(), REGISTRY
        )
        self.assertEqual([b.name for b in proxy.pools["pg"].backends], ["pg1", "pg2"])
        self.assertIs(proxy.routers["db"].pool, proxy.pools["pg"])

    def test_persistence_timeout(self):
        """
        A frontend's routers wait 50 ms for a store by default, and
        C{persistence_timeout} changes that.
        """
        config = load_config(CONFIG, REGISTRY)
        proxy = ProxyService(config, MemoryReactorClock(), REGISTRY)
        self.assertEqual(proxy.routers["db"].persistence_timeout, 0.05)
        frontend = attrs.evolve(config.frontends[0], persistence_timeout=0.2)
        config = attrs.evolve(config, frontends=(frontend, *config.frontends[1:]))
        proxy = ProxyService(config, MemoryReactorClock(), REGISTRY)
        self.assertEqual(proxy.routers[frontend.name].persistence_timeout, 0.2)


class MakeServiceTests(TestCase):
    def test_short_flags(self):
        """
        The short flags describe one frontend, its pool and persistence.
        """
        reactor = MemoryReactorClock()
        proxy = _makeService(
            _options(
                "--listen",
                "tcp:7000",
                "--backend",
                "a=127.0.0.1:9001",
                "--backend",
                "127.0.0.1:9002",
                "--persistence",
                "source-ip",
                "--balance",
                "leastconn",
            ),
            reactor,
        )
        self.assertEqual([s[0] for s in reactor.tcpServers], [7000])
        pool = proxy.pools["main"]
        self.assertEqual([b.name for b in pool.backends], ["a", "backend1"])
        self.assertEqual(pool.balancer.name, "leastconn")
        self.assertEqual(proxy.routers["main"].strategies[0].name, "source-ip")

    def test_config_file(self):
        """
        C{--config} loads a TOML file.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                '[[frontend]]\nlisten = "tcp:7100"\npool = "p"\n'
                '[[pool.p.backend]]\naddress = "127.0.0.1:1"\n'
            )
        reactor = MemoryReactorClock()
        _makeService(_options("--config", path), reactor)
        self.assertEqual([s[0] for s in reactor.tcpServers], [7100])

    def test_demo(self):
        """
        C{--demo} starts three TCP and three web backends in the process, a
        source-ip TCP frontend and a cookie HTTP frontend in front of them,
        and the admin listener on 127.0.0.1:8404, and once started, logs what
        to try at each frontend's address and where the dashboard is.
        """
        reactor = PortAssigningReactor()
        proxy = _makeService(_options("--demo"), reactor)
        ports = [(port, interface) for port, _, _, interface in reactor.tcpServers]
        self.assertEqual(
            ports[6:], [(7000, "127.0.0.1"), (8080, "127.0.0.1"), (8404, "127.0.0.1")]
        )
        for pool, first in (("demo-tcp", 0), ("demo-http", 3)):
            backends = [(b.name, b.address) for b in proxy.pools[pool].backends]
            self.assertEqual(
                backends,
                [
                    (f"demo{i}", f"127.0.0.1:{port}")
                    for i, (port, _) in enumerate(ports[first : first + 3], 1)
                ],
            )
        self.assertEqual(proxy.routers["demo-http"].strategies[0].name, "cookie")
        with capturedLogs() as events:
            proxy.startService()
        self.addCleanup(proxy.stopService)
        hints = {e["frontend"]: e["log_format"] for e in events if "frontend" in e}
        self.assertIn("nc {host} {port}", hints["demo-tcp"])
        self.assertIn("curl -s -c jar -b jar", hints["demo-http"])
        dashboard = [e for e in events if "demo dashboard" in e.get("log_format", "")]
        self.assertEqual([e["port"] for e in dashboard], [8404])

    def test_demo_echo_survives_half_close(self):
        """
        The demo's TCP backend is half-closeable: a client that sends its
        lines and shuts its side (C{printf 'ping\\n' | nc ...}) gets the
        greeting and every echo, a last line without its newline included,
        and only then is the connection closed.
        """
        factory = Factory.forProtocol(DemoTCPBackend)
        factory.name = "demo1"
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(IHalfCloseableProtocol.providedBy(protocol))
        protocol.dataReceived(b"PROXY TCP4 192.0.2.7 192.0.2.1 5000 7000\r\nping\nla")
        protocol.dataReceived(b"st")
        protocol.readConnectionLost()
        self.assertEqual(
            transport.value(),
            b"hello 192.0.2.7, this is backend demo1\ndemo1: ping\ndemo1: last\n",
        )
        self.assertTrue(transport.disconnecting)

    def test_demo_one_frontend(self):
        """
        C{--demo --mode http --listen X} runs only the HTTP demo, at X.
        """
        reactor = PortAssigningReactor()
        proxy = _makeService(
            _options("--demo", "--mode", "http", "--listen", "tcp:9999"), reactor
        )
        self.assertEqual(list(proxy.routers), ["demo-http"])
        self.assertEqual(reactor.tcpServers[-1][0], 9999)
        self.assertIsNone(proxy.admin)

    def test_demo_admin(self):
        """
        C{--demo --admin X} puts the demo's admin listener at X, also with
        C{--listen}.
        """
        reactor = PortAssigningReactor()
        proxy = _makeService(
            _options(
                "--demo",
                "--mode",
                "http",
                "--listen",
                "tcp:9999",
                "--admin",
                "tcp:9998",
            ),
            reactor,
        )
        self.assertEqual(reactor.tcpServers[-1][0:4:3], (9998, "127.0.0.1"))
        self.assertIsNotNone(proxy.admin)

    def test_error_exits_with_one_line(self):
        """
        From C{twistd}, a configuration mistake ends the process with a
        one-line message naming the key, not a traceback.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                '[[frontend]]\nlisten = "tcp:0"\npool = "p"\ncolour = "red"\n'
                '[[pool.p.backend]]\naddress = "127.0.0.1:1"\n'
            )
        error = self.assertRaises(SystemExit, makeService, _options("--config", path))
        message = str(error.code)
        self.assertIn("frontend[0].colour: unknown key", message)
        self.assertNotIn("\n", message)

    def test_cookie_name(self):
        """
        C{--cookie-name} names the cookie strategy's cookie (the issue's
        example command line), and the keys never show in reprs, which
        logs could print.
        """
        state = self.mktemp()
        os.mkdir(state)
        proxy = _makeService(
            _options(
                *"--mode http --listen tcp:8080 --backend a=127.0.0.1:9001 "
                "--backend b=127.0.0.1:9002 --persistence cookie "
                "--cookie-name SRV".split(),
                "--state-dir",
                state,
            ),
            MemoryReactorClock(),
        )
        strategy = proxy.routers["main"].strategies[0]
        self.assertIn("name='SRV'", repr(strategy))
        self.assertNotIn("keys=", repr(strategy))
        self.assertRaises(
            UsageError,
            _options,
            "--listen",
            "tcp:1",
            "--backend",
            "a:1",
            "--cookie-name",
            "SRV",
        )


class FlagConflictTests(TestCase):
    def test_config_takes_no_flags(self):
        """
        C{--config} with any flag it would silently override is refused.
        """
        for flag in (
            ["--mode", "http"],
            ["--balance", "leastconn"],
            ["--listen", "tcp:1"],
        ):
            error = self.assertRaises(UsageError, _options, "--config", "x.toml", *flag)
            self.assertIn(flag[0], str(error))

    def test_demo_takes_mode_and_listen_only(self):
        """
        C{--demo} refuses the flags it would ignore.
        """
        error = self.assertRaises(UsageError, _options, "--demo", "--balance", "hash")
        self.assertIn("--balance", str(error))
        _options("--demo", "--mode", "http", "--listen", "tcp:1")

    def test_unnamed_backends_never_clash(self):
        """
        Unnamed backends are named backend1, backend2, ... skipping the names
        given to others.
        """
        proxy = _makeService(
            _options(
                "--listen",
                "tcp:1",
                "--backend",
                "backend1=127.0.0.1:1",
                "--backend",
                "127.0.0.1:2",
                "--backend",
                "127.0.0.1:3",
            ),
            MemoryReactorClock(),
        )
        names = [b.name for b in proxy.pools["main"].backends]
        self.assertEqual(names, ["backend1", "backend2", "backend3"])
