"""
The built-in persistence strategies that fit HTTP frontends.

C{cookie}
    The proxy inserts its own signed cookie, naming the backend
    (L{CookieInsert}).
C{app-cookie}
    Persistence follows the application's session cookie: the proxy issues
    its own cookie only while the application's session lives
    (L{AppCookieFollow}), learns which backend issued which session
    (L{AppCookieLearn}), or prefixes the session cookie's value with the
    backend (L{AppCookiePrefix}).
C{route}
    The session id carries the backend's route after a separator, as
    Tomcat's C{jvmRoute} does (L{RouteStrategy}).
C{header}
    Affinity on a request header's value (L{HeaderKey}, hashed or learned).

Every strategy reads the request only through L{IHTTPRoutingContext},
whose cookies are the ones the client sent, whatever a strategy took off
the forwarded request: the router asks every strategy again when it
retries a failed connect, and the answer must not change because the
first answer took the cookie off.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import cast
from urllib.parse import unquote_to_bytes

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.plugin import IPlugin

from ._affinity import StickTable
from ._backends import Backend
from ._httpcontext import (
    IHTTPRoutingContext,
    SetCookie,
    delete_cookie,
    make_set_cookie,
)
from ._options import ConfigError, OptionReader
from ._signing import (
    TOKEN_SIZE,
    CookieSigner,
    SessionPayload,
    b64decode,
    b64encode,
    backend_token,
    backend_tokens,
)
from ._strategies import read_affinity, read_table_options
from .interfaces import (
    IBackendPool,
    IPersistenceStrategy,
    IPersistenceStrategyFactory,
    IRoutingContext,
    IStickTable,
)

log = Logger()

_ATTRIBUTE_VALUE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")  # no space, ";" or CTLs
_DIRECTIVE = re.compile(rb'(?:[^,"]|"(?:[^"\\]|\\.)*")+')

#: How many checked cookie values a proxy cookie remembers.
CHECKED_VALUES = 10_000
#: How many sessions the session-counting table of a proxy cookie keeps.
SESSION_TABLE_SIZE = 100_000
#: Its idle timeout when the cookie has no C{max_idle}.
SESSION_TABLE_TIMEOUT = 1800.0
#: The most seconds between two refreshes of a cookie with C{max_idle}.
MAX_REFRESH_INTERVAL = 60.0
#: The separator between a backend token and the application's value.
PREFIX_SEPARATOR = "~"
_PREFIX_LENGTH = len(b64encode(bytes(TOKEN_SIZE)))


def _http(context: IRoutingContext) -> IHTTPRoutingContext:
    """
    :returns: C{context} as an L{IHTTPRoutingContext}: HTTP strategies only
        fit HTTP frontends (the configuration refuses others), which build
        nothing else, so this is a cast, not an adaptation (which would cost
        more than a whole cookie check).
    """
    return cast(IHTTPRoutingContext, context)


def mark_private(context: IHTTPRoutingContext) -> None:
    """
    Keep shared caches from storing a response that sets a cookie: its
    C{Cache-Control} gets C{private} (and loses C{public} and any
    C{private="field"} form); a response without one gets
    C{Cache-Control: private}.
    """
    values = context.response_header_values(b"cache-control")
    if not values:
        context.add_response_header(b"cache-control", b"private")
        return
    directives = [
        match.group().strip()
        for value in values
        for match in _DIRECTIVE.finditer(value)
    ]
    kept = [
        directive
        for directive in directives
        if directive
        and directive.split(b"=", 1)[0].strip().lower() not in (b"public", b"private")
    ]
    context.set_response_header(b"cache-control", b", ".join([b"private", *kept]))


@attrs.define(eq=False)
class BackendTokens:
    """
    The opaque tokens that name backends in proxy-issued values: made with
    the first key, recognised under every key.
    """

    pool: IBackendPool
    keys: tuple[bytes, ...] = attrs.field(repr=False)
    _known: dict[bytes, str] = attrs.field(init=False, factory=dict)
    _made: dict[str, bytes] = attrs.field(init=False, factory=dict)
    _of: object = attrs.field(init=False, default=None)

    def _refresh(self) -> None:
        # A pool's backends are fixed, but check cheaply in case one is not.
        if self._of is not self.pool.backends:
            self._of = self.pool.backends
            names = [backend.name for backend in self.pool.backends]
            self._known = backend_tokens(self.keys, names)
            self._made.clear()

    def token(self, backend: Backend) -> bytes:
        """
        :returns: the token that names C{backend} in new values.
        """
        self._refresh()
        token = self._made.get(backend.name)
        if token is None:
            token = self._made[backend.name] = backend_token(self.keys[0], backend.name)
        return token

    def backend(self, token: bytes) -> Backend | None:
        """
        :returns: the backend C{token} names, or C{None} when no backend of
            the pool has that token under any key.
        """
        self._refresh()
        name = self._known.get(token)
        return None if name is None else self.pool.get(name)


@attrs.frozen
class CookieAttributes:
    """
    The name and attributes of a cookie the proxy sets.

    :ivar secure: C{None} to set C{Secure} when the client came over TLS.
    """

    name: str
    path: str | None = "/"
    domain: str | None = None
    secure: bool | None = None
    httponly: bool = True
    samesite: str | None = "Lax"

    def make(
        self, context: IHTTPRoutingContext, value: str, max_age: float | None
    ) -> SetCookie:
        """
        :returns: the C{Set-Cookie} that gives the client C{value}; a
            browser-session cookie when C{max_age} is C{None}.
        """
        secure = bool(context.secure) if self.secure is None else self.secure
        return make_set_cookie(
            self.name,
            value,
            max_age=max_age,
            domain=self.domain,
            path=self.path,
            secure=secure,
            httponly=self.httponly,
            samesite=self.samesite,
        )

    def deleting(self) -> SetCookie:
        """
        :returns: the C{Set-Cookie} that makes the client forget it.
        """
        return delete_cookie(self.name, path=self.path, domain=self.domain)


@attrs.frozen
class FoundCookie:
    """
    A valid proxy cookie found on a request, and the backend it names.

    :ivar current: it is signed, and names its backend, with the first key
        (else it is re-issued, so that clients move to the new key after a
        rotation).
    """

    payload: SessionPayload
    backend: Backend
    current: bool = True


@attrs.define(eq=False)
class ProxyCookie:
    """
    The proxy's own signed cookie, shared by C{cookie} and C{app-cookie}'s
    C{follow} mode: reading and checking it, taking it off requests,
    issuing it, and counting the sessions it carries.

    :ivar max_idle: seconds after the last refresh when a value stops
        being honoured, or C{None}.
    :ivar max_life: seconds after it was issued, or C{None}.
    :ivar sessions: session id -> backend, touched on every request that
        carries a valid value: the pool counts these as sticky sessions.
    """

    pool: IBackendPool
    clock: IReactorTime
    attributes: CookieAttributes
    signer: CookieSigner
    tokens: BackendTokens
    sessions: StickTable
    strategy: str
    indirect: bool = True
    nocache: bool = True
    max_idle: float | None = None
    max_life: float | None = None
    # What each value seen lately proved to be (checking costs two HMACs and
    # base64 both ways; a sticky client sends the same value every time).
    _checked: dict[str, FoundCookie | None] = attrs.field(init=False, factory=dict)

    @property
    def name(self) -> str:
        """
        The cookie's name.
        """
        return self.attributes.name

    def _check(self, value: str) -> FoundCookie | None:
        """
        What a cookie value says, whatever the time: its payload and backend
        if the value is ours and names a backend of the pool, else C{None}.
        """
        checked = self._checked
        if value in checked:
            return checked[value]
        signed = self.signer.verify(value)
        payload = None if signed is None else SessionPayload.unpack(signed)
        found = None
        if payload is not None:
            backend = self.tokens.backend(payload.backend)
            if backend is not None:
                assert signed is not None
                current = self.signer.sign(signed) == value and (
                    payload.backend == self.tokens.token(backend)
                )
                found = FoundCookie(payload, backend, current)
        if len(checked) >= CHECKED_VALUES:
            checked.clear()  # cheaper than LRU bookkeeping on every hit
        checked[value] = found
        return found

    def read(
        self, context: IHTTPRoutingContext, now: float, report: bool = False
    ) -> FoundCookie | None:
        """
        Check the cookie the request came with.

        :param report: log why a cookie is not honoured (once per request:
            L{lookup} does).
        :returns: its payload and backend, or C{None} when there is none or
            it is forged, garbled, expired, or names no backend of the pool.
        """
        value = context.cookie(self.name)
        if value is None:
            return None
        found = self._check(value)
        if found is None:
            if report:
                self._report(context, value)
            return None
        payload = found.payload
        if (
            (payload.expires is not None and now >= payload.expires)
            or (self.max_life is not None and now - payload.issued >= self.max_life)
            or (self.max_idle is not None and now - payload.last_seen >= self.max_idle)
        ):
            return None
        return found

    def _report(self, context: IHTTPRoutingContext, value: str) -> None:
        signed = self.signer.verify(value)
        payload = None if signed is None else SessionPayload.unpack(signed)
        if payload is None:
            log.debug(
                "{strategy}: cookie {name} from {client} is not ours: ignored",
                strategy=self.strategy,
                name=self.name,
                client=context.client_host,
            )
        else:
            log.warn(
                "{strategy}: cookie {name} from {client} names a backend pool "
                "{pool} does not have: the client is balanced afresh",
                strategy=self.strategy,
                name=self.name,
                client=context.client_host,
                pool=self.pool.name,
            )

    def lookup(self, context: IHTTPRoutingContext) -> FoundCookie | None:
        """
        L{read} the cookie and, when C{indirect}, take it off the request
        (valid or not) so the backend never sees it.
        """
        found = self.read(context, self.clock.seconds(), report=True)
        if self.indirect:
            context.remove_cookie(self.name)
        return found

    def new_payload(
        self,
        backend: Backend,
        now: float,
        expires: float | None,
        session: bytes | None = None,
    ) -> SessionPayload:
        """
        :returns: the payload binding a session (a new one unless given) to
            C{backend} from C{now}.
        """
        return SessionPayload(
            session=os.urandom(6) if session is None else session,
            backend=self.tokens.token(backend),
            issued=int(now),
            last_seen=int(now),
            expires=None if expires is None else math.ceil(expires),
        )

    def issue(
        self,
        context: IHTTPRoutingContext,
        payload: SessionPayload,
        backend: Backend,
        now: float,
    ) -> None:
        """
        Give the client a cookie carrying C{payload} (lasting until its
        C{expires}, or a browser-session cookie) for C{backend}, signed and
        tokened with the first key, and count its session.
        """
        token = self.tokens.token(backend)
        if payload.backend != token:
            payload = attrs.evolve(payload, backend=token)
        # The expiry was rounded up to a second: rounding down here gives the
        # lifetime as configured, not a second more.
        max_age = None if payload.expires is None else int(payload.expires - now)
        value = self.signer.sign(payload.pack())
        self._send(context, self.attributes.make(context, value, max_age))
        self.touch(payload.session, backend)

    def delete(self, context: IHTTPRoutingContext) -> None:
        """
        Make the client forget the cookie.
        """
        self._send(context, self.attributes.deleting())

    def _send(self, context: IHTTPRoutingContext, cookie: SetCookie) -> None:
        context.add_response_header(b"set-cookie", cookie.render())
        if self.nocache:
            mark_private(context)

    def touch(self, session: bytes, backend: Backend) -> None:
        """
        Count C{session} as a live session of C{backend} from now on.
        """
        self.sessions.bind(session, backend.name)
        self.sessions.release(session)

    def forget(self, session: bytes) -> None:
        """
        Stop counting C{session}.
        """
        self.sessions.forget(session)


@implementer(IPersistenceStrategy)
@attrs.define(eq=False)
class CookieInsert:
    """
    C{cookie}: the proxy inserts a signed cookie naming the backend.

    A client without a valid cookie for the backend that served it (a new
    client, a forged, garbled or expired cookie, or one moved to another
    backend) is sent a new cookie.  With C{max_idle}, a valid cookie is
    also re-sent with a fresh last-seen time once that time is older than
    L{refresh_after}; one made with a key that is no longer first is
    re-sent under the first key, so clients move over after a rotation.

    :ivar max_age: the cookie's lifetime in seconds (renewed with each
        refresh), or C{None} for a browser-session cookie.
    """

    cookie: ProxyCookie
    max_age: float | None = None
    name = "cookie"

    @property
    def refresh_after(self) -> float | None:
        """
        Seconds after which a valid cookie's last-seen time is refreshed:
        a quarter of C{max_idle}, but at most a minute; C{None} without
        C{max_idle}.  A client that comes back within C{max_idle} minus
        this interval is therefore always kept.
        """
        max_idle = self.cookie.max_idle
        return None if max_idle is None else min(max_idle / 4, MAX_REFRESH_INTERVAL)

    def _expires(self, now: float, issued: float) -> int | None:
        if self.max_age is None:
            return None
        expires = now + self.max_age
        if self.cookie.max_life is not None:
            expires = min(expires, issued + self.cookie.max_life)
        return math.ceil(expires)

    def lookup(self, context: IRoutingContext) -> Backend | None:
        found = self.cookie.lookup(_http(context))
        return None if found is None else found.backend

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        http = _http(context)
        now = self.cookie.clock.seconds()
        found = self.cookie.read(http, now)
        if found is not None and found.backend.name == backend.name:
            payload = found.payload
            refresh = self.refresh_after
            if refresh is not None and now - payload.last_seen >= refresh:
                payload = attrs.evolve(
                    payload,
                    last_seen=int(now),
                    expires=self._expires(now, payload.issued),
                )
                self.cookie.issue(http, payload, backend, now)
            elif not found.current:
                self.cookie.issue(http, payload, backend, now)
            else:
                self.cookie.touch(payload.session, backend)
            return
        # New client, bad cookie, or redispatch: bind afresh.  A moved
        # client keeps its session id, so the old backend's count drops.
        session = None if found is None else found.payload.session
        payload = self.cookie.new_payload(
            backend, now, self._expires(now, now), session
        )
        self.cookie.issue(http, payload, backend, now)

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


@implementer(IPersistenceStrategy)
@attrs.define(eq=False)
class AppCookieFollow:
    """
    C{app-cookie}, C{mode = "follow"}: the proxy issues its own signed
    cookie only when the application sets its session cookie, with the
    same lifetime (which the proxy enforces itself, since the expiry is in
    the signed value), and deletes it when the application deletes or
    expires its cookie.  A request without the application's cookie is
    not bound: its session is gone.  A client moved to another backend
    gets its cookie rewritten, with the lifetime it had.
    """

    cookie: ProxyCookie
    app_cookie: str
    name = "app-cookie"

    def lookup(self, context: IRoutingContext) -> Backend | None:
        http = _http(context)
        found = self.cookie.lookup(http)
        if found is None or http.cookie(self.app_cookie) is None:
            return None
        return found.backend

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        http = _http(context)
        now = self.cookie.clock.seconds()
        found = self.cookie.read(http, now)
        session = None if found is None else found.payload.session
        set_cookies = http.response_cookies(self.app_cookie)
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
        if found is None or http.cookie(self.app_cookie) is None:
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
    :returns: the stick-table key of a cookie value (decoded as latin-1).
    """
    return value.encode("latin-1", "replace")


@implementer(IPersistenceStrategy)
@attrs.define(eq=False)
class AppCookieLearn:
    """
    C{app-cookie}, C{mode = "learn"}: a stick table maps the application
    cookie's value to the backend that set it (learned from the response's
    C{Set-Cookie}), and requests carrying that value go there.

    Each response refreshes the binding of the session it served, so the
    idle C{timeout} counts from the last response; a known session served
    elsewhere (a redispatch) is bound to where it went.  A session the
    application replaces or deletes is unbound at once (L{IStickTable} has
    no removal, so it is bound to a name no backend has, and expires as
    usual).  Values the application never set are not learned.
    """

    pool: IBackendPool
    table: IStickTable
    app_cookie: str
    clock: IReactorTime
    name = "app-cookie"

    def lookup(self, context: IRoutingContext) -> Backend | None:
        value = _http(context).cookie(self.app_cookie)
        if not value:
            return None
        name = self.table.get(_table_key(value))
        return None if not name else self.pool.get(name)

    def _touch(self, key: bytes, backend: str) -> None:
        self.table.bind(key, backend)
        self.table.release(key)

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        http = _http(context)
        value = http.cookie(self.app_cookie)
        old = _table_key(value) if value else None
        set_cookies = http.response_cookies(self.app_cookie)
        if set_cookies:
            app = set_cookies[-1]
            new = None
            if app.value and not app.deletes(self.clock.seconds()):
                new = _table_key(app.value)
                self._touch(new, backend.name)
            if old is not None and old != new:
                self.table.forget(old)
        elif old is not None and self.table.get(old):
            self._touch(old, backend.name)

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
    back.  Such a client is balanced afresh.  A value without the shape
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
            return None
        http.replace_cookie(self.app_cookie, value[_PREFIX_LENGTH + 1 :])
        return self.tokens.backend(token)

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
        return self._backend(route) if route else None

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        pass

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


def _header_value(context: IRoutingContext, header: bytes) -> bytes | None:
    """
    :returns: the request header's first value, stripped; C{None} when it
        is absent or empty.
    """
    value = _http(context).header(header)
    if value is None:
        return None
    value = value.strip()
    return value or None


@attrs.frozen
class HeaderKey:
    """
    The key of header persistence: the request header's value.
    """

    header: bytes

    def __call__(self, context: IRoutingContext) -> bytes | None:
        return _header_value(context, self.header)


def _attribute(reader: OptionReader, name: str, default: str | None) -> str | None:
    """
    Read a cookie attribute's value (optional when C{default} is C{None}).
    """
    if default is None:
        value = reader.optional_string(name)
    else:
        value = reader.string(name, default)
    if value is not None and not _ATTRIBUTE_VALUE.fullmatch(value):
        raise reader.fail(name, "a value without spaces, ';' or control characters")
    return value


def _read_secure(reader: OptionReader) -> bool | None:
    """
    Read C{secure}: C{true}, C{false}, or C{"auto"} (returned as C{None}).
    """
    if not reader.has("secure"):
        reader.string("secure", "auto")
        return None
    try:
        return reader.boolean("secure")
    except ConfigError:
        pass
    try:
        reader.string("secure", choices=("auto",))
    except ConfigError:
        raise reader.fail("secure", "'auto', true or false") from None
    return None


def read_cookie_attributes(reader: OptionReader, name: str) -> CookieAttributes:
    """
    Read the options of a cookie the proxy sets: C{name} (default C{name}),
    C{path}, C{domain}, C{secure}, C{httponly} and C{samesite}.
    """
    path = _attribute(reader, "path", "/")
    if path is not None and not path.startswith("/"):
        raise reader.fail("path", "a path starting with '/'")
    attributes = CookieAttributes(
        name=reader.token("name", name),
        path=path,
        domain=_attribute(reader, "domain", None),
        secure=_read_secure(reader),
        httponly=reader.boolean("httponly", True),
        samesite=reader.string("samesite", "Lax", choices=("Lax", "Strict", "None")),
    )
    if attributes.samesite == "None" and attributes.secure is False:
        raise reader.fail(
            "secure",
            'true or "auto" with samesite = "None" (browsers refuse '
            "SameSite=None cookies without Secure)",
        )
    return attributes


def read_keys(reader: OptionReader, strategy: str) -> tuple[bytes, ...]:
    """
    Read C{keys}, the secrets that sign (the first) and verify (all); when
    absent, generate one and warn that proxies will then disagree.
    """
    if not reader.has("keys"):
        reader.strings("keys", ())
        log.warn(
            "{strategy} strategy at {path} has no keys: a random key was "
            "generated, so its cookies are lost when the proxy restarts and "
            "several proxies do not recognise each other's; set keys = [...] "
            "to the same secret on every proxy",
            strategy=strategy,
            path=reader.path,
        )
        return (os.urandom(32),)
    keys = reader.strings("keys")
    if not keys or not all(keys):
        raise reader.fail("keys", "a non-empty array of non-empty strings")
    if any(len(key.encode("utf-8")) < 16 for key in keys):
        log.warn(
            "{strategy} strategy at {path}: a key shorter than 16 bytes is "
            "easy to guess; use long random secrets",
            strategy=strategy,
            path=reader.path,
        )
    return tuple(key.encode("utf-8") for key in keys)


def read_proxy_cookie(
    reader: OptionReader,
    pool: IBackendPool,
    reactor: IReactorTime,
    strategy: str,
    max_idle: float | None = None,
    max_life: float | None = None,
) -> ProxyCookie:
    """
    Read everything about the proxy's own cookie (attributes, C{keys},
    C{indirect}, C{nocache}) and register its session count with the pool.
    """
    attributes = read_cookie_attributes(reader, "STICKY")
    keys = read_keys(reader, strategy)
    sessions = StickTable(
        clock=reactor,
        timeout=max_idle if max_idle is not None else SESSION_TABLE_TIMEOUT,
        size=SESSION_TABLE_SIZE,
    )
    pool.add_session_source(sessions.count)
    return ProxyCookie(
        pool=pool,
        clock=reactor,
        attributes=attributes,
        signer=CookieSigner(keys, purpose=b"cookie\0" + attributes.name.encode()),
        tokens=BackendTokens(pool, keys),
        sessions=sessions,
        strategy=strategy,
        indirect=reader.boolean("indirect", True),
        nocache=reader.boolean("nocache", True),
        max_idle=max_idle,
        max_life=max_life,
    )


@implementer(IPlugin, IPersistenceStrategyFactory)
@attrs.frozen
class CookieFactory:
    """
    C{strategy = "cookie"}: a signed cookie the proxy inserts.
    """

    name: str = "cookie"
    modes: frozenset[str] = frozenset({"http"})
    description: str = "a signed cookie the proxy inserts, naming the backend"

    def build(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        reader = OptionReader(options, path)
        max_age = reader.optional_number("max_age")
        max_idle = reader.optional_number("max_idle")
        max_life = reader.optional_number("max_life")
        cookie = read_proxy_cookie(
            reader, pool, reactor, self.name, max_idle=max_idle, max_life=max_life
        )
        reader.finish()
        return CookieInsert(cookie, max_age)


@implementer(IPlugin, IPersistenceStrategyFactory)
@attrs.frozen
class AppCookieFactory:
    """
    C{strategy = "app-cookie"}: persistence that follows the application's
    session cookie.
    """

    name: str = "app-cookie"
    modes: frozenset[str] = frozenset({"http"})
    description: str = (
        "the application's session cookie: followed, learned, or prefixed"
    )

    def build(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        reader = OptionReader(options, path)
        mode = reader.string("mode", "follow", choices=("follow", "learn", "prefix"))
        app_cookie = reader.token("cookie", "JSESSIONID")
        strategy: IPersistenceStrategy
        if mode == "learn":
            table = read_table_options(reader, reactor)
            pool.add_session_source(table.count)
            strategy = AppCookieLearn(pool, table, app_cookie, reactor)
        elif mode == "prefix":
            keys = read_keys(reader, self.name)
            strategy = AppCookiePrefix(
                pool, BackendTokens(pool, keys), app_cookie, reactor
            )
        else:
            cookie = read_proxy_cookie(reader, pool, reactor, self.name)
            if cookie.name == app_cookie:
                raise reader.fail(
                    "name", f"a cookie name other than the application's ({app_cookie})"
                )
            strategy = AppCookieFollow(cookie, app_cookie)
        reader.finish()
        return strategy


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
        reader = OptionReader(options, path)
        cookie = reader.token("cookie", "JSESSIONID")
        param = reader.token("param", "jsessionid")
        separator = reader.string("separator", ".")
        if not separator or any(c in separator for c in ';,=&? "\t'):
            raise reader.fail(
                "separator",
                'a non-empty string without spaces or any of ;,=&?"',
            )
        reader.finish()
        return RouteStrategy(pool, cookie, param, separator)


@implementer(IPlugin, IPersistenceStrategyFactory)
@attrs.frozen
class HeaderFactory:
    """
    C{strategy = "header"}: affinity on a request header's value.
    """

    name: str = "header"
    modes: frozenset[str] = frozenset({"http"})
    description: str = "a request header's value; consistent hash or table"

    def build(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        reader = OptionReader(options, path)
        key = HeaderKey(reader.token("header").lower().encode("ascii"))
        strategy = read_affinity(self.name, reader, pool, reactor, key)
        reader.finish()
        return strategy


cookie = CookieFactory()
app_cookie = AppCookieFactory()
route = RouteFactory()
header = HeaderFactory()
