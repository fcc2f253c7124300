"""
Client addresses: peers, trusted proxy networks, the real client behind
them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress

if TYPE_CHECKING:
    from stickyproxy.interfaces import IHTTPRoutingContext

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_address(host: str) -> IPAddress | None:
    """
    The IP address a host string names, without an IPv6 zone (C{%eth0}).

    :returns: C{None} when C{host} is not an IP address (a host name, or a
        UNIX socket peer's path).
    """
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def client_ip(host: str) -> IPAddress | None:
    """
    The IP address of a client host string, as routing compares it: like
    L{ip_address}, with an IPv4-mapped IPv6 address (an IPv4 client of a
    dual-stack listener, C{::ffff:10.0.0.1}) as the IPv4 address it maps.
    """
    ip = ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(host: str, networks: Sequence[IPNetwork]) -> bool:
    """
    :returns: whether C{host} is an IP address inside one of C{networks}.
    """
    if not networks:
        return False
    ip = client_ip(host)
    return ip is not None and any(ip in network for network in networks)


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


def forwarded_client(context: IHTTPRoutingContext, trusted: Sequence[IPNetwork]) -> str:
    """
    The client of an HTTP request behind the C{trusted} proxies: its peer,
    or, when the peer is one of them, the client its C{X-Forwarded-For}
    names (see L{real_client}).  The frontend's C{trusted_proxies} and
    source-ip's both find the client here.
    """
    return real_client(
        context.peer_host, context.header_values(b"x-forwarded-for"), trusted
    )


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
