"""
The values everything else shares: a backend and its states, a change of
state, and a routing decision.

A leaf: it imports nothing else from the package, so any layer may use it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from twisted.internet.interfaces import (
    IStreamClientEndpoint,
)


class Health(enum.Enum):
    """
    The operational state from health tracking.  A backend that is going
    down still serves (its failures have not reached C{fall} yet); one
    going up does not (its successes have not reached C{rise}).
    """

    UP = "up"
    GOING_DOWN = "going down"
    DOWN = "down"
    GOING_UP = "going up"

    @property
    def serving(self) -> bool:
        """
        :returns: whether a backend in this state may serve clients.
        """
        return self is Health.UP or self is Health.GOING_DOWN


class AdminState(enum.Enum):
    """
    What the operator wants of a backend (as HAProxy's C{ready}, C{drain},
    C{maint}).
    """

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


@attrs.define(eq=False)
class Backend:
    """
    One server behind the proxy, with its live state.

    :ivar name: unique within its pool.
    :ivar address: the configured address, as written.
    :ivar endpoint: how to connect to it.
    :ivar weight: its share of new clients relative to the others (0 takes
        none).
    :ivar route: the token route-based persistence matches.
    :ivar admin_state: the operator's wish.
    :ivar health: the operational state from health tracking.
    :ivar active: connections (or requests) open or being opened to it.
    :ivar ramp: the fraction of its weight it gets during a slow start.
    """

    name: str
    address: str
    endpoint: IStreamClientEndpoint
    weight: int = 1
    route: str = ""
    admin_state: AdminState = AdminState.READY
    health: Health = Health.UP
    active: int = 0
    ramp: float = 1.0

    @property
    def healthy(self) -> bool:
        """
        :returns: whether health tracking lets it serve.
        """
        return self.health.serving

    @property
    def effective_weight(self) -> float:
        """
        :returns: its weight for new clients, reduced during a slow start.
        """
        return self.weight * self.ramp


@attrs.frozen
class AdminRecord:
    """
    A backend's runtime admin state, as other proxies or worker processes
    receive it: enough for theirs to match.

    :ivar drain_deadline: when a draining backend goes to maintenance at
        the latest, in the clock's seconds (a reactor's are the epoch's, so
        they mean the same on hosts whose clocks agree), or C{None}.
    """

    pool: str
    backend: str
    admin_state: AdminState
    weight: int
    drain_deadline: float | None = None

    def to_json(self) -> dict[str, object]:
        """
        :returns: the record as JSON-ready values (L{from_json} reads them).
        """
        return {
            "pool": self.pool,
            "backend": self.backend,
            "admin_state": self.admin_state.value,
            "weight": self.weight,
            "drain_deadline": self.drain_deadline,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AdminRecord:
        """
        Read what L{to_json} wrote (it may come from another process).

        :raises ValueError: a field is missing or of the wrong kind.
        """
        pool, backend = data.get("pool"), data.get("backend")
        state, weight = data.get("admin_state"), data.get("weight")
        deadline = data.get("drain_deadline")
        if not isinstance(pool, str) or not isinstance(backend, str):
            raise ValueError("pool and backend: expected strings")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ValueError(f"weight: expected an integer >= 0, got {weight!r}")
        if deadline is not None and (
            isinstance(deadline, bool) or not isinstance(deadline, (int, float))
        ):
            raise ValueError(f"drain_deadline: expected a number, got {deadline!r}")
        try:
            admin_state = AdminState(state)
        except ValueError:
            raise ValueError(
                f"admin_state: expected ready, drain or maint, got {state!r}"
            ) from None
        return cls(
            pool,
            backend,
            admin_state,
            weight,
            None if deadline is None else float(deadline),
        )


@attrs.frozen
class TableEntry:
    """
    One binding of a stick table, as an operator sees it.

    :ivar key: what the strategy keys on (a masked address, a session id).
    :ivar backend: the name of the backend it is bound to.
    :ivar expires: when it expires if nothing uses it again (in the
        clock's seconds); C{None} while it is held by open connections.
    """

    key: bytes
    backend: str
    expires: float | None


@attrs.frozen
class StateChange:
    """
    One change of a backend's state, as observers receive it.

    :ivar kind: C{"health"} or C{"admin"}; C{"passive"}, a backend down
        either way marked as down by passive checks alone, or no longer
        (C{"marked"}, C{"cleared"}); C{"ramp"}, the share of its weight a
        slowly starting backend gets (as text, from C{"0.01"} to C{"1"});
        C{"deadline"}, a new deadline
        for a drain under way (the times as text, or C{"none"}); or a change
        to the pool's set of backends: C{"added"}, C{"removed"} (old and new
        are C{"absent"} and C{"present"}) or C{"weight"} (the weights, as
        text).
    :ivar old: the state's value before, e.g. C{"up"} or C{"ready"}.
    :ivar new: its value after.
    :ivar reason: why, in words (a probe's result, "operator", ...).
    """

    pool: str
    backend: Backend
    kind: str
    old: str
    new: str
    reason: str


class Outcome(enum.Enum):
    """
    How a backend was decided, for logs and debug headers.
    """

    HIT = "hit"  # the client's binding was honoured
    NEW = "new"  # no binding: the balancer picked, a new binding follows
    REDISPATCH = "redispatch"  # the bound backend could not serve: moved


@attrs.frozen
class Decision:
    """
    Where one client goes and why.

    :ivar strategy: the strategy whose binding decided (or was broken), or
        C{None} when no strategy knew the client.
    :ivar previous: on a redispatch, the backend the client was bound to.
    :ivar invalid: on a L{Outcome.NEW} decision, the strategy that found a
        binding on the client it could not honour (see
        L{IRoutingContext.invalid <stickyproxy.interfaces.IRoutingContext>}),
        or C{None}.
    """

    backend: Backend
    outcome: Outcome
    strategy: str | None = None
    previous: Backend | None = None
    invalid: str | None = None

    @property
    def persistence(self) -> str:
        """
        :returns: the persistence outcome events report: the L{outcome}'s
            value, or C{"invalid"} when the client was balanced afresh
            because its binding was not valid.
        """
        if self.invalid is not None and self.outcome is Outcome.NEW:
            return "invalid"
        return self.outcome.value

    @property
    def decided_by(self) -> str | None:
        """
        :returns: the strategy events name: the one that decided, else the
            one whose binding was not valid.
        """
        return self.strategy if self.strategy is not None else self.invalid


@attrs.frozen
class RequestFinished:
    """
    One HTTP request is over, however it ended: what an access log, a
    metric or a dashboard needs of it.

    :ivar backend: the backend that served it, or C{None} when none did
        (refused by the proxy, no backend available).
    :ivar status: the status the client got, or C{None} when it got none
        (it left, or the response broke off before its head).
    :ivar persistence: the persistence outcome: C{"hit"}, C{"new"},
        C{"redispatch"}, C{"invalid"} (the client's binding was not valid:
        forged, expired, for an unknown backend) or C{"none"} (never
        routed, or no strategy applies).
    :ivar strategy: the strategy whose binding decided, or C{None}.
    :ivar method: the request method, or C{""} when it was refused before
        that was read.
    :ivar target: the request-target (as much as was read of it).
    :ivar bytes_in: request body bytes read from the client.
    :ivar bytes_out: response body bytes written to the client (as the
        backend framed them).
    :ivar head_time: seconds from the request head to the response head the
        client got (the backend's, or the proxy's own error), or C{None}
        when it got none.
    :ivar total_time: seconds from the request head to the end (for an
        upgrade, to the end of the tunnel).  A request refused while its
        head was read reports 0 for both times.
    :ivar ended: how it ended, in one word (C{"ok"}, C{"no-backend"},
        C{"client-timeout"}, C{"backend-error"}, C{"refused"},
        C{"upgraded"}, C{"abandoned"} (the client left before the end of
        its response, or the connection closed before it started), ...).
    :ivar version: the request's HTTP version (C{"1.1"}), or C{""} when it
        was refused before that was read.
    :ivar referer: the request's C{Referer} header, or C{""}.
    :ivar user_agent: its C{User-Agent} header, or C{""}.
    """

    frontend: str
    pool: str
    backend: str | None
    client: str
    method: str
    target: str
    status: int | None
    persistence: str
    strategy: str | None
    bytes_in: int
    bytes_out: int
    head_time: float | None
    total_time: float
    ended: str
    version: str = ""
    referer: str = ""
    user_agent: str = ""


@attrs.frozen
class ConnectionOpened:
    """
    An L4 client connection was spliced to its backend.
    """

    frontend: str
    pool: str
    backend: str
    client: str
    persistence: str
    strategy: str | None


@attrs.frozen
class ConnectionClosed:
    """
    An L4 connection opened with L{ConnectionOpened} is over.

    :ivar bytes_in: bytes from the client to the backend.
    :ivar bytes_out: bytes from the backend to the client.
    :ivar duration: seconds it was open.
    :ivar ended: how it ended, in one word: C{"client-closed"} or
        C{"backend-closed"} (that side ended it), C{"client-aborted"} or
        C{"backend-aborted"} (that side's connection was lost, not closed),
        C{"idle-timeout"}, C{"backend-down"} (closed by the proxy, with
        C{on_down = "close"}), or C{"shutdown"} (cut off by a stop).
    :ivar persistence: the persistence outcome, as in L{ConnectionOpened}.
    :ivar strategy: the strategy whose binding decided, as in
        L{ConnectionOpened}.
    """

    frontend: str
    pool: str
    backend: str
    client: str
    bytes_in: int
    bytes_out: int
    duration: float
    ended: str = ""
    persistence: str = ""
    strategy: str | None = None


@attrs.frozen
class ProbeRan:
    """
    An active health probe finished.

    :ivar ok: whether the backend passed.
    :ivar reason: the probe's result in words.
    :ivar latency: seconds the probe took.
    """

    pool: str
    backend: str
    ok: bool
    reason: str
    latency: float
