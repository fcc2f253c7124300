"""
The strategy registry and the built-in strategies that fit L4.

Built-ins are found exactly as third-party strategies are: through
L{twisted.plugin.getPlugins}, from C{twisted/plugins/stickyproxy_strategies.py}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from types import ModuleType

import attrs
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins

from ._affinity import StickTable
from ._backends import Backend
from ._balancers import rendezvous_order
from ._httpcontext import IHTTPRoutingContext, real_client
from ._options import ConfigError, IPNetwork, OptionReader
from .interfaces import (
    IBackendPool,
    IPersistenceStrategy,
    IPersistenceStrategyFactory,
    IRoutingContext,
    IStickTable,
)

log = Logger()


@lru_cache(maxsize=65536)
def masked_address(host: str, mask: int, mask6: int) -> bytes:
    """
    The packed network address of C{host} under a prefix length: the
    affinity key of source-ip persistence.  IPv4-mapped IPv6 addresses count
    as IPv4; a host that is not an IP address (a UNIX socket peer) is used
    as it is.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.encode("utf-8", "replace")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = mask if ip.version == 4 else mask6
    network = ipaddress.ip_network((ip, bits), strict=False)
    return network.network_address.packed


def client_address(
    context: IRoutingContext, trusted: tuple[IPNetwork, ...] = ()
) -> str:
    """
    The client address source-ip persistence keys on: the context's client,
    or, on an HTTP context with C{trusted} proxy networks, the right-most
    C{X-Forwarded-For} address that is not a trusted proxy (when the peer
    itself is one; see L{real_client}).
    """
    if trusted and IHTTPRoutingContext.providedBy(context):
        host: str = real_client(
            context.peer_host, context.header_values(b"x-forwarded-for"), trusted
        )
        return host
    return context.client_host  # type: ignore[no-any-return]


AffinityKey = Callable[[IRoutingContext], "bytes | None"]


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

    def lookup(self, context: IRoutingContext) -> Backend | None:
        key = self.key(context)
        if key is None:
            return None
        candidates: Sequence[Backend] = self.pool.backends
        tried = context.tried
        if tried:
            candidates = [b for b in candidates if b not in tried]
        order = rendezvous_order(key, candidates)
        return order[0] if order else None

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        pass

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


@implementer(IPersistenceStrategy)
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
    key: AffinityKey

    def lookup(self, context: IRoutingContext) -> Backend | None:
        key = self.key(context)
        name = None if key is None else self.table.get(key)
        return None if name is None else self.pool.get(name)

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        key = self.key(context)
        if key is not None:
            self.table.bind(key, backend.name)

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        key = self.key(context)
        if key is not None:
            self.table.release(key)


@attrs.frozen
class SourceIPKey:
    """
    The key of source-ip persistence: the client's masked address.
    """

    mask: int = 32
    mask6: int = 64
    trusted: tuple[IPNetwork, ...] = ()

    def __call__(self, context: IRoutingContext) -> bytes:
        return masked_address(
            client_address(context, self.trusted), self.mask, self.mask6
        )


def read_affinity(
    name: str,
    reader: OptionReader,
    pool: IBackendPool,
    clock: IReactorTime,
    key: AffinityKey,
) -> IPersistenceStrategy:
    """
    Read C{mode} (C{"hash"}, the default, or C{"table"} with the table
    options) and make the affinity strategy on C{key} it names.
    """
    if reader.string("mode", "hash", choices=("hash", "table")) == "hash":
        return HashAffinity(name, pool, key)
    table = read_table_options(reader, clock)
    pool.add_session_source(table.count)
    return TableAffinity(name, pool, table, key)


def read_table_options(reader: OptionReader, clock: IReactorTime) -> StickTable:
    """
    Read the stick-table options every table-backed strategy shares:
    C{timeout} (idle seconds, default 1800) and C{size} (default 100000).
    """
    timeout = reader.number("timeout", 1800.0, positive=True)
    size = reader.integer("size", 100_000, minimum=1)
    return StickTable(clock=clock, timeout=timeout, size=size)


@implementer(IPlugin, IPersistenceStrategyFactory)
@attrs.frozen
class SourceIPFactory:
    """
    C{strategy = "source-ip"}: affinity on the client's (masked) address.

    On HTTP frontends, C{trusted_proxies} (addresses or CIDR networks) makes
    the client the right-most C{X-Forwarded-For} hop that is not one of
    them, when the request comes from one of them.
    """

    name: str = "source-ip"
    modes: frozenset[str] = frozenset({"tcp", "http"})
    description: str = "the client's IP address, masked; consistent hash or table"

    def build(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        reader = OptionReader(options, path)
        key = SourceIPKey(
            mask=reader.integer("mask", 32, minimum=0, maximum=32),
            mask6=reader.integer("mask6", 64, minimum=0, maximum=128),
            trusted=reader.networks("trusted_proxies"),
        )
        strategy = read_affinity(self.name, reader, pool, reactor, key)
        reader.finish()
        return strategy


source_ip = SourceIPFactory()


def _origin(plugin: object) -> str:
    return getattr(plugin, "__module__", None) or type(plugin).__module__


@attrs.define(eq=False)
class StrategyRegistry:
    """
    Persistence strategy factories by name.

    Built from plugins with L{from_plugins}; a plugin that does not provide
    the interface correctly is logged and skipped, and a name offered twice
    is kept by the built-in that owns it, or, between two third parties,
    refused when used (it would be a coin toss which one runs).
    """

    _factories: dict[str, IPersistenceStrategyFactory] = attrs.field(factory=dict)
    _conflicts: dict[str, list[str]] = attrs.field(factory=dict)

    @classmethod
    def from_plugins(cls, package: ModuleType | None = None) -> StrategyRegistry:
        """
        Load every L{IPersistenceStrategyFactory} plugin.

        :param package: the plugin package to search; C{twisted.plugins}
            when C{None}.
        """
        return cls.of(getPlugins(IPersistenceStrategyFactory, package))

    @classmethod
    def of(cls, factories: Iterable[IPersistenceStrategyFactory]) -> StrategyRegistry:
        """
        Build a registry from factories, checking each one.
        """
        registry = cls()
        for factory in factories:
            registry.add(factory)
        return registry

    def add(self, factory: IPersistenceStrategyFactory) -> None:
        """
        Register one factory, or log why it cannot be.
        """
        origin = _origin(factory)
        try:
            verifyObject(IPersistenceStrategyFactory, factory)
            if not (isinstance(factory.name, str) and factory.name):
                raise Invalid("its name is not a non-empty string")
            if factory.name != factory.name.lower():
                raise Invalid(f"its name {factory.name!r} is not lowercase")
            if not set(factory.modes) <= {"tcp", "http"}:
                raise Invalid(f"its modes {sorted(factory.modes)} are not tcp/http")
        except Invalid as error:
            log.error(
                "skipping persistence strategy plugin from {origin}: {reason}",
                origin=origin,
                reason=str(error).strip(),
            )
            return
        name = factory.name
        existing = self._factories.get(name)
        if existing is None and name not in self._conflicts:
            self._factories[name] = factory
            return
        builtin = [f for f in (existing, factory) if f is not None and _is_builtin(f)]
        if builtin:
            self._factories[name] = builtin[0]
            log.warn(
                "ignoring persistence strategy {strategy!r} from {origin}: "
                "the name belongs to a built-in strategy",
                strategy=name,
                origin=_origin(factory if builtin[0] is not factory else existing),
            )
            return
        origins = self._conflicts.setdefault(
            name, [_origin(existing)] if existing is not None else []
        )
        origins.append(origin)
        self._factories.pop(name, None)
        log.error(
            "persistence strategy {strategy!r} is provided by several plugins "
            "({origins}); it cannot be used until one is removed",
            strategy=name,
            origins=", ".join(origins),
        )

    def names(self) -> list[str]:
        """
        :returns: the usable strategy names, sorted.
        """
        return sorted(self._factories)

    def get(self, name: str, path: str) -> IPersistenceStrategyFactory:
        """
        Find a factory by name.

        :param path: the config key naming it, for the error.
        :raises ConfigError: no usable strategy has that name.
        """
        factory = self._factories.get(name)
        if factory is not None:
            return factory
        if name in self._conflicts:
            raise ConfigError(
                path,
                f"strategy {name!r} is provided by several plugins "
                f"({', '.join(self._conflicts[name])}); remove all but one",
            )
        raise ConfigError(
            path,
            f"expected one of the registered strategies ({', '.join(self.names())}), "
            f"got {name!r}",
        )


def _is_builtin(factory: object) -> bool:
    return _origin(factory).startswith("stickyproxy.")
