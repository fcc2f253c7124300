"""
Tests for the source-ip strategy and the strategy registry.
"""

import os
import sys
import textwrap
from collections import Counter

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface import implementer

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.plugin import IPlugin

from stickyproxy import AdminState, ConfigError, Router
from stickyproxy.interfaces import IPersistenceStrategy, IPersistenceStrategyFactory
from stickyproxy.persistence._affinity import HashAffinity, TableAffinity
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._sourceip import masked_address, source_ip
from stickyproxy.testing import make_pool, routing_context

from tests._base import TestCase
from tests._plugins import ALWAYS_FIRST, RAISES_ON_IMPORT

PATH = "frontend[0].persistence"


def _build(pool, **options):
    return source_ip.build(options, pool, Clock(), PATH)


class MaskTests(TestCase):
    def test_ipv4_mask(self):
        """
        Addresses in one /24 share a key under mask 24, and differ under 32.
        """
        self.assertEqual(
            masked_address("10.1.2.3", 24, 64), masked_address("10.1.2.200", 24, 64)
        )
        self.assertNotEqual(
            masked_address("10.1.2.3", 32, 64), masked_address("10.1.2.200", 32, 64)
        )

    def test_ipv6_mask(self):
        """
        IPv6 addresses use C{mask6}: one /64 shares a key by default.
        """
        self.assertEqual(
            masked_address("2001:db8::1", 32, 64),
            masked_address("2001:db8::ffff", 32, 64),
        )
        self.assertNotEqual(
            masked_address("2001:db8::1", 32, 128),
            masked_address("2001:db8::ffff", 32, 128),
        )

    def test_ipv4_mapped(self):
        """
        An IPv4-mapped IPv6 address counts as the IPv4 address.
        """
        self.assertEqual(
            masked_address("::ffff:10.1.2.3", 32, 64),
            masked_address("10.1.2.3", 32, 64),
        )

    def test_not_an_address(self):
        """
        A peer that is not an IP address (a UNIX socket) is its own key.
        """
        self.assertEqual(masked_address("/run/x.sock", 32, 64), b"/run/x.sock")


class SourceIPHashTests(TestCase):
    def setUp(self):
        self.pool = make_pool("a", "b", "c")
        self.strategy = _build(self.pool)

    def test_provides(self):
        """
        The factory and the strategy provide their interfaces.
        """
        self.assertProvides(IPersistenceStrategyFactory, source_ip)
        self.assertProvides(IPersistenceStrategy, self.strategy)
        self.assertIsInstance(self.strategy, HashAffinity)

    def test_same_address_same_backend(self):
        """
        One address always maps to one backend.
        """
        ctx = routing_context("192.0.2.7")
        first = self.strategy.lookup(ctx)
        for _ in range(10):
            self.assertIs(self.strategy.lookup(ctx), first)

    def test_identical_across_proxies(self):
        """
        Two proxies (two strategies over two pools with the same backends)
        agree on every client: the hash needs no shared state.
        """
        other = _build(make_pool("a", "b", "c"))
        for i in range(100):
            ctx = routing_context(f"198.51.100.{i}")
            self.assertEqual(self.strategy.lookup(ctx).name, other.lookup(ctx).name)

    def test_spread(self):
        """
        Many addresses spread over every backend.
        """
        counts = Counter(
            self.strategy.lookup(routing_context(f"10.0.{i // 256}.{i % 256}")).name
            for i in range(600)
        )
        self.assertEqual(set(counts), {"a", "b", "c"})
        self.assertGreater(min(counts.values()), 120)

    def test_mask(self):
        """
        With C{mask = 24}, a whole /24 goes to one backend.
        """
        strategy = _build(self.pool, mask=24)
        names = {
            strategy.lookup(routing_context(f"203.0.113.{i}")).name for i in range(256)
        }
        self.assertEqual(len(names), 1)

    def test_draining_keeps_its_clients(self):
        """
        A draining backend still serves the clients hashed to it.
        """
        ctx = routing_context("192.0.2.7")
        bound = self.strategy.lookup(ctx)
        self.pool.set_admin_state(bound.name, AdminState.DRAIN)
        self.assertIs(self.strategy.lookup(ctx), bound)

    @settings(max_examples=10)
    @given(st.sampled_from(["a", "b", "c"]))
    def test_unusable_moves_only_its_clients(self, gone):
        """
        When a backend goes into maintenance (or down), only its clients are
        bound elsewhere; everyone else keeps their backend.
        """
        pool = make_pool("a", "b", "c")
        router = Router(pool, [_build(pool)], Clock())
        contexts = [routing_context(f"10.9.{i // 256}.{i % 256}") for i in range(300)]
        before = [router.choose(c).backend.name for c in contexts]
        pool.set_admin_state(gone, AdminState.MAINT)
        after = [router.choose(c).backend.name for c in contexts]
        for old, new in zip(before, after, strict=True):
            if old != gone:
                self.assertEqual(old, new)
            else:
                self.assertNotEqual(new, gone)

    def test_persist_is_stateless(self):
        """
        Persisting and releasing change nothing: the hash is the binding.
        """
        ctx = routing_context("192.0.2.7")
        bound = self.strategy.lookup(ctx)
        other = next(b for b in self.pool.backends if b is not bound)
        self.strategy.persist(ctx, other)
        self.strategy.release(ctx, other)
        self.assertIs(self.strategy.lookup(ctx), bound)


class SourceIPTableTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.pool = make_pool("a", "b", "c")
        self.strategy = source_ip.build(
            {"mode": "table", "timeout": 30, "size": 2}, self.pool, self.clock, PATH
        )

    def test_provides(self):
        """
        The table strategy provides L{IPersistenceStrategy}.
        """
        self.assertIsInstance(self.strategy, TableAffinity)
        self.assertProvides(IPersistenceStrategy, self.strategy)

    def test_learns(self):
        """
        An unknown client is unbound; after a backend served it, it is bound
        to that backend.
        """
        ctx = routing_context("192.0.2.7")
        self.assertIsNone(self.strategy.lookup(ctx))
        self.strategy.persist(ctx, self.pool.get("b"))
        self.assertEqual(self.strategy.lookup(ctx).name, "b")

    def test_expires_after_idle_timeout(self):
        """
        Once released, the binding lives C{timeout} seconds of the reactor's
        clock.
        """
        ctx = routing_context("192.0.2.7")
        self.strategy.persist(ctx, self.pool.get("b"))
        self.strategy.release(ctx, self.pool.get("b"))
        self.clock.advance(29)
        self.assertEqual(self.strategy.lookup(ctx).name, "b")
        self.clock.advance(30)
        self.assertIsNone(self.strategy.lookup(ctx))

    def test_size(self):
        """
        The table keeps at most C{size} bindings, evicting the oldest.
        """
        for i, name in enumerate("abc"):
            self.strategy.persist(routing_context(f"10.0.0.{i}"), self.pool.get(name))
        self.assertIsNone(self.strategy.lookup(routing_context("10.0.0.0")))
        self.assertEqual(self.strategy.lookup(routing_context("10.0.0.2")).name, "c")

    def test_mask(self):
        """
        The table is keyed on the masked address.
        """
        strategy = source_ip.build(
            {"mode": "table", "mask": 16}, self.pool, self.clock, PATH
        )
        strategy.persist(routing_context("10.1.0.1"), self.pool.get("c"))
        self.assertEqual(strategy.lookup(routing_context("10.1.200.9")).name, "c")

    def test_removed_backend(self):
        """
        A binding to a backend the pool no longer has reads as unbound.
        """
        ctx = routing_context("192.0.2.7")
        self.strategy.table.bind(b"\xc0\x00\x02\x07", "gone")
        self.assertIsNone(self.strategy.lookup(ctx))


class SourceIPOptionTests(TestCase):
    def assertOptionError(self, key, options, fragment):
        error = self.assertRaises(ConfigError, _build, make_pool("a"), **options)
        self.assertEqual(error.path, f"{PATH}.{key}")
        self.assertIn(fragment, error.message)

    def test_errors(self):
        """
        Each bad option names its key and what was expected.
        """
        self.assertOptionError("mode", {"mode": "sticky"}, "one of 'hash', 'table'")
        self.assertOptionError("mask", {"mask": 33}, "from 0 to 32")
        self.assertOptionError("mask", {"mask": "24"}, "an integer")
        self.assertOptionError("mask6", {"mask6": 129}, "from 0 to 128")
        self.assertOptionError("timeout", {"mode": "table", "timeout": 0}, "positive")
        self.assertOptionError("size", {"mode": "table", "size": 0}, "at least 1")
        self.assertOptionError("colour", {"colour": "red"}, "unknown key")

    def test_table_options_need_table_mode(self):
        """
        C{timeout} means nothing to the stateless hash: it is refused there.
        """
        self.assertOptionError("timeout", {"timeout": 5}, "unknown key")


@implementer(IPlugin, IPersistenceStrategyFactory)
@attrs.frozen
class _Factory:
    name: str
    modes: frozenset = frozenset({"tcp"})
    description: str = "test"

    def build(self, options, pool, reactor, path):
        return HashAffinity("test", pool, lambda context: b"key")


class _Broken:
    """Claims nothing: not a strategy factory."""

    name = "broken"


class RegistryTests(TestCase):
    def test_builtins_through_plugins(self):
        """
        The built-in strategies are found through L{twisted.plugin.getPlugins},
        the same path third-party strategies take.
        """
        registry = StrategyRegistry.from_plugins()
        self.assertIn("source-ip", registry.names())
        self.assertIs(registry.get("source-ip", "x"), source_ip)

    def test_unknown_name(self):
        """
        An unknown name is a L{ConfigError} at the given key, listing the
        known names.
        """
        registry = StrategyRegistry.of([source_ip])
        error = self.assertRaises(ConfigError, registry.get, "cookie-jar", "f.strategy")
        self.assertEqual(error.path, "f.strategy")
        self.assertIn("source-ip", error.message)
        self.assertIn("'cookie-jar'", error.message)

    def test_broken_plugin_skipped(self):
        """
        A plugin that does not provide the interface properly is logged and
        skipped; the others stay usable.
        """
        with capturedLogs() as events:
            registry = StrategyRegistry.of([_Factory("Upper"), source_ip])
        self.assertEqual(registry.names(), ["source-ip"])
        (event,) = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertIn("lowercase", event["reason"])

    def test_builtin_name_kept(self):
        """
        A third-party plugin reusing a built-in's name is ignored with a
        warning; the built-in stays.
        """
        with capturedLogs() as events:
            registry = StrategyRegistry.of([_Factory("source-ip"), source_ip])
        self.assertIs(registry.get("source-ip", "x"), source_ip)
        self.assertTrue(any(e["log_level"] == LogLevel.warn for e in events))

    def test_duplicate_third_party(self):
        """
        Two third-party plugins with one name: the name is refused when
        used, with both origins named, and the other strategies still work.
        """
        with capturedLogs() as events:
            registry = StrategyRegistry.of(
                [_Factory("dup"), _Factory("dup"), source_ip]
            )
        self.assertEqual(registry.names(), ["source-ip"])
        error = self.assertRaises(ConfigError, registry.get, "dup", "f.strategy")
        self.assertIn("several plugins", error.message)
        self.assertTrue(any("dup" in str(e.get("strategy")) for e in events))

    def test_third_party_plugin_on_sys_path(self):
        """
        A throw-away plugin package put on C{sys.path} is found by the
        registry and its strategy used from a config file; a sibling plugin
        module that fails to import does not stop it.
        """
        import twisted.plugins
        from twisted.internet.testing import MemoryReactorClock

        from stickyproxy import read_config_file
        from stickyproxy.service import ProxyService

        root = self.mktemp()
        plugins = os.path.join(root, "twisted", "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "throwaway_stickyproxy.py"), "w") as f:
            f.write(ALWAYS_FIRST)
        with open(os.path.join(plugins, "broken_stickyproxy.py"), "w") as f:
            f.write(RAISES_ON_IMPORT)
        sys.path.insert(0, root)
        twisted.plugins.__path__.append(plugins)
        self.addCleanup(sys.path.remove, root)
        self.addCleanup(twisted.plugins.__path__.remove, plugins)

        registry = StrategyRegistry.from_plugins()
        self.flushLoggedErrors(RuntimeError)
        self.assertIn("always-first", registry.names())
        self.assertIn("source-ip", registry.names())

        config_path = os.path.join(root, "proxy.toml")
        with open(config_path, "w") as f:
            f.write(
                textwrap.dedent(
                    """
                    [[frontend]]
                    name = "db"
                    listen = "tcp:7000"
                    pool = "pg"
                    [frontend.persistence]
                    strategy = "always-first"
                    [pool.pg]
                    [[pool.pg.backend]]
                    name = "one"
                    address = "127.0.0.1:1"
                    [[pool.pg.backend]]
                    name = "two"
                    address = "127.0.0.1:2"
                    """
                )
            )
        config = read_config_file(config_path, registry)
        proxy = ProxyService(config, MemoryReactorClock(), registry)
        router = proxy.routers["db"]
        self.assertEqual(router.choose(routing_context("10.0.0.1")).backend.name, "one")
        self.assertEqual(router.choose(routing_context("10.0.0.2")).backend.name, "one")


class HTTPContextTests(TestCase):
    def test_cookie_as_sent(self):
        """
        A strategy reads cookies as the client sent them, even after one
        was taken off or changed for the forwarded request (so a retry's
        lookup still sees them); the forwarded headers carry the changes.
        """
        from stickyproxy.testing import http_context

        ctx = http_context(headers=[(b"cookie", b"a=1; STICKY=x; b=2")])
        ctx.remove_cookie("STICKY")
        ctx.replace_cookie("a", "9")
        self.assertEqual((ctx.cookie("STICKY"), ctx.cookie("a")), ("x", "1"))
        self.assertIn((b"cookie", b"a=9; b=2"), ctx.forwarded_headers())

    def test_remove_absent_cookie(self):
        """
        Taking off a cookie the request does not carry leaves the request
        headers as they came: the Cookie headers are not rebuilt.
        """
        from stickyproxy.testing import http_context

        headers = [(b"cookie", b"a=1;b=2"), (b"x", b"y"), (b"cookie", b"c=3")]
        ctx = http_context(headers=list(headers))
        ctx.remove_cookie("STICKY")
        self.assertEqual(ctx.forwarded_headers(), headers)
        ctx.remove_cookie("b")
        self.assertEqual(
            ctx.forwarded_headers(), [(b"x", b"y"), (b"cookie", b"a=1; c=3")]
        )

    def test_response_header_values(self):
        """
        Every value of a response header, in order.
        """
        from stickyproxy.testing import http_context, respond

        ctx = http_context()
        respond(ctx, 200, [(b"vary", b"a"), (b"x", b"y"), (b"vary", b"b")])
        self.assertEqual(ctx.response_header_values(b"vary"), [b"a", b"b"])
