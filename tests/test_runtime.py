"""
Tests for a pool whose set of backends changes at runtime (L{Pool.add},
L{Pool.remove}, L{Pool.set_weight}), and for everything that follows it:
the balancers, the HTTP keep-alive connections and the health monitor (the
L4 frontend's tests are in L{tests.test_tcp.OnDownTests}).
"""

from collections import Counter

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from stickyproxy import AdminState, BackendInUse, Health, Outcome, Pool, Router
from stickyproxy.config._settings import HealthSettings
from stickyproxy.core._balancers import (
    BALANCERS,
    RoundRobin,
    make_balancer,
    rendezvous_order,
)
from stickyproxy.health._monitor import HealthMonitor
from stickyproxy.persistence import _proxycookie
from stickyproxy.persistence._cookie import cookie
from stickyproxy.persistence._route import route
from stickyproxy.persistence._sourceip import masked_address, source_ip
from stickyproxy.testing import (
    http_context,
    make_backend,
    make_pool,
    routing_context,
    tcp_backend,
)

from tests._base import TestCase
from tests.test_health import ScriptedProbe
from tests.test_http import HTTPTestCase
from tests.test_http_strategies import KEY, _build, _clock, _sent, _visit


def _names(backends):
    return [backend.name for backend in backends]


class PoolChangeTests(TestCase):
    """
    The pool's own operations, and the events they announce.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b")
        self.pool.clock = self.clock
        self.changes = []
        self.pool.observe(self.changes.append)

    def _seen(self):
        return [(c.backend.name, c.kind, c.old, c.new) for c in self.changes]

    def test_add(self):
        """
        An added backend joins the pool (a new tuple: readers iterating the
        old one are undisturbed), takes new clients at once (the cached
        lists are recomputed), and is announced as C{"added"}.
        """
        before = self.pool.backends
        self.assertEqual(_names(self.pool.accepting_new()), ["a", "b"])
        c = make_backend("c")
        self.pool.add(c, "reload")
        self.assertEqual(_names(before), ["a", "b"])
        self.assertEqual(_names(self.pool.backends), ["a", "b", "c"])
        self.assertIs(self.pool.get("c"), c)
        self.assertEqual(_names(self.pool.accepting_new()), ["a", "b", "c"])
        self.assertEqual(_names(self.pool.serving_bound()), ["a", "b", "c"])
        self.assertEqual(self._seen(), [("c", "added", "absent", "present")])
        self.assertEqual(self.changes[0].reason, "reload")

    def test_failing_observer_hides_nothing(self):
        """
        An observer that raises is logged, and the observers after it still
        see the change, and the changes queued after it.
        """

        def broken(change):
            raise RuntimeError("observer bug")

        later = []
        pool = make_pool("a", "b")
        pool.observe(broken)
        pool.observe(later.append)
        pool.set_weight("a", 3)
        pool.set_weight("b", 0)
        self.assertEqual(
            [(c.backend.name, c.kind) for c in later],
            [("a", "weight"), ("b", "weight")],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_add_duplicate(self):
        """
        A second backend of the same name is refused, and nothing changes.
        """
        error = self.assertRaises(ValueError, self.pool.add, make_backend("a"))
        self.assertIn("already has a backend 'a'", str(error))
        self.assertEqual(len(self.pool.backends), 2)
        self.assertEqual(self.changes, [])

    def test_remove_without_sessions(self):
        """
        A backend that holds no session may be removed in any state: it
        leaves the pool and both lists, and is announced as C{"removed"}.
        """
        self.assertEqual(_names(self.pool.serving_bound()), ["a", "b"])
        b = self.pool.get("b")
        self.assertIs(self.pool.remove("b"), b)
        self.assertEqual(_names(self.pool.backends), ["a"])
        self.assertIsNone(self.pool.get("b"))
        self.assertEqual(_names(self.pool.accepting_new()), ["a"])
        self.assertEqual(_names(self.pool.serving_bound()), ["a"])
        self.assertEqual(self._seen(), [("b", "removed", "present", "absent")])
        self.assertRaises(KeyError, self.pool.remove, "b")

    def test_remove_refused_with_sessions(self):
        """
        A backend that still holds sessions (open connections, or live
        bindings a strategy keeps) and is not in maintenance is not removed:
        the error says why and what to do, and nothing changes.
        """
        strategy = source_ip.build({"mode": "table"}, self.pool, self.clock, "p")
        strategy.persist(routing_context("10.0.0.1"), self.pool.get("b"))
        for state in (AdminState.READY, AdminState.DRAIN):
            self.pool.set_admin_state("b", state)
            error = self.assertRaises(BackendInUse, self.pool.remove, "b")
            self.assertIn("pool/b holds 1 sessions", str(error))
            self.assertIn("drain it", str(error))
            self.assertEqual(_names(self.pool.backends), ["a", "b"])
        self.assertNotIn("removed", [c.kind for c in self.changes])

    def test_remove_in_maint(self):
        """
        A backend in maintenance may be removed even with sessions left (its
        clients are moved anyway).
        """
        self.pool.get("b").active = 2
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        self.assertEqual(_names(self.pool.backends), ["a"])

    def test_remove_after_drain(self):
        """
        The way to remove a busy backend: drain it with a deadline; once it
        is in maintenance, it may go.  Removing it mid-drain, once it holds
        nothing, cancels the drain's timer.
        """
        self.pool.get("b").active = 1
        self.pool.drain("b", deadline=60)
        self.assertRaises(BackendInUse, self.pool.remove, "b")
        self.clock.advance(60)
        self.assertIs(self.pool.get("b").admin_state, AdminState.MAINT)
        self.pool.remove("b")

        self.pool.get("a").active = 1
        self.pool.drain("a", deadline=60)
        self.pool.get("a").active = 0
        self.pool.remove("a")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_remove_when_drained(self):
        """
        An observer may remove a backend as the change that puts it in
        maintenance is announced (as the operations guide shows): the other
        observers hear of the maintenance first, then of the removal.
        """
        pool = self.pool
        pool.get("b").active = 1

        def removed_when_drained(change):
            if (change.backend.name, change.kind, change.new) == (
                "b",
                "admin",
                "maint",
            ):
                pool.remove("b")

        pool.observe(removed_when_drained)
        later = []
        pool.observe(lambda change: later.append((change.kind, change.new)))
        pool.drain("b", deadline=30)
        self.clock.advance(10)
        pool.get("b").active = 0
        self.clock.advance(1)
        self.assertIsNone(pool.get("b"))
        self.assertEqual(
            later, [("admin", "drain"), ("admin", "maint"), ("removed", "absent")]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_removed_backend_serves_nobody(self):
        """
        A removed backend that something still holds (a strategy's stale
        answer) may not keep its bound clients: the router moves them.
        """
        pool = make_pool("a", "b")
        b = pool.get("b")

        class Stale:
            name = "stale"

            def lookup(self, context):
                return b

            def persist(self, context, backend):
                pass

            def release(self, context, backend):
                pass

        router = Router(pool, [Stale()], self.clock)
        self.assertIs(router.choose(routing_context("10.0.0.1")).backend, b)
        pool.remove("b")
        decision = router.choose(routing_context("10.0.0.1"))
        self.assertIs(decision.backend, pool.get("a"))
        self.assertIs(decision.outcome, Outcome.REDISPATCH)

    def test_set_weight(self):
        """
        A new weight is announced as C{"weight"} (only when it differs);
        weight 0 keeps the backend's bound clients and gives it no new ones.
        """
        self.pool.set_weight("b", 3)
        self.pool.set_weight("b", 3)
        self.assertEqual(self.pool.get("b").weight, 3)
        self.assertEqual(_names(self.pool.accepting_new()), ["a", "b"])
        self.pool.set_weight("b", 0)
        self.assertEqual(
            self._seen(), [("b", "weight", "1", "3"), ("b", "weight", "3", "0")]
        )
        self.assertEqual(_names(self.pool.accepting_new()), ["a"])
        self.assertEqual(_names(self.pool.serving_bound()), ["a", "b"])

        strategy = source_ip.build({"mode": "table"}, self.pool, self.clock, "p")
        router = Router(self.pool, [strategy], self.clock)
        bound = routing_context("10.0.0.1")
        strategy.persist(bound, self.pool.get("b"))
        self.assertEqual(router.choose(bound).outcome, Outcome.HIT)
        self.assertEqual(router.choose(bound).backend.name, "b")
        for i in range(10):
            fresh = router.choose(routing_context(f"10.0.1.{i}"))
            self.assertEqual(fresh.backend.name, "a")

    def test_set_weight_invalid(self):
        """
        A weight that is not an integer >= 0 is refused with what was
        expected; an unknown backend names the ones there are.
        """
        for weight in (-1, 1.5, True, "2"):
            error = self.assertRaises(ValueError, self.pool.set_weight, "a", weight)
            self.assertIn("expected an integer >= 0", str(error))
        error = self.assertRaises(KeyError, self.pool.set_weight, "z", 1)
        self.assertIn("a, b", str(error))
        self.assertEqual(self.changes, [])

    def test_changes_in_order(self):
        """
        A change an observer makes while the pool announces another (the
        health monitor puts a new backend in its C{init_state}) reaches
        every observer after the first one, never before.
        """
        pool = make_pool("a")

        def down_when_added(change):
            if change.kind == "added":
                pool.set_health(change.backend, Health.DOWN, "init_state")

        seen = []
        pool.observe(down_when_added)
        pool.observe(lambda change: seen.append((change.kind, change.new)))
        pool.add(make_backend("b"))
        self.assertEqual(seen, [("added", "present"), ("health", "down")])
        self.assertIs(pool.get("b").health, Health.DOWN)


class BalancerFollowsTests(TestCase):
    """
    Every balancer, fed by the pool as the router feeds it, gives a new
    backend its share, a removed one nothing, and honours a new weight.
    """

    def _picks(self, pool, count):
        """
        Route C{count} new clients; each keeps its connection open (so that
        load-aware balancers see load), then all close.
        """
        router = Router(pool, [], Clock())
        chosen = []
        for i in range(count):
            backend = router.choose(routing_context(f"10.{i // 256}.{i % 256}.1"))
            backend = backend.backend
            backend.active += 1
            chosen.append(backend)
        for backend in chosen:
            backend.active -= 1
        return Counter(backend.name for backend in chosen)

    def _pool(self, balance):
        """
        A pool of a and b whose balancer counts the pool's sessions.
        """
        pool = Pool(
            "p",
            (make_backend("a"), make_backend("b")),
            make_balancer(balance, sessions=lambda name: pool.sessions(name)),
        )
        return pool

    def test_balancers_follow(self):
        """
        After C{add}, the new backend gets about its share; after
        C{remove}, the removed one gets none; after C{set_weight}, the
        shares follow the new weights.
        """
        for name in BALANCERS:
            pool = self._pool(name)
            self.assertEqual(set(self._picks(pool, 300)), {"a", "b"}, name)
            pool.add(make_backend("c"))
            counts = self._picks(pool, 3000)
            self.assertGreater(counts["c"], 700, (name, counts))
            pool.remove("a")
            counts = self._picks(pool, 3000)
            self.assertEqual(set(counts), {"b", "c"}, name)
            pool.set_weight("c", 3)
            counts = self._picks(pool, 4000)
            self.assertGreater(counts["c"], 2 * counts["b"], (name, counts))
            pool.set_weight("c", 0)
            self.assertEqual(set(self._picks(pool, 300)), {"b"}, name)

    def test_round_robin_starts_a_new_cycle(self):
        """
        Smooth round-robin keeps a running value per backend; after the set
        or a weight changes it starts afresh, so the new set gets nginx's
        smooth sequence from the next pick, and a removed backend leaves
        nothing behind.
        """
        balancer = RoundRobin()
        pool = Pool("p", (make_backend("a", weight=5), make_backend("b")), balancer)
        for _ in range(3):
            balancer.choose(pool.accepting_new(), b"")
        pool.add(make_backend("c"))
        picks = [balancer.choose(pool.accepting_new(), b"").name for _ in range(7)]
        self.assertEqual(picks, ["a", "a", "b", "a", "c", "a", "a"])

        balancer.choose(pool.accepting_new(), b"")
        pool.set_weight("b", 2)
        fresh = RoundRobin()
        for _ in range(8):
            self.assertIs(
                balancer.choose(pool.accepting_new(), b""),
                fresh.choose(pool.accepting_new(), b""),
            )

        pool.remove("c")
        self.assertNotIn("c", balancer._current)


class ConnectionsFollowTests(HTTPTestCase):
    """
    The HTTP frontend's keep-alive connections follow the pool's set.
    """

    GET = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: who=%s\r\n\r\n"
    OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    def test_added_backend_gets_connections(self):
        """
        A backend added at runtime gets its own keep-alive connections: a
        request bound to it reaches it, and its connection is kept for the
        next one.
        """
        c = tcp_backend(self.reactor, "c", 9003)
        self.pool.add(c)
        _, answer, client = self.exchange(self.GET % b"c", self.OK)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(self.backends[-1][0], 9003)
        self.assertEqual(len(self.factory.connections[c]), 1)
        self.exchange(self.GET % b"c", self.OK, client)
        self.assertEqual(len(self.reactor.tcpClients), 1)  # reused

    def test_health_of_removed_backend_ignored(self):
        """
        A health change announced for a backend no longer in the pool (its
        connections already dropped) is ignored by the HTTP frontend.
        """
        b = self.pool.get("b")
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        self.pool.set_health(b, Health.DOWN, "late probe")
        self.assertNotIn(b, self.factory.connections)

    def test_removed_backend_idle_closed(self):
        """
        When a backend is removed, its idle connections are closed and its
        connections' pool dropped.
        """
        b = self.pool.get("b")
        self.exchange(self.GET % b"b", self.OK)
        _, _, backend_transport = self.backends[-1]
        self.assertEqual(len(self.factory.connections[b]), 1)
        self.pool.remove("b")
        self.assertTrue(backend_transport.disconnecting)
        self.assertNotIn(b, self.factory.connections)

    def test_removed_backend_in_flight_finishes(self):
        """
        A request in flight to a backend removed meanwhile (from
        maintenance) gets its whole response; its connection is then
        closed, not kept.
        """
        protocol, transport = self.client()
        protocol.dataReceived(self.GET % b"b")
        backend, backend_transport = self.accept()
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        self.assertFalse(backend_transport.disconnecting)
        backend.dataReceived(self.OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\nok"))
        self.assertTrue(backend_transport.disconnecting)

    def test_stale_request_to_removed_backend(self):
        """
        A request sent on a reused keep-alive connection to a backend
        removed meanwhile, and lost because that connection was stale
        (closed before any byte of a response), goes again where the client
        would go now: the removed backend has no connections left to send
        it on.
        """
        b = self.pool.get("b")
        _, _, client = self.exchange(self.GET % b"b", self.OK)
        protocol, transport = client
        protocol.dataReceived(self.GET % b"b")  # on the idle connection
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        self.backends[-1][1].connectionLost(Failure(ConnectionDone()))
        fresh, fresh_transport = self.accept()
        self.assertEqual(self.backends[-1][0], 9001)
        self.assertIn(b"GET / HTTP/1.1", fresh_transport.value())
        fresh.dataReceived(self.OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual([b.active, self.pool.get("a").active], [0, 0])


def _middle(low, high):
    return (low + high) / 2


class MonitorFollowsTests(TestCase):
    """
    The health monitor tracks and probes an added backend, and forgets a
    removed one.
    """

    settings = HealthSettings(interval=2.0, timeout=1.0, rise=2, fall=3)

    def monitor(self, settings=None):
        self.clock = Clock()
        self.pool = make_pool("a", "b")
        self.pool.clock = self.clock
        self.probe = ScriptedProbe()
        monitor = HealthMonitor(
            self.pool,
            self.clock,
            self.probe,
            settings or self.settings,
            random_source=_middle,
        )
        monitor.startService()
        self.addCleanup(monitor.stopService)
        return monitor

    def test_added_backend_probed(self):
        """
        An added backend is probed on the normal schedule: first within one
        interval (here its middle), and its results move its state.
        """
        self.monitor()
        self.pool.add(make_backend("c"))
        self.clock.advance(0.9)
        self.assertEqual(self.probe.pending("c"), [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.probe.pending("c")), 1)
        for _ in range(3):
            self.probe.answer("c", ok=False)
            self.clock.advance(2.0)
        self.assertIs(self.pool.get("c").health, Health.DOWN)

    def test_added_backend_init_state(self):
        """
        With C{init_state = "down"}, an added backend waits for its first
        good probe; observers hear it was added before it went down.
        """
        settings = HealthSettings(interval=2.0, init_state=Health.DOWN)
        self.monitor(settings)
        seen = []
        self.pool.observe(lambda change: seen.append((change.kind, change.new)))
        self.pool.add(make_backend("c"))
        self.assertEqual(seen, [("added", "present"), ("health", "down")])
        self.assertEqual(_names(self.pool.accepting_new()), [])
        self.clock.advance(1.0)
        self.probe.answer("c")
        self.assertIs(self.pool.get("c").health, Health.UP)

    def test_removed_backend_not_probed(self):
        """
        A removed backend's probe in flight is cancelled without counting
        against anyone, its next probe never runs, and late passive signals
        about it are ignored.
        """
        monitor = self.monitor()
        self.clock.advance(1.0)
        b = self.pool.get("b")
        self.assertEqual(len(self.probe.pending("b")), 1)
        self.pool.remove("b")
        self.assertIn(("cancelled", "b"), self.probe.checks)
        checks = len(self.probe.checks)
        self.clock.advance(60)
        self.assertEqual(
            [entry for entry in self.probe.checks[checks:] if entry[0] == "b"], []
        )
        for _ in range(5):
            monitor.connect_failed(b, "refused")
            monitor.response_status(b, 500)
        monitor.connect_succeeded(b)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertIs(b.health, Health.UP)

    def test_removed_backend_timers_cancelled(self):
        """
        Removing a backend between probes cancels its next probe.
        """
        self.monitor()
        self.clock.advance(1.0)
        self.probe.answer("a")
        self.probe.answer("b")
        before = len(self.clock.getDelayedCalls())
        self.pool.remove("b")
        self.assertEqual(len(self.clock.getDelayedCalls()), before - 1)

    def test_removed_when_passive_checks_take_it_down(self):
        """
        A backend that an observer removes as passive checks take it down
        (with no probe, so a cooldown would bring it back) gets no
        cooldown: nothing is left scheduled for it, and no error follows.
        """
        self.clock = Clock()
        self.pool = make_pool("a", "b")
        settings = HealthSettings(passive_fall=1, passive_cooldown=10.0)
        monitor = HealthMonitor(self.pool, self.clock, None, settings)
        monitor.startService()
        self.addCleanup(monitor.stopService)

        def remove_down(change):
            if change.kind == "health" and change.new == "down":
                self.pool.remove(change.backend.name, "down: removed")

        self.pool.observe(remove_down)
        monitor.connect_failed(self.pool.get("b"), "refused")
        self.assertEqual(_names(self.pool.backends), ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10.0)
        self.assertEqual(self.flushLoggedErrors(), [])


class StrategiesFollowTests(TestCase):
    """
    The strategies' caches follow the pool's set: a backend added is
    reachable by its cookie or route at once, and a removed backend's
    cookies, routes and table entries no longer bind anyone, so its clients
    are balanced afresh.  The caches notice by identity: the pool replaces
    its C{backends} tuple on every add and remove.
    """

    def setUp(self):
        self.clock = _clock()
        self.pool = make_pool("a", "b")
        self.pool.clock = self.clock

    def _cookie_for(self, name, pool=None):
        """
        The value of the cookie a client of backend C{name} gets.
        """
        pool = pool or self.pool
        strategy = _build(cookie, pool, self.clock, keys=[KEY])
        _, ctx = _visit(strategy, pool.get(name))
        return _sent(ctx, "STICKY").value

    def test_cookie_of_added_backend(self):
        """
        A cookie naming a backend the pool does not have is not honoured;
        once that backend is added, the same cookie binds the client to it
        (and the backend's own new clients get cookies that do).
        """
        strategy = _build(cookie, self.pool, self.clock, keys=[KEY])
        value = self._cookie_for("c", make_pool("a", "b", "c"))
        ctx = http_context(cookies={"STICKY": value})
        self.assertIsNone(strategy.lookup(ctx))
        self.assertEqual(ctx.invalid, "cookie")
        c = make_backend("c")
        self.pool.add(c)
        self.assertIs(strategy.lookup(http_context(cookies={"STICKY": value})), c)
        _, ctx = _visit(strategy, c)
        fresh = _sent(ctx, "STICKY").value
        self.assertIs(strategy.lookup(http_context(cookies={"STICKY": fresh})), c)

    def test_cookie_of_removed_backend(self):
        """
        Once its backend is removed, a cookie that bound a client is not
        valid any more: the router balances the client afresh, and reports
        the binding as C{invalid}.
        """
        strategy = _build(cookie, self.pool, self.clock, keys=[KEY])
        router = Router(self.pool, [strategy], self.clock)
        value = self._cookie_for("b")

        def choose():
            return router.choose(http_context(cookies={"STICKY": value}))

        self.assertEqual(choose().outcome, Outcome.HIT)
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        decision = choose()
        self.assertEqual(decision.backend.name, "a")
        self.assertEqual(decision.persistence, "invalid")

    def test_route_follows(self):
        """
        A route to a backend added is followed at once; a route to one
        removed is not (and is reported invalid).
        """
        strategy = _build(route, self.pool)

        def lookup():
            ctx = http_context(cookies={"JSESSIONID": "abc.c"})
            return strategy.lookup(ctx), ctx.invalid

        self.assertEqual(lookup(), (None, "route"))
        c = make_backend("c")
        self.pool.add(c)
        self.assertEqual(lookup(), (c, None))
        self.pool.remove("c")
        self.assertEqual(lookup(), (None, "route"))

    def test_identity_check_is_cheap(self):
        """
        The cookie's tokens are made once per set of backends: lookups while
        nothing changes reuse them; an add or a remove makes them again;
        a change of state or weight does not.
        """
        made = []
        real = _proxycookie.backend_tokens

        def counting(keys, names):
            made.append(list(names))
            return real(keys, names)

        self.patch(_proxycookie, "backend_tokens", counting)
        strategy = _build(cookie, self.pool, self.clock, keys=[KEY])
        value = self._cookie_for("a")
        for _ in range(5):
            strategy.lookup(http_context(cookies={"STICKY": value}))
        self.pool.set_weight("a", 3)
        self.pool.set_admin_state("b", AdminState.DRAIN)
        strategy.lookup(http_context(cookies={"STICKY": value}))
        self.assertEqual(made[-1], ["a", "b"])
        count = len(made)
        self.pool.add(make_backend("c"))
        strategy.lookup(http_context(cookies={"STICKY": value}))
        self.pool.remove("c")
        strategy.lookup(http_context(cookies={"STICKY": value}))
        self.assertEqual(made[count:], [["a", "b", "c"], ["a", "b"]])

    def test_hash_follows(self):
        """
        Hash affinity moves only about the added backend's share of keys to
        it, and every key of a removed backend elsewhere (the others keep
        theirs).
        """
        strategy = source_ip.build({}, self.pool, self.clock, "p")
        contexts = [routing_context(f"10.0.{i // 256}.{i % 256}") for i in range(600)]
        before = [strategy.lookup(ctx).name for ctx in contexts]
        self.pool.add(make_backend("c"))
        after = [strategy.lookup(ctx).name for ctx in contexts]
        moved = [
            (old, new) for old, new in zip(before, after, strict=True) if old != new
        ]
        self.assertEqual({new for _, new in moved}, {"c"})
        self.assertLess(abs(len(moved) - 200), 60)
        self.pool.remove("a")
        final = [strategy.lookup(ctx).name for ctx in contexts]
        for old, new in zip(after, final, strict=True):
            if old != "a":
                self.assertEqual(new, old)
        self.assertNotIn("a", final)

    def test_hash_follows_weight(self):
        """
        Hash affinity follows a weight change at once: a heavier backend
        takes its new share of keys, from clients seen before the change
        too, and each key goes where the weighted hash now says.
        """
        strategy = source_ip.build({}, self.pool, self.clock, "p")
        contexts = [routing_context(f"10.1.{i // 256}.{i % 256}") for i in range(300)]
        before = [strategy.lookup(ctx) for ctx in contexts]
        self.pool.set_weight("b", 20)
        after = [strategy.lookup(ctx) for ctx in contexts]
        self.assertGreater(
            sum(b.name == "b" for b in after), sum(b.name == "b" for b in before) + 50
        )
        for ctx, backend in zip(contexts, after, strict=True):
            key = masked_address(ctx.client_host, 32, 64)
            self.assertIs(backend, rendezvous_order(key, self.pool.backends)[0])

    def test_table_entry_of_removed_backend(self):
        """
        A stick-table binding to a removed backend binds nobody: the client
        is balanced afresh and its entry moves to its new backend, whose
        sessions count it; the removed backend has no sessions to ask for.
        """
        strategy = source_ip.build({"mode": "table"}, self.pool, self.clock, "p")
        router = Router(self.pool, [strategy], self.clock)
        ctx = routing_context("10.0.0.1")
        strategy.persist(ctx, self.pool.get("b"))
        strategy.release(ctx, self.pool.get("b"))
        self.assertEqual(router.choose(ctx).backend.name, "b")
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        decision = router.choose(ctx)
        self.assertEqual((decision.backend.name, decision.outcome), ("a", Outcome.NEW))
        router.bind(ctx, decision)
        self.assertEqual(self.pool.sessions("a"), 1)
        self.assertRaises(KeyError, self.pool.sessions, "b")
        self.assertEqual(router.choose(ctx).outcome, Outcome.HIT)
