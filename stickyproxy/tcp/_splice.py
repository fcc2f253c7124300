"""
L4: splice the bytes of a client connection to the backend the router picks.

Client reads stay paused until the backend connection is up; then each
transport is registered as the other's producer, so a slow side slows the
fast one (as L{twisted.protocols.portforward}).  Half-closes are passed on,
and when one side ends, the other is closed cleanly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zope.interface import implementer

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.core._addresses import client_host
from stickyproxy.core._clients import ClientSet
from stickyproxy.core._endpoints import connect_quietly, no_delay
from stickyproxy.core._events import EventStream
from stickyproxy.core._proxyheader import HEADERS
from stickyproxy.core._router import Router, RoutingContext
from stickyproxy.core._sending import send_now
from stickyproxy.core._timers import IdleTimer, TimerWheel
from stickyproxy.model import (
    Backend,
    ConnectionClosed,
    ConnectionOpened,
    Decision,
    StateChange,
)


@implementer(IHalfCloseableProtocol)
class _BackendSide(Protocol):
    """
    The backend end of a splice: everything goes straight to the client.
    """

    def __init__(self, client: TCPProxyProtocol) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.from_backend(data)

    def readConnectionLost(self) -> None:
        self.client.backend_finished_sending()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.backend_lost(reason)


@implementer(IHalfCloseableProtocol)
class TCPProxyProtocol(Protocol):
    """
    The client end of a splice; it owns the connection's life.
    """

    factory: TCPProxyFactory
    transport: Any

    log = Logger()

    def __init__(self, factory: TCPProxyFactory) -> None:
        self.factory = factory
        self._backend: Any = None  # the backend's transport, once connected
        self._decision: Decision | None = None
        self._connecting: Deferred[Any] | None = None
        self._early: list[bytes] | None = None  # read before the backend is up
        self._client_done = False  # the client sent FIN
        self._backend_done = False  # the backend sent FIN
        self._closed = False
        self._idle: IdleTimer | None = None
        self._bytes_in = 0  # client -> backend
        self._bytes_out = 0  # backend -> client
        # When its ConnectionOpened was published (then ConnectionClosed is).
        self._opened_at: float | None = None
        # How it ended, for events: the first end seen says (each sets it
        # only if it is None, with no call: every connection ends).
        self._ended: str | None = None

    def connectionMade(self) -> None:
        self.factory.clients.add(self)
        no_delay(self.transport)
        self.transport.pauseProducing()
        host, port = client_host(self.transport.getPeer())
        self.context = RoutingContext("tcp", self.factory.name, host, port)
        self._connecting = self.factory.router.dispatch(self.context, self._connect)
        self._connecting.addCallbacks(self._connected, self._no_backend)

    def _connect(self, backend: Backend) -> Deferred[Any]:
        return connect_quietly(backend.endpoint, _BackendSide(self))

    def _connected(self, result: tuple[Decision, _BackendSide]) -> None:
        self._connecting = None
        self._decision, side = result
        self.factory.router.bind(self.context, self._decision)
        backend: Any = side.transport
        no_delay(backend)
        self._backend = backend
        send_proxy = self.factory.router.pool.send_proxy
        if send_proxy is not None:
            header = HEADERS[send_proxy](
                self.transport.getPeer(), self.transport.getHost()
            )
            backend.write(header)
        if self._early is not None:
            backend.writeSequence(self._early)
            self._early = None
        self.factory.opened(self._decision.backend, self)
        events = self.factory.events
        if events.active:
            self._opened_at = self.factory.clock.seconds()
            events.connection_opened(
                ConnectionOpened(
                    frontend=self.factory.name,
                    pool=self.factory.router.pool.name,
                    backend=self._decision.backend.name,
                    client=self.context.client_host,
                    persistence=self._decision.persistence,
                    strategy=self._decision.decided_by,
                )
            )
        self.transport.registerProducer(backend, True)
        backend.registerProducer(self.transport, True)
        if self._client_done:
            backend.loseWriteConnection()
        self.transport.resumeProducing()
        if self.factory.idle_timeout is not None:
            self._idle = IdleTimer(
                self.factory.timers, self.factory.idle_timeout, self._close_idle
            )

    def _no_backend(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(CancelledError):
            return
        self.log.warn(
            "{frontend}: closing client {client}: {reason}",
            frontend=self.factory.name,
            client=self.context.client_host,
            reason=failure.getErrorMessage(),
        )
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        backend = self._backend
        if backend is None:
            self._bytes_in += len(data)
            if self._early is None:
                self._early = []
            self._early.append(data)
            return
        if self._opened_at is not None:  # counted for its ConnectionClosed
            self._bytes_in += len(data)
        if self._idle is not None:
            self._idle.touch()
        send_now(backend, data)

    def from_backend(self, data: bytes) -> None:
        """
        Bytes from the backend, for the client.
        """
        if self._opened_at is not None:
            self._bytes_out += len(data)
        if self._idle is not None:
            self._idle.touch()
        send_now(self.transport, data)

    def readConnectionLost(self) -> None:
        if self._ended is None:
            self._ended = "client-closed"
        self._client_done = True
        if self._backend is not None:
            self._backend.loseWriteConnection()
            self._close_if_both_done()

    def writeConnectionLost(self) -> None:
        pass

    def backend_finished_sending(self) -> None:
        """
        The backend half-closed: pass the FIN on to the client.
        """
        if self._ended is None:
            self._ended = "backend-closed"
        self._backend_done = True
        self.transport.loseWriteConnection()
        self._close_if_both_done()

    def _close_if_both_done(self) -> None:
        if self._client_done and self._backend_done:
            self.transport.loseConnection()
            self._backend.loseConnection()

    def backend_lost(self, reason: Failure) -> None:
        """
        The backend connection is gone: close the client once its data is out.
        """
        if self._ended is None:
            closed = reason.check(ConnectionDone)
            self._ended = "backend-closed" if closed else "backend-aborted"
        self._backend_done = True
        self.transport.loseConnection()
        self._finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._ended is None:
            closed = reason.check(ConnectionDone)
            self._ended = "client-closed" if closed else "client-aborted"
        self.factory.clients.discard(self)
        if self._connecting is not None:
            self._connecting.cancel()
        if self._backend is not None:
            self._backend.loseConnection()
        self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        decision = self._decision
        if decision is not None:
            self.factory.closed(decision.backend, self)
            self.factory.router.release(self.context, decision.backend)
            if self._opened_at is not None:
                self._publish_closed(decision)

    def _publish_closed(self, decision: Decision) -> None:
        assert self._opened_at is not None
        factory = self.factory
        factory.events.connection_closed(
            ConnectionClosed(
                frontend=factory.name,
                pool=factory.router.pool.name,
                backend=decision.backend.name,
                client=self.context.client_host,
                bytes_in=self._bytes_in,
                bytes_out=self._bytes_out,
                duration=factory.clock.seconds() - self._opened_at,
                ended=self._ended or "client-closed",
                persistence=decision.persistence,
                strategy=decision.decided_by,
            )
        )

    def close(self) -> None:
        """
        Close both connections (the client's after what it is owed is sent).
        """
        if self._ended is None:
            self._ended = "backend-down"
        self.transport.loseConnection()
        if self._backend is not None:
            self._backend.abortConnection()

    @property
    def spliced(self) -> bool:
        """
        :returns: whether its backend connection is up.
        """
        return self._backend is not None

    def abort(self) -> None:
        """
        Cut both connections off now (the proxy stops).
        """
        if self._ended is None:
            self._ended = "shutdown"
        self.transport.abortConnection()
        if self._backend is not None:
            self._backend.abortConnection()

    def _close_idle(self) -> None:
        if self._ended is None:
            self._ended = "idle-timeout"
        self.log.info(
            "{frontend}: closing idle connection from {client}",
            frontend=self.factory.name,
            client=self.context.client_host,
        )
        self.transport.loseConnection()
        if self._backend is not None:
            self._backend.loseConnection()


@implementer(IProtocolNegotiationFactory)
class TCPProxyFactory(Factory):
    """
    Builds the L4 protocol for one frontend.

    :ivar name: the frontend's name, for logs and contexts.
    :ivar idle_timeout: seconds of silence both ways before both connections
        are closed, or C{None} for never.
    :ivar events: where connections opened and closed are published
        (nowhere by default).
    :ivar alpn: the protocols a TLS listener offers in ALPN, most preferred
        first; none: the handshake completes without ALPN.
    :ivar clients: its open client connections.
    :ivar timers: what times their idleness.
    """

    protocol = TCPProxyProtocol  # type: ignore[assignment]
    log = Logger()
    noisy = False

    def logPrefix(self) -> str:
        return f"stickyproxy TCP frontend {self.name!r}"

    def acceptableProtocols(self) -> list[bytes]:
        return list(self.alpn)

    def __init__(
        self,
        name: str,
        router: Router,
        clock: IReactorTime,
        idle_timeout: float | None = None,
        events: EventStream | None = None,
        alpn: Sequence[bytes] = (),
    ) -> None:
        self.name = name
        self.router = router
        self.clock = clock
        self.timers = TimerWheel(clock)
        self.idle_timeout = idle_timeout
        self.events = events if events is not None else EventStream()
        self.alpn = tuple(alpn)
        self._open: dict[Backend, set[TCPProxyProtocol]] = {}
        self.clients: ClientSet[TCPProxyProtocol] = ClientSet()
        router.pool.observe(self._backend_changed)

    def opened(self, backend: Backend, protocol: TCPProxyProtocol) -> None:
        """
        Track a spliced connection, so it can be closed if its backend goes
        down with C{on_down = "close"}.
        """
        self._open.setdefault(backend, set()).add(protocol)

    def closed(self, backend: Backend, protocol: TCPProxyProtocol) -> None:
        """
        Stop tracking a connection.
        """
        self._open.get(backend, set()).discard(protocol)

    def _backend_changed(self, change: StateChange) -> None:
        backend = change.backend
        if change.kind == "removed":
            state = "removed"
        elif not backend.healthy:
            state = "down"
        else:
            return
        # Untracked from now on: with on_down = "keep" they run on until
        # they end, and nothing is kept for a backend that left the pool.
        doomed = self._open.pop(backend, set())
        if self.router.pool.on_down != "close":
            return
        if doomed:
            self.log.info(
                "{frontend}: closing {count} connections to {backend}, "
                "which is {state}",
                frontend=self.name,
                count=len(doomed),
                backend=backend.name,
                state=state,
            )
        for protocol in doomed:
            protocol.close()

    def buildProtocol(self, addr: IAddress | None) -> TCPProxyProtocol:  # type: ignore[override]
        return TCPProxyProtocol(self)

    def wind_down(self) -> None:
        """
        Take no more clients (a shutdown): those still waiting for a
        backend are closed (and not waited for: nothing of theirs is under
        way); spliced connections run on until they end.
        """
        for client in self.clients:
            if not client.spliced:
                client.transport.loseConnection()
                self.clients.discard(client)

    def retire(self) -> None:
        """
        A reload replaced this frontend: its connections run on undisturbed,
        with the settings they started with.
        """

    def cut(self) -> None:
        """
        Cut every connection off now (the shutdown timeout is over).
        """
        for client in self.clients:
            client.abort()

    def detach(self) -> None:
        """
        Stop following the pool: this factory serves nobody any more (a
        reload replaced it).
        """
        self.router.pool.unobserve(self._backend_changed)
