"""
C{strategy = "route"}: the backend's route after the session id
(C{JSESSIONID=abc123.node2}), as Tomcat's C{jvmRoute} issues it.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin

from stickyproxy.config._options import OptionReader
from stickyproxy.interfaces import (
    IBackendPool,
    IPersistenceStrategy,
    IPersistenceStrategyFactory,
    IRoutingContext,
)
from stickyproxy.model import Backend
from stickyproxy.persistence._proxycookie import _http
from stickyproxy.persistence._sessionid import (
    SessionIdReader,
    read_session_id_options,
)


@implementer(IPersistenceStrategy)
@attrs.define(eq=False)
class RouteStrategy:
    """
    C{route}: the session id carries the backend's route after its last
    separator (C{JSESSIONID=abc123.node2}), wherever C{session} finds it
    (the cookie, else the URL: C{/cart;jsessionid=abc123.node2}).  The
    application issues the routes: nothing is recorded.
    """

    pool: IBackendPool
    session: SessionIdReader = SessionIdReader()
    separator: str = "."
    name = "route"
    _routes: dict[str, Backend] = attrs.field(init=False, factory=dict)
    _of: object = attrs.field(init=False, default=None)

    def _backend(self, route: str) -> Backend | None:
        # The pool replaces its backends tuple whenever one is added or
        # removed: one identity check per lookup follows that.
        if self._of is not self.pool.backends:
            self._of = self.pool.backends
            self._routes = {}
            for backend in self.pool.backends:
                self._routes.setdefault(backend.route or backend.name, backend)
        return self._routes.get(route)

    def lookup(self, context: IRoutingContext) -> Backend | None:
        session = self.session.read(_http(context))
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
            session = read_session_id_options(reader)
            separator = reader.string("separator", ".")
            if not separator or any(c in separator for c in ';,=&? "\t'):
                raise reader.fail(
                    "separator",
                    'a non-empty string without spaces or any of ;,=&?"',
                )
            return RouteStrategy(pool, session, separator)


route = RouteFactory()
