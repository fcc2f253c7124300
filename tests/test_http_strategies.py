"""
Tests for the HTTP persistence strategies: cookie, app-cookie, route,
header, and source-ip behind trusted proxies.
"""

from datetime import datetime, timezone
from email.utils import format_datetime

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.plugin import IPlugin

from stickyproxy import AdminState, ConfigError, NoBackendAvailable, Outcome, Router
from stickyproxy.interfaces import IPersistenceStrategy, IPersistenceStrategyFactory
from stickyproxy.model import Health
from stickyproxy.persistence._affinity import HashAffinity, TableAffinity
from stickyproxy.persistence._appcookie import (
    AppCookieFollow,
    AppCookieLearn,
    AppCookiePrefix,
    app_cookie,
)
from stickyproxy.persistence._cookie import CookieInsert, cookie
from stickyproxy.persistence._header import header
from stickyproxy.persistence._proxycookie import mark_private
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._route import RouteStrategy, route
from stickyproxy.persistence._signing import (
    CookieSigner,
    SessionPayload,
    b64decode,
    b64encode,
    backend_token,
)
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.testing import (
    http_context,
    make_pool,
    respond,
    routing_context,
    set_cookies,
)

from tests._base import TestCase

PATH = "frontend[0].persistence"
KEY = "the first secret, long enough"
OLD_KEY = "the older secret, long enough"
NOW = 1_700_000_000.0


def _clock():
    """
    A L{Clock} at a realistic time (cookie times are whole seconds since
    the epoch).
    """
    clock = Clock()
    clock.advance(NOW)
    return clock


def _build(factory, pool, clock=None, **options):
    """
    Build a strategy from C{options}, as the config loader does.
    """
    return factory.build(options, pool, clock if clock is not None else _clock(), PATH)


def _visit(strategy, backend=None, response=(), status=200, **request):
    """
    One request through C{strategy} alone: look up, let C{backend} (else
    the bound one) answer with C{response}, persist, release.

    :returns: the bound backend and the context (with the response as it
        will be sent).
    """
    ctx = http_context(**request)
    bound = strategy.lookup(ctx)
    served = backend if backend is not None else bound
    respond(ctx, status, response)
    if served is not None:
        strategy.persist(ctx, served)
        strategy.release(ctx, served)
    return bound, ctx


def _sent(ctx, name):
    """
    :returns: the last C{Set-Cookie} for C{name} the response carries, or
        C{None}.
    """
    cookies = [c for c in set_cookies(ctx) if c.name == name]
    return cookies[-1] if cookies else None


def _forwarded_cookie(ctx):
    """
    :returns: the C{Cookie} header the backend will get, or C{None}.
    """
    for name, value in ctx.forwarded_headers():
        if name == b"cookie":
            return value
    return None


def _http_date(when):
    """
    :returns: C{when} as an HTTP date, for C{Expires}.
    """
    return format_datetime(datetime.fromtimestamp(when, tz=timezone.utc), usegmt=True)


class CookieTests(TestCase):
    """
    C{strategy = "cookie"}: a signed cookie the proxy inserts.
    """

    def setUp(self):
        self.clock = _clock()
        self.pool = make_pool("a", "b", "c")
        self.strategy = _build(cookie, self.pool, self.clock, keys=[KEY])
        self.a = self.pool.get("a")
        self.b = self.pool.get("b")

    def _issue(self, backend=None, strategy=None, **request):
        """
        :returns: the value of the cookie a new client gets from C{backend}.
        """
        _, ctx = _visit(strategy or self.strategy, backend or self.b, **request)
        return _sent(ctx, "STICKY").value

    def test_provides(self):
        """
        The factory is a plugin and a strategy factory for HTTP only; what
        it builds is a persistence strategy.
        """
        self.assertProvides(IPlugin, cookie)
        self.assertProvides(IPersistenceStrategyFactory, cookie)
        self.assertEqual(cookie.modes, frozenset({"http"}))
        self.assertIsInstance(self.strategy, CookieInsert)
        self.assertProvides(IPersistenceStrategy, self.strategy)
        self.assertEqual(self.strategy.name, "cookie")

    def test_new_client_gets_cookie(self):
        """
        A client without a cookie is not bound; the response of the backend
        that served it sets a browser-session cookie, with C{Path=/},
        C{HttpOnly} and C{SameSite=Lax} by default.
        """
        bound, ctx = _visit(self.strategy, self.b)
        self.assertIsNone(bound)
        sent = _sent(ctx, "STICKY")
        self.assertEqual(sent.attribute("Path"), "/")
        self.assertEqual(sent.attribute("HttpOnly"), "")
        self.assertEqual(sent.attribute("SameSite"), "Lax")
        self.assertIsNone(sent.attribute("Secure"))
        self.assertIsNone(sent.attribute("Max-Age"))
        self.assertIsNone(sent.attribute("Expires"))
        self.assertIsNone(sent.attribute("Domain"))

    def test_value_is_opaque(self):
        """
        The value names the backend without revealing its name, address or
        port, and two clients of one backend get different values.
        """
        pool = make_pool("checkout-server-01")
        strategy = _build(cookie, pool, keys=[KEY])
        backend = pool.get("checkout-server-01")
        first = self._issue(backend, strategy)
        second = self._issue(backend, strategy)
        self.assertNotEqual(first, second)
        self.assertRegex(first, r"^[A-Za-z0-9_-]+$")
        decoded = b64decode(first)
        for secret in ("checkout", "server", backend.address):
            self.assertNotIn(secret, first)
            self.assertNotIn(secret.encode(), decoded)

    def test_returning_client(self):
        """
        A client with a valid cookie is bound to its backend, and its
        response sets no new cookie.
        """
        value = self._issue()
        bound, ctx = _visit(self.strategy, cookies={"STICKY": value})
        self.assertIs(bound, self.b)
        self.assertEqual(set_cookies(ctx), [])
        self.assertIsNone(ctx.response_header(b"cache-control"))

    def test_lookup_is_repeatable(self):
        """
        Looking up twice (the router does, when it retries a connect) gives
        the same backend, although the first look took the cookie off the
        request.
        """
        ctx = http_context(cookies={"STICKY": self._issue()})
        self.assertIs(self.strategy.lookup(ctx), self.b)
        self.assertIs(self.strategy.lookup(ctx), self.b)

    def test_any_proxy_with_the_same_keys(self):
        """
        Another proxy with the same keys and backends (in another order)
        reads the cookie: the binding needs no shared state.
        """
        other = _build(cookie, make_pool("c", "b", "a"), keys=[KEY])
        bound, _ = _visit(other, cookies={"STICKY": self._issue()})
        self.assertEqual(bound.name, "b")

    def test_foreign_cookie(self):
        """
        A valid cookie from a proxy whose backends differ names no backend
        here: it is ignored with a warning, and the client gets a new
        cookie.
        """
        foreign = _build(cookie, make_pool("x", "y"), keys=[KEY])
        value = self._issue(foreign.cookie.pool.get("y"), foreign)
        with capturedLogs() as events:
            bound, ctx = _visit(self.strategy, self.a, cookies={"STICKY": value})
        self.assertIsNone(bound)
        self.assertIsNotNone(_sent(ctx, "STICKY"))
        (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(warning["strategy"], "cookie")

    def test_bad_cookie_checked_once(self):
        """
        A client that keeps sending a cookie that is not honoured (foreign
        or forged) costs one signature check for all its requests, and each
        request is still reported: the foreign one with a warning.
        """
        foreign = _build(cookie, make_pool("x", "y"), keys=[KEY])
        value = self._issue(foreign.cookie.pool.get("y"), foreign)
        forged = "A" + value[1:] if value[0] != "A" else "B" + value[1:]
        verified = []
        verify = CookieSigner.verify

        def counting(signer, value):
            verified.append(value)
            return verify(signer, value)

        self.patch(CookieSigner, "verify", counting)
        with capturedLogs() as events:
            for _ in range(3):
                for sent in (value, forged):
                    bound, ctx = _visit(self.strategy, self.a, cookies={"STICKY": sent})
                    self.assertIsNone(bound)
                    self.assertEqual(ctx.invalid, "cookie")
        self.assertEqual(sorted(verified), sorted([value, forged]))
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 3)

    def test_wrong_key(self):
        """
        A cookie signed with another key is ignored, and replaced.
        """
        other = _build(cookie, make_pool("a", "b", "c"), keys=[OLD_KEY])
        bound, ctx = _visit(
            self.strategy, self.a, cookies={"STICKY": self._issue(strategy=other)}
        )
        self.assertIsNone(bound)
        self.assertIsNotNone(_sent(ctx, "STICKY"))

    def test_forged(self):
        """
        A cookie with any one character changed is ignored, and the client
        gets a new one for the backend that served it.
        """
        value = self._issue()
        for index in range(len(value)):
            forged = value[:index] + ("A" if value[index] != "A" else "B")
            forged += value[index + 1 :]
            bound, ctx = _visit(self.strategy, self.a, cookies={"STICKY": forged})
            self.assertIsNone(bound)
            self.assertIsNotNone(_sent(ctx, "STICKY"))

    def test_forged_payload(self):
        """
        A cookie whose payload was re-encoded to name another backend, keeping
        the old tag, is ignored.
        """
        signer = CookieSigner((KEY.encode(),), b"cookie\0STICKY")
        payload = SessionPayload(
            b"123456", backend_token(KEY.encode(), "a"), int(NOW), int(NOW)
        )
        genuine = signer.sign(payload.pack())
        self.assertIs(_visit(self.strategy, cookies={"STICKY": genuine})[0], self.a)
        other = SessionPayload(
            b"123456", backend_token(KEY.encode(), "c"), int(NOW), int(NOW)
        )
        forged = CookieSigner((b"guess",), b"cookie\0STICKY").sign(other.pack())
        self.assertIsNone(_visit(self.strategy, cookies={"STICKY": forged})[0])

    def test_garbage(self):
        """
        Empty, garbled, non-base64, overlong and truncated values are
        ignored without an error, and replaced.
        """
        value = self._issue()
        for garbage in ["", "x", "!!!", "%41%42", "A" * 4000, value[:-1], value + "A"]:
            bound, ctx = _visit(self.strategy, self.a, cookies={"STICKY": garbage})
            self.assertIsNone(bound, garbage)
            self.assertIsNotNone(_sent(ctx, "STICKY"))

    @given(st.binary(max_size=300))
    def test_any_value(self, value):
        """
        No bytes a client sends as the cookie raise or name a backend, and
        the client gets a new cookie.
        """
        ctx = http_context(headers=[(b"cookie", b"STICKY=" + value)])
        self.assertIsNone(self.strategy.lookup(ctx))
        respond(ctx)
        self.strategy.persist(ctx, self.a)
        self.assertIsNotNone(_sent(ctx, "STICKY"))

    @settings(max_examples=50)
    @given(st.binary(min_size=0, max_size=60))
    def test_any_signed_garbage(self, payload):
        """
        Even correctly signed bytes that are not a payload name no backend.
        """
        signer = CookieSigner((KEY.encode(),), b"cookie\0STICKY")
        value = signer.sign(payload)
        bound, _ = _visit(self.strategy, self.a, cookies={"STICKY": value})
        if len(payload) != 25 or payload[0] != 1:
            self.assertIsNone(bound)

    def test_key_rotation(self):
        """
        With the new key first and the old one after it, a cookie signed
        with the old key is honoured and re-issued under the new key; once
        the old key is removed, cookies signed with it are ignored.
        """
        old = _build(cookie, self.pool, self.clock, keys=[OLD_KEY])
        old_value = self._issue(strategy=old)
        rotating = _build(cookie, self.pool, self.clock, keys=[KEY, OLD_KEY])
        bound, ctx = _visit(rotating, cookies={"STICKY": old_value})
        self.assertIs(bound, self.b)
        new_value = _sent(ctx, "STICKY").value
        self.assertNotEqual(new_value, old_value)
        bound, ctx = _visit(rotating, cookies={"STICKY": new_value})
        self.assertIs(bound, self.b)
        self.assertEqual(set_cookies(ctx), [])
        rotated = _build(cookie, self.pool, self.clock, keys=[KEY])
        self.assertIs(_visit(rotated, cookies={"STICKY": new_value})[0], self.b)
        self.assertIsNone(_visit(rotated, cookies={"STICKY": old_value})[0])

    def test_generated_key(self):
        """
        Without C{keys}, a random key is generated with a warning that
        says proxies then disagree: two such strategies do not read each
        other's cookies.
        """
        with capturedLogs() as events:
            first = _build(cookie, self.pool, self.clock)
            second = _build(cookie, self.pool, self.clock)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertIn("several proxies", warnings[0]["log_format"])
        self.assertEqual(warnings[0]["path"], PATH)
        value = self._issue(strategy=first)
        self.assertIs(_visit(first, cookies={"STICKY": value})[0], self.b)
        self.assertIsNone(_visit(second, cookies={"STICKY": value})[0])

    def test_short_key_warning(self):
        """
        A key shorter than 16 bytes works, with a warning.
        """
        with capturedLogs() as events:
            _build(cookie, self.pool, self.clock, keys=["short"])
        self.assertTrue(any(e["log_level"] == LogLevel.warn for e in events))

    def test_max_life(self):
        """
        With C{max_life}, a cookie is honoured for that long after it was
        issued however active the client is, then ignored and replaced,
        even by a client that ignores expiry.
        """
        strategy = _build(cookie, self.pool, self.clock, keys=[KEY], max_life=100)
        value = self._issue(strategy=strategy)
        self.clock.advance(99)
        self.assertIs(_visit(strategy, cookies={"STICKY": value})[0], self.b)
        self.clock.advance(1)
        bound, ctx = _visit(strategy, self.a, cookies={"STICKY": value})
        self.assertIsNone(bound)
        self.assertIs(
            _visit(strategy, cookies={"STICKY": _sent(ctx, "STICKY").value})[0], self.a
        )

    def test_max_idle(self):
        """
        With C{max_idle}, a cookie is ignored once the client has been away
        that long; a client that keeps coming back is kept, its cookie's
        last-seen time refreshed along the way.
        """
        strategy = _build(cookie, self.pool, self.clock, keys=[KEY], max_idle=100)
        value = self._issue(strategy=strategy)
        for _ in range(20):
            self.clock.advance(70)
            bound, ctx = _visit(strategy, cookies={"STICKY": value})
            self.assertIs(bound, self.b)
            sent = _sent(ctx, "STICKY")
            if sent is not None:
                value = sent.value
        self.clock.advance(100)
        self.assertIsNone(_visit(strategy, self.a, cookies={"STICKY": value})[0])

    def test_refresh_interval(self):
        """
        A valid cookie is re-sent once its last-seen time is older than a
        quarter of C{max_idle} or a minute, whichever is less; never
        without C{max_idle}.
        """
        for max_idle, interval in [(100, 25), (3600, 60)]:
            strategy = _build(
                cookie, self.pool, self.clock, keys=[KEY], max_idle=max_idle
            )
            self.assertEqual(strategy.refresh_after, interval)
            value = self._issue(strategy=strategy)
            self.clock.advance(interval - 1)
            _, ctx = _visit(strategy, cookies={"STICKY": value})
            self.assertIsNone(_sent(ctx, "STICKY"))
            self.clock.advance(1)
            _, ctx = _visit(strategy, cookies={"STICKY": value})
            refreshed = _sent(ctx, "STICKY")
            self.assertIsNotNone(refreshed)
            self.assertEqual(ctx.response_header(b"cache-control"), b"private")
            self.assertIs(
                _visit(strategy, cookies={"STICKY": refreshed.value})[0], self.b
            )
        self.assertIsNone(self.strategy.refresh_after)
        value = self._issue()
        self.clock.advance(10**6)
        _, ctx = _visit(self.strategy, cookies={"STICKY": value})
        self.assertEqual(set_cookies(ctx), [])

    def test_max_age(self):
        """
        C{max_age} makes a persistent cookie, and the proxy enforces it
        for clients that ignore it.
        """
        strategy = _build(cookie, self.pool, self.clock, keys=[KEY], max_age=600)
        _, ctx = _visit(strategy, self.b)
        sent = _sent(ctx, "STICKY")
        self.assertEqual(sent.attribute("Max-Age"), "600")
        self.clock.advance(599)
        self.assertIs(_visit(strategy, cookies={"STICKY": sent.value})[0], self.b)
        self.clock.advance(1)
        self.assertIsNone(_visit(strategy, self.b, cookies={"STICKY": sent.value})[0])

    def test_max_age_at_a_fractional_second(self):
        """
        Issued at a fraction of a second, the cookie's C{Max-Age} is still
        exactly C{max_age}.
        """
        self.clock.advance(0.7)
        strategy = _build(cookie, self.pool, self.clock, keys=[KEY], max_age=600)
        _, ctx = _visit(strategy, self.b)
        self.assertEqual(_sent(ctx, "STICKY").attribute("Max-Age"), "600")

    def test_max_age_within_max_life(self):
        """
        A refreshed cookie's C{Max-Age} does not reach past C{max_life}.
        """
        strategy = _build(
            cookie,
            self.pool,
            self.clock,
            keys=[KEY],
            max_age=600,
            max_idle=1000,
            max_life=900,
        )
        _, ctx = _visit(strategy, self.b)
        self.clock.advance(500)
        _, ctx = _visit(strategy, cookies={"STICKY": _sent(ctx, "STICKY").value})
        self.assertEqual(_sent(ctx, "STICKY").attribute("Max-Age"), "400")

    def test_secure_auto(self):
        """
        By default C{Secure} is set when the client came over TLS.
        """
        _, ctx = _visit(self.strategy, self.b, secure=True)
        self.assertEqual(_sent(ctx, "STICKY").attribute("Secure"), "")

    def test_secure_forced(self):
        """
        C{secure = true} sets C{Secure} always, C{false} never.
        """
        strategy = _build(cookie, self.pool, keys=[KEY], secure=True)
        _, ctx = _visit(strategy, self.b, secure=False)
        self.assertEqual(_sent(ctx, "STICKY").attribute("Secure"), "")
        strategy = _build(cookie, self.pool, keys=[KEY], secure=False)
        _, ctx = _visit(strategy, self.b, secure=True)
        self.assertIsNone(_sent(ctx, "STICKY").attribute("Secure"))
        strategy = _build(cookie, self.pool, keys=[KEY], secure="auto")
        _, ctx = _visit(strategy, self.b, secure=False)
        self.assertIsNone(_sent(ctx, "STICKY").attribute("Secure"))

    def test_samesite(self):
        """
        C{samesite} sets the attribute; C{"None"} implies C{Secure}.
        """
        strategy = _build(cookie, self.pool, keys=[KEY], samesite="Strict")
        _, ctx = _visit(strategy, self.b)
        self.assertEqual(_sent(ctx, "STICKY").attribute("SameSite"), "Strict")
        strategy = _build(cookie, self.pool, keys=[KEY], samesite="None")
        _, ctx = _visit(strategy, self.b, secure=False)
        sent = _sent(ctx, "STICKY")
        self.assertEqual(sent.attribute("SameSite"), "None")
        self.assertEqual(sent.attribute("Secure"), "")

    def test_name_domain_path_httponly(self):
        """
        C{name}, C{domain}, C{path} and C{httponly} shape the cookie.
        """
        strategy = _build(
            cookie,
            self.pool,
            keys=[KEY],
            name="LB",
            domain="example.com",
            path="/shop",
            httponly=False,
        )
        _, ctx = _visit(strategy, self.b)
        sent = _sent(ctx, "LB")
        self.assertEqual(sent.attribute("Domain"), "example.com")
        self.assertEqual(sent.attribute("Path"), "/shop")
        self.assertIsNone(sent.attribute("HttpOnly"))
        self.assertIs(_visit(strategy, cookies={"LB": sent.value})[0], self.b)
        self.assertIsNone(_visit(strategy, cookies={"STICKY": sent.value})[0])

    def test_indirect(self):
        """
        By default the cookie is taken off the request, valid or not; the
        other cookies are forwarded.
        """
        value = self._issue()
        for sent in (value, "garbage"):
            ctx = http_context(cookies=[("a", "1"), ("STICKY", sent), ("b", "2")])
            self.strategy.lookup(ctx)
            self.assertEqual(_forwarded_cookie(ctx), b"a=1; b=2")
        ctx = http_context(cookies={"STICKY": value})
        self.strategy.lookup(ctx)
        self.assertIsNone(_forwarded_cookie(ctx))

    def test_not_indirect(self):
        """
        With C{indirect = false} the backend sees the cookie.
        """
        strategy = _build(cookie, self.pool, keys=[KEY], indirect=False)
        ctx = http_context(cookies=[("a", "1"), ("STICKY", "x")])
        strategy.lookup(ctx)
        self.assertEqual(_forwarded_cookie(ctx), b"a=1; STICKY=x")

    def test_nocache(self):
        """
        A response that sets the cookie is made private: C{private} is
        added and C{public} dropped, other directives kept; with
        C{nocache = false} it is left alone.
        """
        cases = [
            ((), b"private"),
            ([(b"cache-control", b"public, max-age=60")], b"private, max-age=60"),
            ([(b"cache-control", b"private")], b"private"),
            (
                [(b"cache-control", b"max-age=60"), (b"cache-control", b"public")],
                b"private, max-age=60",
            ),
            (
                [(b"cache-control", b'no-cache="set-cookie, x", public')],
                b'private, no-cache="set-cookie, x"',
            ),
        ]
        for response, expected in cases:
            _, ctx = _visit(self.strategy, self.b, response=response)
            self.assertEqual(
                [v for k, v in ctx.response_headers if k == b"cache-control"],
                [expected],
            )
        strategy = _build(cookie, self.pool, keys=[KEY], nocache=False)
        _, ctx = _visit(strategy, self.b, response=[(b"cache-control", b"public")])
        self.assertEqual(ctx.response_header(b"cache-control"), b"public")

    def test_mark_private_without_header_list(self):
        """
        L{mark_private} works through the context interface alone.
        """
        ctx = respond(http_context(), 200, [(b"cache-control", b"public, s-maxage=9")])
        mark_private(ctx)
        self.assertEqual(ctx.response_header(b"cache-control"), b"private, s-maxage=9")

    def test_session_count(self):
        """
        The pool counts recently seen cookies as sessions of their backend,
        for C{max_idle} (default 1800 s) after the last request.
        """
        values = [self._issue() for _ in range(3)]
        self.assertEqual(self.pool.sessions("b"), 3)
        self.clock.advance(1000)
        _visit(self.strategy, cookies={"STICKY": values[0]})
        self.clock.advance(1000)
        self.assertEqual(self.pool.sessions("b"), 1)
        self.clock.advance(1000)
        self.assertEqual(self.pool.sessions("b"), 0)

    def test_session_count_lifetimes(self):
        """
        A session stops counting after the shortest of the cookie's
        lifetimes without its client, even with no C{max_idle}: a cookie
        whose C{max_age} or C{max_life} is over cannot come back, so a
        drain need not wait for it.
        """
        for options, lifetime in [
            ({"max_age": 60}, 60),
            ({"max_life": 90, "max_age": 600}, 90),
            ({"max_idle": 120, "max_age": 600, "max_life": 900}, 120),
        ]:
            pool = make_pool("b")
            strategy = _build(cookie, pool, self.clock, keys=[KEY], **options)
            _visit(strategy, pool.get("b"))
            self.clock.advance(lifetime - 1)
            self.assertEqual(pool.sessions("b"), 1, options)
            self.clock.advance(1)
            self.assertEqual(pool.sessions("b"), 0, options)

    def test_redispatch(self):
        """
        When the bound backend is in maintenance, the router moves the
        client and the new backend's response rewrites the cookie; the
        session moves in the count.
        """
        router = Router(self.pool, [self.strategy], self.clock)
        value = self._issue()
        self.pool.set_admin_state("b", AdminState.MAINT)
        ctx = http_context(cookies={"STICKY": value})
        decision = router.choose(ctx)
        self.assertEqual(decision.outcome, Outcome.REDISPATCH)
        self.assertIs(decision.previous, self.b)
        self.assertEqual(decision.strategy, "cookie")
        respond(ctx)
        router.bind(ctx, decision)
        new_value = _sent(ctx, "STICKY").value
        self.assertEqual(self.pool.sessions(decision.backend.name), 1)
        self.assertEqual(self.pool.sessions("b"), 0)
        self.pool.set_admin_state("b", AdminState.READY)
        again = router.choose(http_context(cookies={"STICKY": new_value}))
        self.assertEqual(again.outcome, Outcome.HIT)
        self.assertIs(again.backend, decision.backend)

    def test_down_redispatch(self):
        """
        A bound backend that is down is replaced too.
        """
        router = Router(self.pool, [self.strategy], self.clock)
        value = self._issue()
        self.pool.set_health(self.b, Health.DOWN, "test")
        decision = router.choose(http_context(cookies={"STICKY": value}))
        self.assertEqual(decision.outcome, Outcome.REDISPATCH)
        self.assertIsNot(decision.backend, self.b)

    def test_strict(self):
        """
        With a strict router, a client whose backend cannot serve is
        refused instead.
        """
        router = Router(self.pool, [self.strategy], self.clock, strict=True)
        value = self._issue()
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.assertRaises(
            NoBackendAvailable, router.choose, http_context(cookies={"STICKY": value})
        )

    def test_retry_keeps_binding(self):
        """
        When the router asks again after a failed connect to the bound
        backend, the client is still seen as bound: a redispatch, not a new
        client.
        """
        router = Router(self.pool, [self.strategy], self.clock)
        ctx = http_context(cookies={"STICKY": self._issue()})
        self.assertEqual(router.choose(ctx).outcome, Outcome.HIT)
        retry = router.choose(ctx, tried=[self.b])
        self.assertEqual(retry.outcome, Outcome.REDISPATCH)
        self.assertIs(retry.previous, self.b)

    def test_draining(self):
        """
        A draining backend keeps its cookie clients; new clients go
        elsewhere.
        """
        router = Router(self.pool, [self.strategy], self.clock)
        value = self._issue()
        self.pool.set_admin_state("b", AdminState.DRAIN)
        decision = router.choose(http_context(cookies={"STICKY": value}))
        self.assertEqual(decision.outcome, Outcome.HIT)
        self.assertIs(decision.backend, self.b)
        for _ in range(6):
            self.assertIsNot(router.choose(http_context()).backend, self.b)


class CookieOptionTests(TestCase):
    """
    Option errors of C{cookie} and C{app-cookie} name their key.
    """

    def assertOptionError(self, factory, key, options, fragment):
        error = self.assertRaises(
            ConfigError, _build, factory, make_pool("a"), **options
        )
        self.assertEqual(error.path, f"{PATH}.{key}")
        self.assertIn(fragment, error.message)

    def test_cookie_errors(self):
        """
        Each bad C{cookie} option names its key and what was expected.
        """
        bad = [
            ("name", {"name": "two words"}, "cookie or header name"),
            ("name", {"name": 5}, "a string"),
            ("max_age", {"max_age": 0}, "positive"),
            ("max_idle", {"max_idle": -1}, "positive"),
            ("max_life", {"max_life": "1h"}, "number"),
            ("domain", {"domain": "a;b"}, "without spaces"),
            ("path", {"path": "shop"}, "starting with '/'"),
            ("path", {"path": "/a b"}, "without spaces"),
            ("secure", {"secure": "yes"}, "'auto', true or false"),
            ("secure", {"secure": 1}, "'auto', true or false"),
            ("httponly", {"httponly": "yes"}, "true or false"),
            ("samesite", {"samesite": "lax"}, "one of 'Lax', 'Strict', 'None'"),
            (
                "secure",
                {"samesite": "None", "secure": False},
                "SameSite=None cookies without Secure",
            ),
            ("keys", {"keys": []}, "non-empty array"),
            ("keys", {"keys": [""]}, "non-empty array"),
            ("keys", {"keys": "secret"}, "an array of strings"),
            ("indirect", {"indirect": "no"}, "true or false"),
            ("nocache", {"nocache": 0}, "true or false"),
            ("colour", {"colour": "red"}, "unknown key"),
            ("mode", {"mode": "follow"}, "unknown key"),
        ]
        for key, options, fragment in bad:
            self.assertOptionError(cookie, key, {"keys": [KEY], **options}, fragment)

    def test_app_cookie_errors(self):
        """
        Each bad C{app-cookie} option names its key; options that do not
        fit the mode are unknown keys.
        """
        bad = [
            ("mode", {"mode": "insert"}, "one of 'follow', 'learn', 'prefix'"),
            ("cookie", {"cookie": "a=b"}, "cookie or header name"),
            ("name", {"name": "JSESSIONID"}, "other than the application's"),
            ("max_age", {"max_age": 5}, "unknown key"),
            ("timeout", {"timeout": 5}, "unknown key"),
            ("name", {"mode": "learn", "name": "X"}, "unknown key"),
            ("keys", {"mode": "learn", "keys": [KEY]}, "unknown key"),
            ("timeout", {"mode": "learn", "timeout": 0}, "positive"),
            ("size", {"mode": "learn", "size": 0}, "at least 1"),
            ("domain", {"mode": "prefix", "keys": [KEY], "domain": "x"}, "unknown key"),
            ("timeout", {"mode": "prefix", "keys": [KEY], "timeout": 5}, "unknown key"),
            ("keys", {"mode": "prefix", "keys": []}, "non-empty array"),
            ("param", {"param": "a b"}, "cookie or header name"),
            ("param_in", {"mode": "learn", "param_in": ["body"]}, '"path"'),
            ("param_in", {"param_in": ["path", "path"]}, "at most once"),
            ("param_in", {"mode": "learn", "param_in": "path"}, "array"),
            ("param", {"mode": "prefix", "keys": [KEY], "param": "x"}, "cookie"),
            (
                "param_in",
                {"mode": "prefix", "keys": [KEY], "param_in": []},
                'only with mode = "follow" or "learn"',
            ),
        ]
        for key, options, fragment in bad:
            self.assertOptionError(app_cookie, key, options, fragment)


class AppCookieFollowTests(TestCase):
    """
    C{strategy = "app-cookie"}, C{mode = "follow"}.
    """

    def setUp(self):
        self.clock = _clock()
        self.pool = make_pool("a", "b", "c")
        self.strategy = _build(app_cookie, self.pool, self.clock, keys=[KEY])
        self.b = self.pool.get("b")

    def _login(self, set_cookie=b"JSESSIONID=s1; Path=/; Max-Age=600"):
        _, ctx = _visit(self.strategy, self.b, response=[(b"set-cookie", set_cookie)])
        return ctx

    def test_provides(self):
        """
        The factory and the follow strategy provide their interfaces.
        """
        self.assertProvides(IPlugin, app_cookie)
        self.assertProvides(IPersistenceStrategyFactory, app_cookie)
        self.assertEqual(app_cookie.modes, frozenset({"http"}))
        self.assertIsInstance(self.strategy, AppCookieFollow)
        self.assertProvides(IPersistenceStrategy, self.strategy)

    def test_issued_only_with_app_cookie(self):
        """
        A response that does not set the application's cookie gets no
        proxy cookie; one that does gets it, with the same lifetime.
        """
        _, ctx = _visit(self.strategy, self.b, response=[(b"set-cookie", b"x=1")])
        self.assertEqual([c.name for c in set_cookies(ctx)], ["x"])
        ctx = self._login()
        sent = _sent(ctx, "STICKY")
        self.assertEqual(sent.attribute("Max-Age"), "600")
        self.assertEqual(sent.attribute("HttpOnly"), "")
        self.assertEqual(ctx.response_header(b"cache-control"), b"private")
        bound, ctx = _visit(
            self.strategy, cookies={"JSESSIONID": "s1", "STICKY": sent.value}
        )
        self.assertIs(bound, self.b)
        self.assertEqual(set_cookies(ctx), [])

    def test_lifetime_from_expires(self):
        """
        An application cookie with C{Expires} gives the proxy cookie the
        same lifetime.
        """
        header = b"JSESSIONID=s1; Expires=" + _http_date(NOW + 300).encode()
        sent = _sent(self._login(header), "STICKY")
        self.assertEqual(sent.attribute("Max-Age"), "300")

    def test_browser_session(self):
        """
        An application cookie with neither C{Max-Age} nor C{Expires} makes
        the proxy cookie a browser-session cookie, honoured indefinitely.
        """
        sent = _sent(self._login(b"JSESSIONID=s1; Path=/"), "STICKY")
        self.assertIsNone(sent.attribute("Max-Age"))
        self.assertIsNone(sent.attribute("Expires"))
        self.clock.advance(10**7)
        bound, _ = _visit(
            self.strategy, cookies={"JSESSIONID": "s1", "STICKY": sent.value}
        )
        self.assertIs(bound, self.b)

    def test_url_rewritten_session(self):
        """
        A client whose application session id comes in the URL (C{;jsessionid=}
        path parameter, or C{?jsessionid=} query) rather than its cookie is
        still bound by the proxy cookie; with C{param_in = []} only the
        cookie counts.
        """
        value = _sent(self._login(), "STICKY").value
        for target in (b"/cart;jsessionid=s1", b"/cart?jsessionid=s1"):
            bound, _ = _visit(self.strategy, target=target, cookies={"STICKY": value})
            self.assertIs(bound, self.b, target)
        self.assertIsNone(
            _visit(self.strategy, self.b, target=b"/", cookies={"STICKY": value})[0]
        )
        strategy = _build(app_cookie, self.pool, self.clock, keys=[KEY], param_in=[])
        bound, _ = _visit(
            strategy, target=b"/cart;jsessionid=s1", cookies={"STICKY": value}
        )
        self.assertIsNone(bound)

    def test_lifetime_enforced(self):
        """
        Once the application cookie's lifetime is over, the proxy cookie is
        ignored, even from a client that ignores expiry.
        """
        value = _sent(self._login(), "STICKY").value
        cookies = {"JSESSIONID": "s1", "STICKY": value}
        self.clock.advance(599)
        self.assertIs(_visit(self.strategy, cookies=cookies)[0], self.b)
        self.clock.advance(1)
        bound, ctx = _visit(self.strategy, self.b, cookies=cookies)
        self.assertIsNone(bound)
        self.assertEqual(set_cookies(ctx), [])

    def test_removed_with_app_cookie(self):
        """
        When the application deletes its cookie (C{Max-Age=0}, or an
        C{Expires} in the past), the proxy deletes its own.
        """
        value = _sent(self._login(), "STICKY").value
        for deleting in [
            b"JSESSIONID=; Max-Age=0; Path=/",
            b"JSESSIONID=x; Expires=" + _http_date(NOW - 10).encode(),
        ]:
            _, ctx = _visit(
                self.strategy,
                cookies={"JSESSIONID": "s1", "STICKY": value},
                response=[(b"set-cookie", deleting)],
            )
            sent = _sent(ctx, "STICKY")
            self.assertEqual(sent.value, "")
            self.assertEqual(sent.attribute("Max-Age"), "0")
            self.assertEqual(sent.attribute("Path"), "/")

    def test_needs_app_cookie(self):
        """
        A request with a valid proxy cookie but without the application's
        cookie is not bound: the session it named is gone.
        """
        value = _sent(self._login(), "STICKY").value
        self.assertIsNone(_visit(self.strategy, cookies={"STICKY": value})[0])

    def test_forged(self):
        """
        A forged or foreign proxy cookie is ignored and gets no
        replacement until the application sets its cookie.
        """
        bound, ctx = _visit(
            self.strategy, self.b, cookies={"JSESSIONID": "s1", "STICKY": "forged"}
        )
        self.assertIsNone(bound)
        self.assertEqual(set_cookies(ctx), [])

    def test_redispatch_rewrites(self):
        """
        A client moved off its backend gets its proxy cookie rewritten for
        the new backend, keeping the lifetime the application gave it.
        """
        router = Router(self.pool, [self.strategy], self.clock)
        value = _sent(self._login(), "STICKY").value
        self.clock.advance(100)
        self.pool.set_admin_state("b", AdminState.MAINT)
        ctx = http_context(cookies={"JSESSIONID": "s1", "STICKY": value})
        decision = router.choose(ctx)
        self.assertEqual(decision.outcome, Outcome.REDISPATCH)
        respond(ctx)
        router.bind(ctx, decision)
        sent = _sent(ctx, "STICKY")
        self.assertEqual(sent.attribute("Max-Age"), "500")
        self.pool.set_admin_state("b", AdminState.READY)
        again = router.choose(
            http_context(cookies={"JSESSIONID": "s1", "STICKY": sent.value})
        )
        self.assertIs(again.backend, decision.backend)

    def test_indirect(self):
        """
        The proxy cookie is taken off the request; the application's stays.
        """
        value = _sent(self._login(), "STICKY").value
        ctx = http_context(cookies={"JSESSIONID": "s1", "STICKY": value})
        self.strategy.lookup(ctx)
        self.assertEqual(_forwarded_cookie(ctx), b"JSESSIONID=s1")

    def test_attributes_shared(self):
        """
        The proxy cookie takes C{name}, C{domain}, C{path}, C{secure},
        C{httponly} and C{samesite} as the C{cookie} strategy does.
        """
        strategy = _build(
            app_cookie,
            self.pool,
            self.clock,
            keys=[KEY],
            cookie="SID",
            name="LB",
            domain="example.com",
            path="/app",
            secure=True,
            httponly=False,
            samesite="Strict",
        )
        _, ctx = _visit(strategy, self.b, response=[(b"set-cookie", b"SID=1")])
        sent = _sent(ctx, "LB")
        self.assertEqual(
            sent.attributes,
            (
                ("Path", "/app"),
                ("Domain", "example.com"),
                ("Secure", None),
                ("SameSite", "Strict"),
            ),
        )
        self.assertIs(
            _visit(strategy, cookies={"SID": "1", "LB": sent.value})[0], self.b
        )

    def test_session_count(self):
        """
        Proxy cookies count as sessions of their backend, until the
        application deletes its cookie.
        """
        value = _sent(self._login(), "STICKY").value
        self._login(b"JSESSIONID=s2")
        self.assertEqual(self.pool.sessions("b"), 2)
        _visit(
            self.strategy,
            cookies={"JSESSIONID": "s1", "STICKY": value},
            response=[(b"set-cookie", b"JSESSIONID=; Max-Age=0")],
        )
        self.assertEqual(self.pool.sessions("b"), 1)


class AppCookieLearnTests(TestCase):
    """
    C{strategy = "app-cookie"}, C{mode = "learn"}.
    """

    def setUp(self):
        self.clock = _clock()
        self.pool = make_pool("a", "b", "c")
        self.strategy = _build(
            app_cookie, self.pool, self.clock, mode="learn", timeout=100, size=3
        )
        self.b = self.pool.get("b")

    def _learn(self, value, backend=None):
        _visit(
            self.strategy,
            backend or self.b,
            response=[(b"set-cookie", b"JSESSIONID=" + value + b"; Path=/")],
        )

    def test_provides(self):
        """
        The learn strategy provides L{IPersistenceStrategy}.
        """
        self.assertIsInstance(self.strategy, AppCookieLearn)
        self.assertProvides(IPersistenceStrategy, self.strategy)

    def test_learns(self):
        """
        A value the application set binds to the backend that set it;
        other values are unbound; the response is not changed.
        """
        _, ctx = _visit(
            self.strategy,
            self.b,
            response=[(b"set-cookie", b"JSESSIONID=abc; Path=/")],
        )
        self.assertEqual(
            ctx.response_headers, [(b"set-cookie", b"JSESSIONID=abc; Path=/")]
        )
        self.assertIs(_visit(self.strategy, cookies={"JSESSIONID": "abc"})[0], self.b)
        self.assertIsNone(
            _visit(self.strategy, self.b, cookies={"JSESSIONID": "xyz"})[0]
        )
        self.assertIsNone(_visit(self.strategy, self.b)[0])

    def test_url_rewritten_session(self):
        """
        A learned session id found in the URL, as a C{;jsessionid=} path
        parameter or a C{?jsessionid=} query parameter (clients without
        cookies, URL rewriting), goes to its backend as the cookie does.
        """
        self._learn(b"abc.node1")
        for target in [
            b"/cart;jsessionid=abc.node1",
            b"/a;jsessionid=abc.node1/b?x=1",
            b"/cart?x=1&jsessionid=abc.node1",
        ]:
            self.assertIs(_visit(self.strategy, target=target)[0], self.b, target)
        self.assertIsNone(_visit(self.strategy, target=b"/;jsessionid=other")[0])

    def test_url_rewritten_session_refreshed_and_replaced(self):
        """
        Requests carrying the session id in the URL refresh its binding, and
        a new id the application sets for it replaces the old one.
        """
        self._learn(b"abc")
        for _ in range(3):
            self.clock.advance(90)
            bound, _ = _visit(self.strategy, target=b"/;jsessionid=abc")
            self.assertIs(bound, self.b)
        _visit(
            self.strategy,
            target=b"/;jsessionid=abc",
            response=[(b"set-cookie", b"JSESSIONID=new")],
        )
        self.assertIsNone(_visit(self.strategy, self.b, target=b"/;jsessionid=abc")[0])
        self.assertIs(_visit(self.strategy, target=b"/;jsessionid=new")[0], self.b)

    def test_url_options(self):
        """
        C{param} names the URL parameter, and C{param_in} says where it is
        looked for: C{["path"]} ignores the query, C{[]} the whole URL.
        """
        strategy = _build(
            app_cookie,
            self.pool,
            self.clock,
            mode="learn",
            cookie="PHPSESSID",
            param="PHPSESSID",
            param_in=["query"],
        )
        _visit(strategy, self.b, response=[(b"set-cookie", b"PHPSESSID=p1")])
        self.assertIs(_visit(strategy, target=b"/?PHPSESSID=p1")[0], self.b)
        self.assertIsNone(_visit(strategy, target=b"/;PHPSESSID=p1")[0])
        self.assertIsNone(_visit(strategy, target=b"/?jsessionid=p1")[0])
        for places, target in [
            ([], b"/;jsessionid=abc"),
            (["path"], b"/?jsessionid=abc"),
        ]:
            strategy = _build(
                app_cookie, self.pool, self.clock, mode="learn", param_in=places
            )
            _visit(strategy, self.b, response=[(b"set-cookie", b"JSESSIONID=abc")])
            self.assertIs(_visit(strategy, cookies={"JSESSIONID": "abc"})[0], self.b)
            self.assertIsNone(_visit(strategy, target=target)[0], places)

    def test_not_learned_from_requests(self):
        """
        A value only ever sent by the client is not learned.
        """
        _visit(self.strategy, self.b, cookies={"JSESSIONID": "invented"})
        self.assertIsNone(_visit(self.strategy, cookies={"JSESSIONID": "invented"})[0])

    def test_idle_timeout(self):
        """
        A binding lasts C{timeout} seconds after the last request using it.
        """
        self._learn(b"abc")
        for _ in range(5):
            self.clock.advance(90)
            self.assertIs(
                _visit(self.strategy, cookies={"JSESSIONID": "abc"})[0], self.b
            )
        self.clock.advance(100)
        self.assertIsNone(_visit(self.strategy, cookies={"JSESSIONID": "abc"})[0])

    def test_size(self):
        """
        At most C{size} bindings are kept, the least recently used going.
        """
        for value in (b"1", b"2", b"3", b"4"):
            self._learn(value)
        self.assertIsNone(_visit(self.strategy, cookies={"JSESSIONID": "1"})[0])
        self.assertIs(_visit(self.strategy, cookies={"JSESSIONID": "4"})[0], self.b)

    def test_delete_unbinds(self):
        """
        When the application deletes its cookie, the session is unbound and
        no longer counted.
        """
        self._learn(b"abc")
        self.assertEqual(self.pool.sessions("b"), 1)
        _visit(
            self.strategy,
            cookies={"JSESSIONID": "abc"},
            response=[(b"set-cookie", b"JSESSIONID=; Max-Age=0")],
        )
        self.assertIsNone(
            _visit(self.strategy, self.b, cookies={"JSESSIONID": "abc"})[0]
        )
        self.assertEqual(self.pool.sessions("b"), 0)

    def test_replaced_value(self):
        """
        A new value from the application (a new session at login) replaces
        the binding of the old one.
        """
        self._learn(b"old")
        _visit(
            self.strategy,
            cookies={"JSESSIONID": "old"},
            response=[(b"set-cookie", b"JSESSIONID=new")],
        )
        self.assertIs(_visit(self.strategy, cookies={"JSESSIONID": "new"})[0], self.b)
        self.assertIsNone(
            _visit(self.strategy, self.b, cookies={"JSESSIONID": "old"})[0]
        )
        self.assertEqual(self.pool.sessions("b"), 1)

    def test_redispatch_rebinds(self):
        """
        A known session served by another backend (its own could not) is
        bound to that backend.
        """
        self._learn(b"abc")
        c = self.pool.get("c")
        _visit(self.strategy, c, cookies={"JSESSIONID": "abc"})
        self.assertIs(_visit(self.strategy, cookies={"JSESSIONID": "abc"})[0], c)
        self.assertEqual(self.pool.sessions("b"), 0)
        self.assertEqual(self.pool.sessions("c"), 1)


class AppCookiePrefixTests(TestCase):
    """
    C{strategy = "app-cookie"}, C{mode = "prefix"}.
    """

    def setUp(self):
        self.clock = _clock()
        self.pool = make_pool("a", "b", "c")
        self.strategy = _build(
            app_cookie, self.pool, self.clock, mode="prefix", keys=[KEY]
        )
        self.b = self.pool.get("b")

    def _prefixed(self, strategy=None, header=b"JSESSIONID=abc; Path=/app; HttpOnly"):
        _, ctx = _visit(
            strategy or self.strategy, self.b, response=[(b"set-cookie", header)]
        )
        return _sent(ctx, "JSESSIONID")

    def test_provides(self):
        """
        The prefix strategy provides L{IPersistenceStrategy}.
        """
        self.assertIsInstance(self.strategy, AppCookiePrefix)
        self.assertProvides(IPersistenceStrategy, self.strategy)

    def test_prefixes_response(self):
        """
        The application's cookie gets an opaque backend token and C{~}
        before its value; its attributes are kept as they were.
        """
        sent = self._prefixed()
        token, separator, value = sent.value.partition("~")
        self.assertEqual((separator, value), ("~", "abc"))
        self.assertRegex(token, r"^[A-Za-z0-9_-]{8}$")
        self.assertEqual(token, b64encode(backend_token(KEY.encode(), "b")))
        other = _build(app_cookie, self.pool, mode="prefix", keys=[OLD_KEY])
        self.assertNotEqual(self._prefixed(other).value.partition("~")[0], token)
        self.assertEqual(sent.attributes, (("Path", "/app"), ("HttpOnly", None)))

    def test_strips_request(self):
        """
        A prefixed value binds the client to its backend, and the backend
        gets the bare value; looking again gives the same answer.
        """
        value = self._prefixed().value
        ctx = http_context(cookies=[("JSESSIONID", value), ("x", "1")])
        self.assertIs(self.strategy.lookup(ctx), self.b)
        self.assertIs(self.strategy.lookup(ctx), self.b)
        self.assertEqual(_forwarded_cookie(ctx), b"JSESSIONID=abc; x=1")

    def test_unknown_token(self):
        """
        A value with the prefix's shape but an unknown token (forged, or a
        removed backend's) is balanced afresh, and the application still
        gets its bare value.
        """
        ctx = http_context(cookies={"JSESSIONID": "AAAAAAAA~abc"})
        self.assertIsNone(self.strategy.lookup(ctx))
        self.assertEqual(_forwarded_cookie(ctx), b"JSESSIONID=abc")

    def test_no_prefix(self):
        """
        A value without the prefix's shape is forwarded unchanged, and the
        client is balanced afresh.
        """
        for value in ["abc", "abc~def", "AAAA!AAA~abc", "AAAAAAAAA~x"]:
            ctx = http_context(cookies={"JSESSIONID": value})
            self.assertIsNone(self.strategy.lookup(ctx))
            self.assertEqual(ctx.forwarded_headers(), ctx.request_headers)

    def test_deleting_cookie_untouched(self):
        """
        A C{Set-Cookie} that deletes the application's cookie is left as it
        is.
        """
        header = b"JSESSIONID=; Max-Age=0"
        self.assertEqual(self._prefixed(header=header).value, "")

    def test_redispatch(self):
        """
        When the backend a prefix names is in maintenance, the router moves
        the client; the new backend's cookie gets the new backend's prefix.
        """
        router = Router(self.pool, [self.strategy], self.clock)
        value = self._prefixed().value
        self.pool.set_admin_state("b", AdminState.MAINT)
        ctx = http_context(cookies={"JSESSIONID": value})
        decision = router.choose(ctx)
        self.assertEqual(decision.outcome, Outcome.REDISPATCH)
        respond(ctx, 200, [(b"set-cookie", b"JSESSIONID=def")])
        router.bind(ctx, decision)
        new = _sent(ctx, "JSESSIONID").value
        self.assertIs(
            self.strategy.lookup(http_context(cookies={"JSESSIONID": new})),
            decision.backend,
        )

    def test_key_rotation(self):
        """
        Prefixes made under a key that is still listed are recognised.
        """
        old = _build(app_cookie, self.pool, mode="prefix", keys=[OLD_KEY])
        value = self._prefixed(old).value
        rotating = _build(app_cookie, self.pool, mode="prefix", keys=[KEY, OLD_KEY])
        self.assertIs(
            rotating.lookup(http_context(cookies={"JSESSIONID": value})), self.b
        )
        self.assertIsNone(
            self.strategy.lookup(http_context(cookies={"JSESSIONID": value}))
        )

    @given(st.binary(max_size=80))
    def test_any_value(self, value):
        """
        No bytes a client sends as the cookie raise or name a backend.
        """
        ctx = http_context(headers=[(b"cookie", b"JSESSIONID=" + value)])
        self.assertIsNone(self.strategy.lookup(ctx))
        ctx.forwarded_headers()


class RouteTests(TestCase):
    """
    C{strategy = "route"}.
    """

    def setUp(self):
        self.pool = make_pool("node1", "node2", "node3")
        self.strategy = _build(route, self.pool)

    def _route(self, strategy=None, **request):
        bound = (strategy or self.strategy).lookup(http_context(**request))
        return None if bound is None else bound.name

    def test_provides(self):
        """
        The factory and the strategy provide their interfaces.
        """
        self.assertProvides(IPlugin, route)
        self.assertProvides(IPersistenceStrategyFactory, route)
        self.assertEqual(route.modes, frozenset({"http"}))
        self.assertIsInstance(self.strategy, RouteStrategy)
        self.assertProvides(IPersistenceStrategy, self.strategy)

    def test_cookie(self):
        """
        The route after the session cookie's separator picks the backend.
        """
        self.assertEqual(self._route(cookies={"JSESSIONID": "abc123.node2"}), "node2")
        self.assertEqual(self._route(cookies={"JSESSIONID": '"abc.node3"'}), "node3")

    def test_path_parameter(self):
        """
        A C{;jsessionid=} path parameter carries the route too.
        """
        for target in [
            b"/shop/cart;jsessionid=abc123.node2",
            b"/shop/cart;jsessionid=abc123.node2?x=1",
            b"/shop;jsessionid=abc123.node2/cart",
            b"/cart;jsessionid=abc123.node2;other=1#top",
        ]:
            self.assertEqual(self._route(target=target), "node2", target)

    def test_query_parameter(self):
        """
        So does a C{jsessionid} query parameter, percent-encoded or not.
        """
        for target in [
            b"/cart?jsessionid=abc123.node3",
            b"/cart?a=1&jsessionid=abc123.node3&b=2",
            b"/cart?jsessionid=abc123%2Enode3",
        ]:
            self.assertEqual(self._route(target=target), "node3", target)

    def test_cookie_first(self):
        """
        The cookie wins over the URL (as in the application server).
        """
        self.assertEqual(
            self._route(
                target=b"/;jsessionid=x.node1?jsessionid=y.node3",
                cookies={"JSESSIONID": "z.node2"},
            ),
            "node2",
        )
        self.assertEqual(
            self._route(target=b"/;jsessionid=x.node1?jsessionid=y.node3"), "node1"
        )

    def test_last_separator(self):
        """
        The route is what follows the last separator.
        """
        self.assertEqual(self._route(cookies={"JSESSIONID": "a.b.c.node1"}), "node1")

    def test_unbound(self):
        """
        No session id, no separator, an empty route or an unknown route
        leave the client unbound.
        """
        for request in [
            {},
            {"cookies": {"JSESSIONID": "abc123"}},
            {"cookies": {"JSESSIONID": "abc123."}},
            {"cookies": {"JSESSIONID": "abc123.node9"}},
            {"cookies": {"OTHER": "abc123.node1"}},
            {"target": b"/cart?jsessionid="},
            {"target": b"/cart;jsessionidx=a.node1"},
            {"target": b"/cart?xjsessionid=a.node1"},
        ]:
            self.assertIsNone(self._route(**request), request)

    def test_options(self):
        """
        C{cookie}, C{param} and C{separator} change where the route is
        read from.
        """
        strategy = _build(route, self.pool, cookie="SID", param="sid", separator=":")
        self.assertEqual(self._route(strategy, cookies={"SID": "x.y:node2"}), "node2")
        self.assertIsNone(self._route(strategy, cookies={"JSESSIONID": "x.node2"}))
        self.assertEqual(self._route(strategy, target=b"/;sid=x:node3"), "node3")
        self.assertEqual(self._route(strategy, target=b"/?sid=x:node1"), "node1")

    def test_param_in(self):
        """
        C{param_in} says where in the URL the parameter is looked for.
        """
        strategy = _build(route, self.pool, param_in=["path"])
        self.assertEqual(self._route(strategy, target=b"/;jsessionid=x.node3"), "node3")
        self.assertIsNone(self._route(strategy, target=b"/?jsessionid=x.node3"))
        strategy = _build(route, self.pool, param_in=[])
        self.assertIsNone(self._route(strategy, target=b"/;jsessionid=x.node3"))
        self.assertEqual(
            self._route(strategy, cookies={"JSESSIONID": "x.node2"}), "node2"
        )

    def test_backend_route(self):
        """
        The route matches a backend's C{route}, which may differ from its
        name.
        """
        pool = make_pool("a", "b")
        pool.get("b").route = "jvm2"
        strategy = _build(route, pool)
        self.assertEqual(self._route(strategy, cookies={"JSESSIONID": "x.jvm2"}), "b")
        self.assertIsNone(self._route(strategy, cookies={"JSESSIONID": "x.b"}))

    @given(st.binary(max_size=120), st.binary(max_size=60))
    def test_any_request(self, target, value):
        """
        No target or cookie bytes raise; a route is found only when one
        names a backend.
        """
        ctx = http_context(b"/" + target, headers=[(b"cookie", b"JSESSIONID=" + value)])
        bound = self.strategy.lookup(ctx)
        if bound is not None:
            self.assertIn(bound.route.encode(), b"/" + target + value)

    def test_persist_does_nothing(self):
        """
        The application issues routes: the response is not changed.
        """
        _, ctx = _visit(
            self.strategy,
            self.pool.get("node1"),
            response=[(b"set-cookie", b"JSESSIONID=abc.node1")],
        )
        self.assertEqual(
            ctx.response_headers, [(b"set-cookie", b"JSESSIONID=abc.node1")]
        )

    def test_errors(self):
        """
        Bad options name their key.
        """
        for key, options, fragment in [
            ("separator", {"separator": ""}, "non-empty"),
            ("separator", {"separator": ";"}, "without"),
            ("cookie", {"cookie": "a b"}, "cookie or header name"),
            ("param", {"param": 3}, "a string"),
            ("colour", {"colour": 1}, "unknown key"),
        ]:
            error = self.assertRaises(ConfigError, _build, route, self.pool, **options)
            self.assertEqual(error.path, f"{PATH}.{key}")
            self.assertIn(fragment, error.message)


class CookieLifetimeBoundsTests(TestCase):
    def test_lifetimes_bounded(self):
        """
        C{max_age}, C{max_idle} and C{max_life} are refused below a second
        and above the 400 days browsers keep a cookie, naming the key and
        the range.
        """
        pool = make_pool("a")
        for key in ("max_age", "max_idle", "max_life"):
            for value in (0.5, 401 * 86400):
                error = self.assertRaises(
                    ConfigError, _build, cookie, pool, keys=[KEY], **{key: value}
                )
                self.assertEqual(error.path, f"{PATH}.{key}")
                self.assertIn(
                    "expected a positive number from 1 to 34560000", error.message
                )


class HeaderTests(TestCase):
    """
    C{strategy = "header"}.
    """

    def setUp(self):
        self.clock = _clock()
        self.pool = make_pool("a", "b", "c")
        self.strategy = _build(header, self.pool, self.clock, header="X-Session-Id")

    def _lookup(self, strategy, value):
        headers = [] if value is None else [(b"x-session-id", value)]
        return strategy.lookup(http_context(headers=headers))

    def test_provides(self):
        """
        The factory and both strategies provide their interfaces.
        """
        self.assertProvides(IPlugin, header)
        self.assertProvides(IPersistenceStrategyFactory, header)
        self.assertEqual(header.modes, frozenset({"http"}))
        self.assertIsInstance(self.strategy, HashAffinity)
        self.assertProvides(IPersistenceStrategy, self.strategy)
        table = _build(header, self.pool, header="X-Session-Id", mode="table")
        self.assertIsInstance(table, TableAffinity)
        self.assertProvides(IPersistenceStrategy, table)

    def test_hash(self):
        """
        One value always maps to one backend, on every proxy; values spread
        over the backends; a request without the header is unbound.
        """
        other = _build(header, make_pool("a", "b", "c"), header="x-session-id")
        names = set()
        for i in range(60):
            value = f"session-{i}".encode()
            bound = self._lookup(self.strategy, value)
            self.assertIs(self._lookup(self.strategy, value), bound)
            self.assertEqual(self._lookup(other, value).name, bound.name)
            names.add(bound.name)
        self.assertEqual(names, {"a", "b", "c"})
        self.assertIsNone(self._lookup(self.strategy, None))
        self.assertIsNone(self._lookup(self.strategy, b"  "))

    def test_hash_moves_only_lost_clients(self):
        """
        When a backend goes into maintenance only its values move (the
        strategy names the value's backend; the router moves its clients
        to the value's next one).
        """
        router = Router(self.pool, [self.strategy], self.clock)
        values = [f"s{i}".encode() for i in range(100)]

        def routed(value):
            ctx = http_context(headers=[(b"x-session-id", value)])
            return router.choose(ctx).backend.name

        before = [routed(v) for v in values]
        self.pool.set_admin_state("a", AdminState.MAINT)
        after = [routed(v) for v in values]
        for old, new in zip(before, after, strict=True):
            self.assertEqual(new, old) if old != "a" else self.assertNotEqual(new, "a")

    def test_hash_skips_tried(self):
        """
        A backend that already failed this request is skipped: the retry
        goes to the value's next backend, which the router reports as a
        redispatch.
        """
        router = Router(self.pool, [self.strategy], self.clock)
        ctx = http_context(headers=[(b"x-session-id", b"s1")])
        first = router.choose(ctx)
        retry = router.choose(ctx, tried=[first.backend])
        self.assertIsNot(retry.backend, first.backend)
        self.assertEqual(retry.outcome, Outcome.REDISPATCH)
        self.assertEqual(retry.strategy, "header")
        self.pool.set_health(first.backend, Health.DOWN, "test")
        again = router.choose(http_context(headers=[(b"x-session-id", b"s1")]))
        self.assertIs(again.backend, retry.backend)

    def test_table(self):
        """
        In C{table} mode the backend that first served a value keeps it for
        C{timeout} seconds after the last response, and counts it as a
        session.
        """
        strategy = _build(
            header,
            self.pool,
            self.clock,
            header="X-Session-Id",
            mode="table",
            timeout=60,
        )
        b = self.pool.get("b")
        self.assertIsNone(self._lookup(strategy, b"s1"))
        _visit(strategy, b, headers=[(b"X-Session-Id", b"s1")])
        self.assertEqual(self.pool.sessions("b"), 1)
        self.clock.advance(59)
        self.assertIs(self._lookup(strategy, b"s1"), b)
        _visit(strategy, headers=[(b"X-Session-Id", b"s1")])
        self.clock.advance(59)
        self.assertIs(self._lookup(strategy, b"s1"), b)
        self.clock.advance(60)
        self.assertIsNone(self._lookup(strategy, b"s1"))
        self.assertEqual(self.pool.sessions("b"), 0)

    def test_table_failed_request(self):
        """
        A request that ends without a response head (persist never ran)
        leaves no hold behind: the binding still expires.
        """
        strategy = _build(
            header,
            self.pool,
            self.clock,
            header="X-Session-Id",
            mode="table",
            timeout=60,
        )
        b = self.pool.get("b")
        _visit(strategy, b, headers=[(b"x-session-id", b"s1")])
        failed = http_context(headers=[(b"x-session-id", b"s1")])
        self.assertIs(strategy.lookup(failed), b)
        respond(failed, 502)
        strategy.release(failed, b)
        self.clock.advance(60)
        self.assertIsNone(self._lookup(strategy, b"s1"))

    def test_errors(self):
        """
        C{header} is required; bad options name their key.
        """
        for key, options, fragment in [
            ("header", {}, "is required"),
            ("header", {"header": "X Session"}, "cookie or header name"),
            ("mode", {"header": "x", "mode": "sticky"}, "one of 'hash', 'table'"),
            ("timeout", {"header": "x", "timeout": 5}, "unknown key"),
            ("timeout", {"header": "x", "mode": "table", "timeout": 0}, "positive"),
        ]:
            error = self.assertRaises(ConfigError, _build, header, self.pool, **options)
            self.assertEqual(error.path, f"{PATH}.{key}")
            self.assertIn(fragment, error.message)


class SourceIPTrustedProxiesTests(TestCase):
    """
    C{strategy = "source-ip"} with C{trusted_proxies}, on HTTP frontends.
    """

    def setUp(self):
        self.pool = make_pool(*"abcdefgh")
        self.plain = _build(source_ip, self.pool)

    def _key_backend(self, host):
        return self.plain.lookup(routing_context(host)).name

    def test_forwarded_for(self):
        """
        From a trusted proxy, the client is the right-most untrusted
        C{X-Forwarded-For} address.
        """
        for mode in ("hash", "table"):
            strategy = _build(
                source_ip, self.pool, mode=mode, trusted_proxies=["10.0.0.0/8", "::1"]
            )
            ctx = http_context(
                client="10.0.0.5",
                headers=[(b"x-forwarded-for", b"198.51.100.1, 203.0.113.9, 10.1.1.1")],
            )
            if mode == "table":
                respond(ctx)
                strategy.persist(ctx, self.pool.get("h"))
                self.assertEqual(
                    strategy.lookup(
                        http_context(
                            client="10.9.9.9",
                            headers=[(b"x-forwarded-for", b"203.0.113.9")],
                        )
                    ).name,
                    "h",
                )
            else:
                self.assertEqual(
                    strategy.lookup(ctx).name, self._key_backend("203.0.113.9")
                )

    def test_untrusted_peer(self):
        """
        From a peer that is not trusted, the header is ignored: anyone can
        write it.
        """
        strategy = _build(source_ip, self.pool, trusted_proxies=["10.0.0.0/8"])
        ctx = http_context(
            client="192.0.2.50", headers=[(b"x-forwarded-for", b"203.0.113.9")]
        )
        self.assertEqual(strategy.lookup(ctx).name, self._key_backend("192.0.2.50"))

    def test_tcp_context(self):
        """
        On a TCP context there is no header: the client address is used.
        """
        strategy = _build(source_ip, self.pool, trusted_proxies=["10.0.0.0/8"])
        self.assertEqual(
            strategy.lookup(routing_context("10.0.0.5")).name,
            self._key_backend("10.0.0.5"),
        )

    def test_hash_skips_tried(self):
        """
        A backend that already failed the client is skipped by the hash, on
        HTTP and TCP contexts alike.
        """
        router = Router(self.pool, [self.plain], Clock())
        for ctx in (http_context(client="192.0.2.9"), routing_context("192.0.2.9")):
            first = self.plain.lookup(ctx)
            ctx.tried = [first]
            second = self.plain.lookup(ctx)
            self.assertIsNot(second, first)
            self.pool.set_health(first, Health.DOWN, "test")
            ctx.tried = []
            self.assertIs(router.choose(ctx).backend, second)
            self.pool.set_health(first, Health.UP, "test")

    def test_errors(self):
        """
        A bad network in C{trusted_proxies} names the key.
        """
        for value in (["10.0.0.0/33"], ["proxy.local"], "10.0.0.0/8"):
            error = self.assertRaises(
                ConfigError, _build, source_ip, self.pool, trusted_proxies=value
            )
            self.assertEqual(error.path, f"{PATH}.trusted_proxies")


class ChainTests(TestCase):
    """
    Strategies chained with C{[[frontend.persistence]]}: the first that
    knows the client decides.
    """

    def setUp(self):
        self.clock = _clock()
        self.pool = make_pool("a", "b", "c")

    def test_app_cookie_then_source_ip(self):
        """
        A request without the application's cookie is decided by source-ip;
        one with a learned cookie by app-cookie.
        """
        learn = _build(app_cookie, self.pool, self.clock, mode="learn")
        by_ip = _build(source_ip, self.pool, self.clock)
        router = Router(self.pool, [learn, by_ip], self.clock)
        ctx = http_context(client="198.51.100.7")
        decision = router.choose(ctx)
        self.assertEqual(decision.outcome, Outcome.HIT)
        self.assertEqual(decision.strategy, "source-ip")
        ip_backend = decision.backend
        other = next(b for b in self.pool.backends if b is not ip_backend)
        respond(ctx, 200, [(b"set-cookie", b"JSESSIONID=s1")])
        router.bind(ctx, attrs.evolve(decision, backend=other))
        decision = router.choose(
            http_context(client="198.51.100.7", cookies={"JSESSIONID": "s1"})
        )
        self.assertEqual(decision.strategy, "app-cookie")
        self.assertIs(decision.backend, other)

    def test_cookie_then_source_ip(self):
        """
        The first request is decided by source-ip and gets a cookie for
        that backend, which decides the next requests.
        """
        insert = _build(cookie, self.pool, self.clock, keys=[KEY])
        by_ip = _build(source_ip, self.pool, self.clock)
        router = Router(self.pool, [insert, by_ip], self.clock)
        ctx = http_context(client="198.51.100.7")
        first = router.choose(ctx)
        self.assertEqual(first.strategy, "source-ip")
        respond(ctx)
        router.bind(ctx, first)
        value = _sent(ctx, "STICKY").value
        second = router.choose(
            http_context(client="203.0.113.1", cookies={"STICKY": value})
        )
        self.assertEqual(second.strategy, "cookie")
        self.assertIs(second.backend, first.backend)

    def test_every_strategy_takes_its_data(self):
        """
        A later strategy still takes its cookie off the request after an
        earlier one decided.
        """
        by_route = _build(route, self.pool, self.clock)
        insert = _build(cookie, self.pool, self.clock, keys=[KEY])
        router = Router(self.pool, [by_route, insert], self.clock)
        ctx = http_context(cookies={"JSESSIONID": "x.a", "STICKY": "stale"})
        self.assertEqual(router.choose(ctx).strategy, "route")
        self.assertEqual(_forwarded_cookie(ctx), b"JSESSIONID=x.a")


class RegistryTests(TestCase):
    """
    The HTTP strategies load through the plugin system.
    """

    def test_found_through_plugins(self):
        """
        Every built-in factory is found by L{StrategyRegistry.from_plugins}
        under its name.
        """
        registry = StrategyRegistry.from_plugins()
        for factory in (cookie, app_cookie, route, header, source_ip):
            self.assertIs(registry.get(factory.name, "x"), factory)
            self.assertProvides(IPlugin, factory)
            self.assertProvides(IPersistenceStrategyFactory, factory)

    def test_modes(self):
        """
        The HTTP strategies fit HTTP frontends only; source-ip fits both.
        """
        for factory in (cookie, app_cookie, route, header):
            self.assertEqual(factory.modes, frozenset({"http"}))
        self.assertEqual(source_ip.modes, frozenset({"tcp", "http"}))


class InvalidBindingTests(TestCase):
    """
    A strategy that finds a binding it cannot honour says so on the
    context (L{IRoutingContext.invalid}), and the router's decision reports
    the client as C{invalid}, balanced afresh.
    """

    def setUp(self):
        self.clock = _clock()
        self.pool = make_pool("a", "b", "c")
        self.b = self.pool.get("b")

    def invalid(self, strategy, **request):
        """
        :returns: what C{strategy}'s lookup left in C{invalid}, and what it
            found.
        """
        ctx = http_context(**request)
        bound = strategy.lookup(ctx)
        return ctx.invalid, bound

    def cookie_of(self, strategy, name="STICKY", **request):
        _, ctx = _visit(strategy, self.b, **request)
        return _sent(ctx, name).value

    def test_cookie(self):
        """
        C{cookie}: a forged, garbled or expired cookie, or one naming a
        backend the pool does not have, is invalid; a valid one or none
        is not.
        """
        strategy = _build(cookie, self.pool, self.clock, keys=[KEY], max_age=60)
        other_pool = make_pool("a", "b", "z")
        foreign = _build(cookie, other_pool, self.clock, keys=[KEY], max_age=60)
        valid = self.cookie_of(strategy)
        _, ctx = _visit(foreign, other_pool.get("z"))
        unknown = _sent(ctx, "STICKY").value
        self.assertEqual(self.invalid(strategy), (None, None))
        self.assertEqual(
            self.invalid(strategy, cookies={"STICKY": valid}), (None, self.b)
        )
        for value in (valid[:-2] + "AA", "garbage", unknown):
            self.assertEqual(
                self.invalid(strategy, cookies={"STICKY": value}),
                ("cookie", None),
                value,
            )
        self.clock.advance(61)
        self.assertEqual(
            self.invalid(strategy, cookies={"STICKY": valid}), ("cookie", None)
        )

    def test_app_cookie_follow(self):
        """
        C{app-cookie}, C{follow}: a forged proxy cookie is invalid.
        """
        strategy = _build(app_cookie, self.pool, self.clock, keys=[KEY])
        value = self.cookie_of(
            strategy, response=[(b"set-cookie", b"JSESSIONID=s1; Max-Age=600")]
        )
        self.assertEqual(
            self.invalid(strategy, cookies={"STICKY": value, "JSESSIONID": "s1"}),
            (None, self.b),
        )
        self.assertEqual(
            self.invalid(strategy, cookies={"STICKY": "forged", "JSESSIONID": "s1"}),
            ("app-cookie", None),
        )

    def test_app_cookie_prefix(self):
        """
        C{app-cookie}, C{prefix}: a prefix naming no backend of the pool is
        invalid; a value without a prefix is not.
        """
        strategy = _build(app_cookie, self.pool, self.clock, mode="prefix", keys=[KEY])
        good = self.cookie_of(
            strategy, "JSESSIONID", response=[(b"set-cookie", b"JSESSIONID=abc")]
        )
        self.assertEqual(
            self.invalid(strategy, cookies={"JSESSIONID": good}), (None, self.b)
        )
        self.assertEqual(
            self.invalid(strategy, cookies={"JSESSIONID": "abc"}), (None, None)
        )
        self.assertEqual(
            self.invalid(strategy, cookies={"JSESSIONID": "AAAAAAAA~abc"}),
            ("app-cookie", None),
        )

    def test_route(self):
        """
        C{route}: a route naming no backend is invalid; a session id
        without a route is not.
        """
        strategy = _build(route, self.pool)
        self.assertEqual(
            self.invalid(strategy, cookies={"JSESSIONID": "x.b"}), (None, self.b)
        )
        self.assertEqual(
            self.invalid(strategy, cookies={"JSESSIONID": "x"}), (None, None)
        )
        self.assertEqual(
            self.invalid(strategy, cookies={"JSESSIONID": "x.z"}), ("route", None)
        )

    def test_decision(self):
        """
        The router's decision for a client with an invalid binding is
        new (the debug header and redispatch logic see no change) but names
        the strategy in C{invalid}, and its persistence outcome is
        C{invalid}; a binding another strategy of the chain honours wins.
        """
        router = Router(self.pool, [_build(route, self.pool)], self.clock)
        decision = router.choose(http_context(cookies={"JSESSIONID": "x.z"}))
        self.assertEqual(
            (decision.outcome, decision.strategy, decision.invalid),
            (Outcome.NEW, None, "route"),
        )
        self.assertEqual(
            (decision.persistence, decision.decided_by), ("invalid", "route")
        )
        fresh = router.choose(http_context())
        self.assertEqual((fresh.persistence, fresh.decided_by), ("new", None))
        chain = Router(
            self.pool,
            [_build(route, self.pool), _build(header, self.pool, header="X-Who")],
            self.clock,
        )
        hit = chain.choose(
            http_context(cookies={"JSESSIONID": "x.z"}, headers=[(b"x-who", b"k")])
        )
        self.assertEqual(hit.persistence, "hit")
