"""
An inactivity timer cheap enough for per-chunk use.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class IdleTimer:
    """
    Calls C{on_idle} once nothing has happened for C{timeout} seconds.

    L{touch} only records the time; the single pending call re-arms itself
    for the remaining time when it fires early, so activity costs no timer
    operations at all.
    """

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
        """
        self.timeout, self._on_idle = timeout, on_idle
        self._last = self._clock.seconds()
        if self._call is None:
            self._call = self._clock.callLater(timeout, self._check)
        elif self._call.getTime() > self._last + timeout:
            self._call.reset(timeout)

    def cancel(self) -> None:
        """
        Stop timing.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        idle_for = self._clock.seconds() - self._last
        if idle_for < self.timeout:
            self._call = self._clock.callLater(self.timeout - idle_for, self._check)
            return
        self._call = None
        self._on_idle()
