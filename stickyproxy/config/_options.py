"""
Typed reading of one configuration table, with errors that name the key.

The config loader and every strategy (built-in or plugin) read their tables
through L{OptionReader}, so every mistake is reported the same way:
C{frontend[0].persistence.mask: expected an integer from 0 to 32, got 33}.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

import attrs

from stickyproxy.core._addresses import IPNetwork

_T = TypeVar("_T")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_MISSING: object = object()


@attrs.frozen
class Bounds:
    """
    The sane range of a duration or count (see L{stickyproxy.config._bounds},
    where every one is kept).

    :ivar off: C{0} is accepted too, meaning "off" or "no limit".
    """

    minimum: float
    maximum: float | None = None
    off: bool = False

    def allows(self, value: float) -> bool:
        """
        :returns: whether C{value} is within the range (or 0, if C{off}).
        """
        if self.off and value == 0:
            return True
        return self.minimum <= value and (self.maximum is None or value <= self.maximum)

    def describe(self, kind: str) -> str:
        """
        Say what is expected: C{"an integer from 1 to 100"}, C{"0 (off) or a
        number of at least 1"}.
        """
        text = kind + _bounds(self.minimum, self.maximum)
        return "0 (off) or " + text if self.off else text


class ConfigError(Exception):
    """
    A configuration mistake, with the key path it was found at.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def describe(value: object) -> str:
    """
    Name a config value for an error message: its type and, for short
    scalars, its value.
    """
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
        type(None): "null",  # JSON's, in a body of the admin API
    }.get(type(value), type(value).__name__)
    if isinstance(value, bool | int | float) or (
        isinstance(value, str) and len(value) <= 40
    ):
        return f"{kind} ({value!r})"
    return kind


def describe_error(error: BaseException) -> str:
    """
    An exception in words, for a one-line error: its message, or its type
    when the message is empty or says nothing alone (a missing file).
    """
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = (
            f"{error.strerror}: {error.filename}" if error.filename else error.strerror
        )
    return " ".join(text.split())


def join_path(path: str, key: str | int) -> str:
    """
    Extend a key path: C{join_path("pool.pg", "backend")} is
    C{"pool.pg.backend"}, C{join_path("frontend", 0)} is C{"frontend[0]"}.
    """
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


@attrs.define
class OptionReader:
    """
    Reads the keys of one config table, checking each, and complains about
    keys nobody asked for when L{finish} is called.

    Used as a context manager, it calls L{finish} when the block ends
    without an error (a C{return} inside it included), so a strategy's
    C{build} reads::

        with OptionReader(options, path) as reader:
            return MyStrategy(pool, reader.integer("size", 100, minimum=1))

    :ivar path: the table's key path, prefixed to every error.
    """

    _table: Mapping[str, object]
    path: str
    _seen: set[str] = attrs.field(factory=set)
    _known: set[str] = attrs.field(factory=set)
    _hints: dict[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self._table, Mapping):
            raise ConfigError(
                self.path, f"expected a table, got {describe(self._table)}"
            )

    def __enter__(self) -> OptionReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.finish()

    def key(self, name: str) -> str:
        """
        :returns: the full key path of C{name} in this table.
        """
        return join_path(self.path, name)

    def has(self, name: str) -> bool:
        """
        :returns: whether the table sets C{name}.
        """
        self._known.add(name)
        return name in self._table

    def elsewhere(self, hint: str, *names: str) -> None:
        """
        Say why keys that are valid in other tables of this kind (another
        mode, another probe type) are refused here, if they are given.
        """
        for name in names:
            self._hints[name] = hint

    def _get(self, name: str, default: object) -> object:
        self._seen.add(name)
        if name in self._table:
            return self._table[name]
        if default is _MISSING:
            # A required key is more likely misspelt than forgotten.
            typo = self._closest(name, self._unread())
            if typo is not None:
                raise ConfigError(
                    self.key(typo), f"unknown key (did you mean {name!r}?)"
                )
            raise ConfigError(self.key(name), "is required")
        return default

    def _unread(self) -> list[str]:
        return [k for k in self._table if k not in self._seen]

    @staticmethod
    def _closest(name: str, candidates: Collection[str]) -> str | None:
        matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
        return matches[0] if matches else None

    def fail(self, name: str, expected: str) -> ConfigError:
        """
        :returns: an error saying what C{name} should have been and what it is.
        """
        return ConfigError(
            self.key(name),
            f"expected {expected}, got {describe(self._table.get(name))}",
        )

    def value(self, name: str, default: object = _MISSING) -> object:
        """
        Read a value of any type, for a key that takes several kinds (the
        caller checks it, and fails with L{fail}).
        """
        return self._get(name, default)

    def string(
        self,
        name: str,
        default: object = _MISSING,
        choices: Collection[str] | None = None,
    ) -> str:
        """
        Read a string, optionally one of C{choices}.
        """
        value = self._get(name, default)
        if choices is not None and value not in choices:
            raise self.fail(name, "one of " + ", ".join(repr(c) for c in choices))
        if not isinstance(value, str):
            raise self.fail(name, "a string")
        return value

    def optional_string(self, name: str) -> str | None:
        """
        Read a string that may be absent.
        """
        self._seen.add(name)
        return self.string(name) if self.has(name) else None

    def integer(
        self,
        name: str,
        default: object = _MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
        bounds: Bounds | None = None,
    ) -> int:
        """
        Read an integer within C{minimum}..C{maximum} (inclusive), or
        C{bounds}.
        """
        value = self._get(name, default)
        if bounds is None:
            bounds = Bounds(-math.inf if minimum is None else minimum, maximum)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not bounds.allows(value)
        ):
            raise self.fail(name, bounds.describe("an integer"))
        return value

    def number(
        self,
        name: str,
        default: object = _MISSING,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
        bounds: Bounds | None = None,
    ) -> float:
        """
        Read a number (integer or float) within C{minimum}..C{maximum}
        (inclusive), or C{bounds}; C{positive} excludes zero.
        """
        value = self._get(name, default)
        if bounds is None:
            bounds = Bounds(-math.inf if minimum is None else minimum, maximum)
        kind = "a positive number" if positive or bounds.minimum > 0 else "a number"
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or (positive and value <= 0)
            or not bounds.allows(value)
        ):
            raise self.fail(name, bounds.describe(kind))
        return float(value)

    def optional_number(
        self, name: str, positive: bool = True, bounds: Bounds | None = None
    ) -> float | None:
        """
        Read a number that may be absent (absent means "off").
        """
        self._seen.add(name)
        if not self.has(name):
            return None
        if bounds is not None:
            return self.number(name, bounds=bounds)
        return self.number(name, positive=positive)

    def token(self, name: str, default: object = _MISSING) -> str:
        """
        Read a header or cookie name (an RFC 9110 token).
        """
        value = self.string(name, default)
        if not _TOKEN.fullmatch(value):
            raise self.fail(name, "a cookie or header name (letters, digits, -_.!#$)")
        return value

    def tokens(self, name: str, default: object = _MISSING) -> tuple[str, ...]:
        """
        Read an array of RFC 9110 tokens, such as protocol names.
        """
        values = self.strings(name, default)
        if not all(_TOKEN.fullmatch(value) for value in values):
            raise self.fail(name, "an array of names (letters, digits, -_.!#$)")
        return values

    def networks(self, name: str) -> tuple[IPNetwork, ...]:
        """
        Read an array of IP addresses or CIDR networks (absent: none).
        """
        try:
            return tuple(
                ipaddress.ip_network(value, strict=False)
                for value in self.strings(name, ())
            )
        except ValueError:
            raise self.fail(
                name, "an array of IP addresses or CIDR networks (10.0.0.0/8)"
            ) from None

    def boolean(self, name: str, default: object = _MISSING) -> bool:
        """
        Read C{true} or C{false}.
        """
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, "true or false")
        return value

    def strings(self, name: str, default: object = _MISSING) -> tuple[str, ...]:
        """
        Read an array of strings.
        """
        value = self._get(name, default)
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) for item in value
        ):
            raise self.fail(name, "an array of strings")
        return tuple(value)

    def table(self, name: str) -> OptionReader:
        """
        Read a sub-table (an absent one reads as empty).
        """
        value = self._get(name, {})
        if not isinstance(value, Mapping):
            raise self.fail(name, "a table")
        return OptionReader(value, self.key(name))

    def tables(self, name: str, default: object = _MISSING) -> list[OptionReader]:
        """
        Read an array of tables (C{[[name]]}); a single table counts as an
        array of one.
        """
        value = self._get(name, default)
        if isinstance(value, Mapping):
            return [OptionReader(value, self.key(name))]
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise self.fail(name, "an array of tables")
        readers = []
        for index, item in enumerate(value):
            readers.append(OptionReader(item, join_path(self.key(name), index)))
        return readers

    def rest(self) -> dict[str, object]:
        """
        Take every key not read yet, e.g. to hand a strategy its options.
        """
        rest = {k: v for k, v in self._table.items() if k not in self._seen}
        self._seen.update(rest)
        return rest

    def finish(self) -> None:
        """
        Complain about the first key that was never read.

        :raises ConfigError: naming the unknown key and the known ones.
        """
        unknown = self._unread()
        if not unknown:
            return
        name = unknown[0]
        if name in self._hints:
            raise ConfigError(self.key(name), self._hints[name])
        known = self._seen | self._known
        typo = self._closest(name, known)
        if typo is not None:
            raise ConfigError(self.key(name), f"unknown key (did you mean {typo!r}?)")
        listed = ", ".join(sorted(known)) or "none"
        raise ConfigError(self.key(name), f"unknown key (expected one of: {listed})")


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum == -math.inf:
        minimum = None
    if minimum is not None and maximum is not None:
        return f" from {_plain(minimum)} to {_plain(maximum)}"
    if minimum is not None:
        return f" of at least {_plain(minimum)}"
    if maximum is not None:
        return f" of at most {_plain(maximum)}"
    return ""


def _plain(value: float) -> str:
    """
    A bound as people write it: C{2592000}, not C{2.592e+06}; C{0.01}.
    """
    return str(int(value)) if float(value).is_integer() else repr(float(value))
