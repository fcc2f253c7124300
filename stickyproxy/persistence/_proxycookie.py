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

import attrs

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stickyproxy.config._options import ConfigError, OptionReader
from stickyproxy.core._cookies import SetCookie, delete_cookie, make_set_cookie
from stickyproxy.interfaces import (
    IBackendPool,
    IHTTPRoutingContext,
    IProxySecrets,
    IRoutingContext,
    IStickTable,
)
from stickyproxy.model import Backend
from stickyproxy.persistence._signing import (
    CookieSigner,
    SessionPayload,
    backend_token,
    backend_tokens,
)
from stickyproxy.persistence.tables._memory import StickTable

log = Logger()

_ATTRIBUTE_VALUE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")  # no space, ";" or CTLs
_DIRECTIVE = re.compile(rb'(?:[^,"]|"(?:[^"\\]|\\.)*")+')

#: How many checked cookie values a proxy cookie remembers.
CHECKED_VALUES = 10_000
#: How many sessions the session-counting table of a proxy cookie keeps.
SESSION_TABLE_SIZE = 100_000
#: Its idle timeout when the cookie has no lifetime that ends sessions sooner.
SESSION_TABLE_TIMEOUT = 1800.0
#: The most seconds between two refreshes of a cookie with C{max_idle}.
MAX_REFRESH_INTERVAL = 60.0


def _http(context: IRoutingContext) -> IHTTPRoutingContext:
    """
    :returns: C{context} as an L{IHTTPRoutingContext}: HTTP strategies only
        fit HTTP frontends (the configuration refuses others), which build
        nothing else, so this is a cast, not an adaptation (which would cost
        more than a whole cookie check), and not even L{typing.cast} (a call
        more, on every request).
    """
    return context  # type: ignore[return-value]


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
        # The pool replaces its backends tuple whenever one is added or
        # removed: one identity check per call follows that.
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


#: Why a cookie value is not honoured, whenever it is presented: it is not
#: signed by us (forged, garbled, another proxy's), or names a backend the
#: pool does not have.
NOT_OURS = "not ours"
UNKNOWN_BACKEND = "unknown backend"


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
    sessions: IStickTable
    strategy: str
    indirect: bool = True
    nocache: bool = True
    max_idle: float | None = None
    max_life: float | None = None
    # What each value seen lately proved to be (checking costs two HMACs and
    # base64 both ways; a sticky client sends the same value every time):
    # a valid cookie, or why it is not one.
    _checked: dict[str, FoundCookie | str] = attrs.field(init=False, factory=dict)
    _checked_for: object = attrs.field(init=False, default=None)  # pool.backends

    @property
    def name(self) -> str:
        """
        The cookie's name.
        """
        return self.attributes.name

    def _check(self, value: str) -> FoundCookie | str:
        """
        What a cookie value says, whatever the time: its payload and backend
        if the value is ours and names a backend of the pool, else why not
        (L{NOT_OURS} or L{UNKNOWN_BACKEND}).
        """
        checked = self._checked
        if self._checked_for is not self.pool.backends:
            # A backend came or went: a value may name one now, or none.
            self._checked_for = self.pool.backends
            checked.clear()
        found = checked.get(value)
        if found is not None:
            return found
        signed = self.signer.verify(value)
        payload = None if signed is None else SessionPayload.unpack(signed)
        found = NOT_OURS
        if payload is not None:
            backend = self.tokens.backend(payload.backend)
            if backend is None:
                found = UNKNOWN_BACKEND
            else:
                assert signed is not None
                current = self.signer.sign(signed) == value and (
                    payload.backend == self.tokens.token(backend)
                )
                found = FoundCookie(payload, backend, current)
        if len(checked) >= CHECKED_VALUES:
            checked.clear()  # cheaper than LRU bookkeeping on every hit
        checked[value] = found
        return found

    def read(self, context: IHTTPRoutingContext, now: float) -> FoundCookie | None:
        """
        Check the cookie the request came with.

        :returns: its payload and backend, or C{None} when there is none or
            it is forged, garbled, expired, or names no backend of the pool.
        """
        value = context.cookie(self.attributes.name)
        return None if value is None else self._honoured(context, value, now)

    def _honoured(
        self,
        context: IHTTPRoutingContext,
        value: str,
        now: float,
        report: bool = False,
    ) -> FoundCookie | None:
        """
        The cookie C{value}, if it is to be honoured at C{now}.

        :param report: log why a cookie is not honoured, and mark the
            context's binding L{invalid <IRoutingContext.invalid>} (once per
            request: L{lookup} does).
        """
        found = self._check(value)
        if isinstance(found, str):
            if report:
                self._report(context, found)
            return None
        payload = found.payload
        if (
            (payload.expires is not None and now >= payload.expires)
            or (self.max_life is not None and now - payload.issued >= self.max_life)
            or (self.max_idle is not None and now - payload.last_seen >= self.max_idle)
        ):
            if report:
                context.invalid = self.strategy
            return None
        return found

    def _report(self, context: IHTTPRoutingContext, why: str) -> None:
        context.invalid = self.strategy
        if why is NOT_OURS:
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
        name = self.attributes.name
        value = context.cookie(name)
        if value is None:
            return None
        if self.indirect:
            context.remove_cookie(name)
        return self._honoured(context, value, self.clock.seconds(), report=True)

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


def read_keys(
    reader: OptionReader, strategy: str, secrets: IProxySecrets, purpose: bytes
) -> tuple[bytes, ...]:
    """
    Read C{keys}, the secrets that sign (the first) and verify (all); when
    absent, the key of C{purpose} derived from the proxy's C{secrets}.
    """
    if not reader.has("keys"):
        reader.strings("keys", ())
        return (secrets.key(purpose),)
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
    secrets: IProxySecrets,
    max_idle: float | None = None,
    max_life: float | None = None,
    max_age: float | None = None,
) -> ProxyCookie:
    """
    Read everything about the proxy's own cookie (attributes, C{keys},
    C{indirect}, C{nocache}) and register its session count with the pool.
    Without C{keys}, its key is derived from C{secrets} for the strategy
    and the cookie's name.

    A session stops counting once it is surely over: when its client has
    not been seen for the shortest of the cookie's lifetimes (C{max_idle},
    C{max_age}, C{max_life}: a cookie not seen for that long has expired,
    whichever it is), or for L{SESSION_TABLE_TIMEOUT} without any.  A drain
    then ends that long after the last client stopped coming.

    :param max_age: the cookie's C{Max-Age}, for that count only.
    """
    attributes = read_cookie_attributes(reader, "STICKY")
    purpose = f"{strategy}\0{attributes.name}".encode()
    keys = read_keys(reader, strategy, secrets, purpose)
    lifetimes = [t for t in (max_idle, max_age, max_life) if t is not None]
    timeout = min(lifetimes, default=SESSION_TABLE_TIMEOUT)
    sessions = pool.count_sessions(
        reader.path,
        StickTable(clock=reactor, timeout=timeout, size=SESSION_TABLE_SIZE),
        timeout,
    )
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
