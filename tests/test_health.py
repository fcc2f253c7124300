"""
Tests for health tracking, L{stickyproxy.health}, and the backend states
it drives in L{stickyproxy.Pool}.
"""

import random

import attrs

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from stickyproxy import AdminState, NoBackendAvailable, Router
from stickyproxy.config._settings import HealthSettings, StatusRanges
from stickyproxy.core._balancers import RoundRobin
from stickyproxy.core._endpoints import connect_endpoint
from stickyproxy.core._pool import DrainStart, Pool
from stickyproxy.health._monitor import HealthMonitor, HealthStatus, ProbeResult
from stickyproxy.health._probes import (
    HTTPProbe,
    PoolEndpoints,
    ProbeFailed,
    TCPProbe,
    probe_netloc,
    treq_client,
)
from stickyproxy.interfaces import IHealthProbe
from stickyproxy.model import Health
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.testing import make_backend, make_pool, routing_context

from tests._base import TestCase


class ScriptedProbe:
    """
    A probe whose results the test decides, one Deferred per check.
    """

    def __init__(self):
        self.checks = []

    def check(self, backend):
        d = Deferred(lambda d: self.checks.append(("cancelled", backend.name)))
        self.checks.append((backend.name, d))
        return d

    def pending(self, name):
        return [d for entry in self.checks if entry[0] == name for d in [entry[1]]]

    def answer(self, name, ok=True):
        d = self.pending(name)[-1]
        if ok:
            d.callback(None)
        else:
            d.errback(ProbeFailed("scripted failure"))


def _fixed(low, high):
    """
    A 'random' source that always picks the middle: no jitter.
    """
    return (low + high) / 2


class MonitorTestCase(TestCase):
    settings = HealthSettings(interval=2.0, timeout=1.0, rise=2, fall=3)

    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b")
        self.pool.clock = self.clock
        self.probe = ScriptedProbe()
        self.monitor = HealthMonitor(
            self.pool, self.clock, self.probe, self.settings, random_source=_fixed
        )
        self.changes = []
        self.pool.observe(self.changes.append)
        self.a = self.pool.get("a")

    def probe_a(self, ok):
        """
        Advance to the next probe of a, and answer it.
        """
        before = len(self.probe.pending("a"))
        while len(self.probe.pending("a")) == before:
            self.clock.advance(0.1)
        self.probe.answer("a", ok)


class ThresholdTests(MonitorTestCase):
    def setUp(self):
        super().setUp()
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)

    def test_provides(self):
        """
        The built-in probes provide L{IHealthProbe}.
        """
        self.assertProvides(IHealthProbe, TCPProbe())
        self.assertProvides(IHealthProbe, HTTPProbe(client=None))

    def test_fall(self):
        """
        A backend goes down after C{fall} failed probes in a row, passing
        through "going down" (where it still serves).
        """
        self.probe_a(False)
        self.assertEqual(self.a.health, Health.GOING_DOWN)
        self.assertTrue(self.a.healthy)
        self.probe_a(False)
        self.assertEqual(self.a.health, Health.GOING_DOWN)
        self.probe_a(False)
        self.assertEqual(self.a.health, Health.DOWN)
        self.assertEqual(self.pool.accepting_new(), [self.pool.get("b")])

    def test_status(self):
        """
        L{HealthMonitor.status} gives the state with the count while
        thresholds count, and the last probe's result, reason and time.
        """
        self.assertEqual(self.monitor.status(self.a), HealthStatus("up", None))
        self.probe_a(False)
        failed_at = self.clock.seconds()
        self.assertEqual(
            self.monitor.status(self.a),
            HealthStatus(
                "going down 1/3",
                ProbeResult(False, "probe failed: scripted failure", failed_at),
            ),
        )
        self.probe_a(False)
        self.probe_a(False)
        self.assertEqual(self.monitor.status(self.a).detail, "down")
        self.probe_a(True)
        self.assertEqual(self.monitor.status(self.a).detail, "going up 1/2")
        self.assertTrue(self.monitor.status(self.a).probe.ok)
        self.pool.remove("a")
        self.assertEqual(self.monitor.status(self.a), HealthStatus("going up", None))

    def test_recovers_while_going_down(self):
        """
        One good probe while going down puts it back up and resets the count.
        """
        self.probe_a(False)
        self.probe_a(False)
        self.probe_a(True)
        self.assertEqual(self.a.health, Health.UP)
        self.probe_a(False)
        self.probe_a(False)
        self.assertEqual(self.a.health, Health.GOING_DOWN)

    def test_rise(self):
        """
        A down backend comes back after C{rise} good probes in a row; while
        going up it still does not serve, and a failure sends it back down.
        """
        for _ in range(3):
            self.probe_a(False)
        self.probe_a(True)
        self.assertEqual(self.a.health, Health.GOING_UP)
        self.assertFalse(self.a.healthy)
        self.probe_a(False)
        self.assertEqual(self.a.health, Health.DOWN)
        self.probe_a(True)
        self.probe_a(True)
        self.assertEqual(self.a.health, Health.UP)

    def test_events_once(self):
        """
        Each change is one event with the old and new state and the reason,
        and is logged once.
        """
        with capturedLogs() as events:
            for _ in range(3):
                self.probe_a(False)
        self.assertEqual(
            [
                (c.backend.name, c.old, c.new)
                for c in self.changes
                if c.backend is self.a
            ],
            [("a", "up", "going down"), ("a", "going down", "down")],
        )
        self.assertIn("scripted failure (3/3)", self.changes[-1].reason)
        logged = [
            e for e in events if e.get("kind") == "health" and e["backend"] == "a"
        ]
        self.assertEqual(len(logged), 2)

    def test_no_overlap(self):
        """
        A probe that never answers is not joined by a second one on the
        same backend; its timeout fails it, and only then is the next one
        scheduled.
        """
        self.clock.advance(1.0)  # the first probes start (no jitter: at 1.0)
        self.assertEqual(len(self.probe.pending("a")), 1)
        self.clock.advance(0.99)
        self.assertEqual(len(self.probe.pending("a")), 1)
        self.clock.advance(0.01)  # timeout
        self.assertEqual(self.a.health, Health.GOING_DOWN)
        self.assertIn("timed out", self.changes[-1].reason)
        self.clock.advance(1.99)
        self.assertEqual(len(self.probe.pending("a")), 1)
        self.clock.advance(0.01)
        self.assertEqual(len(self.probe.pending("a")), 2)

    def test_stop_cancels(self):
        """
        Stopping the monitor cancels the probes in flight and the schedule.
        """
        self.clock.advance(1.0)
        self.monitor.stopService()
        self.assertIn(("cancelled", "a"), self.probe.checks)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.a.health, Health.UP)


class ScheduleTests(MonitorTestCase):
    settings = HealthSettings(
        interval=10.0, fast_interval=1.0, down_interval=30.0, jitter=0.2, fall=2
    )

    def test_intervals_by_state(self):
        """
        C{interval} while steady, C{fast_interval} while changing state,
        C{down_interval} while down.
        """
        self.assertEqual(self.monitor.next_delay(self.a), 10.0)
        self.a.health = Health.GOING_DOWN
        self.assertEqual(self.monitor.next_delay(self.a), 1.0)
        self.a.health = Health.GOING_UP
        self.assertEqual(self.monitor.next_delay(self.a), 1.0)
        self.a.health = Health.DOWN
        self.assertEqual(self.monitor.next_delay(self.a), 30.0)

    def test_jitter_bounds(self):
        """
        Delays spread over the whole C{jitter} band and never leave it.
        """
        monitor = HealthMonitor(
            self.pool, self.clock, self.probe, self.settings, random.Random(7).uniform
        )
        delays = [monitor.next_delay(self.a) for _ in range(2000)]
        self.assertGreaterEqual(min(delays), 8.0)
        self.assertLessEqual(max(delays), 12.0)
        self.assertLess(min(delays), 8.2)
        self.assertGreater(max(delays), 11.8)

    def test_first_probes_spread(self):
        """
        The first probes of the backends are spread over one interval.
        """
        monitor = HealthMonitor(
            make_pool(*"abcdefgh"),
            self.clock,
            self.probe,
            self.settings,
            random.Random(3).uniform,
        )
        monitor.startService()
        self.addCleanup(monitor.stopService)
        times = sorted(call.getTime() for call in self.clock.getDelayedCalls())
        self.assertEqual(len(times), 8)
        self.assertLessEqual(times[-1], 10.0)
        self.assertGreater(times[-1] - times[0], 3.0)

    def test_raising_probe_keeps_schedule(self):
        """
        A probe that raises counts as a failure, and the schedule goes on.
        """

        class Raising:
            def check(self, backend):
                raise RuntimeError("probe bug")

        monitor = HealthMonitor(self.pool, self.clock, Raising(), self.settings, _fixed)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        self.clock.advance(5.0)
        self.assertEqual(self.a.health, Health.GOING_DOWN)
        self.clock.advance(1.0)
        self.assertEqual(self.a.health, Health.DOWN)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)


class PassiveTests(TestCase):
    def make(self, probe=None, **settings):
        self.clock = Clock()
        self.pool = make_pool("a", "b")
        self.monitor = HealthMonitor(
            self.pool, self.clock, probe, HealthSettings(**settings), _fixed
        )
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        self.a = self.pool.get("a")

    def test_passive_fall(self):
        """
        C{passive_fall} consecutive connect failures take a backend out.
        """
        self.make(passive_fall=3)
        self.pool.report_connect_failure(self.a, "refused")
        self.pool.report_connect_failure(self.a, "refused")
        self.assertEqual(self.a.health, Health.UP)
        self.pool.report_connect_failure(self.a, "refused")
        self.assertEqual(self.a.health, Health.DOWN)

    def test_success_resets(self):
        """
        A successful connect resets the count: failures must be consecutive.
        """
        self.make(passive_fall=2)
        self.pool.report_connect_failure(self.a, "refused")
        self.pool.report_connect_success(self.a)
        self.pool.report_connect_failure(self.a, "refused")
        self.assertEqual(self.a.health, Health.UP)

    def test_cooldown_without_probe(self):
        """
        Without an active probe, a passively downed backend comes back
        after C{passive_cooldown} seconds.
        """
        self.make(passive_fall=1, passive_cooldown=10.0)
        self.pool.report_connect_failure(self.a, "refused")
        self.clock.advance(9.9)
        self.assertEqual(self.a.health, Health.DOWN)
        self.clock.advance(0.1)
        self.assertEqual(self.a.health, Health.UP)

    def test_probe_brings_back(self):
        """
        With an active probe, a passively downed backend comes back only
        through C{rise} good probes, not the cooldown.
        """
        probe = ScriptedProbe()
        self.make(probe, passive_fall=1, passive_cooldown=1.0, interval=5.0, rise=2)
        self.pool.report_connect_failure(self.a, "refused")
        self.clock.advance(4.0)
        self.assertEqual(self.a.health, Health.DOWN)
        probe.answer("a")
        self.assertEqual(self.a.health, Health.GOING_UP)
        self.clock.advance(5.0)
        probe.answer("a")
        self.assertEqual(self.a.health, Health.UP)

    def test_http_statuses(self):
        """
        With C{passive_status}, matching answers count as failures; others
        reset the count.  Without it, statuses are ignored.
        """
        self.make(passive_fall=2, passive_status=StatusRanges.parse("500-599"))
        self.pool.report_status(self.a, 503)
        self.pool.report_status(self.a, 200)
        self.pool.report_status(self.a, 503)
        self.assertEqual(self.a.health, Health.UP)
        self.pool.report_status(self.a, 500)
        self.assertEqual(self.a.health, Health.DOWN)

    def test_statuses_count_across_connects(self):
        """
        Successful connects between failing answers (keep-alive requests)
        do not reset the count of failing answers.
        """
        self.make(passive_fall=3, passive_status=StatusRanges.parse("500-599"))
        for _ in range(3):
            self.pool.report_connect_success(self.a)
            self.pool.report_status(self.a, 500)
        self.assertEqual(self.a.health, Health.DOWN)

    def test_statuses_off_by_default(self):
        """
        Without C{passive_status}, HTTP answers never take a backend out.
        """
        self.make(passive_fall=1)
        self.pool.report_status(self.a, 500)
        self.assertEqual(self.a.health, Health.UP)


class PassivePanicTests(TestCase):
    """
    A pool that passive checks alone emptied keeps trying its backends
    (issue 8, defect 5).
    """

    def make(self, probe=None, **settings):
        self.clock = Clock()
        self.pool = make_pool("a", "b", "c")
        self.pool.clock = self.clock
        self.router = Router(self.pool, [], self.clock)
        settings.setdefault("passive_fall", 1)
        self.monitor = HealthMonitor(
            self.pool, self.clock, probe, HealthSettings(**settings), _fixed
        )
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)

    def fail(self, *names):
        for name in names:
            self.pool.report_connect_failure(self.pool.get(name), "refused")

    def chosen(self, host="192.0.2.1"):
        return self.router.choose(routing_context(host)).backend.name

    def test_least_recently_failed_first(self):
        """
        With every backend down by connect failures alone, new clients are
        not refused: each goes to the backend that failed least recently,
        and one that fails again goes to the back of the line.
        """
        self.make()
        self.fail("b", "a", "c")
        self.assertTrue(all(b.health is Health.DOWN for b in self.pool.backends))
        self.assertEqual([self.chosen(f"192.0.2.{i}") for i in range(3)], ["b"] * 3)
        self.fail("b")
        self.assertEqual(self.chosen(), "a")
        self.fail("a")
        self.assertEqual(self.chosen(), "c")

    def test_back_at_once(self):
        """
        A backend tried that way and found answering is up at once, not
        after C{passive_cooldown}; the others still wait for theirs.
        """
        self.make(passive_cooldown=30.0)
        self.fail("a", "b", "c")
        self.pool.report_connect_success(self.pool.get("a"))
        self.assertEqual(
            [b.health for b in self.pool.backends],
            [Health.UP, Health.DOWN, Health.DOWN],
        )
        self.assertFalse(self.pool.panic)
        self.assertEqual({self.chosen(f"192.0.2.{i}") for i in range(5)}, {"a"})

    def test_bound_clients_try_their_backend(self):
        """
        A bound client is sent to its own backend, down though it is.
        """
        self.make()
        self.fail("a", "b", "c")
        self.assertTrue(self.pool.serves_bound(self.pool.get("c")))

    def test_not_while_one_is_up(self):
        """
        While any backend is up, the passively downed ones get nobody.
        """
        self.make()
        self.fail("a", "b")
        self.assertFalse(self.pool.panic)
        self.assertEqual({self.chosen(f"192.0.2.{i}") for i in range(5)}, {"c"})

    def test_probe_verdict_ends_it(self):
        """
        A backend a failed probe confirms down is down for good: once one
        is, the pool refuses clients again (unless C{fail_open}).
        """
        probe = ScriptedProbe()
        self.make(probe, interval=5.0)
        self.fail("a", "b", "c")
        self.assertTrue(self.pool.panic)
        self.clock.advance(5.0)
        probe.answer("a", ok=False)
        self.assertFalse(self.pool.panic)
        self.assertRaises(
            NoBackendAvailable, self.router.choose, routing_context("192.0.2.1")
        )

    def test_off(self):
        """
        With C{passive_panic} off, such a pool refuses every client until
        C{passive_cooldown} is over (HAProxy's behaviour).
        """
        self.make()
        self.pool.passive_panic = False
        self.fail("a", "b", "c")
        self.assertRaises(
            NoBackendAvailable, self.router.choose, routing_context("192.0.2.1")
        )

    def test_statuses(self):
        """
        A backend down by failing HTTP answers (C{passive_status}) is tried
        too; connecting to it proves nothing, a good answer brings it back.
        """
        self.make(passive_status=StatusRanges.parse("500-599"))
        for backend in self.pool.backends:
            self.pool.report_status(backend, 503)
        self.assertEqual(self.chosen(), "a")
        self.pool.report_connect_success(self.pool.get("a"))
        self.assertIs(self.pool.get("a").health, Health.DOWN)
        self.pool.report_status(self.pool.get("a"), 500)
        self.assertEqual(self.chosen(), "b")
        self.pool.report_status(self.pool.get("b"), 200)
        self.assertIs(self.pool.get("b").health, Health.UP)

    def test_logged_once_each_way(self):
        """
        Entering and leaving that state is logged once each, however many
        failures happen in between.
        """
        self.make()
        with capturedLogs() as events:
            self.fail("a", "b", "c")
            self.fail("a", "b", "c", "a")
            self.pool.report_connect_success(self.pool.get("b"))
            self.pool.report_connect_success(self.pool.get("c"))
        panics = [e for e in events if "panic" in e["log_format"]]
        self.assertEqual(len(panics), 2, panics)
        self.assertIn("passive checks alone", panics[0]["log_format"])
        self.assertEqual(panics[0]["pool"], "pool")
        self.assertIn("is over", panics[1]["log_format"])


class InitStateAndSlowStartTests(TestCase):
    def test_init_down(self):
        """
        With C{init_state = "down"}, backends take no clients until their
        first good probe, which is enough to bring them up.
        """
        clock, probe, pool = Clock(), ScriptedProbe(), make_pool("a")
        monitor = HealthMonitor(
            pool, clock, probe, HealthSettings(init_state=Health.DOWN, rise=3), _fixed
        )
        self.assertEqual(pool.accepting_new(), [])
        monitor.startService()
        self.addCleanup(monitor.stopService)
        clock.advance(1.0)
        probe.answer("a")
        self.assertEqual(pool.get("a").health, Health.UP)

    def test_slow_start_share(self):
        """
        A backend coming back takes a linearly growing share of new clients
        over C{slow_start} seconds.
        """
        clock, pool = Clock(), make_pool("a", "b")
        monitor = HealthMonitor(
            pool,
            clock,
            None,
            HealthSettings(passive_fall=1, passive_cooldown=5.0, slow_start=20.0),
            _fixed,
        )
        monitor.startService()
        self.addCleanup(monitor.stopService)
        a = pool.get("a")
        pool.report_connect_failure(a, "refused")
        clock.advance(5.0)  # back up: slow start begins
        self.assertEqual(a.health, Health.UP)
        shares = []
        for _ in range(4):
            balancer = RoundRobin()
            picks = [
                balancer.choose(pool.accepting_new(), b"").name for _ in range(400)
            ]
            shares.append(picks.count("a") / 400)
            clock.advance(5.0)
        # a's weight is 1% then 25%, 50%, 75% of b's: shares 1/101, 1/5, 1/3, 3/7
        for share, expected in zip(shares, [0.01, 0.2, 1 / 3, 3 / 7], strict=True):
            self.assertLess(abs(share - expected), 0.02)
        self.assertEqual(a.effective_weight, 1.0)

    def test_no_slow_start_at_boot(self):
        """
        Slow start applies to backends coming back, not to the first start.
        """
        clock, probe, pool = Clock(), ScriptedProbe(), make_pool("a")
        monitor = HealthMonitor(
            pool,
            clock,
            probe,
            HealthSettings(init_state=Health.DOWN, slow_start=60.0),
            _fixed,
        )
        monitor.startService()
        self.addCleanup(monitor.stopService)
        clock.advance(1.0)
        probe.answer("a")
        self.assertEqual(pool.get("a").effective_weight, 1.0)


class ProbeTests(TestCase):
    def test_tcp_connect(self):
        """
        A plain TCP probe passes once connected, then closes.
        """
        reactor = MemoryReactorClock()
        backend = make_backend(
            "a", endpoint=connect_endpoint(reactor, "127.0.0.1:9", 1)
        )
        result = TCPProbe().check(backend)
        protocol = reactor.tcpClients[0][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.successResultOf(result)
        self.assertTrue(transport.disconnecting)

    def test_tcp_send_expect(self):
        """
        With C{send} and C{expect}, the probe passes only when the expected
        bytes come back (even split over reads); a pool that sends the PROXY
        protocol sends it first.
        """
        reactor = MemoryReactorClock()
        backend = make_backend(
            "a", endpoint=connect_endpoint(reactor, "127.0.0.1:9", 1)
        )
        result = TCPProbe(send=b"PING\r\n", expect=b"+PONG", send_proxy="v1").check(
            backend
        )
        protocol = reactor.tcpClients[0][2].buildProtocol(None)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 9),
        )
        protocol.makeConnection(transport)
        self.assertEqual(
            transport.value(), b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 9\r\nPING\r\n"
        )
        protocol.dataReceived(b"+PO")
        self.assertNoResult(result)
        protocol.dataReceived(b"NG\r\n")
        self.successResultOf(result)

    def test_tcp_expect_not_met(self):
        """
        A backend that closes without sending the expected bytes fails.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        reactor = MemoryReactorClock()
        backend = make_backend(
            "a", endpoint=connect_endpoint(reactor, "127.0.0.1:9", 1)
        )
        result = TCPProbe(expect=b"OK").check(backend)
        protocol = reactor.tcpClients[0][2].buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"ERR")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(result, ProbeFailed)

    def test_tcp_refused(self):
        """
        A refused connection fails the probe.
        """
        backend = make_backend("a")  # its endpoint refuses
        self.failureResultOf(TCPProbe().check(backend), ConnectionRefusedError)


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, status=200, body=b"ok", hang=False):
        super().__init__()
        self.status, self.body, self.hang = status, body, hang
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        request.setResponseCode(self.status)
        if self.hang:
            request.write(b"partial ")
            return NOT_DONE_YET
        return self.body


class HTTPProbeTests(TestCase):
    def check(self, resource, **options):
        stub = StubTreq(resource)
        probe = HTTPProbe(client=stub, **options)
        result = probe.check(make_backend("web1"))
        stub.flush()
        return result

    def test_pass(self):
        """
        A status in C{expect_status} passes; the request carries the path,
        the method and the configured Host.
        """
        resource = HealthResource()
        self.successResultOf(
            self.check(resource, method="HEAD", path="/healthz", host="app.example")
        )
        (request,) = resource.requests
        self.assertEqual(
            (request.method, request.path, request.getHeader(b"host")),
            (b"HEAD", b"/healthz", b"app.example"),
        )

    def test_status_mismatch(self):
        """
        A status outside C{expect_status} fails, saying which it was.
        """
        failure = self.failureResultOf(self.check(HealthResource(500)), ProbeFailed)
        self.assertIn("HTTP 500, expected 200-399", failure.getErrorMessage())
        self.successResultOf(
            self.check(HealthResource(503), expect_status=StatusRanges.parse("200,503"))
        )

    def test_body(self):
        """
        With C{expect_body}, the body must contain it.
        """
        self.successResultOf(
            self.check(HealthResource(body=b"status: ok"), expect_body=b"ok")
        )
        self.failureResultOf(
            self.check(HealthResource(body=b"status: degraded"), expect_body=b"ok"),
            ProbeFailed,
        )

    def hanging_probe(self):
        """
        A started monitor of one backend whose health page sends its headers
        and stalls, with the probe in flight.
        """
        clock, pool = Clock(), make_pool("web1")
        stub = StubTreq(HealthResource(hang=True))
        monitor = HealthMonitor(
            pool,
            clock,
            HTTPProbe(client=stub),
            HealthSettings(interval=2.0, timeout=1.0, fall=1),
            _fixed,
        )
        changes = []
        pool.observe(changes.append)
        monitor.startService()
        clock.advance(1.0)
        stub.flush()
        return clock, pool, monitor, changes

    def test_timeout_covers_body(self):
        """
        A backend that sends its headers and then stalls fails by the
        monitor's timeout, which covers the whole body.
        """
        clock, pool, monitor, changes = self.hanging_probe()
        self.addCleanup(monitor.stopService)
        self.assertEqual(pool.get("web1").health, Health.UP)
        clock.advance(1.0)
        self.assertEqual(pool.get("web1").health, Health.DOWN)
        self.assertIn("probe timed out after 1s", changes[-1].reason)

    def test_failures_after_stop_ignored(self):
        """
        Probes cancelled because the monitor stops do not count against
        the backend.
        """
        clock, pool, monitor, changes = self.hanging_probe()
        monitor.stopService()
        self.assertEqual((pool.get("web1").health, changes), (Health.UP, []))


class ProbeClientTests(TestCase):
    def test_quiet_and_working(self):
        """
        The HTTP probes' own client reaches the backend through its
        endpoint and passes on its answer, without a "Starting factory" or
        "Stopping factory" line per probe.
        """
        reactor = MemoryReactorClock()
        backend = make_backend(
            "web1", endpoint=connect_endpoint(reactor, "127.0.0.1:9", 1)
        )
        pool = Pool("pool", (backend,), RoundRobin())
        probe = HTTPProbe(client=treq_client(reactor, pool), path="/healthz")
        with capturedLogs() as events:
            result = probe.check(backend)
            host, port, factory, _, _ = reactor.tcpClients[0]
            factory.doStart()  # as a real connector does
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.assertTrue(transport.value().startswith(b"GET /healthz HTTP/1.1"))
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.successResultOf(result)
            factory.doStop()
        self.assertEqual((host, port), ("127.0.0.1", 9))
        self.assertEqual(
            [e["log_format"] for e in events if "factory" in e["log_format"]], []
        )

    def test_netloc(self):
        """
        A backend is addressed by its C{host:port} address, or by its name
        when its address is an endpoint string, a positional one (which is
        no URL authority) included.
        """
        for address, netloc in [
            ("10.0.0.5:80", "10.0.0.5:80"),
            ("[::1]:80", "[::1]:80"),
            ("tcp:host=10.0.0.5:port=80", "web1"),
            ("tcp:10.0.0.5:80", "web1"),
        ]:
            backend = attrs.evolve(make_backend("web1"), address=address)
            self.assertEqual(probe_netloc(backend), netloc, address)

    def test_endpoints_provide(self):
        """
        The endpoint the probes' client connects through is an endpoint.
        """
        reactor = MemoryReactorClock()
        backend = make_backend(
            "web1", endpoint=connect_endpoint(reactor, "127.0.0.1:9", 1)
        )
        endpoints = PoolEndpoints(Pool("pool", (backend,), RoundRobin()))
        self.assertProvides(IAgentEndpointFactory, endpoints)
        uri = URI.fromBytes(b"http://web1.invalid:1/")
        self.assertProvides(IStreamClientEndpoint, endpoints.endpointForURI(uri))


class StatusRangesTests(TestCase):
    def test_parse(self):
        """
        Ranges and single statuses, comma-separated.
        """
        ranges = StatusRanges.parse("200-299, 304")
        self.assertIn(204, ranges)
        self.assertIn(304, ranges)
        self.assertNotIn(301, ranges)
        for bad in ("", "abc", "300-200", "99", "200-600"):
            self.assertRaises(ValueError, StatusRanges.parse, bad)


class PoolStateTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b", "c")
        self.pool.clock = self.clock
        self.strategy = source_ip.build({"mode": "table"}, self.pool, self.clock, "p")
        self.router = Router(self.pool, [self.strategy], self.clock)

    def test_drain_to_maint_at_zero(self):
        """
        C{drain} with a deadline turns the backend to maintenance as soon as
        its sessions reach zero.
        """
        ctx = routing_context("10.0.0.1")
        self.strategy.persist(ctx, self.pool.get("a"))
        self.pool.get("a").active = 1
        self.pool.drain("a", deadline=600)
        self.assertEqual(self.pool.get("a").admin_state, AdminState.DRAIN)
        self.assertEqual(self.pool.sessions("a"), 1)
        self.clock.advance(5)
        self.assertEqual(self.pool.get("a").admin_state, AdminState.DRAIN)
        self.router.release(ctx, self.pool.get("a"))
        self.assertEqual(self.pool.sessions("a"), 1)  # the table entry lives on
        self.clock.advance(1800)  # the table's idle timeout
        self.assertEqual(self.pool.get("a").admin_state, AdminState.MAINT)

    def test_drain_deadline(self):
        """
        At the deadline, the backend goes to maintenance even with sessions.
        """
        self.pool.get("a").active = 3
        self.pool.drain("a", deadline=30)
        self.clock.advance(29)
        self.assertEqual(self.pool.get("a").admin_state, AdminState.DRAIN)
        self.clock.advance(1)
        self.assertEqual(self.pool.get("a").admin_state, AdminState.MAINT)

    def test_drain_deadline_shown(self):
        """
        L{Pool.drain_deadline} is when a draining backend goes to maintenance
        at the latest; C{None} for a drain without a deadline, and once the
        drain is over or cancelled.
        """
        self.pool.get("a").active = 3
        self.clock.advance(100)
        self.pool.drain("a", deadline=30)
        self.assertEqual(self.pool.drain_deadline("a"), 130)
        self.clock.advance(30)
        self.assertIsNone(self.pool.drain_deadline("a"))
        self.pool.drain("a")
        self.assertIsNone(self.pool.drain_deadline("a"))
        self.pool.drain("a", deadline=30)
        self.pool.set_admin_state("a", AdminState.READY)
        self.assertIsNone(self.pool.drain_deadline("a"))

    def test_drain_started_shown(self):
        """
        L{Pool.drain_started} is when a drain began and the sessions the
        backend held then; a new deadline for a drain under way keeps them,
        and they are gone once the drain is over.
        """
        self.pool.get("a").active = 3
        self.clock.advance(100)
        self.assertIsNone(self.pool.drain_started("a"))
        self.pool.drain("a", deadline=30)
        self.assertEqual(self.pool.drain_started("a"), DrainStart(100, 3))
        self.clock.advance(10)
        self.pool.get("a").active = 2
        self.pool.drain("a", deadline=60)
        self.assertEqual(self.pool.drain_started("a"), DrainStart(100, 3))
        self.assertEqual(self.pool.drain_deadline("a"), 170)
        self.pool.set_admin_state("a", AdminState.MAINT)
        self.assertIsNone(self.pool.drain_started("a"))
        self.pool.drain("a")
        self.assertEqual(self.pool.drain_started("a"), DrainStart(110, 2))

    def test_drain_cancelled_by_new_state(self):
        """
        Setting another state cancels a pending drain deadline.
        """
        self.pool.get("a").active = 3
        self.pool.drain("a", deadline=30)
        self.pool.set_admin_state("a", AdminState.READY)
        self.clock.advance(60)
        self.assertEqual(self.pool.get("a").admin_state, AdminState.READY)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fail_open(self):
        """
        With every backend down, a pool that fails open sends clients to
        them all (bound ones stay bound); one that does not refuses them.
        """
        for backend in self.pool.backends:
            self.pool.set_health(backend, Health.DOWN, "test")
        self.assertRaises(
            NoBackendAvailable, self.router.choose, routing_context("1.1.1.1")
        )
        self.pool.fail_open = True
        self.pool.set_admin_state("c", AdminState.MAINT)  # state change: recompute
        self.assertEqual([b.name for b in self.pool.accepting_new()], ["a", "b"])
        ctx = routing_context("10.0.0.9")
        self.strategy.persist(ctx, self.pool.get("b"))
        self.assertEqual(self.router.choose(ctx).backend.name, "b")

    def test_unknown_backend(self):
        """
        The state API names the backends a pool has when given another.
        """
        error = self.assertRaises(
            KeyError, self.pool.set_admin_state, "z", AdminState.DRAIN
        )
        self.assertIn("a, b, c", str(error))


class PoolWithoutMonitorTests(TestCase):
    def test_failures_logged(self):
        """
        Without health tracking, a connect failure is still logged.
        """
        pool = Pool("p", (make_backend("a"),), RoundRobin())
        with capturedLogs() as events:
            pool.report_connect_failure(pool.get("a"), "refused")
        self.assertEqual(events[0]["reason"], "refused")
