"""
Tests for L{stickyproxy._eventloop}: the epoll reactor without a logging
context per event, and when C{twistd stickyproxy} installs it.
"""

from __future__ import annotations

import errno
import select
import socket

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher

from stickyproxy._eventloop import (
    PLUGIN_NAME,
    LeanEPollReactor,
    install_lean_reactor,
    reactor_option,
)

from tests._base import TestCase


def lean_reactor(test):
    """
    :returns: a L{LeanEPollReactor} (never run), its epoll and waker closed
        when C{test} ends.
    """
    reactor = LeanEPollReactor()

    def close():
        for reader in reactor._internalReaders:
            reader.connectionLost(None)
        reactor._poller.close()

    test.addCleanup(close)
    return reactor


class FakePoller:
    def __init__(self, events=(), error=None):
        self.events = list(events)
        self.error = error
        self.asked = []

        self.watched = []  # epoll_ctl calls

    def poll(self, timeout, most):
        self.asked.append((timeout, most))
        if self.error is not None:
            raise self.error
        return self.events

    def register(self, fd, flags):
        self.watched.append(("register", fd, flags))

    def modify(self, fd, flags):
        self.watched.append(("modify", fd, flags))

    def unregister(self, fd):
        self.watched.append(("unregister", fd))


class Selectable:
    def __init__(self, fd):
        self.fd = fd
        self.calls = []

    def fileno(self):
        return self.fd

    def logPrefix(self):
        self.calls.append("logPrefix")
        return "selectable"

    def doRead(self):
        self.calls.append("doRead")

    def doWrite(self):
        self.calls.append("doWrite")


class LeanEPollReactorTests(TestCase):
    def reactor(self, poller):
        reactor = lean_reactor(self)
        real, reactor._poller = reactor._poller, poller
        self.addCleanup(setattr, reactor, "_poller", real)
        return reactor

    def test_events_reach_their_selectables(self):
        """
        Each event goes to its selectable's C{doRead} or C{doWrite}, without
        the logging context (no C{logPrefix} asked for); an event for a
        descriptor no longer known is dropped.
        """
        reader, writer = Selectable(7), Selectable(8)
        reactor = self.reactor(
            FakePoller([(7, select.EPOLLIN), (8, select.EPOLLOUT), (9, select.EPOLLIN)])
        )
        reactor._selectables.update({7: reader, 8: writer})
        reactor.doIteration(0.5)
        self.assertEqual(reader.calls, ["doRead"])
        self.assertEqual(writer.calls, ["doWrite"])
        self.assertEqual(reactor._poller.asked, [(0.5, len(reactor._selectables))])

    def test_no_timeout_waits(self):
        """
        No timeout means waiting for an event (epoll's -1).
        """
        reactor = self.reactor(FakePoller())
        reactor.doPoll(None)
        self.assertEqual(reactor._poller.asked, [(-1, len(reactor._selectables))])

    def test_interrupted_poll(self):
        """
        A poll interrupted by a signal is an iteration with no events.
        """
        reactor = self.reactor(FakePoller(error=InterruptedError(errno.EINTR, "")))
        reactor.doPoll(0)

    def test_other_poll_errors_raise(self):
        """
        Any other poll error is raised, as the epoll reactor raises it.
        """
        reactor = self.reactor(FakePoller(error=OSError(errno.EBADF, "bad")))
        self.assertRaises(OSError, reactor.doPoll, 0)

    def test_failing_handler_disconnects(self):
        """
        A handler that raises is logged and its selectable disconnected,
        as in the epoll reactor.
        """
        broken = Selectable(7)
        broken.doRead = lambda: 1 / 0
        lost = []
        reactor = self.reactor(FakePoller([(7, select.EPOLLIN)]))
        reactor._selectables[7] = broken
        reactor._disconnectSelectable = lambda s, why, inRead: lost.append(s)
        reactor.doPoll(0)
        self.assertEqual(lost, [broken])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_escaping_exception_spares_the_other_events(self):
        """
        An exception that escapes an event's handler (a C{connectionLost}
        that raises while the reactor disconnects its selectable) is logged
        with the connection's prefix, and the other events of the same poll
        are still handled, as the logging context made sure.
        """
        first, second = Selectable(7), Selectable(8)
        first.doRead = lambda: 1 / 0

        def lost(selectable, why, inRead):
            raise RuntimeError("connectionLost failed")

        reactor = self.reactor(FakePoller([(7, select.EPOLLIN), (8, select.EPOLLIN)]))
        reactor._selectables.update({7: first, 8: second})
        reactor._disconnectSelectable = lost
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor.doPoll(0)
        self.assertEqual(second.calls, ["doRead"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.flushLoggedErrors(ZeroDivisionError)
        [failed] = [e for e in events if "log_failure" in e and e.get("log_system")]
        self.assertEqual(failed["log_system"], "selectable")


class Sent(Protocol):
    """
    Records its connection's loss.
    """

    lost = None

    def connectionLost(self, reason):
        self.lost = reason


class WriteBehindTests(TestCase):
    """
    Writes made during a turn of the loop go out at its end, one C{send}
    per transport, and epoll watches only a socket that did not take all.
    """

    def setUp(self):
        self.reactor = lean_reactor(self)

    def fake_poller(self, events=()):
        """
        Poll a L{FakePoller} from now on.
        """
        real, self.reactor._poller = self.reactor._poller, FakePoller(events)
        self.addCleanup(setattr, self.reactor, "_poller", real)
        return self.reactor._poller

    def connection(self):
        """
        :returns: a TCP transport on one end of a socket pair, its sends
            counted, and the other end.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        theirs.setblocking(False)
        self.protocol = protocol = Sent()
        transport = tcp.Connection(ours, protocol, self.reactor)
        transport.connected = True
        protocol.makeConnection(transport)
        sends = []
        send = transport.writeSomeData

        def counted(data):
            sends.append(bytes(data))
            return send(data)

        transport.writeSomeData = counted
        return transport, theirs, sends

    def test_turn_writes_go_out_together(self):
        """
        Two writes made while an event is handled (a response's head and
        body) leave in one C{send} when the events are handled, and the
        socket is never watched for writing.
        """
        transport, theirs, sends = self.connection()
        poller = self.fake_poller([(7, select.EPOLLIN)])
        reader = Selectable(7)
        reader.doRead = lambda: transport.write(b"head,") or transport.write(b"body")
        self.reactor._selectables[7] = reader
        self.reactor.doPoll(0)
        self.assertEqual(sends, [b"head,body"])
        self.assertEqual(theirs.recv(100), b"head,body")
        watched_out = [call for call in poller.watched if call[-1] & select.EPOLLOUT]
        self.assertEqual((watched_out, self.reactor.getWriters()), ([], []))

    def test_timed_writes_go_out(self):
        """
        A write made by a timed call goes out when the timed calls have
        run, before the loop waits.
        """
        transport, theirs, sends = self.connection()
        self.reactor.callLater(0, transport.write, b"timed")
        self.reactor.runUntilCurrent()
        self.assertEqual(theirs.recv(100), b"timed")

    def test_early_writes_go_out_without_waiting(self):
        """
        Writes made outside a turn (at startup) go out before the loop
        polls, and that poll does not wait, for what they ran may be due.
        """
        transport, theirs, sends = self.connection()
        transport.write(b"early")
        self.assertEqual(self.reactor.getWriters(), [transport])
        poller = self.fake_poller()
        self.reactor.doPoll(5)
        self.assertEqual(theirs.recv(100), b"early")
        self.assertEqual(poller.asked[0][0], 0)

    def test_full_socket_is_watched(self):
        """
        What a full socket does not take waits for epoll's write event, as
        in Twisted's reactor, and goes out in order when it comes.
        """
        transport, theirs, sends = self.connection()
        data = bytes(range(256)) * 40000  # more than the socket pair buffers
        transport.write(data)
        self.reactor.write_behind()
        self.assertIn(transport.fileno(), self.reactor._writes)
        transport.write(b"more")  # watched already: not remembered again
        self.assertNotIn(transport, self.reactor._to_write)
        data += b"more"
        received = b""
        for _ in range(10000):
            if len(received) == len(data):
                break
            try:
                received += theirs.recv(1 << 20)
            except BlockingIOError:
                self.reactor.doPoll(1)
        self.reactor.doPoll(0)  # the last write event: empty now, unwatched
        self.assertEqual(received, data)
        self.assertNotIn(transport.fileno(), self.reactor._writes)

    def test_closed_before_the_turn_ends(self):
        """
        A transport aborted after writing sends nothing and is not watched.
        """
        transport, theirs, sends = self.connection()
        transport.write(b"never")
        transport.abortConnection()
        self.reactor.write_behind()
        self.assertEqual((sends, self.reactor.getWriters()), ([], []))

    def test_failed_send_loses_the_connection(self):
        """
        A send that fails (the peer gone) loses the connection, as the
        write event would.
        """
        transport, theirs, sends = self.connection()
        theirs.close()
        transport.write(b"x" * 100)
        self.reactor.write_behind()
        self.assertIsNotNone(self.protocol.lost)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_aborted_by_another_writer(self):
        """
        A transport that another's write event aborts (both wrote in the
        turn) sends nothing after the abort.
        """
        transport, theirs, sends = self.connection()
        transport.write(b"never")
        aborting = Selectable(7)
        aborting.doWrite = transport.abortConnection
        self.reactor._to_write = {aborting: None, **self.reactor._to_write}
        self.reactor.write_behind()
        self.assertEqual(sends, [])

    def test_stopped_by_another_writer(self):
        """
        A writer that stops writing because of another's write event (it
        was closed) gets no write event of its own.
        """
        first, second = Selectable(7), Selectable(8)
        first.doWrite = lambda: self.reactor.removeWriter(second)
        self.reactor.addWriter(first)
        self.reactor.addWriter(second)
        self.reactor.write_behind()
        self.assertEqual(second.calls, [])

    def test_writes_made_while_writing_behind(self):
        """
        A transport that writes because another's write event ran (its
        producer resumed, its peer's close) is written for in the same
        turn, not left for epoll.
        """
        transport, theirs, sends = self.connection()
        first = Selectable(7)
        first.doWrite = lambda: transport.write(b"after")
        self.reactor.addWriter(first)
        self.reactor.write_behind()
        self.assertEqual(sends, [b"after"])
        self.assertNotIn(transport.fileno(), self.reactor._writes)

    def test_stopped_while_writing_behind(self):
        """
        A reactor stopped by what writing behind ran (a connection's close)
        does not wait in its next poll: it goes on to shut down.
        """
        transport, theirs, sends = self.connection()
        self.reactor.startRunning(installSignalHandlers=False)
        self.protocol.connectionLost = lambda reason: self.reactor.stop()
        theirs.close()
        transport.write(b"x")
        self.reactor.runUntilCurrent()
        poller = self.fake_poller()
        self.reactor.doPoll(None)  # no timed call: it would wait for ever
        self.assertEqual(poller.asked[0][0], 0)
        self.reactor.runUntilCurrent()  # the shutdown
        self.assertFalse(self.reactor.running)

    def test_broken_writer_dropped(self):
        """
        A writer whose C{fileno} raises by its write event (its file closed
        underneath) is dropped, once, not tried every turn.
        """

        class Broken(FileDescriptor):
            closed = False

            def fileno(self):
                if self.closed:
                    raise ValueError("I/O operation on closed file")
                return 7

        broken = Broken(self.reactor)
        broken.connected = True
        broken.write(b"x")
        broken.closed = True
        self.reactor.write_behind()
        self.assertNotIn(broken, self.reactor._to_write)
        self.assertTrue(self.flushLoggedErrors(ValueError))
        self.reactor.write_behind()
        self.assertEqual(self.flushLoggedErrors(ValueError), [])

    def test_remove_all_includes_writers_behind(self):
        """
        Stopping the reactor disconnects the transports waiting to write
        too.
        """
        transport, theirs, sends = self.connection()
        transport.write(b"pending")
        self.assertIn(transport, self.reactor.removeAll())
        self.assertEqual(self.reactor.getWriters(), [])


class WatchAtTurnEndTests(TestCase):
    """
    Readers are watched by epoll from the end of the turn that added them.
    """

    def setUp(self):
        self.reactor = lean_reactor(self)
        self.reactor._end_turn()  # the reactor's own waker
        real, self.reactor._poller = self.reactor._poller, FakePoller()
        self.addCleanup(setattr, self.reactor, "_poller", real)

    def test_watched_when_the_turn_ends(self):
        """
        A reader added by a timed call is watched once the timed calls have
        run, before the loop waits; it is counted as reading meanwhile.
        """
        reader = Selectable(7)
        self.reactor.callLater(0, self.reactor.addReader, reader)
        self.reactor.runUntilCurrent()
        self.assertEqual(
            self.reactor._poller.watched, [("register", 7, select.EPOLLIN)]
        )
        self.assertIn(reader, self.reactor.getReaders())
        self.reactor.addReader(reader)  # watched already: nothing more
        self.reactor.doPoll(0)
        self.assertEqual(len(self.reactor._poller.watched), 1)

    def test_paused_in_the_same_turn(self):
        """
        A reader that stops reading in the turn that started it (a client
        paused until its backend connects) costs epoll nothing, and is not
        counted as reading.
        """
        reader = Selectable(7)
        self.reactor._poller.events = [(9, select.EPOLLIN)]
        accepting = Selectable(9)

        def accept():
            self.reactor.addReader(reader)
            self.assertIn(reader, self.reactor.getReaders())
            self.reactor.removeReader(reader)

        accepting.doRead = accept
        self.reactor._selectables[9] = accepting
        self.reactor.doPoll(0)
        self.assertEqual(self.reactor._poller.watched, [])
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_started_by_writing_behind(self):
        """
        A reader started by what writing behind ran (a connect that
        completed) is watched at the same end of turn, and listed once
        however often it is started.
        """
        reader, writer = Selectable(7), Selectable(8)

        def connected():
            self.reactor.removeWriter(writer)
            self.reactor.addReader(reader)
            self.reactor.addReader(reader)

        writer.doWrite = connected
        self.reactor.addWriter(writer)
        self.reactor.runUntilCurrent()
        self.assertEqual(
            self.reactor._poller.watched, [("register", 7, select.EPOLLIN)]
        )
        self.reactor.addReader(reader)
        self.assertEqual(self.reactor.getReaders().count(reader), 1)

    def test_closed_before_watched(self):
        """
        A reader whose descriptor closed before the turn ended is not
        handed to epoll.
        """
        reader = Selectable(7)
        self.reactor.addReader(reader)
        reader.fd = -1
        self.reactor.doPoll(0)
        self.assertEqual(self.reactor._poller.watched, [])

    def test_remove_all_includes_readers_to_watch(self):
        """
        Stopping the reactor disconnects the readers not watched yet too.
        """
        reader = Selectable(7)
        self.reactor.addReader(reader)
        self.assertIn(reader, self.reactor.removeAll())
        self.assertNotIn(reader, self.reactor.getReaders())
        self.assertEqual(self.reactor._poller.watched, [])  # never watched


class InstallTests(TestCase):
    def test_installed_when_none_is(self):
        """
        With no reactor installed, the lean one is.
        """
        installed = []
        self.assertTrue(install_lean_reactor({}, lambda: installed.append(True)))
        self.assertEqual(installed, [True])

    def test_chosen_reactor_kept(self):
        """
        A reactor already installed (C{twistd --reactor}, or an embedding
        program's) is kept.
        """
        installed = []
        self.assertFalse(
            install_lean_reactor(
                {"twisted.internet.reactor": object()}, installed.append
            )
        )
        self.assertEqual(installed, [])


class WorkerReactorTests(TestCase):
    def test_workers_get_the_lean_reactor(self):
        """
        A process on the lean reactor starts its workers with the reactor
        plugin's name; on any other reactor, with the default.
        """
        reactor = lean_reactor(self)
        self.assertEqual(reactor_option(reactor), ["--reactor", PLUGIN_NAME])
        self.assertEqual(reactor_option(object()), [])

    def test_plugin_names_it(self):
        """
        The reactor plugin of that name installs this module's reactor.
        """
        from twisted.application.reactors import getReactorTypes

        [plugin] = [r for r in getReactorTypes() if r.shortName == PLUGIN_NAME]
        self.assertEqual(plugin.moduleName, "stickyproxy._eventloop")
