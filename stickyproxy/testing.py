"""
Fakes for testing persistence strategies (ours or a plugin's) without a
network: backends whose endpoints go nowhere, pools of them, and contexts.

    from stickyproxy.testing import make_pool, routing_context

    pool = make_pool("a", "b", "c")
    strategy = MyFactory().build({}, pool, Clock(), "frontend[0].persistence")
    strategy.lookup(routing_context("10.0.0.1"))

For HTTP strategies, L{http_context} builds a request and L{respond} gives
it the response head that C{persist} sees:

    ctx = http_context(b"/cart", cookies={"JSESSIONID": "abc.b"})
    backend = strategy.lookup(ctx)
    respond(ctx, 200, [(b"set-cookie", b"JSESSIONID=def; Path=/")])
    strategy.persist(ctx, backend)
    set_cookies(ctx)  # what the client is sent

L{SlowStickTable} is a stick table in a pretend store that answers late,
fails, or never answers, to show that a strategy (and the router) keeps
routing while the store is slow or down.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)

from stickyproxy.core._balancers import RoundRobin
from stickyproxy.core._cookies import SetCookie
from stickyproxy.core._endpoints import connect_endpoint
from stickyproxy.core._pool import Pool
from stickyproxy.core._router import RoutingContext
from stickyproxy.http._context import HTTPRoutingContext
from stickyproxy.interfaces import IBalancer, IStickTable
from stickyproxy.model import AdminState, Backend, Health


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    """
    A client endpoint whose every connect is refused: for backends whose
    connections a test never makes.
    """

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return fail(ConnectionRefusedError("stickyproxy.testing endpoint"))


def make_backend(
    name: str,
    weight: int = 1,
    admin_state: AdminState = AdminState.READY,
    health: Health = Health.UP,
    endpoint: IStreamClientEndpoint | None = None,
) -> Backend:
    """
    A backend named C{name} (its route is its name too).
    """
    return Backend(
        name=name,
        address=f"{name}.invalid:1",
        endpoint=endpoint if endpoint is not None else RefusingEndpoint(),
        weight=weight,
        route=name,
        admin_state=admin_state,
        health=health,
    )


def tcp_backend(reactor: Any, name: str, port: int) -> Backend:
    """
    A backend at 127.0.0.1:C{port}, connected to through C{reactor} (a
    L{twisted.internet.testing.MemoryReactor} records the connects).
    """
    address = f"127.0.0.1:{port}"
    return Backend(name, address, connect_endpoint(reactor, address, 3.0), route=name)


def make_pool(
    *names: str, balancer: IBalancer | None = None, retries: int = 2, name: str = "pool"
) -> Pool:
    """
    A pool of L{make_backend} backends (round-robin unless told otherwise).
    """
    return Pool(
        name=name,
        backends=tuple(make_backend(n) for n in names),
        balancer=balancer if balancer is not None else RoundRobin(),
        retries=retries,
    )


def routing_context(
    host: str, port: int = 0, mode: str = "tcp", frontend: str = "test"
) -> RoutingContext:
    """
    The context a frontend builds for a client at C{host}.
    """
    return RoutingContext(
        mode=mode, frontend=frontend, client_host=host, client_port=port
    )


def assert_provides(interface: type[Interface], obj: object) -> None:
    """
    Check that C{obj} fully provides C{interface} (methods and attributes).

    :raises zope.interface.exceptions.Invalid: it does not.
    """
    verifyObject(interface, obj)


def http_context(
    target: bytes = b"/",
    *,
    client: str = "192.0.2.1",
    peer: str | None = None,
    secure: bool = False,
    method: bytes = b"GET",
    headers: Iterable[tuple[bytes, bytes]] = (),
    cookies: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    port: int = 0,
    frontend: str = "test",
) -> HTTPRoutingContext:
    """
    The context an HTTP frontend builds for one request.

    :param target: the request-target (path and query).
    :param client: the client's address.
    :param peer: the TCP peer's address (a proxy in front); C{client} when
        C{None}.
    :param secure: whether the client came over TLS.
    :param headers: request headers, as (name, value) pairs; names are
        lowercased.
    :param cookies: request cookies, sent in one C{Cookie} header after
        C{headers}.
    """
    request_headers = [(name.lower(), value) for name, value in headers]
    pairs = list(cookies.items() if isinstance(cookies, Mapping) else cookies)
    if pairs:
        value = "; ".join(f"{name}={cookie}" for name, cookie in pairs)
        request_headers.append((b"cookie", value.encode("latin-1")))
    return HTTPRoutingContext(
        frontend=frontend,
        client_host=client,
        client_port=port,
        peer_host=client if peer is None else peer,
        secure=secure,
        method=method,
        target=target,
        request_headers=request_headers,
    )


def respond(
    context: HTTPRoutingContext,
    status: int = 200,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> HTTPRoutingContext:
    """
    Give C{context} the response head a backend sent, as the frontend does
    before it calls C{persist}.

    :param headers: response headers, as (name, value) pairs; names are
        lowercased.
    :returns: C{context}.
    """
    context.status = status
    context.response_headers = [(name.lower(), value) for name, value in headers]
    return context


def set_cookies(context: HTTPRoutingContext) -> list[SetCookie]:
    """
    :returns: every C{Set-Cookie} of the response, as it will be sent.
    """
    cookies = []
    for name, value in context.response_headers or ():
        if name == b"set-cookie":
            cookie = SetCookie.parse(value)
            if cookie is not None:
                cookies.append(cookie)
    return cookies


@implementer(IStickTable)
@attrs.define(eq=False)
class SlowStickTable:
    """
    A stick table kept in a pretend store that every L{get} must ask: it
    answers with a L{Deferred}, C{latency} seconds later on C{clock} (with
    what the store held when asked).  Writes reach the store at once.
    Bindings never expire.

    :ivar latency: seconds before the store answers; C{None}: it never does.
    :ivar error: when set, the store fails every lookup with it (after
        C{latency}).
    :ivar bindings: what the store holds, key -> backend name.
    :ivar asked: how many lookups were made.
    """

    clock: IReactorTime
    latency: float | None = 0.1
    error: Exception | None = None
    bindings: dict[bytes, str] = attrs.field(factory=dict)
    asked: int = 0
    _holds: Counter[bytes] = attrs.field(factory=Counter)
    _waiting: dict[Deferred[str | None], IDelayedCall | None] = attrs.field(
        factory=dict
    )

    @property
    def pending(self) -> int:
        """
        How many lookups are still unanswered (neither answered nor
        cancelled).
        """
        return len(self._waiting)

    def get(self, key: bytes) -> Deferred[str | None]:
        self.asked += 1
        answer: Deferred[str | None] = Deferred(self._cancel)
        call = None
        if self.latency is not None:
            call = self.clock.callLater(
                self.latency, self._answer, answer, self.bindings.get(key)
            )
        self._waiting[answer] = call
        return answer

    def _answer(self, answer: Deferred[str | None], name: str | None) -> None:
        del self._waiting[answer]
        if self.error is not None:
            answer.errback(self.error)
        else:
            answer.callback(name)

    def _cancel(self, answer: Deferred[str | None]) -> None:
        call = self._waiting.pop(answer)
        if call is not None:
            call.cancel()

    def bind(self, key: bytes, backend: str) -> None:
        self.bindings[key] = backend
        self._holds[key] += 1

    def refresh(self, key: bytes, backend: str) -> None:
        if key in self.bindings:
            self.bindings[key] = backend

    def release(self, key: bytes) -> None:
        if self._holds[key] > 0:
            self._holds[key] -= 1

    def forget(self, key: bytes) -> None:
        self.bindings.pop(key, None)
        self._holds.pop(key, None)

    def count(self, backend: str) -> int:
        return sum(1 for name in self.bindings.values() if name == backend)

    def __len__(self) -> int:
        return len(self.bindings)
