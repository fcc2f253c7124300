"""
The parent's side of workers: L{WorkerSupervisor} spawns them, hands them
the frontends' listening sockets and a control channel, relays their logs,
restarts the ones that die, signals them, and stops them.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import (
    ILogObserver,
    InvalidLogLevelError,
    LogEvent,
    Logger,
    LogLevel,
    globalLogPublisher,
)
from twisted.python.failure import Failure

#: The worker's descriptor of its end of the control channel.
CONTROL_FD = 3
#: The worker's descriptor of the first inherited listening socket.
FIRST_SOCKET_FD = 4
#: The environment variables a worker is told who it is by: its id, and
#: its listening sockets (a JSON object: frontend name to descriptor).
WORKER_ENV = "STICKYPROXY_WORKER"
SOCKETS_ENV = "STICKYPROXY_WORKER_SOCKETS"

#: A worker that lived this long (seconds) before it died is restarted at
#: once; one that died sooner is restarted after a delay that doubles with
#: each such death in a row (from L{FIRST_DELAY} to L{LONGEST_DELAY}).
STABLE = 10.0
FIRST_DELAY = 0.5
LONGEST_DELAY = 30.0

#: How long, beyond the configuration's C{shutdown_timeout}, a stop waits
#: for workers before it kills them.
KILL_GRACE = 10.0


def restart_delay(failures: int) -> float:
    """
    :param failures: how many times in a row a worker died young.
    :returns: how long to wait before starting it again.
    """
    if failures <= 0:
        return 0.0
    return float(min(LONGEST_DELAY, FIRST_DELAY * 2 ** (failures - 1)))


def relay_line(
    line: bytes, worker: int, pid: int | None, error: bool, observer: ILogObserver
) -> None:
    """
    Publish a line a worker wrote to the parent's log, tagged with the
    worker: a JSON line (its log, C{--log-format json}) as the event it
    was, keeping its fields, level and namespace; any other line (a
    traceback before its log started) as text, a warning when it came on
    standard error.
    """
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "log_text" not in record:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            observer(
                _event(
                    {},
                    text,
                    worker,
                    pid,
                    LogLevel.warn if error else LogLevel.info,
                    "stickyproxy.workers",
                )
            )
        return
    try:
        level = LogLevel.levelWithName(str(record.get("log_level")))
    except InvalidLogLevelError:
        level = LogLevel.info
    text = str(record["log_text"])
    if record.get("log_failure"):
        text += "\n" + str(record["log_failure"])
    event = _event(
        {k: v for k, v in record.items() if not k.startswith("log_")},
        text,
        worker,
        pid,
        level,
        str(record.get("log_namespace") or "stickyproxy.workers"),
    )
    if isinstance(record.get("log_time"), int | float):
        event["log_time"] = record["log_time"]
    if record.get("log_system") is not None:
        event["log_system"] = record["log_system"]
    observer(event)


def _event(
    fields: dict[str, Any],
    text: str,
    worker: int,
    pid: int | None,
    level: LogLevel,
    namespace: str,
) -> LogEvent:
    return {
        **fields,
        "worker": worker,
        "worker_pid": pid,
        "worker_text": text,
        "log_format": "[worker {worker}] {worker_text}",
        "log_level": level,
        "log_namespace": namespace,
        "log_time": time.time(),
    }


def describe_exit(reason: Failure) -> str:
    """
    :returns: how a process ended: C{"exited with status 1"}, C{"ended
        by signal 9"} (a worker that stopped on C{SIGTERM} ends by it, as
        C{twist} does, once it has stopped gracefully).
    """
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return f"ended by signal {value.signal}"
    if isinstance(value, ProcessDone | ProcessTerminated):
        return f"exited with status {value.exitCode}"
    return f"ended ({reason.getErrorMessage()})"


class _WorkerProcess(ProcessProtocol):
    """
    One worker process, as its parent sees it: its output, relayed line by
    line to the parent's log, and its end.
    """

    def __init__(
        self, supervisor: WorkerSupervisor, worker: int, started: float
    ) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self.started = started
        self.pid: int | None = None
        self.ended = Deferred[None]()
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.pid = transport.pid
        # The worker's standard input is a pipe it reads nothing from.
        transport.closeChildFD(0)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.pop(childFD, b"") + data).split(b"\n")
        if lines[-1]:
            self._partial[childFD] = lines[-1]
        for line in lines[:-1]:
            self._relay(childFD, line)

    def _relay(self, childFD: int, line: bytes) -> None:
        relay_line(line, self.worker, self.pid, childFD == 2, self.supervisor.observer)

    def processEnded(self, reason: Failure) -> None:
        for childFD, line in sorted(self._partial.items()):
            self._relay(childFD, line)
        self._partial.clear()
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


@attrs.define(eq=False)
class _Slot:
    """
    What the supervisor knows of one worker id: its process (while one
    runs), the restart waiting (while one does), and its deaths in a row.
    """

    process: _WorkerProcess | None = None
    transport: IProcessTransport | None = None
    restart: IDelayedCall | None = None
    failures: int = 0


class WorkerSupervisor(Service):
    """
    Runs C{count} workers, numbered from 1, while it runs.

    Each is C{command} run with C{environment}, and is given the listening
    sockets C{sockets} returns (frontend name to the parent's descriptor,
    asked at each start), and a control channel: a UNIX socket pair whose
    parent end speaks the protocol C{control} makes for the worker's id.
    What a worker writes to standard output and standard error goes to the
    parent's log (see L{relay_line}).  A worker that dies is logged and
    started again, after a delay if it keeps dying young (L{restart_delay}).
    L{stopService} sends every worker C{SIGTERM} (they stop gracefully)
    and waits for them to exit, killing those still there C{kill_after}
    seconds later.

    :ivar workers: the running workers' process transports, by id.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        count: int,
        command: Sequence[str],
        environment: Mapping[str, str],
        sockets: Callable[[], Mapping[str, int]],
        control: Callable[[int], Protocol],
        kill_after: float,
        observer: ILogObserver = globalLogPublisher,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.command = list(command)
        self.environment = dict(environment)
        self.sockets = sockets
        self.control = control
        self.kill_after = kill_after
        self.observer = observer
        self._slots = {worker: _Slot() for worker in range(1, count + 1)}
        self._stopping: Deferred[None] | None = None
        self._kill: IDelayedCall | None = None

    @property
    def workers(self) -> dict[int, IProcessTransport]:
        return {
            worker: slot.transport
            for worker, slot in self._slots.items()
            if slot.transport is not None
        }

    def startService(self) -> None:
        super().startService()
        self._stopping = None
        for worker in self._slots:
            self.start(worker)

    def start(self, worker: int) -> None:
        """
        Start worker C{worker}: a process with its sockets and channel.
        """
        slot = self._slots[worker]
        slot.restart = None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            child_fds: dict[int, int | str] = {
                0: "w",
                1: "r",
                2: "r",
                CONTROL_FD: child_end.fileno(),
            }
            names: dict[str, int] = {}
            for number, (name, descriptor) in enumerate(sorted(self.sockets().items())):
                child_fds[FIRST_SOCKET_FD + number] = descriptor
                names[name] = FIRST_SOCKET_FD + number
            environment = {
                **self.environment,
                WORKER_ENV: str(worker),
                SOCKETS_ENV: json.dumps(names),
            }
            process = _WorkerProcess(self, worker, self.reactor.seconds())
            slot.process = process
            slot.transport = self.reactor.spawnProcess(
                process,
                self.command[0],
                self.command,
                env=environment,
                childFDs=child_fds,
            )
            parent_end.setblocking(False)
            self.reactor.adoptStreamConnection(
                parent_end.fileno(),
                socket.AF_UNIX,
                Factory.forProtocol(lambda: self.control(worker)),
            )
        except Exception:
            self.log.failure("cannot start worker {worker}", worker=worker)
            slot.process = slot.transport = None
            # As a worker that dies young: again, after a growing delay.
            slot.failures += 1
            self._schedule(worker, slot)
            return
        finally:
            # The worker has its end; the reactor holds a copy of ours.
            child_end.close()
            parent_end.close()
        self.log.info(
            "started worker {worker} (pid {pid})", worker=worker, pid=process.pid
        )

    def ended(self, process: _WorkerProcess, reason: Failure) -> None:
        """
        A worker's process ended: log it, and start it again unless
        stopping.
        """
        slot = self._slots.get(process.worker)
        if slot is None or slot.process is not process:
            return
        slot.process = slot.transport = None
        lived = self.reactor.seconds() - process.started
        if self._stopping is not None:
            self.log.info(
                "worker {worker} (pid {pid}) stopped: it {status}",
                worker=process.worker,
                pid=process.pid,
                status=describe_exit(reason),
            )
            return
        slot.failures = 0 if lived >= STABLE else slot.failures + 1
        delay = self._schedule(process.worker, slot)
        self.log.warn(
            "worker {worker} (pid {pid}) {status}; starting it again in {delay:g} s",
            worker=process.worker,
            pid=process.pid,
            status=describe_exit(reason),
            delay=delay,
        )

    def _schedule(self, worker: int, slot: _Slot) -> float:
        delay = restart_delay(slot.failures)
        slot.restart = self.reactor.callLater(delay, self.start, worker)
        return delay

    def signal_all(self, signum: int) -> None:
        """
        Send every running worker the signal C{signum}.
        """
        for transport in self.workers.values():
            try:
                transport.signalProcess(signum)
            except ProcessExitedAlready:
                pass

    def stopService(self) -> Deferred[None]:
        """
        Stop every worker gracefully (C{SIGTERM}), and wait for them.

        :returns: a L{Deferred} that fires once every worker has exited.
        """
        super().stopService()
        if self._stopping is not None:
            return self._stopping
        for slot in self._slots.values():
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
        running = [s.process for s in self._slots.values() if s.process is not None]
        self._stopping = stopping = gatherResults(
            [process.ended for process in running], consumeErrors=True
        ).addCallback(lambda _: None)
        if running:
            self.log.info("stopping {count} workers", count=len(running))
            self.signal_all(signal.SIGTERM)
            self._kill = self.reactor.callLater(self.kill_after, self._kill_all)
            stopping.addBoth(self._stopped)
        return stopping

    def _stopped(self, result: object) -> object:
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        return result

    def stop_now(self) -> None:
        """
        Have the workers stop at once (a second C{SIGTERM} to each, which
        cuts off its connections): a second C{SIGTERM} to the parent.
        """
        self.signal_all(signal.SIGTERM)

    def _kill_all(self) -> None:
        self._kill = None
        if self.workers:
            self.log.warn(
                "workers {workers} still running {timeout:g} s after the stop "
                "began: killing them",
                workers=", ".join(str(worker) for worker in self.workers),
                timeout=self.kill_after,
            )
        self.signal_all(signal.SIGKILL)
