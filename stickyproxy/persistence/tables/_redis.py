"""
A stick table kept in the store several proxies share (C{store = "redis"}),
with a bounded local cache that answers whenever it can.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.interfaces import (
    IListableStickTable,
    ISharedStore,
    IStickTableStore,
)
from stickyproxy.model import TableEntry
from stickyproxy.persistence.tables._memory import StickTable

#: How long an answer the store gave (or a binding written to it) is
#: trusted without asking again, in seconds: a binding another proxy moves
#: is followed this late at most, and a busy client costs one round trip
#: this often at most.
FRESH = 1.0

#: The most keys deleted by one command when a table is cleared.
_SCAN_COUNT = 1000

#: A held binding's TTL in the store is restarted this often, as a share
#: of the table's timeout: it never runs out while the binding is held.
KEEP_ALIVE_SHARE = 1 / 3


def _weakly(
    method: Callable[[], None], gone: Callable[[], object] = lambda: None
) -> Callable[[], None]:
    """
    C{method}, held weakly: a table that a reload replaced is not kept
    alive (nor written back) by the store's callbacks or its own round.

    :param gone: called instead, once the table is gone.
    """
    reference = weakref.WeakMethod(method)

    def call() -> None:
        alive = reference()
        if alive is None:
            gone()
        else:
            alive()

    return call


def _keeper(table: RedisStickTable) -> LoopingCall:
    """
    Start the round that keeps C{table}'s held bindings alive in the
    store, held weakly: a table that a reload replaced ends its round.
    """
    keeper = LoopingCall(_weakly(table._keep_alive, gone=lambda: keeper.stop()))
    keeper.clock = table.clock
    keeper.start(table.timeout * KEEP_ALIVE_SHARE, now=False)
    return keeper


def _glob_escape(name: bytes) -> bytes:
    """
    C{name} with Redis glob characters escaped, to match it literally.
    """
    for special in (b"\\", b"*", b"?", b"[", b"]"):
        name = name.replace(special, b"\\" + special)
    return name


@implementer(IListableStickTable)
@attrs.define(eq=False)
class RedisStickTable:
    """
    Bindings kept in the store, each one key (C{namespace} then the
    binding's key) whose value is the backend's name and whose TTL is the
    idle C{timeout}, so every proxy sharing the store sees what any of them
    learned, and Redis expires what none uses.

    The proxy's own view is a local L{StickTable} of at most C{size}
    bindings: it holds the holds (open connections), answers L{count} and
    L{entries}, and answers L{get} at once when the store confirmed the
    binding less than L{FRESH} seconds ago, or when the store is down.
    Otherwise L{get} asks the store, and waits for it no longer than the
    store's C{timeout}: past it, it answers with what it knows locally.
    An unknown key is always asked for, so a binding learned by another
    proxy is honoured here within one round trip.

    Writes are sent at once and not waited for.  While the store is down
    they are kept locally (bounded by C{size}); when it is back, every
    binding known locally is written back, unless the store already has
    one for the key: the store's binding wins, since other proxies may
    have used it meanwhile, and this proxy follows it at its next lookup.
    Forgotten keys are deleted then too.

    A held binding (an open connection, a request under way) may outlive
    its timeout here without being looked up again, so every
    C{timeout * KEEP_ALIVE_SHARE} seconds while any is held, a round
    restarts the TTL of each in the store, in the background, and writes
    again (C{NX}) one the store lost: another proxy keeps honouring a
    binding as long as it is used here.
    """

    log = Logger()

    store: ISharedStore
    clock: IReactorTime
    namespace: bytes
    timeout: float
    size: int
    fresh: float = FRESH
    _local: StickTable = attrs.field(init=False)
    # When the store last agreed with the local binding of a key: by key,
    # its backend and the time, oldest first.
    _confirmed: OrderedDict[bytes, tuple[str, float]] = attrs.field(
        init=False, factory=OrderedDict
    )
    # Keys forgotten while the store could not be told.
    _forgotten: OrderedDict[bytes, None] = attrs.field(init=False, factory=OrderedDict)
    # Restarts held bindings' TTLs while any is held.
    _keeper: LoopingCall | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._local = StickTable(clock=self.clock, timeout=self.timeout, size=self.size)
        self.store.when_up(_weakly(self._write_back))

    @property
    def _ttl(self) -> int:
        return max(1, round(self.timeout * 1000))

    def _key(self, key: bytes) -> bytes:
        return self.namespace + key

    # Reading

    def get(self, key: bytes) -> str | None | Deferred[str | None]:
        local = self._local.get(key)
        if not self.store.up:
            return local
        confirmed = self._confirmed.get(key)
        now = self.clock.seconds()
        if confirmed is not None and local is not None:
            if confirmed[0] == local and now - confirmed[1] < self.fresh:
                return local
        asked = self.store.call("GETEX", self._key(key), "PX", self._ttl)
        answer: Deferred[str | None] = Deferred(lambda _: timer.cancel())

        def known(value: bytes | None) -> None:
            name = self._learned(key, value)
            if not answer.called:
                timer.cancel()
                answer.callback(name)

        def failed(failure: Failure) -> None:
            if not answer.called:
                timer.cancel()
                answer.callback(local)

        def late() -> None:
            answer.callback(local)

        timer = self.clock.callLater(self.store.timeout, late)
        asked.addCallbacks(known, failed)
        return answer

    def _learned(self, key: bytes, value: bytes | None) -> str | None:
        """
        The store answered for C{key}: make the local view agree.
        """
        if value is None:
            self._local.forget(key)
            self._confirmed.pop(key, None)
            return None
        name = value.decode("utf-8", "replace")
        self._set_local(key, name)
        self._confirm(key, name)
        return name

    def _set_local(self, key: bytes, name: str) -> None:
        """
        Bind C{key} to C{name} locally, keeping its holds.
        """
        if self._local.get(key) is None:
            self._local.bind(key, name)
            self._local.release(key)
        else:
            self._local.refresh(key, name)

    def _confirm(self, key: bytes, name: str) -> None:
        self._confirmed[key] = (name, self.clock.seconds())
        self._confirmed.move_to_end(key)
        while len(self._confirmed) > self.size:
            self._confirmed.popitem(last=False)

    # Writing

    def bind(self, key: bytes, backend: str) -> None:
        self._local.bind(key, backend)
        self._write(key, backend)
        if self._keeper is None:
            self._keeper = _keeper(self)

    def _keep_alive(self) -> None:
        """
        Restart the TTL of every held binding in the store, writing again
        those it lost; the round stops when none is held.
        """
        held = list(self._local.held())
        if not held:
            if self._keeper is not None:
                self._keeper.stop()
                self._keeper = None
            return
        if not self.store.up:
            return  # every local binding is written back when it returns
        for key, backend in held:
            kept = self.store.call("PEXPIRE", self._key(key), self._ttl)
            kept.addCallbacks(self._kept, self._not_written, (key, backend))

    def _kept(self, reply: object, key: bytes, backend: str) -> None:
        if reply == 0:  # the store lost it: this proxy still uses it
            self.store.call(
                "SET", self._key(key), backend, "PX", self._ttl, "NX"
            ).addErrback(self._not_written)

    def refresh(self, key: bytes, backend: str) -> None:
        self._local.refresh(key, backend)
        self._write(key, backend, "XX")

    def release(self, key: bytes) -> None:
        self._local.release(key)
        backend = self._local.get(key)
        if backend is not None:
            self._write(key, backend)

    def forget(self, key: bytes) -> None:
        self._local.forget(key)
        self._confirmed.pop(key, None)
        if self.store.up:
            self.store.call("DEL", self._key(key)).addErrback(self._not_forgotten, key)
        else:
            self._keep_forgotten(key)

    def _write(self, key: bytes, backend: str, *condition: str) -> None:
        """
        Tell the store C{key} is bound to C{backend} now (restarting its
        TTL), unless it agreed less than L{FRESH} seconds ago.  While the
        store is down, the local binding is written back when it returns.
        """
        self._forgotten.pop(key, None)
        confirmed = self._confirmed.get(key)
        now = self.clock.seconds()
        if confirmed is not None and confirmed[0] == backend:
            if now - confirmed[1] < self.fresh:
                return
        if not self.store.up:
            return
        written = self.store.call(
            "SET", self._key(key), backend, "PX", self._ttl, *condition
        )
        written.addCallbacks(self._written, self._not_written, (key, backend))

    def _written(self, reply: object, key: bytes, backend: str) -> None:
        if reply is not None:  # None: "XX" found no binding to move
            self._confirm(key, backend)

    def _not_written(self, failure: Failure) -> None:
        # The store was lost meanwhile: the local binding is written back
        # when it returns.
        pass

    def _not_forgotten(self, failure: Failure, key: bytes) -> None:
        self._keep_forgotten(key)

    def _keep_forgotten(self, key: bytes) -> None:
        self._forgotten[key] = None
        self._forgotten.move_to_end(key)
        while len(self._forgotten) > self.size:
            self._forgotten.popitem(last=False)

    def _write_back(self) -> None:
        """
        The store is (back) up: delete what was forgotten meanwhile, and
        write every local binding the store does not have.
        """
        self._confirmed.clear()
        forgotten, self._forgotten = self._forgotten, OrderedDict()
        for key in forgotten:
            self.store.call("DEL", self._key(key)).addErrback(self._not_forgotten, key)
        now = self.clock.seconds()
        for entry in self._local.entries():
            left = self.timeout if entry.expires is None else entry.expires - now
            self.store.call(
                "SET",
                self._key(entry.key),
                entry.backend,
                "PX",
                max(1, round(left * 1000)),
                "NX",
            ).addErrback(self._not_written)

    # The local view

    def count(self, backend: str) -> int:
        return self._local.count(backend)

    def __len__(self) -> int:
        return len(self._local)

    def entries(self) -> Iterator[TableEntry]:
        return self._local.entries()

    def clear(self) -> None:
        """
        Forget every binding, here and in the store (for every proxy).
        """
        self._local.clear()
        self._confirmed.clear()
        if self.store.up:
            Deferred.fromCoroutine(self._clear_store()).addErrback(
                lambda failure: self.log.failure(
                    "clearing the shared table {namespace} failed",
                    failure,
                    namespace=self.namespace,
                )
            )

    async def _clear_store(self) -> None:
        pattern = _glob_escape(self.namespace) + b"*"
        cursor: Any = b"0"
        while True:
            cursor, keys = await self.store.call(
                "SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT
            )
            if keys:
                await self.store.call("DEL", *keys)
            if cursor in (b"0", 0, "0"):
                return


@implementer(IStickTableStore)
@attrs.frozen
class RedisTables:
    """
    The stick tables of one frontend's strategies in the shared store: each
    under C{PREFIX:table:FRONTEND:NAME:}.
    """

    store: ISharedStore
    clock: IReactorTime
    frontend: str

    def table(self, name: str, timeout: float, size: int) -> RedisStickTable:
        namespace = self.store.key("table", self.frontend, name, "")
        return RedisStickTable(
            self.store, self.clock, namespace.encode("utf-8"), timeout, size
        )
