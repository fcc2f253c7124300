"""
Client addresses: peers, trusted proxy networks, the real client behind
them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


from twisted.internet.interfaces import (
    IAddress,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def in_networks(host: str, networks: Sequence[IPNetwork]) -> bool:
    """
    :returns: whether C{host} is an IP address inside one of C{networks}.
    """
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def real_client(
    peer_host: str, forwarded_for: Sequence[bytes], trusted: Sequence[IPNetwork]
) -> str:
    """
    The client behind a chain of trusted proxies: when the peer is trusted,
    the right-most address of C{X-Forwarded-For} that is not trusted (or
    the left-most, if all are); otherwise the peer itself, since anyone
    can write the header.
    """
    if not in_networks(peer_host, trusted):
        return peer_host
    hops = [hop.decode("latin-1") for hop in forwarded_for]
    for hop in reversed(hops):
        host = _strip_port(hop)
        if not in_networks(host, trusted):
            return host
    return _strip_port(hops[0]) if hops else peer_host


def _strip_port(hop: str) -> str:
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def client_host(address: IAddress) -> tuple[str, int]:
    """
    The host and port routing uses for a peer address (a UNIX socket peer
    has no port, and its path, possibly empty, stands for the host).
    """
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host, int(getattr(address, "port", 0) or 0)
    name = getattr(address, "name", None)
    return (
        name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")
    ), 0
