"""
Memory per idle client connection: stickyproxy beside HAProxy and stock
Twisted, each a real process on 127.0.0.1 in front of the shared
harness's three nginx backends.

For each target, the process is started (pinned to one CPU, as in the
throughput runs), served a few requests so its code paths are warm, and
its resident memory (C{VmRSS} of every process it runs, from
C{/proc/PID/status}) is read with no client connected.  Then idle client
connections are opened, in batches the listen backlog takes at once, up to
each step (0, 1,000 and 10,000 by default), and the memory is read again
once the target has accepted them all (its open file count says so: one
per client, two on L4, where each client has its backend connection).  The
figure is the growth per connection, beyond the idle process:

    bytes/conn = (RSS at the last step - RSS at 0) / connections

An idle L7 connection has served one request and waits for the next (a
browser's keep-alive connection); with C{--l7-idle connect} it has sent
nothing yet.  An idle L4 connection is an open tunnel with no bytes in
flight.  Kernel socket buffers are not in RSS, for any target.

    python benchmarks/memory.py --harness /path/to/shared/bench
    python benchmarks/memory.py --only 'stickyproxy-*' --steps 0,1000,5000
    python benchmarks/memory.py --trace stickyproxy-l7 --steps 0,1000

C{--trace TARGET} (a stickyproxy target) runs the proxy under
C{tracemalloc} instead and prints where the growth between the first and
last step was allocated, per connection, by source line: what a connection
costs, and where to make it smaller.

It uses the harness's C{bench.py} (its targets, backends and helpers) from
C{--harness}, and runs with any Python 3.11 (the harness's venv in
C{run.sh}).  It raises its own C{RLIMIT_NOFILE} (up to C{fs.nr_open} as
root) so that it and the targets it starts, which inherit the limit, can
hold every connection.  Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import re
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
# Fewer than a listen backlog (Twisted's default is 50), so that no SYN is
# dropped and retried a second later while the target accepts a batch.
BATCH = 40
ACCEPT_TIMEOUT = 60.0
# Files a target holds besides its clients' (listeners, logs, backends).
SPARE_FILES = 256
STICKYPROXY = "{twistd} -n --pidfile= stickyproxy --config {config}"
OWN_TARGETS = {
    "stickyproxy-l7": ("L7", STICKYPROXY, str(HERE / "stickyproxy-l7.toml")),
    "stickyproxy-l4": ("L4", STICKYPROXY, str(HERE / "stickyproxy-l4.toml")),
}
PEERS = (
    "haproxy-http-cookie",
    "haproxy-tcp-source",
    "twisted-revproxy",
    "twisted-portforward",
)
REQUEST = b"GET / HTTP/1.1\r\nHost: memory\r\n\r\n"


def load_harness(path: Path) -> ModuleType:
    """
    The harness's C{bench} module, imported from C{path}.
    """
    if not (path / "bench.py").exists():
        sys.exit(f"no bench.py in {path}: give the harness with --harness")
    sys.path.insert(0, str(path))
    import bench

    return bench


def raise_file_limit() -> int:
    """
    Raise C{RLIMIT_NOFILE} as far as allowed; children inherit it.

    :returns: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with open("/proc/sys/fs/nr_open") as nr_open:
        ceiling = min(int(nr_open.read()), 1 << 20)
    try:  # root may raise the hard limit too (not in every container)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
        return ceiling
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


def session_pids(sid: int) -> list[int]:
    """
    The processes of session C{sid} but its shell wrappers: the target's.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                data = stat.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and comm not in ("sh", "taskset"):
            pids.append(int(entry))
    return pids


def status_kib(pid: int, field: str) -> int:
    """
    A C{kB} field of C{/proc/PID/status}, such as C{VmRSS}.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def footprint(sid: int, pids: list[int] | None = None) -> dict[str, int]:
    """
    Resident memory (bytes) and open files of every process of a target
    (of C{pids}, when given: a quicker read than finding them again).
    """
    rss = fds = 0
    if pids is None:
        pids = session_pids(sid)
    for pid in pids:
        try:
            rss += status_kib(pid, "VmRSS") * 1024
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return {"rss": rss, "fds": fds, "processes": len(pids)}


def idle_limits(config: str, connections: int) -> str:
    """
    A peer's config that keeps C{connections} idle clients: HAProxy's
    C{maxconn} (4096 in the harness) would stop accepting, and its client
    and server timeouts (30 s) close idle connections before the last step
    is read.  Neither changes what one connection costs.
    """
    config = re.sub(r"(?m)^(\s*maxconn)\s+\d+", rf"\1 {connections}", config)
    return re.sub(r"(?m)^(\s*timeout (?:client|server))\s+\S+", r"\1 10m", config)


def read_response(sock: socket.socket) -> None:
    """
    Read one small HTTP response (its head and C{Content-Length} body).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the target closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the target closed the connection")
        body += chunk


class Clients:
    """
    Idle client connections to one target, opened in batches.
    """

    def __init__(self, port: int, per_client_fds: int, request: bool) -> None:
        self.port = port
        self.per_client_fds = per_client_fds
        self.request = request
        self.sockets: list[socket.socket] = []

    def grow(self, sid: int, base_fds: int, count: int) -> None:
        """
        Open connections until there are C{count}, waiting after each
        batch until the target has accepted it (and, on L4, connected it on
        to its backend).
        """
        while len(self.sockets) < count:
            batch = []
            for _ in range(min(BATCH, count - len(self.sockets))):
                sock = socket.create_connection((HOST, self.port), timeout=30)
                batch.append(sock)
            if self.request:
                self.serve(batch)
            self.sockets.extend(batch)
            self.wait(sid, base_fds + self.per_client_fds * len(self.sockets))

    def serve(self, batch: list[socket.socket]) -> None:
        """
        One request on each connection of C{batch}, all sent before any
        answer is read, as many clients would.
        """
        for sock in batch:
            sock.sendall(REQUEST)
        for sock in batch:
            read_response(sock)

    def wait(self, sid: int, fds: int) -> None:
        """
        Wait until the target holds C{fds} open files.
        """
        deadline = time.monotonic() + ACCEPT_TIMEOUT
        selector = selectors.DefaultSelector()
        pids = session_pids(sid)
        while footprint(sid, pids)["fds"] < fds:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the target holds {footprint(sid)['fds']} files, expected "
                    f"{fds} after {ACCEPT_TIMEOUT:.0f}s"
                )
            selector.select(0.01)  # a short, bounded wait between reads
        selector.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def warm_up(bench: ModuleType, port: int, layer: str) -> None:
    """
    A few requests on new connections, so that the code paths the idle
    connections take have run before the idle figure is read.
    """
    for _ in range(20):
        bench.http_get(port, "/")
    if layer == "L7":
        with socket.create_connection((HOST, port), timeout=30) as sock:
            for _ in range(20):
                sock.sendall(REQUEST)
                read_response(sock)


def settle(sid: int) -> dict[str, int]:
    """
    The target's footprint once its RSS stopped moving (two reads 0.2 s
    apart within 64 KiB, for at most 3 s).
    """
    last = footprint(sid)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = footprint(sid)
        if abs(now["rss"] - last["rss"]) < 65536:
            return now
        last = now
    return last


def measure(
    bench: ModuleType,
    name: str,
    layer: str,
    command: str,
    config: str | None,
    values: Any,
    steps: list[int],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """
    Start one target, and read its footprint at each step.
    """
    tdir = workdir / name
    tdir.mkdir()
    port = bench.free_port()
    per_client_fds = 2 if layer == "L4" else 1
    config_path = ""
    if config:
        source = Path(config) if Path(config).exists() else bench.HERE / config
        config_path = str(tdir / source.name)
        text = bench.render(source.read_text(), values(port, tdir))
        Path(config_path).write_text(idle_limits(text, steps[-1]))
    cmd = bench.render(command, values(port, tdir, config_path))
    service = bench.Service(name, cmd, tdir, args.proxy_cpu)
    clients = Clients(
        port, per_client_fds, request=layer == "L7" and args.l7_idle == "request"
    )
    result: dict[str, Any] = {"layer": layer, "command": command, "steps": []}
    try:
        bench.wait_ready(port, service, 20)
        warm_up(bench, port, layer)
        base = settle(service.sid)
        for count in steps:
            clients.grow(service.sid, base["fds"], count)
            got = settle(service.sid) if count else base
            got["connections"] = count
            result["steps"].append(got)
            bench.log(
                f"  {name}: {count:>6,} idle connections  "
                f"RSS {got['rss'] / 2**20:7.1f} MiB  files {got['fds']}"
            )
            if not service.alive():
                raise RuntimeError(f"exited: {service.output_tail(800)}")
        first, last = result["steps"][0], result["steps"][-1]
        if last["connections"] > first["connections"]:
            result["bytes_per_connection"] = round(
                (last["rss"] - first["rss"])
                / (last["connections"] - first["connections"])
            )
    except Exception as exc:  # one target's failure must not stop the others
        result["error"] = str(exc)
        bench.log(f"  {name} FAILED: {exc}")
    finally:
        clients.close()
        service.stop()
    return result


TRACED = r"""
import os, sys, tracemalloc
tracemalloc.start(int(sys.argv[2]))
from twisted.internet import reactor, stdio
from twisted.protocols.basic import LineReceiver
from stickyproxy.tap import Options, makeService
options = Options()
options.parseOptions(["--config", sys.argv[1]])
makeService(options).startService()

class Control(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        import gc
        gc.collect()
        tracemalloc.take_snapshot().dump(line.decode())
        os.write(1, b"dumped\n")

stdio.StandardIO(Control())
reactor.run()
"""


@contextmanager
def traced_proxy(config: str, frames: int) -> Iterator[subprocess.Popen[bytes]]:
    """
    A stickyproxy process under C{tracemalloc}, which dumps a snapshot to
    each path written to its standard input.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", TRACED, config, str(frames)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield child
    finally:
        child.terminate()  # our own child, by its pid
        child.wait(10)


def trace(
    bench: ModuleType, name: str, values: Any, steps: list[int], args: Any
) -> None:
    """
    Where a stickyproxy target's idle connections' memory is allocated.
    """
    import tracemalloc

    layer, _, config = OWN_TARGETS[name]
    workdir = Path(tempfile.mkdtemp(prefix="stickyproxy-memory-"))
    port = bench.free_port()
    rendered = workdir / Path(config).name
    rendered.write_text(bench.render(Path(config).read_text(), values(port, workdir)))
    first, last = steps[0], steps[-1]
    with traced_proxy(str(rendered), args.frames) as child:
        assert child.stdin is not None and child.stdout is not None

        def snapshot(label: str) -> tracemalloc.Snapshot:
            path = workdir / f"{label}.snapshot"
            child.stdin.write(f"{path}\n".encode())  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            if child.stdout.readline().strip() != b"dumped":  # type: ignore[union-attr]
                raise RuntimeError("the traced proxy did not dump its snapshot")
            return tracemalloc.Snapshot.load(str(path))

        bench.wait_ready(port, None, 20)
        warm_up(bench, port, layer)
        clients = Clients(port, 2 if layer == "L4" else 1, layer == "L7")
        sid = child.pid
        base = footprint(sid)["fds"]
        try:
            clients.grow(sid, base, first)
            before = snapshot("first")
            clients.grow(sid, base, last)
            after = snapshot("last")
        finally:
            clients.close()
    count = last - first
    stats = after.compare_to(before, "traceback" if args.frames > 1 else "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"\n{name}: {total / count:,.0f} bytes traced per idle connection")
    print(f"(from {first:,} to {last:,} connections; top allocations)\n")
    for stat in stats[: args.top]:
        if stat.size_diff <= 0:
            continue
        where = [
            f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
            for f in stat.traceback
        ]
        print(
            f"{stat.size_diff / count:8.0f} B {stat.count_diff / count:5.1f} blocks  "
            + " <- ".join(where)
        )


def markdown(report: dict[str, Any]) -> str:
    """
    The figures as a Markdown section, with each target's ratio to the
    HAProxy peer of its layer.
    """
    results = report["results"]
    steps = report["steps"]
    counts = ", ".join(f"{s:,}" for s in steps)
    machine = report["machine"]
    lines = [
        "## Memory per idle client connection",
        "",
        f"RSS of the target's processes (VmRSS), read at {counts} idle client "
        "connections; bytes/conn is the growth per connection beyond the idle "
        f"process.  Idle L7 connections: {report['l7_idle']}; L4: an open "
        "tunnel, no bytes in flight.  Ratios: to the HAProxy and stock Twisted "
        f"peers of the same layer (lower is leaner).  {report['note']}; files "
        "per process: "
        f"{report['file_limit']:,}.",
        "",
        f"{report['date']}: {machine['cpu_model']}, {machine['cpus']} CPUs, "
        f"{machine['os']}, kernel {machine['kernel']}; "
        f"{machine['versions']['haproxy']}; {machine['versions']['twisted_cpython']}.",
        "",
        "| target | layer | "
        + " | ".join(f"RSS MiB at {s:,}" for s in steps)
        + " | bytes/conn | × HAProxy | × Twisted |",
        "|---|---|" + "---:|" * (len(steps) + 3),
    ]
    peers = {
        "L7": ("haproxy-http-cookie", "twisted-revproxy"),
        "L4": ("haproxy-tcp-source", "twisted-portforward"),
    }
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['layer']} | failed: {r['error'][:80]} |")
            continue
        cells = [f"{s['rss'] / 2**20:,.1f}" for s in r["steps"]]
        per = r.get("bytes_per_connection")
        ratios = []
        for peer in peers.get(r["layer"], ("", "")):
            ref = results.get(peer, {}).get("bytes_per_connection")
            ratios.append(f"{per / ref:.2f}" if per is not None and ref else "-")
        lines.append(
            f"| {name} | {r['layer']} | "
            + " | ".join(cells)
            + f" | {'-' if per is None else f'{per:,}'} | "
            + " | ".join(ratios)
            + " |"
        )
    return "\n".join(lines) + "\n"


def matches(name: str, patterns: str) -> bool:
    """
    Whether C{name} matches one of a comma list of globs.
    """
    return any(fnmatch.fnmatch(name, p.strip()) for p in patterns.split(","))


def main() -> None:
    # run.sh hands on bench.py's arguments: those of memory.py are taken,
    # the others (--duration, --repeat, ...) left alone.
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--harness",
        default=os.environ.get(
            "STICKYPROXY_BENCH_HARNESS", HERE.parent.parent / "shared" / "bench"
        ),
        help="the shared harness's folder (bench.py)",
    )
    parser.add_argument(
        "--steps", default="0,1000,10000", help="connections to read at"
    )
    parser.add_argument("--only", help="comma list of target names/globs")
    parser.add_argument("--skip", help="comma list of target names/globs to leave out")
    parser.add_argument(
        "--twistd",
        default=str(Path(sys.executable).parent / "twistd"),
        help="the twistd the stickyproxy targets run (this Python's)",
    )
    parser.add_argument("--target", action="append", metavar="NAME=CMD")
    parser.add_argument("--config-template", action="append", metavar="NAME=FILE")
    parser.add_argument("--layer", action="append", metavar="NAME=L4|L7")
    parser.add_argument("--sticky", action="append", help="accepted, as bench.py's")
    parser.add_argument("--l7-idle", choices=("request", "connect"), default="request")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep configs and logs"
    )
    parser.add_argument("--out", help="JSON path (its .md is written beside it)")
    parser.add_argument(
        "--trace", metavar="TARGET", help="tracemalloc a stickyproxy target"
    )
    parser.add_argument(
        "--frames", type=int, default=1, help="traceback depth (--trace)"
    )
    parser.add_argument(
        "--top", type=int, default=25, help="allocations shown (--trace)"
    )
    args = parser.parse_known_args()[0]
    steps = sorted({int(s) for s in args.steps.split(",")})
    bench = load_harness(Path(args.harness))
    limit = raise_file_limit()
    # Every target's files must fit under the limit it inherits: two per
    # client on L4 (HAProxy counts two on L7 too).
    steps = sorted({min(count, (limit - SPARE_FILES) // 2) for count in steps})
    os.sched_setaffinity(0, {args.load_cpu})

    targets: dict[str, tuple[str, str, str | None]] = dict(OWN_TARGETS)
    for peer in bench.BUILTIN_TARGETS:
        if peer.name in PEERS:
            targets[peer.name] = (peer.layer, peer.cmd, peer.config)
    configs = bench.keyed(args.config_template, "--config-template")
    layers = bench.keyed(args.layer, "--layer")
    for name, cmd in bench.keyed(args.target, "--target").items():
        targets[name] = (layers.get(name, "L7"), cmd, configs.get(name))
    if args.only:
        targets = {n: t for n, t in targets.items() if matches(n, args.only)}
    if args.skip:
        targets = {n: t for n, t in targets.items() if not matches(n, args.skip)}

    runner = bench.Bench(args, [])

    def values(port: int, tdir: Path, config_path: str = "") -> dict[str, Any]:
        return {**runner.values(port, tdir, config_path), "twistd": args.twistd}

    report: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": bench.machine_info(args.proxy_cpu, args.load_cpu),
        "python": platform.python_version(),
        "steps": steps,
        "l7_idle": (
            "one request served, waiting for the next"
            if args.l7_idle == "request"
            else "connected, nothing sent"
        ),
        "file_limit": limit,
        "note": (
            "HAProxy's maxconn is raised to the last step and its client and "
            "server timeouts to 10m, so that it keeps every idle connection"
        ),
        "results": {},
    }
    try:
        runner.start_backends()
        if args.trace:
            trace(bench, args.trace, values, steps, args)
            return
        for name, (layer, command, config) in targets.items():
            bench.log(f"memory: {name}")
            report["results"][name] = measure(
                bench, name, layer, command, config, values, steps, args, runner.workdir
            )
    finally:
        runner.close()
    text = markdown(report)
    print()
    print(text)
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(report, indent=1, default=str))
        out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
