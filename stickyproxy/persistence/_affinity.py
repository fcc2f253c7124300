"""
Affinity on a key taken from the client (its address, a header): hashed
over the backends (stateless) or learned in a stick table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from stickyproxy.config import _bounds as bounds
from stickyproxy.config._options import ConfigError, OptionReader
from stickyproxy.core._balancers import SET_CHANGES, rendezvous_first
from stickyproxy.interfaces import (
    IBackendPool,
    IPersistenceStrategy,
    IRoutingContext,
    IStickTable,
    IStickTableStore,
    IStickTableStrategy,
)
from stickyproxy.model import Backend, StateChange
from stickyproxy.persistence.tables._memory import StickTable

AffinityKey = Callable[[IRoutingContext], "bytes | None"]

#: How many keys a hash remembers the backend of.
HASHED_KEYS = 10_000


class TableKey(Protocol):
    """
    The key of a table-backed strategy: taken from a context, and shown to
    (and read from) operators as text.
    """

    def __call__(self, context: IRoutingContext) -> bytes | None:
        """
        :returns: the client's key, or C{None} when it has none.
        """

    def text(self, key: bytes) -> str:
        """
        :returns: a key as an operator reads it.
        """

    def parse(self, text: str) -> bytes:
        """
        :returns: the key an operator wrote.
        :raises ValueError: it cannot be one.
        """


@implementer(IPersistenceStrategy)
@attrs.define(eq=False)
class HashAffinity:
    """
    Stateless affinity: a key taken from the client (its masked address, a
    header) is hashed (rendezvous) over the pool's backends, so every proxy
    with the same backends agrees, and a backend that leaves moves only its
    clients.  It names the key's backend whatever its state (the router
    decides whether it may serve); backends in C{context.tried} are
    skipped, which gives the next choice in the key's order.

    :ivar key: the key of a context, or C{None} when it has none (the
        client is then not bound).
    """

    name: str
    pool: IBackendPool
    key: AffinityKey
    # The key's backend, for keys seen lately: a client comes back with the
    # same key, and its hashes (one per backend) need not be made again.
    # Dropped when the set of backends or a weight changes.
    _first: dict[bytes, Backend] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.pool.observe(self._pool_changed)

    def _pool_changed(self, change: StateChange) -> None:
        if change.kind in SET_CHANGES:
            self._first.clear()

    def lookup(self, context: IRoutingContext) -> Backend | None:
        key = self.key(context)
        if key is None:
            return None
        tried = context.tried
        if tried:
            return rendezvous_first(
                key, [b for b in self.pool.backends if b not in tried]
            )
        first = self._first.get(key)
        if first is None:
            first = rendezvous_first(key, self.pool.backends)
            if first is None:
                return None
            if len(self._first) >= HASHED_KEYS:
                self._first.clear()  # cheaper than LRU bookkeeping on every hit
            self._first[key] = first
        return first

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        pass

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


@implementer(IStickTableStrategy)
@attrs.define(eq=False)
class TableAffinity:
    """
    Learned affinity: the backend that first served a key (a masked
    address, a header value) is remembered in a stick table while the key
    has connections or requests open, and for the table's C{timeout} after
    the last one ends.
    """

    name: str
    pool: IBackendPool
    table: IStickTable
    key: TableKey

    def lookup(
        self, context: IRoutingContext
    ) -> Backend | None | Deferred[Backend | None]:
        key = self.key(context)
        name = None if key is None else self.table.get(key)
        if isinstance(name, str):
            return self.pool.get(name)
        return None if name is None else late_backend(self.pool, name)

    def key_text(self, key: bytes) -> str:
        return self.key.text(key)

    def key_bytes(self, text: str) -> bytes:
        return self.key.parse(text)

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        key = self.key(context)
        if key is not None:
            self.table.bind(key, backend.name)

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        key = self.key(context)
        if key is not None:
            self.table.release(key)


def late_backend(
    pool: IBackendPool, name: Deferred[str | None]
) -> Deferred[Backend | None]:
    """
    The backend of C{pool} that a stick table names once its store
    answered; C{None} for no name, or a name no backend has.
    """
    return name.addCallback(lambda late: None if late is None else pool.get(late))


def read_affinity(
    name: str,
    reader: OptionReader,
    pool: IBackendPool,
    clock: IReactorTime,
    key: TableKey,
    tables: IStickTableStore | None = None,
) -> IPersistenceStrategy:
    """
    Read C{mode} (C{"hash"}, the default, or C{"table"} with the table
    options) and make the affinity strategy on C{key} it names.
    """
    reader.elsewhere('expected only with mode = "table"', "store")
    if reader.string("mode", "hash", choices=("hash", "table")) == "hash":
        return HashAffinity(name, pool, key)
    table = read_table_options(reader, clock, pool, name, tables)
    return TableAffinity(name, pool, table, key)


def read_table_options(
    reader: OptionReader,
    clock: IReactorTime,
    pool: IBackendPool,
    name: str,
    tables: IStickTableStore | None = None,
) -> IStickTable:
    """
    Read the stick-table options every table-backed strategy shares:
    C{timeout} (idle seconds, default 1800), C{size} (default 100000), and
    C{store}: C{"memory"} (the default, this proxy's own) or C{"redis"}
    (shared with other proxies through C{tables}, the proxy's C{[store]}),
    and make the table, its bindings counted as C{pool}'s sessions.

    :param name: the strategy's name, which its shared keys start with.
    """
    timeout = reader.number("timeout", 1800.0, bounds=bounds.TABLE_TIMEOUT)
    size = reader.integer("size", 100_000, bounds=bounds.TABLE_SIZE)
    table: IStickTable
    if reader.string("store", "memory", choices=("memory", "redis")) == "memory":
        table = StickTable(clock=clock, timeout=timeout, size=size)
    elif tables is None:
        raise ConfigError(
            reader.key("store"),
            'expected "memory" when the proxy has no store: "redis" needs a '
            "[store] table with a url (store.url)",
        )
    else:
        table = tables.table(name, timeout, size)
    return pool.count_sessions(reader.path, table, timeout)
