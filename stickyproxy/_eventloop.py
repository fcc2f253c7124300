"""
The event loop C{twistd stickyproxy} runs on when nobody chose one.

Twisted's epoll reactor runs each socket event inside a logging context
(C{callWithLogger}: the selectable's C{logPrefix}, a context pushed and
popped, a try block), about nine calls per event, and a proxied request
makes four events.  The context names the C{system} of legacy
C{twisted.python.log} messages sent from inside the event; the proxy logs
with C{twisted.logger} and named fields, which do not use it.  So the proxy
installs this reactor, which hands each event straight to the epoll
reactor's own handler; everything else is the epoll reactor's.  What is
lost: the traceback Twisted logs for an exception a protocol raised in
C{dataReceived} (and the like) has C{-} for its system, not the
connection's C{logPrefix}; the traceback's frames still name the protocol.
An exception that escapes the handler itself is caught here, as the
context did, and logged with the connection's prefix, so the other events
of the same poll are still handled.

A reactor the user chose (C{twistd --reactor}), or one already installed,
is kept; a program that embeds the proxy keeps its own.  It is also a
reactor plugin, C{--reactor stickyproxy-epoll}, which is how the workers
(started with C{python -m twisted}, which installs its default reactor
before the proxy is made) get it too.

It also writes behind.  Twisted's TCP transport queues every write and
asks epoll to watch the socket for writability (an C{epoll_ctl}); a turn
of the loop later it sends, and stops watching (another).  A proxied
request is written twice (the request to the backend, the response to the
client), so that is four C{epoll_ctl} calls and two more events per
request.  Here, a transport that asks to be watched is remembered instead,
and once the events at hand (or the timed calls) are handled, each such
transport is given its write event directly: what it wrote in the
meantime (a response's head and body alike) goes out in one C{send}, and
only a socket that does not take it all is watched, as before.  A
protocol sees no difference: writes are still sent after the call that
made them returns, only sooner, and in the same order.  (One thing moves:
a write now leaves before a C{callLater(0, ...)} made in the same turn
runs, where it used to leave after.)

Readers, likewise, are handed to epoll when the turn ends, not when they
start reading: an accepted L4 client is paused at once until its backend
connects, and a connecting socket is read, stopped and read again, which
cost an C{epoll_ctl} each and now cost none.  (One narrow case differs: a
paused connection resumed by an earlier event of the same poll, whose own
event is a hang-up, is reported lost, where the epoll reactor reports it
closed; both end the connection.)
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.main import installReactor
from twisted.logger import Logger

_log = Logger()

try:
    from select import EPOLLOUT

    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover (no epoll: not Linux)
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class LeanEPollReactor(EPollReactor):
        """
        The epoll reactor, without a logging context around each event, and
        writing behind.
        """

        def __init__(self) -> None:
            # Writers waiting for their write event from us, and readers for
            # epoll to watch, each in the order they asked (a dict as an
            # ordered set).
            self._to_write: dict[Any, None] = {}
            self._to_watch: dict[Any, None] = {}
            super().__init__()

        def addWriter(self, writer: Any) -> None:
            """
            Remember C{writer}, to be written for once the events at hand are
            handled; it is watched by epoll only if that does not empty it.
            """
            if (
                writer not in self._to_write
                and writer.fileno() not in self._writes
                and not self._continuousPolling.isWriting(writer)
            ):
                self._to_write[writer] = None

        def removeWriter(self, writer: Any) -> None:
            if self._to_write.pop(writer, _ABSENT) is _ABSENT:
                super().removeWriter(writer)

        def addReader(self, reader: Any) -> None:
            """
            Remember C{reader}, for epoll to watch from the end of this turn:
            a reader that stops reading before then (a client connection
            paused until its backend connects) costs epoll nothing.
            """
            if (
                reader not in self._to_watch
                and reader.fileno() not in self._reads
                and not self._continuousPolling.isReading(reader)
            ):
                self._to_watch[reader] = None

        def removeReader(self, reader: Any) -> None:
            if self._to_watch.pop(reader, _ABSENT) is _ABSENT:
                super().removeReader(reader)

        def getWriters(self) -> list[Any]:
            return super().getWriters() + list(self._to_write)  # type: ignore[no-any-return]

        def getReaders(self) -> list[Any]:
            return super().getReaders() + list(self._to_watch)  # type: ignore[no-any-return]

        def removeAll(self) -> list[Any]:
            remembered = [
                reader
                for reader in self._to_watch
                if reader not in self._internalReaders
            ]
            for reader in remembered:
                del self._to_watch[reader]
            remembered += self._to_write
            self._to_write.clear()
            removed: list[Any] = super().removeAll()
            return removed + [each for each in remembered if each not in removed]

        def write_behind(self) -> None:
            """
            Give each remembered writer its write event now, as epoll would
            have a turn later: a writer still wanting to write after it (its
            socket took only part) is then watched by epoll.  Writers that
            ask while this runs get their turn after the others, up to a
            few rounds.
            """
            to_write = self._to_write
            for _ in range(_ROUNDS):
                if not to_write:
                    return
                for writer in list(to_write):
                    if writer not in to_write:
                        continue  # stopped writing meanwhile (it was closed)
                    try:
                        fd = writer.fileno()
                    except BaseException:
                        fd = -1  # the handler asks again, and drops it
                    self._handle(writer, fd, EPOLLOUT)
                    if to_write.pop(writer, _ABSENT) is not _ABSENT:
                        self._register(EPollReactor.addWriter, writer)
            for writer in list(to_write):
                del to_write[writer]
                self._register(EPollReactor.addWriter, writer)

        def _watch(self) -> None:
            """
            Have epoll watch the readers remembered this turn.
            """
            readers = list(self._to_watch)
            self._to_watch.clear()  # registering runs no protocol code
            for reader in readers:
                self._register(EPollReactor.addReader, reader)

        def _register(self, add: Callable[[Any, Any], None], selectable: Any) -> None:
            """
            Have epoll watch C{selectable} (C{add} is the epoll reactor's
            own C{addReader} or C{addWriter}), unless it was closed
            meanwhile: one whose descriptor is gone is dropped, and logged if
            it could not even say so.
            """
            try:
                if selectable.fileno() != -1:
                    add(self, selectable)
            except BaseException:
                _log.failure("watching {log_system}", log_system=_prefix(selectable))

        def _end_turn(self) -> None:
            """
            Write behind, then have epoll watch what should be watched: the
            loop may wait now.
            """
            if self._to_write:
                self.write_behind()
            if self._to_watch:
                self._watch()

        def runUntilCurrent(self) -> None:
            super().runUntilCurrent()
            if self._to_write or self._to_watch:
                self._end_turn()

        def doPoll(self, timeout: float | None) -> None:
            """
            Wait for events (up to C{timeout} seconds, or for ever), handle
            each as the epoll reactor does, minus the context, then end the
            turn.
            """
            if self._to_write or self._to_watch:  # from outside a turn (startup)
                if self._to_write:
                    timeout = 0  # what writing runs may have work due now
                self._end_turn()
            if self._justStopped:
                # What ended the last turn (a connection's close) stopped the
                # reactor after it chose how long to wait: shut down now.
                timeout = 0
            try:
                events = self._poller.poll(
                    -1 if timeout is None else timeout, len(self._selectables)
                )
            except OSError as error:
                if error.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    self._handle(selectable, fd, event)
            if self._to_write or self._to_watch:
                self._end_turn()

        def _handle(self, selectable: Any, fd: int, event: int) -> None:
            """
            Handle one event; an exception that escapes the handler is
            logged with the connection's prefix, and the loop goes on.
            """
            try:
                self._doReadOrWrite(selectable, fd, event)
            except BaseException:
                _log.failure(
                    "handling an event of {log_system}",
                    log_system=_prefix(selectable),
                )

        doIteration = doPoll


#: Stands for "not remembered" where C{None} is the remembered value.
_ABSENT = object()
#: Rounds of writing behind before the rest are left to epoll.
_ROUNDS = 4


def _prefix(selectable: object) -> str:
    """
    :returns: the connection's log prefix, as the context named it.
    """
    try:
        return str(selectable.logPrefix())  # type: ignore[attr-defined]
    except Exception:
        return "-"


#: The name of the reactor plugin (C{twisted/plugins/stickyproxy_plugin.py}).
PLUGIN_NAME = "stickyproxy-epoll"


def install() -> None:
    """
    Install L{LeanEPollReactor} as the global reactor (the reactor plugin's
    entry point).

    :raises ImportError: where there is no epoll.
    """
    if EPollReactor is None:
        raise ImportError("the stickyproxy-epoll reactor needs epoll (Linux)")
    installReactor(LeanEPollReactor())


def reactor_option(reactor: object) -> list[str]:
    """
    :returns: the command-line option that gives a worker process the
        reactor C{reactor} is, if it is this one (else the default).
    """
    if EPollReactor is not None and isinstance(reactor, LeanEPollReactor):
        return ["--reactor", PLUGIN_NAME]
    return []


def install_lean_reactor(
    modules: Mapping[str, object] = sys.modules,
    install: Callable[[], None] = install,
) -> bool:
    """
    Install L{LeanEPollReactor} as the global reactor, unless a reactor is
    installed already or this platform has no epoll.

    :returns: whether it was installed.
    """
    if EPollReactor is None or "twisted.internet.reactor" in modules:
        return False
    install()
    return True
