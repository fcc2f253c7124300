"""
Tests for stick tables that ask a store (L{stickyproxy.testing.SlowStickTable}
standing in for one): the router waits for them a bounded time, then routes
with what it knows, and never hangs.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from stickyproxy import AdminState, Decision, NoBackendAvailable, Outcome, Router
from stickyproxy.core._balancers import RoundRobin
from stickyproxy.core._pool import Pool
from stickyproxy.interfaces import IPersistenceStrategy, IStickTable
from stickyproxy.persistence._affinity import TableAffinity
from stickyproxy.persistence._appcookie import AppCookieLearn
from stickyproxy.persistence._sessionid import SessionIdReader
from stickyproxy.persistence._sourceip import SourceIPKey, source_ip
from stickyproxy.tcp._splice import TCPProxyFactory
from stickyproxy.testing import (
    SlowStickTable,
    http_context,
    make_pool,
    respond,
    routing_context,
    tcp_backend,
)

from tests._base import TestCase
from tests.test_http import OK, HTTPTestCase

KEY = bytes([192, 0, 2, 1])  # the source-ip key of 192.0.2.1
CLIENT = IPv4Address("TCP", "10.0.0.1", 5555)


class Recording:
    """
    A strategy that answers with what it is given and records each lookup.
    """

    name = "recording"

    def __init__(self, answer=None):
        self.answer = answer
        self.looked = 0

    def lookup(self, context):
        self.looked += 1
        return self.answer

    def persist(self, context, backend):
        pass

    def release(self, context, backend):
        pass


class SlowStickTableTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = SlowStickTable(self.clock, latency=0.1)

    def test_provides(self):
        """
        L{SlowStickTable} provides L{IStickTable}.
        """
        self.assertProvides(IStickTable, self.table)

    def test_answers_late(self):
        """
        A lookup is answered after C{latency}, with what the store held.
        """
        self.table.bind(b"k", "b")
        answer = self.table.get(b"k")
        self.assertNoResult(answer)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(answer), "b")
        self.assertEqual(self.table.pending, 0)

    def test_fails(self):
        """
        With C{error} set, lookups fail with it.
        """
        self.table.error = ConnectionRefusedError()
        answer = self.table.get(b"k")
        self.clock.advance(0.1)
        self.failureResultOf(answer, ConnectionRefusedError)

    def test_never_answers_until_cancelled(self):
        """
        With no C{latency}, a lookup waits until it is cancelled.
        """
        self.table.latency = None
        answer = self.table.get(b"k")
        self.clock.advance(3600)
        self.assertNoResult(answer)
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        self.assertEqual(self.table.pending, 0)

    def test_refresh_only_known(self):
        """
        C{refresh} moves a known binding and leaves an unknown key unknown;
        C{count} and C{forget} follow.
        """
        self.table.refresh(b"new", "a")
        self.assertNotIn(b"new", self.table.bindings)
        self.table.bind(b"k", "a")
        self.table.refresh(b"k", "b")
        self.assertEqual((self.table.count("a"), self.table.count("b")), (0, 1))
        self.table.forget(b"k")
        self.assertEqual(len(self.table), 0)


class SlowChooseTests(TestCase):
    """
    L{Router.choose} over a table in a slow store.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b", "c")
        self.table = SlowStickTable(self.clock, latency=0.01)
        self.strategy = TableAffinity("source-ip", self.pool, self.table, SourceIPKey())
        self.router = Router(self.pool, [self.strategy], self.clock)
        self.ctx = routing_context("192.0.2.1")
        self.table.bind(KEY, "c")

    def test_provides(self):
        """
        A table-backed strategy over a slow table still provides
        L{IPersistenceStrategy}.
        """
        self.assertProvides(IPersistenceStrategy, self.strategy)

    def test_synchronous_strategies_answer_at_once(self):
        """
        When every strategy answers at once (a memory table), so does
        C{choose}: a L{Decision}, no L{Deferred}, and no timer.
        """
        strategy = source_ip.build({"mode": "table"}, self.pool, self.clock, "p")
        router = Router(self.pool, [strategy], self.clock)
        self.assertIsInstance(router.choose(self.ctx), Decision)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waits_for_the_store(self):
        """
        A binding the store answers within the bound is honoured.
        """
        decision = self.router.choose(self.ctx)
        self.assertNoResult(decision)
        self.clock.advance(0.01)
        decision = self.successResultOf(decision)
        self.assertEqual(
            (decision.backend.name, decision.outcome, decision.strategy),
            ("c", Outcome.HIT, "source-ip"),
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_store_too_slow(self):
        """
        Past C{persistence_timeout} (50 ms by default) the client is
        balanced, and the lookup is cancelled.
        """
        self.table.latency = 1.0
        decision = self.router.choose(self.ctx)
        self.clock.advance(0.049)
        self.assertNoResult(decision)
        self.clock.advance(0.001)
        decision = self.successResultOf(decision)
        self.assertEqual((decision.backend.name, decision.outcome), ("a", Outcome.NEW))
        self.assertEqual(self.table.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bound_configurable(self):
        """
        C{persistence_timeout} sets how long a client waits.
        """
        self.table.latency = 0.15
        self.router.persistence_timeout = 0.2
        decision = self.router.choose(self.ctx)
        self.clock.advance(0.15)
        self.assertEqual(self.successResultOf(decision).backend.name, "c")

    def test_store_never_answers(self):
        """
        A store that never answers holds a client no longer than the bound.
        """
        self.table.latency = None
        decision = self.router.choose(self.ctx)
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(decision).outcome, Outcome.NEW)
        self.assertEqual(self.table.pending, 0)

    def test_store_fails(self):
        """
        A failed lookup counts as no binding, with a warning naming the
        strategy and the reason.
        """
        self.table.error = ConnectionRefusedError("store gone")
        with capturedLogs() as events:
            decision = self.router.choose(self.ctx)
            self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(decision).outcome, Outcome.NEW)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["strategy"], "source-ip")
        self.assertIn("store gone", events[0]["reason"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled(self):
        """
        Cancelling a pending choice cancels the lookup and the timer.
        """
        self.table.latency = None
        decision = self.router.choose(self.ctx)
        decision.cancel()
        self.failureResultOf(decision, CancelledError)
        self.assertEqual(self.table.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bound_backend_down(self):
        """
        A late binding to a backend in maintenance is redispatched, as an
        immediate one would be; with C{strict} the client is refused.
        """
        self.pool.set_admin_state("c", AdminState.MAINT)
        decision = self.router.choose(self.ctx)
        self.clock.advance(0.01)
        decision = self.successResultOf(decision)
        self.assertEqual(
            (decision.outcome, decision.previous.name), (Outcome.REDISPATCH, "c")
        )
        self.router.strict = True
        refused = self.router.choose(self.ctx)
        self.clock.advance(0.01)
        self.failureResultOf(refused, NoBackendAvailable)

    def test_later_strategies_asked_at_once(self):
        """
        While the store is asked, the strategies after it are asked at once
        (they take their data off the request), and one that knows the
        client decides only if the store does not.
        """
        later = Recording(self.pool.get("b"))
        router = Router(self.pool, [self.strategy, later], self.clock)
        decision = router.choose(self.ctx)
        self.assertEqual(later.looked, 1)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(decision).backend.name, "c")
        self.table.forget(KEY)
        decision = router.choose(self.ctx)
        self.clock.advance(0.01)
        decision = self.successResultOf(decision)
        self.assertEqual((decision.backend.name, decision.strategy), ("b", "recording"))

    def test_later_strategy_when_store_too_slow(self):
        """
        Past the bound, what the proxy knows locally (a later strategy)
        routes the client.
        """
        self.table.latency = None
        later = Recording(self.pool.get("b"))
        router = Router(self.pool, [self.strategy, later], self.clock)
        decision = router.choose(self.ctx)
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(decision).strategy, "recording")

    def test_earlier_knower_skips_the_store(self):
        """
        When an earlier strategy knows the client, a store lookup after it
        is cancelled at once, and C{choose} answers at once.
        """
        self.table.latency = None
        router = Router(
            self.pool, [Recording(self.pool.get("a")), self.strategy], self.clock
        )
        decision = router.choose(self.ctx)
        self.assertIsInstance(decision, Decision)
        self.assertEqual(decision.backend.name, "a")
        self.assertEqual(self.table.pending, 0)

    def test_already_answered(self):
        """
        A strategy may return a L{Deferred} that has already fired: the
        choice is made at once, with no timer left behind; a failed one
        counts as no binding.
        """
        router = Router(self.pool, [Recording(succeed(self.pool.get("b")))], self.clock)
        self.assertEqual(
            self.successResultOf(router.choose(self.ctx)).backend.name, "b"
        )
        router = Router(self.pool, [Recording(fail(ValueError("bad")))], self.clock)
        with capturedLogs():
            decision = self.successResultOf(router.choose(self.ctx))
        self.assertEqual(decision.outcome, Outcome.NEW)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_late(self):
        """
        With two late strategies, the first in chain order that names a
        backend decides, whichever answers first.
        """
        first, second = Deferred(), Deferred()
        router = Router(self.pool, [Recording(first), Recording(second)], self.clock)
        router.strategies[1].name = "second"
        decision = router.choose(self.ctx)
        second.callback(self.pool.get("b"))
        self.assertNoResult(decision)
        first.callback(None)
        self.assertEqual(self.successResultOf(decision).strategy, "second")


class SlowDispatchTests(TestCase):
    """
    L{Router.dispatch} over a table in a slow store.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b", "c", retries=2)
        self.table = SlowStickTable(self.clock, latency=0.01)
        self.strategy = TableAffinity("source-ip", self.pool, self.table, SourceIPKey())
        self.router = Router(self.pool, [self.strategy], self.clock)
        self.ctx = routing_context("192.0.2.1")
        self.table.bind(KEY, "c")
        self.attempts = []

    def connect(self, *failing):
        def connect(backend):
            self.attempts.append(backend.name)
            if backend.name in failing:
                return fail(ConnectionRefusedError())
            return succeed(backend.name)

        return connect

    def test_connects_once_decided(self):
        """
        Nothing is connected to until the store answered.
        """
        result = self.router.dispatch(self.ctx, self.connect())
        self.assertEqual(self.attempts, [])
        self.clock.advance(0.01)
        decision, connected = self.successResultOf(result)
        self.assertEqual((decision.outcome, connected), (Outcome.HIT, "c"))

    def test_client_leaves_mid_lookup(self):
        """
        Cancelling the dispatch while the store is asked cancels the
        lookup, and nothing is ever connected to.
        """
        self.table.latency = None
        result = self.router.dispatch(self.ctx, self.connect())
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(self.table.pending, 0)
        self.clock.advance(1.0)
        self.assertEqual(self.attempts, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_after_failed_connect(self):
        """
        A failed connect to the backend the store named is retried on
        another, asking the store again, and each wait is bounded.
        """
        result = self.router.dispatch(self.ctx, self.connect("c"))
        self.clock.advance(0.01)
        self.assertEqual(self.attempts, ["c"])
        self.assertNoResult(result)
        self.clock.advance(0.01)
        decision, connected = self.successResultOf(result)
        self.assertEqual(self.attempts, ["c", "a"])
        self.assertEqual(
            (decision.outcome, decision.previous.name, connected),
            (Outcome.REDISPATCH, "c", "a"),
        )

    def test_retry_with_store_down(self):
        """
        With the store never answering, each attempt waits the bound, and
        retries still run until one connects.
        """
        self.table.latency = None
        result = self.router.dispatch(self.ctx, self.connect("a"))
        self.clock.advance(0.05)
        self.assertEqual(self.attempts, ["a"])
        self.clock.advance(0.05)
        decision, connected = self.successResultOf(result)
        self.assertEqual((self.attempts, connected), (["a", "b"], "b"))
        self.assertEqual(self.table.pending, 0)

    def test_no_backend_after_lookup(self):
        """
        When nothing may take the client once the store answered, the
        dispatch fails with L{NoBackendAvailable}.
        """
        for name in "abc":
            self.pool.set_admin_state(name, AdminState.MAINT)
        result = self.router.dispatch(self.ctx, self.connect())
        self.clock.advance(0.01)
        self.failureResultOf(result, NoBackendAvailable)


class AppCookieLearnStoreTests(TestCase):
    """
    C{app-cookie} C{learn} over a table in a slow store.
    """

    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b")
        self.table = SlowStickTable(self.clock, latency=0.01)
        self.strategy = AppCookieLearn(
            self.pool, self.table, SessionIdReader("SID"), self.clock
        )

    def test_provides(self):
        """
        The strategy over a slow table provides L{IPersistenceStrategy}.
        """
        self.assertProvides(IPersistenceStrategy, self.strategy)

    def test_late_lookup(self):
        """
        A learned session's backend comes back from the store.
        """
        ctx = respond(http_context(), 200, [(b"set-cookie", b"SID=s1")])
        self.strategy.persist(ctx, self.pool.get("b"))
        found = self.strategy.lookup(http_context(cookies={"SID": "s1"}))
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(found).name, "b")

    def test_unknown_value_not_learned(self):
        """
        A session value the application never set is not learned when a
        response is served for it, even though the table cannot tell at
        once whether it knows it.
        """
        ctx = respond(http_context(cookies={"SID": "forged"}), 200)
        self.strategy.persist(ctx, self.pool.get("a"))
        self.assertEqual(self.table.bindings, {})


class SlowStoreTCPTests(TestCase):
    """
    The L4 frontend over a table in a slow store.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        backends = tuple(
            tcp_backend(self.reactor, name, port)
            for name, port in (("a", 9001), ("b", 9002), ("c", 9003))
        )
        self.pool = Pool("p", backends, RoundRobin(), connect_timeout=3.0, retries=2)
        self.table = SlowStickTable(self.reactor, latency=0.01)
        self.table.bind(bytes([10, 0, 0, 1]), "c")
        strategy = TableAffinity("source-ip", self.pool, self.table, SourceIPKey())
        router = Router(self.pool, [strategy], self.reactor)
        self.factory = TCPProxyFactory("front", router, self.reactor)

    def connect_client(self):
        protocol = self.factory.buildProtocol(CLIENT)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "192.0.2.9", 7000), peerAddress=CLIENT
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def accept_backend(self):
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return port, transport

    def refuse_backend(self):
        factory = self.reactor.tcpClients[-1][2]
        connector = self.reactor.connectors[-1]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def test_connects_where_the_store_says(self):
        """
        The backend is connected to once the store answered, and what the
        client sent meanwhile reaches it.
        """
        client, client_transport = self.connect_client()
        client.dataReceived(b"early")
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(client_transport.producerState, "paused")
        self.reactor.advance(0.01)
        port, backend_transport = self.accept_backend()
        self.assertEqual(port, 9003)
        self.assertEqual(backend_transport.value(), b"early")
        self.assertEqual(client_transport.producerState, "producing")

    def test_store_silent(self):
        """
        A store that never answers delays the client by the bound only: it
        is then balanced, and its binding written.
        """
        self.table.latency = None
        self.connect_client()
        self.reactor.advance(0.05)
        port, _ = self.accept_backend()
        self.assertEqual(port, 9001)
        self.assertEqual(self.table.bindings[bytes([10, 0, 0, 1])], "a")
        self.assertEqual(self.table.pending, 0)

    def test_store_fails(self):
        """
        A failing store does not stop the client: it is balanced.
        """
        self.table.error = ConnectionRefusedError("store gone")
        with capturedLogs():
            self.connect_client()
            self.reactor.advance(0.01)
        port, _ = self.accept_backend()
        self.assertEqual(port, 9001)

    def test_client_leaves_mid_lookup(self):
        """
        A client that leaves while the store is asked cancels the lookup;
        no backend is ever connected to.
        """
        self.table.latency = None
        client, _ = self.connect_client()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.table.pending, 0)
        self.reactor.advance(10)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_refused_retried(self):
        """
        A refused connect to the store's backend is retried elsewhere
        after the store is asked again.
        """
        self.connect_client()
        self.reactor.advance(0.01)
        self.refuse_backend()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.01)
        port, _ = self.accept_backend()
        self.assertEqual(port, 9001)
        self.assertEqual(self.pool.get("c").active, 0)


class SlowStoreHTTPTests(HTTPTestCase):
    """
    The L7 frontend over C{app-cookie} C{learn} in a slow store.
    """

    def setUp(self):
        super().setUp()
        self.table = SlowStickTable(self.reactor, latency=0.01)
        self.table.bind(b"s1", "b")
        self.router.strategies = [
            AppCookieLearn(self.pool, self.table, SessionIdReader("SID"), self.reactor)
        ]

    def accept(self):
        """
        Complete the newest backend connect (earlier ones were refused).
        """
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return port, protocol, transport

    def test_request_waits_for_the_store(self):
        """
        A request goes to the backend the store names, once it answered,
        with its body; the response reaches the client.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nCookie: SID=s1\r\n"
            b"Content-Length: 4\r\n\r\nbody"
        )
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.01)
        port, backend, backend_transport = self.accept()
        self.assertEqual(port, 9002)
        self.assertTrue(backend_transport.value().endswith(b"\r\n\r\nbody"))
        backend.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_store_silent(self):
        """
        A store that never answers delays a request by the bound only: it
        is then balanced and served.
        """
        self.table.latency = None
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SID=s1\r\n\r\n")
        self.reactor.advance(0.05)
        port, backend, _ = self.accept()
        self.assertEqual(port, 9001)
        backend.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(self.table.pending, 0)

    def test_store_fails(self):
        """
        A failing store does not fail the request: it is balanced and
        served.
        """
        self.table.error = ConnectionRefusedError("store gone")
        protocol, transport = self.client()
        with capturedLogs():
            protocol.dataReceived(
                b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SID=s1\r\n\r\n"
            )
            self.reactor.advance(0.01)
        port, backend, _ = self.accept()
        backend.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_client_leaves_mid_lookup(self):
        """
        A client that leaves while the store is asked cancels the lookup;
        no backend is connected to, and no timer is left behind.
        """
        self.table.latency = None
        protocol, _ = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SID=s1\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.table.pending, 0)
        self.reactor.advance(100)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_refused_retried(self):
        """
        A refused connect to the store's backend is retried on the other
        one, and the request served there.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SID=s1\r\n\r\n")
        self.reactor.advance(0.01)
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(ConnectionRefusedError())
        )
        self.reactor.advance(0.01)
        port, backend, _ = self.accept()
        self.assertEqual(port, 9001)
        backend.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))


class BrokenBalancerTests(TestCase):
    def test_late_choice_never_hangs(self):
        """
        When deciding after a late lookup raises something unexpected (a
        broken balancer), the choice fails with it instead of never firing.
        """
        clock = Clock()
        pool = make_pool("a", balancer=Broken())
        router = Router(pool, [Recording(Deferred())], clock)
        decision = router.choose(routing_context("192.0.2.1"))
        clock.advance(0.05)
        self.failureResultOf(decision, RuntimeError)


class Broken(RoundRobin):
    """
    A balancer that raises.
    """

    def choose(self, candidates, key):
        raise RuntimeError("broken balancer")
