"""
Session counts shared by every proxy of a store: how many live sessions
each backend holds, whichever proxy its clients come through.

A strategy counts its sessions in a stick table (a masked client address,
a header value, the application's session id, the session id of the
proxy's cookie); L{SharedSessions.table} wraps that table so that what it
learns is also written to a sorted set per backend in the store, of
session id by when it expires if not seen again.  A backend's count is
how many of its sessions have not expired there.  Writes are batched and
counts read in the background, once a second: nothing on a request's path
waits on the store.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
from zope.interface import implementer

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.interfaces import (
    IBackendPool,
    IListableStickTable,
    ISharedStore,
    IStickTable,
)
from stickyproxy.model import TableEntry
from stickyproxy.store._store import StoreUnavailable

#: Seconds between two writes of what was seen, and two reads of the counts.
INTERVAL = 1.0

#: The most session marks a table keeps for the store while it is away.
PENDING_LIMIT = 100_000

#: Seconds after which a round that got no answer (a store that stopped
#: answering without dropping the connection) is given up.
ROUND_TIMEOUT = 10.0


def _member(key: bytes) -> str:
    """
    A session's name in the store: short, and not the address or id itself.
    """
    return hashlib.blake2b(key, digest_size=8).hexdigest()


@implementer(IListableStickTable)
@attrs.define(eq=False)
class SharedCountTable:
    """
    A stick table whose sessions are counted across proxies: it is the
    table it wraps, with L{count} answering from the store.

    Each session seen (bound, refreshed, released) is marked with when it
    expires if not seen again (now + C{timeout}); a held one (an open
    connection) is marked again every half C{timeout} (from the wrapped
    table's L{entries}), and a forgotten or moved one is removed.

    L{count} is the greater of the wrapped table's own count and the
    store's as last read, plus the sessions bound here since (which the
    store does not hold yet).  While the store is away, the counts read
    last are kept: a drain then ends at its deadline, not early for want
    of them.

    :ivar key: the name of its sets in the store, before the backend's.
    """

    table: IStickTable
    key: str
    pool: IBackendPool
    timeout: float
    clock: IReactorTime
    # The sessions seen since the last write: key -> (backend, when it
    # expires).  Keys are hashed into their names in the store once per
    # write, not once per request.
    _pending: dict[bytes, tuple[str, float]] = attrs.field(init=False, factory=dict)
    # The sessions forgotten since the last write, by backend.
    _gone: dict[str, set[bytes]] = attrs.field(init=False, factory=dict)
    _held_marked: float = attrs.field(init=False, default=0.0)
    _counts: dict[str, int] = attrs.field(init=False, factory=dict)
    # Sessions bound here since the last write, and those written since the
    # last read: added to the counts read, so that this proxy's own new
    # sessions count at once (leastsessions spreads them).
    _fresh: Counter[str] = attrs.field(init=False, factory=Counter)
    _unread: Counter[str] = attrs.field(init=False, factory=Counter)

    def __attrs_post_init__(self) -> None:
        self._held_marked = self.clock.seconds()

    # Marking sessions

    def _mark(self, key: bytes, backend: str) -> None:
        pending = self._pending
        if len(pending) >= PENDING_LIMIT and key not in pending:
            return  # the store is away long: count what is known here
        pending[key] = (backend, self.clock.seconds() + self.timeout)

    def _unmark(self, key: bytes, backend: str) -> None:
        self._pending.pop(key, None)
        self._gone.setdefault(backend, set()).add(key)

    def _backend(self, key: bytes) -> str | None | Deferred[str | None]:
        """
        The backend a session was last seen on: from what is to be written,
        else from the table.
        """
        seen = self._pending.get(key)
        return seen[0] if seen is not None else self.table.get(key)

    # IStickTable

    def get(self, key: bytes) -> str | None | Deferred[str | None]:
        return self.table.get(key)

    def bind(self, key: bytes, backend: str) -> None:
        seen = self._pending.get(key)
        if seen is not None:
            # Seen since the last write: no new session; it may have moved.
            self.table.bind(key, backend)
            if seen[0] != backend:
                self._gone.setdefault(seen[0], set()).add(key)
        else:
            size, held = len(self.table), self.table.count(backend)
            self.table.bind(key, backend)
            if len(self.table) > size:
                self._fresh[backend] += 1
            elif self.table.count(backend) > held:
                # It moved here, from a backend the table does not say.
                for other in self.pool.backends:
                    if other.name != backend:
                        self._gone.setdefault(other.name, set()).add(key)
        self._mark(key, backend)

    def refresh(self, key: bytes, backend: str) -> None:
        self.table.refresh(key, backend)
        self._mark(key, backend)

    def release(self, key: bytes) -> None:
        self.table.release(key)
        backend = self._backend(key)
        if isinstance(backend, str):
            self._mark(key, backend)
        # A shared table asking its store: the binding is marked again by
        # the next request, or every half timeout while it is held.

    def forget(self, key: bytes) -> None:
        backend = self._backend(key)
        self.table.forget(key)
        if isinstance(backend, Deferred):
            # A shared table asks its store: unmark it when it answers.
            backend.addCallback(self._unmark_late, key).addErrback(lambda _: None)
        elif backend is not None:
            self._unmark(key, backend)

    def _unmark_late(self, backend: str | None, key: bytes) -> None:
        if backend is not None:
            self._unmark(key, backend)

    def count(self, backend: str) -> int:
        shared = self._counts.get(backend)
        if shared is not None:
            shared += self._unread[backend] + self._fresh[backend]
        return max(self.table.count(backend), shared or 0)

    def __len__(self) -> int:
        return len(self.table)

    # IListableStickTable

    def entries(self) -> Iterator[TableEntry]:
        if not IListableStickTable.providedBy(self.table):
            return iter(())
        return self.table.entries()

    def clear(self) -> None:
        for entry in list(self.entries()):
            self._unmark(entry.key, entry.backend)
        if IListableStickTable.providedBy(self.table):
            self.table.clear()

    # Talking to the store (SharedSessions calls these)

    def flush(self, store: ISharedStore) -> Deferred[list[object]]:
        """
        Write the sessions seen since the last flush (one command per
        backend); what fails to be written is kept for the next.
        """
        now = self.clock.seconds()
        if now - self._held_marked >= self.timeout / 2:
            # Bindings held by open connections do not expire: mark them
            # again before the store would take them for idle.
            self._held_marked = now
            for entry in self.entries():
                if entry.expires is None:
                    self._mark(entry.key, entry.backend)
        pending, self._pending = self._pending, {}
        self._unread += self._fresh
        self._fresh = Counter()
        gone, self._gone = self._gone, {}
        by_backend: dict[str, dict[bytes, float]] = {}
        for key, (backend, end) in pending.items():
            by_backend.setdefault(backend, {})[key] = end
        ttl = math.ceil((self.timeout + 2 * INTERVAL) * 1000)
        writes: list[Deferred[object]] = []
        for backend, marks in by_backend.items():
            name = f"{self.key}:{backend}"
            scores = [x for key, end in marks.items() for x in (end, _member(key))]
            written = store.call("ZADD", name, *scores)
            written.addErrback(self._keep, backend, marks)
            writes.append(written)
            writes.append(store.call("PEXPIRE", name, ttl))
        for backend, keys in gone.items():
            members = [_member(key) for key in keys]
            writes.append(store.call("ZREM", f"{self.key}:{backend}", *members))
        return gatherResults(writes, consumeErrors=True)

    def _keep(
        self, failure: Failure, backend: str, marks: dict[bytes, float]
    ) -> Failure:
        """
        Put marks that were not written back with those seen since.
        """
        for key, end in marks.items():
            seen = self._pending.get(key)
            if seen is None and len(self._pending) < PENDING_LIMIT:
                self._pending[key] = (backend, end)
        return failure

    def read(self, store: ISharedStore) -> Deferred[None]:
        """
        Read every backend's count from the store, dropping expired
        sessions there.  On a failure the counts read before are kept, so
        that a drain does not end early for want of them.
        """
        now = self.clock.seconds()
        names = [backend.name for backend in self.pool.backends]
        reads: list[Deferred[object]] = []
        for backend in names:
            name = f"{self.key}:{backend}"
            reads.append(store.call("ZREMRANGEBYSCORE", name, "-inf", now))
            reads.append(store.call("ZCARD", name))
        done = gatherResults(reads, consumeErrors=True)

        def counted(replies: list[object]) -> None:
            self._unread = Counter()
            self._counts = {
                backend: int(str(count))
                for backend, count in zip(names, replies[1::2], strict=True)
            }

        return done.addCallback(counted)


class SharedSessions:
    """
    Counts the sessions of every table given to L{table} across the proxies
    of a store: marks are written, and counts read, every L{INTERVAL}
    seconds in the background (L{start}).

    A table's sets are named C{store.key("sessions", pool, name, backend)}:
    every proxy with the same configuration counts into the same ones.
    """

    log = Logger()

    def __init__(
        self, store: ISharedStore, clock: IReactorTime, interval: float = INTERVAL
    ) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        # A table replaced by a reload goes with its strategy.
        self._tables: weakref.WeakSet[SharedCountTable] = weakref.WeakSet()
        self._loop: LoopingCall | None = None
        self._busy = False
        self._failing = False

    def table(
        self, pool: IBackendPool, name: str, table: IStickTable, timeout: float
    ) -> IStickTable:
        """
        :param name: the table's name in the configuration (its key path),
            the same on every proxy.
        :param timeout: how long a session lasts unseen.
        :returns: C{table}, its sessions counted across proxies.
        """
        shared = SharedCountTable(
            table,
            self.store.key("sessions", pool.name, name),
            pool,
            timeout,
            self.clock,
        )
        self._tables.add(shared)
        return shared

    def start(self) -> None:
        """
        Write and read every L{interval} seconds.
        """
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda failure: self.log.failure("shared session counts", failure)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self) -> Deferred[None]:
        """
        Write what every table saw, then read the counts (not while the
        store is away, nor while the last round is still under way: a slow
        store; one unanswered for L{ROUND_TIMEOUT} is given up).

        :returns: a L{Deferred} that fires once the counts are read (or
            could not be), never failing.
        """
        if not self.store.up or self._busy:
            return succeed(None)
        self._busy = True
        rounds: list[Deferred[Any]] = []
        for table in list(self._tables):
            rounds.append(table.flush(self.store))
            rounds.append(table.read(self.store))
        done = gatherResults(rounds, consumeErrors=True)
        done.addTimeout(ROUND_TIMEOUT, self.clock)
        done.addCallbacks(self._succeeded, self._failed)
        return done.addBoth(self._done)

    def _succeeded(self, _: object) -> None:
        self._failing = False

    def _failed(self, failure: Failure) -> None:
        while failure.check(FirstError):
            error = failure.value
            assert isinstance(error, FirstError)
            failure = error.subFailure
        # The store logs its own loss, once.
        if not self._failing and not failure.check(StoreUnavailable):
            self.log.warn(
                "store: counting sessions failed: {reason}",
                reason=failure.getErrorMessage(),
            )
        self._failing = True

    def _done(self, _: object) -> None:
        self._busy = False
        return None
