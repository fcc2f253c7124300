"""
The router: persistence first, balancing second, retries on failure.

Protocols hand the router a context and a way to connect to a backend; the
router decides where the client goes, retries a failed connect elsewhere,
and lets the strategies record the binding.  Protocols tell it what went
wrong later too (L{Router.failed}): it decides whether the request goes
again, and reports to passive health.  This is the one place where the
failover policy lives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar, overload

import attrs
from zope.interface import implementer

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.core._pool import Pool
from stickyproxy.interfaces import IPersistenceStrategy, IRoutingContext
from stickyproxy.model import Backend, Decision, Outcome

_T = TypeVar("_T")

log = Logger()


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
    invalid: str | None = None


class NoBackendAvailable(Exception):
    """
    No backend may take this client (all down, in maintenance, or failed).
    """


#: How long a client waits, by default, for a strategy whose answer is in a
#: store (seconds): past it, the client is routed with what is known locally.
PERSISTENCE_TIMEOUT = 0.05


@attrs.define(eq=False)
class Router:
    """
    Routes clients of one frontend to the backends of one pool.

    :ivar strategies: tried in order; the first that knows the client wins.
    :ivar strict: when the bound backend cannot serve, refuse the client
        instead of moving it.
    :ivar persistence_timeout: the longest a client waits for strategies
        whose lookup returned a L{Deferred} (their table asks a store).
    """

    pool: Pool
    strategies: Sequence[IPersistenceStrategy]
    clock: IReactorTime
    strict: bool = False
    persistence_timeout: float = PERSISTENCE_TIMEOUT

    def choose(
        self, context: IRoutingContext, tried: Sequence[Backend] = ()
    ) -> Decision | Deferred[Decision]:
        """
        Decide the backend for one client.

        Every strategy is asked in order, and the first that names a
        backend decides.  When each answers at once (memory tables,
        cookies, hashes), so does this, with no L{Deferred}.  A strategy
        that answers with a L{Deferred} before any other knew the client
        is waited for, up to C{persistence_timeout}.

        :param tried: backends that already failed this client.
        :returns: the decision, or a L{Deferred} firing with it (and
            failing as this raises).
        :raises NoBackendAvailable: nobody may take it.
        """
        # Strict: stateless strategies must name the client's own backend,
        # not their next choice after it failed.  (No list is made for the
        # usual request, which has tried nothing.)
        if tried and not self.strict:
            context.tried = list(tried)
        elif context.tried:
            context.tried = []
        found: Backend | None = None
        finder: IPersistenceStrategy | None = None
        for strategy in self.strategies:
            # Every strategy of a chain looks, even after one knew the
            # client: looking is also where a strategy takes its own data
            # (its cookie, a route prefix) off the request.
            bound = strategy.lookup(context)
            if bound is None:
                continue
            # Not isinstance(bound, Deferred): Deferred's ABCMeta makes that
            # check slow, and this is the hot path.
            if isinstance(bound, Backend):
                if finder is None:
                    found, finder = bound, strategy
            elif finder is None:
                return _PendingChoice(self, context, tried).start(strategy, bound)
            else:
                bound.addErrback(_ignore)
                bound.cancel()  # an earlier strategy knew the client
        if found is not None and not tried and self.pool.serves_bound(found):
            # The usual answer, at once: the client's binding holds.
            assert finder is not None
            return Decision(found, Outcome.HIT, finder.name)
        return self._decide(context, tried, finder, found)

    def _decide(
        self,
        context: IRoutingContext,
        tried: Sequence[Backend],
        strategy: IPersistenceStrategy | None,
        bound: Backend | None,
    ) -> Decision:
        """
        Decide, once C{strategy} (the first that knew the client) named
        C{bound}, or no strategy knew it (both C{None}).

        :raises NoBackendAvailable: nobody may take the client.
        """
        previous: Backend | None = None
        if strategy is not None and bound is not None:
            if self.pool.serves_bound(bound) and bound not in tried:
                hit = Decision(bound, Outcome.HIT, strategy.name)
                if tried:  # a stateless strategy's next choice after a failure
                    hit = attrs.evolve(
                        hit, outcome=Outcome.REDISPATCH, previous=tried[0]
                    )
                return hit
            if self.strict:
                raise NoBackendAvailable(
                    f"backend {bound.name} holds the session and cannot serve (strict)"
                )
            moved = self._next_choice(strategy, context, tried, bound)
            if moved is not None:
                return moved
            previous = bound
        candidates = self.pool.accepting_new()
        if tried:
            candidates = [b for b in candidates if b not in tried]
        backend = self.pool.choose(candidates, context.client_host.encode())
        if backend is None:
            raise NoBackendAvailable(f"no usable backend in pool {self.pool.name}")
        if previous is not None and strategy is not None:
            return Decision(backend, Outcome.REDISPATCH, strategy.name, previous)
        return Decision(backend, Outcome.NEW, invalid=context.invalid)

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
            if not isinstance(candidate, Backend):
                # Only a table answers late, and a table remembers: it
                # would name the same backend again.
                candidate.addErrback(_ignore)
                candidate.cancel()
                break
            if candidate in accepting:
                choice = Decision(candidate, Outcome.REDISPATCH, strategy.name, bound)
                break
            excluded.append(candidate)
        context.tried = list(tried)
        return choice

    @overload
    def dispatch(
        self,
        context: IRoutingContext,
        connect: Callable[[Backend], Deferred[_T]],
    ) -> Deferred[tuple[Decision, _T]]: ...

    @overload
    def dispatch(
        self,
        context: IRoutingContext,
        connect: Callable[[Backend], Deferred[_T]],
        idle: Callable[[Backend], _T | None],
    ) -> tuple[Decision, _T] | Deferred[tuple[Decision, _T]]: ...

    def dispatch(
        self,
        context: IRoutingContext,
        connect: Callable[[Backend], Deferred[_T]],
        idle: Callable[[Backend], _T | None] | None = None,
    ) -> tuple[Decision, _T] | Deferred[tuple[Decision, _T]]:
        """
        Choose a backend and connect to it, retrying on others.

        A failed connect is reported to the pool and retried on another
        backend up to the pool's C{retries}.  The backend's C{active} count
        includes this client until L{release}.  Cancelling the result
        cancels the attempt in flight.  Once the backend has served the
        client, L{bind} records the binding.

        :param connect: opens a connection to one backend.
        :param idle: gives a connection to one backend that is at hand (an
            idle keep-alive one), or C{None}: then C{connect} opens one.
        :returns: the decision and the connection: at once, with no
            L{Deferred}, when the decision was at once and C{idle} had one
            (the usual way of a keep-alive request); else a L{Deferred}
            firing with them, or failing with L{NoBackendAvailable} when
            every allowed attempt failed.
        """
        try:
            decision = self.choose(context)
        except NoBackendAvailable:
            return fail()
        idle_tried = False
        if idle is not None and isinstance(decision, Decision):
            backend = decision.backend
            ready = idle(backend)
            if ready is not None:
                backend.active += 1
                self.pool.report_connect_success(backend)
                return decision, ready
            idle_tried = True
        dispatch = _Dispatch(self, context, connect, idle)
        dispatch.route(decision, idle_tried)
        return dispatch.result

    def failed(
        self,
        context: IRoutingContext,
        decision: Decision,
        reason: str,
        resend: Callable[[Backend], Deferred[_T]] | None = None,
    ) -> Deferred[tuple[Decision, _T]] | None:
        """
        The backend a dispatch connected failed the client afterwards: it
        broke off, answered what is not HTTP, or did not answer in time.

        A request that can go again as it was is sent again, once, to the
        same backend on a fresh connection: it went out on a reused
        keep-alive connection that closed before any byte of a response,
        most likely closed by the backend while idle, which says nothing
        about its health.  If that backend no longer serves bound clients
        (removed, down, in maintenance), the request goes where the client
        would go now instead.  Any other failure is reported to passive
        health.

        :param resend: given only for such a request: opens a fresh
            connection to a backend (so the request cannot be stale twice).
        :returns: the new attempt, as from L{dispatch}, which now holds the
            backend's C{active} count for the client; or C{None}: the caller
            answers the client and calls L{release} as usual.
        """
        backend = decision.backend
        if resend is None:
            self.pool.report_connect_failure(backend, reason)
            return None
        backend.active -= 1  # the new attempt counts the client
        dispatch = _Dispatch(self, context, resend)
        if self.pool.serves_bound(backend):
            dispatch.route(decision)
        else:
            # It left the pool, went down or into maintenance meanwhile:
            # the request goes where the client would go now.
            dispatch.tried.append(backend)
            try:
                dispatch.route(self.choose(context, dispatch.tried))
            except NoBackendAvailable:
                return fail()
        return dispatch.result

    def report_status(self, backend: Backend, status: int) -> None:
        """
        C{backend} answered an HTTP request with C{status} (passive health).
        """
        self.pool.report_status(backend, status)

    def bind(
        self, context: IRoutingContext, decision: Decision, status: int | None = None
    ) -> None:
        """
        The decided backend has served the client (L4: it connected; L7: its
        response head arrived): let every strategy record the binding.

        :param status: the status of the response head that arrived, which
            passive health hears of too (as from L{report_status}).
        """
        backend = decision.backend
        for strategy in self.strategies:
            strategy.persist(context, backend)
        if status is not None:
            self.pool.report_status(backend, status)

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
        idle: Callable[[Backend], _T | None] | None = None,
    ) -> None:
        self.router = router
        self.context = context
        self.connect = connect
        self.idle = idle
        self.tried: list[Backend] = []
        self.result: Deferred[tuple[Decision, _T]] = Deferred(self._cancel)
        self.choosing: Deferred[Decision] | None = None
        self.attempt: Deferred[_T] | None = None
        self.timer: IDelayedCall | None = None
        self.timed_out = False
        self.cancelled = False

    def route(
        self, decision: Decision | Deferred[Decision], idle_tried: bool = False
    ) -> None:
        """
        Try the decided backend, once the decision is in: an idle
        connection to it if there is one, else a new one.

        :param idle_tried: the caller just found no idle connection to it.
        """
        if not isinstance(decision, Decision):
            self.choosing = decision
            decision.addCallbacks(self._chosen, self._not_chosen)
            return
        backend = decision.backend
        backend.active += 1
        if self.idle is not None and not idle_tried:
            ready = self.idle(backend)
            if ready is not None:
                self._connected(ready, decision)
                return
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

    def _chosen(self, decision: Decision) -> None:
        self.choosing = None
        self.route(decision)

    def _not_chosen(self, failure: Failure) -> None:
        self.choosing = None
        if not self.cancelled:
            self.result.errback(failure)

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
            retry = self.router.choose(self.context, self.tried)
        except NoBackendAvailable:
            self.result.errback()
            return
        self.route(retry)

    def _cancel(self, result: Deferred[tuple[Decision, _T]]) -> None:
        self.cancelled = True
        self._stop_timer()
        if self.choosing is not None:
            self.choosing.cancel()
        if self.attempt is not None:
            self.attempt.cancel()


def _ignore(failure: Failure) -> None:
    """
    Swallow the failure of a lookup nobody waits for any more.
    """


class _PendingChoice:
    """
    A choice that waits for strategies whose lookup returned a L{Deferred}
    (their table asks a store).  The first strategy, in chain order, that
    names a backend decides, as in L{Router.choose}; a strategy still
    unanswered when C{persistence_timeout} runs out is cancelled and counts
    as not knowing the client, and so does one whose lookup failed.
    """

    def __init__(
        self, router: Router, context: IRoutingContext, tried: Sequence[Backend]
    ) -> None:
        self.router = router
        self.context = context
        self.tried = tried
        self.strategies: Sequence[IPersistenceStrategy] = ()
        self.answers: list[Backend | None | Deferred[Backend | None]] = []
        self.result: Deferred[Decision] = Deferred(self._cancel)
        self.timer: IDelayedCall | None = None
        self.waiting = False
        self.done = False

    def start(
        self, strategy: IPersistenceStrategy, pending: Deferred[Backend | None]
    ) -> Deferred[Decision]:
        """
        Wait for C{pending}, the answer of C{strategy}, after asking the
        strategies that follow it (they take their data off the request
        now, whatever the answer).
        """
        router = self.router
        strategies = router.strategies
        index = next(i for i, s in enumerate(strategies) if s is strategy)
        self.strategies = strategies[index:]
        self.answers = [pending]
        self.answers.extend(
            strategy.lookup(self.context) for strategy in self.strategies[1:]
        )
        for position, answer in enumerate(self.answers):
            if isinstance(answer, Deferred):
                answer.addCallbacks(
                    self._answered,
                    self._failed,
                    callbackArgs=(position,),
                    errbackArgs=(position,),
                )
        self.waiting = True
        self._settle()
        if not self.done:
            self.timer = router.clock.callLater(
                router.persistence_timeout, self._time_out
            )
        return self.result

    def _answered(self, backend: Backend | None, position: int) -> None:
        if not self.done:
            self.answers[position] = backend
            if self.waiting:
                self._settle()

    def _failed(self, failure: Failure, position: int) -> None:
        if self.done:
            return
        if not failure.check(CancelledError):
            log.warn(
                "{frontend}: strategy {strategy} could not look {client} up, "
                "routing without it: {reason}",
                frontend=self.context.frontend,
                strategy=self.strategies[position].name,
                client=self.context.client_host,
                reason=failure.getErrorMessage(),
            )
        self._answered(None, position)

    def _settle(self, late: bool = False) -> None:
        """
        Decide as soon as the answers so far allow it: the first backend
        named, with nothing unanswered before it; or none at all.

        :param late: the time is up: take what is unanswered as C{None}.
        """
        for position, answer in enumerate(self.answers):
            if isinstance(answer, Deferred):
                if late:
                    continue
                return
            if answer is not None:
                self._decide(self.strategies[position], answer)
                return
        self._decide(None, None)

    def _time_out(self) -> None:
        self.timer = None
        # Route with what is known: the rest is cancelled once decided.
        self._settle(late=True)

    def _decide(
        self, strategy: IPersistenceStrategy | None, bound: Backend | None
    ) -> None:
        self._stop()
        try:
            decision = self.router._decide(self.context, self.tried, strategy, bound)
        except Exception:  # NoBackendAvailable, or a bug: never leave it hanging
            self.result.errback()
        else:
            self.result.callback(decision)

    def _stop(self) -> None:
        """
        Stop waiting: cancel the timer and every lookup still unanswered.
        """
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for answer in self.answers:
            if isinstance(answer, Deferred):
                answer.cancel()

    def _cancel(self, result: Deferred[Decision]) -> None:
        self._stop()
