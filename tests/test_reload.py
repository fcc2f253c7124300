"""
Tests for reloading a running proxy (L{ProxyService.reload}, C{SIGHUP},
C{POST /api/reload}) and for its graceful shutdown (L{ProxyService.stopService},
C{shutdown_timeout}, a second C{SIGTERM}).
"""

import copy
import os
import signal

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from stickyproxy import AdminState, ConfigError, load_config
from stickyproxy.core._clients import ClientSet
from stickyproxy.metrics import proxy_registry
from stickyproxy.model import ProbeRan
from stickyproxy.persistence._cookie import cookie
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ProxyService
from stickyproxy.tap import install_signal_handlers
from stickyproxy.testing import routing_context

from tests._base import TestCase
from tests.test_admin import AdminTestCase, config_data

REGISTRY = StrategyRegistry.of([source_ip, cookie])
CLIENT = IPv4Address("TCP", "192.0.2.10", 50000)
REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class _Port:
    """
    A listening port that knows whether it still listens.
    """

    def __init__(self, port, factory):
        self.port = port
        self.factory = factory
        self.listening = True

    def stopListening(self):
        self.listening = False

    def getHost(self):
        return IPv4Address("TCP", "0.0.0.0", self.port)


class PortsReactor(MemoryReactorClock):
    """
    A memory reactor whose ports say whether they listen, on which the
    ports in C{busy} are taken.
    """

    def __init__(self):
        super().__init__()
        self.busy = set()
        self.ports = []

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address in use"))
        self.tcpServers.append((port, factory, backlog, interface))
        listening = _Port(port, factory)
        self.ports.append(listening)
        return listening

    def listening(self):
        """
        :returns: the ports that listen, by number.
        """
        return {port.port: port for port in self.ports if port.listening}


def _data(state_dir):
    """
    The admin tests' proxy (an HTTP frontend with cookie persistence and a
    TCP one with a source-ip table, on one pool probed over TCP), without
    the admin listener.
    """
    data = config_data()
    del data["admin"]
    data["state_dir"] = state_dir
    return data


class ReloadTestCase(TestCase):
    """
    A running proxy on a L{PortsReactor}, and ways to reload it.
    """

    def setUp(self):
        self.reactor = PortsReactor()
        state_dir = self.mktemp()
        os.mkdir(state_dir)
        self.data = _data(state_dir)
        self.proxy = ProxyService(
            load_config(self.data, REGISTRY), self.reactor, REGISTRY
        )
        self.proxy.privilegedStartService()
        self.proxy.startService()

    def changed(self):
        """
        :returns: a copy of the running config's data, to change.
        """
        return copy.deepcopy(self.data)

    def reload(self, data):
        """
        Reload C{data}.

        :returns: the changes.
        """
        return self.proxy.reload(load_config(data, REGISTRY))

    def frontend(self, data, name):
        return next(f for f in data["frontend"] if f["name"] == name)

    def tcp_client(self, peer=CLIENT, frontend="db"):
        """
        A client of a TCP frontend, spliced to the backend it was sent to.

        :returns: its protocol and transport, and the backend's port.
        """
        protocol = self.proxy.listeners[frontend].factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        _, port, factory, _, _ = self.reactor.tcpClients[-1]
        backend = factory.buildProtocol(None)
        backend.makeConnection(StringTransport())
        return protocol, transport, port

    def http_client(self, frontend="web"):
        """
        A connection to an HTTP frontend, as its port would make it.
        """
        port = self.reactor.listening()[8080 if frontend == "web" else 8081]
        protocol = port.factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        return protocol, transport

    def send_request(self, protocol):
        """
        Send a request on an HTTP client connection, and complete its
        backend connect.

        :returns: the backend's protocol and transport.
        """
        protocol.dataReceived(REQUEST)
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        backend = factory.buildProtocol(None)
        transport = StringTransport()
        backend.makeConnection(transport)
        return backend, transport


class KeptTests(ReloadTestCase):
    def test_same_config(self):
        """
        Reloading the running configuration changes nothing: the same
        listeners and ports, routers, strategies and pools.
        """
        listeners = dict(self.proxy.listeners)
        ports = dict(self.reactor.listening())
        routers = dict(self.proxy.routers)
        pools = dict(self.proxy.pools)
        monitors = dict(self.proxy.monitors)
        self.assertEqual(self.reload(self.changed()), ["nothing changed"])
        self.assertEqual(self.proxy.listeners, listeners)
        self.assertEqual(self.reactor.listening(), ports)
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertEqual(self.proxy.routers, routers)
        self.assertEqual(self.proxy.pools, pools)
        self.assertEqual(self.proxy.monitors, monitors)

    def test_moved_tables(self):
        """
        A frontend is the same wherever its table is in the file: moving
        it (which changes its key paths) changes nothing.
        """
        data = self.changed()
        data["frontend"].reverse()
        routers = dict(self.proxy.routers)
        self.assertEqual(self.reload(data), ["nothing changed"])
        self.assertEqual(self.proxy.routers, routers)

    def test_kept_table(self):
        """
        A frontend whose pool and persistence are the same keeps its router
        and strategies, so the clients its table holds stay bound, while
        another frontend's settings change.
        """
        self.tcp_client()
        router = self.proxy.routers["db"]
        strategy = router.strategies[0]
        bound = strategy.lookup(routing_context(CLIENT.host))
        self.assertIsNotNone(bound)
        data = self.changed()
        self.frontend(data, "web")["debug_header"] = "X-Debug"
        self.frontend(data, "db")["idle_timeout"] = 60
        self.assertEqual(
            self.reload(data),
            ["frontend web: new settings", "frontend db: new settings"],
        )
        self.assertIs(self.proxy.routers["db"], router)
        self.assertIs(self.proxy.routers["db"].strategies[0], strategy)
        self.assertIs(strategy.lookup(routing_context(CLIENT.host)), bound)

    def test_kept_socket_new_factory(self):
        """
        A frontend whose settings change but whose C{listen} does not keeps
        its socket (the same port, no second listen); new connections get
        its new factory, and the connection made before keeps the old one
        and finishes its request.
        """
        port = self.reactor.listening()[8080]
        old = self.proxy.listeners["web"].factory
        client, client_transport = self.http_client()
        backend, backend_transport = self.send_request(client)
        data = self.changed()
        self.frontend(data, "web")["debug_header"] = "X-Debug"
        self.reload(data)
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertIs(self.reactor.listening()[8080], port)
        new = self.proxy.listeners["web"].factory
        self.assertIsNot(new, old)
        self.assertIs(port.factory.buildProtocol(CLIENT).factory, new)
        self.assertIs(client.factory, old)
        backend.dataReceived(OK)
        answer = client_transport.value()
        self.assertTrue(answer.endswith(b"\r\n\r\nok"), answer)
        # The old factory's connection closes after its request.
        self.assertTrue(client_transport.disconnecting)
        self.assertNotIn(b"x-debug", answer.lower())

    def test_strict_only(self):
        """
        A change of C{strict} alone keeps the strategies, in a new router.
        """
        strategies = self.proxy.routers["db"].strategies
        data = self.changed()
        self.frontend(data, "db")["strict"] = True
        self.assertEqual(
            self.reload(data),
            ["frontend db: new routing settings"],
        )
        router = self.proxy.routers["db"]
        self.assertTrue(router.strict)
        self.assertIs(router.strategies, strategies)
        self.assertIs(self.proxy.listeners["db"].factory.router, router)

    def test_new_persistence(self):
        """
        A frontend whose persistence changes gets new strategies; the
        session counts of the old ones leave the pool.
        """
        pool = self.proxy.pools["app"]
        before = pool.session_sources
        old = self.proxy.routers["db"].strategies[0]
        data = self.changed()
        self.frontend(data, "db")["persistence"]["timeout"] = 60
        self.assertEqual(
            self.reload(data),
            [
                "frontend db: new pool or persistence (its in-memory stick tables start empty)"
            ],
        )
        self.assertIsNot(self.proxy.routers["db"].strategies[0], old)
        self.assertEqual(len(pool.session_sources), len(before))
        self.assertNotIn(old.table.count, pool.session_sources)


class FrontendChangeTests(ReloadTestCase):
    def test_added_and_removed(self):
        """
        A new frontend listens at once; a removed one stops listening, and
        a connection it made finishes undisturbed.
        """
        protocol, transport, _ = self.tcp_client()
        data = self.changed()
        data["frontend"] = [
            self.frontend(data, "web"),
            {"name": "cache", "listen": "tcp:7001", "pool": "app"},
        ]
        self.assertEqual(
            self.reload(data),
            ["frontend cache: added (tcp:7001)", "frontend db: removed"],
        )
        self.assertEqual(sorted(self.reactor.listening()), [7001, 8080])
        self.assertEqual(sorted(self.proxy.listeners), ["cache", "web"])
        self.assertEqual(
            sorted(s.name for s in self.proxy if s.name is not None),  # frontends only
            ["cache", "web"],
        )
        protocol.dataReceived(b"still here")
        self.assertFalse(transport.disconnecting)

    def test_new_listen(self):
        """
        A frontend whose C{listen} changes listens on the new one and stops
        listening on the old one.
        """
        data = self.changed()
        self.frontend(data, "db")["listen"] = "tcp:7002"
        self.assertEqual(self.reload(data), ["frontend db: listens on tcp:7002"])
        self.assertEqual(sorted(self.reactor.listening()), [7002, 8080])


class AdminListenerTests(ReloadTestCase):
    def test_moved_and_removed(self):
        """
        A reload that adds C{[admin]} starts the admin listener; a new
        C{listen} moves it, with the same site (its traffic totals go on);
        one without C{[admin]} stops it.
        """
        data = self.changed()
        data["admin"] = {"listen": "tcp:8081"}
        self.assertEqual(
            self.reload(data), ["admin: listens on tcp:8081:interface=127.0.0.1"]
        )
        site = self.proxy.admin.factory
        self.assertEqual(sorted(self.reactor.listening()), [7000, 8080, 8081])
        data["admin"] = {"listen": "tcp:8082", "token": "new"}
        self.assertEqual(
            self.reload(data), ["admin: listens on tcp:8082:interface=127.0.0.1"]
        )
        self.assertEqual(sorted(self.reactor.listening()), [7000, 8080, 8082])
        self.assertIs(self.proxy.admin.factory, site)
        self.assertEqual(self.proxy.config.admin.token, "new")
        del data["admin"]
        self.assertEqual(self.reload(data), ["admin: stops listening"])
        self.assertEqual(sorted(self.reactor.listening()), [7000, 8080])
        self.assertIsNone(self.proxy.admin)


class LogTests(ReloadTestCase):
    def test_access_log_file(self):
        """
        A reload that gives a frontend an C{access_log} file opens it and
        logs there; one that takes it away stops logging there; a file that cannot be
        written is refused, and changes nothing.
        """
        path = os.path.join(self.data["state_dir"], "access.log")
        data = self.changed()
        self.frontend(data, "web")["access_log"] = path
        self.reload(data)
        lines = self.proxy.log_files[path]
        client, _ = self.http_client()
        backend, _ = self.send_request(client)
        backend.dataReceived(OK)
        with open(path) as log:
            self.assertIn('"GET / HTTP/1.1" 200', log.read())
        self.frontend(data, "web")["access_log"] = "/nonexistent/dir/access.log"
        error = self.assertRaises(ConfigError, self.reload, data)
        self.assertEqual(error.path, "frontend[0].access_log")
        self.assertIs(self.proxy.log_files[path], lines)
        del self.frontend(data, "web")["access_log"]
        self.reload(data)
        self.assertEqual(self.proxy.log_files, {})
        client, _ = self.http_client()
        backend, _ = self.send_request(client)
        backend.dataReceived(OK)
        with open(path) as log:
            self.assertEqual(log.read().count("GET /"), 1)


class BackendChangeTests(ReloadTestCase):
    def backends(self):
        return [b.name for b in self.proxy.pools["app"].backends]

    def test_added(self):
        """
        An added backend joins the same pool, takes new clients, and its
        health monitor probes it.
        """
        pool = self.proxy.pools["app"]
        data = self.changed()
        data["pool"]["app"]["backend"].append(
            {"name": "c", "address": "127.0.0.1:9003"}
        )
        self.assertEqual(
            self.reload(data), ["pool app: backend c added (127.0.0.1:9003)"]
        )
        self.assertIs(self.proxy.pools["app"], pool)
        self.assertEqual(self.backends(), ["a", "b", "c"])
        self.assertIn(pool["c"], pool.accepting_new())
        self.assertIsNotNone(self.proxy.monitors["app"].status(pool["c"]))

    def test_removed_idle(self):
        """
        A backend with no sessions leaves the pool at once.
        """
        data = self.changed()
        del data["pool"]["app"]["backend"][1]
        self.assertEqual(self.reload(data), ["pool app: backend b removed"])
        self.assertEqual(self.backends(), ["a"])

    def test_removed_with_sessions(self):
        """
        A backend that holds sessions drains (its clients stay) and leaves
        the pool once its last session ends.
        """
        protocol, transport, port = self.tcp_client()
        name = {9001: "a", 9002: "b"}[port]
        data = self.changed()
        data["pool"]["app"]["backend"] = [
            b for b in data["pool"]["app"]["backend"] if b["name"] != name
        ]
        self.assertEqual(
            self.reload(data),
            [
                f"pool app: backend {name} not in the config: it drains its 1 "
                "sessions, then leaves"
            ],
        )
        pool = self.proxy.pools["app"]
        self.assertEqual(pool[name].admin_state, AdminState.DRAIN)
        self.assertFalse(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        # Its source-ip table entry is a session until it expires.
        self.reactor.advance(1799)
        self.assertIn(name, self.backends())
        self.reactor.advance(2)
        self.assertNotIn(name, self.backends())

    def test_runtime_state_kept(self):
        """
        A backend whose config is the same keeps what the operator set at
        runtime; one whose weight changed in the config gets the new weight
        and keeps the rest.
        """
        pool = self.proxy.pools["app"]
        pool.set_admin_state("a", AdminState.MAINT)
        pool.set_admin_state("b", AdminState.DRAIN)
        data = self.changed()
        data["pool"]["app"]["backend"][1]["weight"] = 5
        self.assertEqual(self.reload(data), ["pool app: backend b weight 2 -> 5"])
        self.assertEqual(pool["a"].admin_state, AdminState.MAINT)
        self.assertEqual(pool["b"].admin_state, AdminState.DRAIN)
        self.assertEqual(pool["b"].weight, 5)

    def test_replaced(self):
        """
        A backend whose address changes is replaced by one at the new
        address, under the same name.
        """
        pool = self.proxy.pools["app"]
        old = pool["b"]
        data = self.changed()
        data["pool"]["app"]["backend"][1]["address"] = "127.0.0.1:9012"
        self.assertEqual(
            self.reload(data),
            ["pool app: backend b replaced (127.0.0.1:9002 -> 127.0.0.1:9012)"],
        )
        self.assertIsNot(pool["b"], old)
        self.assertEqual(pool["b"].address, "127.0.0.1:9012")
        self.assertEqual(self.backends(), ["a", "b"])

    def test_new_health_settings(self):
        """
        New health settings give the pool a new monitor, which keeps the
        backends' health as it is.
        """
        pool = self.proxy.pools["app"]
        old = self.proxy.monitors["app"]
        data = self.changed()
        data["pool"]["app"]["health"]["interval"] = 20
        data["pool"]["app"]["health"]["init_state"] = "down"
        self.assertEqual(self.reload(data), ["pool app: new health check settings"])
        monitor = self.proxy.monitors["app"]
        self.assertIsNot(monitor, old)
        self.assertTrue(monitor.running)
        self.assertFalse(old.running)
        self.assertIs(pool.passive, monitor)
        self.assertTrue(all(b.healthy for b in pool.backends))

    def test_new_pool_settings(self):
        """
        A pool whose own settings change is built afresh, with its
        backends' runtime state, and its frontends get new strategies.
        """
        old = self.proxy.pools["app"]
        old.set_admin_state("a", AdminState.DRAIN)
        data = self.changed()
        data["pool"]["app"]["retries"] = 5
        changes = self.reload(data)
        self.assertEqual(
            changes[0],
            "pool app: new settings: built afresh (the stick tables of its "
            "frontends start empty)",
        )
        pool = self.proxy.pools["app"]
        self.assertIsNot(pool, old)
        self.assertEqual(pool.retries, 5)
        self.assertEqual(pool["a"].admin_state, AdminState.DRAIN)
        self.assertIs(self.proxy.routers["db"].pool, pool)
        self.assertIs(self.proxy.listeners["web"].factory.router.pool, pool)


class ReloadMetricsTests(ReloadTestCase):
    def test_gone_backends_leave_metrics(self):
        """
        The series of backends a reload takes away with their pool (the
        pool removed, or built afresh without them) leave C{/metrics}, as
        those of a backend removed from a kept pool do; a backend the new
        pool keeps keeps its series, and one a later reload brings back
        counts again.
        """
        registry = proxy_registry(self.proxy)
        for pool, backend in [("spare", "s"), ("app", "a"), ("app", "b")]:
            self.proxy.events.probe_ran(ProbeRan(pool, backend, True, "ok", 0.1))
        data = self.changed()
        del data["pool"]["spare"]
        data["pool"]["app"]["retries"] = 5
        del data["pool"]["app"]["backend"][1]
        self.reload(data)
        probed = {
            (sample.labels["pool"], sample.labels["backend"])
            for family in registry.collect()
            if family.name == "stickyproxy_probe_duration_seconds"
            for sample in family.samples
            if sample.name.endswith("_count")
        }
        self.assertEqual(probed, {("app", "a")})
        # Back with a pool built afresh again: counted where a scrape sees.
        data["pool"]["app"]["retries"] = 4
        data["pool"]["app"]["backend"].append(
            {"name": "b", "address": "127.0.0.1:9002"}
        )
        self.reload(data)
        self.proxy.events.probe_ran(ProbeRan("app", "b", True, "ok", 0.1))
        self.assertEqual(
            registry.get_sample_value(
                "stickyproxy_probe_duration_seconds_count",
                {"pool": "app", "backend": "b"},
            ),
            1,
        )


class RejectedTests(ReloadTestCase):
    def assert_unchanged(self, data, path, fragment):
        """
        Reloading C{data} fails with a L{ConfigError} at C{path}, logs one
        error line, and leaves everything as it was (and no new port
        listening).
        """
        state = self.state()
        with capturedLogs() as events:
            error = self.assertRaises(
                ConfigError, self.proxy.reload, load_config(data, REGISTRY)
            )
        self.assertEqual(error.path, path)
        self.assertIn(fragment, error.message)
        errors = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("reload rejected", errors[0]["log_format"])
        self.assertEqual(self.state(), state)

    def state(self):
        """
        :returns: what a rejected reload must leave as it was.
        """
        return (
            dict(self.proxy.listeners),
            dict(self.reactor.listening()),
            dict(self.proxy.routers),
            dict(self.proxy.pools),
            dict(self.proxy.monitors),
            list(self.proxy.pools["app"].backends),
            self.proxy.pools["app"].session_sources,
            self.proxy.config,
        )

    def test_port_in_use(self):
        """
        A new frontend whose port is taken: nothing changes, and the other
        new frontend, bound already, stops listening again.
        """
        self.reactor.busy.add(7009)
        data = self.changed()
        data["frontend"] += [
            {"name": "one", "listen": "tcp:7008", "pool": "app"},
            {"name": "two", "listen": "tcp:7009", "pool": "app"},
        ]
        data["pool"]["app"]["backend"].append(
            {"name": "c", "address": "127.0.0.1:9003"}
        )
        self.assert_unchanged(data, "frontend[3].listen", "Address in use")

    def test_bad_strategy_option(self):
        """
        A new persistence with a wrong option: the strategies built before
        it leave no session count behind.
        """
        data = self.changed()
        self.frontend(data, "db")["persistence"] = [
            {"strategy": "source-ip", "mode": "table", "timeout": 30},
            {"strategy": "source-ip", "mode": "nonsense"},
        ]
        self.assert_unchanged(data, "frontend[1].persistence[1].mode", "")

    def test_bad_endpoint(self):
        """
        A new backend address or listen string that does not parse.
        """
        data = self.changed()
        data["pool"]["app"]["backend"].append({"name": "c", "address": "nope:"})
        self.assert_unchanged(data, "pool.app.backend[2].address", "nope:")
        data = self.changed()
        self.frontend(data, "db")["listen"] = "tcp:notaport"
        self.assert_unchanged(data, "frontend[1].listen", "notaport")

    def test_no_source(self):
        """
        A proxy started without a config file has nothing to reload from.
        """
        with capturedLogs() as events:
            error = self.assertRaises(ConfigError, self.proxy.reload_from_source)
        self.assertIn("--config", error.message)
        self.assertEqual(len(events), 1)

    def test_source(self):
        """
        C{reload_from_source} reloads what C{config_source} reads.
        """
        data = self.changed()
        del data["pool"]["app"]["backend"][1]
        self.proxy.config_source = lambda: load_config(data, REGISTRY)
        self.assertEqual(
            self.proxy.reload_from_source(), ["pool app: backend b removed"]
        )


class ShutdownTests(ReloadTestCase):
    def stop(self):
        self.stopped = self.proxy.stopService()
        return self.stopped

    def test_waits_for_in_flight(self):
        """
        A shutdown stops listening at once, closes idle keep-alive
        connections at once, and waits for a response under way, which
        goes out whole with C{Connection: close}.
        """
        idle, idle_transport = self.http_client()
        busy, busy_transport = self.http_client()
        backend, _ = self.send_request(busy)
        self.stop()
        self.assertEqual(self.reactor.listening(), {})
        self.assertTrue(idle_transport.disconnecting)
        idle.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(self.stopped)
        self.reactor.advance(29)
        self.assertNoResult(self.stopped)
        backend.dataReceived(OK)
        answer = busy_transport.value()
        self.assertIn(b"connection: close", answer)
        self.assertTrue(answer.endswith(b"ok"))
        self.assertTrue(busy_transport.disconnecting)
        self.assertNoResult(self.stopped)
        busy.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(self.stopped)
        self.assertFalse(self.proxy.running)

    def test_timeout(self):
        """
        A spliced TCP connection is waited for up to C{shutdown_timeout},
        then cut off.
        """
        self.data["shutdown_timeout"] = 5
        self.reload(self.changed())
        _, transport, _ = self.tcp_client()
        with capturedLogs() as events:
            self.stop()
            self.reactor.advance(4.9)
            self.assertNoResult(self.stopped)
            self.assertFalse(transport.disconnecting)
            self.reactor.advance(0.1)
        self.successResultOf(self.stopped)
        self.assertTrue(transport.disconnected)
        self.assertEqual(
            [e["count"] for e in events if "count" in e],
            [1, 1],  # waiting for one, cutting one off
        )

    def test_stop_now(self):
        """
        L{ProxyService.stop_now} (a second signal) cuts off what is left at
        once; before the shutdown, it makes the shutdown not wait at all.
        """
        _, transport, _ = self.tcp_client()
        self.stop()
        self.assertNoResult(self.stopped)
        self.proxy.stop_now()
        self.successResultOf(self.stopped)
        self.assertTrue(transport.disconnected)

    def test_hurried_before(self):
        """
        After L{ProxyService.stop_now}, a shutdown does not wait.
        """
        _, transport, _ = self.tcp_client()
        self.proxy.stop_now()
        self.stop()
        self.reactor.advance(0)
        self.successResultOf(self.stopped)
        self.assertTrue(transport.disconnected)

    def test_retired_factories(self):
        """
        Connections of a frontend a reload replaced are waited for too.
        """
        _, transport, _ = self.tcp_client()
        data = self.changed()
        self.frontend(data, "db")["idle_timeout"] = 60
        self.reload(data)
        self.stop()
        self.assertNoResult(self.stopped)
        self.reactor.advance(30)
        self.successResultOf(self.stopped)
        self.assertTrue(transport.disconnected)

    def test_no_reload_while_stopping(self):
        """
        A reload during the shutdown is refused.
        """
        self.tcp_client()
        self.stop()
        error = self.assertRaises(ConfigError, self.reload, self.changed())
        self.assertIn("shutting down", error.message)

    def test_config(self):
        """
        C{shutdown_timeout} is 30 s by default; it takes 0 to a day, and a
        mistake names the key.
        """
        data = _data(".")
        self.assertEqual(load_config(data, REGISTRY).shutdown_timeout, 30.0)
        data["shutdown_timeout"] = 0
        self.assertEqual(load_config(data, REGISTRY).shutdown_timeout, 0.0)
        for value in (-1, 86401, "30s"):
            data["shutdown_timeout"] = value
            error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
            self.assertEqual(error.path, "shutdown_timeout")


class ClientSetTests(TestCase):
    def test_when_empty(self):
        """
        L{ClientSet.when_empty} fires once the last client leaves, or at
        once when none is there.
        """
        clients = ClientSet()
        self.successResultOf(clients.when_empty())
        clients.add("a")
        clients.add("b")
        waiting = clients.when_empty()
        clients.discard("a")
        self.assertNoResult(waiting)
        clients.discard("b")
        self.successResultOf(waiting)


class _SignalReactor(MemoryReactorClock):
    """
    Runs what handlers pass to the reactor thread at once.
    """

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class SignalTests(ReloadTestCase):
    def setUp(self):
        super().setUp()
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        self.hup = signal.getsignal(signal.SIGHUP)
        self.first = []
        # What the reactor installs as it starts: its own stop.
        reactors = self.first.append
        signal.signal(signal.SIGTERM, lambda signum, frame: reactors(signum))
        signal.signal(signal.SIGINT, lambda signum, frame: reactors(signum))
        term = signal.getsignal(signal.SIGTERM)
        self.signals = _SignalReactor()
        install_signal_handlers(self.proxy, self.signals)
        # SIGHUP at once; the others once the reactor runs (with its own).
        self.assertIsNot(signal.getsignal(signal.SIGHUP), self.hup)
        self.assertIs(signal.getsignal(signal.SIGTERM), term)
        [(install, _, _)] = self.signals.triggers["after"]["startup"]
        install()
        self.assertIsNot(signal.getsignal(signal.SIGTERM), term)

    def test_hup(self):
        """
        C{SIGHUP} reloads the config file; a bad one is logged and changes
        nothing.
        """
        data = self.changed()
        del data["pool"]["app"]["backend"][1]
        self.proxy.config_source = lambda: load_config(data, REGISTRY)
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        self.assertEqual([b.name for b in self.proxy.pools["app"].backends], ["a"])
        data["pool"]["app"]["backend"] = []
        with capturedLogs() as events:
            signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        self.assertEqual(
            [e["log_level"] for e in events], [LogLevel.info, LogLevel.error]
        )
        self.assertEqual([b.name for b in self.proxy.pools["app"].backends], ["a"])

    def test_second_stop_signal(self):
        """
        The first C{SIGTERM} goes to the reactor's handler (a graceful
        stop); a second one, or a C{SIGINT} after it, stops at once.
        """
        _, transport, _ = self.tcp_client()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        self.assertEqual(self.first, [signal.SIGTERM])
        stopped = self.proxy.stopService()  # what the reactor's stop leads to
        self.assertNoResult(stopped)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        self.assertEqual(self.first, [signal.SIGTERM])
        self.successResultOf(stopped)
        self.assertTrue(transport.disconnected)


class ReloadAPITests(AdminTestCase):
    """
    C{POST /api/reload}.
    """

    def test_reload(self):
        """
        A reload answers 200 with the changes.
        """
        data = config_data()
        data["state_dir"] = self.proxy.config.state_dir
        data["pool"]["app"]["backend"].pop()
        self.proxy.config_source = lambda: load_config(data, REGISTRY)
        code, _, body = self.request("POST", "/api/reload")
        self.assertEqual(
            (code, body), (200, {"changes": ["pool app: backend b removed"]})
        )

    def test_rejected(self):
        """
        A config that cannot be applied answers 400 with its error.
        """
        self.assertError(400, "POST", "/api/reload", "--config")
        self.assertError(405, "GET", "/api/reload", "not allowed")
        self.assertError(404, "POST", "/api/reload/more", "no such")


class ReloadTokenTests(AdminTestCase):
    admin = {"token": "t0ken"}

    def test_needs_token(self):
        """
        With an admin token, a reload needs it.
        """
        self.assertError(401, "POST", "/api/reload", "token")
        self.assertError(400, "POST", "/api/reload", "--config", token="t0ken")
