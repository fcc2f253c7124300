"""
C{strategy = "source-ip"}: affinity on the client's (masked) address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin

from stickyproxy.config import _bounds as bounds
from stickyproxy.config._options import OptionReader
from stickyproxy.core._addresses import IPNetwork, client_ip, forwarded_client
from stickyproxy.interfaces import (
    IBackendPool,
    IHTTPRoutingContext,
    IPersistenceStrategy,
    IProxySecrets,
    IRoutingContext,
    IStickTableStore,
    IStoreStrategyFactory,
)
from stickyproxy.persistence._affinity import read_affinity
from stickyproxy.persistence._secrets import StoreFactory


@lru_cache(maxsize=65536)
def masked_address(host: str, mask: int, mask6: int) -> bytes:
    """
    The packed network address of C{host} under a prefix length: the
    affinity key of source-ip persistence.  IPv4-mapped IPv6 addresses count
    as IPv4; a host that is not an IP address (a UNIX socket peer) is used
    as it is.
    """
    ip = client_ip(host)
    if ip is None:
        return host.encode("utf-8", "replace")
    bits = mask if ip.version == 4 else mask6
    network = ipaddress.ip_network((ip, bits), strict=False)
    return network.network_address.packed


def client_address(
    context: IRoutingContext, trusted: tuple[IPNetwork, ...] = ()
) -> str:
    """
    The client address source-ip persistence keys on: the context's client
    (on HTTP, already found behind the frontend's C{trusted_proxies}), or,
    on an HTTP context with source-ip's own C{trusted} networks, the client
    behind those, found the same way (L{forwarded_client}).
    """
    if trusted and IHTTPRoutingContext.providedBy(context):
        return forwarded_client(context, trusted)
    return context.client_host  # type: ignore[no-any-return]


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

    def text(self, key: bytes) -> str:
        """
        :returns: the (masked) address a key holds, e.g. C{"10.1.2.0"}.
        """
        if len(key) in (4, 16):
            return str(ipaddress.ip_address(key))
        return key.decode("utf-8", "replace")  # a UNIX socket peer

    def parse(self, text: str) -> bytes:
        """
        :returns: the key of a client address (masked as clients' are).
        :raises ValueError: C{text} is not an IP address.
        """
        if client_ip(text) is None:
            raise ValueError(f"expected an IP address, got {text!r}")
        return masked_address(text, self.mask, self.mask6)


@implementer(IPlugin, IStoreStrategyFactory)
@attrs.frozen
class SourceIPFactory(StoreFactory):
    """
    C{strategy = "source-ip"}: affinity on the client's (masked) address.

    On HTTP frontends, C{trusted_proxies} (addresses or CIDR networks) makes
    the client the right-most C{X-Forwarded-For} hop that is not one of
    them, when the request comes from one of them.
    """

    name: str = "source-ip"
    modes: frozenset[str] = frozenset({"tcp", "http"})
    description: str = "the client's IP address, masked; consistent hash or table"

    def build_stored(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
        tables: IStickTableStore | None,
    ) -> IPersistenceStrategy:
        with OptionReader(options, path) as reader:
            key = SourceIPKey(
                mask=reader.integer("mask", 32, bounds=bounds.IPV4_MASK),
                mask6=reader.integer("mask6", 64, bounds=bounds.IPV6_MASK),
                trusted=reader.networks("trusted_proxies"),
            )
            return read_affinity(self.name, reader, pool, reactor, key, tables)


source_ip = SourceIPFactory()
