"""
C{strategy = "cookie"}: a signed cookie the proxy inserts, naming the
backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin

from stickyproxy.config import _bounds as bounds
from stickyproxy.config._options import OptionReader
from stickyproxy.interfaces import (
    IBackendPool,
    IKeyedStrategyFactory,
    IPersistenceStrategy,
    IProxySecrets,
    IRoutingContext,
)
from stickyproxy.model import Backend
from stickyproxy.persistence._proxycookie import (
    MAX_REFRESH_INTERVAL,
    ProxyCookie,
    _http,
    read_proxy_cookie,
)
from stickyproxy.persistence._secrets import KeyedFactory


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


@implementer(IPlugin, IKeyedStrategyFactory)
@attrs.frozen
class CookieFactory(KeyedFactory):
    """
    C{strategy = "cookie"}: a signed cookie the proxy inserts.
    """

    name: str = "cookie"
    modes: frozenset[str] = frozenset({"http"})
    description: str = "a signed cookie the proxy inserts, naming the backend"

    def build_keyed(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
    ) -> IPersistenceStrategy:
        with OptionReader(options, path) as reader:
            max_age, max_idle, max_life = (
                reader.optional_number(name, bounds=bounds.COOKIE_LIFETIME)
                for name in ("max_age", "max_idle", "max_life")
            )
            cookie = read_proxy_cookie(
                reader,
                pool,
                reactor,
                self.name,
                secrets,
                max_idle=max_idle,
                max_life=max_life,
                max_age=max_age,
            )
            return CookieInsert(cookie, max_age)


cookie = CookieFactory()
