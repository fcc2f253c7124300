"""
Timers: a wheel that times every connection of a frontend with one reactor
call, the inactivity timers and deadlines it times (cheap enough for
per-chunk use), and the one way to schedule a call for a moment rather than
after a delay.

A scheduled call must never raise: a delay computed from two readings of
the clock can come out negative (time moves between them), and the reactor
refuses a negative delay with an exception that kills whatever was meant to
reschedule itself.  Every delay is therefore computed from one reading and
clamped at zero.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from math import ceil

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()

#: The default tick of a L{TimerWheel}, in seconds (1/16): a power of two, so
#: that whole and half seconds fall on ticks exactly.
TICK = 0.0625


def call_at(
    clock: IReactorTime, when: float, f: Callable[..., object], *args: object
) -> IDelayedCall:
    """
    Call C{f(*args)} at clock time C{when}, or at once if that has passed.

    The delay comes from a single reading of the clock, clamped at zero, so
    the reactor never sees a negative one however long the caller took.
    """
    return clock.callLater(max(0.0, when - clock.seconds()), f, *args)


class TimerWheel:
    """
    The timers of one frontend's connections, sharing one pending reactor
    call instead of one each (a C{DelayedCall} is about 450 bytes, and
    moving one earlier costs the reactor a linear search of its heap).

    Time is cut into ticks of C{tick} seconds.  A timer due at a moment is
    filed under the first tick at or after it, and fires when the clock
    reaches that tick: never early, at most C{tick} seconds late.  Filing,
    moving and removing a timer are a few dict operations; only a tick with
    no timer filed yet costs a heap push.  The reactor holds one call, for
    the earliest tick with timers, and none once the wheel is empty.
    """

    __slots__ = (
        "_buckets",
        "_call",
        "_next",
        "_running",
        "_size",
        "_ticks",
        "clock",
        "tick",
    )

    def __init__(self, clock: IReactorTime, tick: float = TICK) -> None:
        self.clock = clock
        self.tick = tick
        self._buckets: dict[int, _Bucket] = {}
        self._ticks: list[int] = []  # a heap of the keys of _buckets
        self._call: IDelayedCall | None = None
        self._next = 0  # the tick _call is for
        self._running = False
        self._size = 0  # timers filed

    def __len__(self) -> int:
        return self._size

    def tick_of(self, when: float) -> int:
        """
        :returns: the first tick at or after clock time C{when}.
        """
        return ceil(when / self.tick)

    def file(self, timer: _Timer, tick: int) -> None:
        """
        Fire C{timer} (filed nowhere) at C{tick}.
        """
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = _Bucket(tick)
            heappush(self._ticks, tick)
            if not self._running and (self._call is None or tick < self._next):
                self._schedule(tick)
        bucket[timer] = None
        timer._bucket = bucket
        self._size += 1

    def unfile(self, timer: _Timer) -> None:
        """
        Forget C{timer} (filed here).
        """
        bucket = timer._bucket
        assert bucket is not None
        del bucket[timer]
        timer._bucket = None
        self._size -= 1
        if not self._size and not self._running:
            self._stop()

    def _stop(self) -> None:
        """
        No timer is left: nor is any call, or tick.
        """
        self._buckets.clear()
        self._ticks.clear()
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _schedule(self, tick: int) -> None:
        if self._call is not None:
            self._call.cancel()  # an earlier tick: replaced, never reset
        self._next = tick
        self._call = call_at(self.clock, tick * self.tick, self._run)

    def _run(self) -> None:
        """
        Fire, or file again, every timer filed at or before this tick.
        """
        self._call = None
        self._running = True
        now, ticks, buckets = self._next, self._ticks, self._buckets
        try:
            while ticks and ticks[0] <= now:
                tick = heappop(ticks)
                bucket = buckets[tick]
                while bucket:  # a callback may unfile or file timers
                    timer = bucket.popitem()[0]
                    timer._bucket = None
                    self._size -= 1
                    try:
                        timer._expire(now)
                    except Exception:
                        _log.failure("a timer's callback failed")
                del buckets[tick]
        finally:
            self._running = False
        if self._size:
            self._schedule(ticks[0])
        else:
            self._stop()


class _Bucket(dict["_Timer", None]):
    """
    The timers filed under one tick, in the order they were filed.  Each
    refers to its bucket (shared), not to its tick (an int of its own).
    """

    __slots__ = ("tick",)

    def __init__(self, tick: int) -> None:
        super().__init__()
        self.tick = tick


class _Timer:
    """
    What a L{TimerWheel} files: something due at a moment it can tell.
    """

    __slots__ = ("_bucket", "_wheel")

    def __init__(self, wheel: TimerWheel) -> None:
        self._wheel = wheel
        self._bucket: _Bucket | None = None  # where it is filed, if it is

    def cancel(self) -> None:
        """
        Stop timing: it will not fire (unless started again).
        """
        if self._bucket is not None:
            self._wheel.unfile(self)

    def _expire(self, now: int) -> None:
        """
        Its tick came: fire if it is due by tick C{now}, else file it
        again for the tick it is due at by now.
        """
        wheel = self._wheel
        due = wheel.tick_of(self._moment())
        if due > now:
            wheel.file(self, due)
        else:
            self._fire()

    def _moment(self) -> float:
        """
        :returns: when it is due, as things stand now.
        """
        raise NotImplementedError

    def _fire(self) -> None:
        """
        It is due: call what was asked.
        """
        raise NotImplementedError


class IdleTimer(_Timer):
    """
    Calls C{on_idle} once nothing has happened for C{timeout} seconds (up
    to a tick of its wheel more).

    L{touch} only records the time: when its tick comes, a timer touched
    since is filed again for the rest of its wait, so activity costs no
    timer operations at all.  Slotted: every client connection has one.
    """

    __slots__ = ("_clock", "_last", "_on_idle", "timeout")

    def __init__(
        self, wheel: TimerWheel, timeout: float, on_idle: Callable[[], object]
    ) -> None:
        super().__init__(wheel)
        self._clock = wheel.clock
        self.timeout = timeout
        self._on_idle = on_idle
        self._last = self._clock.seconds()
        wheel.file(self, wheel.tick_of(self._last + timeout))

    def touch(self) -> None:
        """
        Something happened: the idle time starts again.
        """
        self._last = self._clock.seconds()

    def restart(self, timeout: float, on_idle: Callable[[], object]) -> None:
        """
        Wait for a new kind of inactivity, starting now.

        Filed for a later tick, it is moved; for an earlier one, it stays
        where it is and is filed again when that tick comes.
        """
        self.timeout, self._on_idle = timeout, on_idle
        self._last = now = self._clock.seconds()
        wheel = self._wheel
        due = wheel.tick_of(now + timeout)
        filed = self._bucket
        if filed is None:
            wheel.file(self, due)
        elif filed.tick > due:
            wheel.unfile(self)
            wheel.file(self, due)

    def _moment(self) -> float:
        return self._last + self.timeout

    def _fire(self) -> None:
        self._on_idle()


class Deadline(_Timer):
    """
    Calls C{on_late} once the clock passes C{due()} (within a tick of its
    wheel), a moment that may move later as things happen (a request
    body's deadline grows with the bytes received).

    Moving it costs no timer operation: when its tick comes before the
    moment C{due()} names by then, it is filed again for that moment.
    """

    __slots__ = ("_due", "_on_late")

    def __init__(
        self,
        wheel: TimerWheel,
        due: Callable[[], float],
        on_late: Callable[[], object],
    ) -> None:
        super().__init__(wheel)
        self._due = due
        self._on_late = on_late
        wheel.file(self, wheel.tick_of(due()))

    def _moment(self) -> float:
        return self._due()

    def _fire(self) -> None:
        self._on_late()
