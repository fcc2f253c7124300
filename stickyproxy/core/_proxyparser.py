"""
Reading a PROXY protocol header (v1 text or v2 binary), as a load
balancer in front of a C{haproxy:} listener sends it.

Our own, strict and incremental, rather than Twisted's private parsers:
a Twisted release may change those without notice.  The spec is
U{https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt}.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

#: The twelve bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: The longest v1 line, its CRLF included (a TCP6 line at full width).
V1_MAX_LENGTH = 107

_V1_PREFIX = b"PROXY "
_V2_FIXED = struct.Struct("!12sBBH")  # signature, version/command, family, length
_INET = struct.Struct("!4s4sHH")
_INET6 = struct.Struct("!16s16sHH")
_UNIX = struct.Struct("!108s108s")

Address = IPv4Address | IPv6Address | UNIXAddress


class InvalidProxyHeader(ValueError):
    """
    The connection did not start with a valid PROXY header; the message
    says what was wrong.
    """


@attrs.frozen
class ProxyInfo:
    """
    What a PROXY header says about the connection.

    :ivar source: the real client, or C{None} when the header does not say
        (v1 C{UNKNOWN}, v2 C{LOCAL} or an unspecified family): the
        connection's own peer then stands.
    :ivar destination: the address the client connected to, or C{None}
        likewise.
    """

    source: Address | None
    destination: Address | None


@attrs.define
class ProxyHeaderParser:
    """
    Reads one PROXY header, v1 or v2, from bytes as they arrive.  Once it
    has been read, the bytes after it are handed back and nothing is kept.
    """

    _buffer: bytes = b""

    def feed(self, data: bytes) -> tuple[ProxyInfo, bytes] | None:
        """
        Add bytes received.

        :returns: C{None} while the header is incomplete; then what it says
            and the bytes after it, which belong to the wrapped protocol.
        :raises InvalidProxyHeader: the bytes cannot start a valid header.
        """
        self._buffer += data
        buffer = self._buffer
        if buffer[:1] == V2_SIGNATURE[:1]:
            return self._v2(buffer)
        if buffer[: len(_V1_PREFIX)] == _V1_PREFIX[: len(buffer)]:
            return self._v1(buffer)
        raise InvalidProxyHeader("not a PROXY header")

    def _v1(self, buffer: bytes) -> tuple[ProxyInfo, bytes] | None:
        end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(buffer) >= V1_MAX_LENGTH:
                raise InvalidProxyHeader(f"v1 line longer than {V1_MAX_LENGTH} bytes")
            return None
        self._buffer = b""
        return parse_v1(buffer[:end]), buffer[end + 2 :]

    def _v2(self, buffer: bytes) -> tuple[ProxyInfo, bytes] | None:
        if buffer[: len(V2_SIGNATURE)] != V2_SIGNATURE[: len(buffer)]:
            raise InvalidProxyHeader("bad v2 signature")
        if len(buffer) < _V2_FIXED.size:
            return None
        _, version_command, _, length = _V2_FIXED.unpack_from(buffer)
        if version_command >> 4 != 2:
            raise InvalidProxyHeader(f"unknown version {version_command >> 4}")
        if version_command & 0x0F not in (0, 1):
            raise InvalidProxyHeader(f"unknown command {version_command & 0x0F}")
        end = _V2_FIXED.size + length
        if len(buffer) < end:
            return None
        self._buffer = b""
        return parse_v2(buffer[:end]), buffer[end:]


def parse_v1(line: bytes) -> ProxyInfo:
    """
    Read a v1 header line, without its CRLF.

    :raises InvalidProxyHeader: it is not a valid v1 line.
    """
    fields = line.split(b" ")
    if fields[:1] != [b"PROXY"] or len(fields) < 2:
        raise InvalidProxyHeader("v1 line does not start with PROXY")
    if fields[1] == b"UNKNOWN":
        return ProxyInfo(None, None)  # the rest of the line is to be ignored
    if fields[1] not in (b"TCP4", b"TCP6"):
        raise InvalidProxyHeader(f"unknown v1 protocol {fields[1]!r}")
    if len(fields) != 6:
        raise InvalidProxyHeader("v1 line needs two addresses and two ports")
    address = IPv4Address if fields[1] == b"TCP4" else IPv6Address
    kind = ipaddress.IPv4Address if fields[1] == b"TCP4" else ipaddress.IPv6Address
    source, destination = (_v1_ip(kind, text) for text in fields[2:4])
    source_port, destination_port = (_v1_port(text) for text in fields[4:6])
    return ProxyInfo(
        address("TCP", source, source_port),
        address("TCP", destination, destination_port),
    )


def _v1_ip(
    kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], text: bytes
) -> str:
    try:
        if b"%" in text:
            raise ValueError("a scope is not an address")
        return str(kind(text.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        raise InvalidProxyHeader(f"bad v1 address {text!r}") from None


def _v1_port(text: bytes) -> int:
    # Decimal, no sign or leading zero, at most 65535.
    if (
        not text.isdigit()
        or (len(text) > 1 and text.startswith(b"0"))
        or int(text) > 65535
    ):
        raise InvalidProxyHeader(f"bad v1 port {text!r}")
    return int(text)


def parse_v2(header: bytes) -> ProxyInfo:
    """
    Read a whole v2 header (its fixed part and as many bytes as its length
    says).  TLVs after the addresses are skipped.

    :raises InvalidProxyHeader: it is not a valid v2 header.
    """
    if len(header) < _V2_FIXED.size:
        raise InvalidProxyHeader("v2 header truncated")
    signature, version_command, family, length = _V2_FIXED.unpack_from(header)
    block = header[_V2_FIXED.size :]
    if signature != V2_SIGNATURE:
        raise InvalidProxyHeader("bad v2 signature")
    if version_command >> 4 != 2:
        raise InvalidProxyHeader(f"unknown version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise InvalidProxyHeader(f"unknown command {command}")
    if len(block) != length:
        raise InvalidProxyHeader("v2 header length does not match")
    if command == 0 or family >> 4 == 0:
        # LOCAL (the balancer's own health check), or PROXY over an
        # unspecified family: the connection's own addresses stand.
        return ProxyInfo(None, None)
    if family & 0x0F != 1:
        raise InvalidProxyHeader(f"unsupported v2 transport {family & 0x0F}")
    if family >> 4 == 1:
        return _v2_inet(IPv4Address, ipaddress.IPv4Address, _INET, block)
    if family >> 4 == 2:
        return _v2_inet(IPv6Address, ipaddress.IPv6Address, _INET6, block)
    if family >> 4 == 3:
        if len(block) < _UNIX.size:
            raise InvalidProxyHeader("v2 UNIX addresses truncated")
        source, destination = _UNIX.unpack_from(block)
        return ProxyInfo(
            UNIXAddress(source.rstrip(b"\0")), UNIXAddress(destination.rstrip(b"\0"))
        )
    raise InvalidProxyHeader(f"unknown v2 address family {family >> 4}")


def _v2_inet(
    address: type[IPv4Address] | type[IPv6Address],
    kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address],
    layout: struct.Struct,
    block: bytes,
) -> ProxyInfo:
    if len(block) < layout.size:
        raise InvalidProxyHeader("v2 addresses truncated")
    source, destination, source_port, destination_port = layout.unpack_from(block)
    return ProxyInfo(
        address("TCP", str(kind(source)), source_port),
        address("TCP", str(kind(destination)), destination_port),
    )
