"""
C{strategy = "app-cookie"}: persistence that follows the application's
session cookie (follow, learn or prefix).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin

from stickyproxy.config._options import OptionReader
from stickyproxy.interfaces import (
    IBackendPool,
    IPersistenceStrategy,
    IProxySecrets,
    IRoutingContext,
    IStickTable,
    IStickTableStore,
    IStickTableStrategy,
    IStoreStrategyFactory,
)
from stickyproxy.model import Backend
from stickyproxy.persistence._affinity import late_backend, read_table_options
from stickyproxy.persistence._proxycookie import (
    BackendTokens,
    ProxyCookie,
    _http,
    read_keys,
    read_proxy_cookie,
)
from stickyproxy.persistence._secrets import StoreFactory
from stickyproxy.persistence._sessionid import (
    SessionIdReader,
    read_session_id_options,
)
from stickyproxy.persistence._signing import (
    TOKEN_SIZE,
    b64decode,
    b64encode,
)

#: The separator between a backend token and the application's value.
PREFIX_SEPARATOR = "~"
_PREFIX_LENGTH = len(b64encode(bytes(TOKEN_SIZE)))


@implementer(IPersistenceStrategy)
@attrs.define(eq=False)
class AppCookieFollow:
    """
    C{app-cookie}, C{mode = "follow"}: the proxy issues its own signed
    cookie only when the application sets its session cookie, with the
    same lifetime (which the proxy enforces itself, since the expiry is in
    the signed value), and deletes it when the application deletes or
    expires its cookie.  A request without the application's session id
    (in its cookie, or in the URL when C{session} looks there) is not
    bound: its session is gone.  A client moved to another backend gets
    its cookie rewritten, with the lifetime it had.
    """

    cookie: ProxyCookie
    session: SessionIdReader
    name = "app-cookie"

    def lookup(self, context: IRoutingContext) -> Backend | None:
        http = _http(context)
        found = self.cookie.lookup(http)
        if found is None or self.session.read(http) is None:
            return None
        return found.backend

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        http = _http(context)
        now = self.cookie.clock.seconds()
        found = self.cookie.read(http, now)
        session = None if found is None else found.payload.session
        set_cookies = http.response_cookies(self.session.cookie)
        if set_cookies:
            app = set_cookies[-1]
            if app.deletes(now):
                self.cookie.delete(http)
                if session is not None:
                    self.cookie.forget(session)
                return
            payload = self.cookie.new_payload(
                backend, now, app.expires_at(now), session
            )
            self.cookie.issue(http, payload, backend, now)
            return
        if found is None or self.session.read(http) is None:
            return
        if found.backend.name != backend.name:
            payload = self.cookie.new_payload(
                backend, now, found.payload.expires, session
            )
            self.cookie.issue(http, payload, backend, now)
        elif not found.current:
            self.cookie.issue(http, found.payload, backend, now)
        else:
            self.cookie.touch(found.payload.session, backend)

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


def _table_key(value: str) -> bytes:
    """
    :returns: the stick-table key of a session id (encoded as latin-1,
        surrounding double quotes ignored, as L{SessionIdReader} does).
    """
    return value.strip('"').encode("latin-1", "replace")


@implementer(IStickTableStrategy)
@attrs.define(eq=False)
class AppCookieLearn:
    """
    C{app-cookie}, C{mode = "learn"}: a stick table maps the application
    cookie's value to the backend that set it (learned from the response's
    C{Set-Cookie}), and requests carrying that value go there, in the
    cookie or, when C{session} looks there, in the URL (URL rewriting).

    Each response refreshes the binding of the session it served, so the
    idle C{timeout} counts from the last response; a known session served
    elsewhere (a redispatch) is bound to where it went.  A session the
    application replaces or deletes is forgotten at once.  Values the
    application never set are not learned.
    """

    pool: IBackendPool
    table: IStickTable
    session: SessionIdReader
    clock: IReactorTime
    name = "app-cookie"

    def lookup(
        self, context: IRoutingContext
    ) -> Backend | None | Deferred[Backend | None]:
        value = self.session.read(_http(context))
        if not value:
            return None
        name = self.table.get(_table_key(value))
        if isinstance(name, str):
            return self.pool.get(name)
        return None if name is None else late_backend(self.pool, name)

    def key_text(self, key: bytes) -> str:
        return key.decode("latin-1")

    def key_bytes(self, text: str) -> bytes:
        return text.strip('"').encode("latin-1")

    def _touch(self, key: bytes, backend: str) -> None:
        self.table.bind(key, backend)
        self.table.release(key)

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        http = _http(context)
        value = self.session.read(http)
        old = _table_key(value) if value else None
        set_cookies = http.response_cookies(self.session.cookie)
        if set_cookies:
            app = set_cookies[-1]
            new = None
            if app.value and not app.deletes(self.clock.seconds()):
                new = _table_key(app.value)
                self._touch(new, backend.name)
            if old is not None and old != new:
                self.table.forget(old)
        elif old is not None:
            self.table.refresh(old, backend.name)

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


@implementer(IPersistenceStrategy)
@attrs.define(eq=False)
class AppCookiePrefix:
    """
    C{app-cookie}, C{mode = "prefix"}: the application cookie's value is
    prefixed with the backend's opaque token and C{~} in responses (its
    attributes untouched), and the prefix is taken off again in requests.

    A value that has the prefix's shape (8 base64url characters, then
    C{~}) loses it on the way in even when the token is unknown (forged,
    from a removed backend, or made with a key no longer configured): the
    application only ever set the bare value, so that is what it must get
    back.  Such a client is balanced afresh, as C{invalid}.  A value without the shape
    (set before the proxy was there, or by script) is forwarded unchanged,
    and the client is balanced afresh too.
    """

    pool: IBackendPool
    tokens: BackendTokens
    app_cookie: str
    clock: IReactorTime
    name = "app-cookie"

    def lookup(self, context: IRoutingContext) -> Backend | None:
        http = _http(context)
        value = http.cookie(self.app_cookie)
        if value is None or not value.startswith(PREFIX_SEPARATOR, _PREFIX_LENGTH):
            return None
        token = b64decode(value[:_PREFIX_LENGTH])
        if token is None:
            return None  # not the prefix's shape after all: never ours
        http.replace_cookie(self.app_cookie, value[_PREFIX_LENGTH + 1 :])
        backend = self.tokens.backend(token)
        if backend is None:
            http.invalid = self.name
        return backend

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        http = _http(context)
        now = self.clock.seconds()
        prefix = b64encode(self.tokens.token(backend)) + PREFIX_SEPARATOR
        for cookie in http.response_cookies(self.app_cookie):
            if cookie.value and not cookie.deletes(now):
                prefixed = cookie.with_value(prefix + cookie.value)
                http.replace_response_cookie(cookie, prefixed)

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


@implementer(IPlugin, IStoreStrategyFactory)
@attrs.frozen
class AppCookieFactory(StoreFactory):
    """
    C{strategy = "app-cookie"}: persistence that follows the application's
    session cookie.
    """

    name: str = "app-cookie"
    modes: frozenset[str] = frozenset({"http"})
    description: str = (
        "the application's session cookie: followed, learned, or prefixed"
    )

    def build_stored(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
        tables: IStickTableStore | None,
    ) -> IPersistenceStrategy:
        with OptionReader(options, path) as reader:
            mode = reader.string(
                "mode", "follow", choices=("follow", "learn", "prefix")
            )
            reader.elsewhere(
                'expected only with mode = "learn" (the others keep no table)',
                "store",
            )
            if mode == "prefix":
                reader.elsewhere(
                    'expected only with mode = "follow" or "learn" (a prefixed '
                    "session id is only ever in the cookie)",
                    "param",
                    "param_in",
                )
                app_cookie = reader.token("cookie", "JSESSIONID")
                purpose = f"{self.name} prefix\0{app_cookie}".encode()
                keys = read_keys(reader, self.name, secrets, purpose)
                return AppCookiePrefix(
                    pool, BackendTokens(pool, keys), app_cookie, reactor
                )
            session = read_session_id_options(reader)
            if mode == "learn":
                table = read_table_options(reader, reactor, pool, self.name, tables)
                return AppCookieLearn(pool, table, session, reactor)
            cookie = read_proxy_cookie(reader, pool, reactor, self.name, secrets)
            if cookie.name == session.cookie:
                raise reader.fail(
                    "name",
                    f"a cookie name other than the application's ({session.cookie})",
                )
            return AppCookieFollow(cookie, session)


app_cookie = AppCookieFactory()
