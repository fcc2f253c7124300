"""
Timers: an inactivity timer cheap enough for per-chunk use, and the one way
to schedule a call for a moment rather than after a delay.

A scheduled call must never raise: a delay computed from two readings of
the clock can come out negative (time moves between them), and the reactor
refuses a negative delay with an exception that kills whatever was meant to
reschedule itself.  Every delay is therefore computed from one reading and
clamped at zero.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


def call_at(
    clock: IReactorTime, when: float, f: Callable[..., object], *args: object
) -> IDelayedCall:
    """
    Call C{f(*args)} at clock time C{when}, or at once if that has passed.

    The delay comes from a single reading of the clock, clamped at zero, so
    the reactor never sees a negative one however long the caller took.
    """
    return clock.callLater(max(0.0, when - clock.seconds()), f, *args)


class IdleTimer:
    """
    Calls C{on_idle} once nothing has happened for C{timeout} seconds.

    L{touch} only records the time; the single pending call re-arms itself
    for the remaining time when it fires early, so activity costs no timer
    operations at all.  Slotted: every client connection has one.
    """

    __slots__ = ("_call", "_clock", "_last", "_on_idle", "timeout")

    def __init__(
        self, clock: IReactorTime, timeout: float, on_idle: Callable[[], object]
    ) -> None:
        self._clock = clock
        self.timeout = timeout
        self._on_idle = on_idle
        self._last = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(timeout, self._check)

    def touch(self) -> None:
        """
        Something happened: the idle time starts again.
        """
        self._last = self._clock.seconds()

    def restart(self, timeout: float, on_idle: Callable[[], object]) -> None:
        """
        Wait for a new kind of inactivity, starting now.

        A pending call due later than the new end is replaced, not reset:
        the reactor finds a call moved earlier by a linear search of its
        heap of every pending call (about 3 ms per reset with 10,000 open
        connections), while a cancelled call is dropped for nothing.
        """
        self.timeout, self._on_idle = timeout, on_idle
        self._last = self._clock.seconds()
        call = self._call
        if call is None:
            self._call = self._clock.callLater(timeout, self._check)
        elif call.getTime() > self._last + timeout:
            call.cancel()
            self._call = self._clock.callLater(timeout, self._check)

    def cancel(self) -> None:
        """
        Stop timing.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        idle_for = self._clock.seconds() - self._last  # one reading: delay > 0
        if idle_for < self.timeout:
            self._call = self._clock.callLater(self.timeout - idle_for, self._check)
            return
        self._call = None
        self._on_idle()


class Deadline:
    """
    Calls C{on_late} once the clock passes C{due()}, a moment that may
    move later as things happen (a request body's deadline grows with the
    bytes received).

    Moving it costs no timer operation: the single pending call, when it
    fires before the moment C{due()} names by then, re-arms itself for it.
    """

    __slots__ = ("_call", "_clock", "_due", "_on_late")

    def __init__(
        self,
        clock: IReactorTime,
        due: Callable[[], float],
        on_late: Callable[[], object],
    ) -> None:
        self._clock = clock
        self._due = due
        self._on_late = on_late
        self._call: IDelayedCall | None = call_at(clock, due(), self._check)

    def cancel(self) -> None:
        """
        Stop timing (what was timed is over).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        due = self._due()
        left = due - self._clock.seconds()  # one reading: the delay is > 0
        if left > 0:
            self._call = self._clock.callLater(left, self._check)
            return
        self._call = None
        self._on_late()
