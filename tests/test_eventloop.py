"""
Tests for L{stickyproxy._eventloop}: the epoll reactor without a logging
context per event, and when C{twistd stickyproxy} installs it.
"""

from __future__ import annotations

import errno
import select

from twisted.logger import globalLogPublisher

from stickyproxy._eventloop import (
    PLUGIN_NAME,
    LeanEPollReactor,
    install_lean_reactor,
    reactor_option,
)

from tests._base import TestCase


class FakePoller:
    def __init__(self, events=(), error=None):
        self.events = list(events)
        self.error = error
        self.asked = []

    def poll(self, timeout, most):
        self.asked.append((timeout, most))
        if self.error is not None:
            raise self.error
        return self.events


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
        reactor = LeanEPollReactor()
        self.addCleanup(reactor._poller.close)
        reactor._poller = poller
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
        reactor = LeanEPollReactor()
        self.addCleanup(reactor._poller.close)
        self.assertEqual(reactor_option(reactor), ["--reactor", PLUGIN_NAME])
        self.assertEqual(reactor_option(object()), [])

    def test_plugin_names_it(self):
        """
        The reactor plugin of that name installs this module's reactor.
        """
        from twisted.application.reactors import getReactorTypes

        [plugin] = [r for r in getReactorTypes() if r.shortName == PLUGIN_NAME]
        self.assertEqual(plugin.moduleName, "stickyproxy._eventloop")
