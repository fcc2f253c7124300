"""
How backends are reached: their addresses as client endpoints, and
quiet, no-delay connections to them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
)
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory


def connect_endpoint(
    reactor: object, address: str, timeout: float
) -> IStreamClientEndpoint:
    """
    Make the client endpoint for a backend address.

    :param address: C{host:port}, C{[v6]:port}, or any Twisted client
        endpoint string (C{tcp:host=...:port=...}, C{unix:path=...}).
    :param timeout: the connect timeout in seconds.
    :raises ValueError: the address cannot be parsed.
    """
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host and "=" not in address:
        if host.startswith("[") and host.endswith("]"):
            return TCP6ClientEndpoint(reactor, host[1:-1], _port(port), timeout)
        if ":" not in host:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                return HostnameEndpoint(
                    reactor, host.encode("ascii"), _port(port), timeout
                )
            return TCP4ClientEndpoint(reactor, host, _port(port), timeout)
        if _is_ipv6(host) or _is_ipv6(address):
            raise ValueError("an IPv6 address needs brackets: [addr]:port")
    endpoint: IStreamClientEndpoint = clientFromString(reactor, address)
    return endpoint


class _OneConnection(Factory):
    """
    Builds one given protocol, without C{connectProtocol}'s log lines: one
    per backend connection is noise at any real rate.
    """

    noisy = False

    def __init__(self, protocol: IProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> IProtocol:  # type: ignore[override]
        return self._protocol


def no_delay(transport: object) -> None:
    """
    Send small writes at once (no Nagle), as HAProxy does on both sides: a
    request or a response head written apart from its body would otherwise
    wait for the peer's delayed ACK, about 40 ms each.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not a TCP socket after all (a UNIX socket)


def connect_quietly(
    endpoint: IStreamClientEndpoint, protocol: IProtocol
) -> Deferred[Any]:
    """
    Connect C{protocol} through C{endpoint}, like L{connectProtocol}, but
    without logging.
    """
    return endpoint.connect(_OneConnection(protocol))


def _port(text: str) -> int:
    number = int(text)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} is out of range")
    return number


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
