"""
C{strategy = "route"}: the backend's route after the session id
(C{JSESSIONID=abc123.node2}), as Tomcat's C{jvmRoute} issues it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin

from stickyproxy.config._options import OptionReader
from stickyproxy.interfaces import (
    IBackendPool,
    IHTTPRoutingContext,
    IPersistenceStrategy,
    IPersistenceStrategyFactory,
    IRoutingContext,
)
from stickyproxy.model import Backend
from stickyproxy.persistence._proxycookie import _http


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


@implementer(IPersistenceStrategy)
@attrs.define(eq=False)
class RouteStrategy:
    """
    C{route}: the session id carries the backend's route after its last
    separator (C{JSESSIONID=abc123.node2}), in the cookie C{cookie}, or
    else in the path parameter or query parameter C{param}
    (C{/cart;jsessionid=abc123.node2}, C{/cart?jsessionid=abc123.node2}).
    The application issues the routes: nothing is recorded.
    """

    pool: IBackendPool
    cookie: str = "JSESSIONID"
    param: str = "jsessionid"
    separator: str = "."
    name = "route"
    _routes: dict[str, Backend] = attrs.field(init=False, factory=dict)
    _of: object = attrs.field(init=False, default=None)

    def session_id(self, context: IHTTPRoutingContext) -> str | None:
        """
        :returns: the session id the request carries, or C{None}.
        """
        value = context.cookie(self.cookie)
        if value:
            return value.strip('"')
        target: bytes = context.target
        path, _, query = target.split(b"#", 1)[0].partition(b"?")
        param = self.param.encode("utf-8")
        raw = _path_parameter(path, param)
        if raw is None:
            raw = _query_parameter(query, param)
        if not raw:
            return None
        return unquote_to_bytes(raw).decode("utf-8", "replace")

    def _backend(self, route: str) -> Backend | None:
        if self._of is not self.pool.backends:
            self._of = self.pool.backends
            self._routes = {}
            for backend in self.pool.backends:
                self._routes.setdefault(backend.route or backend.name, backend)
        return self._routes.get(route)

    def lookup(self, context: IRoutingContext) -> Backend | None:
        session = self.session_id(_http(context))
        if session is None or self.separator not in session:
            return None
        route = session.rpartition(self.separator)[2]
        backend = self._backend(route) if route else None
        if backend is None:
            context.invalid = self.name
        return backend

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        pass

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


@implementer(IPlugin, IPersistenceStrategyFactory)
@attrs.frozen
class RouteFactory:
    """
    C{strategy = "route"}: the route suffix of the application's session id.
    """

    name: str = "route"
    modes: frozenset[str] = frozenset({"http"})
    description: str = (
        "the route after the session id (JSESSIONID=abc.node1), "
        "in a cookie, path or query"
    )

    def build(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        with OptionReader(options, path) as reader:
            cookie = reader.token("cookie", "JSESSIONID")
            param = reader.token("param", "jsessionid")
            separator = reader.string("separator", ".")
            if not separator or any(c in separator for c in ';,=&? "\t'):
                raise reader.fail(
                    "separator",
                    'a non-empty string without spaces or any of ;,=&?"',
                )
            return RouteStrategy(pool, cookie, param, separator)


route = RouteFactory()
