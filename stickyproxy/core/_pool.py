"""
Backends and pools: who can serve, and in what state.

A backend's operational state (up, down, and the two phases between while
thresholds count) comes from health tracking; its administrative state
(ready, drain, maint) from the operator, as in HAProxy.  The pool turns the
two into the two lists the router needs: backends that may keep their
bound clients, and backends that may take new ones.  Every change is an
event that observers (the L4 frontends, an admin view) receive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)
from twisted.logger import Logger

from stickyproxy.core._timers import call_at
from stickyproxy.interfaces import IBackendPool, IBalancer, IPassiveHealth
from stickyproxy.model import AdminState, Backend, Health, StateChange

StateObserver = Callable[[StateChange], None]
SessionSource = Callable[[str], int]


@implementer(IBackendPool)
@attrs.define(eq=False)
class Pool:
    """
    A named set of backends with the settings shared by their connections,
    and the one place their states change.

    :ivar connect_timeout: seconds before a connect attempt is abandoned.
    :ivar retries: how many other backends are tried after a failed connect.
    :ivar send_proxy: C{None}, C{"v1"} or C{"v2"}: the PROXY protocol
        header sent to backends.
    :ivar fail_open: when no backend is up, use them all regardless of
        health (Envoy's panic mode) rather than refusing clients.
    :ivar on_down: C{"keep"} or C{"close"}: what happens to a backend's
        open L4 connections when it goes down.
    :ivar keepalive: how many idle HTTP connections to keep per backend.
    :ivar keepalive_timeout: seconds an idle HTTP connection is kept.
    :ivar clock: times drains with a deadline.
    :ivar passive: receives passive health signals (set by the health
        monitor); without one they are only logged.
    """

    name: str
    backends: tuple[Backend, ...]
    balancer: IBalancer
    connect_timeout: float = 3.0
    retries: int = 2
    send_proxy: str | None = None
    fail_open: bool = False
    on_down: str = "keep"
    keepalive: int = 32
    keepalive_timeout: float = 30.0
    clock: IReactorTime | None = None
    passive: IPassiveHealth | None = None
    _by_name: dict[str, Backend] = attrs.field(init=False)
    _observers: list[StateObserver] = attrs.field(init=False, factory=list)
    _session_sources: list[SessionSource] = attrs.field(init=False, factory=list)
    _serving: list[Backend] | None = attrs.field(init=False, default=None)
    _accepting: list[Backend] | None = attrs.field(init=False, default=None)
    _drains: dict[str, IDelayedCall] = attrs.field(init=False, factory=dict)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._by_name = {backend.name: backend for backend in self.backends}

    def get(self, name: str) -> Backend | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> Backend:
        """
        :raises KeyError: no backend has that name (with the names it has).
        """
        backend = self._by_name.get(name)
        if backend is None:
            raise KeyError(
                f"pool {self.name} has no backend {name!r} "
                f"(it has {', '.join(self._by_name)})"
            )
        return backend

    @property
    def panic(self) -> bool:
        """
        :returns: whether C{fail_open} is in force: no backend outside
            maintenance is up, so health is ignored.
        """
        return self.fail_open and not any(
            b.healthy and b.admin_state is not AdminState.MAINT for b in self.backends
        )

    def serves_bound(self, backend: Backend) -> bool:
        return backend.admin_state is not AdminState.MAINT and (
            backend.healthy or self.panic
        )

    def serving_bound(self) -> Sequence[Backend]:
        if self._serving is None:
            self._serving = [b for b in self.backends if self.serves_bound(b)]
        return self._serving

    def accepting_new(self) -> Sequence[Backend]:
        if self._accepting is None:
            panic = self.panic
            self._accepting = [
                b
                for b in self.backends
                if b.admin_state is AdminState.READY
                and b.effective_weight > 0
                and (b.healthy or panic)
            ]
        return self._accepting

    def observe(self, observer: StateObserver) -> None:
        """
        Call C{observer(change)} with a L{StateChange} after each change of
        a backend's state.
        """
        self._observers.append(observer)

    def add_session_source(self, source: SessionSource) -> None:
        """
        Count sessions held outside open connections, e.g. live stick-table
        entries: C{source(backend_name)} returns how many.
        """
        self._session_sources.append(source)

    def sessions(self, name: str) -> int:
        """
        How many sticky sessions a backend holds: its open connections, or
        the live bindings to it some strategy keeps, whichever is more.
        """
        backend = self[name]
        return max(
            [backend.active] + [source(name) for source in self._session_sources]
        )

    def set_admin_state(
        self, name: str, state: AdminState, reason: str = "operator"
    ) -> None:
        """
        Set a backend's administrative state (cancelling a pending drain).

        :raises KeyError: no backend has that name.
        """
        backend = self[name]
        self._cancel_drain(name)
        if backend.admin_state is not state:
            old, backend.admin_state = backend.admin_state, state
            self._changed(backend, "admin", old.value, state.value, reason)

    def drain(self, name: str, deadline: float | None = None) -> None:
        """
        Let a backend keep its sticky clients but take no new ones.

        :param deadline: if given, seconds after which the backend is put in
            maintenance; it goes there sooner if its sessions reach zero.
            Needs the pool's C{clock}.
        :raises KeyError: no backend has that name.
        """
        self.set_admin_state(name, AdminState.DRAIN, "operator: drain")
        if deadline is not None:
            assert self.clock is not None, "drain with a deadline needs a clock"
            end = self.clock.seconds() + deadline
            self._check_drain(name, end)

    def _check_drain(self, name: str, end: float) -> None:
        assert self.clock is not None
        self._drains.pop(name, None)
        sessions = self.sessions(name)
        now = self.clock.seconds()
        if sessions == 0 or now >= end:
            reason = (
                "drained: no sessions left"
                if sessions == 0
                else (f"drain deadline passed with {sessions} sessions")
            )
            self.set_admin_state(name, AdminState.MAINT, reason)
            return
        self._drains[name] = call_at(
            self.clock, min(now + 1.0, end), self._check_drain, name, end
        )

    def _cancel_drain(self, name: str) -> None:
        pending = self._drains.pop(name, None)
        if pending is not None and pending.active():
            pending.cancel()

    def set_health(self, backend: Backend, health: Health, reason: str) -> None:
        """
        Record the operational state health tracking reached.
        """
        if backend.health is not health:
            old, backend.health = backend.health, health
            self._changed(backend, "health", old.value, health.value, reason)

    def set_ramp(self, backend: Backend, ramp: float) -> None:
        """
        Set the share of its weight a slowly starting backend gets.
        """
        if backend.ramp != ramp:
            backend.ramp = ramp
            self._serving = self._accepting = None

    def _changed(
        self, backend: Backend, kind: str, old: str, new: str, reason: str
    ) -> None:
        self._serving = self._accepting = None
        change = StateChange(self.name, backend, kind, old, new, reason)
        # Losing a backend is worth a warning; everything else is news.
        emit = self.log.warn if new == Health.DOWN.value else self.log.info
        emit(
            "backend {pool}/{backend} {kind} state: {old} -> {new} ({reason})",
            pool=self.name,
            backend=backend.name,
            kind=kind,
            old=old,
            new=new,
            reason=reason,
        )
        for observer in list(self._observers):
            observer(change)

    def report_connect_failure(self, backend: Backend, reason: str) -> None:
        """
        Passive health signal: a connect to C{backend} failed.
        """
        if self.passive is not None:
            self.passive.connect_failed(backend, reason)
        else:
            self.log.warn(
                "connect to {pool}/{backend} failed: {reason}",
                pool=self.name,
                backend=backend.name,
                reason=reason,
            )

    def report_connect_success(self, backend: Backend) -> None:
        """
        Passive health signal: a connect to C{backend} worked.
        """
        if self.passive is not None:
            self.passive.connect_succeeded(backend)

    def report_status(self, backend: Backend, status: int) -> None:
        """
        Passive health signal: C{backend} answered an HTTP request.
        """
        if self.passive is not None:
            self.passive.response_status(backend, status)

    def stop(self) -> None:
        """
        Cancel pending drain deadlines (when the proxy stops).
        """
        for name in list(self._drains):
            self._cancel_drain(name)
