"""
Tests for the stick table kept in the shared store
(L{stickyproxy.persistence.tables._redis}), against the Clock-driven fake
Redis: two tables on two stores stand for two proxies.
"""

import copy
import gc

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import MemoryReactorClock, StringTransport

from stickyproxy.config._load import load_config
from stickyproxy.config._options import ConfigError
from stickyproxy.core._balancers import RoundRobin
from stickyproxy.core._pool import Pool
from stickyproxy.core._router import Router
from stickyproxy.interfaces import (
    IListableStickTable,
    IStickTableStore,
    IStoreStrategyFactory,
)
from stickyproxy.persistence._affinity import TableAffinity
from stickyproxy.persistence._appcookie import AppCookieLearn, app_cookie
from stickyproxy.persistence._header import header
from stickyproxy.persistence._secrets import RandomSecrets
from stickyproxy.persistence._sessionid import SessionIdReader
from stickyproxy.persistence._sourceip import SourceIPKey, source_ip
from stickyproxy.persistence.tables._memory import StickTable
from stickyproxy.persistence.tables._redis import FRESH, RedisStickTable, RedisTables
from stickyproxy.service import ProxyService
from stickyproxy.store import RedisStore
from stickyproxy.store._sessions import SharedCountTable
from stickyproxy.tcp._splice import TCPProxyFactory
from stickyproxy.testing import make_pool, tcp_backend

from tests._base import TestCase
from tests._fakeredis import FakeRedis
from tests.test_config import GOOD, REGISTRY
from tests.test_http import OK, HTTPTestCase

NAMESPACE = b"sp:table:web:source-ip:"


class Proxies:
    """
    Two proxies' stores on one fake Redis, and a table of each.
    """

    def __init__(self, clock, timeout=0.05, size=100, **server):
        self.clock = clock
        self.server = FakeRedis(clock, **server)
        self.stores = []
        self.tables = []
        for _ in range(2):
            store = RedisStore(
                clock=clock, connect=self.server.connector, prefix="sp", timeout=timeout
            )
            store.startService()
            self.stores.append(store)
            tables = RedisTables(store, clock, "web")
            self.tables.append(tables.table("source-ip", 60, size))


class RedisStickTableTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.proxies = Proxies(self.clock)
        self.server = self.proxies.server
        self.a, self.b = self.proxies.tables

    def timers(self):
        """
        The clock's delayed calls but the stores' heartbeats.
        """
        return [
            call
            for call in self.clock.getDelayedCalls()
            if not isinstance(call.func, LoopingCall)
        ]

    def test_provides(self):
        """
        The table provides L{IListableStickTable}, and its maker
        L{IStickTableStore}.
        """
        self.assertProvides(IListableStickTable, self.a)
        store = self.proxies.stores[0]
        self.assertProvides(IStickTableStore, RedisTables(store, self.clock, "web"))

    def test_binding_in_the_store(self):
        """
        A binding is one key under the frontend's and strategy's namespace,
        holding the backend's name, expiring after the idle timeout.
        """
        self.a.bind(b"k", "b1")
        self.assertEqual(self.server.get_value(NAMESPACE + b"k"), b"b1")
        self.assertEqual(self.server.ttl(NAMESPACE + b"k"), 60)

    def test_learned_elsewhere(self):
        """
        A binding learned on one proxy is honoured by the other within one
        round trip: an unknown key is always asked for.
        """
        self.assertIsNone(self.successResultOf(self.b.get(b"k")))
        self.a.bind(b"k", "b1")
        self.assertEqual(self.successResultOf(self.b.get(b"k")), "b1")
        self.assertEqual(self.b.count("b1"), 1)
        self.assertEqual([e.key for e in self.b.entries()], [b"k"])

    def test_fresh_answer_at_once(self):
        """
        What the store confirmed less than L{FRESH} seconds ago is answered
        at once, without asking it; later, it is asked again.
        """
        self.a.bind(b"k", "b1")
        self.assertEqual(self.a.get(b"k"), "b1")
        self.successResultOf(self.b.get(b"k"))
        self.assertEqual(self.b.get(b"k"), "b1")
        self.clock.advance(FRESH)
        self.assertIsInstance(self.b.get(b"k"), Deferred)

    def test_moved_elsewhere(self):
        """
        A binding another proxy moved is followed once the local answer is
        no longer fresh; one another proxy forgot is forgotten here too.
        """
        self.a.bind(b"k", "b1")
        self.successResultOf(self.b.get(b"k"))
        self.a.bind(b"k", "b2")
        self.assertEqual(self.b.get(b"k"), "b1")
        self.clock.advance(FRESH)
        self.assertEqual(self.successResultOf(self.b.get(b"k")), "b2")
        self.assertEqual((self.b.count("b1"), self.b.count("b2")), (0, 1))
        self.a.forget(b"k")
        self.clock.advance(FRESH)
        self.assertIsNone(self.successResultOf(self.b.get(b"k")))
        self.assertEqual(len(self.b), 0)

    def test_use_restarts_expiry(self):
        """
        A lookup restarts the binding's TTL in the store; unused, it
        expires there.
        """
        self.a.bind(b"k", "b1")
        self.a.release(b"k")
        self.clock.advance(50)
        self.successResultOf(self.b.get(b"k"))
        self.assertEqual(self.server.ttl(NAMESPACE + b"k"), 60)
        self.clock.advance(60)
        self.assertIsNone(self.server.get_value(NAMESPACE + b"k"))

    def test_held_binding_kept_alive(self):
        """
        A binding held here (an open connection) longer than its timeout
        stays in the store, its TTL restarted in the background about every
        third of the timeout: the other proxy still honours it, and so does
        this one after asking.
        """
        self.a.bind(b"k", "b1")
        for _ in range(10):
            self.clock.advance(20)
        self.assertEqual(self.server.get_value(NAMESPACE + b"k"), b"b1")
        self.assertGreater(self.server.ttl(NAMESPACE + b"k"), 60 - 20)
        self.assertEqual(self.successResultOf(self.b.get(b"k")), "b1")
        self.assertEqual(self.successResultOf(self.a.get(b"k")), "b1")

    def test_held_binding_restored(self):
        """
        A held binding the store lost without this proxy noticing (a
        flushed or restarted Redis) is written again at the next round;
        one another proxy moved meanwhile is left as it is.
        """
        self.a.bind(b"k", "b1")
        self.a.bind(b"m", "b1")
        self.server.flush()
        self.server.data[NAMESPACE + b"m"] = b"b2"
        self.clock.advance(20)
        self.assertEqual(self.server.get_value(NAMESPACE + b"k"), b"b1")
        self.assertEqual(self.server.ttl(NAMESPACE + b"k"), 60)
        self.assertEqual(self.server.get_value(NAMESPACE + b"m"), b"b2")

    def test_released_binding_not_kept_alive(self):
        """
        Once released, a binding is no longer kept alive: unused, it
        expires in the store, and the table's round stops.
        """
        self.a.bind(b"k", "b1")
        self.a.release(b"k")
        for _ in range(4):
            self.clock.advance(20)
        self.assertIsNone(self.server.get_value(NAMESPACE + b"k"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # the heartbeats

    def test_replaced_table_round_ends(self):
        """
        The round of a table no longer used (a reload replaced it) ends:
        it does not keep the table alive.
        """
        self.b.bind(b"x", "b1")
        self.proxies.tables[1] = self.b = None
        gc.collect()
        self.clock.advance(20)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # the heartbeats

    def test_refresh_only_known(self):
        """
        C{refresh} moves a binding the store knows, even if this proxy does
        not, and never makes one.
        """
        self.b.refresh(b"new", "b1")
        self.assertIsNone(self.server.get_value(NAMESPACE + b"new"))
        self.a.bind(b"k", "b1")
        self.b.refresh(b"k", "b2")
        self.assertEqual(self.server.get_value(NAMESPACE + b"k"), b"b2")

    def test_writes_not_repeated(self):
        """
        A binding the store confirmed lately is not written again on every
        use: once per L{FRESH} seconds at most.
        """
        self.a.bind(b"k", "b1")
        self.a.release(b"k")
        self.a.bind(b"k", "b1")
        self.a.release(b"k")
        commands = self.server.connections[0].sent
        self.assertEqual([c[0] for c in commands if c[0] != "PING"], ["SET"])
        self.clock.advance(FRESH)
        self.a.bind(b"k", "b1")
        self.assertEqual([c[0] for c in commands if c[0] != "PING"], ["SET", "SET"])

    def test_slow_store_bounded(self):
        """
        A store slower than its C{timeout} is waited for that long only:
        the lookup then answers with what is known locally; the late answer
        still updates the local view.
        """
        self.a.bind(b"k", "b1")
        self.server.latency = 0.2
        answer = self.b.get(b"k")
        self.clock.advance(0.05)
        self.assertIsNone(self.successResultOf(answer))
        self.clock.advance(0.15)
        self.assertEqual(self.b.count("b1"), 1)
        self.assertEqual(self.b.get(b"k"), "b1")

    def test_slow_store_local_answer(self):
        """
        Past the bound, a binding known locally is the answer.
        """
        self.a.bind(b"k", "b1")
        self.clock.advance(FRESH)
        self.server.latency = 0.2
        answer = self.a.get(b"k")
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(answer), "b1")

    def test_failing_store(self):
        """
        A store that fails a lookup gets the local answer.
        """
        self.a.bind(b"k", "b1")
        self.clock.advance(FRESH)
        self.server.fail_with = "ERR busy"
        self.assertEqual(self.successResultOf(self.a.get(b"k")), "b1")
        self.assertIsNone(self.successResultOf(self.b.get(b"k")))
        self.assertEqual(self.timers(), [])

    def test_cancelled(self):
        """
        A lookup the caller stops waiting for is cancelled, its timer too;
        the store's answer still updates the local view.
        """
        self.a.bind(b"k", "b1")
        self.server.latency = 0.01
        answer = self.b.get(b"k")
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        self.clock.advance(0.01)
        self.assertEqual(self.timers(), [])
        self.assertEqual(self.b.count("b1"), 1)

    def test_store_down(self):
        """
        While the store is down, lookups answer at once from the local
        view, and bindings are kept locally.
        """
        self.a.bind(b"k", "b1")
        self.server.refusing = True
        self.server.disconnect()
        self.assertEqual(self.a.get(b"k"), "b1")
        self.assertIsNone(self.b.get(b"k"))
        self.b.bind(b"m", "b2")
        self.assertEqual(self.b.get(b"m"), "b2")

    def test_written_back(self):
        """
        Bindings learned while the store was down are written back when it
        returns, with their idle time left; one the store already has wins
        (this proxy follows it at its next lookup), and keys forgotten
        meanwhile are deleted.
        """
        self.a.bind(b"kept", "b1")
        self.a.bind(b"gone", "b1")
        self.server.refusing = True
        self.server.disconnect()
        self.server.flush()
        self.server.data[NAMESPACE + b"theirs"] = b"b1"
        self.server.data[NAMESPACE + b"gone"] = b"b1"
        self.b.bind(b"new", "b2")
        self.b.release(b"new")
        self.b.bind(b"theirs", "b2")
        self.a.forget(b"gone")
        self.clock.advance(10)
        self.server.refusing = False
        self.clock.advance(FRESH + 5)
        self.assertEqual(self.server.get_value(NAMESPACE + b"kept"), b"b1")
        self.assertEqual(self.server.get_value(NAMESPACE + b"new"), b"b2")
        self.assertEqual(self.server.ttl(NAMESPACE + b"new"), 60 - 10 - FRESH - 5)
        self.assertEqual(self.server.get_value(NAMESPACE + b"theirs"), b"b1")
        self.assertIsNone(self.server.get_value(NAMESPACE + b"gone"))
        self.assertEqual(self.successResultOf(self.b.get(b"theirs")), "b1")

    def test_write_back_bounded(self):
        """
        What is kept for the store while it is down is bounded by the
        table's size.
        """
        proxies = Proxies(self.clock, size=2)
        table = proxies.tables[0]
        proxies.server.refusing = True
        proxies.server.disconnect()
        for key in (b"1", b"2", b"3"):
            table.bind(key, "b1")
            table.forget(b"f" + key)
        proxies.server.refusing = False
        self.clock.advance(5)
        self.assertEqual(
            sorted(proxies.server.data), [NAMESPACE + b"2", NAMESPACE + b"3"]
        )
        deleted = [c for c in proxies.server.connections[0].sent if c[0] == "DEL"]
        self.assertEqual(len(deleted), 2)

    def test_clear(self):
        """
        Clearing a table forgets every binding, here and in the store, and
        no other table's.
        """
        other = RedisTables(self.proxies.stores[0], self.clock, "api").table(
            "source-ip", 60, 10
        )
        other.bind(b"k", "b1")
        self.a.bind(b"k", "b1")
        self.a.bind(b"m", "b2")
        self.a.clear()
        self.assertEqual(len(self.a), 0)
        self.assertEqual(list(self.server.data), [b"sp:table:api:source-ip:k"])

    def test_replaced_table_not_written_back(self):
        """
        A table no longer used (a reload replaced it) is not kept alive by
        the store, nor written back when the store returns.
        """
        self.b.bind(b"x", "b1")
        self.proxies.tables[1] = self.b = None
        gc.collect()
        self.server.disconnect()
        self.server.flush()
        self.clock.advance(5)
        self.assertTrue(self.proxies.stores[1].up)
        self.assertEqual(self.server.data, {})


def _data(**persistence):
    data = copy.deepcopy(GOOD)
    data["frontend"][0]["persistence"] = persistence
    return data


class StoreChoiceTests(TestCase):
    def build(self, factory, options, tables):
        return factory.build_stored(
            options,
            make_pool("b1", "b2"),
            Clock(),
            "frontend[0].persistence",
            RandomSecrets("test"),
            tables,
        )

    def test_factories(self):
        """
        The strategies that learn provide L{IStoreStrategyFactory}.
        """
        for factory in (source_ip, header, app_cookie):
            self.assertProvides(IStoreStrategyFactory, factory)

    def test_memory_by_default(self):
        """
        A table is kept in memory unless it says C{store = "redis"}.
        """
        store = RedisStore(clock=Clock(), connect=FakeRedis(Clock()).connector)
        tables = RedisTables(store, Clock(), "web")
        strategy = self.build(source_ip, {"mode": "table"}, tables)
        self.assertIsInstance(strategy.table, StickTable)
        strategy = self.build(header, {"header": "x-user", "mode": "table"}, None)
        self.assertIsInstance(strategy.table, StickTable)

    def test_redis(self):
        """
        C{store = "redis"} keeps the table of C{source-ip}, C{header} and
        C{app-cookie} C{learn} in the store, under the frontend's and the
        strategy's names.
        """
        store = RedisStore(clock=Clock(), connect=FakeRedis(Clock()).connector)
        tables = RedisTables(store, Clock(), "web")
        for factory, options in [
            (source_ip, {"mode": "table", "timeout": 30, "size": 7}),
            (header, {"header": "x-user", "mode": "table"}),
            (app_cookie, {"mode": "learn", "cookie": "SID"}),
        ]:
            strategy = self.build(factory, {**options, "store": "redis"}, tables)
            table = strategy.table
            self.assertIsInstance(table, RedisStickTable)
            self.assertEqual(
                table.namespace, f"stickyproxy:table:web:{factory.name}:".encode()
            )
        self.assertEqual((table.timeout, table.size), (1800, 100_000))
        strategy = self.build(
            source_ip,
            {"mode": "table", "timeout": 30, "size": 7, "store": "redis"},
            tables,
        )
        self.assertEqual((strategy.table.timeout, strategy.table.size), (30, 7))

    def test_redis_without_store(self):
        """
        C{store = "redis"} on a proxy without C{[store]} is an error naming
        both keys.
        """
        for factory, options in [
            (source_ip, {"mode": "table"}),
            (app_cookie, {"mode": "learn", "cookie": "SID"}),
        ]:
            error = self.assertRaises(
                ConfigError, self.build, factory, {**options, "store": "redis"}, None
            )
            self.assertEqual(error.path, "frontend[0].persistence.store")
            self.assertIn("store.url", error.message)

    def test_store_needs_a_table(self):
        """
        C{store} is refused, with why, where no table is kept.
        """
        error = self.assertRaises(
            ConfigError, self.build, source_ip, {"store": "redis"}, None
        )
        self.assertIn('only with mode = "table"', error.message)
        error = self.assertRaises(
            ConfigError, self.build, app_cookie, {"store": "memory"}, None
        )
        self.assertIn('only with mode = "learn"', error.message)
        error = self.assertRaises(
            ConfigError, self.build, source_ip, {"mode": "table", "store": "disk"}, None
        )
        self.assertIn("'memory', 'redis'", error.message)

    def test_proxy_builds_shared_tables(self):
        """
        A proxy with C{[store]} gives a frontend's strategies tables in its
        store; without, C{store = "redis"} stops it with the error.
        """
        data = _data(strategy="source-ip", mode="table", store="redis")
        data["state_dir"] = self.mktemp()
        error = self.assertRaises(
            ConfigError, ProxyService, load_config(data, REGISTRY), MemoryReactorClock()
        )
        self.assertEqual(error.path, "frontend[0].persistence.store")
        data["store"] = {"url": "redis://127.0.0.1", "prefix": "site"}
        proxy = ProxyService(load_config(data, REGISTRY), MemoryReactorClock())
        [strategy] = proxy.routers["db"].strategies
        # Wrapped so that its sessions are counted across the proxies.
        self.assertIsInstance(strategy.table, SharedCountTable)
        table = strategy.table.table
        self.assertEqual(table.namespace, b"site:table:db:source-ip:")
        self.assertIs(table.store, proxy.store)


CLIENT = IPv4Address("TCP", "10.0.0.1", 5555)
KEY = bytes([10, 0, 0, 1])


class SharedTableTCPTests(TestCase):
    """
    The L4 frontend of one proxy over a shared table, with a binding the
    other proxy learned.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.proxies = Proxies(self.reactor, timeout=0.02, latency=0.01)
        self.proxies.tables[0].bind(KEY, "c")
        self.reactor.advance(0.01)
        backends = tuple(
            tcp_backend(self.reactor, name, port)
            for name, port in (("a", 9001), ("b", 9002), ("c", 9003))
        )
        pool = Pool("p", backends, RoundRobin(), connect_timeout=3.0, retries=2)
        self.table = self.proxies.tables[1]
        strategy = TableAffinity("source-ip", pool, self.table, SourceIPKey())
        router = Router(pool, [strategy], self.reactor)
        self.factory = TCPProxyFactory("front", router, self.reactor)

    def connect(self):
        protocol = self.factory.buildProtocol(CLIENT)
        protocol.makeConnection(StringTransport(peerAddress=CLIENT))
        return protocol

    def test_honoured_after_one_round_trip(self):
        """
        The client is connected to the backend the other proxy bound it
        to, once the store answered.
        """
        self.connect()
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.01)
        self.assertEqual(self.reactor.tcpClients[-1][1], 9003)

    def test_slow_store(self):
        """
        A store slower than its bound delays the client by the bound only:
        it is then balanced (the router's own, longer bound never runs
        out).
        """
        self.proxies.server.latency = 1.0
        self.connect()
        self.reactor.advance(0.019)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.001)
        self.assertEqual(self.reactor.tcpClients[-1][1], 9001)


class SharedTableHTTPTests(HTTPTestCase):
    """
    The L7 frontend of one proxy over C{app-cookie} C{learn} in a shared
    table, with a session the other proxy learned.
    """

    def setUp(self):
        super().setUp()
        self.proxies = Proxies(self.reactor, timeout=0.02, latency=0.01)
        self.proxies.tables[0].bind(b"s1", "b")
        self.reactor.advance(0.01)
        self.router.strategies = [
            AppCookieLearn(
                self.pool, self.proxies.tables[1], SessionIdReader("SID"), self.reactor
            )
        ]

    def request(self):
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SID=s1\r\n\r\n")
        return transport

    def serve(self):
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        backend = factory.buildProtocol(None)
        backend.makeConnection(StringTransport())
        backend.dataReceived(OK)
        return port

    def test_honoured_after_one_round_trip(self):
        """
        The request goes to the backend the other proxy learned, once the
        store answered.
        """
        transport = self.request()
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.01)
        self.assertEqual(self.serve(), 9002)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_store_down(self):
        """
        With the store down, the request is balanced at once and served.
        """
        self.proxies.server.refusing = True
        self.proxies.server.disconnect()
        transport = self.request()
        self.assertEqual(self.serve(), 9001)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
