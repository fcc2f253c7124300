"""
The placement simulator: how each balancer spreads sticky sessions over a
pool whose membership changes.

Pure Python, no network, a simulated clock: sessions arrive (a Poisson
process) and end (exponential lifetimes), and are placed by the real pool
and balancer classes, built from a pool config exactly as the proxy builds
them (``stickyproxy.service.build_pool``).  A session stays on its backend
until it ends, as a sticky session does; when its backend fails or is
removed it is placed again, as the router redispatches it.  Each backend's
open-connection count is kept equal to its sessions, so ``hash`` with
``balance_factor`` bounds the same load the others see.

The real balancers look at every candidate for each new session, in
Python, so a run costs N x N x S.  For thousands of backends and millions
of sessions, ``--engine model`` places them with ``ModelPlacer`` instead:
the same rules over numpy arrays, checked against the real pool pick for
pick by ``tests/test_placement.py`` (``hash`` uses a hash of its own there,
checked to spread and remap keys as the proxy's does).

The timeline, in mean session lifetimes (L):

    0 - 2L    from empty to steady state (N backends, S sessions each)
    2L        scale-up: N/10 backends added
    3L        failure: one backend goes down (its sessions move)
    3.5L      it comes back
    4L        scale-down: N/10 backends removed at once (their sessions
              move once, to the backends that stay)
    5L        end

Reported for each balancer (from 1L on):

- max/avg: the most loaded backend's sessions per weight over the pool's
  average, at its worst and on average over time;
- moved per change, against the ideal (a removed backend's share of the
  sessions, or the share a new backend would need to take at once to be
  balanced): "sticky" counts the sessions that really changed backend;
  "by key" is the share of sampled live sessions whose key the balancer
  places elsewhere after the change than before, which is what moves
  when the key alone is the binding (``hash`` as the only affinity);
- fill time: how long, in lifetimes, until the added backends (then the
  recovered one) hold on average 90% of the pool's average.

    python benchmarks/placement.py --quick        # N=50, S=40: seconds
    python benchmarks/placement.py                # N=200, S=50: minutes
    python benchmarks/placement.py --engine model --backends 2000 \
        --sessions 500 --jobs 2                   # a million live sessions

Run it with the project's venv.  Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import datetime
import heapq
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from hashlib import blake2b
from typing import Any, Protocol

import attrs

from twisted.internet.testing import MemoryReactorClock

from stickyproxy.config._load import BackendConfig, PoolConfig
from stickyproxy.core._balancers import _scores
from stickyproxy.core._pool import Pool
from stickyproxy.model import AdminState, Backend, Health
from stickyproxy.service import build_backend, build_pool

#: The balancers compared: (label, pool keys).
BALANCERS: list[tuple[str, dict[str, Any]]] = [
    ("roundrobin", {"balance": "roundrobin"}),
    ("hash", {"balance": "hash"}),
    ("hash, balance_factor 1.25", {"balance": "hash", "balance_factor": 1.25}),
    ("leastsessions", {"balance": "leastsessions"}),
    (
        "leastsessions, session_balance_factor 1.25",
        {"balance": "leastsessions", "session_balance_factor": 1.25},
    ),
    (
        "roundrobin, session_balance_factor 1.25",
        {"balance": "roundrobin", "session_balance_factor": 1.25},
    ),
]

#: A backend has filled when it holds this share of the average.
FULL = 0.9

#: Live sessions whose key is placed again before and after each change.
KEY_SAMPLE = 500

LIFETIME = 600.0  # seconds: only the ratios matter


@attrs.define
class Change:
    """
    One membership change and how many sessions it moved.
    """

    kind: str
    ideal: float
    sticky: float = 0.0
    by_key: float = 0.0


class Placer(Protocol):
    """
    Where sessions are placed: the real pool (L{PoolPlacer}) or the model of
    it (L{ModelPlacer}).  A backend is known by a handle of the placer's
    own (the L{Backend}, or its index in the model); a session's key is its
    number, as C{b"%d" % session} for the balancers that read keys.
    """

    def place(self, session: int) -> Any:
        """
        Place a new session (or one whose backend left) and count it on its
        backend: returns the backend's handle.
        """

    def release(self, handle: Any) -> None:
        """
        Count one session less on a backend.
        """

    def accepting(self) -> list[str]:
        """
        The names of the backends taking new sessions, in the pool's order.
        """

    def loads(self) -> tuple[list[int], list[int]]:
        """
        The sessions and the weights of the backends taking new sessions.
        """

    def held(self, names: list[str]) -> tuple[int, int]:
        """
        The sessions and the total weight of those of C{names} still in
        the pool.
        """

    def picks(self, sessions: list[int]) -> list[str]:
        """
        Where each of C{sessions} would be placed now, from its key alone,
        without changing anything (round-robin's turn included).
        """

    def add(self, name: str) -> None:
        """
        Add a backend, up and ready.
        """

    def set_health(self, name: str, up: bool) -> Any:
        """
        A backend goes down or comes back up: returns its handle.
        """

    def retire(self, names: list[str]) -> set[Any]:
        """
        Put backends in maintenance: returns their handles.
        """

    def remove(self, names: list[str]) -> None:
        """
        Remove backends in maintenance from the pool.
        """


@attrs.define(eq=False)
class PoolPlacer:
    """
    The real pool and balancer, built from a pool config as the proxy builds
    them (L{build_pool}).  A backend's open-connection count is kept equal
    to its sessions, so that C{hash} with C{balance_factor} bounds the same
    load the others see.
    """

    pool: Pool
    reactor: MemoryReactorClock

    @classmethod
    def build(cls, keys: dict[str, Any], names: list[str]) -> PoolPlacer:
        reactor = MemoryReactorClock()
        config = PoolConfig(
            name="sim",
            backends=tuple(
                BackendConfig(name, f"127.0.0.1:{10000 + i}")
                for i, name in enumerate(names)
            ),
            **keys,
        )
        return cls(build_pool(config, reactor), reactor)

    def place(self, session: int) -> Backend:
        candidates = self.pool.accepting_new()
        backend = self.pool.choose(candidates, b"%d" % session)
        assert backend is not None
        backend.active += 1
        return backend

    def release(self, handle: Backend) -> None:
        handle.active -= 1

    def accepting(self) -> list[str]:
        return [b.name for b in self.pool.accepting_new()]

    def loads(self) -> tuple[list[int], list[int]]:
        backends = self.pool.accepting_new()
        return [b.active for b in backends], [b.weight for b in backends]

    def held(self, names: list[str]) -> tuple[int, int]:
        members = [b for b in map(self.pool.get, names) if b is not None]
        return sum(b.active for b in members), sum(b.weight for b in members)

    def picks(self, sessions: list[int]) -> list[str]:
        # A copy, so that measuring does not move round-robin on.
        balancer = copy.deepcopy(self.pool.balancer)
        candidates = self.pool.accepting_new()
        picks = []
        for session in sessions:
            backend = balancer.choose(candidates, b"%d" % session)
            assert backend is not None
            picks.append(backend.name)
        return picks

    def add(self, name: str) -> None:
        backend = build_backend(BackendConfig(name, "127.0.0.1:1"), self.reactor, 3.0)
        self.pool.add(backend, "scale-up")

    def set_health(self, name: str, up: bool) -> Backend:
        backend = self.pool[name]
        health = Health.UP if up else Health.DOWN
        self.pool.set_health(backend, health, "recovered" if up else "failure")
        return backend

    def retire(self, names: list[str]) -> set[Any]:
        for name in names:
            self.pool.set_admin_state(name, AdminState.MAINT, "scale-down")
        return {self.pool[name] for name in names}

    def remove(self, names: list[str]) -> None:
        for name in names:
            self.pool.remove(name, "scale-down")


#: How many new sessions' places L{fast_firsts} finds at once.
BLOCK = 16

#: How a model hashes a session's key with its candidates: an array of
#: scores, one per candidate in the pool's order, whose descending order is
#: the key's rendezvous order.
Scores = Callable[["ModelPlacer", int], Any]


def _mix(np: Any, h: Any) -> Any:
    """
    splitmix64's finaliser, in place on an array of uint64: returns it.
    """
    shifted = np.empty_like(h)
    h ^= np.right_shift(h, np.uint64(30), out=shifted)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= np.right_shift(h, np.uint64(27), out=shifted)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= np.right_shift(h, np.uint64(31), out=shifted)
    return h


def fast_scores(model: ModelPlacer, session: int) -> Any:
    """
    The model's own rendezvous hash, vectorised: splitmix64's finaliser over
    each candidate's seed (a hash of its name) xor the key's.  Not the
    proxy's blake2b, so a key lands elsewhere than in the proxy, but as
    uniformly and as stably: a key's order changes only by the backends
    added or removed.  With weights of 1 the hash itself orders the
    backends (the proxy's weight over -ln u grows with u).
    """
    np = model.np
    return _mix(np, model.cseeds ^ _mix(np, np.array([session], np.uint64)))


def fast_firsts(model: ModelPlacer, first: int, count: int) -> Any:
    """
    Where L{fast_scores} puts each of the sessions C{first} to C{first +
    count - 1} (its highest scoring candidate), for all of them at once:
    new sessions are numbered in turn, and one operation over a block of
    them costs less than one per session.
    """
    np = model.np
    keys = _mix(np, np.arange(first, first + count, dtype=np.uint64))
    return _mix(np, model.cseeds[None, :] ^ keys[:, None]).argmax(axis=1)


@attrs.frozen
class _Named:
    name: str
    weight: int


def proxy_scores(model: ModelPlacer, session: int) -> Any:
    """
    The proxy's own rendezvous scores (blake2b per backend and key, one
    backend at a time): slow, for checking the model against the real
    balancer key for key.
    """
    backends = [_Named(model.names[h], 1) for h in model.handles]
    return model.np.array(_scores(b"%d" % session, backends))


@attrs.define(eq=False)
class ModelPlacer:
    """
    A model of the pool and its balancer for one configuration of
    L{BALANCERS}, in numpy: each pick is a few vectorised operations over
    the candidates instead of a Python loop over them, and the bounded-load
    share is kept as a running total, so thousands of backends and millions
    of sessions take minutes.

    It is a second copy of each balancer's rule (L{RoundRobin},
    L{ConsistentHash} and L{bounded}, L{LeastSessions}, L{SessionCap}), for
    the pools this simulator builds: weights of 1, no slow start, never
    every backend down.  C{tests/test_placement.py} runs it beside
    L{PoolPlacer} on the same seeded timelines and checks that they agree
    pick for pick (with L{proxy_scores} for C{hash}); L{fast_scores}
    replaces the proxy's hash for the large runs.

    The candidates (the backends taking new sessions, in the pool's order)
    have their counts in arrays, by position, rebuilt after a change of
    membership; other backends' counts wait in lists, by handle.
    """

    np: Any
    balance: str
    balance_factor: float | None
    session_factor: float | None
    scores: Scores
    names: list[str] = attrs.field(factory=list)
    index: dict[str, int] = attrs.field(factory=dict)
    # By handle (a backend's index in names), outside the candidates:
    counts: list[int] = attrs.field(factory=list)
    current: list[float] = attrs.field(factory=list)  # round-robin's
    seeds: list[int] = attrs.field(factory=list)
    accepts: list[bool] = attrs.field(factory=list)
    # The candidates, by position: their handles, and their state.
    handles: list[int] = attrs.field(factory=list)
    position: dict[int, int] = attrs.field(factory=dict)
    ccounts: Any = None
    ccurrent: Any = None
    cseeds: Any = None
    # Where fast_scores puts the sessions from block_start on, for C{hash}.
    block_start: int = 0
    block: Any = None
    total: int = 0  # the candidates' sessions
    turn: int = 0  # least sessions' turn
    built: bool = False

    @classmethod
    def build(
        cls, keys: dict[str, Any], names: list[str], scores: Scores = fast_scores
    ) -> ModelPlacer:
        import numpy as np

        unknown = set(keys) - {"balance", "balance_factor", "session_balance_factor"}
        assert not unknown, f"the model does not know {unknown}"
        assert keys["balance"] in ("roundrobin", "hash", "leastsessions")
        model = cls(
            np=np,
            balance=keys["balance"],
            balance_factor=keys.get("balance_factor"),
            session_factor=keys.get("session_balance_factor"),
            scores=scores,
        )
        assert model.balance == "hash" or model.balance_factor is None
        assert model.balance != "hash" or model.session_factor is None
        for name in names:
            model.add(name)
        return model

    def _build(self) -> None:
        np = self.np
        self.handles = [h for h, accepts in enumerate(self.accepts) if accepts]
        self.position = {h: p for p, h in enumerate(self.handles)}
        self.ccounts = np.array([self.counts[h] for h in self.handles], np.int64)
        self.ccurrent = np.array([self.current[h] for h in self.handles], np.float64)
        self.cseeds = np.array([self.seeds[h] for h in self.handles], np.uint64)
        self.total = int(self.ccounts.sum())
        self.block = None
        self.built = True

    def _unbuild(self) -> None:
        """
        Keep the candidates' state by handle, before membership changes.
        """
        if self.built:
            for h, count, value in zip(
                self.handles,
                self.ccounts.tolist(),
                self.ccurrent.tolist(),
                strict=True,
            ):
                self.counts[h], self.current[h] = count, value
            self.built = False

    # The balancers: each returns a position among the candidates.

    def limit(self, factor: float, total: int, weight: int) -> int:
        """
        L{bounded}'s cap with weights of 1: a backend may take one more
        session while it holds fewer than this.
        """
        return math.ceil(factor * (total + 1) * 1 / weight)

    def choose(self, session: int) -> int:
        allowed = None
        if self.session_factor is not None:
            cap = self.limit(self.session_factor, self.total, len(self.handles))
            if int(self.ccounts.max()) >= cap:
                allowed = self.np.flatnonzero(self.ccounts < cap)
        if self.balance == "roundrobin":
            return self.roundrobin(allowed)
        if self.balance == "leastsessions":
            return self.leastsessions(allowed)
        return self.hash(session)

    def roundrobin(self, allowed: Any) -> int:
        current = self.ccurrent
        if allowed is None:
            current += 1.0
            best = int(current.argmax())
            current[best] -= len(current)
            return best
        values = current[allowed] + 1.0
        current[allowed] = values
        best = int(values.argmax())
        current[allowed[best]] = values[best] - len(allowed)
        return int(allowed[best])

    def leastsessions(self, allowed: Any) -> int:
        np = self.np
        loads = self.ccounts if allowed is None else self.ccounts[allowed]
        self.turn += 1
        start = self.turn % len(loads)
        ties = np.flatnonzero(loads == loads.min())
        # The first of the least loaded at or after the turn's start.
        at = int(np.searchsorted(ties, start))
        chosen = int(ties[at] if at < len(ties) else ties[0])
        return chosen if allowed is None else int(allowed[chosen])

    def first(self, session: int) -> int:
        """
        The candidate of highest score for C{session}: from a block of new
        sessions' firsts (L{fast_firsts}) when it is in one.
        """
        if self.scores is fast_scores:
            at = session - self.block_start
            if self.block is None or at >= len(self.block):
                self.block_start, at = session, 0
                self.block = fast_firsts(self, session, BLOCK).tolist()
            if at >= 0:
                return int(self.block[at])
        return int(self.scores(self, session).argmax())

    def hash(self, session: int) -> int:
        np = self.np
        first = self.first(session)
        if self.balance_factor is None:
            return first
        cap = self.limit(self.balance_factor, self.total, len(self.handles))
        if self.ccounts[first] < cap:
            return first
        scores = self.scores(self, session)
        # Descending, ties in the pool's order (~ on unsigned, - on floats).
        order = np.argsort(
            ~scores if scores.dtype == np.uint64 else -scores, kind="stable"
        )
        under = np.flatnonzero(self.ccounts[order] < cap)
        return int(order[under[0]] if len(under) else order[0])

    # Placer

    def place(self, session: int) -> int:
        if not self.built:
            self._build()
        at = self.choose(session)
        self.ccounts[at] += 1
        self.total += 1
        return self.handles[at]

    def release(self, handle: int) -> None:
        at = self.position.get(handle) if self.built else None
        if at is None:
            self.counts[handle] -= 1
        else:
            self.ccounts[at] -= 1
            self.total -= 1

    def accepting(self) -> list[str]:
        if not self.built:
            self._build()
        return [self.names[h] for h in self.handles]

    def loads(self) -> tuple[list[int], list[int]]:
        if not self.built:
            self._build()
        return self.ccounts.tolist(), [1] * len(self.handles)

    def held(self, names: list[str]) -> tuple[int, int]:
        members = [self.index[name] for name in names if name in self.index]
        return sum(map(self.count, members)), len(members)

    def count(self, handle: int) -> int:
        """
        A backend's sessions, wherever they are kept.
        """
        at = self.position.get(handle) if self.built else None
        return self.counts[handle] if at is None else int(self.ccounts[at])

    def picks(self, sessions: list[int]) -> list[str]:
        if not self.built:
            self._build()
        current, turn = self.ccurrent.copy(), self.turn
        picks = [self.names[self.handles[self.choose(s)]] for s in sessions]
        self.ccurrent, self.turn = current, turn
        return picks

    def add(self, name: str) -> None:
        self._unbuild()
        self.index[name] = len(self.names)
        self.names.append(name)
        self.counts.append(0)
        self.current.append(0.0)
        digest = blake2b(name.encode("utf-8"), digest_size=8).digest()
        self.seeds.append(int.from_bytes(digest, "big"))
        self.accepts.append(True)
        # Round-robin starts a new cycle when the set changes.
        self.current = [0.0] * len(self.names)

    def set_health(self, name: str, up: bool) -> int:
        self._unbuild()
        handle = self.index[name]
        self.accepts[handle] = up
        return handle

    def retire(self, names: list[str]) -> set[Any]:
        self._unbuild()
        handles = {self.index[name] for name in names}
        for handle in handles:
            self.accepts[handle] = False
        return handles

    def remove(self, names: list[str]) -> None:
        self._unbuild()
        for name in names:
            del self.index[name]
        self.current = [0.0] * len(self.names)


@attrs.define(eq=False)
class Simulation:
    """
    One balancer's run over the timeline.
    """

    placer: Placer
    random: random.Random
    rate: float
    now: float = 0.0
    sessions: dict[int, Any] = attrs.field(factory=dict)
    ends: list[tuple[float, int]] = attrs.field(factory=list)
    next_id: int = 0
    ratios: list[float] = attrs.field(factory=list)
    changes: list[Change] = attrs.field(factory=list)
    # What is filling: the names of the backends of a change, by its kind,
    # and when it began; then how long they took (in lifetimes), or, while
    # they have not, None.
    filling: dict[str, tuple[list[str], float]] = attrs.field(factory=dict)
    fill_times: dict[str, float | None] = attrs.field(factory=dict)

    # Sessions

    def arrive(self) -> None:
        session = self.next_id
        self.next_id += 1
        self.sessions[session] = self.placer.place(session)
        end = self.now + self.random.expovariate(1 / LIFETIME)
        heapq.heappush(self.ends, (end, session))

    def depart(self, session: int) -> None:
        handle = self.sessions.pop(session, None)
        if handle is not None:
            self.placer.release(handle)

    def replace_sessions_of(self, gone: set[Any]) -> int:
        """
        Place again the sessions of backends that can no longer keep them.
        """
        orphans = [s for s, handle in self.sessions.items() if handle in gone]
        for session in orphans:
            self.placer.release(self.sessions[session])
            self.sessions[session] = self.placer.place(session)
        return len(orphans)

    # Measures

    def sample(self) -> None:
        counts, weights = self.placer.loads()
        total = sum(counts)
        if total:
            peak = max(c / w for c, w in zip(counts, weights, strict=True))
            self.ratios.append(peak / (total / sum(weights)))

    def check_filling(self) -> None:
        """
        Note when the backends of a change hold, on average, L{FULL} of the
        pool's average.
        """
        if not self.filling:
            return
        counts, weights = self.placer.loads()
        average = sum(counts) / sum(weights)
        for kind, (names, since) in list(self.filling.items()):
            held, weight = self.placer.held(names)
            if held / weight >= FULL * average:
                del self.filling[kind]
                self.fill_times[kind] = (self.now - since) / LIFETIME

    def sample_keys(self) -> list[int]:
        population = list(self.sessions)
        return self.random.sample(population, min(KEY_SAMPLE, len(population)))

    # Membership changes

    def change(self, kind: str, ideal: float, apply: Callable[[], int]) -> None:
        keys = self.sample_keys()
        before = self.placer.picks(keys)
        live = len(self.sessions)
        moved = apply()
        after = self.placer.picks(keys)
        remapped = sum(a != b for a, b in zip(before, after, strict=True))
        self.changes.append(
            Change(kind, ideal, moved / live, remapped / max(len(keys), 1))
        )

    def scale_up(self, names: list[str]) -> None:
        def apply() -> int:
            for name in names:
                self.placer.add(name)
            self.filling["scale-up"] = (names, self.now)
            self.fill_times["scale-up"] = None
            return 0

        total = len(self.placer.accepting()) + len(names)
        self.change("scale-up", len(names) / total, apply)

    def fail(self, name: str) -> None:
        def apply() -> int:
            return self.replace_sessions_of({self.placer.set_health(name, False)})

        self.change("failure", 1 / len(self.placer.accepting()), apply)

    def recover(self, name: str) -> None:
        self.placer.set_health(name, True)
        self.filling["recovery"] = ([name], self.now)
        self.fill_times["recovery"] = None

    def scale_down(self, count: int) -> None:
        serving = self.placer.accepting()
        leaving = serving[:count]

        def apply() -> int:
            # All leave at once: their sessions move once, to those staying.
            moved = self.replace_sessions_of(self.placer.retire(leaving))
            self.placer.remove(leaving)
            return moved

        self.change("scale-down", count / len(serving), apply)

    # The run

    def run(self, backends: int) -> None:
        step = max(1, backends // 10)
        added = [f"n{backends + i}" for i in range(step)]
        failing = f"b{backends // 2}"
        events: list[tuple[float, Callable[[], None]]] = [
            (2.0, lambda: self.scale_up(added)),
            (3.0, lambda: self.fail(failing)),
            (3.5, lambda: self.recover(failing)),
            (4.0, lambda: self.scale_down(step)),
            (5.0, lambda: None),
        ]
        ends = self.ends
        every = LIFETIME / 100
        next_sample = LIFETIME
        next_arrival = self.random.expovariate(self.rate)
        for when, action in events:
            until = when * LIFETIME
            while True:
                next_end = ends[0][0] if ends else float("inf")
                now = min(next_arrival, next_end, next_sample)
                if now >= until:
                    break
                self.now = now
                if now == next_sample:
                    self.sample()
                    self.check_filling()
                    next_sample += every
                elif now == next_end:
                    self.depart(heapq.heappop(ends)[1])
                else:
                    self.arrive()
                    next_arrival = now + self.random.expovariate(self.rate)
            self.now = until
            action()


#: The placers, by the name --engine takes.
ENGINES: dict[str, Callable[[dict[str, Any], list[str]], Placer]] = {
    "pool": PoolPlacer.build,
    "model": ModelPlacer.build,
}


def simulate(
    keys: dict[str, Any],
    backends: int,
    per_backend: int,
    seed: int,
    engine: Callable[[dict[str, Any], list[str]], Placer] = PoolPlacer.build,
) -> dict[str, Any]:
    """
    Run one balancer over the timeline.

    :param keys: the pool's keys (one of L{BALANCERS}).
    :param engine: builds the placer from them and the backends' names.
    :returns: what L{table} shows, and the run's size and CPU time.
    """
    sim = Simulation(
        placer=engine(keys, [f"b{i}" for i in range(backends)]),
        random=random.Random(seed),
        rate=backends * per_backend / LIFETIME,
    )
    started = time.process_time()
    sim.run(backends)
    changes: dict[str, dict[str, float]] = {}
    for change in sim.changes:
        changes[change.kind] = {
            "ideal": change.ideal,
            "sticky": change.sticky,
            "by_key": change.by_key,
        }
    # Not filled by the end: more than the time that was left.
    fill: dict[str, dict[str, float | None]] = {
        kind: {"lifetimes": took, "more_than": None}
        for kind, took in sim.fill_times.items()
    }
    for kind, (_, since) in sim.filling.items():
        fill[kind]["more_than"] = (sim.now - since) / LIFETIME
    return {
        "max_avg_peak": max(sim.ratios),
        "max_avg_mean": sum(sim.ratios) / len(sim.ratios),
        "changes": changes,
        "fill": fill,
        "sessions": sim.next_id,
        "cpu_seconds": time.process_time() - started,
    }


def _run(run: tuple[str, dict[str, Any], int, int, int, str]) -> dict[str, Any]:
    """
    L{simulate} one balancer, with an engine by name (in a job's process).
    """
    label, keys, backends, per_backend, seed, engine = run
    result = simulate(keys, backends, per_backend, seed, ENGINES[engine])
    print(
        f"{label}: {result['sessions']} sessions placed, {result['cpu_seconds']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return result


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _fill(value: dict[str, float | None] | None) -> str:
    if value is None:
        return "-"
    if value["lifetimes"] is None:
        return f"> {value['more_than']:.1f}"
    return f"{value['lifetimes']:.2f}"


KINDS = ("scale-up", "failure", "scale-down")


def table(results: dict[str, dict[str, Any]]) -> str:
    """
    The Markdown table of the results, the ideal moves in its header.
    """
    first = next(iter(results.values()))["changes"]
    ideal = " / ".join(_percent(first[k]["ideal"]) for k in KINDS)
    lines = [
        "| balancer | max/avg peak | max/avg mean "
        f"| moved, sticky: up / fail / down (% of sessions; ideal {ideal}) "
        "| moved, by key: up / fail / down (%) "
        "| fill time (lifetimes): scale-up, recovery |",
        "|---|---|---|---|---|---|",
    ]
    for label, result in results.items():
        changes = result["changes"]
        sticky = " / ".join(_percent(changes[k]["sticky"]) for k in KINDS)
        by_key = " / ".join(_percent(changes[k]["by_key"]) for k in KINDS)
        fill = result["fill"]
        lines.append(
            f"| {label} | {result['max_avg_peak']:.2f} "
            f"| {result['max_avg_mean']:.2f} | {sticky} | {by_key} "
            f"| {_fill(fill.get('scale-up'))}, {_fill(fill.get('recovery'))} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small pool, seconds")
    parser.add_argument("--backends", type=int, help="N (default 200; quick 50)")
    parser.add_argument(
        "--sessions", type=int, help="S, live sessions per backend (50; quick 40)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only", action="append", help="a balancer's label, as in the table (repeat)"
    )
    parser.add_argument("--output", help="a folder for the JSON and Markdown")
    parser.add_argument(
        "--jobs", type=int, default=1, help="balancers run at once, in processes"
    )
    parser.add_argument(
        "--engine",
        choices=sorted(ENGINES),
        default="pool",
        help="the real pool (default), or its numpy model for large runs",
    )
    options = parser.parse_args(argv)
    backends = options.backends or (50 if options.quick else 200)
    per_backend = options.sessions or (40 if options.quick else 50)
    runs = [
        (label, keys, backends, per_backend, options.seed, options.engine)
        for label, keys in BALANCERS
        if not options.only or label in options.only
    ]
    started = time.monotonic()
    if options.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(options.jobs) as jobs:
            outcomes = list(jobs.map(_run, runs))
    else:
        outcomes = list(map(_run, runs))
    results = dict(zip([run[0] for run in runs], outcomes, strict=True))
    wall = time.monotonic() - started
    cpu = sum(result["cpu_seconds"] for result in results.values())
    stamp = datetime.datetime.now(datetime.timezone.utc)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python " + (
        platform.python_version()
    )
    heading = (
        f"Placement simulator, {stamp:%Y-%m-%d %H:%M} UTC, {machine}: "
        f"N = {backends} backends, S = {per_backend} live sessions each "
        f"({backends * per_backend} live), seed {options.seed}, "
        f"engine {options.engine}: {cpu:.0f} s of CPU, {wall:.0f} s in all"
    )
    text = f"{heading}\n\n{table(results)}\n"
    print(text)
    if options.output:
        base = os.path.join(options.output, f"placement-{stamp:%Y-%m-%d_%H%M%S}")
        with open(base + ".md", "w") as f:
            f.write(text)
        with open(base + ".json", "w") as f:
            json.dump(
                {
                    "date": stamp.isoformat(),
                    "machine": machine,
                    "backends": backends,
                    "sessions_per_backend": per_backend,
                    "seed": options.seed,
                    "engine": options.engine,
                    "cpu_seconds": cpu,
                    "wall_seconds": wall,
                    "results": results,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
