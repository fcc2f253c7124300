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

The timeline, in mean session lifetimes (L):

    0 - 2L    from empty to steady state (N backends, S sessions each)
    2L        scale-up: N/10 backends added
    3L        failure: one backend goes down (its sessions move)
    3.5L      it comes back
    4L        scale-down: N/10 backends removed (their sessions move)
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
    python benchmarks/placement.py --backends 1000 --sessions 200 \
        --only roundrobin --only leastsessions    # a million sessions

Run it with the project's venv.  Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import heapq
import json
import os
import platform
import random
import sys
import time
from typing import Any

import attrs

from twisted.internet.testing import MemoryReactorClock

from stickyproxy.config._load import BackendConfig, PoolConfig
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


@attrs.define(eq=False)
class Simulation:
    """
    One balancer's run over the timeline.
    """

    pool: Pool
    random: random.Random
    rate: float
    reactor: MemoryReactorClock
    now: float = 0.0
    sessions: dict[int, Backend] = attrs.field(factory=dict)
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

    def place(self, session: int) -> None:
        candidates = self.pool.accepting_new()
        backend = self.pool.choose(candidates, b"%d" % session)
        assert backend is not None
        backend.active += 1
        self.sessions[session] = backend

    def arrive(self) -> None:
        session = self.next_id
        self.next_id += 1
        self.place(session)
        end = self.now + self.random.expovariate(1 / LIFETIME)
        heapq.heappush(self.ends, (end, session))

    def depart(self, session: int) -> None:
        backend = self.sessions.pop(session, None)
        if backend is not None:
            backend.active -= 1

    def replace_sessions_of(self, gone: Backend) -> int:
        """
        Place again the sessions of a backend that can no longer keep them.
        """
        orphans = [s for s, b in self.sessions.items() if b is gone]
        for session in orphans:
            gone.active -= 1
            self.place(session)
        return len(orphans)

    # Measures

    def serving(self) -> list[Backend]:
        return list(self.pool.accepting_new())

    def sample(self) -> None:
        backends = self.serving()
        total = sum(b.active for b in backends)
        weight = sum(b.weight for b in backends)
        if total:
            peak = max(b.active / b.weight for b in backends)
            self.ratios.append(peak / (total / weight))

    def check_filling(self) -> None:
        """
        Note when the backends of a change hold, on average, L{FULL} of the
        pool's average.
        """
        if not self.filling:
            return
        backends = self.serving()
        average = sum(b.active for b in backends) / sum(b.weight for b in backends)
        for kind, (names, since) in list(self.filling.items()):
            members = [b for b in map(self.pool.get, names) if b is not None]
            held = sum(b.active for b in members) / sum(b.weight for b in members)
            if held >= FULL * average:
                del self.filling[kind]
                self.fill_times[kind] = (self.now - since) / LIFETIME

    def key_picks(self, keys: list[bytes]) -> list[str]:
        # A copy, so that measuring does not move round-robin on.
        balancer = copy.deepcopy(self.pool.balancer)
        candidates = self.pool.accepting_new()
        picks = []
        for key in keys:
            backend = balancer.choose(candidates, key)
            assert backend is not None
            picks.append(backend.name)
        return picks

    def sample_keys(self) -> list[bytes]:
        population = list(self.sessions)
        chosen = self.random.sample(population, min(KEY_SAMPLE, len(population)))
        return [b"%d" % s for s in chosen]

    # Membership changes

    def change(self, kind: str, ideal: float, apply: Any) -> None:
        keys = self.sample_keys()
        before = self.key_picks(keys)
        live = len(self.sessions)
        moved = apply()
        after = self.key_picks(keys)
        remapped = sum(a != b for a, b in zip(before, after, strict=True))
        self.changes.append(
            Change(kind, ideal, moved / live, remapped / max(len(keys), 1))
        )

    def scale_up(self, count: int) -> None:
        first = len(self.pool.backends)
        names = [f"n{first + i}" for i in range(count)]

        def apply() -> int:
            for name in names:
                self.pool.add(new_backend(name, self.reactor), "scale-up")
            self.filling["scale-up"] = (names, self.now)
            self.fill_times["scale-up"] = None
            return 0

        total = len(self.serving()) + count
        self.change("scale-up", count / total, apply)

    def fail(self, backend: Backend) -> None:
        def apply() -> int:
            self.pool.set_health(backend, Health.DOWN, "failure")
            return self.replace_sessions_of(backend)

        self.change("failure", 1 / len(self.serving()), apply)

    def recover(self, backend: Backend) -> None:
        self.pool.set_health(backend, Health.UP, "recovered")
        self.filling["recovery"] = ([backend.name], self.now)
        self.fill_times["recovery"] = None

    def scale_down(self, count: int) -> None:
        leaving = self.serving()[:count]

        def apply() -> int:
            moved = 0
            for backend in leaving:
                self.pool.set_admin_state(backend.name, AdminState.MAINT, "down")
                moved += self.replace_sessions_of(backend)
                self.pool.remove(backend.name, "scale-down")
            return moved

        self.change("scale-down", count / len(self.serving()), apply)

    # The run

    def run(self, backends: int) -> None:
        step = max(1, backends // 10)
        failing = self.pool.backends[backends // 2]
        events: list[tuple[float, Any]] = [
            (2.0, lambda: self.scale_up(step)),
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


def new_backend(name: str, reactor: MemoryReactorClock) -> Backend:
    return build_backend(BackendConfig(name, "127.0.0.1:1"), reactor, 3.0)


def simulate(
    keys: dict[str, Any], backends: int, per_backend: int, seed: int
) -> dict[str, Any]:
    reactor = MemoryReactorClock()
    config = PoolConfig(
        name="sim",
        backends=tuple(
            BackendConfig(f"b{i}", f"127.0.0.1:{10000 + i}") for i in range(backends)
        ),
        **keys,
    )
    sim = Simulation(
        pool=build_pool(config, reactor),
        random=random.Random(seed),
        rate=backends * per_backend / LIFETIME,
        reactor=reactor,
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
    options = parser.parse_args(argv)
    backends = options.backends or (50 if options.quick else 200)
    per_backend = options.sessions or (40 if options.quick else 50)
    results: dict[str, dict[str, Any]] = {}
    for label, keys in BALANCERS:
        if options.only and label not in options.only:
            continue
        results[label] = simulate(keys, backends, per_backend, options.seed)
        print(
            f"{label}: {results[label]['sessions']} sessions placed, "
            f"{results[label]['cpu_seconds']:.1f} s",
            file=sys.stderr,
        )
    stamp = datetime.datetime.now(datetime.timezone.utc)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python " + (
        platform.python_version()
    )
    heading = (
        f"Placement simulator, {stamp:%Y-%m-%d %H:%M} UTC, {machine}: "
        f"N = {backends} backends, S = {per_backend} live sessions each "
        f"({backends * per_backend} live), seed {options.seed}"
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
                    "results": results,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
