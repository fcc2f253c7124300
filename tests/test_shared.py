"""
Tests for what proxies sharing a store share beside bindings: runtime admin
states (L{stickyproxy.store._admin}) and session counts
(L{stickyproxy.store._sessions}), on a fake store (L{tests._fakestore}).
"""

from __future__ import annotations

import copy

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from stickyproxy.config._load import load_config
from stickyproxy.core._adminsync import PEER
from stickyproxy.core._pool import Pool
from stickyproxy.interfaces import IListableStickTable, IStickTable
from stickyproxy.model import AdminRecord, AdminState
from stickyproxy.persistence.tables._memory import StickTable
from stickyproxy.service import ProxyService, Role
from stickyproxy.store import RedisStore
from stickyproxy.store._admin import SharedAdminState, Stamp, _encode
from stickyproxy.store._sessions import SharedCountTable, SharedSessions
from stickyproxy.testing import make_pool

from tests._base import TestCase
from tests._fakeredis import FakeRedis
from tests.test_config import GOOD, REGISTRY


class Proxy:
    """
    One proxy's pool, with its admin states and session counts shared
    through its own store on C{server}.
    """

    def __init__(self, server: FakeRedis, clock: Clock, id: str) -> None:
        self.store = RedisStore(clock=clock, connect=server.connector, prefix="sp")
        self.pool: Pool = make_pool("a", "b")
        self.pool.clock = clock
        self.admin = SharedAdminState(
            self.store, lambda: {"pool": self.pool}, clock, id
        )
        self.pool.observe(self.admin.sync.backend_changed)
        self.sessions = SharedSessions(self.store, clock)
        self.pool.counter = self.sessions.table
        self.table = self.pool.count_sessions(
            "frontend[0].persistence[0]",
            StickTable(clock=clock, timeout=60.0, size=1000),
            60.0,
        )

    def start(self) -> Proxy:
        self.store.startService()
        self.admin.start(self.sessions.tick)
        self.sessions.start()
        return self

    def lose_store(self) -> None:
        """
        This proxy alone loses the store, until L{store_back}.
        """
        self.store.stopService()

    def store_back(self) -> None:
        self.store.startService()


class SharedTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.server = FakeRedis(self.clock)

    def proxy(self, id: str) -> Proxy:
        proxy = Proxy(self.server, self.clock, id).start()
        self.addCleanup(proxy.sessions.stop)
        self.addCleanup(proxy.store.stopService)
        return proxy

    def sent(self, command: str) -> list[tuple[object, ...]]:
        """
        The commands of that name sent to the server so far.
        """
        return [
            sent
            for connection in self.server.connections
            for sent in connection.sent
            if sent[0] == command
        ]

    def store_away(self) -> None:
        self.server.refusing = True
        self.server.disconnect()

    def store_back(self, flushed: bool = False) -> None:
        if flushed:
            self.server.flush()
        self.server.refusing = False
        self.clock.advance(5.0)


class SharedAdminStateTests(SharedTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.a = self.proxy("A")
        self.b = self.proxy("B")

    def test_drain_reaches_the_other_proxy(self) -> None:
        """
        A drain with a deadline made on one proxy is applied by the other,
        until the same deadline, as a peer's change that it does not publish
        again.
        """
        self.a.table.bind(b"client", "a")
        self.b.table.bind(b"other", "a")
        reasons: list[str] = []
        self.b.pool.observe(lambda change: reasons.append(change.reason))
        self.a.pool.drain("a", 60.0)
        self.assertIs(self.b.pool["a"].admin_state, AdminState.DRAIN)
        self.assertAlmostEqual(self.b.pool.drain_deadline("a"), 1060.0)
        self.assertEqual(reasons, [f"{PEER} A: drain"])
        self.assertEqual(len(self.sent("PUBLISH")), 1)

    def test_weight_maint_ready(self) -> None:
        """
        Weight, maint and ready changes reach the other proxy too.
        """
        self.a.pool.set_weight("b", 4)
        self.a.pool.set_admin_state("a", AdminState.MAINT)
        self.assertEqual(self.b.pool["b"].weight, 4)
        self.assertIs(self.b.pool["a"].admin_state, AdminState.MAINT)
        self.b.pool.set_admin_state("a", AdminState.READY)
        self.assertIs(self.a.pool["a"].admin_state, AdminState.READY)

    def test_newcomer_reads_the_states_first(self) -> None:
        """
        A proxy that starts after the changes reads them from the store.
        """
        self.b.table.bind(b"2", "a")
        self.clock.pump([1.0, 1.0])
        self.a.pool.drain("a", 60.0)
        self.a.pool.set_weight("b", 3)
        self.clock.advance(10)
        c = self.proxy("C")
        self.assertIs(c.pool["a"].admin_state, AdminState.DRAIN)
        self.assertAlmostEqual(c.pool.drain_deadline("a"), 1062.0)
        self.assertEqual(c.pool["b"].weight, 3)

    def test_change_made_while_the_store_is_away(self) -> None:
        """
        A change made on a proxy while the store is away reaches the
        others when it is back; one made meanwhile elsewhere, earlier, does
        not undo it.
        """
        self.a.lose_store()
        self.b.pool.set_weight("b", 7)  # earlier, while A cannot hear it
        self.clock.advance(1)
        self.a.pool.set_admin_state("a", AdminState.MAINT)
        self.assertIs(self.b.pool["a"].admin_state, AdminState.READY)
        self.a.store_back()
        self.assertIs(self.b.pool["a"].admin_state, AdminState.MAINT)
        self.assertEqual(self.a.pool["b"].weight, 7)

    def test_later_change_wins(self) -> None:
        """
        Of two changes to one backend, the later wins on every proxy and in
        the store, whatever order they arrive in.
        """
        self.a.lose_store()
        self.a.pool.set_admin_state("a", AdminState.MAINT)  # at 1000
        self.clock.advance(1)
        self.b.pool.set_admin_state("a", AdminState.DRAIN)  # at 1001
        self.a.store_back()
        self.assertIs(self.a.pool["a"].admin_state, AdminState.DRAIN)
        self.assertIs(self.b.pool["a"].admin_state, AdminState.DRAIN)
        c = self.proxy("C")
        self.assertIs(c.pool["a"].admin_state, AdminState.DRAIN)

    def test_stale_message_is_answered_with_the_later_one(self) -> None:
        """
        A change older than the one a proxy holds, arriving late (two writes
        crossed), is ignored, and the proxy writes the later one back, so
        that the store ends holding it.
        """
        self.b.pool.set_admin_state("a", AdminState.MAINT)  # at 1000
        stale = _encode(
            Stamp(999.0, "Z"), AdminRecord("pool", "a", AdminState.READY, 1, None)
        )
        self.a.store.call("HSET", "sp:admin", '["pool","a"]', stale)
        self.a.store.publish("sp:admin:changes", stale)
        self.assertIs(self.a.pool["a"].admin_state, AdminState.MAINT)
        self.assertIs(self.b.pool["a"].admin_state, AdminState.MAINT)
        c = self.proxy("C")
        self.assertIs(c.pool["a"].admin_state, AdminState.MAINT)

    def test_store_lost_its_data(self) -> None:
        """
        When the store comes back empty (restarted without persistence),
        the proxies write what they hold back, for newcomers to read.
        """
        self.a.pool.set_admin_state("a", AdminState.MAINT)
        self.store_away()
        self.store_back(flushed=True)
        c = self.proxy("C")
        self.assertIs(c.pool["a"].admin_state, AdminState.MAINT)

    def test_unreadable_message(self) -> None:
        """
        A message that is not an admin change is logged and ignored.
        """
        with capturedLogs() as events:
            self.a.store.publish("sp:admin:changes", b"{nope")
        self.assertIs(self.b.pool["a"].admin_state, AdminState.READY)
        self.assertTrue(
            any("cannot be read" in str(e.get("log_format")) for e in events)
        )

    def test_unknown_backend(self) -> None:
        """
        A change to a backend this proxy does not have changes nothing
        here.
        """
        record = AdminRecord("pool", "zz", AdminState.MAINT, 1, None)
        self.a.store.publish("sp:admin:changes", _encode(Stamp(2000.0, "Z"), record))
        self.assertEqual(
            [b.admin_state for b in self.b.pool.backends], [AdminState.READY] * 2
        )


class SharedSessionsTests(SharedTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.a = self.proxy("A")
        self.b = self.proxy("B")

    def tick(self) -> None:
        """
        Let two rounds pass: one proxy reads in the same round as the other
        writes, maybe before it.
        """
        self.clock.pump([1.0, 1.0])

    def test_provides(self) -> None:
        """
        The wrapped table is still a listable stick table.
        """
        self.assertIsInstance(self.a.table, SharedCountTable)
        self.assertProvides(IListableStickTable, self.a.table)

    def test_counted_across_proxies(self) -> None:
        """
        Each proxy's pool counts the sessions both proxies saw.
        """
        self.a.table.bind(b"1", "a")
        self.a.table.release(b"1")
        self.b.table.bind(b"2", "a")
        self.b.table.bind(b"3", "b")
        self.assertEqual(self.a.pool.sessions("a"), 1)
        self.tick()
        self.assertEqual(self.a.pool.sessions("a"), 2)
        self.assertEqual(self.b.pool.sessions("a"), 2)
        self.assertEqual(self.a.pool.sessions("b"), 1)

    def test_own_new_sessions_count_at_once(self) -> None:
        """
        Sessions bound here count at once on top of the shared count read
        last (so that a balancer on session counts spreads them), and once
        only after the next read.
        """
        for n in range(5):
            self.b.table.bind(b"b%d" % n, "a")
        self.tick()
        self.assertEqual(self.a.pool.sessions("a"), 5)
        self.a.table.bind(b"1", "a")
        self.a.table.bind(b"2", "a")
        self.a.table.bind(b"2", "a")  # not a new session
        self.assertEqual(self.a.pool.sessions("a"), 7)
        self.clock.advance(1.0)
        self.assertEqual(self.a.pool.sessions("a"), 7)
        self.tick()
        self.assertEqual(self.a.pool.sessions("a"), 7)

    def test_writes_are_batched(self) -> None:
        """
        Nothing is sent on a request's path: what is seen is written once a
        second, one command per backend however many sessions.
        """
        for connection in self.server.connections:
            del connection.sent[:]
        for n in range(50):
            self.a.table.bind(str(n).encode(), "a")
            self.a.table.release(str(n).encode())
        self.assertEqual([c.sent for c in self.server.connections], [[]] * 4)
        self.clock.advance(1.0)
        zadds = self.sent("ZADD")
        self.assertEqual(len(zadds), 1)
        self.assertEqual(len(zadds[0]), 2 + 2 * 50)

    def test_idle_sessions_expire(self) -> None:
        """
        A session not seen for the table's timeout stops counting on every
        proxy.
        """
        self.a.table.bind(b"1", "a")
        self.a.table.release(b"1")
        self.tick()
        self.assertEqual(self.b.pool.sessions("a"), 1)
        self.clock.pump([1.0] * 60)
        self.assertEqual(self.b.pool.sessions("a"), 0)

    def test_held_sessions_do_not_expire(self) -> None:
        """
        A binding held by an open connection stays counted everywhere past
        the timeout.
        """
        self.a.table.bind(b"1", "a")
        self.clock.pump([1.0] * 200)
        self.assertEqual(self.b.pool.sessions("a"), 1)
        self.a.table.release(b"1")
        self.clock.pump([1.0] * 62)
        self.assertEqual(self.b.pool.sessions("a"), 0)

    def test_forgotten_session(self) -> None:
        """
        A session forgotten (its session ended) stops counting everywhere.
        """
        self.a.table.bind(b"1", "a")
        self.a.table.release(b"1")
        self.tick()
        self.a.table.forget(b"1")
        self.tick()
        self.assertEqual(self.b.pool.sessions("a"), 0)

    def test_moved_session(self) -> None:
        """
        A session bound again elsewhere counts for its new backend only.
        """
        self.a.table.bind(b"1", "a")
        self.tick()
        self.a.table.bind(b"1", "b")
        self.tick()
        self.assertEqual((self.b.pool.sessions("a"), self.b.pool.sessions("b")), (0, 1))

    def test_store_away(self) -> None:
        """
        While the store is away each proxy counts what it read last and
        what it saw since; what it saw is written when the store is back.
        """
        self.b.table.bind(b"2", "a")
        self.tick()
        self.store_away()
        self.a.table.bind(b"1", "a")
        self.tick()
        self.assertEqual(self.a.pool.sessions("a"), 2)
        self.assertEqual(self.b.pool.sessions("a"), 1)
        self.store_back()
        self.tick()
        self.assertEqual(self.a.pool.sessions("a"), 2)
        self.assertEqual(self.b.pool.sessions("a"), 2)

    def test_slow_store(self) -> None:
        """
        A slow store never makes a count wait, and rounds do not pile up.
        """
        self.a.table.bind(b"1", "a")
        self.server.latency = 3.5
        self.clock.advance(1.0)
        sent = len(self.sent("ZADD"))
        self.clock.pump([1.0, 1.0])
        self.assertEqual(len(self.sent("ZADD")), sent)
        self.assertEqual(self.b.pool.sessions("a"), 0)
        self.server.latency = 0.0
        self.clock.pump([1.0] * 4)
        self.assertEqual(self.b.pool.sessions("a"), 1)

    def test_silent_store(self) -> None:
        """
        A store that stops answering without dropping the connection holds
        up the rounds for a while only.
        """
        self.server.silent = True
        self.clock.pump([1.0] * 5)
        self.server.silent = False
        self.a.table.bind(b"1", "a")
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.b.pool.sessions("a"), 0)
        self.clock.pump([1.0] * 10)
        self.assertEqual(self.b.pool.sessions("a"), 1)

    def test_drain_ends_on_the_shared_count(self) -> None:
        """
        A drain goes to maint once no proxy holds a session of the backend,
        not as soon as the one that drains holds none.
        """
        self.b.table.bind(b"2", "a")
        self.b.table.release(b"2")
        self.tick()
        self.a.pool.drain("a", 600.0)
        self.assertIs(self.a.pool["a"].admin_state, AdminState.DRAIN)
        self.assertEqual(self.a.pool.drain_started("a").sessions, 1)
        self.clock.pump([1.0] * 30)
        self.assertIs(self.a.pool["a"].admin_state, AdminState.DRAIN)
        self.clock.pump([1.0] * 32)
        self.assertIs(self.a.pool["a"].admin_state, AdminState.MAINT)
        self.assertIs(self.b.pool["a"].admin_state, AdminState.MAINT)


class CountSessionsTests(TestCase):
    def test_without_counter(self) -> None:
        """
        Without a counter, the pool counts the table as it is.
        """
        pool = make_pool("a")
        table = StickTable(clock=Clock(), timeout=60.0, size=10)
        self.assertIs(pool.count_sessions("t", table, 60.0), table)
        table.bind(b"1", "a")
        self.assertEqual(pool.sessions("a"), 1)

    def test_with_counter(self) -> None:
        """
        With a counter, the pool counts the table it returns.
        """
        pool = make_pool("a")
        table = StickTable(clock=Clock(), timeout=60.0, size=10)
        other = StickTable(clock=Clock(), timeout=60.0, size=10)
        seen = []

        def counter(
            pool: Pool, name: str, table: IStickTable, timeout: float
        ) -> IStickTable:
            seen.append((pool.name, name, table, timeout))
            return other

        pool.counter = counter
        self.assertIs(pool.count_sessions("t", table, 60.0), other)
        self.assertEqual(seen, [("pool", "t", table, 60.0)])
        other.bind(b"1", "a")
        self.assertEqual(pool.sessions("a"), 1)


class ProxyServiceSharingTests(TestCase):
    """
    Two proxies built from one configuration with C{[store]}, on one fake
    server.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.server = FakeRedis(self.reactor)
        self.a = self.proxy()
        self.b = self.proxy()

    def proxy(self, role: Role = Role.ALONE) -> ProxyService:
        """
        A started proxy on the fake server; a worker's store and shared
        state only are started (it has no sockets to serve).
        """
        data = copy.deepcopy(GOOD)
        del data["admin"]
        data["state_dir"] = self.mktemp()
        data["store"] = {"url": "redis://127.0.0.1:6390/0"}
        data["frontend"][0]["persistence"]["mode"] = "table"
        sockets = {frontend["name"]: -1 for frontend in data["frontend"]}
        proxy = ProxyService(
            load_config(data, REGISTRY), self.reactor, role=role, sockets=sockets
        )
        assert proxy.store is not None and proxy.shared is not None
        proxy.store.connect = self.server.connector
        started = (proxy,) if role is Role.ALONE else (proxy.store, proxy.shared)
        for service in started:
            service.startService()
            self.addCleanup(service.stopService)
        return proxy

    def test_admin_state_and_sessions_are_shared(self) -> None:
        """
        A proxy's pools count the sessions the other proxy's stick table
        learned, and a drain made on one proxy is applied by the other.
        """
        (strategy,) = self.b.routers["db"].strategies
        strategy.table.bind(b"10.0.0.0", "pg1")
        self.reactor.pump([1.0, 1.0])
        self.assertEqual(self.a.pools["pg"].sessions("pg1"), 1)
        self.a.pools["pg"].drain("pg1", 60.0)
        pg1 = self.b.pools["pg"]["pg1"]
        self.assertIs(pg1.admin_state, AdminState.DRAIN)
        self.assertAlmostEqual(self.b.pools["pg"].drain_deadline("pg1"), 1062.0)

    def test_worker_leaves_admin_states_to_its_parent(self) -> None:
        """
        A worker shares its session counts through the store, not admin
        states, which its parent hands down: a drain another proxy made is
        not applied from the store (where the worker would end it on its
        own count, for every proxy), and a change made in the worker is
        not written there.
        """
        worker = self.proxy(Role.WORKER)
        (strategy,) = worker.routers["db"].strategies
        strategy.table.bind(b"10.0.0.0", "pg1")
        self.reactor.pump([1.0, 1.0])
        self.assertEqual(self.a.pools["pg"].sessions("pg1"), 1)
        self.a.pools["pg"].drain("pg1", 60.0)
        self.reactor.pump([1.0, 1.0])
        self.assertIs(worker.pools["pg"]["pg1"].admin_state, AdminState.READY)
        worker.pools["pg"].set_admin_state("pg1", AdminState.MAINT, "test")
        self.reactor.pump([1.0, 1.0])
        self.assertIs(self.a.pools["pg"]["pg1"].admin_state, AdminState.DRAIN)
