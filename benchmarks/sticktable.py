"""
The stick table's curve: per-request cost and memory per entry, from 10 to
a million entries, for the two strategies that learn bindings.

    source-ip    C{strategy = "source-ip"}, C{mode = "table"} (TCP contexts:
                 one binding per client address)
    app-cookie   C{strategy = "app-cookie"}, C{mode = "learn"} (HTTP
                 contexts: one binding per JSESSIONID the application set)

For each strategy and size, a child process builds the strategy the way a
config does (its registered factory, C{size} above the fill), fills its
table with that many clients, each served once as the proxy would serve it
(C{lookup}, C{persist}, C{release}), and then times requests from clients
drawn at random from those it knows (a hit in the table, the sticky path).
It reports:

    us/req       CPU microseconds per request on the strategy and table,
                 the least of 5 rounds (1e6 / it is the req/s one core
                 could give to persistence alone)
    B/entry      bytes each entry holds, traced by tracemalloc (the key, its
                 place in the table, and whatever else the strategy keeps
                 per client), the heap's own figure
    RSS B/entry  the process's resident memory growth over the fill,
                 divided by the entries (what the kernel sees)

Not a test: nothing here passes or fails.  In-process only, so it runs on
a busy machine too (one core, about two minutes up to 1e6).

    python benchmarks/sticktable.py                  # 10 .. 1e6, both
    python benchmarks/sticktable.py --max 100000 --only source-ip
    python benchmarks/sticktable.py --markdown results/sticktable.md

Run it with a Python that has stickyproxy installed (the project's venv).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

STRATEGIES = ("source-ip", "app-cookie")
BACKENDS = ("b1", "b2", "b3")
TIMED = 20_000
ROUNDS = 5


class WallClock:
    """
    The clock a table reads in the proxy: wall time, as the reactor's.
    """

    seconds = staticmethod(time.time)


def address(i: int) -> str:
    """
    The i-th client address, in 10.0.0.0/8 (plus 11/8 past 16 million).
    """
    i += 1 << 24
    return f"{i >> 24 & 255 | 8}.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def session(i: int) -> str:
    """
    The i-th application session id, shaped like a servlet's JSESSIONID.
    """
    return f"{i:08X}{'A' * 24}.b{i % 3 + 1}"


def rss() -> int:
    """
    This process's resident memory, in bytes (VmRSS).
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build(name: str, size: int) -> tuple[Any, Any, Callable[[int], Any]]:
    """
    The strategy C{name} as a config builds it, its pool, and a maker of
    the context of client i.
    """
    from stickyproxy.persistence._registry import StrategyRegistry
    from stickyproxy.testing import http_context, make_pool, routing_context

    pool = make_pool(*BACKENDS)
    factory = StrategyRegistry.from_plugins().get(name, "bench")
    options: dict[str, object] = {"size": size + 10}
    if name == "source-ip":
        options["mode"] = "table"

        def context(i: int) -> Any:
            return routing_context(address(i))

    else:
        options["mode"] = "learn"

        def context(i: int) -> Any:
            return http_context(cookies={"JSESSIONID": session(i)})

    strategy = factory.build(options, pool, WallClock(), "bench")
    return strategy, pool, context


def serve_new(name: str, strategy: Any, pool: Any, context: Any, i: int) -> None:
    """
    Serve client i for the first time: balanced, then learned.
    """
    from stickyproxy.testing import respond

    ctx = context(i)
    backend = strategy.lookup(ctx) or pool.backends[i % len(BACKENDS)]
    if name == "app-cookie":
        # The application sets the session this client is known by.
        respond(ctx, headers=[(b"set-cookie", f"JSESSIONID={session(i)}".encode())])
    strategy.persist(ctx, backend)
    strategy.release(ctx, backend)


def fill(
    name: str, size: int, traced: bool
) -> tuple[Any, Callable[[int], Any], int, int]:
    """
    Build the strategy and fill its table with C{size} clients.

    :returns: the strategy, its maker of contexts, the growth in bytes
        over the fill (traced by tracemalloc when C{traced}, else resident:
        VmRSS, untraced, as tracemalloc's own records would count in it),
        and the RSS after.
    """
    strategy, pool, context = build(name, size)
    # Warm the code paths and the factory's caches before measuring.
    serve_new(name, strategy, pool, context, size + 1)
    strategy.table.forget(next(iter(strategy.table.entries())).key)
    gc.collect()
    rss_before = rss()
    if traced:
        tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    for i in range(size):
        serve_new(name, strategy, pool, context, i)
    gc.collect()
    growth = tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()
    assert len(strategy.table) == size, (len(strategy.table), size)
    return strategy, context, growth if traced else rss() - rss_before, rss()


def one(name: str, size: int, traced: bool) -> dict[str, Any]:
    """
    Fill a table of C{size} entries and time requests on it, or, when
    C{traced}, only trace the fill's allocations.
    """
    from stickyproxy.testing import respond

    strategy, context, growth, rss_after = fill(name, size, traced)
    if traced:
        return {"bytes_per_entry": round(growth / size, 1)}
    picks = random.Random(size).choices(range(size), k=TIMED)
    contexts = []
    for i in picks:
        ctx = context(i)
        if name == "app-cookie":
            respond(ctx)
        contexts.append(ctx)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for ctx in contexts:
            backend = strategy.lookup(ctx)
            strategy.persist(ctx, backend)
            strategy.release(ctx, backend)
        best = min(best, time.process_time() - start)
        assert backend is not None, "a known client was not found"
    return {
        "strategy": name,
        "entries": size,
        "us_per_request": round(best / TIMED * 1e6, 3),
        "rss_bytes_per_entry": round(growth / size, 1),
        "rss_mib": round(rss_after / 2**20, 1),
    }


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    """
    The curve as a Markdown table.
    """
    lines = [
        "# Stick table curve",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine}, "
        f"Python {sys.version.split()[0]}.  Per request: lookup, persist and "
        f"release of a known client, least of {ROUNDS} rounds of {TIMED:,}.",
        "",
        "| strategy | entries | us/req | req/s (persistence alone) "
        "| B/entry (traced) | RSS B/entry | RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        traced = r["bytes_per_entry"]
        lines.append(
            f"| {r['strategy']} | {r['entries']:,} | {r['us_per_request']:.2f} "
            f"| {1e6 / r['us_per_request']:,.0f} "
            f"| {'-' if traced is None else f'{traced:,.0f}'} "
            f"| {r['rss_bytes_per_entry']:,.0f} | {r['rss_mib']:,.1f} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    """
    One line naming the CPU and the cores.
    """
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs"


def child(*args: object) -> dict[str, Any]:
    """
    Run L{one} in a new process, so that each size starts from a clean heap.
    """
    out = subprocess.run(
        [sys.executable, __file__, "--one", *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--max", type=int, default=1_000_000, help="largest size")
    parser.add_argument("--only", choices=STRATEGIES, action="append")
    parser.add_argument("--json", help="write every row to this JSON file")
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument(
        "--trace-max",
        type=int,
        default=100_000,
        help="the largest size traced (tracemalloc is slow: about 6 minutes "
        "for 1e6 entries of both strategies)",
    )
    parser.add_argument("--one", nargs=2, metavar=("STRATEGY", "SIZE"), help="child")
    parser.add_argument("--traced", action="store_true", help="child: trace only")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.traced)))
        return
    sizes = [10**k for k in range(1, 8) if 10**k <= args.max]
    rows = []
    for name in args.only or STRATEGIES:
        for size in sizes:
            row = child(name, size)
            row["bytes_per_entry"] = None
            if size <= args.trace_max:
                row.update(child(name, size, "--traced"))
            rows.append(row)
            print(
                f"{name:10s} {size:>9,} entries  {row['us_per_request']:7.2f} us/req"
                f"  {row['bytes_per_entry'] or 0:7.0f} B/entry traced"
                f"  {row['rss_bytes_per_entry']:7.0f} B/entry RSS",
                flush=True,
            )
    table = markdown(rows, machine())
    print()
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as out_file:
            out_file.write(table)
    if args.json:
        with open(args.json, "w") as out_file:
            json.dump({"machine": machine(), "rows": rows}, out_file, indent=1)


if __name__ == "__main__":
    main()
