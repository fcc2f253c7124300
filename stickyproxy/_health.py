"""
Health tracking: active probes on a schedule, passive signals from live
traffic, and the thresholds that turn both into a backend's state.

One L{HealthMonitor} service per pool.  It owns the state machine; the
pool only stores the resulting L{Health} and tells its observers.  All
timing goes through the injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from zope.interface import Interface, implementer

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory

from ._backends import Backend, Health, IPassiveHealth, Pool, connect_quietly
from ._proxyprotocol import HEADERS


class ProbeFailed(Exception):
    """
    A probe ran and the backend did not pass; the message says why.
    """


@attrs.frozen
class StatusRanges:
    """
    A set of HTTP statuses written as C{"200-399"} or C{"200,204,300-399"}.
    """

    ranges: tuple[tuple[int, int], ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> StatusRanges:
        """
        :raises ValueError: not a list of statuses or ranges within 100-599.
        """
        ranges = []
        for part in text.replace(" ", "").split(","):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if not 100 <= first <= last <= 599:
                raise ValueError(part)
            ranges.append((first, last))
        return cls(tuple(ranges), text)

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and any(
            low <= status <= high for low, high in self.ranges
        )


class IHealthProbe(Interface):
    """
    Checks whether one backend is alive right now.
    """

    def check(backend: Backend) -> Deferred[None]:
        """
        Probe C{backend} once.

        :returns: a Deferred that fires with C{None} when the backend
            passes, or fails (with L{ProbeFailed} or a connection error)
            when it does not.  Cancelling it abandons the probe.
        """


class _TCPCheck(Protocol):
    """
    Sends the configured bytes and waits for the expected ones.
    """

    def __init__(self, probe: TCPProbe) -> None:
        self.probe = probe
        self.received = b""
        self.done: Deferred[None] = Deferred(lambda d: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if self.probe.send_proxy is not None:
            transport.write(
                HEADERS[self.probe.send_proxy](transport.getHost(), transport.getPeer())
            )
        if self.probe.send:
            transport.write(self.probe.send)
        if self.probe.expect is None:
            self._finish(None)

    def dataReceived(self, data: bytes) -> None:
        expect = self.probe.expect
        assert expect is not None
        self.received = (self.received + data)[-(len(expect) + 65536) :]
        if expect in self.received:
            self._finish(None)

    def _finish(self, failure: Failure | None) -> None:
        if not self.done.called:
            self.done.callback(None) if failure is None else self.done.errback(failure)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(
                ProbeFailed(f"closed before {self.probe.expect!r} arrived")
            )


@implementer(IHealthProbe)
@attrs.frozen
class TCPProbe:
    """
    C{type = "tcp"}: the backend accepts a connection (and, with C{expect},
    answers C{send} with the expected bytes).
    """

    send: bytes = b""
    expect: bytes | None = None
    send_proxy: str | None = None

    def check(self, backend: Backend) -> Deferred[None]:
        check = _TCPCheck(self)
        connected = connect_quietly(backend.endpoint, check)
        connected.addCallback(lambda _: check.done)
        return connected


def probe_netloc(backend: Backend) -> str:
    """
    The host[:port] HTTP probes address a backend by: its address when it
    is C{host:port}, else its name (the endpoint factory maps either back).
    """
    host, sep, port = backend.address.rpartition(":")
    if sep and port.isdigit() and "=" not in backend.address:
        return backend.address
    return backend.name


@implementer(IAgentEndpointFactory)
@attrs.frozen
class PoolEndpoints:
    """
    Sends each probe request to its backend's own endpoint, whatever kind
    it is (TCP, UNIX socket, TLS), by the URL's host.
    """

    pool: Pool

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        netloc = uri.netloc.decode("ascii")
        for backend in self.pool.backends:
            if probe_netloc(backend) == netloc:
                return backend.endpoint
        raise ValueError(f"no backend at {netloc}")


@implementer(IHealthProbe)
@attrs.frozen
class HTTPProbe:
    """
    C{type = "http"}: a request through treq whose status (and optionally
    body) must match.  The whole body is read, so the probe's timeout
    covers a backend that answers its headers and then stalls.
    """

    client: Any  # a treq HTTPClient (StubTreq in tests)
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    expect_status: StatusRanges = StatusRanges.parse("200-399")
    expect_body: bytes | None = None

    def check(self, backend: Backend) -> Deferred[None]:
        return Deferred.fromCoroutine(self._check(backend))

    async def _check(self, backend: Backend) -> None:
        netloc = probe_netloc(backend)
        response = await self.client.request(
            self.method,
            f"http://{netloc}{self.path}",
            headers={"Host": self.host or netloc, "User-Agent": "stickyproxy-probe"},
            allow_redirects=False,
        )
        body = await response.content()
        if response.code not in self.expect_status:
            raise ProbeFailed(
                f"HTTP {response.code}, expected {self.expect_status.text}"
            )
        if self.expect_body is not None and self.expect_body not in body:
            raise ProbeFailed(f"body does not contain {self.expect_body!r}")


@attrs.frozen
class HealthSettings:
    """
    The timing and thresholds of one pool's health tracking (see the
    configuration reference for each key).
    """

    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    jitter: float = 0.1
    fast_interval: float | None = None
    down_interval: float | None = None
    passive_fall: int = 3
    passive_cooldown: float = 10.0
    passive_status: StatusRanges | None = None
    init_state: Health = Health.UP
    slow_start: float = 0.0


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
    """

    log = Logger()

    def __init__(
        self,
        pool: Pool,
        clock: IReactorTime,
        probe: IHealthProbe | None = None,
        settings: HealthSettings | None = None,
        random_source: Callable[[float, float], float] | None = None,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.probe = probe
        self.settings = settings if settings is not None else HealthSettings()
        self._uniform = random_source or random.Random().uniform
        self._tracks = {backend.name: _Track() for backend in pool.backends}
        pool.passive = self
        if self.settings.init_state is not Health.UP:
            for backend in pool.backends:
                self._tracks[backend.name].initial = True
                pool.set_health(
                    backend, self.settings.init_state, "init_state: waiting for a probe"
                )

    # The schedule

    def startService(self) -> None:
        super().startService()
        if self.probe is None:
            return
        for backend in self.pool.backends:
            # Spread the first probes over one interval.
            first = self._uniform(0.0, self.settings.interval)
            self._schedule(backend, first)

    def stopService(self) -> None:
        super().stopService()
        for track in self._tracks.values():
            for call in (track.next_probe, track.cooldown, track.ramp):
                if call is not None and call.active():
                    call.cancel()
            track.next_probe = track.cooldown = track.ramp = None
            if track.probing is not None:
                track.probing.cancel()

    def _schedule(self, backend: Backend, delay: float) -> None:
        track = self._tracks[backend.name]
        track.next_probe = self.clock.callLater(delay, self._run_probe, backend)

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
        track = self._tracks[backend.name]
        track.next_probe = None
        assert self.probe is not None
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
            lambda _: self.record(backend, True, "probe passed"),
            lambda failure: self._probe_failed(backend, failure, bool(timed_out)),
        )
        probing.addErrback(
            lambda f: self.log.failure(
                "health tracking of {backend}", f, backend=backend.name
            )
        )
        probing.addBoth(lambda _: self._probe_done(backend))

    def _probe_failed(
        self, backend: Backend, failure: Failure, timed_out: bool
    ) -> None:
        if not self.running:
            return  # cancelled because the monitor stopped: not the backend's fault
        if timed_out:
            reason = f"probe timed out after {self.settings.timeout:g}s"
        else:
            reason = f"probe failed: {failure.getErrorMessage()}"
        self.record(backend, False, reason)

    def _probe_done(self, backend: Backend) -> None:
        track = self._tracks[backend.name]
        track.probing = None
        if self.running:
            self._schedule(backend, self.next_delay(backend))

    # The state machine

    def record(self, backend: Backend, ok: bool, reason: str) -> None:
        """
        Count one probe result and move the backend's state if a threshold
        is reached.
        """
        settings, track, health = (
            self.settings,
            self._tracks[backend.name],
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
            track = self._tracks[backend.name]
            track.successes = 0
            self._stop_ramp(backend)
        self.pool.set_health(backend, health, reason)

    def _came_up(self, backend: Backend, reason: str) -> None:
        track = self._tracks[backend.name]
        track.successes = track.failures = 0
        track.passive_failures = track.status_failures = 0
        if self.settings.slow_start > 0 and not track.initial:
            track.ramp_started = self.clock.seconds()
            self._ramp(backend)
        track.initial = False
        self.pool.set_health(backend, Health.UP, reason)

    # Slow start

    def _ramp(self, backend: Backend) -> None:
        track = self._tracks[backend.name]
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
        track = self._tracks[backend.name]
        if track.ramp is not None and track.ramp.active():
            track.ramp.cancel()
        track.ramp = None
        self.pool.set_ramp(backend, 1.0)

    # Passive signals (IPassiveHealth)

    def connect_failed(self, backend: Backend, reason: str) -> None:
        self._passive_failure(backend, f"connect failed: {reason}")

    def connect_succeeded(self, backend: Backend) -> None:
        self._tracks[backend.name].passive_failures = 0

    def response_status(self, backend: Backend, status: int) -> None:
        # Counted apart from connect failures: a request that gets a 500
        # connected fine, and must not reset the count of 500s.
        track = self._tracks[backend.name]
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
        track = self._tracks[backend.name]
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
        self._tracks[backend.name].cooldown = None
        self._came_up(
            backend, f"passive_cooldown of {self.settings.passive_cooldown:g}s over"
        )


def treq_client(reactor: Any, pool: Pool) -> Any:
    """
    The treq client HTTP probes use: its own non-persistent connection pool
    (every probe opens a fresh connection, as a client would), reaching each
    backend through its own endpoint.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False  # a "Starting factory" line per probe is noise

    connections = HTTPConnectionPool(reactor, persistent=False)
    connections._factory = QuietFactory
    agent = Agent.usingEndpointFactory(reactor, PoolEndpoints(pool), pool=connections)
    return HTTPClient(agent)
