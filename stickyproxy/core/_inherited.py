"""
Listening sockets shared by processes: a parent opens them and accepts
nothing on them (L{HoldingReactor}); its workers inherit them and serve
(L{AdoptingReactor}).

Both stand in for the reactor while an endpoint string is listened on
(as L{stickyproxy.core._tls.TLSListeningReactor} does), so C{tcp:},
C{tcp6:}, C{unix:}, C{ssl:} and C{haproxy:} strings are parsed, and their
factories wrapped, exactly as in a single process: only where the socket
comes from differs.  For C{ssl:}, the socket is plain TCP, and TLS is done
by the factory of the process that accepts.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from zope.interface import directlyProvides, providedBy

from twisted.internet import tcp, unix
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory


class _Wrapper:
    """
    The real reactor, but for how it listens.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        directlyProvides(self, providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class HoldingReactor(_Wrapper):
    """
    Listens as the real reactor does, then stops accepting: the socket is
    open and bound (clients queue in its backlog) for processes that
    inherit it to accept on.
    """

    def _held(self, port: Any) -> IListeningPort:
        port.stopReading()
        listening: IListeningPort = port
        return listening

    def listenTCP(self, *args: Any, **kwargs: Any) -> IListeningPort:
        return self._held(self._reactor.listenTCP(*args, **kwargs))

    def listenUNIX(self, *args: Any, **kwargs: Any) -> IListeningPort:
        return self._held(self._reactor.listenUNIX(*args, **kwargs))

    def listenSSL(self, *args: Any, **kwargs: Any) -> IListeningPort:
        return self._held(self._reactor.listenSSL(*args, **kwargs))


class _AdoptedUNIXPort(unix.Port):
    """
    A UNIX listening port on an inherited socket: its path belongs to the
    process that bound it, so closing it here leaves the path in place
    (Twisted's own port removes it, cutting every other process off).
    """

    def connectionLost(self, reason: Any) -> None:
        tcp.Port.connectionLost(self, reason)


def _family(descriptor: int) -> socket.AddressFamily:
    sock = socket.socket(fileno=descriptor)
    try:
        return sock.family
    finally:
        sock.detach()


class AdoptingReactor(_Wrapper):
    """
    Listens by adopting the inherited listening socket C{descriptor}
    (L{IReactorSocket.adoptStreamPort}) rather than opening one; the
    descriptor itself is closed once adopted (the port holds a copy).
    """

    def __init__(self, reactor: Any, descriptor: int) -> None:
        super().__init__(reactor)
        self._descriptor = descriptor

    def _adopt(self, factory: IProtocolFactory) -> IListeningPort:
        descriptor = self._descriptor
        port: IListeningPort = self._reactor.adoptStreamPort(
            descriptor, _family(descriptor), factory
        )
        os.close(descriptor)
        return port

    def listenTCP(
        self, port: int, factory: IProtocolFactory, *args: Any, **kwargs: Any
    ) -> IListeningPort:
        return self._adopt(factory)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        *args: Any,
        **kwargs: Any,
    ) -> IListeningPort:
        # What the reactor's own listenSSL does, on the inherited socket.
        return self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(
        self,
        address: str,
        factory: IProtocolFactory,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> IListeningPort:
        if _family(self._descriptor) != socket.AF_UNIX:
            return self._adopt(factory)  # let the reactor say what is wrong
        port = _AdoptedUNIXPort._fromListeningDescriptor(
            self._reactor, self._descriptor, factory
        )
        port.mode = mode
        port.startListening()
        os.close(self._descriptor)
        listening: IListeningPort = port
        return listening
