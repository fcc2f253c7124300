"""
Where access and connection log lines go when not to the proxy's log: a
file, reopened on demand for logrotate, or standard output; and the pieces
of a line that both logs share.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Collection, Mapping
from typing import IO, Any

import attrs
from zope.interface import Interface, implementer

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stickyproxy.core._events import IgnoreEvents

#: The values of C{access_log} that are not file paths.
TO_LOG = "log"
TO_STDOUT = "stdout"

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


class ILineLog(Interface):
    """
    Somewhere log lines are written, one at a time.
    """

    def open() -> None:
        """
        Open the file now, if not already (a line would open it); a no-op
        for a stream.

        :raises OSError: it cannot be opened for appending.
        """

    def write_line(line: str) -> None:
        """
        Write C{line} (without its newline), at once.
        """

    def reopen() -> None:
        """
        Start writing to the file by its name again (after logrotate moved
        it away); a no-op for a stream.
        """

    def close() -> None:
        """
        Stop writing; a later line opens the file again.
        """


@implementer(ILineLog)
@attrs.define(eq=False)
class LogFile:
    """
    Lines appended to a file, each written through at once.

    Unlike L{twisted.python.logfile.LogFile}, it never rotates it by
    itself, opens it in append mode (so C{copytruncate} and other writers
    are safe), and keeps writing to the old file when reopening fails.

    :ivar path: the file's absolute path.
    """

    path: str
    _file: IO[str] | None = attrs.field(init=False, default=None)

    log = Logger()

    def open(self) -> None:
        # At privilegedStartService: a file only root may write is opened
        # before privileges are shed.
        if self._file is None:
            self._file = open(
                self.path,
                "a",
                encoding="utf-8",
                errors="backslashreplace",
                buffering=1,
            )

    def write_line(self, line: str) -> None:
        self.open()
        assert self._file is not None
        self._file.write(line + "\n")

    def reopen(self) -> None:
        old, self._file = self._file, None
        try:
            self.open()
        except OSError as error:
            self._file = old
            self.log.error(
                "cannot reopen {path} ({reason}); still writing to the file "
                "that was open",
                path=self.path,
                reason=error.strerror,
            )
            return
        if old is not None:
            old.close()

    def close(self) -> None:
        old, self._file = self._file, None
        if old is not None:
            old.close()


@implementer(ILineLog)
@attrs.define(eq=False)
class StreamLog:
    """
    Lines written to a stream (standard output), flushed at each line.
    """

    stream: IO[str]

    def open(self) -> None:
        pass

    def write_line(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def writable_file_problem(path: str) -> str | None:
    """
    Check, without creating it, that the file at C{path} can be opened
    for appending.

    :returns: what is wrong, or C{None}.
    """
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        return f"no directory {directory}"
    if os.path.isdir(path):
        return f"{path} is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot make a file in {directory}"
    return None


def line_log(destination: str) -> ILineLog:
    """
    :param destination: C{"stdout"}, or a file's absolute path.
    :returns: where a log's lines go (the file is not opened yet).
    """
    if destination == TO_STDOUT:
        # The original standard output: twistd puts a logging file in
        # sys.stdout, which would make each line an event of the log.
        return StreamLog(sys.__stdout__ or sys.stdout)
    return LogFile(destination)


def clf_time(seconds: float) -> str:
    """
    :returns: the time as the Common Log Format writes it, in UTC (English
        month names, whatever the locale): C{10/Oct/2026:13:55:36 +0000}.
    """
    t = time.gmtime(seconds)
    month = _MONTHS[t.tm_mon - 1]
    return (
        f"{t.tm_mday:02d}/{month}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def quoted(text: str) -> str:
    """
    :returns: C{text} inside double quotes, with quotes, backslashes,
        control characters and anything not ASCII written as C{\\xHH} (as
        nginx does), so a client cannot forge a field or a line; C{"-"}
        when it is empty.
    """
    if not text:
        return '"-"'
    return '"' + "".join(map(_escaped, text)) + '"'


def _escaped(char: str) -> str:
    if char in '"\\' or not " " <= char <= "~":
        # Fields are bytes decoded as latin-1: one character per byte.
        raw = bytes([ord(char)]) if ord(char) < 256 else char.encode("utf-8")
        return "".join(f"\\x{byte:02X}" for byte in raw)
    return char


def dash(value: Any) -> str:
    """
    :returns: C{value} as text, or C{-} for none.
    """
    return "-" if value is None or value == "" else str(value)


class FrontendLog(IgnoreEvents):
    """
    What the access log and the connection log share: the frontends they
    log, and where each one's lines go.
    """

    def __init__(
        self,
        frontends: Collection[str],
        clock: IReactorTime | None = None,
        lines: Mapping[str, ILineLog] | None = None,
    ) -> None:
        """
        :param frontends: the frontends logged (those with C{access_log}
            set).
        :param clock: where the time of a line is read (needed with
            C{lines}).
        :param lines: where the lines of some of them go, by frontend; the
            rest go to the proxy's log, as events.
        """
        self.frontends = frozenset(frontends)
        self.clock = clock
        self.lines = dict(lines or {})

    def started(self, elapsed: float) -> str:
        """
        :returns: the time, C{elapsed} seconds ago, as a line shows it.
        """
        assert self.clock is not None, "a log with lines needs a clock"
        return clf_time(self.clock.seconds() - elapsed)
