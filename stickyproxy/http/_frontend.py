"""
L7, client side: HTTP/1.1 requests parsed by llhttp (through httptools),
routed one by one, streamed to their backend and back.

One L{HTTPProxyProtocol} per client connection keeps the requests of that
connection in order (pipelined ones wait their turn) and runs one
L{_Exchange} per request.  Persistence is not this module's business: it
builds an L{HTTPRoutingContext}, hands it to the router, and forwards what
the strategies left in it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from zope.interface import implementer

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocolNegotiationFactory,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.config._settings import HTTPSettings
from stickyproxy.core._addresses import client_host, forwarded_client, in_networks
from stickyproxy.core._clients import ClientSet
from stickyproxy.core._endpoints import no_delay
from stickyproxy.core._events import EventStream
from stickyproxy.core._proxyheader import HEADERS
from stickyproxy.core._router import NoBackendAvailable, Router
from stickyproxy.core._timers import Deadline, IdleTimer, TimerWheel
from stickyproxy.http._backend import BackendConnections, BackendHTTP
from stickyproxy.http._context import HTTPRoutingContext
from stickyproxy.http._message import (
    HOP_BY_HOP,
    NO_OPTIONS,
    connection_options,
    request_target,
    split_list,
)
from stickyproxy.interfaces import IResponseReceiver
from stickyproxy.model import (
    Backend,
    Decision,
    Outcome,
    RequestFinished,
    StateChange,
)

_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_ADDED_BY_US = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)


class _Refuse(Exception):
    """
    A request that gets an error status from the proxy itself.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.method = b""  # the refused request's, as far as it was read
        self.target = b""


def error_response(status: int, reason: str, extra: bytes = b"") -> bytes:
    """
    A complete, closing error response with a short text body.
    """
    phrase = _REASONS.get(status, b"Error")
    body = b"%d %s: %s\n" % (status, phrase, reason.encode("utf-8", "replace"))
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, phrase),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\n",
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


#: The end of a chunked body (with no trailer fields).
LAST_CHUNK = b"0\r\n\r\n"


def write_body(transport: Any, data: bytes, chunked: bool) -> None:
    """
    Write body bytes, as one chunk when the body is chunked.  Nothing is
    written for no bytes: an empty chunk would end the body.
    """
    if not data:
        return
    if chunked:
        transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
    else:
        transport.write(data)


def _header_text(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    """
    :returns: the first value of header C{name}, for events, or C{""}.
    """
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


@implementer(IResponseReceiver)
class _Exchange:
    """
    One request and its response.
    """

    # One per request: slots make it smaller and its attributes quicker.
    __slots__ = (
        "backend",
        "body",
        "body_deadline",
        "body_received",
        "body_sent",
        "body_started",
        "bound",
        "chunked_out",
        "client",
        "close_after",
        "ctx",
        "decision",
        "dispatching",
        "ended",
        "finished",
        "head_time",
        "keep_alive",
        "length",
        "pulls_request",
        "pulls_response",
        "request_done",
        "response_started",
        "started",
        "upgrade",
        "upgrade_headers",
        "upgrade_rest",
        "version",
        "waiting_body",
    )

    def __init__(
        self,
        client: HTTPProxyProtocol,
        ctx: HTTPRoutingContext,
        version: str,
        keep_alive: bool,
        body: str,
        upgrade: bytes,
        length: int | None = None,
    ) -> None:
        self.client = client
        self.ctx = ctx
        self.version = version
        self.keep_alive = keep_alive
        self.body = body  # "none", "length" or "chunked"
        self.length = length  # the Content-Length the client sent, if any
        self.upgrade = upgrade  # the protocols offered, if the proxy tunnels them
        self.request_done = False
        self.body_received = 0
        self.body_sent = 0  # response body bytes, for events
        self.head_time: float | None = None  # only measured for events
        self.waiting_body: list[bytes] = []
        self.dispatching: Deferred[Any] | None = None
        self.decision: Decision | None = None
        self.backend: BackendHTTP | None = None
        self.response_started = False
        self.chunked_out = False
        self.close_after = not keep_alive
        self.finished = False
        self.upgrade_rest = b""
        self.upgrade_headers: list[tuple[bytes, bytes]] | None = None
        # Which flow-control registrations this exchange made, to undo them.
        self.pulls_request = False  # backend transport <- client transport
        self.pulls_response = False  # client transport <- backend transport
        self.bound = False  # the router's bind ran: strategies hold a binding
        self.ended = "ok"  # how it ended, for events
        self.started = client.factory.clock.seconds()
        self.body_started = 0.0
        self.body_deadline: Deadline | None = None

    # routing and connecting

    def start(self) -> None:
        client = self.client
        factory = client.factory
        client.timer.restart(client.settings.timeout_response, self._timed_out)
        if not self.request_done:
            # From now on the body is read: it must arrive in time.
            clock = factory.clock
            self.body_started = clock.seconds()
            self.body_deadline = Deadline(
                factory.timers, self._body_due, self._body_late
            )
        routed = factory.router.dispatch(self.ctx, self._connect, self._idle)
        if isinstance(routed, tuple):  # an idle connection was at hand
            self._connected(routed)
            return
        self.dispatching = routed
        routed.addCallbacks(self._connected, self._no_backend)
        if self.dispatching is not None:
            client.pause_reading()  # until the backend connection is up

    def _idle(self, backend: Backend) -> BackendHTTP | None:
        return self.client.factory.connections[backend].idle()

    def _connect(self, backend: Backend) -> Deferred[Any]:
        return self.client.factory.connections[backend].connect()

    def _no_backend(self, failure: Failure) -> None:
        self.dispatching = None
        if failure.check(CancelledError):
            return
        if failure.check(NoBackendAvailable):
            self.ended = "no-backend"
            extra = b"retry-after: %d\r\n" % self.client.settings.retry_after
            self._fail(503, failure.getErrorMessage(), extra)
        else:
            self.ended = "backend-error"
            self.client.log.failure("routing failed", failure)
            self._fail(502, "the backend could not be reached")

    def _connected(self, result: tuple[Decision, BackendHTTP]) -> None:
        self.dispatching = None
        self.decision, self.backend = result
        self.backend.start(self, no_body=self.ctx.method == b"HEAD")
        transport: Any = self.backend.transport
        send_proxy = self.client.factory.router.pool.send_proxy
        if send_proxy is not None and not self.backend.reused:
            client_transport = self.client.transport
            transport.write(
                HEADERS[send_proxy](
                    client_transport.getPeer(), client_transport.getHost()
                )
            )
        transport.write(self._request_head())
        if self.waiting_body:
            for chunk in self.waiting_body:
                self._send_body(chunk)
            self.waiting_body = []
        if self.request_done:
            self._end_body()
        else:
            transport.registerProducer(self.client.transport, True)
            self.pulls_request = True
        self.client.resume_reading()

    def _request_head(self) -> bytes:
        ctx, settings = self.ctx, self.client.settings
        # Connection removes neither what frames the request nor what the
        # proxy read it by: what routing consulted, and the forwarding
        # headers, which the proxy rewrites by its own rules.
        connection = [v for n, v in ctx.request_headers if n == b"connection"]
        named = (
            connection_options(connection, ctx.consulted | _ADDED_BY_US)
            if connection
            else NO_OPTIONS
        )
        lines = [ctx.method, b" ", ctx.target, b" HTTP/1.1\r\n"]
        trusted = self.client.peer_trusted
        forwarded_for: list[bytes] = []
        forwarded: list[bytes] = []  # RFC 7239 elements from trusted proxies
        host = b""
        for name, value in ctx.forwarded_headers():
            if (
                name in HOP_BY_HOP
                or name in named
                or name == b"content-length"  # written below, from our reading
                or name == settings.redispatch_header
            ):
                continue
            if name in _ADDED_BY_US:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"forwarded":
                    if trusted:
                        forwarded.append(value)
                elif trusted:
                    lines += [name, b": ", value, b"\r\n"]
                continue
            if name == b"host":
                host = value
            lines += [name, b": ", value, b"\r\n"]
        peer = self.client.peer_bytes
        forwarded_for.append(peer)
        lines += [b"x-forwarded-for: ", b", ".join(forwarded_for), b"\r\n"]
        proto = b"https" if ctx.secure else b"http"
        if not (trusted and ctx.header(b"x-forwarded-proto")):
            lines += [b"x-forwarded-proto: ", proto, b"\r\n"]
        if not (trusted and ctx.header(b"x-forwarded-host")) and host:
            lines += [b"x-forwarded-host: ", host, b"\r\n"]
        if settings.forwarded:
            node = b'"[%s]"' % peer if b":" in peer else peer
            element = b"for=" + node + b";proto=" + proto
            if host:
                element += b';host="' + host + b'"'
            forwarded.append(element)
        if forwarded:
            lines += [b"forwarded: ", b", ".join(forwarded), b"\r\n"]
        decision = self.decision
        if (
            settings.redispatch_header is not None
            and decision is not None
            and decision.outcome is Outcome.REDISPATCH
            and decision.previous is not None
        ):
            lines += [
                settings.redispatch_header,
                b": ",
                decision.previous.name.encode("utf-8"),
                b"\r\n",
            ]
        if self.body == "chunked":
            lines.append(b"transfer-encoding: chunked\r\n")
        elif self.length is not None:
            lines.append(b"content-length: %d\r\n" % self.length)
        if self.upgrade:
            lines += [b"connection: upgrade\r\nupgrade: ", self.upgrade, b"\r\n"]
        lines.append(b"\r\n")
        return b"".join(lines)

    # the request body, as it arrives

    def request_body(self, data: bytes) -> None:
        self.body_received += len(data)
        limit = self.client.settings.max_body_size
        if limit is not None and self.body_received > limit:
            raise _Refuse(413, f"the request body is larger than {limit} bytes")
        if self.backend is None:
            self.waiting_body.append(data)
        else:
            self._send_body(data)

    def _send_body(self, data: bytes) -> None:
        transport: Any = self.backend.transport  # type: ignore[union-attr]
        write_body(transport, data, self.body == "chunked")

    def _body_due(self) -> float:
        """
        When the body must have arrived: C{timeout_body} after it started,
        plus a second for each C{body_min_rate} bytes received (as Apache's
        mod_reqtimeout), so a large upload at a fair rate is never cut, and
        a trickle is.
        """
        settings = self.client.settings
        due = self.body_started + settings.timeout_body
        if settings.body_min_rate:
            due += self.body_received / settings.body_min_rate
        return due

    def _body_late(self) -> None:
        self.body_deadline = None
        self.ended = "client-timeout"
        self._fail(408, "the request body took too long")

    def request_complete(self) -> None:
        self.request_done = True
        if self.body_deadline is not None:
            self.body_deadline.cancel()
            self.body_deadline = None
        if self.backend is not None:
            self._end_body()

    def _end_body(self) -> None:
        transport: Any = self.backend.transport  # type: ignore[union-attr]
        if self.body == "chunked":
            transport.write(LAST_CHUNK)
        if self.pulls_request:
            self.pulls_request = False
            transport.unregisterProducer()
            self.client.undo_flow_control()

    # the response (IResponseReceiver)

    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], body: str
    ) -> None:
        self.client.timer.touch()
        if status == 101:
            self.upgrade_headers = headers
            return
        if status < 200:
            if self.version == "1.1":
                self.client.transport.write(self._response_head(status, headers))
            return
        backend = self.backend
        decision = self.decision
        assert backend is not None and decision is not None
        ctx = self.ctx
        ctx.status = status
        ctx.response_headers = headers
        factory = self.client.factory
        factory.router.bind(ctx, decision, status)
        self.bound = True
        settings = self.client.settings
        extra = [] if settings.debug_header is None else self._debug(decision)
        if body in ("chunked", "close"):
            if self.version == "1.1":
                self.chunked_out = True
                extra.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True
        if self.upgrade:
            self.close_after = True  # refused upgrade: the client may not resync
        if self.close_after or self.client.refusing is not None:
            extra.append(b"connection: close\r\n")
        elif self.version == "1.0":
            extra.append(b"connection: keep-alive\r\n")
        client_transport: Any = self.client.transport
        client_transport.write(self._response_head(status, ctx.response_headers, extra))
        self.response_started = True
        if factory.events.active:
            self.head_time = factory.clock.seconds() - self.started
        client_transport.registerProducer(backend.transport, True)
        self.pulls_response = True

    def _response_head(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        extra: list[bytes] = (),  # type: ignore[assignment]
    ) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        for name, value in headers:  # hop-by-hop ones are gone already
            lines += [name, b": ", value, b"\r\n"]
        lines += extra
        lines.append(b"\r\n")
        return b"".join(lines)

    def _debug(self, decision: Decision) -> list[bytes]:
        """
        The debug header, if configured: which strategy decided, and how.
        """
        name = self.client.settings.debug_header
        if name is None:
            return []
        strategy = decision.strategy or "balancer"
        value = f"{strategy}; {decision.outcome.value}; backend={decision.backend.name}"
        return [name, b": ", value.encode("utf-8"), b"\r\n"]

    def _head_sent(self) -> None:
        self.response_started = True
        factory = self.client.factory
        if factory.events.active:
            self.head_time = factory.clock.seconds() - self.started

    def response_body(self, data: bytes) -> None:
        self.client.timer.touch()
        self.body_sent += len(data)
        if self.chunked_out:
            write_body(self.client.transport, data, True)
        else:
            self.client.transport.write(data)

    def response_complete(self) -> None:
        if self.chunked_out:
            self.client.transport.write(LAST_CHUNK)
        self._finish(True)

    def response_failed(self, reason: str) -> None:
        connection, decision = self.backend, self.decision
        assert connection is not None and decision is not None
        router = self.client.factory.router
        if connection.stale and self.body == "none":
            # The request may go again as it was: the router decides.
            self._let_go(False)
            retry = router.failed(self.ctx, decision, reason, self._connect)
        else:
            retry = router.failed(self.ctx, decision, reason)
        if retry is not None:
            self.decision = None  # the new attempt holds the client's count
            self.dispatching = retry
            retry.addCallbacks(self._connected, self._no_backend)
            return
        if self.response_started:
            self.ended = "backend-broke-off"
            self.client.log.warn(
                "{frontend}: backend {backend} broke off its response to "
                "{client}: {reason}",
                frontend=self.client.factory.name,
                backend=decision.backend.name,
                client=self.ctx.client_host,
                reason=reason,
            )
            self._finish(False)
            self.client.abort()
        else:
            self.ended = "backend-error"
            self._fail(502, reason)

    def response_upgraded(self, rest: bytes) -> None:
        backend = self.backend
        if not self.upgrade or self.upgrade_headers is None or backend is None:
            self._fail(502, "the backend switched protocols unasked")
            return
        decision = self.decision
        assert decision is not None
        self.ctx.status = 101
        self.ctx.response_headers = self.upgrade_headers
        self.client.factory.router.bind(self.ctx, decision)
        self.bound = True
        extra = self._debug(decision)
        head = self._response_head(
            101,
            self.ctx.response_headers,
            extra
            + [
                b"connection: upgrade\r\nupgrade: ",
                self.upgrade,
                b"\r\n",
            ],
        )
        self._head_sent()
        self.ended = "upgraded"  # its event comes when the tunnel closes
        self.client.tunnel(self, backend, head, rest)

    # ending

    def _timed_out(self) -> None:
        if not self.request_done and self.backend is not None:
            self.ended = "client-timeout"
            self._fail(408, "the request body stopped arriving")
        elif not self.response_started:
            self.ended = "backend-timeout"
            if self.dispatching is not None:
                self.dispatching.cancel()
            if self.decision is not None:
                self.client.factory.router.failed(
                    self.ctx, self.decision, "no response in time"
                )
            self._fail(504, "the backend did not answer in time")
        else:
            self.ended = "backend-stalled"
            self._finish(False)
            self.client.abort()

    def _fail(self, status: int, reason: str, extra: bytes = b"") -> None:
        """
        Answer with an error of our own (if nothing was sent yet) and close.
        """
        if self.finished:
            return
        if self.dispatching is not None:
            self.dispatching.cancel()
        self.ctx.status = status
        if not self.response_started:
            self._head_sent()
            self.client.transport.write(error_response(status, reason, extra))
        self.close_after = True
        self._finish(False)

    def _release(self, ok: bool) -> None:
        if self.body_deadline is not None:  # the request body never ended
            self.body_deadline.cancel()
            self.body_deadline = None
        self._let_go(ok)
        decision = self.decision
        if decision is not None:
            self.client.factory.router.release(self.ctx, decision.backend, self.bound)

    def _let_go(self, ok: bool) -> None:
        """
        Undo the flow control between the client and the backend
        connection, and give the connection back (or close it, unless the
        exchange ended well).
        """
        connection, self.backend = self.backend, None
        if connection is None:
            return
        transport: Any = connection.transport
        if self.pulls_response:
            self.pulls_response = False
            client_transport: Any = self.client.transport
            if client_transport is not None:
                client_transport.unregisterProducer()
        if self.pulls_request and transport is not None:
            self.pulls_request = False
            transport.unregisterProducer()
            self.client.undo_flow_control()
        if ok and self.request_done:
            connection.release()
        else:
            connection.discard()

    def _finish(self, ok: bool) -> None:
        if self.finished:
            return
        self.finished = True
        if not self.request_done:
            self.close_after = True  # the rest of its body would be read as a request
        self._release(ok)
        if self.client.factory.events.active:
            self._publish()
        self.client.exchange_done(self)

    def abandon(self, publish: bool = True) -> None:
        """
        The connection closed before the response was complete (the client
        left, or an earlier response ended the connection).

        :param publish: send its event (not when a refusal stands for it).
        """
        if self.finished:
            return
        self.finished = True
        if self.dispatching is not None:
            self.dispatching.cancel()
        self._release(False)
        if publish and self.client.factory.events.active:
            if self.ended == "ok":
                self.ended = "abandoned"
            self._publish()

    def _publish(self) -> None:
        """
        Tell the event stream that this request is over.
        """
        factory = self.client.factory
        ctx, decision = self.ctx, self.decision
        factory.events.request_finished(
            RequestFinished(
                frontend=factory.name,
                pool=factory.router.pool.name,
                backend=None if decision is None else decision.backend.name,
                client=ctx.client_host,
                method=ctx.method.decode("latin-1"),
                target=ctx.target.decode("latin-1"),
                status=ctx.status,
                persistence="none" if decision is None else decision.persistence,
                strategy=None if decision is None else decision.decided_by,
                bytes_in=self.body_received,
                bytes_out=self.body_sent,
                head_time=self.head_time,
                total_time=factory.clock.seconds() - self.started,
                ended=self.ended,
                version=self.version,
                referer=_header_text(ctx.request_headers, b"referer"),
                user_agent=_header_text(ctx.request_headers, b"user-agent"),
            )
        )


class HTTPProxyProtocol(Protocol):
    """
    One client connection.
    """

    factory: HTTPProxyFactory
    transport: Any
    log = Logger()

    def __init__(self, factory: HTTPProxyFactory) -> None:
        self.factory = factory
        self.settings = factory.settings
        # Made at the first byte of a request, dropped while the connection
        # waits for the next one: llhttp's state and the bound callbacks it
        # holds are about 900 bytes an idle connection need not keep.
        self._parser: HttpRequestParser | None = None
        # Requests read and not yet answered, oldest first: a list, as there
        # are rarely two (a deque's first block alone is 600 bytes, and an
        # idle connection has none).
        self._exchanges: list[_Exchange] = []
        self._incoming: _Exchange | None = None
        self._url = b""
        # The header fields of the request head being read; none between
        # heads (then a field is a trailer's, and is dropped).
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._head_size = 0
        self._paused = False
        self._tunnel: Any = None
        self._tunnel_exchange: _Exchange | None = None
        self.refusing: _Refuse | None = None
        self._ready: _Exchange | None = None  # to start once the chunk is parsed
        self._plain_upgrade: _Exchange | None = None  # an upgrade not tunnelled
        self._resuming = False  # parsing a head of our own: see _read_on
        self._head_begun = False  # a head began in this read, none before it
        self.closing = False  # close once the requests under way are answered
        self.timer: IdleTimer

    def connectionMade(self) -> None:
        self.factory.clients.add(self)
        no_delay(self.transport)
        self.peer_host, self.peer_port = client_host(self.transport.getPeer())
        self.peer_bytes = self.peer_host.encode("ascii", "replace")  # X-Forwarded-For
        # A property of the connection, not of each request on it.
        self.peer_trusted = in_networks(self.peer_host, self.settings.trusted_proxies)
        self.secure = ISSLTransport.providedBy(self.transport)
        self.timer = IdleTimer(
            self.factory.timers, self.settings.timeout_request, self._idle_timeout
        )

    def _idle_timeout(self) -> None:
        if self._head_size or self._url:
            self.refuse(_Refuse(408, "the request head took too long"))
        else:
            self.transport.loseConnection()  # an idle keep-alive connection

    # reading

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def undo_flow_control(self) -> None:
        """
        The backend no longer pulls the request body: whatever its flow
        control paused, read again (unless we pause reading ourselves).
        """
        if not self._paused and self.transport is not None:
            self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self.timer.touch()
            self._tunnel.write(data)
            return
        if self._parser is None:
            self._parser = HttpRequestParser(self)
        while data and self.refusing is None:
            try:
                self._parser.feed_data(data)
            except (HttpParserUpgrade, HttpParserError) as stop:
                data = self._parse_stopped(data, stop)
            else:
                break
        # Started only now, so that what llhttp finds wrong after the head
        # (a bad Transfer-Encoding) is refused before any backend is asked;
        # but started even when a later request in the same read is refused,
        # since the refusal waits for the answers owed before it.
        ready, self._ready = self._ready, None
        if ready is not None:
            if not ready.finished:
                ready.start()
        elif self._head_begun and self.refusing is None:
            # A request head began, on an idle connection, and is not all
            # here: it has timeout_request to arrive.  (Timed only now: a
            # head read whole starts its request at once, which times the
            # response instead.)
            self.timer.restart(self.settings.timeout_request, self._idle_timeout)
        self._head_begun = False

    def _parse_stopped(self, data: bytes, stop: Exception) -> bytes:
        """
        llhttp stopped reading C{data}: at an upgrade, or at a request it
        (or one of our callbacks) found wrong.

        :returns: what it left unread: after an upgrade request the proxy
            does not tunnel, the rest is plain HTTP/1.1 again.
        """
        if isinstance(stop, HttpParserUpgrade):
            rest = data[stop.args[0] :]
            plain, self._plain_upgrade = self._plain_upgrade, None
            if plain is not None:
                return self._read_on(plain, rest)
            exchange = self._exchanges[-1] if self._exchanges else None
            if exchange is not None:
                exchange.upgrade_rest = rest  # for the tunnel, if there is one
            self.pause_reading()
        elif isinstance(stop, HttpParserCallbackError):
            cause = stop.__context__
            if not isinstance(cause, _Refuse):
                raise stop
            self.refuse(cause)
        elif "PRI" in str(stop):  # llhttp stops at the HTTP/2 preface
            self.refuse(_Refuse(505, "HTTP/2 is not supported here"))
        else:
            self.refuse(_Refuse(400, f"malformed request: {stop}"))
        return b""

    def _read_on(self, exchange: _Exchange, rest: bytes) -> bytes:
        """
        llhttp stopped after the head of an upgrade request the proxy does
        not tunnel, and skipped its body: a new parser reads on, as plain
        HTTP/1.1, from that body (given the framing the head announced) or
        from the next request.

        :returns: C{rest}, for the new parser.
        """
        self._parser = HttpRequestParser(self)
        if exchange.body != "none":
            if exchange.body == "chunked":
                framing = b"transfer-encoding: chunked"
            else:
                framing = b"content-length: %d" % (exchange.length or 0)
            self._resuming = True  # its head is ours: the callbacks skip it
            self._parser.feed_data(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
        return rest

    def _carried_upgrade(self, headers: list[tuple[bytes, bytes]], body: str) -> bytes:
        """
        :returns: the protocols of the request's Upgrade header the proxy
            tunnels (C{upgrades}), or nothing: then the request goes on as
            plain HTTP/1.1.  One with a body is never tunnelled: the tunnel
            would start before it.
        """
        offered = split_list(value for name, value in headers if name == b"upgrade")
        carried = [
            protocol
            for protocol in offered
            if protocol.split(b"/", 1)[0].lower() in self.settings.upgrades
        ]
        return b", ".join(carried) if body == "none" else b""

    # llhttp callbacks

    def on_message_begin(self) -> None:
        if self._resuming:
            return
        self._url = b""
        self._head_size = 1
        self._headers = []
        if not self._exchanges:
            self._head_begun = True  # see dataReceived

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.settings.max_header_size:
            raise _Refuse(414, "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if headers is None:
            return  # a trailer field, after a chunked body: not forwarded
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.settings.max_header_size:
            raise _Refuse(431, "the request head is too large")
        if len(headers) >= self.settings.max_headers:
            raise _Refuse(431, "the request has too many headers")
        headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._resuming:  # the head _read_on made up
            self._resuming = False
            self._url = b""
            return
        # The request's headers are its own: not kept while idle.
        headers, self._headers = self._headers, None
        parser = self._parser
        assert parser is not None and headers is not None  # on_message_begin ran
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refuse(505, f"HTTP/{version} is not supported here")
        method = parser.get_method()
        if method == b"CONNECT":
            raise _Refuse(501, "CONNECT is not proxied: this is a reverse proxy")
        hosts = [value for name, value in headers if name == b"host"]
        if len(hosts) > 1 or (version == "1.1" and not hosts):
            raise _Refuse(400, "an HTTP/1.1 request needs exactly one Host header")
        try:
            target, authority = request_target(method, self._url)
        except ValueError as error:
            raise _Refuse(400, str(error)) from None
        if authority is not None:
            # Absolute form (RFC 9112 3.2.2): its authority replaces Host,
            # and the backend gets the origin form.
            headers = [(n, v) for n, v in headers if n != b"host"]
            headers.append((b"host", authority))
        elif not hosts:
            # HTTP/1.0 without Host, forwarded as HTTP/1.1: RFC 9112 3.2
            # has an HTTP/1.1 client send an empty one.
            headers.append((b"host", b""))
        body, length = "none", None
        for name, value in headers:
            if name == b"transfer-encoding":
                # llhttp took it only with chunked last (and never beside
                # Content-Length); another coding would be lost on the way.
                if version == "1.0":
                    raise _Refuse(400, "Transfer-Encoding in an HTTP/1.0 request")
                if value.strip().lower() != b"chunked":
                    raise _Refuse(400, "a transfer coding other than chunked")
                body = "chunked"
                break
            if name == b"content-length":
                length = int(value)  # digits only: llhttp checked
                body = "length" if length else "none"
                limit = self.settings.max_body_size
                if limit is not None and length > limit:
                    raise _Refuse(413, f"the request body is larger than {limit} bytes")
        upgrade = (
            self._carried_upgrade(headers, body) if parser.should_upgrade() else b""
        )
        ctx = HTTPRoutingContext(
            frontend=self.factory.name,
            client_host=self.peer_host,
            client_port=self.peer_port,
            peer_host=self.peer_host,
            secure=self.secure,
            method=method,
            target=target,
            request_headers=headers,
        )
        if self.peer_trusted:
            ctx.client_host = forwarded_client(ctx, self.settings.trusted_proxies)
            ctx.secure = ctx.secure or ctx.header(b"x-forwarded-proto") == b"https"
        self._head_size = 0
        self._url = b""
        exchange = _Exchange(
            self,
            ctx,
            version,
            parser.should_keep_alive(),
            body,
            upgrade,
            length,
        )
        if parser.should_upgrade() and not upgrade:
            self._plain_upgrade = exchange  # llhttp will stop after its head
        if self.closing:
            exchange.close_after = True
        self._incoming = exchange
        self._exchanges.append(exchange)
        if len(self._exchanges) == 1:
            self._ready = exchange
        else:
            self.pause_reading()  # pipelined: it waits for those before it

    def on_body(self, data: bytes) -> None:
        if self._incoming is not None:
            self.timer.touch()
            self._incoming.request_body(data)

    def on_message_complete(self) -> None:
        exchange, self._incoming = self._incoming, None
        if exchange is None:
            return
        if exchange is self._plain_upgrade and exchange.body != "none":
            self._incoming = exchange  # llhttp skipped its body: see _read_on
        else:
            exchange.request_complete()

    # answering

    def exchange_done(self, exchange: _Exchange) -> None:
        """
        C{exchange} is over: go on with the next request, or close.
        """
        if self._exchanges and self._exchanges[0] is exchange:
            del self._exchanges[0]
        if exchange.close_after or self.transport is None:
            self._close_after_exchanges()
            return
        if self._exchanges:
            self._exchanges[0].start()
        elif self.refusing is not None:
            self._send_refusal()
        else:
            self.timer.restart(self.settings.timeout_keepalive, self._idle_timeout)
            if not self._head_size:  # between requests: see __init__
                self._parser = None
            self.resume_reading()

    def _close_after_exchanges(self) -> None:
        for pending in self._exchanges:
            pending.abandon()
        self._exchanges.clear()
        self.timer.cancel()
        self.transport.loseConnection()

    def refuse(self, refusal: _Refuse) -> None:
        """
        Answer a request we will not forward with an error status, after
        the responses owed to requests before it, and close.
        """
        if self.refusing is not None:
            return
        self.refusing = refusal
        self.pause_reading()
        incoming = self._incoming
        if incoming is not None and (
            incoming.response_started or incoming.dispatching or incoming.backend
        ):
            # The request being refused (a body too large) is already under
            # way: its own exchange answers.
            self._incoming = None
            incoming.ended = "refused"
            incoming._fail(refusal.status, refusal.reason)
            return
        if incoming is not None:
            refusal.method, refusal.target = incoming.ctx.method, incoming.ctx.target
        elif self._url and self._parser is not None:  # a head under way
            refusal.method, refusal.target = self._parser.get_method(), self._url
        if incoming is not None and incoming in self._exchanges:
            self._exchanges.remove(incoming)
            # The refusal is its event; if it was ready to start, it won't.
            incoming.abandon(publish=False)
        if not self._exchanges:
            self._send_refusal()

    def _send_refusal(self) -> None:
        refusal = self.refusing
        assert refusal is not None
        self.log.info(
            "{frontend}: {status} to {client}: {reason}",
            frontend=self.factory.name,
            status=refusal.status,
            client=self.peer_host,
            reason=refusal.reason,
        )
        self.transport.write(error_response(refusal.status, refusal.reason))
        self.timer.cancel()
        self.transport.loseConnection()
        factory = self.factory
        if factory.events.active:
            factory.events.request_finished(
                RequestFinished(
                    frontend=factory.name,
                    pool=factory.router.pool.name,
                    backend=None,
                    client=self.peer_host,
                    method=refusal.method.decode("latin-1"),
                    target=refusal.target.decode("latin-1"),
                    status=refusal.status,
                    persistence="none",
                    strategy=None,
                    bytes_in=0,
                    bytes_out=0,
                    head_time=0.0,
                    total_time=0.0,
                    ended="refused",
                )
            )

    def abort(self) -> None:
        """
        Cut the client off (a response broke off half-way).
        """
        self.transport.abortConnection()

    def close_when_done(self) -> None:
        """
        Close this connection once the requests under way are answered (the
        last of them with C{Connection: close}, if its response has not
        started), or at once when it is idle.  A tunnel runs on until it
        ends.
        """
        self.closing = True
        if self._exchanges:
            self._exchanges[-1].close_after = True
        elif not (self._tunnel or self._head_size or self.refusing):
            self.timer.cancel()
            self.transport.loseConnection()

    # WebSocket and other upgrades

    def tunnel(
        self, exchange: _Exchange, backend: BackendHTTP, head: bytes, rest: bytes
    ) -> None:
        """
        The backend accepted an upgrade: from now on, bytes go both ways
        untouched, as in an L4 splice.
        """
        backend_transport: Any = backend.transport
        self._tunnel = backend_transport
        self._tunnel_exchange = exchange
        if self._exchanges and self._exchanges[0] is exchange:
            del self._exchanges[0]
        backend.start_tunnel(self)
        self.transport.write(head)
        if rest:
            self.transport.write(rest)
        if exchange.upgrade_rest:
            backend_transport.write(exchange.upgrade_rest)
        if exchange.pulls_request:
            exchange.pulls_request = False
            backend_transport.unregisterProducer()
        self.transport.registerProducer(backend_transport, True)
        backend_transport.registerProducer(self.transport, True)
        self.timer.restart(self.settings.timeout_tunnel, self._close_tunnel)
        self.resume_reading()

    def _close_tunnel(self) -> None:
        """
        An idle tunnel is closed on both sides, cleanly.
        """
        self.transport.loseConnection()
        if self._tunnel is not None:
            self._tunnel.loseConnection()

    def tunnel_data(self, data: bytes) -> None:
        """
        Bytes from the backend through the tunnel.
        """
        self.timer.touch()
        self.transport.write(data)

    def tunnel_closed(self) -> None:
        """
        The backend closed the tunnel: close the client's side once what
        it is owed is sent.
        """
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.clients.discard(self)
        self.timer.cancel()
        if self._tunnel is not None:
            exchange, self._tunnel_exchange = self._tunnel_exchange, None
            if exchange is not None:
                exchange.abandon()  # closes the backend side and releases
            self._tunnel = None
        for exchange in self._exchanges:
            exchange.abandon()
        self._exchanges.clear()


@implementer(IProtocolNegotiationFactory)
class HTTPProxyFactory(Factory):
    """
    Builds the L7 protocol for one frontend, and keeps its keep-alive
    connections to each backend.  Over TLS it speaks C{http/1.1}, which
    is what it offers in ALPN.

    :ivar clients: its open client connections.
    :ivar timers: what times them (and their requests).
    """

    protocol = HTTPProxyProtocol  # type: ignore[assignment]
    noisy = False

    def logPrefix(self) -> str:
        return f"stickyproxy HTTP frontend {self.name!r}"

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]

    def __init__(
        self,
        name: str,
        router: Router,
        clock: IReactorTime,
        settings: HTTPSettings,
        events: EventStream | None = None,
    ) -> None:
        """
        :param events: where each finished request is published (nowhere
            by default).
        """
        self.name = name
        self.router = router
        self.clock = clock
        self.timers = TimerWheel(clock)
        self.settings = settings
        self.events = events if events is not None else EventStream()
        self.connections: dict[Backend, BackendConnections] = {}
        self.clients: ClientSet[HTTPProxyProtocol] = ClientSet()
        for backend in router.pool.backends:
            self._add_connections(backend)
        router.pool.observe(self._backend_changed)

    def _add_connections(self, backend: Backend) -> None:
        pool = self.router.pool
        self.connections[backend] = BackendConnections(
            backend,
            self.clock,
            pool.keepalive,
            pool.keepalive_timeout,
            send_proxy=pool.send_proxy is not None,
            max_head=self.settings.max_header_size * 2,
        )

    def _backend_changed(self, change: StateChange) -> None:
        backend = change.backend
        if change.kind == "added":
            self._add_connections(backend)
        elif change.kind == "removed":
            # Requests in flight finish on their connections, which are
            # closed when they come back.
            removed = self.connections.pop(backend, None)
            if removed is not None:
                removed.close()
        elif not backend.healthy:
            # Idle connections to a backend that went down would only fail
            # the next request sent on them.
            connections = self.connections.get(backend)
            if connections is not None:
                connections.close_idle()

    def buildProtocol(self, addr: IAddress | None) -> HTTPProxyProtocol:  # type: ignore[override]
        return HTTPProxyProtocol(self)

    def stopFactory(self) -> None:
        for connections in self.connections.values():
            connections.close_idle()

    def wind_down(self) -> None:
        """
        Take no more requests (a shutdown): idle client connections close
        now, busy ones once their requests are answered.
        """
        for client in self.clients:
            client.close_when_done()

    #: A reload that replaces this frontend winds it down too: a client on
    #: a keep-alive connection would otherwise keep the old settings.
    retire = wind_down

    def cut(self) -> None:
        """
        Cut every client connection off now (the shutdown timeout is over).
        """
        for client in self.clients:
            client.abort()

    def detach(self) -> None:
        """
        Stop following the pool, and close idle backend connections: this
        factory serves nobody any more (a reload replaced it).
        """
        self.router.pool.unobserve(self._backend_changed)
        self.stopFactory()
