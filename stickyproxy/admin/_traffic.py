"""
Running totals of each backend's traffic, kept from the event stream.
"""

from __future__ import annotations

from typing import Any

import attrs

from stickyproxy.core._events import IgnoreEvents
from stickyproxy.model import ConnectionOpened, RequestFinished

#: The persistence outcomes counted per backend.
OUTCOMES = ("hit", "new", "redispatch", "invalid")


@attrs.define
class Traffic:
    """
    One backend's totals since the proxy started.

    :ivar requests: HTTP requests it served (whatever their status).
    :ivar errors: those it answered (or the proxy answered for it) with a
        status of 500 or more.
    :ivar connections: TCP connections spliced to it.
    :ivar outcomes: requests and connections by persistence outcome.
    """

    requests: int = 0
    errors: int = 0
    connections: int = 0
    outcomes: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(OUTCOMES, 0))

    def as_json(self) -> dict[str, object]:
        """
        :returns: the totals as the admin API shows them.
        """
        return {
            "requests": self.requests,
            "errors": self.errors,
            "connections": self.connections,
            "outcomes": dict(self.outcomes),
        }

    @classmethod
    def from_json(cls, data: Any) -> Traffic:
        """
        Read what L{as_json} wrote (another process did).

        :raises ValueError: it is not shaped so.
        """
        try:
            outcomes = {str(k): int(v) for k, v in data["outcomes"].items()}
            return cls(
                int(data["requests"]),
                int(data["errors"]),
                int(data["connections"]),
                {**dict.fromkeys(OUTCOMES, 0), **outcomes},
            )
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise ValueError(f"not a backend's traffic totals: {error!r}") from None

    def add(self, other: Traffic) -> None:
        """
        Add another's totals to these.
        """
        self.requests += other.requests
        self.errors += other.errors
        self.connections += other.connections
        for outcome, count in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count


@attrs.define(eq=False)
class TrafficCounter(IgnoreEvents):
    """
    An event subscriber that counts each backend's traffic, and, per pool,
    the requests and connections that got no backend at all.

    Totals are kept by pool and backend name, so they survive a backend's
    removal and continue if one of the same name comes back.
    """

    _traffic: dict[tuple[str, str], Traffic] = attrs.field(factory=dict)
    _no_backend: dict[str, int] = attrs.field(factory=dict)

    def traffic(self, pool: str, backend: str) -> Traffic:
        """
        :returns: the totals of one backend (zeros when it has none yet).
        """
        found = self._traffic.get((pool, backend))
        if found is None:
            found = self._traffic[pool, backend] = Traffic()
        return found

    def no_backend(self, pool: str) -> int:
        """
        :returns: how many requests of a pool's frontends got no backend.
        """
        return self._no_backend.get(pool, 0)

    def take(self) -> dict[str, Any] | None:
        """
        What was counted since the last take, as JSON-ready values (what
        L{add_json} reads), and start again from zero: a worker sends its
        parent its traffic so.

        :returns: C{None} when nothing was counted.
        """
        if not self._traffic and not self._no_backend:
            return None
        taken = {
            "backends": [
                [pool, backend, traffic.as_json()]
                for (pool, backend), traffic in self._traffic.items()
            ],
            "no_backend": self._no_backend,
        }
        self._traffic, self._no_backend = {}, {}
        return taken

    def add_json(self, data: Any) -> None:
        """
        Add the totals another process counted (see L{take}).

        :raises ValueError: they are not shaped so (nothing is added).
        """
        try:
            backends = [
                (str(pool), str(backend), Traffic.from_json(totals))
                for pool, backend, totals in data["backends"]
            ]
            no_backend = {str(k): int(v) for k, v in data["no_backend"].items()}
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise ValueError(f"not traffic totals: {error!r}") from None
        for pool, backend, traffic in backends:
            self.traffic(pool, backend).add(traffic)
        for pool, count in no_backend.items():
            self._no_backend[pool] = self.no_backend(pool) + count

    def request_finished(self, event: RequestFinished) -> None:
        if event.backend is None:
            if event.ended == "no-backend":
                self._no_backend[event.pool] = self.no_backend(event.pool) + 1
            return
        traffic = self.traffic(event.pool, event.backend)
        traffic.requests += 1
        if event.status is not None and event.status >= 500:
            traffic.errors += 1
        if event.persistence in traffic.outcomes:
            traffic.outcomes[event.persistence] += 1

    def connection_opened(self, event: ConnectionOpened) -> None:
        traffic = self.traffic(event.pool, event.backend)
        traffic.connections += 1
        if event.persistence in traffic.outcomes:
            traffic.outcomes[event.persistence] += 1
