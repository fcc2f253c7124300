"""
The PROXY protocol: headers (v1 text, v2 binary) sent to backends so that
they see the real client address, and the receiving side for listeners
behind another load balancer (C{haproxy:} listen strings), which reads
them with L{ProxyHeaderParser}.
"""

from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache

from zope.interface import directlyProvides, implementer, providedBy

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from stickyproxy.core._addresses import IPAddress, client_host, ip_address
from stickyproxy.core._proxyparser import (
    V2_SIGNATURE,
    InvalidProxyHeader,
    ProxyHeaderParser,
    ProxyInfo,
)


def _hosts(source: IAddress, destination: IAddress) -> tuple[str, str, int, int] | None:
    """
    The hosts and ports of two TCP/IP addresses, or C{None} when either is
    not one.
    """
    if isinstance(source, IPv4Address | IPv6Address) and isinstance(
        destination, IPv4Address | IPv6Address
    ):
        return source.host, destination.host, source.port, destination.port
    return None


def _same_family(source: str, destination: str) -> tuple[IPAddress, IPAddress] | None:
    """
    Both hosts as addresses of one family; C{None} when either is not an
    IP address.
    """
    src, dst = ip_address(source), ip_address(destination)
    if src is None or dst is None:
        return None
    if src.version != dst.version:
        # e.g. an IPv4 client on a dual-stack listener: map both to IPv6
        src = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        dst = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
    return src, dst


# What a header holds but the ports, per pair of hosts: parsing and
# formatting addresses costs tens of microseconds, and a client comes back.
_PAIRS = 4096


@lru_cache(maxsize=_PAIRS)
def _v1_start(source: str, destination: str) -> bytes:
    """
    A v1 header up to its ports, or nothing: a host is not an IP address.
    """
    addresses = _same_family(source, destination)
    if addresses is None:
        return b""
    src, dst = addresses
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} ".encode("ascii")


@lru_cache(maxsize=_PAIRS)
def _v2_start(source: str, destination: str) -> bytes:
    """
    A v2 header up to its ports, or nothing: a host is not an IP address.
    """
    addresses = _same_family(source, destination)
    if addresses is None:
        return b""
    src, dst = addresses
    family = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
    length = 2 * len(src.packed) + 4  # the ports follow
    return (
        V2_SIGNATURE
        + struct.pack("!BBH", 0x21, family, length)
        + src.packed
        + dst.packed
    )


def v1_header(source: IAddress, destination: IAddress) -> bytes:
    """
    The text header: C{PROXY TCP4 src dst sport dport\\r\\n}, or
    C{PROXY UNKNOWN\\r\\n} when the client is not on TCP/IP.
    """
    hosts = _hosts(source, destination)
    if hosts is not None:
        src, dst, sport, dport = hosts
        start = _v1_start(src, dst)
        if start:
            return b"%s%d %d\r\n" % (start, sport, dport)
    return b"PROXY UNKNOWN\r\n"


def v2_header(source: IAddress, destination: IAddress) -> bytes:
    """
    The binary header (version 2, command PROXY, over TCP), or a LOCAL
    header with no addresses when the client is not on TCP/IP.
    """
    hosts = _hosts(source, destination)
    if hosts is not None:
        src, dst, sport, dport = hosts
        start = _v2_start(src, dst)
        if start:
            return start + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + b"\x20\x00\x00\x00"


HEADERS = {"v1": v1_header, "v2": v2_header}


@implementer(IHalfCloseableProtocol)
class ProxyHeaderReceiver(ProtocolWrapper):
    """
    Reads the PROXY header a load balancer in front sends, then hands the
    connection on with C{getPeer}/C{getHost} naming the real client.

    Unlike Twisted's own wrapper, the wrapped protocol is connected only
    once the header has been read, so its C{connectionMade} already sees
    the real client (affinity is decided there), and half-closes are passed
    through.  A client that has not sent its header within the factory's
    C{timeout} is closed: a silent one must not hold its socket forever.
    """

    factory: ProxyHeaderWrappingFactory
    _timer: IDelayedCall | None = None

    _info: ProxyInfo | None = None
    _parser: ProxyHeaderParser

    def makeConnection(self, transport: ITransport) -> None:
        directlyProvides(self, IHalfCloseableProtocol, providedBy(transport))
        self._parser = ProxyHeaderParser()
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(
            self.factory.timeout, self._header_too_late
        )

    def _header_too_late(self) -> None:
        self._timer = None
        self._refuse(
            "no PROXY header within {timeout:g} s", timeout=self.factory.timeout
        )

    def _refuse(self, why: str, **fields: object) -> None:
        """
        Close a connection that brought no PROXY header, and say so once: a
        load balancer that sends none is a setup mistake, not a silence.
        """
        self.factory.log.info(
            "{listener}: closed {client}: " + why,
            listener=self.factory.logPrefix(),
            client=client_host(self.transport.getPeer())[0],  # type: ignore[union-attr]
            **fields,
        )
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        if self._info is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        try:
            parsed = self._parser.feed(data)
        except InvalidProxyHeader as error:
            self._stop_timer()
            self._refuse("no valid PROXY header ({reason})", reason=str(error))
            return
        if parsed is None:
            return
        self._info, rest = parsed
        self._stop_timer()
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def getPeer(self) -> IAddress:
        if self._info is not None and self._info.source is not None:
            return self._info.source
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> IAddress:
        if self._info is not None and self._info.destination is not None:
            return self._info.destination
        return self.transport.getHost()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        if self._info is not None and IHalfCloseableProtocol.providedBy(
            self.wrappedProtocol
        ):
            self.wrappedProtocol.readConnectionLost()
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        if self._info is not None and IHalfCloseableProtocol.providedBy(
            self.wrappedProtocol
        ):
            self.wrappedProtocol.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        if self._info is None:
            self.factory.unregisterProtocol(self)  # never handed on
            return
        super().connectionLost(reason)


def inner_prefix(factory: IProtocolFactory, default: str) -> str:
    """
    :returns: the log prefix of C{factory}, or C{default}: a wrapping
        factory's log lines are those of the listener it wraps.
    """
    prefix = getattr(factory, "logPrefix", None)
    return str(prefix()) if prefix is not None else default


class ProxyHeaderWrappingFactory(WrappingFactory):
    """
    Wraps a factory so its protocols first read a PROXY header, within
    C{timeout} seconds of C{clock}.
    """

    protocol = ProxyHeaderReceiver
    noisy = False
    log = Logger()

    def __init__(
        self, wrappedFactory: IProtocolFactory, clock: IReactorTime, timeout: float
    ) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.timeout = timeout

    def logPrefix(self) -> str:
        return inner_prefix(self.wrappedFactory, "PROXY header listener")
