"""
Health tracking: active probes on a schedule, passive signals from live
traffic, and the thresholds that turn both into a backend's state.

One L{HealthMonitor} service per pool.  It owns the state machine; the
pool only stores the resulting L{Health} and tells its observers.  It
follows the pool's set of backends: one added is tracked (and probed), one
removed is forgotten.  All timing goes through the injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable

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
from stickyproxy.interfaces import IHealthProbe, IPassiveHealth
from stickyproxy.model import Backend, Health, ProbeRan, StateChange


@attrs.define
class _Track:
    """
    What the monitor remembers of one backend.
    """

    successes: int = 0
    failures: int = 0
    passive_failures: int = 0  # connect failures in a row
    status_failures: int = 0  # passive_status answers in a row
    next_probe: IDelayedCall | None = None
    probing: Deferred[None] | None = None
    cooldown: IDelayedCall | None = None
    ramp: IDelayedCall | None = None
    ramp_started: float = 0.0
    initial: bool = False  # down by init_state: the first good probe is enough


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
    ) -> None:
        self.pool = pool
        self.events = events if events is not None else EventStream()
        self.clock = clock
        self.probe = probe
        self.settings = settings if settings is not None else HealthSettings()
        self._uniform = random_source or random.Random().uniform
        self._tracks: dict[Backend, _Track] = {}
        for backend in pool.backends:
            self._track(backend)
        pool.passive = self
        pool.observe(self._backend_changed)

    def _track(self, backend: Backend) -> None:
        """
        Start tracking a backend, in C{init_state}.
        """
        track = self._tracks[backend] = _Track()
        if self.settings.init_state is not Health.UP:
            track.initial = True
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
        A probe that started at C{started} ran: publish it, then count it.
        """
        if self.events.active:
            latency = self.clock.seconds() - started
            self.events.probe_ran(
                ProbeRan(self.pool.name, backend.name, ok, reason, latency)
            )
        self.record(backend, ok, reason)

    def _probe_done(self, backend: Backend, track: _Track) -> None:
        track.probing = None
        if self.running and self._tracks.get(backend) is track:
            self._schedule(backend, self.next_delay(backend))

    # The state machine

    def record(self, backend: Backend, ok: bool, reason: str) -> None:
        """
        Count one probe result and move the backend's state if a threshold
        is reached.
        """
        settings, track, health = (
            self.settings,
            self._tracks[backend],
            backend.health,
        )
        if ok:
            track.failures = 0
            if health is Health.GOING_DOWN:
                self._set(backend, Health.UP, reason)
            elif health is not Health.UP:
                track.successes += 1
                counted = f"{reason} ({track.successes}/{settings.rise})"
                if track.successes >= settings.rise or track.initial:
                    self._came_up(backend, counted)
                else:
                    self._set(backend, Health.GOING_UP, counted)
            return
        track.successes = 0
        if health is Health.GOING_UP:
            self._set(backend, Health.DOWN, reason)
        elif health is not Health.DOWN:
            track.failures += 1
            counted = f"{reason} ({track.failures}/{settings.fall})"
            if track.failures >= settings.fall:
                self._set(backend, Health.DOWN, counted)
            else:
                self._set(backend, Health.GOING_DOWN, counted)

    def _set(self, backend: Backend, health: Health, reason: str) -> None:
        if health is Health.DOWN:
            track = self._tracks[backend]
            track.successes = 0
            self._stop_ramp(backend)
        self.pool.set_health(backend, health, reason)

    def _came_up(self, backend: Backend, reason: str) -> None:
        track = self._tracks[backend]
        track.successes = track.failures = 0
        track.passive_failures = track.status_failures = 0
        if self.settings.slow_start > 0 and not track.initial:
            track.ramp_started = self.clock.seconds()
            self._ramp(backend)
        track.initial = False
        self.pool.set_health(backend, Health.UP, reason)

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
        self._passive_failure(backend, f"connect failed: {reason}")

    def connect_succeeded(self, backend: Backend) -> None:
        track = self._tracks.get(backend)
        if track is not None:
            track.passive_failures = 0

    def response_status(self, backend: Backend, status: int) -> None:
        # Counted apart from connect failures: a request that gets a 500
        # connected fine, and must not reset the count of 500s.
        track = self._tracks.get(backend)
        if track is None:
            return  # a request still open to a removed backend
        statuses = self.settings.passive_status
        if statuses is not None and status in statuses:
            track.status_failures += 1
            self._passive_failure(
                backend, f"answered HTTP {status}", track.status_failures
            )
        else:
            track.status_failures = 0

    def _passive_failure(
        self, backend: Backend, reason: str, count: int | None = None
    ) -> None:
        track = self._tracks.get(backend)
        if track is None:
            return  # a request still open to a removed backend
        if count is None:
            track.passive_failures += 1
            count = track.passive_failures
        if count < self.settings.passive_fall or not backend.healthy:
            return
        track.failures = self.settings.fall
        self._set(backend, Health.DOWN, f"{reason} ({count} in a row)")
        if self.probe is None and self.running:
            track.cooldown = self.clock.callLater(
                self.settings.passive_cooldown, self._cooled_down, backend
            )

    def _cooled_down(self, backend: Backend) -> None:
        self._tracks[backend].cooldown = None
        self._came_up(
            backend, f"passive_cooldown of {self.settings.passive_cooldown:g}s over"
        )
