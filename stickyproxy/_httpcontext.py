"""
What HTTP persistence strategies see of one request and its response.

The L7 frontend builds an L{HTTPRoutingContext} from the request head; the
strategies read cookies and headers from it in C{lookup} (and take their own
data off the request there), and add or rewrite response cookies in
C{persist}, when the response head is known.  Nothing here touches the
network or the framing: the frontend turns the context back into bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import TYPE_CHECKING

import attrs
from zope.interface import Attribute, implementer

from ._options import IPNetwork
from .interfaces import IRoutingContext

if TYPE_CHECKING:
    from ._backends import Backend


class IHTTPRoutingContext(IRoutingContext):
    """
    An L{IRoutingContext} for one HTTP request (and, in C{persist}, its
    response).
    """

    secure = Attribute(
        "bool: the client reached us over TLS (or a trusted proxy in front "
        "says it did, with X-Forwarded-Proto: https)"
    )
    peer_host = Attribute(
        "str: the address of the TCP peer (a proxy in front, if any), where "
        "client_host is the client behind it"
    )
    method = Attribute("bytes: the request method")
    target = Attribute("bytes: the request-target as received (path and query)")
    status = Attribute("int | None: the response status, once the response head is in")

    def header(name: bytes) -> bytes | None:
        """
        :param name: a lowercase header name.
        :returns: the request header's first value, or C{None}.
        """

    def header_values(name: bytes) -> list[bytes]:
        """
        :returns: every value of a request header, comma-separated lists
            split, in order.
        """

    def cookie(name: str) -> str | None:
        """
        :returns: the value of the request cookie C{name} (the first one)
            as the client sent it, whatever strategies changed for the
            forwarded request; or C{None}.
        """

    def remove_cookie(name: str) -> None:
        """
        Take cookie C{name} off the request before it is forwarded.
        """

    def replace_cookie(name: str, value: str) -> None:
        """
        Forward the request with every cookie C{name} set to C{value}
        instead.
        """

    def response_cookies(name: str) -> list[SetCookie]:
        """
        :returns: the response's C{Set-Cookie} headers for cookie C{name}.
        """

    def replace_response_cookie(old: SetCookie, new: SetCookie) -> None:
        """
        Send C{new} in place of the response cookie C{old}.
        """

    def add_response_header(name: bytes, value: bytes) -> None:
        """
        Add a header to the response (e.g. C{Set-Cookie}).
        """

    def response_header(name: bytes) -> bytes | None:
        """
        :returns: the response header's first value, or C{None}.
        """

    def response_header_values(name: bytes) -> list[bytes]:
        """
        :returns: every value of a response header, in order.
        """

    def set_response_header(name: bytes, value: bytes) -> None:
        """
        Replace every value of a response header with C{value}.
        """


def _split_list(values: Iterable[bytes]) -> list[bytes]:
    return [
        item.strip() for value in values for item in value.split(b",") if item.strip()
    ]


@implementer(IHTTPRoutingContext)
@attrs.define(slots=True)
class HTTPRoutingContext:
    """
    The L{IHTTPRoutingContext} the L7 frontend builds for each request.

    :ivar request_headers: (lowercase name, value) pairs, as forwarded;
        strategies change them through the methods, not directly.
    :ivar response_headers: the same for the response, once it is in.
    """

    frontend: str
    client_host: str
    client_port: int
    peer_host: str
    secure: bool
    method: bytes
    target: bytes
    request_headers: list[tuple[bytes, bytes]]
    status: int | None = None
    response_headers: list[tuple[bytes, bytes]] | None = None
    mode: str = "http"
    tried: list[Backend] = attrs.field(factory=list)
    _sent: list[tuple[str, str]] | None = None  # the cookies as the client sent them
    _forwarded: list[tuple[str, str]] | None = None  # as changed by strategies

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.request_headers:
            if key == name:
                return value
        return None

    def header_values(self, name: bytes) -> list[bytes]:
        return _split_list(value for key, value in self.request_headers if key == name)

    def _sent_cookies(self) -> list[tuple[str, str]]:
        if self._sent is None:
            self._sent = parse_cookie_header(
                value for key, value in self.request_headers if key == b"cookie"
            )
        return self._sent

    def cookie(self, name: str) -> str | None:
        for key, value in self._sent_cookies():
            if key == name:
                return value
        return None

    def _cookies_to_forward(self) -> list[tuple[str, str]]:
        if self._forwarded is None:
            return self._sent_cookies()
        return self._forwarded

    def remove_cookie(self, name: str) -> None:
        cookies = self._cookies_to_forward()
        self._forwarded = [(k, v) for k, v in cookies if k != name]

    def replace_cookie(self, name: str, value: str) -> None:
        cookies = self._cookies_to_forward()
        self._forwarded = [(k, value if k == name else v) for k, v in cookies]

    def forwarded_headers(self) -> list[tuple[bytes, bytes]]:
        """
        The request headers to forward, with the cookie changes made.
        """
        if self._forwarded is None:
            return self.request_headers
        headers = [(k, v) for k, v in self.request_headers if k != b"cookie"]
        if self._forwarded:
            value = "; ".join(f"{k}={v}" if k else v for k, v in self._forwarded)
            headers.append((b"cookie", value.encode("latin-1")))
        return headers

    def response_cookies(self, name: str) -> list[SetCookie]:
        cookies = []
        for key, value in self.response_headers or ():
            if key == b"set-cookie":
                cookie = SetCookie.parse(value)
                if cookie is not None and cookie.name == name:
                    cookies.append(cookie)
        return cookies

    def replace_response_cookie(self, old: SetCookie, new: SetCookie) -> None:
        assert self.response_headers is not None
        for index, (key, value) in enumerate(self.response_headers):
            if key == b"set-cookie" and value == old.raw:
                self.response_headers[index] = (key, new.render())
                return

    def add_response_header(self, name: bytes, value: bytes) -> None:
        assert self.response_headers is not None
        self.response_headers.append((name, value))

    def response_header(self, name: bytes) -> bytes | None:
        for key, value in self.response_headers or ():
            if key == name:
                return value
        return None

    def response_header_values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.response_headers or () if key == name]

    def set_response_header(self, name: bytes, value: bytes) -> None:
        assert self.response_headers is not None
        self.response_headers[:] = [
            (k, v) for k, v in self.response_headers if k != name
        ]
        self.response_headers.append((name, value))


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


def in_networks(host: str, networks: Sequence[IPNetwork]) -> bool:
    """
    :returns: whether C{host} is an IP address inside one of C{networks}.
    """
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def real_client(
    peer_host: str, forwarded_for: Sequence[bytes], trusted: Sequence[IPNetwork]
) -> str:
    """
    The client behind a chain of trusted proxies: when the peer is trusted,
    the right-most address of C{X-Forwarded-For} that is not trusted (or
    the left-most, if all are); otherwise the peer itself, since anyone
    can write the header.
    """
    if not in_networks(peer_host, trusted):
        return peer_host
    hops = [hop.decode("latin-1") for hop in forwarded_for]
    for hop in reversed(hops):
        host = _strip_port(hop)
        if not in_networks(host, trusted):
            return host
    return _strip_port(hops[0]) if hops else peer_host


def _strip_port(hop: str) -> str:
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop
