"""
Tests for configuration loading: every mistake names its key.
"""

import copy
import os

import attrs
from zope.interface import implementer

from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin

from stickyproxy import AdminState, ConfigError, load_config, read_config_file
from stickyproxy.config._options import OptionReader
from stickyproxy.interfaces import IPersistenceStrategyFactory
from stickyproxy.model import Health
from stickyproxy.persistence._affinity import HashAffinity
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ProxyService, build_pool

from tests._base import TestCase


@implementer(IPlugin, IPersistenceStrategyFactory)
@attrs.frozen
class _HTTPOnly:
    name: str = "http-only"
    modes: frozenset = frozenset({"http"})
    description: str = "test"

    def build(self, options, pool, reactor, path):
        return HashAffinity("test", pool, lambda context: b"key")


REGISTRY = StrategyRegistry.of([source_ip, _HTTPOnly()])

GOOD = {
    "admin": {"listen": "tcp:9901:interface=127.0.0.1"},
    "frontend": [
        {
            "name": "db",
            "mode": "tcp",
            "listen": "tcp:7000:interface=127.0.0.1",
            "pool": "pg",
            "persistence": {"strategy": "source-ip", "mask": 24},
        }
    ],
    "pool": {
        "pg": {
            "balance": "roundrobin",
            "connect_timeout": 3.0,
            "retries": 2,
            "backend": [
                {
                    "name": "pg1",
                    "address": "127.0.0.1:5432",
                    "weight": 1,
                    "admin_state": "ready",
                },
                {"name": "pg2", "address": "[::1]:5432", "admin_state": "drain"},
            ],
        }
    },
}


def _with(change):
    data = copy.deepcopy(GOOD)
    change(data)
    return data


class LoadTests(TestCase):
    def test_issue_example(self):
        """
        The documented example loads into frozen config objects.
        """
        config = load_config(GOOD, REGISTRY)
        (frontend,) = config.frontends
        self.assertEqual(
            (frontend.name, frontend.mode, frontend.pool), ("db", "tcp", "pg")
        )
        self.assertEqual(frontend.persistence[0].strategy, "source-ip")
        self.assertEqual(dict(frontend.persistence[0].options), {"mask": 24})
        pool = config.pools["pg"]
        self.assertEqual([b.name for b in pool.backends], ["pg1", "pg2"])
        self.assertEqual(pool.backends[1].admin_state, AdminState.DRAIN)
        self.assertEqual(config.admin.listen, "tcp:9901:interface=127.0.0.1")
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError, setattr, frontend, "name", "x"
        )

    def test_defaults(self):
        """
        Omitted keys take their documented defaults.
        """
        config = load_config(
            {
                "frontend": {"listen": "tcp:1", "pool": "p"},
                "pool": {"p": {"backend": {"address": "127.0.0.1:1"}}},
            },
            REGISTRY,
        )
        frontend = config.frontends[0]
        self.assertEqual(
            (frontend.name, frontend.mode, frontend.persistence, frontend.idle_timeout),
            ("frontend0", "tcp", (), None),
        )
        pool = config.pools["p"]
        self.assertEqual(
            (pool.balance, pool.connect_timeout, pool.retries, pool.send_proxy),
            ("roundrobin", 3.0, 2, None),
        )
        self.assertEqual(pool.backends[0].name, "backend1")
        self.assertEqual(pool.backends[0].route, "backend1")

    def test_strategy_chain(self):
        """
        C{[[frontend.persistence]]} as an array gives a chain, in order.
        """
        data = _with(
            lambda d: d["frontend"][0].update(
                persistence=[
                    {"strategy": "source-ip", "mode": "table"},
                    {"strategy": "source-ip"},
                ]
            )
        )
        chain = load_config(data, REGISTRY).frontends[0].persistence
        self.assertEqual(
            [p.path for p in chain],
            [
                "frontend[0].persistence[0]",
                "frontend[0].persistence[1]",
            ],
        )


class ErrorTests(TestCase):
    def assertConfigError(self, change, path, fragment):
        error = self.assertRaises(ConfigError, load_config, _with(change), REGISTRY)
        self.assertEqual(error.path, path)
        self.assertIn(fragment, error.message)
        self.assertIn(path, str(error))

    def test_unknown_key(self):
        """
        An unknown key is named with its path and the keys that are known.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0].update(colour="red"),
            "frontend[0].colour",
            "unknown key",
        )
        self.assertConfigError(
            lambda d: d["pool"]["pg"]["backend"][1].update(wieght=2),
            "pool.pg.backend[1].wieght",
            "weight",
        )
        self.assertConfigError(
            lambda d: d.update(frontends=[]), "frontends", "did you mean 'frontend'?"
        )

    def test_known_keys_listed(self):
        """
        The list of keys an unknown key is compared with includes the
        optional ones that were not given.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0].update(colour="red"),
            "frontend[0].colour",
            "persistence",
        )

    def test_misspelt_required_key(self):
        """
        A misspelt required key is named as the typo, not as missing.
        """
        self.assertConfigError(
            lambda d: d["pool"]["pg"]["backend"][0].update(
                adress=d["pool"]["pg"]["backend"][0].pop("address")
            ),
            "pool.pg.backend[0].adress",
            "did you mean 'address'?",
        )

    def test_wrong_type(self):
        """
        A value of the wrong type names the type expected and the one given.
        """
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(retries="two"),
            "pool.pg.retries",
            "expected an integer from 0 to 100, got a string ('two')",
        )
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(connect_timeout=0),
            "pool.pg.connect_timeout",
            "positive",
        )
        self.assertConfigError(
            lambda d: d["frontend"][0].update(listen=7000),
            "frontend[0].listen",
            "a string",
        )
        self.assertConfigError(
            lambda d: d["frontend"][0].update(strict="yes"),
            "frontend[0].strict",
            "true or false",
        )
        self.assertConfigError(
            lambda d: d["frontend"][0].update(persistence_timeout=0),
            "frontend[0].persistence_timeout",
            "positive",
        )

    def test_choices(self):
        """
        A value outside its choices lists them.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0].update(mode="udp"),
            "frontend[0].mode",
            "'tcp', 'http'",
        )
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(balance="fastest"),
            "pool.pg.balance",
            "'leastconn'",
        )
        self.assertConfigError(
            lambda d: d["pool"]["pg"]["backend"][0].update(admin_state="up"),
            "pool.pg.backend[0].admin_state",
            "'drain'",
        )
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(send_proxy="v3"),
            "pool.pg.send_proxy",
            "'v1' or 'v2'",
        )

    def test_mode_specific_keys(self):
        """
        HTTP options are unknown keys on a TCP frontend, and TCP ones on an
        HTTP frontend.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0].update(debug_header="X-Debug"),
            "frontend[0].debug_header",
            'expected only on mode = "http" frontends',
        )
        self.assertConfigError(
            lambda d: d["frontend"][0].update(mode="http", idle_timeout=5),
            "frontend[0].idle_timeout",
            'expected only on mode = "tcp" frontends',
        )

    def test_http_settings(self):
        """
        An HTTP frontend's options load, header names lowercased.
        """
        data = _with(
            lambda d: d["frontend"][0].update(
                mode="http",
                trusted_proxies=["10.0.0.0/8"],
                debug_header="X-Sticky-Debug",
                redispatch_header="X-Previous-Backend",
                max_body_size=1000,
                timeout_response=5,
            )
        )
        http = load_config(data, REGISTRY).frontends[0].http
        self.assertEqual(http.debug_header, b"x-sticky-debug")
        self.assertEqual(http.redispatch_header, b"x-previous-backend")
        self.assertEqual((http.max_body_size, http.timeout_response), (1000, 5.0))
        self.assertEqual(str(http.trusted_proxies[0]), "10.0.0.0/8")

    def test_timeouts(self):
        """
        C{timeout_body} and C{body_min_rate} load on HTTP frontends, and
        C{timeout_proxy_header} on C{haproxy:} listeners; the defaults are
        30 s, 500 bytes a second and 10 s.
        """
        http = load_config(
            _with(lambda d: d["frontend"][0].update(mode="http")), REGISTRY
        ).frontends[0]
        self.assertEqual(
            (
                http.http.timeout_body,
                http.http.body_min_rate,
                http.timeout_proxy_header,
            ),
            (30.0, 500.0, 10.0),
        )
        frontend = load_config(
            _with(
                lambda d: d["frontend"][0].update(
                    mode="http",
                    listen="haproxy:tcp:7000",
                    timeout_body=5,
                    body_min_rate=0,
                    timeout_proxy_header=2,
                )
            ),
            REGISTRY,
        ).frontends[0]
        self.assertEqual(
            (
                frontend.http.timeout_body,
                frontend.http.body_min_rate,
                frontend.timeout_proxy_header,
            ),
            (5.0, 0.0, 2.0),
        )

    def test_proxy_header_timeout_needs_haproxy(self):
        """
        C{timeout_proxy_header} on a listener that reads no PROXY header is
        a mistake, not silently ignored.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0].update(timeout_proxy_header=5),
            "frontend[0].timeout_proxy_header",
            'expected only with a "haproxy:" listen string',
        )

    def test_http_errors(self):
        """
        Bad HTTP options name their key.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0].update(
                mode="http", trusted_proxies=["10.0.0.300/8"]
            ),
            "frontend[0].trusted_proxies",
            "CIDR",
        )
        self.assertConfigError(
            lambda d: d["frontend"][0].update(mode="http", debug_header="X Debug"),
            "frontend[0].debug_header",
            "cookie or header name",
        )

    def test_timeout_handshake(self):
        """
        C{timeout_handshake} bounds a TLS client's handshake: 10 s by
        default, any positive duration in range, and a clear error naming
        the key otherwise.
        """
        load = lambda **options: load_config(  # noqa: E731
            _with(lambda d: d["frontend"][0].update(**options)), REGISTRY
        ).frontends[0]
        self.assertEqual(load().timeout_handshake, 10.0)
        self.assertEqual(load(timeout_handshake=2.5).timeout_handshake, 2.5)
        self.assertConfigError(
            lambda d: d["frontend"][0].update(timeout_handshake=0),
            "frontend[0].timeout_handshake",
            "expected a positive number",
        )

    def test_upgrades(self):
        """
        C{upgrades} lists the protocols an HTTP frontend tunnels, matched
        without case: WebSocket alone by default, none with C{[]}; anything
        but an array of tokens is refused, naming the key.
        """
        load = lambda **options: (  # noqa: E731
            load_config(
                _with(lambda d: d["frontend"][0].update(mode="http", **options)),
                REGISTRY,
            )
            .frontends[0]
            .http
        )
        self.assertEqual(load().upgrades, {b"websocket"})
        self.assertEqual(load(upgrades=[]).upgrades, frozenset())
        self.assertEqual(
            load(upgrades=["WebSocket", "x-custom"]).upgrades,
            {b"websocket", b"x-custom"},
        )
        for bad in ["websocket", ["web socket"], [1]]:
            self.assertConfigError(
                lambda d, bad=bad: d["frontend"][0].update(mode="http", upgrades=bad),
                "frontend[0].upgrades",
                "expected an array of",
            )

    def test_unknown_pool(self):
        """
        A frontend naming a pool that does not exist lists the pools.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0].update(pool="mysql"),
            "frontend[0].pool",
            "(pg), got 'mysql'",
        )

    def test_unknown_strategy(self):
        """
        An unknown strategy lists the registered ones.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0]["persistence"].update(strategy="magic"),
            "frontend[0].persistence.strategy",
            "source-ip",
        )

    def test_strategy_mode_mismatch(self):
        """
        A strategy that does not fit the frontend's mode is refused.
        """
        self.assertConfigError(
            lambda d: d["frontend"][0].update(persistence={"strategy": "http-only"}),
            "frontend[0].persistence.strategy",
            "fits http frontends, not mode = 'tcp'",
        )

    def test_structure(self):
        """
        Missing or misshapen tables are named.
        """
        self.assertConfigError(lambda d: d.pop("frontend"), "frontend", "at least one")
        self.assertConfigError(
            lambda d: d["pool"]["pg"].pop("backend"), "pool.pg.backend", "is required"
        )
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(backend=[]),
            "pool.pg.backend",
            "at least one",
        )
        self.assertConfigError(
            lambda d: d["pool"].update(pg=3), "pool.pg", "expected a table"
        )
        self.assertConfigError(
            lambda d: d["frontend"][0].pop("listen"), "frontend[0].listen", "required"
        )

    def test_duplicates(self):
        """
        Two backends of a pool, or two frontends, may not share a name.
        """
        self.assertConfigError(
            lambda d: d["pool"]["pg"]["backend"][1].update(name="pg1"),
            "pool.pg.backend[1].name",
            "duplicate",
        )
        self.assertConfigError(
            lambda d: d["frontend"].append(dict(d["frontend"][0])),
            "frontend[1].name",
            "duplicate",
        )

    def test_balance_factor_needs_hash(self):
        """
        C{balance_factor} applies to the hash balancer only, above 1.
        """
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(balance_factor=1.5),
            "pool.pg.balance_factor",
            'balance = "hash"',
        )
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(balance="hash", balance_factor=0.5),
            "pool.pg.balance_factor",
            "above 1.0",
        )

    def test_session_balance_factor(self):
        """
        C{session_balance_factor} goes with any balancer, above 1; anything
        else is named with what is expected.
        """
        for balance in ("roundrobin", "hash", "leastsessions"):
            data = _with(
                lambda d, b=balance: d["pool"]["pg"].update(
                    balance=b, session_balance_factor=1.25
                )
            )
            pool = load_config(data, REGISTRY).pools["pg"]
            self.assertEqual(
                (pool.balance, pool.session_balance_factor), (balance, 1.25)
            )
        self.assertIsNone(
            load_config(GOOD, REGISTRY).pools["pg"].session_balance_factor
        )
        for bad in (1.0, 0.5, "x"):
            self.assertConfigError(
                lambda d, bad=bad: d["pool"]["pg"].update(session_balance_factor=bad),
                "pool.pg.session_balance_factor",
                "number",
            )
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(session_balance_factor=1.0),
            "pool.pg.session_balance_factor",
            "a number above 1.0 (e.g. 1.25)",
        )
        self.assertConfigError(
            lambda d: d["pool"]["pg"].update(balance="fewest"),
            "pool.pg.balance",
            "leastsessions",
        )


class FileTests(TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_not_toml(self):
        """
        A file that is not TOML is reported with its name and the parser's
        reason (line and column).
        """
        path = self.write("[[frontend]\nname = 1\n")
        error = self.assertRaises(ConfigError, read_config_file, path, REGISTRY)
        self.assertEqual(error.path, path)
        self.assertIn("not valid TOML", error.message)
        self.assertIn("line 1", error.message)

    def test_missing_file(self):
        """
        A file that cannot be read is named.
        """
        path = os.path.join(self.mktemp(), "nope.toml")
        error = self.assertRaises(ConfigError, read_config_file, path, REGISTRY)
        self.assertIn("cannot read", error.message)


class BuildErrorTests(TestCase):
    """
    Mistakes only found when the running objects are built (endpoint strings,
    strategy options) carry key paths too.
    """

    def assertBuildError(self, change, path, fragment):
        config = load_config(_with(change), REGISTRY)
        error = self.assertRaises(
            ConfigError, ProxyService, config, MemoryReactorClock(), REGISTRY
        )
        self.assertEqual(error.path, path)
        self.assertIn(fragment, error.message)

    def test_bad_listen_endpoint(self):
        """
        An unparsable listen string names the frontend's C{listen} key.
        """
        self.assertBuildError(
            lambda d: d["frontend"][0].update(listen="tcp:notaport"),
            "frontend[0].listen",
            "server endpoint string",
        )
        self.assertBuildError(
            lambda d: d["frontend"][0].update(listen="carrier-pigeon:7000"),
            "frontend[0].listen",
            "carrier-pigeon",
        )

    def test_bad_backend_address(self):
        """
        An unparsable backend address names the backend's C{address} key.
        """
        self.assertBuildError(
            lambda d: d["pool"]["pg"]["backend"][0].update(address="127.0.0.1:99999"),
            "pool.pg.backend[0].address",
            "out of range",
        )
        self.assertBuildError(
            lambda d: d["pool"]["pg"]["backend"][0].update(address="::1:80"),
            "pool.pg.backend[0].address",
            "brackets",
        )
        self.assertBuildError(
            lambda d: d["pool"]["pg"]["backend"][0].update(address="nonsense"),
            "pool.pg.backend[0].address",
            "host:port",
        )

    def test_bad_strategy_option(self):
        """
        A strategy option error carries the persistence table's path.
        """
        self.assertBuildError(
            lambda d: d["frontend"][0]["persistence"].update(mask=99),
            "frontend[0].persistence.mask",
            "from 0 to 32",
        )


class OptionReaderTests(TestCase):
    def test_bool_is_not_int(self):
        """
        TOML's C{true} is not accepted where an integer is expected.
        """
        reader = OptionReader({"n": True}, "t")
        error = self.assertRaises(ConfigError, reader.integer, "n")
        self.assertEqual(str(error), "t.n: expected an integer, got a boolean (True)")

    def test_not_a_table(self):
        """
        A reader over something that is not a table says so.
        """
        error = self.assertRaises(
            ConfigError, OptionReader, [1], "frontend[0].persistence"
        )
        self.assertIn("expected a table", str(error))

    def test_context_manager(self):
        """
        A reader used with C{with} refuses unread keys when the block ends,
        also by a C{return}; an error inside the block is the one raised.
        """

        def read(table):
            with OptionReader(table, "t") as reader:
                return reader.integer("n")

        self.assertEqual(read({"n": 1}), 1)
        error = self.assertRaises(ConfigError, read, {"n": 1, "colour": 2})
        self.assertEqual(error.path, "t.colour")
        error = self.assertRaises(ConfigError, read, {"n": "x", "colour": 2})
        self.assertEqual(error.path, "t.n")


class BoundsTests(TestCase):
    """
    Every duration and count has a sane range, refused outside it with the
    key and the range (issue 8, defect 11).
    """

    def assertOutOfBounds(self, change, path, expected):
        error = self.assertRaises(ConfigError, load_config, _with(change), REGISTRY)
        self.assertEqual(error.path, path)
        self.assertIn(f"expected {expected}, got", error.message)

    def test_probe_storm(self):
        """
        A probe interval of a microsecond is refused, naming the key and
        the range.
        """
        error = self.assertRaises(
            ConfigError,
            load_config,
            _with(lambda d: d["pool"]["pg"].update(health={"interval": 0.000001})),
            REGISTRY,
        )
        self.assertEqual(
            str(error),
            "pool.pg.health.interval: expected a positive number from 0.1 to "
            "86400, got a number (1e-06)",
        )

    def test_each_kind(self):
        """
        Durations, rates and counts of every table, too small or too
        large, each named with its range.
        """
        pool = lambda **keys: lambda d: d["pool"]["pg"].update(**keys)  # noqa: E731
        health = lambda **keys: pool(health=keys)  # noqa: E731
        frontend = lambda **keys: lambda d: d["frontend"][0].update(**keys)  # noqa: E731
        http = lambda **keys: frontend(mode="http", persistence=[], **keys)  # noqa: E731
        timeout = "a positive number from 0.01 to 2592000"
        for change, path, expected in [
            (pool(connect_timeout=0.001), "pool.pg.connect_timeout", timeout),
            (pool(keepalive_timeout=1e9), "pool.pg.keepalive_timeout", timeout),
            (pool(keepalive=10001), "pool.pg.keepalive", "an integer from 0 to 10000"),
            (health(timeout=0.001), "pool.pg.health.timeout", timeout),
            (
                health(fast_interval=0.01),
                "pool.pg.health.fast_interval",
                "a positive number from 0.1 to 86400",
            ),
            (
                health(passive_cooldown=0.01),
                "pool.pg.health.passive_cooldown",
                "a positive number from 0.1 to 2592000",
            ),
            (
                health(slow_start=0.5),
                "pool.pg.health.slow_start",
                "0 (off) or a positive number from 1 to 86400",
            ),
            (frontend(idle_timeout=0.001), "frontend[0].idle_timeout", timeout),
            (
                frontend(persistence_timeout=60),
                "frontend[0].persistence_timeout",
                "a positive number from 0.001 to 10",
            ),
            (http(timeout_request=0.001), "frontend[0].timeout_request", timeout),
            (http(timeout_tunnel=1e8), "frontend[0].timeout_tunnel", timeout),
            (
                http(body_min_rate=0.5),
                "frontend[0].body_min_rate",
                "0 (off) or a positive number from 1 to 1000000000",
            ),
            (
                http(max_header_size=1 << 24),
                "frontend[0].max_header_size",
                "an integer from 1024 to 1048576",
            ),
            (
                http(retry_after=100000),
                "frontend[0].retry_after",
                "an integer from 0 to 86400",
            ),
        ]:
            self.assertOutOfBounds(change, path, expected)

    def test_edges_and_off(self):
        """
        The ends of each range are accepted, and C{0} where it means off.
        """
        data = _with(
            lambda d: (
                d["pool"]["pg"].update(
                    connect_timeout=0.01,
                    health={"interval": 0.1, "slow_start": 0, "jitter": 0.5},
                ),
                d["frontend"][0].update(
                    mode="http",
                    persistence=[],
                    body_min_rate=0,
                    max_body_size=0,
                    timeout_tunnel=30 * 86400,
                ),
            )
        )
        config = load_config(data, REGISTRY)
        self.assertEqual(config.pools["pg"].health.settings.interval, 0.1)
        self.assertEqual(config.frontends[0].http.body_min_rate, 0.0)

    def test_strategy_tables(self):
        """
        Strategy options have their ranges too: a stick table's idle
        timeout and size.
        """
        table = {"strategy": "source-ip", "mode": "table"}
        for option, path, expected in [
            ({"timeout": 0.5}, "timeout", "a positive number from 1 to 31536000"),
            ({"size": 0}, "size", "an integer of at least 1"),
            ({"mask": 33}, "mask", "an integer from 0 to 32"),
        ]:
            error = self.assertRaises(
                ConfigError,
                ProxyService,
                load_config(
                    _with(
                        lambda d, o=option: d["frontend"][0].update(
                            persistence={**table, **o}
                        )
                    ),
                    REGISTRY,
                ),
                MemoryReactorClock(),
                REGISTRY,
            )
            self.assertEqual(error.path, f"frontend[0].persistence.{path}")
            self.assertIn(f"expected {expected}, got", error.message)


class HealthConfigTests(TestCase):
    def health(self, table, **pool):
        data = _with(lambda d: d["pool"]["pg"].update(health=table, **pool))
        return load_config(data, REGISTRY).pools["pg"]

    def test_defaults(self):
        """
        No C{[health]} table: passive checks only, with the documented
        defaults.
        """
        pool = load_config(GOOD, REGISTRY).pools["pg"]
        health = pool.health
        self.assertIsNone(health.type)
        settings = health.settings
        self.assertEqual(
            (settings.interval, settings.timeout, settings.rise, settings.fall),
            (2.0, 1.0, 2, 3),
        )
        self.assertEqual((settings.jitter, settings.passive_fall), (0.1, 3))
        self.assertEqual(settings.init_state, Health.UP)
        self.assertEqual((health.on_down, pool.fail_open), ("keep", False))
        self.assertTrue(pool.passive_panic)

    def test_passive_panic(self):
        """
        C{passive_panic} is a pool key, on by default, that the live pool
        follows.
        """
        pool = self.health({}, passive_panic=False)
        self.assertFalse(pool.passive_panic)
        self.assertFalse(build_pool(pool, MemoryReactorClock()).passive_panic)
        self.assertTrue(build_pool(self.health({}), MemoryReactorClock()).passive_panic)

    def test_leastsessions_counts_the_pool(self):
        """
        A pool built with C{leastsessions} places new clients by its own
        session count (L{Pool.sessions}: here a strategy's live bindings),
        and C{session_balance_factor} caps any balancer by that count.
        """
        config = attrs.evolve(self.health({}), balance="leastsessions")
        pool = build_pool(config, MemoryReactorClock())
        held = {"pg1": 5, "pg2": 2}
        pool.add_session_source(held.__getitem__)
        candidates = pool.backends
        self.assertEqual(pool.choose(candidates, b"").name, "pg2")
        held["pg2"] = 9
        self.assertEqual(pool.choose(candidates, b"").name, "pg1")
        config = attrs.evolve(config, balance="roundrobin", session_balance_factor=1.1)
        pool = build_pool(config, MemoryReactorClock())
        pool.add_session_source(held.__getitem__)
        picks = {pool.choose(candidates, b"").name for _ in range(4)}
        self.assertEqual(picks, {"pg1"})

    def test_http(self):
        """
        An HTTP probe's keys, exactly as documented.
        """
        pool = self.health(
            {
                "type": "http",
                "method": "HEAD",
                "path": "/healthz",
                "host": "app.internal",
                "expect_status": "200-299",
                "expect_body": "ok",
                "interval": 1.5,
                "timeout": 0.5,
                "rise": 1,
                "fall": 2,
                "jitter": 0.2,
                "fast_interval": 0.5,
                "down_interval": 5,
                "passive_fall": 5,
                "passive_cooldown": 30,
                "passive_status": "502-504",
                "init_state": "down",
                "slow_start": 60,
                "on_down": "close",
            },
            fail_open=True,
        )
        health = pool.health
        self.assertEqual(
            (health.type, health.method, health.path), ("http", "HEAD", "/healthz")
        )
        self.assertEqual((health.host, health.expect_body), ("app.internal", b"ok"))
        self.assertIn(204, health.expect_status)
        self.assertNotIn(301, health.expect_status)
        self.assertEqual(health.settings.fast_interval, 0.5)
        self.assertIn(503, health.settings.passive_status)
        self.assertEqual(health.settings.init_state, Health.DOWN)
        self.assertEqual((health.on_down, pool.fail_open), ("close", True))

    def test_tcp(self):
        """
        A TCP probe's send/expect are bytes.
        """
        health = self.health(
            {"type": "tcp", "send": "PING\r\n", "expect": "+PONG"}
        ).health
        self.assertEqual((health.send, health.expect), (b"PING\r\n", b"+PONG"))

    def assertHealthError(self, table, key, fragment):
        data = _with(lambda d: d["pool"]["pg"].update(health=table))
        error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
        self.assertEqual(error.path, f"pool.pg.health.{key}")
        self.assertIn(fragment, error.message)

    def test_errors(self):
        """
        Health mistakes name their key: probe keys that do not fit the
        probe type, bad statuses, out-of-range thresholds.
        """
        self.assertHealthError({"type": "icmp"}, "type", "'tcp' or 'http'")
        self.assertHealthError(
            {"type": "tcp", "path": "/"}, "path", 'only with type = "http"'
        )
        self.assertHealthError({"type": "http", "send": "x"}, "send", 'type = "tcp"')
        self.assertHealthError({"expect_status": "200"}, "expect_status", "http")
        self.assertHealthError(
            {"type": "http", "expect_status": "2xx"}, "expect_status", '"200-399"'
        )
        self.assertHealthError(
            {"type": "http", "path": "healthz"}, "path", "starting with"
        )
        self.assertHealthError({"type": "http", "method": "POST"}, "method", "'HEAD'")
        self.assertHealthError({"rise": 0}, "rise", "from 1 to 100")
        self.assertHealthError({"interval": -1}, "interval", "positive")
        self.assertHealthError({"jitter": 0.9}, "jitter", "from 0 to 0.5")
        self.assertHealthError({"init_state": "maybe"}, "init_state", "'down'")
        self.assertHealthError({"on_down": "kill"}, "on_down", "'close'")
        self.assertHealthError({"init_state": "down"}, "init_state", "without a probe")


class ContradictionTests(TestCase):
    def test_http_probe_with_send_proxy(self):
        """
        A pool that sends the PROXY protocol cannot be probed over HTTP
        (the probe could not send the header its backends expect).
        """
        data = _with(
            lambda d: d["pool"]["pg"].update(send_proxy="v1", health={"type": "http"})
        )
        error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
        self.assertEqual(error.path, "pool.pg.health.type")

    def test_no_backend_for_new_clients_warned(self):
        """
        A pool where no backend takes new clients starts, with a warning.
        """
        from twisted.logger import LogLevel, capturedLogs

        data = _with(
            lambda d: [
                b.update(admin_state="drain") for b in d["pool"]["pg"]["backend"]
            ]
        )
        with capturedLogs() as events:
            ProxyService(load_config(data, REGISTRY), MemoryReactorClock(), REGISTRY)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertTrue(any(e.get("pool") == "pg" for e in warnings))


class HealthBuildTests(TestCase):
    def test_monitor_per_pool(self):
        """
        The proxy runs one health monitor per pool, with the configured probe.
        """
        from stickyproxy.health._probes import HTTPProbe

        data = _with(
            lambda d: d["pool"]["pg"].update(health={"type": "http", "path": "/hz"})
        )
        proxy = ProxyService(
            load_config(data, REGISTRY), MemoryReactorClock(), REGISTRY
        )
        monitor = proxy.monitors["pg"]
        self.assertIsInstance(monitor.probe, HTTPProbe)
        self.assertEqual(monitor.probe.path, "/hz")
        self.assertIs(proxy.pools["pg"].passive, monitor)


class AddressTests(TestCase):
    def test_forms(self):
        """
        Backend addresses: host:port, [v6]:port, a hostname, or any client
        endpoint string, positional ones included.
        """
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            UNIXClientEndpoint,
        )

        from stickyproxy.core._endpoints import connect_endpoint

        reactor = MemoryReactorClock()
        for address, kind in [
            ("127.0.0.1:80", TCP4ClientEndpoint),
            ("[::1]:80", TCP6ClientEndpoint),
            ("app.example:80", HostnameEndpoint),
            ("tcp:10.0.0.5:80", TCP4ClientEndpoint),
            ("tcp:host=10.0.0.5:port=80", TCP4ClientEndpoint),
            ("unix:/run/app.sock", UNIXClientEndpoint),
        ]:
            self.assertIsInstance(connect_endpoint(reactor, address, 3), kind, address)
        for address in ("::1:80", "2001:db8::1:443", "127.0.0.1:0", "nonsense"):
            self.assertRaises(ValueError, connect_endpoint, reactor, address, 3)

    def test_host_port(self):
        """
        The short form of backend addresses, C{host:port} or C{[v6]:port},
        is told apart from endpoint strings, positional ones included.
        """
        from stickyproxy.core._endpoints import host_port

        for address, expected in [
            ("127.0.0.1:80", ("127.0.0.1", 80)),
            ("[::1]:80", ("::1", 80)),
            ("app.example:8080", ("app.example", 8080)),
            ("tcp:10.0.0.5:80", None),
            ("tcp:host=10.0.0.5:port=80", None),
            ("unix:/run/app.sock", None),
            (":80", None),
        ]:
            self.assertEqual(host_port(address), expected, address)
        for address in ("::1:80", "127.0.0.1:65536"):
            self.assertRaises(ValueError, host_port, address)
