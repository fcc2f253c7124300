"""
Health tracking: active probes on a schedule, passive signals from live
traffic, and the thresholds that turn both into a backend's state.

One L{HealthMonitor} service per pool.  It runs the probes and timers and
feeds their results to each backend's L{RiseFallTracker} (the thresholds,
with no reactor); the pool stores the resulting L{Health} and tells its
observers.  It
follows the pool's set of backends: one added is tracked (and probed), one
removed is forgotten.  All timing goes through the injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection

import attrs
from zope.interface import implementer

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.config._settings import HealthSettings
from stickyproxy.core._events import EventStream
from stickyproxy.core._pool import Pool
from stickyproxy.health._tracker import RiseFallTracker, Verdict
from stickyproxy.interfaces import IHealthProbe, IPassiveHealth
from stickyproxy.model import Backend, Health, ProbeRan, StateChange


@attrs.frozen
class ProbeResult:
    """
    The last probe of a backend.

    :ivar time: when it finished, in the clock's seconds.
    """

    ok: bool
    reason: str
    time: float


@attrs.frozen
class HealthStatus:
    """
    A backend's health as an operator reads it.

    :ivar detail: its L{Health}, with the count while thresholds count
        (C{"going down 1/3"}, C{"going up 2/2"}).
    :ivar probe: its last probe, or C{None} before the first (or without
        a probe).
    """

    detail: str
    probe: ProbeResult | None


@attrs.define
class _Track:
    """
    What the monitor remembers of one backend: its thresholds, and its
    timers.
    """

    tracker: RiseFallTracker
    next_probe: IDelayedCall | None = None
    probing: Deferred[None] | None = None
    cooldown: IDelayedCall | None = None
    ramp: IDelayedCall | None = None
    ramp_started: float = 0.0
    last_probe: ProbeResult | None = None


@implementer(IPassiveHealth)
class HealthMonitor(Service):
    """
    Keeps one pool's backend states: runs the probe (if any) on each
    backend on its own jittered schedule, never two at once on a backend,
    and counts passive signals from live traffic.

    :ivar probe: the active probe, or C{None} for passive checks only.
    :ivar events: where each probe that ran is published (nowhere by
        default).
    """

    log = Logger()

    def __init__(
        self,
        pool: Pool,
        clock: IReactorTime,
        probe: IHealthProbe | None = None,
        settings: HealthSettings | None = None,
        random_source: Callable[[float, float], float] | None = None,
        events: EventStream | None = None,
        adopt: Collection[Backend] = (),
    ) -> None:
        """
        :param adopt: backends of the pool that keep the health they have
            (a reload replaced the pool's monitor) rather than start in
            C{init_state}.
        """
        self.pool = pool
        self.events = events if events is not None else EventStream()
        self.clock = clock
        self.probe = probe
        self.settings = settings if settings is not None else HealthSettings()
        self._uniform = random_source or random.Random().uniform
        self._tracks: dict[Backend, _Track] = {}
        for backend in pool.backends:
            self._track(backend, backend in adopt)
        pool.passive = self
        pool.observe(self._backend_changed)

    def detach(self) -> None:
        """
        Stop following the pool: a reload replaced this monitor.
        """
        self.pool.unobserve(self._backend_changed)
        if self.pool.passive is self:
            self.pool.passive = None

    def _track(self, backend: Backend, adopt: bool = False) -> None:
        """
        Start tracking a backend, in C{init_state} unless C{adopt}ed as it is.
        """
        waiting = not adopt and self.settings.init_state is not Health.UP
        self._tracks[backend] = _Track(RiseFallTracker(self.settings, waiting))
        if waiting:
            self.pool.set_health(
                backend, self.settings.init_state, "init_state: waiting for a probe"
            )

    def _backend_changed(self, change: StateChange) -> None:
        backend = change.backend
        if change.kind == "added":
            self._track(backend)
            if self.running:
                self._first_probe(backend)
        elif change.kind == "removed":
            track = self._tracks.pop(backend, None)
            if track is not None:
                self._stop(track)

    # The schedule

    def startService(self) -> None:
        super().startService()
        if self.probe is None:
            return
        for backend in self.pool.backends:
            self._first_probe(backend)

    def _first_probe(self, backend: Backend) -> None:
        if self.probe is not None:
            # Spread the first probes over one interval.
            self._schedule(backend, self._uniform(0.0, self.settings.interval))

    def stopService(self) -> None:
        super().stopService()
        for track in self._tracks.values():
            self._stop(track)

    def _stop(self, track: _Track) -> None:
        """
        Cancel a track's timers and its probe in flight.
        """
        for call in (track.next_probe, track.cooldown, track.ramp):
            if call is not None and call.active():
                call.cancel()
        track.next_probe = track.cooldown = track.ramp = None
        if track.probing is not None:
            track.probing.cancel()

    def _schedule(self, backend: Backend, delay: float) -> None:
        track = self._tracks[backend]
        # Clamped: a random source is injected, and may stray below zero.
        track.next_probe = self.clock.callLater(
            max(0.0, delay), self._run_probe, backend
        )

    def next_delay(self, backend: Backend) -> float:
        """
        When to probe C{backend} next: C{interval} while it is steady,
        C{fast_interval} while thresholds count, C{down_interval} while it
        is down; each with up to C{jitter} of it, either way.
        """
        settings = self.settings
        health = backend.health
        if health is Health.UP:
            base = settings.interval
        elif health is Health.DOWN:
            base = settings.down_interval or settings.interval
        else:
            base = settings.fast_interval or settings.interval
        spread = settings.jitter * base
        return base + self._uniform(-spread, spread)

    def _run_probe(self, backend: Backend) -> None:
        track = self._tracks[backend]
        track.next_probe = None
        assert self.probe is not None
        started = self.clock.seconds()
        probing = maybeDeferred(self.probe.check, backend)
        # Our own timer, not addTimeout: a probe cancelled half-way reports
        # whatever its client makes of that (treq: ResponseNeverReceived).
        timed_out: list[bool] = []

        def time_out() -> None:
            timed_out.append(True)
            probing.cancel()

        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        timer = self.clock.callLater(self.settings.timeout, time_out)
        track.probing = probing
        probing.addBoth(stop_timer)
        probing.addCallbacks(
            lambda _: self._probed(backend, True, "probe passed", started),
            lambda failure: self._probe_failed(
                backend, failure, bool(timed_out), started
            ),
        )
        probing.addErrback(
            lambda f: self.log.failure(
                "health tracking of {backend}", f, backend=backend.name
            )
        )
        probing.addBoth(lambda _: self._probe_done(backend, track))

    def _probe_failed(
        self, backend: Backend, failure: Failure, timed_out: bool, started: float
    ) -> None:
        if not self.running or backend not in self._tracks:
            # Cancelled because the monitor stopped or the backend left the
            # pool: not the backend's fault.
            return
        if timed_out:
            reason = f"probe timed out after {self.settings.timeout:g}s"
        else:
            reason = f"probe failed: {failure.getErrorMessage()}"
        self._probed(backend, False, reason, started)

    def _probed(self, backend: Backend, ok: bool, reason: str, started: float) -> None:
        """
        A probe that started at C{started} ran: keep it, publish it, then
        count it.
        """
        now = self.clock.seconds()
        self._tracks[backend].last_probe = ProbeResult(ok, reason, now)
        if self.events.active:
            latency = now - started
            self.events.probe_ran(
                ProbeRan(self.pool.name, backend.name, ok, reason, latency)
            )
        self.record(backend, ok, reason)

    def _probe_done(self, backend: Backend, track: _Track) -> None:
        track.probing = None
        if self.running and self._tracks.get(backend) is track:
            self._schedule(backend, self.next_delay(backend))

    def status(self, backend: Backend) -> HealthStatus:
        """
        :returns: C{backend}'s health in detail (for one the monitor does
            not track, its state alone).
        """
        health = backend.health
        track = self._tracks.get(backend)
        if track is None:
            return HealthStatus(health.value, None)
        tracker, settings = track.tracker, self.settings
        detail = health.value
        if health is Health.GOING_DOWN:
            detail = f"{detail} {tracker.failures}/{settings.fall}"
        elif health is Health.GOING_UP:
            detail = f"{detail} {tracker.successes}/{settings.rise}"
        return HealthStatus(detail, track.last_probe)

    # The state machine

    def record(self, backend: Backend, ok: bool, reason: str) -> None:
        """
        Count one probe result and move the backend's state if a threshold
        is reached.
        """
        tracker = self._tracks[backend].tracker
        self._apply(backend, tracker.probed(backend.health, ok, reason))

    def _apply(self, backend: Backend, verdict: Verdict | None) -> None:
        """
        Give the pool the state the tracker reached: down stops a slow
        start, coming up (not from C{init_state}) begins one.
        """
        if verdict is None:
            return
        track = self._tracks[backend]
        if verdict.health is Health.DOWN:
            self._stop_ramp(backend)
        else:
            if track.cooldown is not None and track.cooldown.active():
                track.cooldown.cancel()  # back before its cooldown was over
            track.cooldown = None
            if verdict.rose and self.settings.slow_start > 0:
                track.ramp_started = self.clock.seconds()
                self._ramp(backend)
        self.pool.set_health(backend, verdict.health, verdict.reason, verdict.passive)

    # Slow start

    def _ramp(self, backend: Backend) -> None:
        track = self._tracks[backend]
        elapsed = self.clock.seconds() - track.ramp_started
        share = elapsed / self.settings.slow_start
        if share >= 1.0:
            track.ramp = None
            self.pool.set_ramp(backend, 1.0)
            return
        self.pool.set_ramp(backend, max(share, 0.01))
        step = min(1.0, self.settings.slow_start / 20)
        track.ramp = self.clock.callLater(step, self._ramp, backend)

    def _stop_ramp(self, backend: Backend) -> None:
        track = self._tracks[backend]
        if track.ramp is not None and track.ramp.active():
            track.ramp.cancel()
        track.ramp = None
        self.pool.set_ramp(backend, 1.0)

    # Passive signals (IPassiveHealth)

    def connect_failed(self, backend: Backend, reason: str) -> None:
        track = self._tracks.get(backend)
        if track is not None:  # else a request still open to a removed backend
            self._passive_failure(
                backend, track, track.tracker.connect_failed(backend.health, reason)
            )

    # These two run for every request: they call no further unless the
    # tracker has a verdict.

    def connect_succeeded(self, backend: Backend) -> None:
        track = self._tracks.get(backend)
        if track is not None:
            verdict = track.tracker.connect_succeeded()
            if verdict is not None:
                self._apply(backend, verdict)

    def response_status(self, backend: Backend, status: int) -> None:
        track = self._tracks.get(backend)
        if track is not None:
            verdict = track.tracker.answered(backend.health, status)
            if verdict is not None:
                self._passive_failure(backend, track, verdict)

    def _passive_failure(
        self, backend: Backend, track: _Track, verdict: Verdict | None
    ) -> None:
        if verdict is None:
            return
        self._apply(backend, verdict)
        if (
            verdict.health is Health.DOWN
            and self._tracks.get(backend) is track  # an observer may remove it
            and track.cooldown is None
            and self.probe is None
            and self.running
        ):
            # No probe will bring it back: a cooldown does.
            track.cooldown = self.clock.callLater(
                self.settings.passive_cooldown, self._cooled_down, backend
            )

    def _cooled_down(self, backend: Backend) -> None:
        track = self._tracks[backend]
        track.cooldown = None
        reason = f"passive_cooldown of {self.settings.passive_cooldown:g}s over"
        self._apply(backend, track.tracker.came_up(reason))
