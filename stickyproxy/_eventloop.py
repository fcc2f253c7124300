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
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Mapping

from twisted.internet.main import installReactor
from twisted.logger import Logger

_log = Logger()

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover (no epoll: not Linux)
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class LeanEPollReactor(EPollReactor):
        """
        The epoll reactor, without a logging context around each event.
        """

        def doPoll(self, timeout: float | None) -> None:
            """
            Wait for events (up to C{timeout} seconds, or for ever), and
            handle each as the epoll reactor does, minus the context.
            """
            try:
                events = self._poller.poll(
                    -1 if timeout is None else timeout, len(self._selectables)
                )
            except OSError as error:
                if error.errno == errno.EINTR:
                    return
                raise
            handle = self._doReadOrWrite
            selectables = self._selectables
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    try:
                        handle(selectable, fd, event)
                    except BaseException:
                        _log.failure(
                            "handling an event of {log_system}",
                            log_system=_prefix(selectable),
                        )

        doIteration = doPoll


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
