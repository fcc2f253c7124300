"""
Python function calls per request, counted with cProfile: a deterministic
measure of the proxy's hot path, free of the noise of a shared machine.

The current tree and a baseline commit (a ``git worktree`` of it, made in
a scratch folder and removed afterwards) each run as a proxy process on
the real reactor, on 127.0.0.1, in front of three small HTTP backends.
One client sends requests one at a time, so each request costs the proxy
the same work every time; the proxy is profiled only while the measured
requests run (after a warm-up), and the calls it made are divided by the
number of requests.  Not a test: nothing here passes or fails.

    python benchmarks/callcount.py                  # against 72347fe
    python benchmarks/callcount.py --baseline main -n 5000
    python benchmarks/callcount.py --only l7-cookie --top 25

Run it with a Python that has stickyproxy's dependencies (the project's
venv): each tree is imported from its own folder, whatever is installed.

Scenarios (the benchmark's modes, one request at a time):

    l7-keepalive   HTTP, one connection, no cookie: every request is
                   balanced and gets a new cookie
    l7-cookie      HTTP, one connection, every request carries its cookie
    l7-newconn     HTTP, a new connection per request (Connection: close)
    l4-newconn     TCP (source-ip), a new connection per request
    l4-keepalive   TCP (source-ip), one connection
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BODY = (
    b"call-count backend response, padded to one hundred bytes".ljust(99, b".") + b"\n"
)

L7_CONFIG = """
[[frontend]]
name = "count-l7"
mode = "http"
listen = "tcp:{port}:interface=127.0.0.1"
pool = "web"
[frontend.persistence]
strategy = "cookie"
name = "SPSESSION"
keys = ["call-count key, not a secret"]

[pool.web]
balance = "roundrobin"
{backends}
"""

L4_CONFIG = """
[[frontend]]
name = "count-l4"
mode = "tcp"
listen = "tcp:{port}:interface=127.0.0.1"
pool = "tcp"
[frontend.persistence]
strategy = "source-ip"

[pool.tcp]
{backends}
"""

SCENARIOS = {
    # name: (config, keep-alive, carries the cookie)
    "l7-keepalive": (L7_CONFIG, True, False),
    "l7-cookie": (L7_CONFIG, True, True),
    "l7-newconn": (L7_CONFIG, False, False),
    "l4-newconn": (L4_CONFIG, False, False),
    "l4-keepalive": (L4_CONFIG, True, False),
}


# The backends: threads of this process, answering like the benchmark's
# nginx ones (100-byte body, X-Backend), closing after Connection: close.


class _Backend(socketserver.BaseRequestHandler):
    name = b"b0"

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffered = b""
        while True:
            while b"\r\n\r\n" not in buffered:
                try:
                    data = sock.recv(65536)
                except OSError:  # the proxy stopped, with this one open
                    return
                if not data:
                    return
                buffered += data
            head, buffered = buffered.split(b"\r\n\r\n", 1)
            close = b"\r\nconnection: close" in head.lower()
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nServer: callcount\r\n"
                b"Content-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: %s\r\nX-Backend: %s\r\n\r\n%s"
                % (
                    len(BODY),
                    b"close" if close else b"keep-alive",
                    self.name,
                    BODY,
                )
            )
            if close:
                sock.close()
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def backends(count: int = 3) -> Iterator[list[int]]:
    servers = []
    for index in range(1, count + 1):
        handler = type(f"B{index}", (_Backend,), {"name": b"b%d" % index})
        server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield [server.server_address[1] for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# The client: one request at a time, each read to its end.


def _read_response(sock: socket.socket, buffered: bytes) -> tuple[bytes, bytes]:
    """
    :returns: the response head, and what came after its body.
    """
    while b"\r\n\r\n" not in buffered:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response head: {buffered!r}")
        buffered += data
    head, rest = buffered.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed in the middle of a response body")
        rest += data
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected response: {head!r}")
    return head, rest[length:]


def _cookie(head: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"set-cookie":
            return value.strip().split(b";", 1)[0]
    raise ConnectionError(f"no cookie set: {head!r}")


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def drive(port: int, count: int, keep_alive: bool, cookie: bool) -> None:
    """
    Send C{count} requests to the proxy on C{port}, one at a time.
    """
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: callcount\r\n" % (
        port
    )
    if not keep_alive:
        for _ in range(count):
            with _connect(port) as sock:
                sock.sendall(request + b"Connection: close\r\n\r\n")
                _read_response(sock, b"")
                while sock.recv(65536):  # until the proxy closes
                    pass
        return
    with _connect(port) as sock:
        extra = b""
        if cookie:
            sock.sendall(request + b"\r\n")
            head, _ = _read_response(sock, b"")
            extra = b"Cookie: " + _cookie(head) + b"\r\n"
        buffered = b""
        for _ in range(count):
            sock.sendall(request + extra + b"\r\n")
            _, buffered = _read_response(sock, buffered)


# The proxy process.

_CHILD = r"""
import cProfile, os, sys, time
tree, config, stats, log, mode = sys.argv[1:6]
# This tree's stickyproxy (and plugins), never an installed one.
sys.path[:] = [tree] + [
    p for p in sys.path
    if p and "__editable__" not in p and os.path.abspath(p) != os.path.abspath(tree)
]
try:  # the reactor twistd stickyproxy runs on, in trees that have one
    from stickyproxy._eventloop import install_lean_reactor
    install_lean_reactor()
except ImportError:
    pass
from twisted.internet import reactor, stdio
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver
globalLogBeginner.beginLoggingTo(
    [textFileLogObserver(open(log, "a"))], redirectStandardIO=False
)
import stickyproxy
assert os.path.dirname(os.path.abspath(stickyproxy.__file__)) == os.path.join(
    os.path.abspath(tree), "stickyproxy"
), stickyproxy.__file__
from stickyproxy.tap import Options, makeService
options = Options()
options.parseOptions(["--config", config])
service = makeService(options)
service.startService()
profiler = cProfile.Profile()
started = [0.0]

def say(word):
    os.write(1, word + b"\n")  # at once, not through the reactor


class Control(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        reactor.callWhenRunning(say, b"ready")

    def lineReceived(self, line):
        if line == b"start":
            say(b"started")
            if mode == "cpu":
                started[0] = time.process_time()
            else:
                profiler.enable()
        elif line == b"stop":
            if mode == "cpu":
                with open(stats, "w") as f:
                    f.write(repr(time.process_time() - started[0]))
            else:
                profiler.disable()
                profiler.dump_stats(stats)
            say(b"stopped")
            reactor.stop()

stdio.StandardIO(Control())
reactor.run()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _expect(child: subprocess.Popen[bytes], word: bytes) -> None:
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != word:
        child.kill()
        raise RuntimeError(f"the proxy said {line!r}, not {word!r}")


def measure(
    tree: Path,
    scenario: str,
    ports: list[int],
    count: int,
    warmup: int,
    scratch: Path,
    mode: str = "profile",
) -> Path:
    """
    Run the proxy of C{tree} for one scenario.

    :param mode: C{"profile"}, or C{"cpu"}: no profiler, only the CPU time.
    :returns: where it wrote the profile of C{count} requests, after
        C{warmup} others (or the seconds of CPU they took).
    """
    template, keep_alive, cookie = SCENARIOS[scenario]
    port = _free_port()
    backend_lines = "".join(
        f'[[pool.{{pool}}.backend]]\nname = "b{i}"\naddress = "127.0.0.1:{p}"\n'
        for i, p in enumerate(ports, 1)
    )
    pool = "web" if template is L7_CONFIG else "tcp"
    config = scratch / f"{tree.name}-{scenario}.toml"
    config.write_text(
        template.format(port=port, backends=backend_lines.replace("{pool}", pool))
    )
    stats = scratch / f"{tree.name}-{scenario}.pstats"
    log = scratch / f"{tree.name}-{scenario}.log"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            *map(str, (tree, config, stats, log)),
            mode,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=scratch,
    )
    assert child.stdin is not None
    try:
        _expect(child, b"ready")
        drive(port, warmup, keep_alive, cookie)
        child.stdin.write(b"start\n")
        child.stdin.flush()
        _expect(child, b"started")
        drive(port, count, keep_alive, cookie)
        child.stdin.write(b"stop\n")
        child.stdin.flush()
        _expect(child, b"stopped")
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return stats


def per_request(stats: pstats.Stats, count: int) -> tuple[float, float]:
    """
    :returns: all calls per request, and calls of Python functions only
        (built-ins and C methods left out).
    """
    raw = stats.stats  # type: ignore[attr-defined]
    python = sum(nc for (path, _, _), (_, nc, *_) in raw.items() if path != "~")
    return stats.total_calls / count, python / count  # type: ignore[attr-defined]


def top(stats: pstats.Stats, count: int, limit: int) -> list[str]:
    raw = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda item: -item[1][1])[:limit]
    lines = []
    for (path, line, name), (_, nc, *_) in rows:
        where = name if path == "~" else f"{Path(path).name}:{line}({name})"
        lines.append(f"    {nc / count:7.2f}  {where}")
    return lines


@contextlib.contextmanager
def baseline_tree(revision: str, scratch: Path) -> Iterator[Path]:
    """
    A detached C{git worktree} of C{revision}, removed afterwards.
    """
    path = scratch / "baseline"
    subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "worktree",
            "add",
            "-q",
            "--detach",
            str(path),
            revision,
        ],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
            check=False,
        )


def cpu_time(
    trees: dict[str, Path],
    scenarios: list[str],
    ports: list[int],
    args: argparse.Namespace,
    scratch: Path,
    label: str,
) -> None:
    """
    Print the CPU time per request of each tree, unprofiled: the least of
    C{args.cpu} rounds, the trees taking turns so that a busy spell of the
    machine falls on both.
    """
    print(
        f"CPU microseconds per request, least of {args.cpu} rounds of "
        f"{args.requests} requests after {args.warmup}{label}"
    )
    for scenario in scenarios:
        best: dict[str, float] = {}
        for _ in range(args.cpu):
            for name, tree in trees.items():
                path = measure(
                    tree, scenario, ports, args.requests, args.warmup, scratch, "cpu"
                )
                spent = float(path.read_text()) / args.requests * 1e6
                best[name] = min(best.get(name, spent), spent)
        line = "  ".join(f"{name} {spent:7.1f}" for name, spent in best.items())
        if "baseline" in best:
            line += f"  ratio {best['current'] / best['baseline']:.3f}"
        print(f"{scenario:14} {line}")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="72347fe", help="git revision")
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument(
        "--top", type=int, default=0, help="also list the N most called functions"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="measure the current tree only"
    )
    parser.add_argument(
        "--cpu",
        type=int,
        metavar="ROUNDS",
        default=0,
        help="instead, CPU time per request, unprofiled: the least of ROUNDS "
        "interleaved runs of each tree (noisier than calls)",
    )
    args = parser.parse_args()
    scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scratch = Path(tempfile.mkdtemp(prefix="stickyproxy-callcount-"))
    try:
        with contextlib.ExitStack() as stack:
            ports = stack.enter_context(backends())
            trees = {"current": REPO}
            if not args.no_baseline:
                trees["baseline"] = stack.enter_context(
                    baseline_tree(args.baseline, scratch)
                )
            label = "" if args.no_baseline else f" (baseline: {args.baseline})"
            if args.cpu:
                cpu_time(trees, scenarios, ports, args, scratch, label)
                return
            print(
                f"calls per request, {args.requests} requests after "
                f"{args.warmup}{label}"
            )
            print(f"{'scenario':14} {'tree':9} {'all calls':>10} {'python':>8}")
            for scenario in scenarios:
                for name, tree in trees.items():
                    path = measure(
                        tree, scenario, ports, args.requests, args.warmup, scratch
                    )
                    stats = pstats.Stats(str(path))
                    total, python = per_request(stats, args.requests)
                    print(f"{scenario:14} {name:9} {total:10.1f} {python:8.1f}")
                    if args.top:
                        print("\n".join(top(stats, args.requests, args.top)))
                    sys.stdout.flush()
    finally:
        if not os.environ.get("CALLCOUNT_KEEP"):
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}")


if __name__ == "__main__":
    main()
