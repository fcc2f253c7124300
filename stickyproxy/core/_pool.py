"""
Backends and pools: who can serve, and in what state.

A backend's operational state (up, down, and the two phases between while
thresholds count) comes from health tracking; its administrative state
(ready, drain, maint) from the operator, as in HAProxy.  The pool turns the
two into the two lists the router needs: backends that may keep their
bound clients, and backends that may take new ones.  Every change is an
event that observers (the balancer, the frontends, the health monitor, the
event stream) receive.

The set of backends changes at runtime too: L{Pool.add}, L{Pool.remove}
and L{Pool.set_weight} announce C{"added"}, C{"removed"} and C{"weight"}
changes, which whoever keeps something per backend follows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)
from twisted.logger import Logger

from stickyproxy.core._timers import call_at
from stickyproxy.interfaces import (
    IBackendPool,
    IBalancer,
    IPassiveHealth,
    IStickTable,
)
from stickyproxy.model import AdminState, Backend, Health, StateChange

StateObserver = Callable[[StateChange], None]
SessionSource = Callable[[str], int]
#: Makes a strategy's stick table count its sessions elsewhere too (in a
#: store several proxies share): given the pool, the table's name in the
#: configuration, the table and its idle timeout, returns the table to use.
SessionCounter = Callable[["Pool", str, IStickTable, float], IStickTable]


class BackendInUse(Exception):
    """
    A backend cannot be removed yet: it still holds sessions and is not in
    maintenance.  Drain it first (L{Pool.drain}, with a deadline to bound
    the wait), or put it in maintenance to cut its sessions over.
    """


@attrs.frozen
class DrainStart:
    """
    How a drain began, for whoever shows its progress.

    :ivar time: when, in the clock's seconds.
    :ivar sessions: how many sessions the backend held then.
    """

    time: float
    sessions: int


def _deadline(end: float | None) -> str:
    return "none" if end is None else f"{end:.3f}"


#: Idle HTTP connections kept per backend by default.  They are only opened
#: as requests need them, so this bounds what a burst leaves behind, and it
#: sits well above the concurrency of a busy frontend: under the cap, a
#: request that finds every kept connection busy opens a new one, and the
#: surplus is closed as it comes back (32 made 4 to 13% of requests under 50
#: keep-alive clients pay a connect and a close).
KEEPALIVE = 256


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
    :ivar passive_panic: when passive checks alone took every backend
        down, keep trying them, least recently failed first (nginx's and
        Envoy's behaviour), rather than refusing clients until a cooldown.
    :ivar on_down: C{"keep"} or C{"close"}: what happens to a backend's
        open L4 connections when it goes down.
    :ivar keepalive: how many idle HTTP connections to keep per backend.
    :ivar keepalive_timeout: seconds an idle HTTP connection is kept.
    :ivar clock: times drains with a deadline.
    :ivar passive: receives passive health signals (set by the health
        monitor); without one they are only logged.
    :ivar counter: where the strategies' session tables are counted too
        (L{count_sessions}); C{None}: in this process only.
    """

    name: str
    backends: tuple[Backend, ...]
    balancer: IBalancer
    connect_timeout: float = 3.0
    retries: int = 2
    send_proxy: str | None = None
    fail_open: bool = False
    passive_panic: bool = True
    on_down: str = "keep"
    keepalive: int = KEEPALIVE
    keepalive_timeout: float = 30.0
    clock: IReactorTime | None = None
    passive: IPassiveHealth | None = None
    counter: SessionCounter | None = None
    _by_name: dict[str, Backend] = attrs.field(init=False)
    _observers: list[StateObserver] = attrs.field(init=False, factory=list)
    _session_sources: list[SessionSource] = attrs.field(init=False, factory=list)
    _serving: list[Backend] | None = attrs.field(init=False, default=None)
    _accepting: list[Backend] | None = attrs.field(init=False, default=None)
    # The panic kind _accepting was built under (choose reads it).
    _accepting_panic: str | None = attrs.field(init=False, default=None)
    _drains: dict[str, IDelayedCall] = attrs.field(init=False, factory=dict)
    _drain_ends: dict[str, float] = attrs.field(init=False, factory=dict)
    _drain_starts: dict[str, DrainStart] = attrs.field(init=False, factory=dict)
    _announcing: deque[StateChange] | None = attrs.field(init=False, default=None)
    # Backends down by passive marks alone, with when they last failed (a
    # count of marks, so that the least recently failed is tried first).
    _passive_marks: dict[Backend, int] = attrs.field(init=False, factory=dict)
    _marks: int = attrs.field(init=False, default=0)
    _panicking: str | None = attrs.field(init=False, default=None)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._by_name = {backend.name: backend for backend in self.backends}
        # The balancer follows the set first: the others may ask it to pick.
        self.observe(self.balancer.backend_changed)

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
        :returns: whether health is ignored, because no backend outside
            maintenance is up and C{fail_open} or C{passive_panic} says to
            try them anyway.
        """
        return self._panic_kind() is not None

    def _panic_kind(self) -> str | None:
        """
        :returns: C{"passive"} when passive checks alone took down every
            backend outside maintenance (and C{passive_panic} is on),
            C{"fail_open"} when none is up otherwise and C{fail_open} is
            on, else C{None}.
        """
        left = [b for b in self.backends if b.admin_state is not AdminState.MAINT]
        if any(b.healthy for b in left):
            return None
        marks = self._passive_marks
        if self.passive_panic and left and all(b in marks for b in left):
            return "passive"
        return "fail_open" if self.fail_open else None

    def choose(self, candidates: Sequence[Backend], key: bytes) -> Backend | None:
        """
        The backend for a new client, among C{candidates} (those of
        L{accepting_new} not tried yet): the balancer's choice, or, while
        passive checks alone have every backend down, the one that failed
        least recently (the likeliest to be back).
        """
        if self._accepting is None:
            self.accepting_new()  # and with it, the panic kind
        if candidates and self._accepting_panic == "passive":
            return min(candidates, key=lambda b: self._passive_marks.get(b, 0))
        return self.balancer.choose(candidates, key)

    def serves_bound(self, backend: Backend) -> bool:
        # A removed backend serves nobody, whoever still holds it: the list
        # holds only the pool's own backends.
        serving: Sequence[Backend] | None = self._serving
        if serving is None:
            serving = self.serving_bound()
        return backend in serving

    def serving_bound(self) -> Sequence[Backend]:
        if self._serving is None:
            panic = self.panic
            self._serving = [
                b
                for b in self.backends
                if b.admin_state is not AdminState.MAINT and (b.healthy or panic)
            ]
        return self._serving

    def accepting_new(self) -> Sequence[Backend]:
        if self._accepting is None:
            self._accepting_panic = self._panic_kind()
            panic = self._accepting_panic is not None
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

    def unobserve(self, observer: StateObserver) -> None:
        """
        Stop calling C{observer} (one that L{observe} added): what it
        belonged to was replaced by a reload.
        """
        if observer in self._observers:
            self._observers.remove(observer)

    @property
    def session_sources(self) -> tuple[SessionSource, ...]:
        """
        :returns: what L{add_session_source} added, in order.
        """
        return tuple(self._session_sources)

    def remove_session_source(self, source: SessionSource) -> None:
        """
        Stop counting C{source} (its strategy was replaced by a reload).
        """
        if source in self._session_sources:
            self._session_sources.remove(source)

    def add_session_source(self, source: SessionSource) -> None:
        """
        Count sessions held outside open connections, e.g. live stick-table
        entries: C{source(backend_name)} returns how many.
        """
        self._session_sources.append(source)

    def count_sessions(
        self, name: str, table: IStickTable, timeout: float
    ) -> IStickTable:
        """
        Count the bindings of a strategy's stick table as sessions (see
        L{add_session_source}), across proxies when the pool has a
        C{counter}.

        :param name: the table's name in the configuration (its key path).
        :param timeout: how long a binding lasts unused.
        :returns: the table the strategy is to use: C{table}, or with a
            C{counter}, C{table} wrapped so that its sessions are counted
            in the store too.
        """
        if self.counter is not None:
            table = self.counter(self, name, table, timeout)
        self.add_session_source(table.count)
        return table

    def sessions(self, name: str) -> int:
        """
        How many sticky sessions a backend holds: its open connections, or
        the live bindings to it some strategy keeps, whichever is more.
        """
        backend = self[name]
        return max(
            [backend.active] + [source(name) for source in self._session_sources]
        )

    # Changes to the set of backends

    def add(self, backend: Backend, reason: str = "operator") -> None:
        """
        Add a backend, in the state it carries (give it C{health} DOWN, or
        let the health monitor's C{init_state} do so, to have it wait for a
        probe).  It takes new clients at once when ready and up.

        :raises ValueError: the pool already has a backend of that name.
        """
        if backend.name in self._by_name:
            raise ValueError(f"pool {self.name} already has a backend {backend.name!r}")
        self.backends = (*self.backends, backend)
        self._by_name[backend.name] = backend
        self._changed(backend, "added", "absent", "present", reason)

    def remove(self, name: str, reason: str = "operator") -> Backend:
        """
        Remove a backend that no longer holds anyone: one in maintenance, or
        one with no sessions (see L{sessions}).  Requests and connections
        already open to it finish; nothing new reaches it, and clients bound
        to it are balanced again.

        :returns: the removed backend.
        :raises KeyError: no backend has that name.
        :raises BackendInUse: it holds sessions and is not in maintenance.
        """
        backend = self[name]
        if backend.admin_state is not AdminState.MAINT:
            sessions = self.sessions(name)
            if sessions:
                raise BackendInUse(
                    f"backend {self.name}/{name} holds {sessions} sessions and is "
                    f"{backend.admin_state.value}: drain it, or put it in maint, "
                    "before removing it"
                )
        self._cancel_drain(name)
        self.backends = tuple(b for b in self.backends if b is not backend)
        del self._by_name[name]
        self._passive_marks.pop(backend, None)
        self._changed(backend, "removed", "present", "absent", reason)
        return backend

    def set_weight(self, name: str, weight: int, reason: str = "operator") -> None:
        """
        Change a backend's share of new clients.  Weight 0 keeps the clients
        bound to it and sends it no new ones.

        :raises KeyError: no backend has that name.
        :raises ValueError: C{weight} is negative (or not an integer).
        """
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ValueError(f"weight: expected an integer >= 0, got {weight!r}")
        backend = self[name]
        if backend.weight != weight:
            old, backend.weight = backend.weight, weight
            self._changed(backend, "weight", str(old), str(weight), reason)

    # States

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

    def drain(
        self,
        name: str,
        deadline: float | None = None,
        reason: str = "operator: drain",
    ) -> None:
        """
        Let a backend keep its sticky clients but take no new ones.

        :param deadline: if given, seconds after which the backend is put in
            maintenance; it goes there sooner if its sessions reach zero.
            Needs the pool's C{clock}.
        :raises KeyError: no backend has that name.
        """
        backend = self[name]
        draining = backend.admin_state is AdminState.DRAIN
        # A new deadline for a drain under way keeps how it began.
        begun = self._drain_starts.get(name) if draining else None
        before = self._drain_ends.get(name)
        self._cancel_drain(name)
        end = None
        if self.clock is not None:
            now = self.clock.seconds()
            self._drain_starts[name] = begun or DrainStart(now, self.sessions(name))
            if deadline is not None:
                end = self._drain_ends[name] = now + deadline
        else:
            assert deadline is None, "drain with a deadline needs a clock"
        # The deadline is in place before observers hear of the drain, so
        # that what they read of it (to show it, or send it to other
        # proxies) is whole.
        if not draining:
            old, backend.admin_state = backend.admin_state, AdminState.DRAIN
            self._changed(backend, "admin", old.value, AdminState.DRAIN.value, reason)
        elif end != before:
            self._changed(
                backend, "deadline", _deadline(before), _deadline(end), reason
            )
        if end is not None:
            self._check_drain(name, end)

    def drain_deadline(self, name: str) -> float | None:
        """
        :returns: when (in the clock's seconds) a draining backend goes to
            maintenance at the latest, or C{None} when it drains without a
            deadline (or does not drain).
        """
        return self._drain_ends.get(name)

    def drain_started(self, name: str) -> DrainStart | None:
        """
        :returns: how a draining backend's drain began, or C{None} when it
            does not drain, or was not put in drain by L{drain} (its
            configured state).
        """
        return self._drain_starts.get(name)

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
        self._drain_ends.pop(name, None)
        self._drain_starts.pop(name, None)
        pending = self._drains.pop(name, None)
        if pending is not None and pending.active():
            pending.cancel()

    def set_health(
        self, backend: Backend, health: Health, reason: str, passive: bool = False
    ) -> None:
        """
        Record the operational state health tracking reached.

        :param passive: passive checks alone took the backend down (or
            saw it fail again since): it is still worth a try when every
            backend is so (C{passive_panic}).  Any other verdict clears that.
        """
        marks = self._passive_marks
        was_marked = backend in marks
        if passive and health is Health.DOWN:
            self._marks += 1
            marks[backend] = self._marks
        else:
            marks.pop(backend, None)
        if backend.health is not health:
            old, backend.health = backend.health, health
            self._changed(backend, "health", old.value, health.value, reason)
        elif was_marked != (backend in marks):
            # Down either way, but worth a try in a passive panic or not:
            # those who follow this pool's health (workers) must know.
            flags = ("cleared", "marked")
            old_flag, new_flag = flags[was_marked], flags[not was_marked]
            self._changed(backend, "passive", old_flag, new_flag, reason)

    def passive_down(self, backend: Backend) -> bool:
        """
        :returns: whether passive checks alone took C{backend} down (see
            L{set_health}), for places that follow this pool's health.
        """
        return backend in self._passive_marks

    def set_ramp(self, backend: Backend, ramp: float) -> None:
        """
        Set the share of its weight a slowly starting backend gets.
        """
        if backend.ramp != ramp:
            old, backend.ramp = backend.ramp, ramp
            self._serving = self._accepting = None
            # Not logged (a slow start takes 20 steps), but announced: the
            # workers of a parent follow its ramps.
            change = StateChange(
                self.name, backend, "ramp", f"{old:g}", f"{ramp:g}", "slow start"
            )
            self._announce(change)

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
        self._check_panic()
        self._announce(change)

    def _announce(self, change: StateChange) -> None:
        """
        Tell every observer of a change.
        """
        # An observer may change state in turn (the health monitor sets a
        # new backend's init_state): that change waits until every observer
        # has seen this one, so all see the changes in the same order.
        if self._announcing is not None:
            self._announcing.append(change)
            return
        self._announcing = deque([change])
        try:
            while self._announcing:
                change = self._announcing.popleft()
                for observer in list(self._observers):
                    # One observer's bug must not hide the change (or the
                    # changes queued after it) from the others.
                    try:
                        observer(change)
                    except Exception:
                        self.log.failure(
                            "observer {observer!r} failed on a change of "
                            "{pool}/{backend}",
                            observer=observer,
                            pool=self.name,
                            backend=change.backend.name,
                        )
        finally:
            self._announcing = None

    def _check_panic(self) -> None:
        """
        Log, once each way, when the pool starts and stops ignoring health.
        """
        kind = self._panic_kind()
        if kind == self._panicking:
            return
        was, self._panicking = self._panicking, kind
        if kind == "passive":
            self.log.warn(
                "pool {pool}: every backend is down by passive checks alone; "
                "trying them anyway, least recently failed first, until one "
                "answers (passive_panic)",
                pool=self.name,
            )
        elif kind == "fail_open":
            self.log.warn(
                "pool {pool}: no backend is up; using them all regardless of "
                "health (fail_open)",
                pool=self.name,
            )
        else:
            self.log.info(
                "pool {pool}: panic routing ({panic}) is over; health decides again",
                pool=self.name,
                panic=was,
            )

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
