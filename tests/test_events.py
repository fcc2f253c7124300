"""
Tests for the event stream, L{stickyproxy.EventStream}.
"""

from zope.interface.verify import verifyObject

from twisted.trial.unittest import SynchronousTestCase

from stickyproxy import EventStream, IgnoreEvents
from stickyproxy.interfaces import IProxyEvents
from stickyproxy.model import ProbeRan, StateChange
from stickyproxy.testing import make_backend


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
