"""
Tests that no scheduled call in the package computes a negative delay, on
a L{CreepingClock} whose time moves on at every reading as a real clock's
does (and which, like the real reactor, refuses a negative delay).
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from stickyproxy.config._settings import HealthSettings
from stickyproxy.core._timers import Deadline, IdleTimer, TimerWheel, call_at
from stickyproxy.health._monitor import HealthMonitor
from stickyproxy.http._backend import BackendConnections, BackendHTTP
from stickyproxy.model import AdminState
from stickyproxy.testing import make_backend, make_pool

from tests._base import CreepingClock, TestCase


class CallAtTests(TestCase):
    def test_past_moment_runs_at_once(self):
        """
        A moment already past schedules the call with a zero delay, not a
        negative one the reactor would refuse.
        """
        clock = CreepingClock()
        clock.advance(10)
        calls = []
        call_at(clock, 5.0, calls.append, "late")
        clock.advance(0)
        self.assertEqual(calls, ["late"])

    def test_future_moment(self):
        """
        A future moment is kept: the call runs then, not before.
        """
        clock = CreepingClock(step=0.0)
        calls = []
        call_at(clock, 5.0, calls.append, "on time")
        clock.advance(4.9)
        self.assertEqual(calls, [])
        clock.advance(0.1)
        self.assertEqual(calls, ["on time"])


class IdleSweepTests(TestCase):
    """
    The sweep of idle backend connections (issue 8, defect 9: it read the
    clock twice, and died on the negative delay that gave).
    """

    def connection(self, connections):
        connection = BackendHTTP(connections)
        connection.makeConnection(StringTransport())
        connection.reusable = True
        return connection

    def test_sweep_survives_clock_moving_between_reads(self):
        """
        When the clock moves on while the sweep runs, past the moment the
        next idle connection is due, the sweep neither raises nor stops: it
        runs again at once, and closes that connection too.
        """
        clock = CreepingClock(step=0.25)
        connections = BackendConnections(make_backend("a"), clock, 4, 30.0)
        first, second = self.connection(connections), self.connection(connections)
        connections.release(first)
        clock.advance(0.125)  # the second one is due just after the first
        connections.release(second)
        clock.run_next()
        self.assertEqual(len(connections), 0)
        self.assertTrue(second.transport.disconnecting)

    def test_sweep_keeps_running(self):
        """
        Connections released at different times are each closed once idle
        for C{idle_timeout}, by a sweep that reschedules itself.
        """
        clock = CreepingClock(step=0.01)
        connections = BackendConnections(make_backend("a"), clock, 4, 30.0)
        released = []
        for _ in range(3):
            connection = self.connection(connections)
            connections.release(connection)
            released.append(connection)
            clock.advance(10)
        self.assertEqual(len(connections), 2)
        clock.advance(20.5)
        self.assertEqual(len(connections), 0)
        self.assertTrue(all(c.transport.disconnecting for c in released))


class DrainDeadlineTests(TestCase):
    def test_deadline_between_two_reads(self):
        """
        A drain deadline that falls between two readings of the clock in
        one check puts the backend in maintenance instead of raising.
        """
        clock = CreepingClock(step=0.25)
        pool = make_pool("a")
        pool.clock = clock
        pool.get("a").active = 1  # a session: the drain waits for the deadline
        pool.drain("a", 2.125)
        for _ in range(4):
            if clock.calls:
                clock.run_next()
        self.assertIs(pool.get("a").admin_state, AdminState.MAINT)


class IdleTimerTests(TestCase):
    def test_rearms_on_creeping_clock(self):
        """
        An L{IdleTimer} touched now and then re-arms itself for the time
        left, and fires once idle for its timeout.
        """
        clock = CreepingClock(step=0.01)
        fired = []
        timer = IdleTimer(TimerWheel(clock), 1.0, lambda: fired.append(clock.rightNow))
        for _ in range(3):
            clock.advance(0.4)
            timer.touch()
        self.assertEqual(fired, [])
        for _ in range(4):
            if clock.calls:
                clock.run_next()
        self.assertEqual(len(fired), 1)

    def restarted(self, first, then):
        """
        An L{IdleTimer} made for C{first} seconds, restarted 5 seconds
        later for C{then} seconds.

        :returns: its clock, the times it fired at, and its first call.
        """
        clock = Clock()
        fired = []
        timer = IdleTimer(TimerWheel(clock), first, lambda: fired.append("first"))
        [call] = clock.getDelayedCalls()
        clock.advance(5)
        timer.restart(then, lambda: fired.append(clock.seconds()))
        return clock, fired, call

    def test_restart_sooner_replaces_the_call(self):
        """
        An L{IdleTimer} restarted for a shorter wait fires at its new end,
        from a new pending call of its wheel: the one due later is
        cancelled, never reset to an earlier time (the reactor's linear
        search).
        """
        clock, fired, first = self.restarted(60.0, 10.0)
        self.assertFalse(first.active())
        [pending] = clock.getDelayedCalls()
        self.assertEqual(pending.getTime(), 15.0)
        clock.advance(10)
        self.assertEqual(fired, [15.0])

    def test_restart_later_keeps_the_call(self):
        """
        An L{IdleTimer} restarted for a longer wait keeps its wheel's
        pending call, and is filed again for the rest when it comes.
        """
        clock, fired, first = self.restarted(10.0, 60.0)
        self.assertEqual(clock.getDelayedCalls(), [first])
        clock.advance(59.9)
        self.assertEqual(fired, [])
        clock.advance(0.1)
        self.assertEqual(fired, [65.0])


class TimerWheelTests(TestCase):
    """
    One L{TimerWheel} times many timers with one reactor call, to within
    its tick.
    """

    def setUp(self):
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock, tick=0.25)
        self.fired = []

    def idle(self, timeout, name):
        return IdleTimer(self.wheel, timeout, lambda: self.fired.append(name))

    def assert_fires(self, quiet, then, fired):
        """
        Nothing fires in the next C{quiet} seconds; C{fired} have, C{then}
        seconds later.
        """
        self.clock.advance(quiet)
        self.assertEqual(self.fired, [])
        self.clock.advance(then)
        self.assertEqual(self.fired, fired)

    def test_fires_within_a_tick(self):
        """
        A timeout fires at the first tick at or after its end: never
        before the end, at most a tick after it.
        """
        self.clock.advance(0.1)
        self.idle(1.0, "a")  # ends at 1.1: the tick at 1.25
        self.clock.advance(0.99)
        self.assertEqual(self.fired, [])
        self.assert_fires(0.05, 0.11, ["a"])  # 1.14: ended, its tick not come

    def test_one_call_for_many(self):
        """
        However many timers it holds, the wheel has one call pending in the
        reactor, for its earliest tick; each timer fires once, at the first
        tick at or after its end.
        """
        ends = [1.0 + i / 10 for i in range(100)]
        for end in ends:
            IdleTimer(self.wheel, end, lambda end=end: self.fired.append((end, now())))
        now = self.clock.seconds
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 1.0)
        self.assertEqual(len(self.wheel), len(ends))
        for _ in range(50):
            self.clock.advance(0.25)
        self.assertEqual(sorted(end for end, _ in self.fired), ends)
        for end, at in self.fired:
            self.assertTrue(end <= at < end + 0.25, (end, at))
        self.assertEqual(len(self.wheel), 0)

    def test_touch_defers(self):
        """
        A timer touched while it waits fires a timeout after the last
        touch (within a tick), with no call of its own.
        """
        timer = self.idle(1.0, "a")
        for _ in range(4):
            self.clock.advance(0.5)
            timer.touch()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assert_fires(0.75, 0.25, ["a"])

    def test_restart_sooner(self):
        """
        A timer restarted for a shorter wait is moved to its new tick, and
        fires there, once.
        """
        timer = self.idle(60.0, "long")
        timer.restart(2.0, lambda: self.fired.append("short"))
        self.clock.advance(2.0)
        self.assertEqual(self.fired, ["short"])
        self.clock.advance(100)
        self.assertEqual(self.fired, ["short"])

    def test_cancel(self):
        """
        A cancelled timer never fires, and the others still do.
        """
        a = self.idle(1.0, "a")
        self.idle(1.0, "b")
        a.cancel()
        a.cancel()  # twice is harmless
        self.clock.advance(5)
        self.assertEqual(self.fired, ["b"])

    def test_cancelled_by_a_callback(self):
        """
        A timer cancelled by the callback of another due at the same tick
        does not fire.
        """
        b = None

        def fire_a():
            self.fired.append("a")
            b.cancel()

        IdleTimer(self.wheel, 1.0, fire_a)
        b = self.idle(1.0, "b")
        self.idle(1.0, "c")
        IdleTimer(self.wheel, 1.0, fire_a)  # fires after c (last filed, first)
        self.clock.advance(1)
        self.assertNotIn("b", self.fired)
        self.assertIn("c", self.fired)

    def test_empty_schedules_nothing(self):
        """
        An empty wheel has no call pending: not when new, not once its
        last timer is cancelled, not once its last timer fired.
        """
        self.assertEqual(self.clock.getDelayedCalls(), [])
        timers = [self.idle(float(i), i) for i in (1, 5, 9)]
        for timer in timers:
            timer.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.idle(1.0, "a").restart(3.0, lambda: self.fired.append("b"))
        self.clock.advance(1)  # its old tick: filed again, not fired
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.assertEqual((self.fired, self.clock.getDelayedCalls()), (["b"], []))

    def test_restarted_after_firing(self):
        """
        A timer that fired (or was cancelled) may be started again.
        """
        timer = self.idle(1.0, "a")
        self.clock.advance(1)
        timer.restart(1.0, lambda: self.fired.append("again"))
        self.clock.advance(1)
        timer.cancel()
        timer.restart(1.0, lambda: self.fired.append("after cancel"))
        self.clock.advance(1)
        self.assertEqual(self.fired, ["a", "again", "after cancel"])

    def test_failing_callback(self):
        """
        A callback that raises is logged; the timers due with it still
        fire, and the wheel goes on.
        """

        def fail():
            raise ZeroDivisionError()

        self.idle(1.0, "a")
        IdleTimer(self.wheel, 1.0, fail)
        self.idle(2.0, "b")
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(1)
        self.assertEqual(self.fired, ["a", "b"])

    def test_deadline_on_the_wheel(self):
        """
        A L{Deadline} shares the wheel's call and fires within a tick of
        its moment.
        """
        Deadline(self.wheel, lambda: 1.1, lambda: self.fired.append("late"))
        self.idle(5.0, "idle")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assert_fires(1.1, 0.15, ["late"])


class MonitorScheduleTests(TestCase):
    def test_schedule_never_negative(self):
        """
        Whatever the injected random source returns, the first probe is
        scheduled (at once, for a value below zero) rather than refused.
        """
        clock = CreepingClock()
        pool = make_pool("a")
        checked = []

        class Probe:
            def check(self, backend):
                checked.append(backend.name)
                return Deferred()  # never answers: one probe is enough here

        monitor = HealthMonitor(
            pool,
            clock,
            Probe(),
            HealthSettings(interval=1.0),
            random_source=lambda low, high: low - 5.0,
        )
        monitor.startService()
        self.addCleanup(monitor.stopService)
        clock.advance(0)
        self.assertEqual(checked, ["a"])


class DeadlineTests(TestCase):
    def test_moves_later(self):
        """
        A L{Deadline} whose moment moves later while it waits fires once,
        at the moment it names by then, not before.
        """
        clock = CreepingClock(step=0.0)
        due = [10.0]
        fired = []
        Deadline(
            TimerWheel(clock), lambda: due[0], lambda: fired.append(clock.seconds())
        )
        clock.advance(5)
        due[0] = 12.5
        clock.advance(5)
        self.assertEqual(fired, [])
        clock.advance(2.5)
        self.assertEqual(fired, [12.5])
        clock.advance(100)
        self.assertEqual(fired, [12.5])

    def test_cancel(self):
        """
        A cancelled L{Deadline} never fires, and leaves no call pending.
        """
        clock = CreepingClock()
        fired = []
        Deadline(TimerWheel(clock), lambda: 1.0, lambda: fired.append(True)).cancel()
        clock.advance(10)
        self.assertEqual((fired, clock.calls), ([], []))

    def test_past_moment(self):
        """
        A moment already past when the deadline is made fires at once,
        with no negative delay.
        """
        clock = CreepingClock()
        clock.advance(10)
        fired = []
        Deadline(TimerWheel(clock), lambda: 5.0, lambda: fired.append(True))
        clock.advance(0)
        self.assertEqual(fired, [True])
