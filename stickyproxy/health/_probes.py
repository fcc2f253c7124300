"""
Active health probes: a TCP connect (with optional send and expect) and
an HTTP request through treq.
"""

from __future__ import annotations

from typing import Any

import attrs
from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory

from stickyproxy.config._settings import StatusRanges
from stickyproxy.core._endpoints import connect_quietly, host_port
from stickyproxy.core._pool import Pool
from stickyproxy.core._proxyheader import HEADERS
from stickyproxy.interfaces import IHealthProbe
from stickyproxy.model import Backend


class ProbeFailed(Exception):
    """
    A probe ran and the backend did not pass; the message says why.
    """


class _TCPCheck(Protocol):
    """
    Sends the configured bytes and waits for the expected ones.
    """

    def __init__(self, probe: TCPProbe) -> None:
        self.probe = probe
        self.received = b""
        self.done: Deferred[None] = Deferred(lambda d: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if self.probe.send_proxy is not None:
            transport.write(
                HEADERS[self.probe.send_proxy](transport.getHost(), transport.getPeer())
            )
        if self.probe.send:
            transport.write(self.probe.send)
        if self.probe.expect is None:
            self._finish(None)

    def dataReceived(self, data: bytes) -> None:
        expect = self.probe.expect
        assert expect is not None
        self.received = (self.received + data)[-(len(expect) + 65536) :]
        if expect in self.received:
            self._finish(None)

    def _finish(self, failure: Failure | None) -> None:
        if not self.done.called:
            self.done.callback(None) if failure is None else self.done.errback(failure)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(
                ProbeFailed(f"closed before {self.probe.expect!r} arrived")
            )


@implementer(IHealthProbe)
@attrs.frozen
class TCPProbe:
    """
    C{type = "tcp"}: the backend accepts a connection (and, with C{expect},
    answers C{send} with the expected bytes).
    """

    send: bytes = b""
    expect: bytes | None = None
    send_proxy: str | None = None

    def check(self, backend: Backend) -> Deferred[None]:
        check = _TCPCheck(self)
        connected = connect_quietly(backend.endpoint, check)
        connected.addCallback(lambda _: check.done)
        return connected


def probe_netloc(backend: Backend) -> str:
    """
    The host[:port] HTTP probes address a backend by: its address when it
    is C{host:port}, else its name (the endpoint factory maps either back).
    """
    return backend.name if host_port(backend.address) is None else backend.address


@implementer(IStreamClientEndpoint)
@attrs.frozen
class _QuietEndpoint:
    """
    Connects through another endpoint, silencing the factory it is given:
    the connection pool's factory would log a "Starting factory" and a
    "Stopping factory" line per probe, which is noise.
    """

    endpoint: IStreamClientEndpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if isinstance(protocolFactory, Factory):
            protocolFactory.noisy = False
        return self.endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
@attrs.frozen
class PoolEndpoints:
    """
    Sends each probe request to its backend's own endpoint, whatever kind
    it is (TCP, UNIX socket, TLS), by the URL's host, quietly.
    """

    pool: Pool

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        netloc = uri.netloc.decode("ascii")
        for backend in self.pool.backends:
            if probe_netloc(backend) == netloc:
                return _QuietEndpoint(backend.endpoint)
        raise ValueError(f"no backend at {netloc}")


@implementer(IHealthProbe)
@attrs.frozen
class HTTPProbe:
    """
    C{type = "http"}: a request through treq whose status (and optionally
    body) must match.  The whole body is read, so the probe's timeout
    covers a backend that answers its headers and then stalls.
    """

    client: Any  # a treq HTTPClient (StubTreq in tests)
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    expect_status: StatusRanges = StatusRanges.parse("200-399")
    expect_body: bytes | None = None

    def check(self, backend: Backend) -> Deferred[None]:
        return Deferred.fromCoroutine(self._check(backend))

    async def _check(self, backend: Backend) -> None:
        netloc = probe_netloc(backend)
        response = await self.client.request(
            self.method,
            f"http://{netloc}{self.path}",
            headers={"Host": self.host or netloc, "User-Agent": "stickyproxy-probe"},
            allow_redirects=False,
        )
        body = await response.content()
        if response.code not in self.expect_status:
            raise ProbeFailed(
                f"HTTP {response.code}, expected {self.expect_status.text}"
            )
        if self.expect_body is not None and self.expect_body not in body:
            raise ProbeFailed(f"body does not contain {self.expect_body!r}")


def treq_client(reactor: Any, pool: Pool) -> Any:
    """
    The treq client HTTP probes use: its own non-persistent connection pool
    (every probe opens a fresh connection, as a client would), reaching each
    backend through its own endpoint.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    connections = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent.usingEndpointFactory(reactor, PoolEndpoints(pool), pool=connections)
    return HTTPClient(agent)
