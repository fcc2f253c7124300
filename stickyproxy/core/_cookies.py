"""
Cookie syntax: the C{Cookie} header read, C{Set-Cookie} headers read and
written.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    pass


def parse_cookie_header(values: Iterable[bytes]) -> list[tuple[str, str]]:
    """
    The (name, value) pairs of C{Cookie} request headers, in order.  Pairs
    without C{=} are kept with an empty name, as browsers send them.
    """
    pairs = []
    for value in values:
        for item in value.decode("latin-1").split(";"):
            name, sep, cookie = item.strip().partition("=")
            if not sep:
                name, cookie = "", name
            if name or cookie:
                pairs.append((name.strip(), cookie.strip()))
    return pairs


@attrs.frozen
class SetCookie:
    """
    One C{Set-Cookie} response header, parsed: its name, value, and
    attributes in their original order and spelling.
    """

    name: str
    value: str
    attributes: tuple[tuple[str, str | None], ...] = ()
    raw: bytes = b""

    @classmethod
    def parse(cls, header: bytes) -> SetCookie | None:
        """
        :returns: the parsed header, or C{None} if it has no C{name=value}.
        """
        text = header.decode("latin-1")
        first, *rest = text.split(";")
        name, sep, value = first.partition("=")
        if not sep or not name.strip():
            return None
        attributes = []
        for item in rest:
            key, sep, attribute = item.strip().partition("=")
            if key:
                attributes.append((key.strip(), attribute.strip() if sep else None))
        return cls(name.strip(), value.strip(), tuple(attributes), header)

    def attribute(self, name: str) -> str | None:
        """
        :returns: an attribute's value (C{""} for a flag such as
            C{HttpOnly}), or C{None} when absent; names are matched without
            regard to case.
        """
        lowered = name.lower()
        for key, value in self.attributes:
            if key.lower() == lowered:
                return "" if value is None else value
        return None

    def expires_at(self, now: float) -> float | None:
        """
        When the browser should forget the cookie: C{Max-Age} wins over
        C{Expires}; C{None} for a browser-session cookie.  An unparsable
        date counts as absent, as browsers treat it.
        """
        max_age = self.attribute("Max-Age")
        if max_age is not None:
            try:
                return now + int(max_age)
            except ValueError:
                pass
        expires = self.attribute("Expires")
        if expires is not None:
            try:
                when = parsedate_to_datetime(expires)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            return when.timestamp()
        return None

    def deletes(self, now: float) -> bool:
        """
        :returns: whether this header removes the cookie (its expiry is
            not in the future).
        """
        expires = self.expires_at(now)
        return expires is not None and expires <= now

    def with_value(self, value: str) -> SetCookie:
        """
        :returns: the same cookie, attributes untouched, with another value.
        """
        return attrs.evolve(self, value=value)

    def render(self) -> bytes:
        """
        :returns: the header's value, attributes in their original order.
        """
        parts = [f"{self.name}={self.value}"]
        parts += [
            key if value is None else f"{key}={value}" for key, value in self.attributes
        ]
        return "; ".join(parts).encode("latin-1")


def make_set_cookie(
    name: str,
    value: str,
    *,
    max_age: float | None = None,
    expires: float | None = None,
    domain: str | None = None,
    path: str | None = "/",
    secure: bool = False,
    httponly: bool = True,
    samesite: str | None = "Lax",
) -> SetCookie:
    """
    Build a cookie to send.  C{max_age} is in seconds from now; C{expires}
    an absolute time; C{SameSite=None} always comes with C{Secure}, which
    browsers require.
    """
    attributes: list[tuple[str, str | None]] = []
    if path is not None:
        attributes.append(("Path", path))
    if domain is not None:
        attributes.append(("Domain", domain))
    if max_age is not None:
        attributes.append(("Max-Age", str(max(int(max_age), 0))))
    if expires is not None:
        stamp = datetime.fromtimestamp(max(expires, 0), tz=timezone.utc)
        attributes.append(("Expires", format_datetime(stamp, usegmt=True)))
    if secure or samesite == "None":
        attributes.append(("Secure", None))
    if httponly:
        attributes.append(("HttpOnly", None))
    if samesite is not None:
        attributes.append(("SameSite", samesite))
    return SetCookie(name, value, tuple(attributes))


def delete_cookie(
    name: str, path: str | None = "/", domain: str | None = None
) -> SetCookie:
    """
    A C{Set-Cookie} that makes browsers forget cookie C{name}.
    """
    return make_set_cookie(
        name,
        "",
        max_age=0,
        expires=0,
        path=path,
        domain=domain,
        httponly=False,
        samesite=None,
    )
