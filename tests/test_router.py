"""
Tests for L{stickyproxy.Router}: who wins, retries, and failover.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from stickyproxy import AdminState, NoBackendAvailable, Outcome, Router
from stickyproxy.core._balancers import RoundRobin
from stickyproxy.core._endpoints import connect_endpoint, connect_quietly
from stickyproxy.model import Health
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.testing import make_pool, routing_context

from tests._base import SpiedPool, TestCase


def connector(attempts, failing=(), label="conn"):
    """
    A connect function that records the backends it is asked for in
    C{attempts}, refuses those named in C{failing}, and connects the others
    at once, to C{"<label>-<name>"}.
    """

    def connect(backend):
        attempts.append(backend.name)
        if backend.name in failing:
            return fail(ConnectionRefusedError())
        return succeed(f"{label}-{backend.name}")

    return connect


class ChooseTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b", "c")
        self.strategy = source_ip.build({"mode": "table"}, self.pool, self.clock, "p")
        self.router = Router(self.pool, [self.strategy], self.clock)
        self.ctx = routing_context("192.0.2.1")

    def bind(self, name):
        self.strategy.persist(self.ctx, self.pool.get(name))

    def test_new_client_balanced(self):
        """
        A client no strategy knows is given the balancer's pick.
        """
        decision = self.router.choose(self.ctx)
        self.assertEqual(decision.outcome, Outcome.NEW)
        self.assertIsNone(decision.strategy)
        self.assertEqual(decision.backend.name, "a")

    def test_bound_wins(self):
        """
        A usable bound backend wins over the balancer.
        """
        self.bind("c")
        decision = self.router.choose(self.ctx)
        self.assertEqual(
            (decision.backend.name, decision.outcome, decision.strategy),
            ("c", Outcome.HIT, "source-ip"),
        )

    def test_draining_keeps_bound_clients(self):
        """
        A draining backend keeps its bound clients but gets no new ones.
        """
        self.bind("c")
        self.pool.set_admin_state("c", AdminState.DRAIN)
        self.assertEqual(self.router.choose(self.ctx).backend.name, "c")
        fresh = {
            self.router.choose(routing_context(f"10.0.0.{i}")).backend.name
            for i in range(6)
        }
        self.assertEqual(fresh, {"a", "b"})

    def test_maintenance_redispatches(self):
        """
        A client bound to a backend in maintenance is moved, and the decision
        names the backend it came from.
        """
        self.bind("c")
        self.pool.set_admin_state("c", AdminState.MAINT)
        decision = self.router.choose(self.ctx)
        self.assertEqual(decision.outcome, Outcome.REDISPATCH)
        self.assertEqual(decision.previous.name, "c")
        self.assertNotEqual(decision.backend.name, "c")

    def test_down_redispatches(self):
        """
        A client bound to a backend that is down is moved.
        """
        self.bind("c")
        self.pool.set_health(self.pool.get("c"), Health.DOWN, "test")
        self.assertEqual(self.router.choose(self.ctx).outcome, Outcome.REDISPATCH)

    def test_strict_refuses(self):
        """
        With C{strict}, a client whose backend cannot serve is refused
        rather than moved.
        """
        self.router.strict = True
        self.bind("c")
        self.pool.set_admin_state("c", AdminState.MAINT)
        self.assertRaises(NoBackendAvailable, self.router.choose, self.ctx)

    def test_strict_with_a_hash(self):
        """
        C{strict} holds for stateless strategies too: a client whose hashed
        backend is down is refused, and so is one whose hashed backend
        failed to connect; without C{strict} both move to the hash's next
        choice.
        """
        strategy = source_ip.build({}, self.pool, self.clock, "p")
        router = Router(self.pool, [strategy], self.clock, strict=True)
        own = strategy.lookup(self.ctx)
        self.assertRaises(NoBackendAvailable, router.choose, self.ctx, [own])
        self.pool.set_health(own, Health.DOWN, "test")
        self.assertRaises(NoBackendAvailable, router.choose, self.ctx)
        router.strict = False
        moved = router.choose(self.ctx)
        self.assertEqual((moved.outcome, moved.previous), (Outcome.REDISPATCH, own))
        self.assertIsNot(moved.backend, own)

    def test_nothing_usable(self):
        """
        With every backend in maintenance, there is no backend.
        """
        for name in "abc":
            self.pool.set_admin_state(name, AdminState.MAINT)
        self.assertRaises(NoBackendAvailable, self.router.choose, self.ctx)

    def test_chain_first_knower_wins(self):
        """
        Strategies are asked in order; the first that knows the client decides.
        """
        other = source_ip.build({"mode": "table"}, self.pool, self.clock, "q")
        router = Router(self.pool, [self.strategy, other], self.clock)
        other.persist(self.ctx, self.pool.get("b"))
        self.assertEqual(router.choose(self.ctx).backend.name, "b")
        self.bind("c")
        self.assertEqual(router.choose(self.ctx).backend.name, "c")


class DispatchTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b", "c", retries=2)
        self.strategy = source_ip.build({"mode": "table"}, self.pool, self.clock, "p")
        self.router = Router(self.pool, [self.strategy], self.clock)
        self.ctx = routing_context("192.0.2.1")
        self.attempts = []

    def connect_failing(self, *failing):
        return connector(self.attempts, failing)

    def test_success_binds_and_counts(self):
        """
        A successful connect counts the client as active on the backend
        until released; the binding is recorded by L{Router.bind}.
        """
        decision, conn = self.successResultOf(
            self.router.dispatch(self.ctx, self.connect_failing())
        )
        self.assertEqual(conn, "conn-a")
        self.assertEqual(self.pool.get("a").active, 1)
        self.assertIsNone(self.strategy.lookup(self.ctx))
        self.router.bind(self.ctx, decision)
        self.assertEqual(self.strategy.lookup(self.ctx).name, "a")
        self.router.release(self.ctx, decision.backend)
        self.assertEqual(self.pool.get("a").active, 0)

    def test_retry_elsewhere_and_rebind(self):
        """
        A refused connect to the bound backend is retried on another one,
        and the binding is rewritten to it.
        """
        self.strategy.persist(self.ctx, self.pool.get("b"))
        self.strategy.release(self.ctx, self.pool.get("b"))
        decision, conn = self.successResultOf(
            self.router.dispatch(self.ctx, self.connect_failing("b"))
        )
        self.assertEqual(self.attempts[0], "b")
        self.assertNotEqual(decision.backend.name, "b")
        self.assertEqual(decision.outcome, Outcome.REDISPATCH)
        self.assertEqual(decision.previous.name, "b")
        self.router.bind(self.ctx, decision)
        self.assertEqual(self.strategy.lookup(self.ctx), decision.backend)
        self.assertEqual(self.pool.get("b").active, 0)

    def test_retries_bounded(self):
        """
        After C{retries} other backends also fail, the client gets
        L{NoBackendAvailable}, and no backend counts it as active.
        """
        self.pool.retries = 1
        failure = self.failureResultOf(
            self.router.dispatch(self.ctx, self.connect_failing("a", "b", "c")),
            NoBackendAvailable,
        )
        self.assertIn("2 connect attempts", failure.getErrorMessage())
        self.assertEqual(self.attempts, ["a", "b"])
        self.assertEqual([b.active for b in self.pool.backends], [0, 0, 0])

    def test_each_backend_tried_once(self):
        """
        With more retries than backends, each backend is tried once.
        """
        self.pool.retries = 10
        self.failureResultOf(
            self.router.dispatch(self.ctx, self.connect_failing("a", "b", "c")),
            NoBackendAvailable,
        )
        self.assertEqual(sorted(self.attempts), ["a", "b", "c"])

    def test_connect_timeout(self):
        """
        A connect that does not finish within the pool's C{connect_timeout}
        is abandoned and retried elsewhere.
        """
        pending = {}

        def connect(backend):
            pending[backend.name] = Deferred()
            return pending[backend.name]

        self.pool.connect_timeout = 3.0
        result = self.router.dispatch(self.ctx, connect)
        self.assertEqual(list(pending), ["a"])
        self.clock.advance(3.0)
        self.assertEqual(list(pending), ["a", "b"])
        pending["b"].callback("conn-b")
        decision, conn = self.successResultOf(result)
        self.assertEqual((decision.backend.name, conn), ("b", "conn-b"))
        self.assertEqual(self.pool.get("a").active, 0)

    def test_one_connect_timer(self):
        """
        A connect to a backend at a literal IP address is timed by the
        router alone: its endpoint's connector schedules no call of its own.
        """
        reactor = MemoryReactorClock()
        router = Router(self.pool, [], reactor)
        endpoint = connect_endpoint(reactor, "127.0.0.1:8080", 3.0)
        router.dispatch(self.ctx, lambda backend: connect_quietly(endpoint, Protocol()))
        [(host, port, _, timeout, _)] = reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 8080, None))
        [timer] = reactor.getDelayedCalls()
        self.assertEqual(timer.getTime(), 3.0)

    def test_cancel(self):
        """
        Cancelling the dispatch cancels the connect in flight, without
        retrying or counting the client.
        """
        cancelled = []

        def connect(backend):
            return Deferred(lambda d: cancelled.append(backend.name))

        result = self.router.dispatch(self.ctx, connect)
        result.cancel()
        self.failureResultOf(result)
        self.assertEqual(cancelled, ["a"])
        self.assertEqual(self.pool.get("a").active, 0)
        self.assertIsNone(self.strategy.lookup(self.ctx))

    def test_release_without_bind(self):
        """
        A request that ended before its backend served it (a 502) is
        released from the backend's count, but strategies, which never
        recorded it, are not told.
        """
        released = []

        class Recorder:
            name = "recorder"

            def lookup(self, context):
                return None

            def persist(self, context, backend):
                pass

            def release(self, context, backend):
                released.append(backend)

        router = Router(self.pool, [Recorder()], self.clock)
        decision, _ = self.successResultOf(
            router.dispatch(self.ctx, self.connect_failing())
        )
        router.release(self.ctx, decision.backend, bound=False)
        self.assertEqual((self.pool.get("a").active, released), (0, []))
        router.release(self.ctx, decision.backend)
        self.assertEqual(released, [decision.backend])


class FailedTests(TestCase):
    """
    L{Router.failed}: after a dispatch, the router alone decides whether a
    request goes again, and reports what went wrong.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = SpiedPool(
            "p", make_pool("a", "b", "c").backends, RoundRobin(), retries=2
        )
        self.router = Router(self.pool, [], self.clock)
        self.ctx = routing_context("192.0.2.1")
        self.decision, _ = self.successResultOf(
            self.router.dispatch(self.ctx, lambda backend: succeed("pooled"))
        )
        self.pool.reports.clear()
        self.resent = []

    def resend(self, *refusing):
        return connector(self.resent, refusing, "fresh")

    def test_stale_resent_once_to_same_backend(self):
        """
        A request lost on a stale keep-alive connection goes again to the
        same backend, on the fresh connection C{resend} opens, with the
        same decision; the backend counts the client once, and its health
        hears of no failure.
        """
        again = self.router.failed(self.ctx, self.decision, "closed", self.resend())
        self.assertEqual(self.successResultOf(again), (self.decision, "fresh-a"))
        self.assertEqual(self.resent, ["a"])
        self.assertEqual([b.active for b in self.pool.backends], [1, 0, 0])
        self.assertEqual(
            self.pool.reports, [("success", "a", None, "stickyproxy.core._router")]
        )

    def test_stale_resend_fails_over(self):
        """
        When the fresh connection cannot be made either, the failure is
        reported and the request goes to another backend, as any failed
        connect would.
        """
        again = self.router.failed(self.ctx, self.decision, "closed", self.resend("a"))
        decision, connection = self.successResultOf(again)
        self.assertEqual((decision.backend.name, connection), ("b", "fresh-b"))
        self.assertEqual(self.resent, ["a", "b"])
        self.assertEqual([b.active for b in self.pool.backends], [0, 1, 0])
        self.assertEqual(
            [(signal, name) for signal, name, _, _ in self.pool.reports],
            [("failure", "a"), ("success", "b")],
        )

    def test_other_failure_reported_not_retried(self):
        """
        Any other failure is reported to passive health, and not retried:
        the caller answers the client and releases the backend.
        """
        again = self.router.failed(self.ctx, self.decision, "no response in time")
        self.assertIsNone(again)
        self.assertEqual(
            self.pool.reports,
            [("failure", "a", "no response in time", "stickyproxy.core._router")],
        )
        self.assertEqual(self.pool.get("a").active, 1)

    def test_report_status(self):
        """
        A response status reaches the pool's passive health through the
        router.
        """
        self.router.report_status(self.decision.backend, 503)
        self.assertEqual(
            self.pool.reports, [("status", "a", 503, "stickyproxy.core._router")]
        )

    def test_bind_reports_status(self):
        """
        L{Router.bind} given the response's status reports it too, through
        the router, after the strategies recorded the binding; without one
        it reports nothing.
        """
        persisted = []
        self.router.strategies = [_Recording(persisted)]
        self.router.bind(self.ctx, self.decision)
        self.assertEqual((persisted, self.pool.reports), (["a"], []))
        self.router.bind(self.ctx, self.decision, 502)
        self.assertEqual(persisted, ["a", "a"])
        self.assertEqual(
            self.pool.reports, [("status", "a", 502, "stickyproxy.core._router")]
        )


class _Recording:
    """
    A strategy that knows nobody and records the backends it binds.
    """

    name = "recording"

    def __init__(self, persisted):
        self.persisted = persisted

    def lookup(self, context):
        return None

    def persist(self, context, backend):
        self.persisted.append(backend.name)

    def release(self, context, backend):
        pass


class IdleTests(TestCase):
    """
    L{Router.dispatch} with C{idle}: a connection at hand (an idle
    keep-alive one) is used at once, with no L{Deferred}.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = SpiedPool(
            "p", make_pool("a", "b", "c").backends, RoundRobin(), retries=2
        )
        self.router = Router(self.pool, [], self.clock)
        self.ctx = routing_context("192.0.2.1")
        self.attempts = []
        self.idle_asked = []

    def idle(self, *having):
        def idle(backend):
            self.idle_asked.append(backend.name)
            return f"idle-{backend.name}" if backend.name in having else None

        return idle

    def test_idle_at_once(self):
        """
        When C{idle} has a connection to the decided backend, the decision
        and that connection come back at once, as a tuple; nothing is
        connected, the backend counts the client, and the router reports
        the success.
        """
        result = self.router.dispatch(
            self.ctx, connector(self.attempts), self.idle("a")
        )
        self.assertIsInstance(result, tuple)
        decision, connection = result
        self.assertEqual((decision.backend.name, connection), ("a", "idle-a"))
        self.assertEqual(self.attempts, [])
        self.assertEqual([b.active for b in self.pool.backends], [1, 0, 0])
        self.assertEqual(
            self.pool.reports, [("success", "a", None, "stickyproxy.core._router")]
        )

    def test_nothing_idle_connects(self):
        """
        Without an idle connection, C{connect} opens one, and the result is
        a L{Deferred}, as without C{idle}.
        """
        result = self.router.dispatch(self.ctx, connector(self.attempts), self.idle())
        decision, connection = self.successResultOf(result)
        self.assertEqual((decision.backend.name, connection), ("a", "conn-a"))
        self.assertEqual((self.idle_asked, self.attempts), (["a"], ["a"]))

    def test_retry_takes_idle(self):
        """
        After a failed connect, the next backend's idle connection is used
        if it has one.
        """
        result = self.router.dispatch(
            self.ctx, connector(self.attempts, ["a"]), self.idle("b")
        )
        decision, connection = self.successResultOf(result)
        self.assertEqual((decision.backend.name, connection), ("b", "idle-b"))
        self.assertEqual((self.idle_asked, self.attempts), (["a", "b"], ["a"]))
        self.assertEqual([b.active for b in self.pool.backends], [0, 1, 0])
