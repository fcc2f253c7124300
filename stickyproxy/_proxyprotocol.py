"""
PROXY protocol headers (v1 text, v2 binary) sent to backends, so that they
see the real client address.  Parsing the header from a load balancer in
front is Twisted's job (the C{haproxy:} endpoint).
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _ip(address: IAddress) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if isinstance(address, IPv4Address | IPv6Address):
        try:
            return ipaddress.ip_address(address.host.split("%", 1)[0])
        except ValueError:
            return None
    return None


def _same_family(
    source: IAddress, destination: IAddress
) -> (
    tuple[
        ipaddress.IPv4Address | ipaddress.IPv6Address,
        ipaddress.IPv4Address | ipaddress.IPv6Address,
        int,
        int,
    ]
    | None
):
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None:
        return None
    if src.version != dst.version:
        # e.g. an IPv4 client on a dual-stack listener: map both to IPv6
        src = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        dst = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
    assert isinstance(source, IPv4Address | IPv6Address)
    assert isinstance(destination, IPv4Address | IPv6Address)
    return src, dst, source.port, destination.port


def v1_header(source: IAddress, destination: IAddress) -> bytes:
    """
    The text header: C{PROXY TCP4 src dst sport dport\\r\\n}, or
    C{PROXY UNKNOWN\\r\\n} when the client is not on TCP/IP.
    """
    addresses = _same_family(source, destination)
    if addresses is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst, sport, dport = addresses
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def v2_header(source: IAddress, destination: IAddress) -> bytes:
    """
    The binary header (version 2, command PROXY, over TCP), or a LOCAL
    header with no addresses when the client is not on TCP/IP.
    """
    addresses = _same_family(source, destination)
    if addresses is None:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    src, dst, sport, dport = addresses
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    family = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


HEADERS = {"v1": v1_header, "v2": v2_header}
