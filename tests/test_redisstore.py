"""
Tests for the shared store's connection (L{stickyproxy.store.RedisStore})
against the Clock-driven fake Redis, its C{[store]} configuration, and how
a proxy builds, keeps and measures it.
"""

import copy

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from stickyproxy.config._load import StoreConfig, load_config
from stickyproxy.config._options import ConfigError
from stickyproxy.interfaces import ISharedStore
from stickyproxy.metrics import proxy_registry
from stickyproxy.service import ProxyService
from stickyproxy.store import (
    RedisStore,
    StoreUnavailable,
    TxRedisConnector,
    build_store,
)
from stickyproxy.store._store import (
    CONNECT_TIMEOUT,
    FIRST_RETRY,
    HEARTBEAT,
    LONGEST_RETRY,
    SILENCE,
)

from tests._base import TestCase
from tests._fakeredis import FakeRedis
from tests.test_config import GOOD, REGISTRY


def make_store(clock=None, server=None, **kwargs):
    """
    A started store on a fake server.

    :returns: the store and the server.
    """
    clock = clock if clock is not None else Clock()
    server = server if server is not None else FakeRedis(clock)
    store = RedisStore(clock=clock, connect=server.connector, **kwargs)
    store.startService()
    return store, server


def messages(logs):
    return [event["log_format"].format(**event) for event in logs]


class RedisStoreTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = FakeRedis(self.clock)
        self.store = RedisStore(clock=self.clock, connect=self.server.connector)

    def test_provides(self):
        """
        L{RedisStore} provides L{ISharedStore}.
        """
        self.assertProvides(ISharedStore, self.store)

    def test_key(self):
        """
        Keys are namespaced under the prefix.
        """
        store = RedisStore(clock=self.clock, connect=self.server.connector, prefix="p")
        self.assertEqual(store.key("table", "web", "k"), "p:table:web:k")

    def test_down_until_started(self):
        """
        Before it starts, the store is down and a call fails at once with
        L{StoreUnavailable}, without connecting.
        """
        self.assertFalse(self.store.up)
        self.failureResultOf(self.store.call("GET", "k"), StoreUnavailable)
        self.assertEqual(self.server.connects, 0)

    def test_connects_on_start(self):
        """
        Started, the store connects (a command connection and a subscriber
        one), is up, and calls reach the server.
        """
        with capturedLogs() as logs:
            self.store.startService()
        self.assertTrue(self.store.up)
        self.assertEqual(self.server.connects, 2)
        self.assertEqual(self.successResultOf(self.store.call("SET", "k", b"v")), "OK")
        self.assertEqual(self.successResultOf(self.store.call("GET", "k")), b"v")
        self.assertEqual(messages(logs), ["store connected: the store"])

    def test_when_up(self):
        """
        A C{when_up} callback is called at once when the store is up, and at
        every connection after; one that raises is logged and the others
        are still called.
        """
        seen = []
        self.store.when_up(lambda: 1 / 0)
        self.store.when_up(lambda: seen.append("early"))
        self.assertEqual(seen, [])
        with capturedLogs() as logs:
            self.store.startService()
        self.assertEqual(seen, ["early"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn("store: a when_up callback failed", messages(logs))
        self.store.when_up(lambda: seen.append("late"))
        self.assertEqual(seen, ["early", "late"])
        self.server.disconnect()
        self.clock.advance(0.1)
        self.assertEqual(seen, ["early", "late", "early", "late"])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_lost_and_back(self):
        """
        When the server drops the connection, the store is down at once
        (calls fail with L{StoreUnavailable}), says so in one line, counts
        the loss, connects again after L{FIRST_RETRY}, and says how long it
        was away.
        """
        self.store.startService()
        self.server.silent = True
        pending = self.store.call("GET", "k")
        self.server.silent = False
        with capturedLogs() as logs:
            self.server.disconnect()
        self.failureResultOf(pending)
        self.assertFalse(self.store.up)
        self.assertEqual(self.store.losses, 1)
        self.failureResultOf(self.store.call("GET", "k"), StoreUnavailable)
        self.assertEqual(messages(logs), ["store lost: the store: connection lost"])
        self.clock.advance(0.05)
        self.assertFalse(self.store.up)
        with capturedLogs() as logs:
            self.clock.advance(0.05)
        self.assertTrue(self.store.up)
        self.assertEqual(messages(logs), ["store back after 0.1 s: the store"])

    def test_backoff(self):
        """
        While the server refuses, the store tries again after waits that
        double up to L{LONGEST_RETRY}, logging only the first failure, and
        the waits start over once it is back.
        """
        self.server.refusing = True
        with capturedLogs() as logs:
            self.store.startService()
            attempts = []
            for _ in range(10):
                [retry] = self.clock.getDelayedCalls()
                attempts.append(round(retry.getTime() - self.clock.seconds(), 3))
                self.clock.advance(attempts[-1])
            self.assertEqual(self.server.connects, 11)
        self.assertEqual(attempts, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])
        self.assertEqual(len(logs), 1)
        self.assertIn("store unavailable: the store:", messages(logs)[0])
        self.assertEqual(self.store.losses, 0)
        self.server.refusing = False
        self.clock.advance(LONGEST_RETRY)
        self.assertTrue(self.store.up)
        self.server.disconnect()
        connects = self.server.connects
        self.clock.advance(0.1)
        self.assertEqual(self.server.connects, connects + 2)

    def test_silent_store_lost(self):
        """
        A store that stops answering (the connection itself says nothing)
        is taken for lost once a ping has gone unanswered for L{SILENCE}
        seconds, and connected to again.
        """
        self.store.startService()
        self.server.silent = True
        with capturedLogs() as logs:
            self.clock.advance(HEARTBEAT)
            self.clock.advance(SILENCE - HEARTBEAT)
            self.assertTrue(self.store.up)
            self.clock.advance(HEARTBEAT)
        self.assertFalse(self.store.up)
        self.assertEqual(self.store.losses, 1)
        self.assertEqual(messages(logs), ["store lost: the store: no answer for 3 s"])
        self.server.silent = False
        self.clock.advance(FIRST_RETRY)
        self.assertTrue(self.store.up)
        self.clock.advance(10 * HEARTBEAT)
        self.assertTrue(self.store.up)

    def test_connect_timeout(self):
        """
        A connect that never completes is given up after L{CONNECT_TIMEOUT}
        and tried again.
        """
        self.server.hanging = True
        with capturedLogs() as logs:
            self.store.startService()
            self.clock.advance(CONNECT_TIMEOUT)
        self.assertEqual(
            messages(logs),
            [
                "store unavailable: the store: no connection within 3 s; serving "
                "with what this proxy knows until it is back"
            ],
        )
        self.server.hanging = False
        self.clock.advance(FIRST_RETRY)
        self.assertTrue(self.store.up)

    def test_subscribe(self):
        """
        A subscriber gets what is published on its channel, before and
        after the store reconnects; one that raises is logged and does not
        stop the others.
        """
        got = []
        self.store.subscribe("p:admin", got.append)
        self.store.startService()
        self.store.subscribe("p:admin", lambda message: 1 / 0)
        self.store.subscribe("p:other", lambda message: got.append(b"other"))
        self.assertEqual(self.successResultOf(self.store.publish("p:admin", b"1")), 1)
        self.assertEqual(got, [b"1"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.server.disconnect()
        self.failureResultOf(self.store.publish("p:admin", b"lost"), StoreUnavailable)
        self.clock.advance(0.1)
        self.successResultOf(self.store.publish("p:admin", b"2"))
        self.assertEqual(got, [b"1", b"2"])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_stop(self):
        """
        Stopped, the store drops its connections and never connects again,
        even with a retry pending.
        """
        self.store.startService()
        self.store.stopService()
        self.assertFalse(self.store.up)
        self.assertEqual(self.server.connections, [])
        self.server.refusing = True
        self.store.startService()
        self.store.stopService()
        connects = self.server.connects
        self.clock.advance(60)
        self.assertEqual(self.server.connects, connects)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_server_errors(self):
        """
        A command the server refuses fails with its error; the store stays
        up.
        """
        self.store.startService()
        self.server.fail_with = "ERR wrong"
        self.failureResultOf(self.store.call("GET", "k"))
        self.assertTrue(self.store.up)


class TxRedisConnectorTests(TestCase):
    def test_build_store(self):
        """
        L{build_store} makes a store of a C{[store]} table, connecting with
        C{txredisapi} to its endpoint, and showing no password in its
        location.
        """
        reactor = MemoryReactorClock()
        config = StoreConfig(
            url="redis://:secret@10.0.0.5:6380/2",
            endpoint="tcp:host=10.0.0.5:port=6380",
            password="secret",
            db=2,
            timeout=0.2,
            prefix="site",
        )
        store = build_store(config, reactor)
        self.assertEqual(
            store.connect,
            TxRedisConnector(reactor, config.endpoint, password="secret", db=2),
        )
        self.assertEqual((store.prefix, store.timeout), ("site", 0.2))
        self.assertNotIn("secret", store.location)
        store.startService()
        host, port = reactor.tcpClients[0][:2]
        self.assertEqual((host, port), ("10.0.0.5", 6380))
        store.stopService()

    def test_ready_once_answered(self):
        """
        A connection is handed over once the server answered a C{PING}
        (over TLS, the handshake and the check of the server's certificate
        are then done); lost before, connecting fails with why it was.
        """
        reactor = MemoryReactorClock()
        connector = TxRedisConnector(reactor, "tcp:host=127.0.0.1:port=6379")
        address = IPv4Address("TCP", "127.0.0.1", 6379)
        protocols = []
        for _ in range(2):
            connecting = connector(None)
            protocol = reactor.tcpClients[-1][2].buildProtocol(address)
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.assertEqual(transport.value(), b"*1\r\n$4\r\nPING\r\n")
            self.assertNoResult(connecting)
            protocols.append((protocol, connecting))
        (answered, ready), (lost, refused) = protocols
        answered.dataReceived(b"+PONG\r\n")
        self.successResultOf(ready)
        lost.connectionLost(Failure(ConnectionLost("certificate verify failed")))
        failure = self.failureResultOf(refused, ConnectionLost)
        self.assertIn("certificate verify failed", failure.getErrorMessage())

    def test_tls(self):
        """
        A C{tls:} endpoint (a C{rediss://} URL's) connects to its host and
        port, and speaks TLS first: a ClientHello, not a Redis command.
        """
        reactor = MemoryReactorClock()
        TxRedisConnector(reactor, "tls:host=127.0.0.1:port=6380", password="pw")(None)
        host, port, factory = reactor.tcpClients[0][:3]
        self.assertEqual((host, port), ("127.0.0.1", 6380))
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
        self.assertEqual(transport.value()[:2], b"\x16\x03")  # a TLS handshake


def _store_config(**store):
    data = copy.deepcopy(GOOD)
    data["store"] = store
    return load_config(data, REGISTRY).store


class StoreConfigTests(TestCase):
    def assertStoreError(self, fragment, key="url", **store):
        error = self.assertRaises(ConfigError, _store_config, **store)
        self.assertEqual(error.path, f"store.{key}")
        self.assertIn(fragment, error.message)
        return error

    def test_none(self):
        """
        Without C{[store]}, the proxy has none.
        """
        self.assertIsNone(load_config(GOOD, REGISTRY).store)

    def test_redis_url(self):
        """
        A C{redis://} URL gives a TCP endpoint, the database from its path,
        and the password (and user) from its authority; timeout and prefix
        have defaults.
        """
        config = _store_config(url="redis://app:p%40ss@redis.internal:6380/3")
        self.assertEqual(config.endpoint, "tcp:host=redis.internal:port=6380")
        self.assertEqual((config.username, config.password), ("app", "p@ss"))
        self.assertEqual(config.db, 3)
        self.assertEqual((config.timeout, config.prefix), (0.05, "stickyproxy"))
        plain = _store_config(url="redis://127.0.0.1", timeout=0.2, prefix="a.b-c")
        self.assertEqual(plain.endpoint, "tcp:host=127.0.0.1:port=6379")
        self.assertEqual((plain.password, plain.username, plain.db), (None, None, 0))
        self.assertEqual((plain.timeout, plain.prefix), (0.2, "a.b-c"))
        self.assertEqual(
            _store_config(url="redis://[::1]:7000").endpoint,
            "tcp:host=\\:\\:1:port=7000",
        )

    def test_rediss_url(self):
        """
        A C{rediss://} URL gives a TLS endpoint (the host's certificate
        checked, against the system's CAs or those of C{ssl_ca_path}), with
        a client certificate if C{ssl_certfile} (and C{ssl_keyfile}) name
        one; the rest is read as C{redis://}.
        """
        config = _store_config(url="rediss://:pw@redis.example:6380/2")
        self.assertEqual(config.endpoint, "tls:host=redis.example:port=6380")
        self.assertEqual((config.password, config.db), ("pw", 2))
        directory = FilePath(self.mktemp())
        directory.makedirs()
        cert, key = directory.child("cert.pem"), directory.child("key.pem")
        cert.touch()
        key.touch()
        url = (
            f"rediss://redis.example?ssl_ca_path={directory.path}"
            f"&ssl_certfile={cert.path}&ssl_keyfile={key.path}"
        )
        self.assertEqual(
            _store_config(url=url).endpoint,
            f"tls:host=redis.example:port=6379:trustRoots={directory.path}"
            f":certificate={cert.path}:privateKey={key.path}",
        )

    def test_unix_url(self):
        """
        A C{unix://} URL gives a UNIX endpoint; the database and password
        may be query arguments.
        """
        config = _store_config(url="unix:///run/redis/redis.sock?db=1&password=pw")
        self.assertEqual(config.endpoint, "unix:path=/run/redis/redis.sock")
        self.assertEqual((config.db, config.password), (1, "pw"))
        self.assertEqual(
            _store_config(url="unix:/tmp/r.sock").endpoint, "unix:path=/tmp/r.sock"
        )

    def test_bad_urls(self):
        """
        A URL that is not Redis's (or whose TLS paths are not there, or
        are not C{rediss://}'s) is one error naming C{store.url}, saying
        what was expected and why, and never echoing the URL (it may hold
        a password).
        """
        for url, why in [
            ("http://:secret@host", "scheme http:"),
            ("127.0.0.1:6379", "scheme none"),
            ("redis://:secret@", "no host"),
            ("redis://:secret@host:port", "Port could not be cast"),
            ("redis://:secret@host/zero", "the database must be a number"),
            ("unix:relative.sock", "absolute socket path"),
            ("unix:///r.sock?secret=1", "unknown query argument 'secret'"),
            ("redis://h?ssl_ca_path=/", "unknown query argument 'ssl_ca_path'"),
            ("rediss://h?ssl_ca_path=/nonexistent", "ssl_ca_path must be a directory"),
            ("rediss://h?ssl_certfile=/nonexistent", "ssl_certfile must be a file"),
            ("rediss://h?ssl_keyfile=/", "ssl_keyfile must be a file"),
        ]:
            error = self.assertStoreError(why, url=url)
            self.assertIn("expected a Redis URL: redis://", error.message)
            self.assertNotIn(url, error.message)
        self.assertStoreError("expected a string", url=6379)
        self.assertStoreError("required", key="url")

    def test_bad_settings(self):
        """
        C{timeout} is bounded like C{persistence_timeout}, C{prefix} is a
        plain name, and unknown keys are named.
        """
        self.assertStoreError("0.001 to 10", key="timeout", url="redis://h", timeout=50)
        self.assertStoreError("letters", key="prefix", url="redis://h", prefix="a b")
        self.assertStoreError("letters", key="prefix", url="redis://h", prefix="")
        self.assertStoreError("unknown", key="tmeout", url="redis://h", tmeout=1)


class ProxyStoreTests(TestCase):
    def proxy(self, **store):
        data = copy.deepcopy(GOOD)
        del data["admin"]
        data["state_dir"] = self.mktemp()
        if store:
            data["store"] = store
        return data, ProxyService(load_config(data, REGISTRY), MemoryReactorClock())

    def test_no_store(self):
        """
        Without C{[store]}, a proxy has no store, and its metrics no store
        families.
        """
        _, proxy = self.proxy()
        self.assertIsNone(proxy.store)
        names = {m.name for m in proxy_registry(proxy).collect()}
        self.assertNotIn("stickyproxy_store_up", names)

    def test_store_built_once(self):
        """
        With C{[store]}, the proxy has one store, a child service started
        with it; a reload, even one that changes C{[store]}, keeps it as it
        is and says the change waits for a restart.
        """
        data, proxy = self.proxy(url="redis://127.0.0.1:6390/1", prefix="x")
        store = proxy.store
        self.assertIsInstance(store, RedisStore)
        self.assertEqual((store.prefix, store.connect.db), ("x", 1))
        self.assertIn(store, list(proxy))
        data["store"]["prefix"] = "y"
        changes = proxy.reload(load_config(data, REGISTRY))
        self.assertIs(proxy.store, store)
        self.assertIn("store: takes effect at the next restart", changes)
        self.assertEqual(store.prefix, "x")
        changes = proxy.reload(load_config(data, REGISTRY))
        self.assertEqual(changes, ["nothing changed"])

    def test_metrics(self):
        """
        The store's metrics say whether it is up and count its losses.
        """
        _, proxy = self.proxy(url="redis://127.0.0.1")
        clock = Clock()
        server = FakeRedis(clock)
        proxy.store = RedisStore(clock=clock, connect=server.connector)
        registry = proxy_registry(proxy)
        self.assertEqual(registry.get_sample_value("stickyproxy_store_up"), 0)
        proxy.store.startService()
        self.assertEqual(registry.get_sample_value("stickyproxy_store_up"), 1)
        server.disconnect()
        self.assertEqual(registry.get_sample_value("stickyproxy_store_up"), 0)
        self.assertEqual(registry.get_sample_value("stickyproxy_store_losses_total"), 1)
