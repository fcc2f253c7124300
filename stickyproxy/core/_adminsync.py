"""
Keeping the runtime admin state of backends the same in several places:
worker processes of one proxy, or proxies sharing a store.

What travels is an L{AdminRecord}; how it travels (AMP to workers, Redis
pub/sub between proxies) is the business of whoever builds the
L{AdminSync}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from stickyproxy.core._events import IgnoreEvents
from stickyproxy.core._pool import Pool
from stickyproxy.model import AdminRecord, AdminState, Backend, StateChange

#: How the reason of a change applied from elsewhere begins: such a change
#: is never sent on again, so that two places never echo each other.
PEER = "peer"

#: The kinds of change an operator makes and other places follow.
_ADMIN_KINDS = frozenset({"admin", "deadline", "weight"})


def admin_record(pool: Pool, backend: Backend) -> AdminRecord:
    """
    :returns: C{backend}'s admin state in C{pool} now.
    """
    return AdminRecord(
        pool.name,
        backend.name,
        backend.admin_state,
        backend.weight,
        pool.drain_deadline(backend.name),
    )


def _same_time(one: float | None, other: float | None) -> bool:
    """
    Whether two deadlines are the same, to the millisecond: one made here
    from another's remaining seconds may differ from it in the last bits.
    """
    if one is None or other is None:
        return one is other
    return abs(one - other) < 0.001


class AdminSync(IgnoreEvents):
    """
    Sends every admin state change made here (by the admin API, a reload, a
    drain reaching its end) to C{publish}, and makes the backends here match
    the records received from elsewhere (L{apply}).

    Subscribe it to a service's event stream (C{service.events}); it reads
    the pools through C{pools}, so it follows reloads.

    :param peers: send on the changes applied from elsewhere too: for a
        parent, whose workers follow what other proxies change and never
        send a change back, so that nothing can echo.
    """

    def __init__(
        self,
        pools: Callable[[], Mapping[str, Pool]],
        publish: Callable[[AdminRecord], None],
        peers: bool = False,
    ) -> None:
        self._pools = pools
        self._publish = publish
        self._peers = peers

    def backend_changed(self, change: StateChange) -> None:
        if change.kind not in _ADMIN_KINDS:
            return
        if change.reason.startswith(PEER) and not self._peers:
            return
        pool = self._pools().get(change.pool)
        if pool is not None and pool.get(change.backend.name) is change.backend:
            self._publish(admin_record(pool, change.backend))

    def snapshot(self) -> list[AdminRecord]:
        """
        :returns: every backend's record, for a newcomer to start from.
        """
        return [
            admin_record(pool, backend)
            for pool in self._pools().values()
            for backend in pool.backends
        ]

    def apply(self, record: AdminRecord, origin: str) -> bool:
        """
        Make the backend C{record} names match it; the changes this makes
        are not published again.

        :param origin: where the record came from, for the log (a worker,
            a proxy's id).
        :returns: C{False}, changing nothing, when no backend here has that
            pool and name (the configurations differ, or a reload is under
            way).
        """
        pool = self._pools().get(record.pool)
        backend = pool.get(record.backend) if pool is not None else None
        if pool is None or backend is None:
            return False
        reason = f"{PEER} {origin}"
        if backend.weight != record.weight:
            pool.set_weight(backend.name, record.weight, reason)
        if record.admin_state is not AdminState.DRAIN:
            pool.set_admin_state(backend.name, record.admin_state, reason)
        elif backend.admin_state is not AdminState.DRAIN or not _same_time(
            pool.drain_deadline(backend.name), record.drain_deadline
        ):
            left = None
            if record.drain_deadline is not None and pool.clock is not None:
                left = max(0.0, record.drain_deadline - pool.clock.seconds())
            pool.drain(backend.name, left, f"{reason}: drain")
        return True
