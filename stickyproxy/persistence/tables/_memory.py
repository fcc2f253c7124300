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


@attrs.define
class _Entry:
    backend: str
    holds: int
    last_used: float


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

    :ivar timeout: seconds a binding with no holds survives unused.
    :ivar size: the most bindings kept.
    """

    clock: IReactorTime
    timeout: float
    size: int
    _entries: OrderedDict[bytes, _Entry] = attrs.field(factory=OrderedDict)
    _per_backend: Counter[str] = attrs.field(factory=Counter)
    _last_sweep: float = 0.0

    def get(self, key: bytes) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self.clock.seconds()
        if entry.holds == 0 and now - entry.last_used >= self.timeout:
            self._forget(key)
            return None
        entry.last_used = now
        self._entries.move_to_end(key)
        return entry.backend

    def bind(self, key: bytes, backend: str) -> None:
        now = self.clock.seconds()
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(backend, 1, now)
            self._per_backend[backend] += 1
            if now - self._last_sweep >= self.timeout:
                self.sweep()
            while len(self._entries) > self.size:
                self._forget(next(iter(self._entries)))
        else:
            if entry.backend != backend:
                self._per_backend[entry.backend] -= 1
                self._per_backend[backend] += 1
            entry.backend = backend
            entry.holds += 1
            entry.last_used = now
            self._entries.move_to_end(key)

    def refresh(self, key: bytes, backend: str) -> None:
        if self.get(key) is not None:
            self.bind(key, backend)
            self.release(key)

    def forget(self, key: bytes) -> None:
        if key in self._entries:
            self._forget(key)

    def release(self, key: bytes) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.holds > 0:
            entry.holds -= 1
            entry.last_used = self.clock.seconds()
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
        expired = []
        for key, entry in self._entries.items():
            if entry.holds:
                continue
            if entry.last_used > cutoff:
                break
            expired.append(key)
        for key in expired:
            self._forget(key)

    def _forget(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self._per_backend[entry.backend] -= 1

    def entries(self) -> Iterator[TableEntry]:
        self.sweep()
        for key, entry in list(self._entries.items()):
            expires = None if entry.holds else entry.last_used + self.timeout
            yield TableEntry(key, entry.backend, expires)

    def clear(self) -> None:
        self._entries.clear()
        self._per_backend.clear()

    def count(self, backend: str) -> int:
        self.sweep()
        return self._per_backend[backend]
