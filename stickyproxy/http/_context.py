"""
What HTTP persistence strategies see of one request and its response.

The L7 frontend builds an L{HTTPRoutingContext} from the request head; the
strategies read cookies and headers from it in C{lookup} (and take their own
data off the request there), and add or rewrite response cookies in
C{persist}, when the response head is known.  Nothing here touches the
network or the framing: the frontend turns the context back into bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from zope.interface import implementer

from stickyproxy.core._cookies import SetCookie, parse_cookie_header
from stickyproxy.http._message import split_list
from stickyproxy.interfaces import IHTTPRoutingContext

if TYPE_CHECKING:
    from stickyproxy.model import Backend


@implementer(IHTTPRoutingContext)
@attrs.define(slots=True)
class HTTPRoutingContext:
    """
    The L{IHTTPRoutingContext} the L7 frontend builds for each request.

    :ivar request_headers: (lowercase name, value) pairs, as forwarded;
        strategies change them through the methods, not directly.
    :ivar response_headers: the same for the response, once it is in.
    :ivar consulted: the request header names read through this context
        (by strategies and balancers while routing): the proxy read the
        request by them, so a C{Connection} header never removes them.
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
    invalid: str | None = None
    consulted: set[bytes] = attrs.field(factory=set)
    _sent: list[tuple[str, str]] | None = None  # the cookies as the client sent them
    _forwarded: list[tuple[str, str]] | None = None  # as changed by strategies

    def header(self, name: bytes) -> bytes | None:
        self.consulted.add(name)
        for key, value in self.request_headers:
            if key == name:
                return value
        return None

    def header_values(self, name: bytes) -> list[bytes]:
        self.consulted.add(name)
        return split_list(value for key, value in self.request_headers if key == name)

    def _sent_cookies(self) -> list[tuple[str, str]]:
        if self._sent is None:
            self.consulted.add(b"cookie")
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
        kept = [(k, v) for k, v in cookies if k != name]
        if len(kept) != len(cookies):  # else the Cookie header goes as it came
            self._forwarded = kept

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
