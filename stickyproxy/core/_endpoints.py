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

from stickyproxy.core._addresses import ip_address


def host_port(address: str) -> tuple[str, int] | None:
    """
    The host and port of a backend address in the short form, C{host:port}
    or C{[v6]:port} (the host without its brackets).

    :returns: C{None} for any other form: a Twisted client endpoint string.
    :raises ValueError: the port is out of range, or an IPv6 address has
        no brackets.
    """
    host, sep, port = address.rpartition(":")
    if not (sep and port.isdigit() and host and "=" not in address):
        return None
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1], _port(port)
    if ":" not in host:
        return host, _port(port)
    if _is_ipv6(host) or _is_ipv6(address):
        raise ValueError("an IPv6 address needs brackets: [addr]:port")
    return None  # a positional endpoint string: tcp:10.0.0.5:80


def connect_endpoint(
    reactor: object, address: str, timeout: float
) -> IStreamClientEndpoint:
    """
    Make the client endpoint for a backend address.

    A literal IP address gets a plain TCP endpoint, chosen once: no name
    is resolved per connection.  Its connects have no timer of their own
    (the connector's): whoever connects times them, as the router does
    with the pool's C{connect_timeout}, so a connection costs one timer.

    :param address: C{host:port}, C{[v6]:port}, or any Twisted client
        endpoint string (C{tcp:host=...:port=...}, C{unix:path=...}).
    :param timeout: the connect timeout in seconds of a host name's
        endpoint (each attempt of a name with several addresses).
    :raises ValueError: the address cannot be parsed.
    """
    parts = host_port(address)
    if parts is None:
        endpoint: IStreamClientEndpoint = clientFromString(reactor, address)
        return endpoint
    host, port = parts
    # timeout=None: the connector schedules no call (TCP4ClientEndpoint's
    # annotation says float; the connector checks for None).
    if address.startswith("["):
        return TCP6ClientEndpoint(reactor, host, port, None)
    if isinstance(ip_address(host), ipaddress.IPv4Address):
        return TCP4ClientEndpoint(reactor, host, port, None)  # type: ignore[arg-type]
    return HostnameEndpoint(reactor, host.encode("ascii"), port, timeout)


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
    return isinstance(ip_address(text), ipaddress.IPv6Address)
