"""
Balancers: the first pick for a client with no binding.

All four take the candidate list the router allows (backends accepting new
clients, minus those that already failed this client), so none of them
knows about health or persistence.  Each follows the pool's changes
(L{IBalancer.backend_changed}); only round-robin keeps anything per backend.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from hashlib import blake2b

import attrs
from zope.interface import implementer

from stickyproxy.interfaces import IBalancer
from stickyproxy.model import Backend, StateChange

#: The pool changes after which a balancer's per-backend state is stale.
SET_CHANGES = frozenset({"added", "removed", "weight"})


class _Stateless:
    """
    A balancer that keeps nothing per backend: each pick reads the
    candidates it is given, so a change in the pool needs no following.
    """

    def backend_changed(self, change: StateChange) -> None:
        pass


def _unit_hash(key: bytes, name: str) -> float:
    """
    A stable hash of (key, backend name) in the open interval (0, 1),
    identical in every process.
    """
    digest = blake2b(name.encode("utf-8") + b"\0" + key, digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2.0**64 + 2)


def rendezvous_order(key: bytes, backends: Sequence[Backend]) -> list[Backend]:
    """
    Order backends by weighted rendezvous (highest random weight) hashing.

    The first is where C{key} belongs.  Because each backend's score depends
    only on the key and that backend, removing one backend moves only the
    keys it held, and adding one takes about its weight's share.
    """
    if len(backends) <= 1:
        return list(backends)

    def score(backend: Backend) -> float:
        return -max(backend.weight, 1) / math.log(_unit_hash(key, backend.name))

    return sorted(backends, key=score, reverse=True)


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


def _load(backend: Backend) -> float:
    weight = backend.effective_weight
    return backend.active / weight if weight > 0 else float("inf")


@implementer(IBalancer)
@attrs.define(eq=False)
class LeastConnections(_Stateless):
    """
    The backend with the fewest open connections per unit of weight; ties
    go round-robin so that an idle pool still spreads clients.
    """

    name = "leastconn"
    _turn: int = 0

    def choose(self, candidates: Sequence[Backend], key: bytes) -> Backend | None:
        if not candidates:
            return None
        self._turn += 1
        count = len(candidates)
        start = self._turn % count
        rotated = [candidates[(start + i) % count] for i in range(count)]
        return min(rotated, key=_load)


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
        total_weight = sum(max(b.weight, 1) for b in order)
        total_active = sum(b.active for b in order) + 1
        for backend in order:
            share = total_active * max(backend.weight, 1) / total_weight
            if backend.active < math.ceil(self.balance_factor * share):
                return backend
        return order[0]


BALANCERS: dict[str, Callable[[float | None], IBalancer]] = {
    "roundrobin": lambda factor: RoundRobin(),
    "leastconn": lambda factor: LeastConnections(),
    "random2": lambda factor: PowerOfTwoChoices(),
    "hash": lambda factor: ConsistentHash(balance_factor=factor),
}


def make_balancer(name: str, balance_factor: float | None = None) -> IBalancer:
    """
    Build a balancer by its configured name (one of L{BALANCERS}).

    :param balance_factor: the bounded-load factor of C{"hash"}.
    """
    return BALANCERS[name](balance_factor)
