"""
What a proxy shares through its store beside learned bindings: the runtime
admin states of its backends, and their session counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from stickyproxy.core._pool import Pool
from stickyproxy.interfaces import ISharedStore
from stickyproxy.store._admin import SharedAdminState
from stickyproxy.store._sessions import SharedSessions


class SharedState(Service):
    """
    Shares a proxy's admin states (L{admin}: subscribe C{admin.sync} to
    its event stream) and session counts (L{sessions}: give
    C{sessions.table} to its pools as their C{counter}) through C{store}.

    Started after the store: each time the store is up, the session counts
    are read before the admin states, so that a drain read from the store
    is measured against every proxy's sessions.

    A worker shares its session counts only (C{admin=False}, L{admin} is
    C{None}): its admin states are its parent's, which shares them with
    the other proxies and hands them down.  A worker that followed the
    store too would end a drain on its own count, for every proxy.
    """

    def __init__(
        self,
        store: ISharedStore,
        pools: Callable[[], Mapping[str, Pool]],
        clock: IReactorTime,
        id: str | None = None,
        admin: bool = True,
    ) -> None:
        self.sessions = SharedSessions(store, clock)
        self.admin = SharedAdminState(store, pools, clock, id) if admin else None

    def startService(self) -> None:
        super().startService()
        if self.admin is not None:
            self.admin.start(self.sessions.tick)
        self.sessions.start()

    def stopService(self) -> None:
        self.sessions.stop()
        super().stopService()
