"""
Balancers: the first pick for a client with no binding.

All of them take the candidate list the router allows (backends accepting
new clients, minus those that already failed this client), so none of them
knows about health or persistence.  Each follows the pool's changes
(L{IBalancer.backend_changed}); only round-robin keeps anything per backend.

Two read the pool's live session counts, which the pool hands them as a
function at construction (L{make_balancer}'s C{sessions}), so that
L{IBalancer} stays as it is: L{LeastSessions}, and L{SessionCap}, the
bounded-load cap on sessions that goes in front of any balancer.  There is
one bounded-load rule (L{bounded}), for C{hash}'s connections and for the
cap's sessions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from hashlib import blake2b
from typing import Any

import attrs
from zope.interface import implementer

from stickyproxy.interfaces import IBalancer
from stickyproxy.model import Backend, StateChange

#: The pool changes after which a balancer's per-backend state is stale.
SET_CHANGES = frozenset({"added", "removed", "weight"})

#: How many live sessions the named backend holds (L{Pool.sessions}).
SessionCount = Callable[[str], int]


class _Stateless:
    """
    A balancer that keeps nothing per backend: each pick reads the
    candidates it is given, so a change in the pool needs no following.
    """

    def backend_changed(self, change: StateChange) -> None:
        pass


@lru_cache(maxsize=4096)
def _name_hash(name: str) -> Any:
    """
    The hash state after a backend's name: each key's hash goes on from a
    copy of it, so the name is encoded and hashed once, not per client.
    """
    return blake2b(name.encode("utf-8") + b"\0", digest_size=8)


def _scores(key: bytes, backends: Sequence[Backend]) -> list[float]:
    """
    Each backend's weighted rendezvous score for C{key}: its weight over
    -ln of a stable hash of (name, key) in the open interval (0, 1), the
    same in every process.
    """
    scores = []
    for backend in backends:
        state = _name_hash(backend.name).copy()
        state.update(key)
        unit = (int.from_bytes(state.digest(), "big") + 1) / (2.0**64 + 2)
        scores.append(-max(backend.weight, 1) / math.log(unit))
    return scores


def rendezvous_order(key: bytes, backends: Sequence[Backend]) -> list[Backend]:
    """
    Order backends by weighted rendezvous (highest random weight) hashing.

    The first is where C{key} belongs.  Because each backend's score depends
    only on the key and that backend, removing one backend moves only the
    keys it held, and adding one takes about its weight's share.
    """
    if len(backends) <= 1:
        return list(backends)
    scores = _scores(key, backends)
    order = sorted(range(len(backends)), key=scores.__getitem__, reverse=True)
    return [backends[index] for index in order]


def rendezvous_first(key: bytes, backends: Sequence[Backend]) -> Backend | None:
    """
    The first backend of L{rendezvous_order}, with no sort: where C{key}
    belongs, or C{None} when there are no backends.
    """
    if len(backends) <= 1:
        return backends[0] if backends else None
    scores = _scores(key, backends)
    return backends[scores.index(max(scores))]


@implementer(IBalancer)
@attrs.define(eq=False)
class RoundRobin:
    """
    Smooth weighted round-robin (as nginx): over any run of picks each
    backend gets its weight's share, interleaved rather than in bursts.
    """

    name = "roundrobin"
    _current: dict[str, float] = attrs.field(factory=dict)

    def choose(self, candidates: Sequence[Backend], key: bytes) -> Backend | None:
        best: Backend | None = None
        best_current = 0.0
        total = 0.0
        current = self._current
        for backend in candidates:
            weight = backend.effective_weight
            value = current.get(backend.name, 0.0) + weight
            current[backend.name] = value
            total += weight
            if best is None or value > best_current:
                best, best_current = backend, value
        if best is not None:
            current[best.name] = best_current - total
        return best

    def backend_changed(self, change: StateChange) -> None:
        # The current values balance out over the old set and weights: a
        # new cycle starts, so a new backend gets its share from the next
        # pick, and a removed one leaves nothing behind.
        if change.kind in SET_CHANGES:
            self._current.clear()


def _per_weight(count: float, backend: Backend) -> float:
    weight = backend.effective_weight
    return count / weight if weight > 0 else float("inf")


def _load(backend: Backend) -> float:
    return _per_weight(backend.active, backend)


def bounded(
    backends: Sequence[Backend], count: Callable[[Backend], int], factor: float
) -> list[Backend]:
    """
    The backends that may take one more client under bounded load
    (Mirrokni, Thorup and Zadimoghaddam): with it, a backend holds at most
    C{ceil(factor * share)}, its share being its weight's part of the total
    (the newcomer included).  Never empty when C{backends} is not: some
    backend is at or below its share.

    :param count: what a backend holds (open connections, sessions).
    :param factor: above 1.
    """
    counts = [count(b) for b in backends]
    weights = [max(b.weight, 1) for b in backends]
    total_weight = sum(weights)
    total = sum(counts) + 1
    return [
        b
        for b, held, weight in zip(backends, counts, weights, strict=True)
        if held < math.ceil(factor * total * weight / total_weight)
    ]


@implementer(IBalancer)
@attrs.define(eq=False)
class LeastConnections(_Stateless):
    """
    The backend with the fewest open connections per unit of weight; ties
    go round-robin so that an idle pool still spreads clients.
    """

    name = "leastconn"
    _turn: int = 0

    def load(self, backend: Backend) -> float:
        """
        :returns: what the backend holds per unit of its weight.
        """
        return _load(backend)

    def choose(self, candidates: Sequence[Backend], key: bytes) -> Backend | None:
        if not candidates:
            return None
        self._turn += 1
        count = len(candidates)
        start = self._turn % count
        return min(
            (candidates[(start + i) % count] for i in range(count)), key=self.load
        )


@implementer(IBalancer)
@attrs.define(eq=False)
class LeastSessions(LeastConnections):
    """
    The backend with the fewest live sessions per unit of weight: a new or
    recovered backend takes the new sessions until it holds its share,
    instead of its round-robin part of them while the old sessions stay
    where they are.  Ties go round-robin, so that new sessions arriving
    together, before their counts show, spread over equally loaded
    backends rather than all going to the first.

    :ivar sessions: the pool's count (L{Pool.sessions}).
    """

    name = "leastsessions"
    sessions: SessionCount = attrs.field(kw_only=True)

    def load(self, backend: Backend) -> float:
        return _per_weight(self.sessions(backend.name), backend)


@implementer(IBalancer)
@attrs.define(eq=False)
class SessionCap:
    """
    Bounded load on sessions in front of any balancer
    (C{session_balance_factor}): a backend whose live sessions would go
    over C{factor} times its weighted share is left out of the candidates
    the balancer picks from.

    :ivar balancer: picks among the backends under the cap.
    :ivar factor: above 1.
    :ivar sessions: the pool's count (L{Pool.sessions}).
    """

    balancer: IBalancer
    factor: float
    sessions: SessionCount

    @property
    def name(self) -> str:
        return str(self.balancer.name)

    def choose(self, candidates: Sequence[Backend], key: bytes) -> Backend | None:
        sessions = self.sessions
        allowed = bounded(candidates, lambda b: sessions(b.name), self.factor)
        return self.balancer.choose(allowed, key)

    def backend_changed(self, change: StateChange) -> None:
        self.balancer.backend_changed(change)


@implementer(IBalancer)
@attrs.define(eq=False)
class PowerOfTwoChoices(_Stateless):
    """
    Two backends drawn at random (by weight), the less loaded one wins: near
    least-connections quality without scanning, and no herd on one backend.
    """

    name = "random2"
    _random: random.Random = attrs.field(factory=random.Random)

    def choose(self, candidates: Sequence[Backend], key: bytes) -> Backend | None:
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        weights = [b.effective_weight for b in candidates]
        first, second = self._random.choices(candidates, weights=weights, k=2)
        return first if _load(first) <= _load(second) else second


@implementer(IBalancer)
@attrs.define(eq=False)
class ConsistentHash(_Stateless):
    """
    Weighted rendezvous hashing of the client key, optionally with bounded
    load: with C{balance_factor} c, a backend already holding more than c
    times its fair share of connections is passed over for the next in the
    key's order (Google's "consistent hashing with bounded loads").
    """

    name = "hash"
    balance_factor: float | None = None

    def choose(self, candidates: Sequence[Backend], key: bytes) -> Backend | None:
        order = rendezvous_order(key, candidates)
        if not order or self.balance_factor is None:
            return order[0] if order else None
        allowed = bounded(order, lambda b: b.active, self.balance_factor)
        return allowed[0] if allowed else order[0]


def _no_sessions(name: str) -> int:
    raise TypeError("this balancer needs the pool's session count (sessions=)")


#: Each configurable balancer by name, built from the C{hash} balance
#: factor and the pool's session count.
BALANCERS: dict[str, Callable[[float | None, SessionCount], IBalancer]] = {
    "roundrobin": lambda factor, sessions: RoundRobin(),
    "leastconn": lambda factor, sessions: LeastConnections(),
    "random2": lambda factor, sessions: PowerOfTwoChoices(),
    "hash": lambda factor, sessions: ConsistentHash(balance_factor=factor),
    "leastsessions": lambda factor, sessions: LeastSessions(sessions=sessions),
}


def make_balancer(
    name: str,
    balance_factor: float | None = None,
    session_balance_factor: float | None = None,
    sessions: SessionCount = _no_sessions,
) -> IBalancer:
    """
    Build a balancer by its configured name (one of L{BALANCERS}).

    :param balance_factor: the bounded-load factor of C{"hash"}.
    :param session_balance_factor: if given, the balancer picks only among
        backends under this bound on sessions (L{SessionCap}).
    :param sessions: the pool's session count, for C{"leastsessions"} and
        C{session_balance_factor}.
    """
    balancer = BALANCERS[name](balance_factor, sessions)
    if session_balance_factor is not None:
        balancer = SessionCap(balancer, session_balance_factor, sessions)
    return balancer
