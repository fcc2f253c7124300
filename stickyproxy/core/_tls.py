"""
TLS listeners (C{ssl:} endpoints): ALPN as the protocol factory says, and
failed handshakes in the log.

Twisted's server-side ALPN selection answers a client that offers ALPN
with an empty choice when the factory names no protocol it shares (and
C{internal_error} follows), and a failed handshake reaches nobody's log.
L{TLSListeningReactor} stands in for the reactor while an endpoint string
is listened on: each TLS listener it opens picks the first protocol of
the factory's L{IProtocolNegotiationFactory} list that the client offers,
else completes the handshake without ALPN (as HAProxy does), and logs each
failed handshake once.  A C{haproxy:} listener reads the PROXY header
before the handshake, since that is where load balancers send it, and
negotiates what the factory behind it speaks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from zope.interface import directlyProvides, implementer, providedBy

from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IListeningPort,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from stickyproxy.core._addresses import client_host
from stickyproxy.core._proxyheader import ProxyHeaderWrappingFactory, inner_prefix

log = Logger()

#: Seconds a TLS client has, by default, to complete its handshake.
HANDSHAKE_TIMEOUT = 10.0


def acceptable_protocols(factory: object) -> list[bytes]:
    """
    :returns: the ALPN protocols C{factory} speaks, most preferred first
        (none unless it provides L{IProtocolNegotiationFactory}).
    """
    negotiating = IProtocolNegotiationFactory(factory, None)
    return [] if negotiating is None else list(negotiating.acceptableProtocols())


def negotiate_alpn(context: SSL.Context, protocols: list[bytes]) -> None:
    """
    Make the server C{context} choose the first of C{protocols} that the
    client offers, or no protocol at all (the handshake goes on) when they
    share none.
    """

    def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(select)


def _tls_reason(reason: Failure) -> str:
    """
    :returns: what OpenSSL said went wrong (C{"http request"}, C{"no shared
        cipher"}, C{"tlsv1 alert unknown ca"}), or the failure's message.
    """
    error = reason.value
    if isinstance(error, SSL.Error):
        errors = error.args[0] if error.args else None
        if isinstance(errors, list) and errors:
            return "; ".join(str(error[-1]) for error in errors)
    return reason.getErrorMessage()


def _client(protocol: ProtocolWrapper) -> str:
    """
    :returns: what the handshake log lines call the client of C{protocol}.
    """
    return client_host(protocol.getPeer())[0] or "a client"


@implementer(IHandshakeListener)
class _HandshakeWatcher(ProtocolWrapper):
    """
    Sits right inside the TLS layer, and logs the connection's end if its
    handshake never completed.
    """

    factory: HandshakeLoggingFactory
    _done = False
    _timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        # ProtocolWrapper copied the transport's interfaces over ours.
        directlyProvides(self, providedBy(transport), IHandshakeListener)
        factory = self.factory
        if not self._done and self.transport is not None:
            self._timer = factory.clock.callLater(factory.timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        self._done = True  # logged here, not again as a failure
        self.factory.handshake_timed_out(self)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def handshakeCompleted(self) -> None:
        self._done = True
        self._stop_timer()
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._stop_timer()
        if not self._done:
            self.factory.handshake_failed(self, reason)
        super().connectionLost(reason)


class HandshakeLoggingFactory(WrappingFactory):
    """
    Wraps the factory of a TLS listener: each connection whose handshake
    fails is logged once, with OpenSSL's reason.

    :ivar label: what the log lines call the listener.
    :ivar timeout: seconds a client has to complete its handshake: then it
        is closed (a client that never finishes would hold its socket, and
        on a TCP frontend a backend connection, for good).
    """

    protocol = _HandshakeWatcher
    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        label: str,
        clock: IReactorTime,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(wrappedFactory)
        self.label = label
        self.clock = clock
        self.timeout = timeout

    def logPrefix(self) -> str:
        return inner_prefix(self.wrappedFactory, self.label)

    def handshake_timed_out(self, protocol: ProtocolWrapper) -> None:
        """
        Log a connection closed because its handshake took too long.
        """
        log.info(
            "{listener}: closed {client}: no TLS handshake within {timeout:g} s",
            listener=self.label,
            client=_client(protocol),
            timeout=self.timeout,
        )

    def handshake_failed(self, protocol: ProtocolWrapper, reason: Failure) -> None:
        """
        Log a connection that ended before its handshake completed: as a
        warning when TLS failed, for information when the client went away.
        """
        client = _client(protocol)
        if reason.check(SSL.Error):
            log.warn(
                "{listener}: TLS handshake with {client} failed: {reason}",
                listener=self.label,
                client=client,
                reason=_tls_reason(reason),
            )
        else:
            log.info(
                "{listener}: {client} left before the TLS handshake completed "
                "({reason})",
                listener=self.label,
                client=client,
                reason=_tls_reason(reason),
            )


class TLSListeningReactor:
    """
    A reactor for C{serverFromString}: everything is the real reactor's,
    except that TLS listeners negotiate ALPN from their factory, log failed
    handshakes, and read a PROXY header (a L{ProxyHeaderWrappingFactory})
    before the handshake rather than after it.

    :ivar label: what the log lines call the listener (asked when it
        listens).
    """

    def __init__(
        self,
        reactor: Any,
        label: Callable[[], str],
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._label = label
        self._handshake_timeout = handshake_timeout
        directlyProvides(self, providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        proxied = factory if isinstance(factory, ProxyHeaderWrappingFactory) else None
        inner = factory if proxied is None else proxied.wrappedFactory
        get_context = getattr(contextFactory, "getContext", None)
        if get_context is not None:
            negotiate_alpn(get_context(), acceptable_protocols(inner))
        watched = HandshakeLoggingFactory(
            inner, self._label(), self._reactor, self._handshake_timeout
        )
        if proxied is None:
            listening: IListeningPort = self._reactor.listenSSL(
                port, watched, contextFactory, backlog, interface
            )
            return listening
        # What the reactor's listenSSL does, with the PROXY header read first.
        outer = ProxyHeaderWrappingFactory(
            TLSMemoryBIOFactory(contextFactory, False, watched, self._reactor),
            proxied.clock,
            proxied.timeout,
        )
        tcp: IListeningPort = self._reactor.listenTCP(port, outer, backlog, interface)
        return tcp
