"""
Running totals of each backend's traffic, kept from the event stream.
"""

from __future__ import annotations

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
