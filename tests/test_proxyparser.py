"""
Tests for L{stickyproxy.core._proxyparser}: reading PROXY headers.
"""

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from stickyproxy.core._proxyheader import v1_header, v2_header
from stickyproxy.core._proxyparser import (
    V2_SIGNATURE,
    InvalidProxyHeader,
    ProxyHeaderParser,
    ProxyInfo,
)

from tests._base import TestCase

V4_SOURCE = IPv4Address("TCP", "203.0.113.5", 4000)
V4_DESTINATION = IPv4Address("TCP", "192.0.2.9", 7000)


def v2(command: int, family: int, block: bytes) -> bytes:
    """
    A v2 header with the given command, family/transport byte and block.
    """
    return (
        V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(block)) + block
    )


def feed_all(data: bytes, step: int | None = None) -> tuple[ProxyInfo, bytes]:
    """
    Feed C{data} to a new parser, C{step} bytes at a time (all at once by
    default), and return what it read; fail if it never completes.
    """
    parser = ProxyHeaderParser()
    step = step or len(data) or 1
    for start in range(0, len(data), step):
        result = parser.feed(data[start : start + step])
        if result is not None:
            info, rest = result
            return info, rest + data[start + step :]
    raise AssertionError(f"incomplete header: {data!r}")


def ip_addresses(version: int) -> st.SearchStrategy[str]:
    """
    IP addresses of one version, as canonical strings.
    """
    kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    bits = 32 if version == 4 else 128
    return st.integers(0, 2**bits - 1).map(lambda n: str(kind(n)))


class RoundTripTests(TestCase):
    """
    What our writers send, the parser reads back.
    """

    def test_v1_ipv4(self) -> None:
        """
        A v1 TCP4 line gives back both IPv4 addresses and ports.
        """
        info, rest = feed_all(v1_header(V4_SOURCE, V4_DESTINATION))
        self.assertEqual(info, ProxyInfo(V4_SOURCE, V4_DESTINATION))
        self.assertEqual(rest, b"")

    def test_v2_ipv4(self) -> None:
        """
        A v2 PROXY header over TCP/IPv4 gives back both addresses and ports.
        """
        info, rest = feed_all(v2_header(V4_SOURCE, V4_DESTINATION))
        self.assertEqual(info, ProxyInfo(V4_SOURCE, V4_DESTINATION))
        self.assertEqual(rest, b"")

    def test_v2_ipv6_canonical(self) -> None:
        """
        IPv6 addresses from a v2 header are written the canonical way, so
        they compare equal to the client's own address string.
        """
        source = IPv6Address("TCP", "2001:db8::7", 1234)
        destination = IPv6Address("TCP", "::1", 443)
        info, _ = feed_all(v2_header(source, destination))
        self.assertEqual(info, ProxyInfo(source, destination))

    def test_unknown(self) -> None:
        """
        v1 C{UNKNOWN} and v2 C{LOCAL} name no addresses: the connection's
        own stand.
        """
        src, dst = UNIXAddress(b"/a"), UNIXAddress(b"/b")
        for header in v1_header(src, dst), v2_header(src, dst):
            self.assertEqual(feed_all(header + b"x"), (ProxyInfo(None, None), b"x"))

    def test_v1_unknown_ignores_rest(self) -> None:
        """
        Whatever follows C{UNKNOWN} on a v1 line is ignored, as the spec
        says a receiver must.
        """
        line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
        self.assertEqual(feed_all(line), (ProxyInfo(None, None), b""))

    @given(
        version=st.sampled_from([4, 6]),
        data=st.data(),
        ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
        write=st.sampled_from([v1_header, v2_header]),
        after=st.binary(max_size=20),
        step=st.integers(1, 40),
    )
    def test_round_trip(self, version, data, ports, write, after, step) -> None:
        """
        Any TCP addresses and ports, written in either version and fed in
        pieces of any size, read back as they were, and the bytes after
        the header are handed on.
        """
        hosts = data.draw(st.tuples(ip_addresses(version), ip_addresses(version)))
        address = IPv4Address if version == 4 else IPv6Address
        source = address("TCP", hosts[0], ports[0])
        destination = address("TCP", hosts[1], ports[1])
        info, rest = feed_all(write(source, destination) + after, step)
        self.assertEqual(info, ProxyInfo(source, destination))
        self.assertEqual(rest, after)


class IncrementalTests(TestCase):
    """
    Headers arrive in pieces; what follows them belongs to the connection.
    """

    def test_byte_at_a_time(self) -> None:
        """
        Fed one byte at a time, the parser answers nothing until the last
        byte of the header, then the header.
        """
        for header in (
            v1_header(V4_SOURCE, V4_DESTINATION),
            v2_header(V4_SOURCE, V4_DESTINATION),
        ):
            parser = ProxyHeaderParser()
            for byte in header[:-1]:
                self.assertIsNone(parser.feed(bytes([byte])))
            self.assertEqual(
                parser.feed(header[-1:]), (ProxyInfo(V4_SOURCE, V4_DESTINATION), b"")
            )

    def test_rest_handed_on(self) -> None:
        """
        Bytes after the header, in the same piece, are handed back whole.
        """
        parser = ProxyHeaderParser()
        header = v1_header(V4_SOURCE, V4_DESTINATION)
        self.assertIsNone(parser.feed(header[:10]))
        result = parser.feed(header[10:] + b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(
            result, (ProxyInfo(V4_SOURCE, V4_DESTINATION), b"GET / HTTP/1.1\r\n\r\n")
        )

    def test_refused_early(self) -> None:
        """
        A connection that cannot start a header is refused at its first
        wrong byte, without waiting for more.
        """
        for data in b"G", b"PROXZ", b"\r\n\r\n\x01", b"PROXY\r":
            self.assertRaises(InvalidProxyHeader, ProxyHeaderParser().feed, data)

    def test_v2_tlvs_skipped(self) -> None:
        """
        TLVs after the addresses (counted in the length) are skipped, and
        the bytes after them handed on.
        """
        block = struct.pack("!4s4sHH", bytes([10, 0, 0, 1]), bytes(4), 5, 6)
        tlv = b"\x04\x00\x03abc"
        info, rest = feed_all(v2(1, 0x11, block + tlv) + b"data", 3)
        self.assertEqual(info.source, IPv4Address("TCP", "10.0.0.1", 5))
        self.assertEqual(rest, b"data")

    def test_v2_unix(self) -> None:
        """
        A v2 header over UNIX sockets gives UNIX addresses, without their
        NUL padding.
        """
        block = struct.pack("!108s108s", b"/run/client", b"/run/proxy")
        info, _ = feed_all(v2(1, 0x31, block))
        self.assertEqual(
            info, ProxyInfo(UNIXAddress(b"/run/client"), UNIXAddress(b"/run/proxy"))
        )

    def test_v2_local(self) -> None:
        """
        A v2 LOCAL header (a health check of the balancer in front) names
        no addresses, whatever its block holds.
        """
        info, rest = feed_all(v2(0, 0x11, bytes(12)) + b"ping")
        self.assertEqual((info, rest), (ProxyInfo(None, None), b"ping"))


class MalformedTests(TestCase):
    """
    Every malformed header is refused with L{InvalidProxyHeader}.
    """

    def assertRefused(self, data: bytes, why: str) -> None:
        """
        Fail unless C{data}, fed whole or a byte at a time, is refused with
        a message containing C{why}.
        """
        for step in len(data), 1:
            parser = ProxyHeaderParser()
            with self.assertRaises(InvalidProxyHeader) as caught:
                for start in range(0, len(data), step):
                    parser.feed(data[start : start + step])
            self.assertIn(why, str(caught.exception))

    def test_v1_overlong(self) -> None:
        """
        A v1 line longer than 107 bytes (CRLF included) is refused, even
        before its end arrives; one of exactly 107 is read.
        """
        longest = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
        self.assertEqual(len(longest), 107)
        self.assertEqual(feed_all(longest), (ProxyInfo(None, None), b""))
        self.assertRefused(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "longer than 107")
        self.assertRefused(b"PROXY UNKNOWN " + b"x" * 200, "longer than 107")

    def test_v1_bad_lines(self) -> None:
        """
        v1 lines with an unknown protocol, missing or extra fields, bad
        addresses (wrong family, scoped, not ASCII) or bad ports (out of
        range, signed, leading zero, empty) are refused.
        """
        for line, why in [
            (b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2", "protocol"),
            (b"PROXY ", "protocol"),
            (b"PROXY TCP4 1.2.3.4 1.2.3.5 1", "two addresses"),
            (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3", "two addresses"),
            (b"PROXY TCP4  1.2.3.4 1.2.3.5 1 2", "two addresses"),
            (b"PROXY TCP4 1.2.3.4 ::1 1 2", "address"),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2", "address"),
            (b"PROXY TCP6 fe80::1%eth0 ::1 1 2", "address"),
            (b"PROXY TCP4 1.2.3.256 1.2.3.5 1 2", "address"),
            (b"PROXY TCP4 01.2.3.4 1.2.3.5 1 2", "address"),
            (b"PROXY TCP4 1.2.3.\xff 1.2.3.5 1 2", "address"),
            (b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 2", "port"),
            (b"PROXY TCP4 1.2.3.4 1.2.3.5 +1 2", "port"),
            (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 02", "port"),
            (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 ", "port"),
            (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 \xd9\xa1", "port"),
        ]:
            self.assertRefused(line + b"\r\n", why)

    def test_v2_bad_signature(self) -> None:
        """
        A header that starts like a v2 signature but departs from it is
        refused.
        """
        header = v2_header(V4_SOURCE, V4_DESTINATION)
        self.assertRefused(header[:11] + b"X" + header[12:], "signature")

    def test_v2_bad_version_or_command(self) -> None:
        """
        A v2 header of another version, or with a command other than LOCAL
        and PROXY, is refused as soon as its fixed part is in.
        """
        self.assertRefused(V2_SIGNATURE + b"\x11\x11\x00\x0c", "version 1")
        self.assertRefused(V2_SIGNATURE + b"\x22\x11\x00\x0c", "command 2")

    def test_v2_bad_family(self) -> None:
        """
        A PROXY header over datagrams, or of an unknown family, is refused;
        one whose length is too short for its family's addresses too.
        """
        block = bytes(12)
        self.assertRefused(v2(1, 0x12, block), "transport 2")
        self.assertRefused(v2(1, 0x41, block), "family 4")
        self.assertRefused(v2(1, 0x11, bytes(11)), "truncated")
        self.assertRefused(v2(1, 0x21, bytes(35)), "truncated")
        self.assertRefused(v2(1, 0x31, bytes(215)), "truncated")

    def test_v2_unspecified_family(self) -> None:
        """
        A PROXY header of unspecified family names no addresses: the spec
        says the receiver uses the connection's own.
        """
        self.assertEqual(feed_all(v2(1, 0x00, b"")), (ProxyInfo(None, None), b""))
