"""
The router: persistence first, balancing second, retries on failure.

Protocols hand the router a context and a way to connect to a backend; the
router decides where the client goes, retries a failed connect elsewhere,
and lets the strategies record the binding.  This is the one place where
the failover policy lives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import attrs
from zope.interface import implementer

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from stickyproxy.core._pool import Pool
from stickyproxy.interfaces import IPersistenceStrategy, IRoutingContext
from stickyproxy.model import Backend, Decision, Outcome

_T = TypeVar("_T")


@implementer(IRoutingContext)
@attrs.define
class RoutingContext:
    """
    The plain L{IRoutingContext} the L4 frontend builds.
    """

    mode: str
    frontend: str
    client_host: str
    client_port: int = 0
    tried: list[Backend] = attrs.field(factory=list)


class NoBackendAvailable(Exception):
    """
    No backend may take this client (all down, in maintenance, or failed).
    """


@attrs.define(eq=False)
class Router:
    """
    Routes clients of one frontend to the backends of one pool.

    :ivar strategies: tried in order; the first that knows the client wins.
    :ivar strict: when the bound backend cannot serve, refuse the client
        instead of moving it.
    """

    pool: Pool
    strategies: Sequence[IPersistenceStrategy]
    clock: IReactorTime
    strict: bool = False

    def choose(
        self, context: IRoutingContext, tried: Sequence[Backend] = ()
    ) -> Decision:
        """
        Decide the backend for one client.

        :param tried: backends that already failed this client.
        :raises NoBackendAvailable: nobody may take it.
        """
        previous: Backend | None = None
        decided_by: str | None = None
        hit: Decision | None = None
        # Strict: stateless strategies must name the client's own backend,
        # not their next choice after it failed.
        skipped = [] if self.strict else list(tried)
        if skipped or context.tried:
            context.tried = skipped
        for strategy in self.strategies:
            # Every strategy of a chain looks, even after one knew the
            # client: looking is also where a strategy takes its own data
            # (its cookie, a route prefix) off the request.
            bound = strategy.lookup(context)
            if bound is None or hit is not None or previous is not None:
                continue
            if self.pool.serves_bound(bound) and bound not in tried:
                hit = Decision(bound, Outcome.HIT, strategy.name)
                if tried:  # a stateless strategy's next choice after a failure
                    hit = attrs.evolve(
                        hit, outcome=Outcome.REDISPATCH, previous=tried[0]
                    )
            else:
                previous, decided_by = bound, strategy.name
                if not self.strict:
                    hit = self._next_choice(strategy, context, tried, bound)
        if hit is not None:
            return hit
        if previous is not None and self.strict:
            raise NoBackendAvailable(
                f"backend {previous.name} holds the session and cannot serve (strict)"
            )
        candidates = [b for b in self.pool.accepting_new() if b not in tried]
        backend = self.pool.balancer.choose(candidates, context.client_host.encode())
        if backend is None:
            raise NoBackendAvailable(f"no usable backend in pool {self.pool.name}")
        if previous is not None:
            return Decision(backend, Outcome.REDISPATCH, decided_by, previous)
        return Decision(backend, Outcome.NEW)

    def _next_choice(
        self,
        strategy: IPersistenceStrategy,
        context: IRoutingContext,
        tried: Sequence[Backend],
        bound: Backend,
    ) -> Decision | None:
        """
        Where C{strategy} sends the client when its backend cannot: asked
        again without it, a stateless strategy (a hash) names where it will
        send the client from now on, so the client moves once, not twice.
        A strategy that remembers (a cookie, a table) names the same backend
        again, and the balancer decides.
        """
        excluded = [*tried, bound]
        accepting = self.pool.accepting_new()
        choice = None
        for _ in self.pool.backends:
            context.tried = excluded
            candidate = strategy.lookup(context)
            if candidate is None or candidate in excluded:
                break
            if candidate in accepting:
                choice = Decision(candidate, Outcome.REDISPATCH, strategy.name, bound)
                break
            excluded.append(candidate)
        context.tried = list(tried)
        return choice

    def dispatch(
        self,
        context: IRoutingContext,
        connect: Callable[[Backend], Deferred[_T]],
    ) -> Deferred[tuple[Decision, _T]]:
        """
        Choose a backend and connect to it, retrying on others.

        A failed connect is reported to the pool and retried on another
        backend up to the pool's C{retries}.  The backend's C{active} count
        includes this client until L{release}.  Cancelling the result
        cancels the attempt in flight.  Once the backend has served the
        client, L{bind} records the binding.

        :param connect: opens a connection to one backend.
        :returns: the decision and what C{connect} produced (at once, when
            C{connect} answers at once, as a pooled connection does); fails
            with L{NoBackendAvailable} when every allowed attempt failed.
        """
        try:
            decision = self.choose(context)
        except NoBackendAvailable:
            return fail()
        return _Dispatch(self, context, connect).start(decision)

    def bind(self, context: IRoutingContext, decision: Decision) -> None:
        """
        The decided backend has served the client (L4: it connected; L7: its
        response head arrived): let every strategy record the binding.
        """
        for strategy in self.strategies:
            strategy.persist(context, decision.backend)

    def release(
        self, context: IRoutingContext, backend: Backend, bound: bool = True
    ) -> None:
        """
        The client's connection (or request) to C{backend} has ended.

        :param bound: whether L{bind} ran for it; strategies release only
            what they persisted.
        """
        backend.active -= 1
        if bound:
            for strategy in self.strategies:
                strategy.release(context, backend)


class _Dispatch(Generic[_T]):
    """
    One client's way to a connected backend: an attempt, and on failure
    the next backend the router chooses, until one connects or the pool's
    C{retries} are spent.  Callbacks rather than a coroutine: this runs once
    per L4 connection and per L7 request.
    """

    def __init__(
        self,
        router: Router,
        context: IRoutingContext,
        connect: Callable[[Backend], Deferred[_T]],
    ) -> None:
        self.router = router
        self.context = context
        self.connect = connect
        self.tried: list[Backend] = []
        self.result: Deferred[tuple[Decision, _T]] = Deferred(self._cancel)
        self.attempt: Deferred[_T] | None = None
        self.timer: IDelayedCall | None = None
        self.timed_out = False
        self.cancelled = False

    def start(self, decision: Decision) -> Deferred[tuple[Decision, _T]]:
        self._try(decision)
        return self.result

    def _try(self, decision: Decision) -> None:
        backend = decision.backend
        backend.active += 1
        attempt = self.attempt = self.connect(backend)
        if not attempt.called:
            self.timer = self.router.clock.callLater(
                self.router.pool.connect_timeout, self._time_out
            )
        attempt.addCallbacks(
            self._connected,
            self._failed,
            callbackArgs=(decision,),
            errbackArgs=(decision,),
        )

    def _time_out(self) -> None:
        self.timer = None
        self.timed_out = True
        if self.attempt is not None:
            self.attempt.cancel()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _connected(self, value: _T, decision: Decision) -> None:
        self._stop_timer()
        self.attempt = None
        self.router.pool.report_connect_success(decision.backend)
        self.result.callback((decision, value))

    def _failed(self, failure: Failure, decision: Decision) -> None:
        self._stop_timer()
        self.attempt = None
        backend = decision.backend
        backend.active -= 1
        if self.cancelled:
            return  # the client left: nothing to retry for
        pool = self.router.pool
        if self.timed_out:
            self.timed_out = False
            reason = "connect timed out"
        else:
            reason = failure.getErrorMessage()
        pool.report_connect_failure(backend, reason)
        self.tried.append(backend)
        if len(self.tried) > pool.retries:
            self.result.errback(
                NoBackendAvailable(
                    f"{len(self.tried)} connect attempts failed in pool {pool.name}"
                )
            )
            return
        try:
            decision = self.router.choose(self.context, self.tried)
        except NoBackendAvailable:
            self.result.errback()
            return
        self._try(decision)

    def _cancel(self, result: Deferred[tuple[Decision, _T]]) -> None:
        self.cancelled = True
        self._stop_timer()
        if self.attempt is not None:
            self.attempt.cancel()
