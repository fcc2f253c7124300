"""
Tests for L{stickyproxy.workers}: the supervisor (on a fake process
reactor, no real process), the worker's side, the parent and worker roles
of L{ProxyService}, and the C{workers} key and C{--workers} flag.
"""

from __future__ import annotations

import json
import signal
import socket
from typing import Any

import attrs
from zope.interface import implementer

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IFileDescriptorReceiver,
    IProcessTransport,
    IReactorProcess,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from stickyproxy import ConfigError, load_config
from stickyproxy._jsonlog import event_as_json_line
from stickyproxy.config._load import cpu_count
from stickyproxy.core._inherited import AdoptingReactor, HoldingReactor
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ProxyService, Role
from stickyproxy.tap import OnSignal, Options, _makeService
from stickyproxy.workers import (
    ParentLink,
    WorkerIdentity,
    WorkerSupervisor,
    relay_line,
    restart_delay,
    worker_identity,
)
from stickyproxy.workers._supervisor import (
    CONTROL_FD,
    FIRST_SOCKET_FD,
    SOCKETS_ENV,
    STABLE,
    WORKER_ENV,
)

from tests._base import TestCase

REGISTRY = StrategyRegistry.of([source_ip])

CONFIG: dict[str, Any] = {
    "frontend": [
        {"name": "web", "listen": "tcp:7000:interface=127.0.0.1", "pool": "p"},
        {"name": "db", "listen": "tcp:7001", "pool": "p"},
    ],
    "pool": {"p": {"backend": [{"name": "a", "address": "127.0.0.1:5432"}]}},
    "admin": {"listen": "tcp:7002"},
}


@implementer(IProcessTransport)
class FakeProcess:
    """
    A process that L{FakeProcessReactor} pretends to have started.
    """

    def __init__(self, protocol: Any, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.signals: list[int] = []
        self.closed: list[int] = []

    def closeChildFD(self, descriptor: int) -> None:
        self.closed.append(descriptor)

    def signalProcess(self, signalID: Any) -> None:
        self.signals.append(signalID)

    def end(self, reason: Exception) -> None:
        """
        The process ends: its protocol is told.
        """
        self.protocol.processEnded(Failure(reason))

    def writeToChild(self, childFD: int, data: bytes) -> None:
        raise NotImplementedError()

    def closeStdin(self) -> None:
        raise NotImplementedError()

    def closeStdout(self) -> None:
        raise NotImplementedError()

    def closeStderr(self) -> None:
        raise NotImplementedError()

    def loseConnection(self) -> None:
        raise NotImplementedError()

    def getPeer(self) -> Any:
        raise NotImplementedError()

    def getHost(self) -> Any:
        raise NotImplementedError()

    def write(self, data: bytes) -> None:
        raise NotImplementedError()

    def writeSequence(self, data: Any) -> None:
        raise NotImplementedError()


def _readable(port: Any, descriptor: int) -> Any:
    """
    Give a memory reactor's port what a real one has that listeners use.
    """
    port.reading = True
    port.stopReading = lambda: setattr(port, "reading", False)
    port.startReading = lambda: setattr(port, "reading", True)
    port.fileno = lambda: descriptor
    return port


class PortReactor(MemoryReactorClock):
    """
    A memory reactor whose TCP ports, listened on or adopted, stop and
    start reading (as a real reactor's do); a listened one has its port
    number as its descriptor.
    """

    def listenTCP(self, port: int, *args: Any, **kwargs: Any) -> Any:
        return _readable(super().listenTCP(port, *args, **kwargs), port)

    def adoptStreamPort(self, fileno: int, *args: Any) -> Any:
        return _readable(super().adoptStreamPort(fileno, *args), fileno)


@implementer(IReactorProcess)
class FakeProcessReactor(PortReactor):
    """
    A memory reactor that records the processes it is asked to spawn.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[FakeProcess, list[str], dict[str, str], Any]] = []
        self._next_pid = 100

    def spawnProcess(  # type: ignore[override]
        self,
        processProtocol: Any,
        executable: Any,
        args: Any,
        env: Any = None,
        path: Any = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: Any = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        self._next_pid += 1
        process = FakeProcess(processProtocol, self._next_pid)
        self.spawned.append((process, list(args), dict(env), dict(childFDs)))
        processProtocol.makeConnection(process)
        return process


def _supervisor(
    reactor: FakeProcessReactor, count: int = 2, events: list[Any] | None = None
) -> WorkerSupervisor:
    return WorkerSupervisor(
        reactor,
        count,
        ["python", "-m", "twisted", "stickyproxy"],
        {"PATH": "/bin"},
        lambda: {"web": 11, "db": 12},
        control=lambda worker: Protocol(),
        kill_after=40.0,
        observer=(events.append if events is not None else lambda event: None),
    )


class RestartDelayTests(TestCase):
    def test_doubles_to_a_bound(self):
        """
        A worker that died once after running a while restarts at once;
        each death in a row of a young worker doubles the delay, up to
        30 seconds.
        """
        self.assertEqual(
            [restart_delay(n) for n in range(9)],
            [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0],
        )


class SupervisorTests(TestCase):
    def test_spawns_with_sockets_and_channel(self):
        """
        Starting spawns one process per worker, each told its id and its
        sockets in its environment, given the listening sockets from
        descriptor 4 on (sorted by frontend name) and its control channel
        at 3; the parent end of each channel is adopted, and speaks the
        protocol made for that worker.  Standard input is closed.
        """
        reactor = FakeProcessReactor()
        made: list[int] = []
        supervisor = _supervisor(reactor)
        supervisor.control = lambda worker: made.append(worker) or Protocol()
        supervisor.startService()
        self.assertEqual(len(reactor.spawned), 2)
        for number, (process, args, env, fds) in enumerate(reactor.spawned, 1):
            self.assertEqual(args, ["python", "-m", "twisted", "stickyproxy"])
            self.assertEqual(env[WORKER_ENV], str(number))
            self.assertEqual(env["PATH"], "/bin")
            self.assertEqual(json.loads(env[SOCKETS_ENV]), {"db": 4, "web": 5})
            self.assertEqual(fds[FIRST_SOCKET_FD], 12)
            self.assertEqual(fds[FIRST_SOCKET_FD + 1], 11)
            self.assertIsInstance(fds[CONTROL_FD], int)
            self.assertEqual((fds[0], fds[1], fds[2]), ("w", "r", "r"))
            self.assertEqual(process.closed, [0])
        self.assertEqual(len(reactor.adoptedStreamConnections), 2)
        for _, family, factory in reactor.adoptedStreamConnections:
            self.assertEqual(family, socket.AF_UNIX)
            factory.buildProtocol(None)
        self.assertEqual(made, [1, 2])
        self.assertEqual(sorted(supervisor.workers), [1, 2])

    def test_spawn_failure_retried_with_delays(self):
        """
        A worker that cannot even be spawned (its executable denied, after
        C{twistd --uid}) is logged and tried again after a growing delay,
        as one that dies young, not at once and again and again.
        """

        class Spinning(BaseException):
            pass

        class Denying(FakeProcessReactor):
            attempts = 0

            def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
                self.attempts += 1
                if self.attempts > 10:
                    raise Spinning()  # past the supervisor's except: fail
                raise PermissionError(13, "Permission denied")

        reactor = Denying()
        supervisor = _supervisor(reactor, count=1)
        supervisor.startService()
        reactor.advance(0)
        self.assertEqual(reactor.attempts, 1)
        reactor.advance(0.5)
        self.assertEqual(reactor.attempts, 2)
        reactor.advance(0.5)
        self.assertEqual(reactor.attempts, 2)
        reactor.advance(0.5)
        self.assertEqual(reactor.attempts, 3)
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 3)

    def test_restarts_and_logs(self):
        """
        A worker that dies is logged with its id, pid and exit status, and
        started again: at once after a long life, then after a growing
        delay while it keeps dying young.
        """
        reactor = FakeProcessReactor()
        supervisor = _supervisor(reactor, count=1)
        supervisor.startService()
        reactor.advance(STABLE)
        first = reactor.spawned[0][0]
        with capturedLogs() as events:
            first.end(ProcessTerminated(signal=signal.SIGKILL))
        self.assertEqual(
            [e["log_format"].split(";")[0] for e in events],
            ["worker {worker} (pid {pid}) {status}"],
        )
        self.assertEqual(
            (events[0]["worker"], events[0]["pid"], events[0]["status"]),
            (1, first.pid, "ended by signal 9"),
        )
        self.assertEqual(len(reactor.spawned), 1)
        reactor.advance(0)
        self.assertEqual(len(reactor.spawned), 2)
        second = reactor.spawned[1][0]
        second.end(ProcessTerminated(exitCode=1))
        reactor.advance(0.4)
        self.assertEqual(len(reactor.spawned), 2)
        reactor.advance(0.1)
        self.assertEqual(len(reactor.spawned), 3)
        reactor.spawned[2][0].end(ProcessTerminated(exitCode=1))
        reactor.advance(0.9)
        self.assertEqual(len(reactor.spawned), 3)
        reactor.advance(0.1)
        self.assertEqual(len(reactor.spawned), 4)
        self.assertEqual(supervisor.workers, {1: reactor.spawned[3][0]})

    def test_stop(self):
        """
        Stopping sends every worker C{SIGTERM} and fires once all have
        exited; none is started again, and a restart that was waiting is
        cancelled.
        """
        reactor = FakeProcessReactor()
        supervisor = _supervisor(reactor, count=3)
        supervisor.startService()
        one, two, three = (spawned[0] for spawned in reactor.spawned)
        three.end(ProcessTerminated(exitCode=1))  # young: restarts later
        stopped = supervisor.stopService()
        self.assertEqual((one.signals, two.signals), ([signal.SIGTERM],) * 2)
        self.assertNoResult(stopped)
        one.end(ProcessTerminated(signal=signal.SIGTERM))
        self.assertNoResult(stopped)
        two.end(ProcessDone(0))
        self.successResultOf(stopped)
        reactor.advance(100)
        self.assertEqual(len(reactor.spawned), 3)
        self.assertEqual(supervisor.workers, {})

    def test_stop_kills_late_workers(self):
        """
        Workers still running C{kill_after} seconds after the stop began
        are killed; a second stop asked for meanwhile (a second C{SIGTERM})
        sends them C{SIGTERM} again.
        """
        reactor = FakeProcessReactor()
        supervisor = _supervisor(reactor, count=1)
        supervisor.startService()
        process = reactor.spawned[0][0]
        stopped = supervisor.stopService()
        supervisor.stop_now()
        reactor.advance(39)
        self.assertEqual(process.signals, [signal.SIGTERM] * 2)
        reactor.advance(1)
        self.assertEqual(process.signals[-1], signal.SIGKILL)
        process.end(ProcessTerminated(signal=signal.SIGKILL))
        self.successResultOf(stopped)

    def test_signal_all(self):
        """
        L{WorkerSupervisor.signal_all} signals every running worker.
        """
        reactor = FakeProcessReactor()
        supervisor = _supervisor(reactor)
        supervisor.startService()
        supervisor.signal_all(signal.SIGHUP)
        self.assertEqual(
            [spawned[0].signals for spawned in reactor.spawned],
            [[signal.SIGHUP]] * 2,
        )

    def test_output_relayed(self):
        """
        What a worker writes reaches the parent's log line by line, tagged
        with its id, whatever the chunks it arrives in; the rest of a line
        is relayed when the worker ends.
        """
        reactor = FakeProcessReactor()
        events: list[Any] = []
        supervisor = _supervisor(reactor, count=1, events=events)
        supervisor.startService()
        process = reactor.spawned[0][0]
        line = json.dumps(
            {"log_text": "hello", "log_level": "warn", "log_namespace": "x.y"}
        )
        process.protocol.childDataReceived(1, line[:5].encode())
        self.assertEqual(events, [])
        process.protocol.childDataReceived(1, (line[5:] + "\nhalf").encode())
        process.protocol.childDataReceived(2, b"Traceback\n")
        process.end(ProcessDone(0))
        self.assertEqual(
            [(e["worker_text"], e["log_level"], e["worker"]) for e in events],
            [
                ("hello", LogLevel.warn, 1),
                ("Traceback", LogLevel.warn, 1),
                ("half", LogLevel.info, 1),
            ],
        )


class RelayTests(TestCase):
    def test_json_event(self):
        """
        A JSON log line of a worker becomes an event of the parent with the
        worker's fields, level, namespace and time, its text (with its
        traceback) shown after the worker's id.
        """
        events: list[Any] = []
        record = {
            "backend": "a",
            "log_text": "backend a down",
            "log_level": "error",
            "log_namespace": "stickyproxy.health",
            "log_time": 12.5,
            "log_failure": "Traceback: boom",
        }
        relay_line(json.dumps(record).encode(), 3, 77, False, events.append)
        [event] = events
        self.assertEqual(event["backend"], "a")
        self.assertEqual((event["worker"], event["worker_pid"]), (3, 77))
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertEqual(event["log_namespace"], "stickyproxy.health")
        self.assertEqual(event["log_time"], 12.5)
        from twisted.logger import formatEvent

        self.assertEqual(
            formatEvent(event), "[worker 3] backend a down\nTraceback: boom"
        )

    def test_json_log_format(self):
        """
        With C{--log-format json}, a relayed line keeps the worker's id and
        fields, and its text says which worker it came from.
        """
        events: list[Any] = []
        record = {"log_text": "hi", "log_level": "info", "backend": "a"}
        relay_line(json.dumps(record).encode(), 2, 9, False, events.append)
        line = json.loads(event_as_json_line(events[0]))
        self.assertEqual(
            (line["worker"], line["worker_pid"], line["backend"], line["log_text"]),
            (2, 9, "a", "[worker 2] hi"),
        )

    def test_plain_lines(self):
        """
        A line that is not a JSON event is relayed as text: a warning from
        standard error, information from standard output; empty lines are
        dropped.
        """
        events: list[Any] = []
        relay_line(b"oops {not json}", 1, 5, True, events.append)
        relay_line(b'["json", "but not an event"]', 1, 5, False, events.append)
        relay_line(b"  ", 1, 5, True, events.append)
        self.assertEqual(
            [(e["worker_text"], e["log_level"]) for e in events],
            [
                ("oops {not json}", LogLevel.warn),
                ('["json", "but not an event"]', LogLevel.info),
            ],
        )


class WorkerSideTests(TestCase):
    def test_identity(self):
        """
        A worker reads its id and sockets from its environment; a process
        not started by a parent is no worker; a malformed socket list is
        an error.
        """
        self.assertIsNone(worker_identity({}))
        self.assertEqual(
            worker_identity({WORKER_ENV: "2", SOCKETS_ENV: '{"web": 4}'}),
            WorkerIdentity(2, {"web": 4}),
        )
        self.assertRaises(
            ValueError, worker_identity, {WORKER_ENV: "2", SOCKETS_ENV: '["web"]'}
        )

    def test_parent_link(self):
        """
        The link adopts the control channel's descriptor (and closes its
        own), speaks the control protocol on it, and when the channel
        closes while the worker runs, calls C{gone} (the parent is gone).
        """
        reactor = MemoryReactorClock()
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        control = Protocol()
        gone: list[bool] = []
        link = ParentLink(reactor, control, lambda: gone.append(True), ours.detach())
        link.startService()
        [(descriptor, family, factory)] = reactor.adoptedStreamConnections
        self.assertEqual(family, socket.AF_UNIX)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertIs(control.transport.wrappedProtocol, control)  # type: ignore[union-attr]
        self.assertEqual(gone, [])
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(gone, [True])

    def test_parent_link_descriptors(self):
        """
        The descriptors received on the control channel (listening sockets
        the parent sends) reach the control protocol.
        """
        received: list[int] = []

        class Control(Protocol):
            def fileDescriptorReceived(self, descriptor: int) -> None:
                received.append(descriptor)

        reactor = MemoryReactorClock()
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        link = ParentLink(reactor, Control(), lambda: None, ours.detach())
        link.startService()
        [(_, _, factory)] = reactor.adoptedStreamConnections
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertProvides(IFileDescriptorReceiver, protocol)
        protocol.fileDescriptorReceived(42)
        self.assertEqual(received, [42])


class FakeListeningPort:
    """
    What a real reactor's listening port does that the holding reactor
    uses.
    """

    reading = True

    def stopReading(self) -> None:
        self.reading = False


class InheritedSocketTests(TestCase):
    def test_holding(self):
        """
        L{HoldingReactor} listens as the reactor does, then stops reading:
        the socket is open, and nothing is accepted in this process.
        """
        port = FakeListeningPort()

        class Reactor(MemoryReactorClock):
            def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
                return port

        holding = HoldingReactor(Reactor())
        self.assertIs(holding.listenTCP(80, None), port)
        self.assertFalse(port.reading)

    def test_adopting(self):
        """
        L{AdoptingReactor} adopts its descriptor, with the socket's family,
        wherever a TCP port would be opened, and closes the descriptor
        (the port holds its own copy).
        """
        reactor = MemoryReactorClock()
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        descriptor = sock.detach()
        adopting = AdoptingReactor(reactor, descriptor)
        factory = Protocol
        adopting.listenTCP(0, factory)  # type: ignore[arg-type]
        self.assertEqual(reactor.adoptedPorts, [(descriptor, socket.AF_INET6, factory)])
        self.assertRaises(OSError, socket.socket, fileno=descriptor)


def proxy_ports(proxy: ProxyService) -> list[Any]:
    """
    :returns: the ports of a proxy's frontends, then its admin listener's.
    """
    listeners = [*proxy.listeners.values(), proxy.admin]
    return [listener.port for listener in listeners if listener is not None]


def bound_worker(reactor: PortReactor) -> tuple[ProxyService, int, int]:
    """
    :returns: a worker of C{CONFIG}, bound, and the sockets it inherited
        for its frontends C{web} and C{db}.
    """
    web, db = socket.socket().detach(), socket.socket().detach()
    proxy = ProxyService(
        load_config(CONFIG, REGISTRY),
        reactor,
        REGISTRY,
        role=Role.WORKER,
        sockets={"web": web, "db": db},
    )
    proxy.bind()
    return proxy, web, db


class RoleTests(TestCase):
    def test_parent(self):
        """
        A parent opens every frontend's socket but reads none of them, and
        runs the health monitors and the admin listener; L{sockets} gives
        the descriptors workers inherit.
        """
        reactor = PortReactor()
        proxy = ProxyService(
            load_config(CONFIG, REGISTRY), reactor, REGISTRY, role=Role.PARENT
        )
        proxy.bind()
        self.assertEqual(
            [port.reading for port in proxy_ports(proxy)],
            [False, False, True],
        )
        self.assertEqual(proxy.sockets(), {"web": 7000, "db": 7001})
        self.assertEqual(list(proxy.monitors), ["p"])
        self.assertIsNotNone(proxy.admin)

    def test_parent_opens_new_listeners(self):
        """
        A running parent's reload that adds or moves a listener opens its
        socket, and accepts nothing on it: it is for the workers, to whom
        L{sockets} gives it.
        """
        reactor = PortReactor()
        proxy = ProxyService(
            load_config(CONFIG, REGISTRY), reactor, REGISTRY, role=Role.PARENT
        )
        proxy.bind()
        moved = dict(CONFIG["frontend"][0], listen="tcp:7005")
        added = dict(CONFIG["frontend"][1], name="new", listen="tcp:7006")
        config = dict(CONFIG, frontend=[moved, CONFIG["frontend"][1], added])
        proxy.reload(load_config(config, REGISTRY))
        self.assertEqual(proxy.sockets(), {"web": 7005, "db": 7001, "new": 7006})
        self.assertEqual(
            [port.reading for port in proxy_ports(proxy)], [False, False, False, True]
        )

    def test_worker(self):
        """
        A worker adopts its inherited sockets, one per frontend, and
        accepts nothing on them until told to; it runs no health monitor
        and no admin listener.
        """
        reactor = PortReactor()
        proxy, web, db = bound_worker(reactor)
        self.assertEqual(
            [(fd, family) for fd, family, _ in reactor.adoptedPorts],
            [(web, socket.AF_INET), (db, socket.AF_INET)],
        )
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual([p.reading for p in proxy_ports(proxy)], [False, False])
        proxy.start_accepting()
        self.assertEqual([p.reading for p in proxy_ports(proxy)], [True, True])
        self.assertEqual(proxy.monitors, {})
        self.assertIsNone(proxy.admin)

    def test_worker_handed_a_socket(self):
        """
        A worker handed a socket for a frontend (its parent's reload added
        or moved it) serves the frontend on it from its own reload; one
        handed twice before that keeps the last, and closes the other.
        """
        reactor = PortReactor()
        proxy, _, _ = bound_worker(reactor)
        proxy.start_accepting()
        first, moved = socket.socket().detach(), socket.socket().detach()
        proxy.inherit("web", first)
        proxy.inherit("web", moved)
        self.assertRaises(OSError, socket.socket, fileno=first)
        config = dict(CONFIG, frontend=[dict(CONFIG["frontend"][0], listen="tcp:7005")])
        proxy.reload(load_config(config, REGISTRY))
        self.assertEqual(reactor.adoptedPorts[-1][0], moved)
        self.assertEqual(list(proxy.listeners), ["web"])
        self.assertTrue(proxy.listeners["web"].port.reading)  # type: ignore[union-attr]

    def test_worker_without_socket(self):
        """
        A worker given no socket for a frontend stops with an error naming
        the frontend's C{listen}.
        """
        error = self.assertRaises(
            ConfigError,
            ProxyService,
            load_config(CONFIG, REGISTRY),
            MemoryReactorClock(),
            REGISTRY,
            role=Role.WORKER,
            sockets={},
        )
        self.assertEqual(error.path, "frontend[0].listen")


class ConfigTests(TestCase):
    def test_key(self):
        """
        C{workers} is an integer from 1 to 256, or C{"auto"} (one per CPU),
        1 by default; anything else is an error naming the key.
        """
        self.assertEqual(load_config(CONFIG, REGISTRY).workers, 1)
        self.assertEqual(load_config(dict(CONFIG, workers=4), REGISTRY).workers, 4)
        self.assertEqual(
            load_config(dict(CONFIG, workers="auto"), REGISTRY).workers, cpu_count()
        )
        for bad in (0, 257, "many", 1.5, True):
            error = self.assertRaises(
                ConfigError, load_config, dict(CONFIG, workers=bad), REGISTRY
            )
            self.assertEqual(error.path, "workers")
            self.assertIn('an integer from 1 to 256 or "auto"', str(error))

    def test_flag(self):
        """
        C{--workers} overrides the file's C{workers}; a bad value is a
        usage error naming the flag; it does not go with C{--demo}.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                'workers = 3\n[[frontend]]\nlisten = "tcp:7100"\npool = "p"\n'
                '[[pool.p.backend]]\naddress = "127.0.0.1:1"\n'
            )
        for argv, expected in (([], 3), (["--workers", "2"], 2)):
            options = Options()
            options.parseOptions(["--config", path, *argv])
            proxy = _makeService(options, FakeProcessReactor(), environment={})
            self.assertEqual(proxy.config.workers, expected)
        for bad in ("0", "x"):
            error = self.assertRaises(
                UsageError, Options().parseOptions, ["--config", path, "--workers", bad]
            )
            self.assertIn("--workers", str(error))
        self.assertRaises(
            UsageError, Options().parseOptions, ["--demo", "--workers", "2"]
        )


class MakeServiceTests(TestCase):
    def _options(self, workers: str) -> Options:
        options = Options()
        options.parseOptions(
            ["--listen", "tcp:7100", "--backend", "127.0.0.1:1", "--workers", workers]
        )
        return options

    def test_parent(self):
        """
        With more than one worker, C{twistd stickyproxy} builds a parent
        with a supervisor of that many workers, started as this process
        was, under C{twist}, logging JSON lines.
        """
        reactor = FakeProcessReactor()
        proxy = _makeService(self._options("2"), reactor, environment={})
        self.assertIs(proxy.role, Role.PARENT)
        [supervisor] = [s for s in proxy if isinstance(s, WorkerSupervisor)]
        self.assertEqual(supervisor.count, 2)
        command = supervisor.command
        self.assertEqual(command[1:4], ["-m", "twisted", "stickyproxy"])
        self.assertEqual(command[-2:], ["--log-format", "json"])
        self.assertIn("--state-dir", command)

    def test_parent_passes_usr1_and_reloads_on(self):
        """
        C{SIGUSR1} to a parent reopens its log files and reaches every
        worker; a reload of the parent reaches them over their control
        channels, not by C{SIGHUP} (see L{tests.test_workers_control}).
        """
        reactor = FakeProcessReactor()
        proxy = _makeService(self._options("2"), reactor, environment={})
        [supervisor] = [s for s in proxy if isinstance(s, WorkerSupervisor)]
        supervisor.startService()
        [usr1] = [s for s in proxy if isinstance(s, OnSignal)]
        self.assertEqual(usr1.signum, signal.SIGUSR1)
        usr1.action()
        self.assertEqual(
            [spawned[0].signals for spawned in reactor.spawned],
            [[signal.SIGUSR1]] * 2,
        )
        config = proxy.config
        proxy.reload(config)
        moved = attrs.evolve(config.frontends[0], listen="tcp:7200")
        proxy.reload(attrs.evolve(config, frontends=(moved,)))
        self.assertEqual(
            [spawned[0].signals for spawned in reactor.spawned],
            [[signal.SIGUSR1]] * 2,
        )

    def test_alone_and_worker(self):
        """
        With one worker, the proxy runs alone; in a process its parent
        started, it is a worker, linked to its parent, which serves once
        its parent sent it every backend's state.
        """
        reactor = FakeProcessReactor()
        alone = _makeService(self._options("1"), reactor, environment={})
        self.assertIs(alone.role, Role.ALONE)
        self.assertEqual(
            [s for s in alone if isinstance(s, WorkerSupervisor | ParentLink)], []
        )
        descriptor = socket.socket().detach()
        worker = _makeService(
            self._options("2"),
            reactor,
            environment={
                WORKER_ENV: "1",
                SOCKETS_ENV: json.dumps({"main": descriptor}),
            },
        )
        self.assertIs(worker.role, Role.WORKER)
        [link] = [s for s in worker if isinstance(s, ParentLink)]
        self.assertEqual(reactor.adoptedPorts[0][0], descriptor)
        [port] = proxy_ports(worker)
        self.assertFalse(port.reading)
        link.control.parent_synced()  # type: ignore[attr-defined]
        self.assertTrue(port.reading)
