"""
An in-memory stick table: learned key -> backend bindings that expire when
idle and are bounded in number.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime

from stickyproxy.interfaces import IListableStickTable
from stickyproxy.model import TableEntry

#: The most an idle time may be rounded by, in seconds, whatever the timeout.
MAX_RESOLUTION = 1.0

#: An idle time is rounded by at most this share of the table's timeout.
RESOLUTION_SHARE = 0.001

# A binding's value: its backend and when it was last used, rounded down.
_Use = tuple[str, float]


@implementer(IListableStickTable)
@attrs.define(eq=False)
class StickTable:
    """
    Bindings kept in this process, so every answer is immediate, in
    least-recently-used order, so the oldest is evicted first when C{size}
    is reached and the expiry sweep can stop at the first entry that is
    still fresh.  Expiry is read off the clock: a lookup never returns an
    expired binding, and expired ones are swept out as new ones come in, so
    the table needs no timer of its own.

    A table may hold a million bindings, so a binding costs only its key
    and its place in the order: its value, the backend and the time of its
    last use, is one tuple that every binding of that backend used in the
    same tick shares.  A tick is C{timeout * RESOLUTION_SHARE} seconds, at
    most C{MAX_RESOLUTION}: an idle binding may expire that much early.
    Holds (open connections) are counted apart, for the few keys that have
    them.

    :ivar timeout: seconds a binding with no holds survives unused.
    :ivar size: the most bindings kept.
    """

    clock: IReactorTime
    timeout: float
    size: int
    _entries: OrderedDict[bytes, _Use] = attrs.field(init=False, factory=OrderedDict)
    _holds: Counter[bytes] = attrs.field(init=False, factory=Counter)
    _per_backend: Counter[str] = attrs.field(init=False, factory=Counter)
    _last_sweep: float = attrs.field(init=False, default=0.0)
    # The tick's shared values, one per backend.
    _resolution: float = attrs.field(init=False)
    _tick: float = attrs.field(init=False, default=float("-inf"))
    _uses: dict[str, _Use] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._resolution = min(self.timeout * RESOLUTION_SHARE, MAX_RESOLUTION)

    def _use(self, backend: str, now: float) -> _Use:
        """
        :returns: the value of a binding to C{backend} used at C{now}.
        """
        if not 0 <= now - self._tick < self._resolution:
            self._tick = now
            self._uses = {}
        use = self._uses.get(backend)
        if use is None:
            use = self._uses[backend] = (backend, self._tick)
        return use

    def get(self, key: bytes) -> str | None:
        use = self._entries.get(key)
        if use is None:
            return None
        backend, last_used = use
        now = self.clock.seconds()
        if now - last_used >= self.timeout and key not in self._holds:
            self._forget(key)
            return None
        self._entries[key] = self._use(backend, now)
        self._entries.move_to_end(key)
        return backend

    def bind(self, key: bytes, backend: str) -> None:
        now = self.clock.seconds()
        old = self._entries.get(key)
        self._entries[key] = self._use(backend, now)
        self._holds[key] += 1
        if old is None:
            self._per_backend[backend] += 1
            if now - self._last_sweep >= self.timeout:
                self.sweep()
            while len(self._entries) > self.size:
                self._forget(next(iter(self._entries)))
        else:
            if old[0] != backend:
                self._per_backend[old[0]] -= 1
                self._per_backend[backend] += 1
            self._entries.move_to_end(key)

    def refresh(self, key: bytes, backend: str) -> None:
        if self.get(key) is not None:
            self.bind(key, backend)
            self.release(key)

    def forget(self, key: bytes) -> None:
        if key in self._entries:
            self._forget(key)

    def release(self, key: bytes) -> None:
        holds = self._holds.get(key)
        if holds is None:
            return
        if holds > 1:
            self._holds[key] = holds - 1
        else:
            del self._holds[key]
        backend = self._entries[key][0]
        self._entries[key] = self._use(backend, self.clock.seconds())
        self._entries.move_to_end(key)

    def __len__(self) -> int:
        return len(self._entries)

    def sweep(self) -> None:
        """
        Forget expired bindings, oldest first, stopping at the first one that
        is still fresh (held bindings never expire and are stepped over).
        """
        now = self.clock.seconds()
        self._last_sweep = now
        cutoff = now - self.timeout
        holds = self._holds
        expired = []
        for key, (_, last_used) in self._entries.items():
            if key in holds:
                continue
            if last_used > cutoff:
                break
            expired.append(key)
        for key in expired:
            self._forget(key)

    def _forget(self, key: bytes) -> None:
        backend, _ = self._entries.pop(key)
        self._holds.pop(key, None)
        self._per_backend[backend] -= 1

    def entries(self) -> Iterator[TableEntry]:
        self.sweep()
        for key, (backend, last_used) in list(self._entries.items()):
            expires = None if key in self._holds else last_used + self.timeout
            yield TableEntry(key, backend, expires)

    def held(self) -> Iterator[tuple[bytes, str]]:
        """
        :returns: the held bindings (with open connections): their keys
            and backends.
        """
        entries = self._entries
        for key in list(self._holds):
            yield key, entries[key][0]

    def clear(self) -> None:
        self._entries.clear()
        self._holds.clear()
        self._per_backend.clear()

    def count(self, backend: str) -> int:
        self.sweep()
        return self._per_backend[backend]
