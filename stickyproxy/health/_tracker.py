"""
The rise/fall thresholds of one backend's health, as a plain state machine:
probe results and passive signals in, the state they lead to out.

No reactor, no timers, no pool: L{HealthMonitor
<stickyproxy.health._monitor.HealthMonitor>} keeps the schedule and the
timers, and applies what this decides to the pool.  The backend's current
L{Health} is an input, not kept here: the pool holds the one copy.
"""

from __future__ import annotations

import attrs

from stickyproxy.config._settings import HealthSettings
from stickyproxy.model import Health


@attrs.frozen
class Verdict:
    """
    The state a backend's health moves to, and why.

    :ivar reason: the signal that decided, with its count (C{"probe
        failed: ... (2/3)"}).
    :ivar rose: it came up by counting (or at the end of a passive
        cooldown), rather than by its first probe after C{init_state}: a
        slow start applies.
    :ivar passive: passive checks alone took it down (or saw it fail again
        since): no probe confirms it (see C{Pool.set_health}).
    """

    health: Health
    reason: str
    rose: bool = False
    passive: bool = False


@attrs.define
class RiseFallTracker:
    """
    Counts one backend's consecutive results against C{rise}, C{fall} and
    C{passive_fall}.

    :ivar initial: the backend waits in C{init_state}: its first good probe
        brings it up.
    :ivar passive_down: C{"connect"} or C{"status"} while the backend is
        down by passive checks alone, of connects or of HTTP answers: live
        traffic that contradicts them is enough to bring it back.
    """

    settings: HealthSettings
    initial: bool = False
    successes: int = 0
    failures: int = 0
    passive_failures: int = 0  # connect failures in a row
    status_failures: int = 0  # passive_status answers in a row
    passive_down: str | None = None

    def probed(self, health: Health, ok: bool, reason: str) -> Verdict | None:
        """
        Count one probe result.

        :param health: the backend's state now.
        :returns: the state it moves to, or C{None} when it stays.
        """
        settings = self.settings
        if ok:
            self.failures = 0
            if health is Health.GOING_DOWN:
                return Verdict(Health.UP, reason)
            if health is Health.UP:
                return None
            self.successes += 1
            counted = f"{reason} ({self.successes}/{settings.rise})"
            if self.successes >= settings.rise or self.initial:
                return self.came_up(counted)
            self.passive_down = None
            return Verdict(Health.GOING_UP, counted)
        self.successes = 0
        if health is Health.GOING_UP:
            return self._down(reason)
        if health is Health.DOWN:
            # A probe confirms what passive checks said: a verdict now.
            return self._down(reason) if self.passive_down else None
        self.failures += 1
        counted = f"{reason} ({self.failures}/{settings.fall})"
        if self.failures >= settings.fall:
            return self._down(counted)
        return Verdict(Health.GOING_DOWN, counted)

    def connect_failed(self, health: Health, reason: str) -> Verdict | None:
        """
        Passive signal: a connect to the backend failed.

        :returns: C{DOWN} at C{passive_fall} in a row, else C{None}.
        """
        self.passive_failures += 1
        return self._passive(
            health, f"connect failed: {reason}", self.passive_failures, "connect"
        )

    def connect_succeeded(self) -> Verdict | None:
        """
        Passive signal: a connect to the backend worked.

        :returns: C{UP} if failed connects alone had taken it down.
        """
        self.passive_failures = 0
        if self.passive_down == "connect":
            return self.came_up("a connection to it succeeded")
        return None

    def answered(self, health: Health, status: int) -> Verdict | None:
        """
        Passive signal: the backend answered a request with C{status}.
        Counted apart from connect failures: a request that gets a 500
        connected fine, and must not reset the count of 500s.

        :returns: C{DOWN} at C{passive_fall} answers in C{passive_status}
            in a row; C{UP} for any other answer from a backend passive
            checks alone had taken down; else C{None}.
        """
        statuses = self.settings.passive_status
        if statuses is None or status not in statuses:
            self.status_failures = 0
            if self.passive_down is not None:
                return self.came_up(f"answered HTTP {status}")
            return None
        self.status_failures += 1
        return self._passive(
            health, f"answered HTTP {status}", self.status_failures, "status"
        )

    def came_up(self, reason: str) -> Verdict:
        """
        The backend is up: its successes reached C{rise}, or a passive
        cooldown is over.  Every count starts again.
        """
        self.successes = self.failures = 0
        self.passive_failures = self.status_failures = 0
        self.passive_down = None
        rose, self.initial = not self.initial, False
        return Verdict(Health.UP, reason, rose)

    def _passive(
        self, health: Health, reason: str, count: int, kind: str
    ) -> Verdict | None:
        if not health.serving:
            if self.passive_down is None:
                return None
            # Tried anyway (every backend down: passive_panic), and failed:
            # to the back of the line.
            return self._down(reason, self.passive_down)
        if count < self.settings.passive_fall:
            return None
        # As many failures as a probe would have needed: it takes rise
        # good probes to come back.
        self.failures = self.settings.fall
        return self._down(f"{reason} ({count} in a row)", kind)

    def _down(self, reason: str, passive: str | None = None) -> Verdict:
        self.successes = 0
        self.passive_down = passive
        return Verdict(Health.DOWN, reason, passive=passive is not None)
