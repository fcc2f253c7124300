"""
Tests for the event stream, L{stickyproxy.EventStream}.
"""

from zope.interface.verify import verifyObject

from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from stickyproxy import AdminState, EventStream, IgnoreEvents
from stickyproxy.config._settings import HealthSettings
from stickyproxy.health._monitor import HealthMonitor
from stickyproxy.health._probes import HTTPProbe
from stickyproxy.http._accesslog import AccessLog
from stickyproxy.interfaces import IProxyEvents
from stickyproxy.model import (
    ConnectionClosed,
    ConnectionOpened,
    ProbeRan,
    RequestFinished,
    StateChange,
)
from stickyproxy.testing import make_backend, make_pool

from tests._base import TestCase
from tests.test_http import OK, HTTPTestCase, RecordingStrategy
from tests.test_tcp import TCPTestCase


class Recorder(IgnoreEvents):
    def __init__(self):
        self.seen = []

    def probe_ran(self, event):
        self.seen.append(event)

    def backend_changed(self, change):
        self.seen.append(change)


class Broken(IgnoreEvents):
    def probe_ran(self, event):
        raise RuntimeError("subscriber bug")


PROBE = ProbeRan("p", "a", True, "probe passed", 0.01)


class EventStreamTests(SynchronousTestCase):
    def test_provides(self):
        """
        The stream and the do-nothing base provide L{IProxyEvents}.
        """
        self.assertTrue(verifyObject(IProxyEvents, EventStream()))
        self.assertTrue(verifyObject(IProxyEvents, IgnoreEvents()))

    def test_inactive_without_subscribers(self):
        """
        A stream with nobody subscribed says so, so producers skip building
        events; it becomes active with the first subscriber and inactive
        again when the last one leaves.
        """
        stream = EventStream()
        self.assertFalse(stream.active)
        first, second = Recorder(), Recorder()
        stream.subscribe(first)
        stream.subscribe(second)
        self.assertTrue(stream.active)
        stream.unsubscribe(first)
        self.assertTrue(stream.active)
        stream.unsubscribe(second)
        self.assertFalse(stream.active)

    def test_fan_out_in_order(self):
        """
        Every subscriber gets every event, in order of subscription.
        """
        stream = EventStream()
        order = []

        class Named(IgnoreEvents):
            def __init__(self, name):
                self.name = name

            def probe_ran(self, event):
                order.append((self.name, event))

        stream.subscribe(Named("first"))
        stream.subscribe(Named("second"))
        stream.probe_ran(PROBE)
        self.assertEqual(order, [("first", PROBE), ("second", PROBE)])

    def test_unsubscribed_get_nothing(self):
        """
        A subscriber that left gets no more events.
        """
        stream = EventStream()
        recorder = Recorder()
        stream.subscribe(recorder)
        stream.unsubscribe(recorder)
        stream.unsubscribe(recorder)  # twice is harmless
        stream.probe_ran(PROBE)
        self.assertEqual(recorder.seen, [])

    def test_failing_subscriber_is_logged_and_isolated(self):
        """
        A subscriber that raises is logged, and the subscribers after it
        still get the event.
        """
        stream = EventStream()
        recorder = Recorder()
        stream.subscribe(Broken())
        stream.subscribe(recorder)
        stream.probe_ran(PROBE)
        self.assertEqual(recorder.seen, [PROBE])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_backend_changes(self):
        """
        State changes travel the same stream.
        """
        stream = EventStream()
        recorder = Recorder()
        stream.subscribe(recorder)
        change = StateChange("p", make_backend("a"), "admin", "ready", "drain", "x")
        stream.backend_changed(change)
        self.assertEqual(recorder.seen, [change])


class ServiceEventsTests(SynchronousTestCase):
    def test_pool_changes_reach_the_stream(self):
        """
        A L{ProxyService} publishes its pools' state changes on its event
        stream.
        """
        from twisted.internet.testing import MemoryReactorClock

        from stickyproxy import AdminState, StrategyRegistry, load_config
        from stickyproxy.persistence._sourceip import source_ip
        from stickyproxy.service import ProxyService

        registry = StrategyRegistry.of([source_ip])
        config = load_config(
            {
                "frontend": [{"listen": "tcp:0", "pool": "p"}],
                "pool": {"p": {"backend": [{"name": "a", "address": "127.0.0.1:1"}]}},
            },
            registry,
        )
        proxy = ProxyService(config, MemoryReactorClock(), registry)
        recorder = Recorder()
        proxy.events.subscribe(recorder)
        proxy.pools["p"].set_admin_state("a", AdminState.DRAIN)
        [change] = recorder.seen
        self.assertEqual(
            (change.kind, change.old, change.new), ("admin", "ready", "drain")
        )

    def service(self, frontends):
        from twisted.internet.testing import MemoryReactorClock

        from stickyproxy import StrategyRegistry, load_config
        from stickyproxy.persistence._sourceip import source_ip
        from stickyproxy.service import ProxyService

        registry = StrategyRegistry.of([source_ip])
        config = load_config(
            {
                "frontend": frontends,
                "pool": {
                    "p": {
                        "backend": [{"name": "a", "address": "127.0.0.1:1"}],
                        "health": {"type": "tcp"},
                    }
                },
            },
            registry,
        )
        return ProxyService(config, MemoryReactorClock(), registry)

    def test_producers_share_the_stream(self):
        """
        Every frontend's factory and every health monitor publish on the
        service's one stream.
        """
        proxy = self.service(
            [
                {"name": "web", "listen": "tcp:0", "pool": "p", "mode": "http"},
                {"name": "l4", "listen": "tcp:0", "pool": "p"},
            ]
        )
        streams = [listener.factory.events for listener in proxy.listeners.values()] + [
            monitor.events for monitor in proxy.monitors.values()
        ]
        self.assertEqual(len(streams), 3)
        for stream in streams:
            self.assertIs(stream, proxy.events)

    def test_access_log_subscribed(self):
        """
        The access log subscribes, for the frontends with C{access_log =
        true} only; without any, the stream stays inactive.
        """
        quiet = self.service(
            [{"name": "web", "listen": "tcp:0", "pool": "p", "mode": "http"}]
        )
        self.assertFalse(quiet.events.active)
        logged = self.service(
            [
                {"name": "web", "listen": "tcp:0", "pool": "p", "mode": "http"},
                {
                    "name": "api",
                    "listen": "tcp:0",
                    "pool": "p",
                    "mode": "http",
                    "access_log": True,
                },
            ]
        )
        self.assertTrue(logged.events.active)
        [access_log] = logged.events._subscribers
        self.assertIsInstance(access_log, AccessLog)
        self.assertEqual(access_log.frontends, frozenset({"api"}))
        self.assertTrue(verifyObject(IProxyEvents, access_log))


class Recording(IgnoreEvents):
    """
    Records every event, by kind.
    """

    def __init__(self):
        self.requests = []
        self.opened = []
        self.closed = []
        self.probes = []

    def request_finished(self, event):
        self.requests.append(event)

    def connection_opened(self, event):
        self.opened.append(event)

    def connection_closed(self, event):
        self.closed.append(event)

    def probe_ran(self, event):
        self.probes.append(event)


class Inactive:
    """
    A stream nobody listens to, whose every event fails the test: producers
    must check C{active} and build nothing.
    """

    active = False

    def __getattr__(self, name):
        raise AssertionError(f"{name} called on an inactive stream")


class InvalidatingStrategy(RecordingStrategy):
    """
    Says a C{who} cookie naming no backend is invalid.
    """

    def lookup(self, context):
        bound = super().lookup(context)
        if bound is None and context.cookie("who"):
            context.invalid = self.name
        return bound


class HTTPEventTests(HTTPTestCase):
    def setUp(self):
        super().setUp()
        self.strategy = InvalidatingStrategy(self.pool)
        self.router.strategies = [self.strategy]
        self.events = self.factory.events
        self.recording = Recording()
        self.events.subscribe(self.recording)

    def test_request_finished(self):
        """
        A served request is published once, with where it went, how the
        strategy decided, the bytes each way, its timings and its HTTP
        version.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"POST /x?y HTTP/1.1\r\nHost: a\r\nCookie: who=b\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        backend, _ = self.accept()
        self.reactor.advance(0.25)
        backend.dataReceived(b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\n")
        self.reactor.advance(0.5)
        backend.dataReceived(b"abc")
        (event,) = self.recording.requests
        self.assertEqual(
            event,
            RequestFinished(
                frontend="web",
                pool="p",
                backend="b",
                client="192.0.2.10",
                method="POST",
                target="/x?y",
                status=201,
                persistence="hit",
                strategy="recording",
                bytes_in=5,
                bytes_out=3,
                head_time=0.25,
                total_time=0.75,
                ended="ok",
                version="1.1",
            ),
        )

    def test_new_and_invalid(self):
        """
        A client without a binding is C{new}, with no strategy; one whose
        binding a strategy found invalid is C{invalid}, naming it.
        """
        self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=zz\r\n\r\n", OK)
        new, invalid = self.recording.requests
        self.assertEqual((new.persistence, new.strategy), ("new", None))
        self.assertEqual(
            (invalid.persistence, invalid.strategy), ("invalid", "recording")
        )

    def test_refused(self):
        """
        A request refused before it is routed is published, with its
        status and persistence C{none}.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET /big HTTP/1.1\r\n\r\n")
        (event,) = self.recording.requests
        self.assertEqual(
            (event.status, event.method, event.target, event.backend),
            (400, "GET", "/big", None),
        )
        self.assertEqual(
            (event.persistence, event.strategy, event.ended),
            ("none", None, "refused"),
        )

    def test_no_backend(self):
        """
        A request no backend could take is published with its 503.
        """
        for backend in self.pool.backends:
            self.pool.set_admin_state(backend.name, AdminState.MAINT)
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        (event,) = self.recording.requests
        self.assertEqual(
            (event.status, event.backend, event.persistence, event.ended),
            (503, None, "none", "no-backend"),
        )

    def test_abandoned(self):
        """
        A request whose client left before its response is published as
        abandoned, without a status.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.accept()
        protocol.connectionLost(Failure(ConnectionDone()))
        (event,) = self.recording.requests
        self.assertEqual(
            (event.status, event.backend, event.head_time, event.ended),
            (None, "a", None, "abandoned"),
        )

    def test_failing_subscriber(self):
        """
        A subscriber that raises is logged; the request, and the next one
        on the same connection, are served all the same.
        """

        class Broken(IgnoreEvents):
            def request_finished(self, event):
                raise RuntimeError("subscriber bug")

        self.events.subscribe(Broken())
        _, first, client = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        _, second, _ = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK, client)
        self.assertTrue(first.endswith(b"\r\n\r\nok"))
        self.assertTrue(second.endswith(b"\r\n\r\nok"))
        self.assertEqual(len(self.recording.requests), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_inactive(self):
        """
        With nobody subscribed, nothing is built or published: served,
        failed and refused requests never call the stream.
        """
        self.factory.events = Inactive()
        _, answer, client = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        self.assertTrue(answer.endswith(b"ok"))
        protocol, transport = client
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        protocol, _ = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))


class AccessLogTests(HTTPTestCase):
    def logged(self, frontends, request):
        from twisted.logger import capturedLogs

        self.factory.events.subscribe(AccessLog(frontends))
        protocol, _ = self.client()
        with capturedLogs() as events:
            protocol.dataReceived(request)
        return [e for e in events if "ended" in e]

    def test_refused_line(self):
        """
        A refused request gets an access log line too, with C{-} for what
        was never decided.
        """
        (line,) = self.logged(["web"], b"GET /x HTTP/1.1\r\n\r\n")
        self.assertEqual(
            (line["status"], line["backend"], line["strategy"], line["outcome"]),
            (400, "-", "-", "-"),
        )
        self.assertEqual((line["method"], line["target"]), ("GET", "/x"))

    def test_other_frontends(self):
        """
        Only the frontends it was made for are logged.
        """
        self.assertEqual(self.logged(["api"], b"GET /x HTTP/1.1\r\n\r\n"), [])


class TCPEventTests(TCPTestCase):
    def setUp(self):
        super().setUp()
        self.recording = Recording()
        self.factory.events.subscribe(self.recording)

    def test_opened_and_closed(self):
        """
        A spliced connection is published when its backend connects and
        when it ends, with the bytes each way, how long it lasted, how it
        ended and how its backend was chosen.
        """
        client, _ = self.connect_client()
        client.dataReceived(b"early ")
        self.reactor.advance(1)
        _, backend, _ = self.accept_backend()
        (opened,) = self.recording.opened
        self.assertEqual(
            opened,
            ConnectionOpened("front", "p", "a", "10.0.0.1", "new", None),
        )
        client.dataReceived(b"request")
        backend.dataReceived(b"answer")
        self.assertEqual(self.recording.closed, [])
        self.reactor.advance(2.5)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            self.recording.closed,
            [
                ConnectionClosed(
                    "front", "p", "a", "10.0.0.1", 13, 6, 2.5, "client-closed", "new"
                )
            ],
        )

    def test_hit(self):
        """
        A client the strategy knows is published as a hit, naming it.
        """
        client, _ = self.connect_client()
        self.accept_backend()
        client.connectionLost(Failure(ConnectionDone()))
        self.connect_client()
        self.accept_backend()
        second = self.recording.opened[1]
        self.assertEqual((second.persistence, second.strategy), ("hit", "source-ip"))

    def test_never_connected(self):
        """
        A client whose backend never connected opened nothing, so nothing
        closes either.
        """
        client, _ = self.connect_client()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.recording.opened, self.recording.closed), ([], []))

    def test_inactive(self):
        """
        With nobody subscribed, connections are spliced and closed without
        calling the stream.
        """
        self.factory.events = Inactive()
        client, client_transport = self.connect_client()
        _, backend, _ = self.accept_backend()
        backend.dataReceived(b"answer")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(client_transport.value(), b"answer")


class ProbeEventTests(TestCase):
    def make(self, events, resource):
        """
        A monitor of a pool of one backend, probing over HTTP with
        C{resource} on a stub client.
        """
        clock = Clock()
        pool = make_pool("a", name="p")
        pool.clock = clock
        stub = StubTreq(resource)
        monitor = HealthMonitor(
            pool,
            clock,
            HTTPProbe(client=stub),
            HealthSettings(interval=2.0, timeout=1.0, rise=1, fall=1),
            random_source=lambda low, high: (low + high) / 2,
            events=events,
        )
        monitor.startService()
        self.addCleanup(monitor.stopService)
        return clock, stub

    def test_probe_ran(self):
        """
        Each probe that ran is published with its result, its reason and
        how long it took.
        """
        stream = EventStream()
        recording = Recording()
        stream.subscribe(recording)
        resource = Pausing(200)
        clock, stub = self.make(stream, resource)
        clock.advance(1)  # the first probe, half an interval in
        stub.flush()
        clock.advance(0.25)
        resource.finish()
        stub.flush()
        resource.code = 500
        clock.advance(2)
        stub.flush()
        resource.finish()
        stub.flush()
        passed, failed = recording.probes
        self.assertEqual(passed, ProbeRan("p", "a", True, "probe passed", 0.25))
        self.assertEqual((failed.ok, failed.latency), (False, 0.0))
        self.assertIn("500", failed.reason)

    def test_inactive(self):
        """
        With nobody subscribed, probes run without calling the stream.
        """
        resource = Pausing(200)
        clock, stub = self.make(Inactive(), resource)
        clock.advance(1)
        stub.flush()
        resource.finish()
        stub.flush()
        self.assertEqual(resource.served, 1)


class Pausing(Resource):
    """
    Answers with C{code} when the test says so.
    """

    isLeaf = True

    def __init__(self, code):
        super().__init__()
        self.code = code
        self.waiting = []
        self.served = 0

    def render(self, request):
        request.setResponseCode(self.code)
        self.waiting.append(request)
        return NOT_DONE_YET

    def finish(self):
        while self.waiting:
            request = self.waiting.pop(0)
            request.write(b"ok")
            request.finish()
            self.served += 1
