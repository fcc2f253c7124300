"""
L7, backend side: keep-alive connections to one backend, each carrying one
request at a time, their responses parsed by llhttp (through httptools),
and a bounded pool of idle ones per backend.
"""

from __future__ import annotations

from collections import deque
from typing import Any
from typing import Protocol as TypingProtocol

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from stickyproxy.core._endpoints import connect_quietly, no_delay
from stickyproxy.core._timers import call_at
from stickyproxy.http._message import HOP_BY_HOP, connection_options
from stickyproxy.interfaces import IResponseReceiver
from stickyproxy.model import Backend


class TunnelPeer(TypingProtocol):
    """
    The client side of an upgraded connection, which owns the client's
    transport: the backend side only tells it what happened.
    """

    def tunnel_data(self, data: bytes) -> None:
        """
        Bytes from the backend, for the client.
        """

    def tunnel_closed(self) -> None:
        """
        The backend closed its side of the tunnel.
        """


class BackendHTTP(Protocol):
    """
    One connection to a backend.  The exchange it serves drives it through
    L{start}, L{release} and L{discard}; it reports back through the
    exchange's L{IResponseReceiver}, and once upgraded, to its L{TunnelPeer}.

    :ivar reused: it served a request before, so a failure before any
        response byte may just mean the backend closed it while idle.
    """

    def __init__(self, connections: BackendConnections) -> None:
        self.connections = connections
        self.receiver: IResponseReceiver | None = None
        self.reused = False
        self.reusable = False
        self.responded = False  # any response byte seen for this request
        self.connected_ = False
        self._no_body = False
        self._parser = HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._framing: set[bytes] = set()  # transfer-encoding, content-length
        self._connection: list[bytes] = []  # the Connection header values
        self._in_head = False
        self._head_size = 0
        self._body = "none"
        self.idle_since = 0.0
        self.tunnel: TunnelPeer | None = None  # the client side, once upgraded

    def connectionMade(self) -> None:
        self.connected_ = True
        no_delay(self.transport)

    def start(self, receiver: IResponseReceiver, no_body: bool) -> None:
        """
        Serve one request: its response goes to C{receiver}.

        :param no_body: the request was HEAD: the response has no body
            whatever its headers say.
        """
        self.receiver = receiver
        self.responded = False
        self._no_body = no_body

    @property
    def stale(self) -> bool:
        """
        Whether a failure now may just mean the backend had closed this
        keep-alive connection while it was idle: it served a request
        before, and no byte of a response to this one came.
        """
        return self.reused and not self.responded

    def release(self) -> None:
        """
        The exchange is over, its response complete: read again (a slow
        client may have paused reading), and back to the pool, which keeps
        the connection for another request if it can.
        """
        transport = self.transport
        if transport is not None:
            transport.resumeProducing()  # type: ignore[attr-defined]
        self.connections.release(self)

    def discard(self) -> None:
        """
        The exchange ended before its response did: close at once, and
        tell the exchange nothing more.
        """
        self.receiver = None
        self.reusable = False
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def start_tunnel(self, peer: TunnelPeer) -> None:
        """
        The backend switched protocols: from now on its bytes, and its
        closing, go to C{peer}.
        """
        self.tunnel = peer

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = 0
        self._headers, self._framing, self._connection = [], set(), []

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field, after a chunked body: not forwarded
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.connections.max_head:
            raise ValueError(f"its head is over {self.connections.max_head} bytes")
        # Hop-by-hop headers are dropped here, on the way in; the framing
        # ones are remembered, for the body.
        name = name.lower()
        if name not in HOP_BY_HOP:
            if name == b"content-length":
                self._framing.add(name)
            self._headers.append((name, value))
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked" or name in self._framing:
                # Another coding (or chunked twice) would be lost when the
                # body is re-chunked.
                raise ValueError("a transfer coding other than chunked, once")
            self._framing.add(name)
        elif name == b"connection":
            self._connection.append(value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        status = parser.get_status_code()
        headers, framing = self._headers, self._framing
        named = connection_options(self._connection)
        if named:
            headers = [(n, v) for n, v in headers if n not in named]
        if status < 200 or status in (204, 304) or self._no_body:
            body = "none"
        elif b"transfer-encoding" in framing:
            body = "chunked"
        elif framing:
            body = "length"
        else:
            body = "close"
        self._body = body
        self.reusable = parser.should_keep_alive() and body != "close"
        if self._no_body and status >= 200 and self.receiver is not None:
            # llhttp does not know the request was HEAD and would wait for
            # the body its headers announce: finish here, and do not reuse.
            self.reusable = False
            receiver = self.receiver
            receiver.response_head(status, headers, body)
            self._finish(receiver)
            return
        if self.receiver is not None:
            self.receiver.response_head(status, headers, body)

    def on_body(self, data: bytes) -> None:
        if self.receiver is not None and not self._no_body:
            self.receiver.response_body(data)

    def on_message_complete(self) -> None:
        receiver = self.receiver
        if receiver is None or self._parser.get_status_code() < 200:
            return  # an interim (1xx) response: the real one follows
        self._finish(receiver)

    def _finish(self, receiver: IResponseReceiver) -> None:
        self.receiver = None
        receiver.response_complete()

    # the transport

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_data(data)
            return
        if self.receiver is None:
            # Bytes nobody asked for: this connection is not HTTP any more.
            self.reusable = False
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.responded = True
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            receiver, self.receiver = self.receiver, None
            if receiver is not None:
                receiver.response_upgraded(data[upgrade.args[0] :])
        except HttpParserError as error:
            self.reusable = False
            receiver, self.receiver = self.receiver, None
            self.transport.abortConnection()  # type: ignore[union-attr]
            if receiver is not None:
                reason = str(error.__context__ or error)
                receiver.response_failed(f"invalid response from backend: {reason}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected_ = False
        self.reusable = False
        self.connections.lost(self)
        if self.tunnel is not None:
            self.tunnel.tunnel_closed()
            return
        receiver, self.receiver = self.receiver, None
        if receiver is None:
            return
        if self._body == "close" and self.responded:
            receiver.response_complete()  # the close is the end of the body
        else:
            receiver.response_failed(
                f"backend closed the connection: {reason.getErrorMessage()}"
            )


class BackendConnections:
    """
    Connections to one backend: new ones on demand, and up to C{max_idle}
    idle keep-alive ones, each closed after C{idle_timeout} unused (newest
    reused first, so surplus ones age out).  One timer sweeps them, rather
    than one per connection, which would cost a timer per request.
    """

    def __init__(
        self,
        backend: Backend,
        clock: IReactorTime,
        max_idle: int,
        idle_timeout: float,
        send_proxy: bool = False,
        max_head: int = 65536,
    ) -> None:
        self.backend = backend
        self.max_head = max_head
        self.clock = clock
        self.max_idle = 0 if send_proxy else max_idle  # PROXY headers are per client
        self.idle_timeout = idle_timeout
        self._idle: deque[BackendHTTP] = deque()  # oldest first
        self._sweep: IDelayedCall | None = None
        self.closed = False  # the backend left its pool: keep nothing idle

    def idle(self) -> BackendHTTP | None:
        """
        :returns: an idle connection to reuse (the newest), or C{None}.
        """
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.connected_:
                connection.reused = True
                return connection
        return None

    def acquire(self) -> Deferred[Any]:
        """
        An idle connection, or a new one.

        :returns: a Deferred firing with a connected L{BackendHTTP}.
        """
        connection = self.idle()
        return self.connect() if connection is None else succeed(connection)

    def connect(self) -> Deferred[Any]:
        """
        A new connection, never an idle one (to send again a request a
        stale one lost).

        :returns: a Deferred firing with a connected L{BackendHTTP}.
        """
        return connect_quietly(self.backend.endpoint, BackendHTTP(self))

    def release(self, connection: BackendHTTP) -> None:
        """
        Take back a connection whose exchange is over: keep it if it can
        carry another request and there is room, else close it.
        """
        if (
            not (connection.reusable and connection.connected_)
            or len(self._idle) >= self.max_idle
            or self.closed
        ):
            if connection.transport is not None:
                connection.transport.loseConnection()
            return
        connection.idle_since = self.clock.seconds()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = self.clock.callLater(self.idle_timeout, self._expire)

    def _expire(self) -> None:
        self._sweep = None
        idle = self._idle
        cutoff = self.clock.seconds() - self.idle_timeout
        while idle and idle[0].idle_since <= cutoff:
            connection = idle.popleft()
            if connection.transport is not None:
                connection.transport.loseConnection()
        if idle:
            self._sweep = call_at(
                self.clock, idle[0].idle_since + self.idle_timeout, self._expire
            )

    def lost(self, connection: BackendHTTP) -> None:
        """
        A connection closed (idle or not).
        """
        try:
            self._idle.remove(connection)
        except ValueError:
            pass

    def close_idle(self) -> None:
        """
        Close every idle connection (when the frontend stops, or the backend
        goes down).
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None:
                connection.transport.loseConnection()

    def close(self) -> None:
        """
        The backend left its pool: close the idle connections now, and each
        busy one when its exchange is over.
        """
        self.closed = True
        self.close_idle()

    def __len__(self) -> int:
        return len(self._idle)
