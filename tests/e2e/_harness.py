"""
The end-to-end harness: the real C{twistd -n stickyproxy} process, real
backend processes (L{tests.e2e.tcp_backend}) and real client sockets, on
127.0.0.x only.

Every wait polls a condition until a deadline, every process is stopped by
its PID in a cleanup (also when the test fails), and every process's output
goes to a file in the test's temporary directory, so a failure message can
show it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import NoReturn, TypeVar

from twisted.trial.unittest import SkipTest, SynchronousTestCase

_T = TypeVar("_T")

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
BACKEND_SCRIPT = Path(__file__).resolve().with_name("tcp_backend.py")
CONFIG_ERROR = "stickyproxy: configuration error: "

#: The source address of readiness probes, kept apart from the addresses
#: tests use, so a probe never creates a binding a test then sees.
PROBE_SOURCE = "127.0.0.254"

STARTUP_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0
IO_TIMEOUT = 10.0
POLL_INTERVAL = 0.02


class WaitTimeout(Exception):
    """
    A condition did not come true before its deadline.
    """


def wait_for(
    condition: Callable[[], _T],
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> _T:
    """
    Poll C{condition} until it returns something true, or the deadline.

    :param what: what is awaited, for the error.
    :returns: the first true result.
    :raises WaitTimeout: the deadline passed first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def twistd_script() -> str:
    """
    The C{twistd} script installed next to the running Python.
    """
    return str(Path(sys.executable).parent / "twistd")


def free_port(host: str = HOST) -> int:
    """
    A TCP port nothing listens on right now (the kernel's pick for port 0).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def listen_on(port: int, host: str = HOST) -> socket.socket:
    """
    Hold a listening socket on C{host:port} (the caller closes it).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(8)
    except OSError:
        sock.close()
        raise
    return sock


def child_env(pythonpath: Iterable[str | os.PathLike[str]] = ()) -> dict[str, str]:
    """
    The environment of a child process: the repository root (and
    C{pythonpath}, first) on C{PYTHONPATH}, so the flat-layout plugin
    C{twisted/plugins/stickyproxy_plugin.py} is found even when the
    project is installed in editable mode; unbuffered output.
    """
    env = dict(os.environ)
    paths = [os.fspath(p) for p in pythonpath] + [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def connect(
    port: int, source: str = HOST, timeout: float = IO_TIMEOUT
) -> socket.socket:
    """
    A client socket bound to C{source} and connected to C{127.0.0.1:port}.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def accepts(port: int, source: str = HOST) -> bool:
    """
    Whether C{127.0.0.1:port} accepts a connection from C{source} now.
    """
    try:
        connect(port, source, timeout=1.0).close()
    except OSError:
        return False
    return True


class LineReader:
    """
    Reads newline-terminated lines from a socket, then whatever follows.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def line(self, limit: int = 4096) -> bytes | None:
        """
        The next line without its newline, or C{None} when the connection
        ends (or C{limit} bytes pass) first.
        """
        while b"\n" not in self._buffer:
            if len(self._buffer) > limit:
                return None
            data = self._sock.recv(65536)
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def chunks(self) -> Iterable[bytes]:
        """
        Everything after the lines read so far, up to end-of-file.
        """
        if self._buffer:
            yield self._buffer
            self._buffer = b""
        while True:
            data = self._sock.recv(1 << 18)
            if not data:
                return
            yield data


def greeting(port: int, source: str = HOST) -> str:
    """
    Connect from C{source}, read the first line (a test backend's name, or
    a demo backend's greeting) and hang up.

    :returns: the line, or C{""} when the connection ended without one.
    """
    with connect(port, source) as sock:
        try:
            line = LineReader(sock).line()
        except ConnectionResetError:
            line = None
    return "" if line is None else line.decode("utf-8", "replace")


def loopback_sources(first: int, last: int) -> list[str]:
    """
    The source addresses C{127.0.0.first} to C{127.0.0.last}.
    """
    return [f"127.0.0.{n}" for n in range(first, last + 1)]


@cache
def loopback_aliases() -> bool:
    """
    Whether client sockets may bind to 127.0.0.x other than .1 (Linux
    routes the whole of 127/8 to loopback; some systems need aliases).
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.2", 0))
    except OSError:
        return False
    return True


def require_loopback_aliases() -> None:
    """
    Skip the test unless L{loopback_aliases}.
    """
    if not loopback_aliases():
        raise SkipTest("cannot bind a client socket to 127.0.0.2")


def toml_value(value: object) -> str:
    """
    A Python value as a TOML value (strings, booleans, numbers).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise TypeError(f"no TOML form for {value!r}")


def proxy_config(
    port: int,
    backends: Mapping[str, int],
    persistence: Mapping[str, object] | None = None,
    pool: Mapping[str, object] | None = None,
) -> str:
    """
    A one-frontend TCP configuration listening on C{127.0.0.1:port}.

    :param backends: backend name to port on 127.0.0.1, in config order.
    :param persistence: the C{[frontend.persistence]} table, if any.
    :param pool: extra keys of the C{[pool.main]} table.
    """
    lines = [
        "[[frontend]]",
        'name = "main"',
        'mode = "tcp"',
        f'listen = "tcp:{port}:interface={HOST}"',
        'pool = "main"',
    ]
    if persistence is not None:
        lines.append("[frontend.persistence]")
        lines += [f"{k} = {toml_value(v)}" for k, v in persistence.items()]
    lines.append("[pool.main]")
    lines += [f"{k} = {toml_value(v)}" for k, v in (pool or {}).items()]
    for name, backend_port in backends.items():
        lines += [
            "[[pool.main.backend]]",
            f"name = {toml_value(name)}",
            f'address = "{HOST}:{backend_port}"',
        ]
    return "\n".join(lines) + "\n"


class Process:
    """
    A child process whose output (stdout and stderr) goes to a file.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def exited(self) -> bool:
        """
        Whether it has ended (reaping it if so).
        """
        return self.popen.poll() is not None

    def output(self) -> str:
        """
        Everything it has written so far.
        """
        try:
            return self.log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def send_signal(self, signum: int) -> None:
        """
        Send C{signum} to its PID, unless it has already been reaped (so a
        recycled PID is never signalled).
        """
        if not self.exited():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout: float) -> int:
        """
        Poll until it ends.

        :returns: its exit status.
        :raises WaitTimeout: it is still running at the deadline.
        """
        wait_for(self.exited, timeout, f"{self.describe()} to exit")
        status = self.popen.poll()
        assert status is not None
        return status

    def kill(self, timeout: float = EXIT_TIMEOUT) -> None:
        """
        SIGKILL it (a crash, as far as its peers can tell) and reap it.
        """
        self.send_signal(signal.SIGKILL)
        self.wait_exit(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """
        SIGTERM it, then SIGKILL it if it lingers; reap it either way.
        """
        self.send_signal(signal.SIGTERM)
        try:
            self.wait_exit(timeout)
        except WaitTimeout:
            self.kill()

    def describe(self) -> str:
        status = self.popen.poll()
        state = "running" if status is None else f"exit status {status}"
        return f"{self.name} (pid {self.pid}, {state})"


class Backend(Process):
    """
    A L{tests.e2e.tcp_backend} process.

    :ivar port: where it listens on 127.0.0.1, once known.
    """

    port: int = 0


class E2ETestCase(SynchronousTestCase):
    """
    Starts processes and cleans them up; fails with their output.
    """

    def setUp(self) -> None:
        super().setUp()
        self.workdir = Path(os.path.abspath(self.mktemp()))
        self.workdir.mkdir(parents=True)
        self.processes: list[Process] = []

    # Processes

    def start_process(
        self,
        name: str,
        argv: list[str],
        pythonpath: Iterable[str | os.PathLike[str]] = (),
        kind: type[Process] = Process,
    ) -> Process:
        """
        Start C{argv} with its output in C{<workdir>/<name>.log}; a cleanup
        stops it by PID.
        """
        log = self.workdir / f"{name}.log"
        n = 1
        while log.exists():
            n += 1
            log = self.workdir / f"{name}-{n}.log"
        with open(log, "wb") as stream:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=child_env(pythonpath),
                cwd=self.workdir,
            )
        process = kind(name, popen, log)
        self.processes.append(process)
        self.addCleanup(process.stop)
        return process

    def start_backend(self, name: str, reply_bytes: int = 0) -> Backend:
        """
        Start a test backend called C{name} and wait until it listens.
        """
        argv = [sys.executable, str(BACKEND_SCRIPT), name]
        argv += ["--reply-bytes", str(reply_bytes)]
        backend = self.start_process(f"backend-{name}", argv, kind=Backend)
        assert isinstance(backend, Backend)

        def port() -> int:
            for line in backend.output().splitlines():
                if line.startswith("listening on "):
                    return int(line.rpartition(":")[2])
            return 0

        backend.port = self.wait(port, STARTUP_TIMEOUT, f"{name} to listen", backend)
        return backend

    def start_backends(self, *names: str) -> dict[str, Backend]:
        """
        Start one test backend per name.

        :returns: the backends by name, in the order given.
        """
        return {name: self.start_backend(name) for name in names}

    def twistd(self, *args: str) -> list[str]:
        """
        The command line of C{twistd -n --pidfile= stickyproxy ARGS}.
        """
        script = twistd_script()
        if not os.path.exists(script):
            self.fail(f"no twistd script next to {sys.executable}: {script}")
        return [script, "-n", "--pidfile=", "stickyproxy", *args]

    def start_proxy(
        self,
        *args: str,
        port: int,
        pythonpath: Iterable[str | os.PathLike[str]] = (),
    ) -> Process:
        """
        Start C{twistd -n stickyproxy ARGS} and wait until C{port} accepts.
        """
        proxy = self.start_process("proxy", self.twistd(*args), pythonpath)
        self.wait(
            lambda: accepts(port, PROBE_SOURCE if loopback_aliases() else HOST),
            STARTUP_TIMEOUT,
            f"the proxy to accept connections on {HOST}:{port}",
            proxy,
        )
        return proxy

    def start_proxy_with_config(
        self, config: str, port: int, pythonpath: Iterable[str | os.PathLike[str]] = ()
    ) -> Process:
        """
        Write C{config} to a file and start the proxy on it.
        """
        path = self.write_config(config)
        return self.start_proxy("--config", path, port=port, pythonpath=pythonpath)

    def run_proxy_to_exit(
        self,
        *args: str,
        pythonpath: Iterable[str | os.PathLike[str]] = (),
        port: int | None = None,
    ) -> Process:
        """
        Run C{twistd -n stickyproxy ARGS} until it exits (within
        C{EXIT_TIMEOUT}).

        :param port: where the arguments say to listen: if the proxy
            accepts connections there, fail at once (it started instead of
            exiting).
        """
        proxy = self.start_process("proxy", self.twistd(*args), pythonpath)

        def ended() -> bool:
            if port is not None and accepts(port):
                self.fail_with_output(f"the proxy started and serves on port {port}")
            return proxy.exited()

        self.wait(ended, EXIT_TIMEOUT, "the proxy to exit")
        return proxy

    def assert_config_error(self, proxy: Process, path: str, *fragments: str) -> str:
        """
        Check that C{proxy} exited with a non-zero status, that the last
        line of its output is C{stickyproxy: configuration error: PATH: ...}
        containing each of C{fragments}, and that it printed no traceback.

        :returns: that last line.
        """
        output = proxy.output()
        last = (output.strip().splitlines() or [""])[-1]
        prefix = f"{CONFIG_ERROR}{path}: "
        problems = []
        if proxy.returncode == 0:
            problems.append("it exited with status 0")
        if not last.startswith(prefix):
            problems.append(f"its last line does not start with {prefix!r}")
        problems += [f"its last line lacks {f!r}" for f in fragments if f not in last]
        if "Traceback" in output:
            problems.append("it printed a traceback")
        if problems:
            self.fail_with_output("; ".join(problems))
        return last

    def greeting(self, port: int, source: str = HOST) -> str:
        """
        L{greeting}, failing the test (with the processes' output) when
        the connection cannot be made or errs.
        """
        try:
            return greeting(port, source)
        except OSError as error:
            self.fail_with_output(f"connecting from {source} to port {port}: {error}")

    def write_config(self, text: str, name: str = "proxy.toml") -> str:
        """
        Write a config file (dedented) into the test's directory.

        :returns: its absolute path.
        """
        path = self.workdir / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return str(path)

    # Waiting and failing

    def wait(
        self,
        condition: Callable[[], _T],
        timeout: float,
        what: str,
        process: Process | None = None,
    ) -> _T:
        """
        L{wait_for} that fails the test, with every process's output, at
        the deadline, or as soon as C{process} (which the condition needs
        alive) exits.
        """

        def check() -> _T:
            result = condition()
            if not result and process is not None and process.exited():
                self.fail_with_output(
                    f"{process.describe()} ended while waiting for {what}"
                )
            return result

        try:
            return wait_for(check, timeout, what)
        except WaitTimeout as error:
            self.fail_with_output(str(error))

    def fail_with_output(self, message: str) -> NoReturn:
        """
        Fail, appending what every process started by this test wrote.
        """
        raise self.failureException(message + "\n" + self.outputs())

    def outputs(self, tail: int = 80) -> str:
        """
        The last C{tail} lines of output of each process, labelled.
        """
        parts = []
        for process in self.processes:
            lines = process.output().splitlines()[-tail:]
            parts.append(f"---- {process.describe()}, output in {process.log} ----")
            parts += lines
        return "\n".join(parts)
