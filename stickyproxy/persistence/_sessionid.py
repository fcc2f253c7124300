"""
Where a request carries the application's session id: its session cookie,
or, for clients without cookies, a URL parameter (URL rewriting).  One
reader for C{route} and C{app-cookie}, so both find the same id.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import attrs

from stickyproxy.config._options import OptionReader
from stickyproxy.interfaces import IHTTPRoutingContext

#: Where in the URL the session id may be: C{;name=ID} in the path (Java
#: servlet containers) and C{?name=ID} in the query (PHP).
URL_PLACES = ("path", "query")


def _path_parameter(path: bytes, name: bytes) -> bytes | None:
    """
    :returns: the raw value of path parameter C{;name=} (up to the next
        C{;} or C{/}), or C{None}.
    """
    needle = b";" + name + b"="
    start = path.find(needle)
    if start < 0:
        return None
    rest = path[start + len(needle) :]
    return re.split(rb"[;/]", rest, maxsplit=1)[0]


def _query_parameter(query: bytes, name: bytes) -> bytes | None:
    """
    :returns: the raw value of the first query parameter C{name}, or C{None}.
    """
    for item in query.split(b"&"):
        key, _, value = item.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == name:
            return value
    return None


@attrs.frozen
class SessionIdReader:
    """
    Reads the session id from the cookie C{cookie} (surrounding double
    quotes ignored) or, when the request has none, from the URL parameter
    C{param}, in the places of C{url} in order.

    :ivar url: a subset of L{URL_PLACES}; empty: the cookie only.
    """

    cookie: str = "JSESSIONID"
    param: str = "jsessionid"
    url: tuple[str, ...] = URL_PLACES
    _param: bytes = attrs.field(init=False)

    @_param.default
    def _encoded(self) -> bytes:
        return self.param.encode("utf-8")

    def read(self, context: IHTTPRoutingContext) -> str | None:
        """
        :returns: the session id the request carries (a URL parameter
            percent-decoded), or C{None}.
        """
        value = context.cookie(self.cookie)
        if value:
            return value.strip('"') or None
        if not self.url:
            return None
        target: bytes = context.target
        path, _, query = target.split(b"#", 1)[0].partition(b"?")
        raw = None
        for place in self.url:
            if place == "path":
                raw = _path_parameter(path, self._param)
            else:
                raw = _query_parameter(query, self._param)
            if raw is not None:
                break
        if not raw:
            return None
        return unquote_to_bytes(raw).decode("utf-8", "replace")


def read_session_id_options(reader: OptionReader) -> SessionIdReader:
    """
    Read C{cookie} (default C{JSESSIONID}), C{param} (default
    C{jsessionid}) and C{param_in} (default C{["path", "query"]}).
    """
    cookie = reader.token("cookie", "JSESSIONID")
    param = reader.token("param", "jsessionid")
    places = reader.strings("param_in", URL_PLACES)
    if not set(places) <= set(URL_PLACES) or len(set(places)) != len(places):
        raise reader.fail(
            "param_in", 'an array of "path" and/or "query" (each at most once)'
        )
    return SessionIdReader(cookie, param, places)
