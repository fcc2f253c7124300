"""
JSON lines for C{twistd stickyproxy --log-format json}: one JSON object per
log event, on one line, for a log pipeline.

Twisted's own L{twisted.logger.jsonFileLogObserver} serializes events so
that Twisted can load them again: the message is left as a format string,
the level and failure as Twisted objects, and each record starts with an
RS character.  A pipeline wants plain values instead, so each line here
holds the event's own fields as they are, plus Twisted's C{log_*} keys
made plain: C{log_time} (seconds since the epoch), C{log_level} (its
name), C{log_namespace}, C{log_format}, C{log_text} (the message, as the
text log shows it), C{log_system} (when set) and C{log_failure} (the
traceback, when there is one).
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, LogEvent, formatEvent

#: The keys of an event that the legacy C{twisted.python.log} adds, besides
#: its C{log_*} ones: its message again, in other shapes.
_LEGACY = frozenset({"message", "system", "time", "isError", "why", "failure"})


def _plain(value: object) -> object:
    """
    A JSON stand-in for a value C{json} cannot encode.
    """
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def event_as_json_line(event: LogEvent) -> str:
    """
    :returns: C{event} as one line of JSON, newline included.
    """
    legacy = "isError" in event
    record: dict[str, object] = {
        key: value
        for key, value in event.items()
        if not key.startswith("log_") and not (legacy and key in _LEGACY)
    }
    level = event.get("log_level")
    record.update(
        log_time=event.get("log_time"),
        log_level=None if level is None else level.name,
        log_namespace=event.get("log_namespace"),
        log_format=event.get("log_format"),
        log_text=formatEvent(event),
    )
    if event.get("log_system") is not None:
        record["log_system"] = event["log_system"]
    failure: Any = event.get("log_failure")
    if failure is not None:
        record["log_failure"] = failure.getTraceback()
    return json.dumps(record, default=_plain, skipkeys=True) + "\n"


def json_lines_observer(out: IO[Any]) -> FileLogObserver:
    """
    :returns: an observer writing each event to C{out} as a JSON line (the
        shape of C{twist}'s C{fileLogObserverFactory}).
    """
    return FileLogObserver(out, event_as_json_line)


def stdout_json_observer() -> FileLogObserver:
    """
    :returns: a JSON-lines observer on standard output: what C{twistd}'s
        C{--logger} option is set to by C{--log-format json}.
    """
    return json_lines_observer(sys.stdout)
