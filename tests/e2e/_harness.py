"""
The end-to-end harness: the real C{twistd -n stickyproxy} process, real
backend processes (L{tests.e2e.tcp_backend}, L{tests.e2e.http_backend}) and
real clients (sockets, curl, a headless Chromium driven over the DevTools
protocol), on 127.0.0.x only.

Every wait polls a condition until a deadline, every process is stopped by
its PID in a cleanup (also when the test fails), and every process's output
goes to a file in the test's temporary directory, so a failure message can
show it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.request import urlopen

from twisted.trial.unittest import SkipTest

from tests._base import TestCase

_T = TypeVar("_T")

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
BACKEND_SCRIPT = Path(__file__).resolve().with_name("tcp_backend.py")
HTTP_BACKEND_SCRIPT = Path(__file__).resolve().with_name("http_backend.py")
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


def listen_on(port: int, host: str = HOST, reuse: bool = False) -> socket.socket:
    """
    Hold a listening socket on C{host:port} (the caller closes it).

    :param reuse: set C{SO_REUSEADDR}, to listen where a killed process
        left connections in C{TIME_WAIT}.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def close_wait(port: int) -> int:
    """
    How many TCP sockets listening-side on C{port} (the proxy's) are in
    CLOSE-WAIT: their peer left, and the proxy has not closed them yet.
    """
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines)
                for line in lines:
                    local, state = line.split()[1], line.split()[3]
                    if state == "08" and int(local.rsplit(":", 1)[1], 16) == port:
                        count += 1
        except FileNotFoundError:
            continue
    return count


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
    A Python value as a TOML value (strings, booleans, numbers, arrays).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_table(header: str, values: Mapping[str, object] | None) -> list[str]:
    """
    The lines of a TOML table C{[header]} (or C{[[header]]}, when given
    with its brackets) holding C{values}.
    """
    head = header if header.startswith("[[") else f"[{header}]"
    return [head] + [f"{k} = {toml_value(v)}" for k, v in (values or {}).items()]


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
    return frontend_config(port, backends, persistence=persistence, pool=pool)


def frontend_config(
    port: int,
    backends: Mapping[str, int],
    *,
    mode: str = "tcp",
    name: str = "main",
    persistence: Mapping[str, object] | None = None,
    frontend: Mapping[str, object] | None = None,
    pool: Mapping[str, object] | None = None,
    health: Mapping[str, object] | None = None,
    backend_options: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
    """
    One frontend called C{name} listening on C{127.0.0.1:port}, and its own
    pool, also called C{name}.  Texts for different names joined together
    make one configuration with several frontends.

    :param backends: backend name to port on 127.0.0.1, in config order.
    :param persistence: the C{[frontend.persistence]} table, if any.
    :param frontend: extra keys of the C{[[frontend]]} table (an HTTP
        frontend's options, C{strict}, ...).
    :param pool: extra keys of the C{[pool.NAME]} table.
    :param health: the C{[pool.NAME.health]} table, if any.
    :param backend_options: extra keys of some C{[[pool.NAME.backend]]}
        tables (C{admin_state}, C{route}, ...), by backend name.
    """
    lines = toml_table(
        "[[frontend]]",
        {
            "name": name,
            "mode": mode,
            "listen": f"tcp:{port}:interface={HOST}",
            "pool": name,
            **(frontend or {}),
        },
    )
    if persistence is not None:
        lines += toml_table("frontend.persistence", persistence)
    lines += toml_table(f"pool.{name}", pool)
    if health is not None:
        lines += toml_table(f"pool.{name}.health", health)
    for backend, backend_port in backends.items():
        options: dict[str, object] = {
            "name": backend,
            "address": f"{HOST}:{backend_port}",
        }
        options.update((backend_options or {}).get(backend, {}))
        lines += toml_table(f"[[pool.{name}.backend]]", options)
    return "\n".join(lines) + "\n"


def http_config(port: int, backends: Mapping[str, int], **options: Any) -> str:
    """
    L{frontend_config} for an HTTP frontend.
    """
    return frontend_config(port, backends, mode="http", **options)


@dataclass
class HTTPResult:
    """
    One HTTP response as a client saw it.

    :ivar headers: (lower-case name, value) pairs, in order.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """
        The first value of header C{name}, or C{None}.
        """
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """
        Every value of header C{name}.
        """
        lowered = name.lower()
        return [value for key, value in self.headers if key == lowered]

    @property
    def backend(self) -> str | None:
        """
        The backend that answered (the L{tests.e2e.http_backend} header).
        """
        return self.header("x-backend")

    def set_cookie(self, name: str) -> str | None:
        """
        The value the response sets cookie C{name} to, or C{None} when it
        sets no such cookie.
        """
        for header in self.header_values("set-cookie"):
            key, _, rest = header.partition("=")
            if key.strip() == name:
                return rest.split(";", 1)[0].strip()
        return None

    def describe(self) -> str:
        """
        The status, headers and the start of the body, for failure messages.
        """
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"HTTP {self.status}\n{head}\n\n{self.body[:300]!r}"


def parse_response(data: bytes) -> HTTPResult:
    """
    Parse what C{curl -i} printed (interim 1xx responses are skipped).

    :raises ValueError: it is not an HTTP response.
    """
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError(f"no complete response head in {data[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        fields = lines[0].split(None, 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/"):
            raise ValueError(f"not a status line: {lines[0]!r}")
        status = int(fields[1])
        if 100 <= status < 200 and status != 101:
            data = rest
            continue
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return HTTPResult(status, headers, rest)


class CurlFailed(Exception):
    """
    curl exited with an error (no response, or a transfer that broke off).
    """


def curl_path() -> str | None:
    """
    The curl executable, if there is one.
    """
    return shutil.which("curl")


def curl(url: str, *args: str, timeout: float = IO_TIMEOUT) -> HTTPResult:
    """
    Run C{curl -sS -i ARGS URL} to its end (ignoring any proxy the
    environment names) and parse its answer.

    :param args: more curl options, e.g. C{-c JAR -b JAR} or
        C{-H "Cookie: ..."}.
    :raises CurlFailed: curl failed or timed out.
    """
    executable = curl_path()
    if executable is None:
        raise CurlFailed("no curl on PATH (apt-get install curl)")
    argv = [executable, "-sS", "-i", "--noproxy", "*", "--max-time", f"{timeout:g}"]
    argv += [*args, url]
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=timeout + 5, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as error:
        raise CurlFailed(f"{argv} did not finish: {error}") from None
    if done.returncode != 0:
        raise CurlFailed(
            f"curl exited with status {done.returncode}: "
            f"{done.stderr.decode('utf-8', 'replace').strip()} ({' '.join(argv)})"
        )
    try:
        return parse_response(done.stdout)
    except ValueError as error:
        raise CurlFailed(f"curl printed no HTTP response: {error}") from None


def chromium_path() -> str | None:
    """
    The Chromium executable (Debian's C{chromium} package), if there is one.
    """
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """
    Skip the test unless Chromium is installed.

    :returns: its path.
    """
    found = chromium_path()
    if found is None:
        raise SkipTest("no chromium on PATH: apt-get install chromium")
    return found


#: Chromium's options for a quiet, headless browser that talks to nothing
#: but the pages it is sent to.
CHROMIUM_OPTIONS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--password-store=basic",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class DevTools:
    """
    A Chrome DevTools protocol session with one page, over its WebSocket.

    :ivar events: events received while waiting for something else.
    """

    def __init__(self, websocket: Any) -> None:
        self._websocket = websocket
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"no answer from the browser for {what}")
        try:
            message = self._websocket.recv(timeout=remaining)
        except TimeoutError:
            raise WaitTimeout(f"no answer from the browser for {what}") from None
        result: dict[str, Any] = json.loads(message)
        return result

    def call(
        self, method: str, timeout: float = IO_TIMEOUT, **params: object
    ) -> dict[str, Any]:
        """
        Send a command and wait (until a deadline) for its result.

        :raises RuntimeError: the browser answered with an error.
        """
        self._next_id += 1
        ident = self._next_id
        self._websocket.send(
            json.dumps({"id": ident, "method": method, "params": params})
        )
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str, timeout: float = IO_TIMEOUT) -> dict[str, Any]:
        """
        Wait (until a deadline) for the next event called C{method}, taking
        it and every event before it off L{events}.
        """
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event["method"] == method:
                    del self.events[: index + 1]
                    return event
            self.events.append(self._receive(deadline, f"the event {method}"))

    def close(self) -> None:
        self._websocket.close()


class Browser:
    """
    One headless Chromium process with its own fresh profile, and the
    DevTools session with its page.
    """

    def __init__(self, process: Process, devtools: DevTools) -> None:
        self.process = process
        self.devtools = devtools

    def load(self, url: str, timeout: float = IO_TIMEOUT) -> None:
        """
        Navigate the page to C{url} and wait for its C{load} event.

        :raises RuntimeError: the navigation failed.
        """
        self.devtools.events.clear()
        result = self.devtools.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"loading {url}: {result['errorText']}")
        self.devtools.wait_event("Page.loadEventFired", timeout)

    def text(self, element_id: str) -> str | None:
        """
        The text of the page's element C{element_id}, or C{None} if it has
        none.
        """
        expression = f"document.getElementById({json.dumps(element_id)})?.textContent"
        result = self.devtools.call(
            "Runtime.evaluate", expression=expression, returnByValue=True
        )
        value = result.get("result", {}).get("value")
        return value if isinstance(value, str) else None

    def evaluate(self, expression: str) -> Any:
        """
        The value of a JavaScript expression in the page (awaited, when it
        is a promise).

        :raises RuntimeError: it threw.
        """
        result = self.devtools.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def click(self, selector: str) -> None:
        """
        Click the middle of the page's first element matching the CSS
        C{selector} with the mouse, as a person would (scrolling it into
        view first).

        :raises RuntimeError: no element matches, or it is not visible.
        """
        found = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2, r.width * r.height]; })()"
        )
        if not found or not found[2]:
            raise RuntimeError(f"nothing visible to click matches {selector!r}")
        x, y, _ = found
        for event in ("mousePressed", "mouseReleased"):
            self.devtools.call(
                "Input.dispatchMouseEvent",
                type=event,
                x=x,
                y=y,
                button="left",
                clickCount=1,
            )

    def type_into(self, selector: str, text: str) -> None:
        """
        Replace what the input matching C{selector} holds by C{text}, typed
        with the keyboard.
        """
        self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.focus(); e.select(); })()"
        )
        self.devtools.call("Input.insertText", text=text)

    def screenshot(self, path: Path, width: int = 1280, height: int = 0) -> None:
        """
        Save the page as a PNG file, seen through a window C{width} CSS
        pixels wide and C{height} high (by default as high as the page's
        content at that width).
        """

        def window(high: int) -> None:
            self.devtools.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=high,
                deviceScaleFactor=1,
                mobile=False,
            )

        if not height:
            window(1)
            height = int(self.evaluate("document.body.scrollHeight"))
        window(height)
        data = self.devtools.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def cookies(self, url: str) -> list[dict[str, Any]]:
        """
        The cookies the browser would send to C{url}.
        """
        cookies: list[dict[str, Any]] = self.devtools.call(
            "Network.getCookies", urls=[url]
        )["cookies"]
        return cookies

    def close(self) -> None:
        self.devtools.close()


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


class E2ETestCase(TestCase):
    """
    Starts processes and cleans them up; fails with their output.

    :ivar workdir: the test's own temporary directory (configs, logs,
        browser profiles), removed after the processes are stopped.
    """

    def setUp(self) -> None:
        super().setUp()
        self.workdir = Path(self.mktemp())
        self.workdir.mkdir()
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
        return self._start_server(name, argv)

    def start_http_backend(self, name: str, *options: str) -> Backend:
        """
        Start a L{tests.e2e.http_backend} called C{name} (with its
        command-line C{options}, e.g. C{--max-age 5}) and wait until it
        listens.
        """
        argv = [sys.executable, str(HTTP_BACKEND_SCRIPT), name, *options]
        return self._start_server(name, argv)

    def start_http_backends(self, *names: str) -> dict[str, Backend]:
        """
        Start one L{tests.e2e.http_backend} per name.

        :returns: the backends by name, in the order given.
        """
        return {name: self.start_http_backend(name) for name in names}

    def _start_server(self, name: str, argv: list[str]) -> Backend:
        """
        Start a backend process that prints C{listening on HOST:PORT}, and
        wait for that line.
        """
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
        self,
        config: str,
        port: int,
        pythonpath: Iterable[str | os.PathLike[str]] = (),
        config_name: str = "proxy.toml",
    ) -> Process:
        """
        Write C{config} to a file (called C{config_name}) and start the
        proxy on it.
        """
        path = self.write_config(config, config_name)
        return self.start_proxy("--config", path, port=port, pythonpath=pythonpath)

    def start_proxy_with_admin(
        self,
        config: str,
        port: int,
        admin: Mapping[str, object],
        admin_port: int,
    ) -> Process:
        """
        Start the proxy on C{config} with the C{[admin]} table C{admin},
        and wait until its admin listener accepts on C{admin_port} too.
        """
        config += "\n".join(toml_table("admin", admin)) + "\n"
        proxy = self.start_proxy_with_config(config, port)
        self.wait(
            lambda: accepts(admin_port),
            STARTUP_TIMEOUT,
            "the admin listener to accept connections",
            proxy,
        )
        return proxy

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
            # Its own log line, not just a listener: another process may
            # have taken a port that free_port() found free.
            if (
                port is not None
                and f"starting on {port}" in proxy.output()
                and accepts(port)
            ):
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

    def curl(self, url: str, *args: str, timeout: float = IO_TIMEOUT) -> HTTPResult:
        """
        L{curl}, failing the test (with the processes' output) when curl
        gets no complete response.
        """
        try:
            return curl(url, *args, timeout=timeout)
        except CurlFailed as error:
            self.fail_with_output(str(error))

    def wait_for_line(
        self,
        process: Process,
        pattern: str,
        timeout: float,
        since: int = 0,
    ) -> re.Match[str]:
        """
        Wait until a line of C{process}'s output (from character C{since}
        on) matches the regular expression C{pattern}.

        :returns: the first match.
        """

        def search() -> re.Match[str] | None:
            return re.compile(pattern, re.MULTILINE).search(process.output(), since)

        return self.wait(search, timeout, f"a line matching {pattern!r}", process)

    def start_browser(
        self, name: str = "chromium", options: Sequence[str] = ()
    ) -> Browser:
        """
        Start a headless Chromium with a fresh profile of its own, and open
        a DevTools session with its page; cleanups close the session and
        stop the browser by PID.

        :param options: more command-line options, after L{CHROMIUM_OPTIONS}.
        :raises SkipTest: Chromium is not installed.
        """
        from websockets.sync.client import connect as websocket_connect

        executable = require_chromium()
        profile = self.workdir / f"{name}-profile"
        profile.mkdir()
        argv = [executable, *CHROMIUM_OPTIONS, *options, f"--user-data-dir={profile}"]
        process = self.start_process(name, [*argv, "about:blank"])
        active_port = profile / "DevToolsActivePort"

        def devtools_port() -> int:
            try:
                lines = active_port.read_text().split()
            except OSError:
                return 0
            return int(lines[0]) if len(lines) >= 2 else 0

        port = self.wait(
            devtools_port, STARTUP_TIMEOUT, "Chromium's DevToolsActivePort", process
        )

        def page_url() -> str | None:
            try:
                with urlopen(f"http://{HOST}:{port}/json/list", timeout=2) as reply:
                    targets = json.load(reply)
            except OSError:
                return None
            pages = [t for t in targets if t.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        url = self.wait(page_url, STARTUP_TIMEOUT, "Chromium's page target", process)
        session = ExitStack()
        self.addCleanup(session.close)
        websocket = session.enter_context(
            websocket_connect(
                url,
                proxy=None,
                compression=None,
                max_size=None,
                open_timeout=IO_TIMEOUT,
            )
        )
        browser = Browser(process, DevTools(websocket))
        browser.devtools.call("Page.enable")
        return browser

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
        interval: float = POLL_INTERVAL,
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
            return wait_for(check, timeout, what, interval)
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


#: The names of the HTTP test backends most tests start.
HTTP_NAMES = ("b1", "b2", "b3")
#: The cookie signing keys of the HTTP tests' configurations.
COOKIE_KEYS = ("end-to-end test key, not a secret",)
#: The debug header the HTTP tests' frontends add to responses.
DEBUG_HEADER = "X-Sticky-Debug"


class HTTPE2ETestCase(E2ETestCase):
    """
    An HTTP frontend (with the L{DEBUG_HEADER} and an access log) in front
    of L{tests.e2e.http_backend} processes, driven with curl.

    :ivar backends: the backend processes by name.
    :ivar port: where the proxy listens.
    :ivar url: C{http://127.0.0.1:PORT}.
    :ivar proxy: the proxy process.
    """

    backends: dict[str, Backend]
    port: int
    url: str
    proxy: Process

    def start_http_proxy(
        self,
        persistence: Mapping[str, object] | None,
        names: Sequence[str] = HTTP_NAMES,
        backend_args: Sequence[str] = (),
        frontend: Mapping[str, object] | None = None,
        **options: Any,
    ) -> Process:
        """
        Start one L{tests.e2e.http_backend} per name (with C{backend_args}),
        unless they run already, and the proxy in front of them.

        :param frontend: more options of the frontend.
        :param options: more arguments of L{http_config}.
        """
        if not getattr(self, "backends", None):
            self.backends = {
                name: self.start_http_backend(name, *backend_args) for name in names
            }
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        config = self.http_proxy_config(self.port, persistence, frontend, **options)
        self.proxy = self.start_proxy_with_config(config, self.port)
        return self.proxy

    def http_proxy_config(
        self,
        port: int,
        persistence: Mapping[str, object] | None,
        frontend: Mapping[str, object] | None = None,
        **options: Any,
    ) -> str:
        """
        The configuration of an HTTP frontend on C{port} in front of
        L{backends}, with the debug header and an access log.
        """
        ports = {name: backend.port for name, backend in self.backends.items()}
        settings = {"debug_header": DEBUG_HEADER, "access_log": True}
        settings.update(frontend or {})
        return http_config(
            port, ports, persistence=persistence, frontend=settings, **options
        )

    def jar(self, name: str = "jar") -> tuple[str, str, str, str]:
        """
        The curl options that read and write the cookie jar C{name} (a
        file in the test's directory): C{-c PATH -b PATH}.
        """
        path = str(self.workdir / f"{name}.cookies")
        return ("-c", path, "-b", path)

    def get(self, path: str = "/", *args: str) -> HTTPResult:
        """
        C{curl ARGS http://127.0.0.1:PORT/PATH}.
        """
        return self.curl(self.url + path, *args)

    def served(self, path: str = "/", *args: str) -> HTTPResult:
        """
        L{get}, failing the test unless a backend answered it with 200.
        """
        result = self.get(path, *args)
        if result.status != 200 or result.backend not in self.backends:
            self.fail_with_output(
                f"GET {path} {list(args)} was not served by a backend:\n"
                + result.describe()
            )
        return result

    def raw_exchange(self, port: int, request: bytes) -> bytes:
        """
        Send C{request} on a new connection and read until the proxy closes
        it.

        :returns: everything the proxy sent.
        """
        received = b""
        with connect(port) as sock:
            sock.sendall(request)
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        return received
                    received += data
            except TimeoutError:
                self.fail_with_output(
                    f"the proxy did not close the connection; it sent {received!r}"
                )
            except ConnectionResetError:
                return received

    def decision(self, result: HTTPResult) -> tuple[str, str, str]:
        """
        The proxy's decision as its debug header tells it: the strategy
        (or C{balancer}), the outcome (C{hit}, C{new}, C{redispatch}) and
        the backend.
        """
        value = result.header(DEBUG_HEADER)
        if value is None:
            self.fail_with_output(f"no {DEBUG_HEADER} header:\n" + result.describe())
        strategy, outcome, backend = (part.strip() for part in value.split(";"))
        return strategy, outcome, backend.removeprefix("backend=")
