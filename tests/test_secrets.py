"""
Tests for the proxy's own secret (L{FileSecrets}, L{RandomSecrets}), and
for how cookie strategies and L{ProxyService} use it so that cookies
survive restarts.
"""

import os
import stat

from zope.interface import implementer

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.plugin import IPlugin
from twisted.trial.unittest import SkipTest

from stickyproxy import ConfigError, ProxyConfig, load_config
from stickyproxy.interfaces import (
    IKeyedStrategyFactory,
    IPersistenceStrategy,
    IPersistenceStrategyFactory,
    IProxySecrets,
)
from stickyproxy.persistence._appcookie import app_cookie
from stickyproxy.persistence._cookie import cookie
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._secrets import (
    KEY_FILE,
    FileSecrets,
    RandomSecrets,
    derive,
)
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ProxyService
from stickyproxy.tap import Options, _makeService
from stickyproxy.testing import http_context, make_pool, respond, set_cookies

from tests._base import TestCase

PATH = "frontend[0].persistence"
REGISTRY = StrategyRegistry.from_plugins()


class FileSecretsTests(TestCase):
    """
    L{FileSecrets}: one secret per file, made once, read ever after.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.path = os.path.join(self.directory, KEY_FILE)

    def write(self, data: bytes, mode: int = 0o600) -> None:
        """
        Put C{data} in the key file, with C{mode}.
        """
        with open(self.path, "wb") as stream:
            stream.write(data)
        os.chmod(self.path, mode)

    def assertKeyError(self, *fragments: str) -> ConfigError:
        """
        Asking for a key fails with a L{ConfigError} naming the key file,
        saying what was expected, and containing C{fragments}.
        """
        error = self.assertRaises(ConfigError, FileSecrets(self.path).key, b"p")
        self.assertEqual(error.path, self.path)
        self.assertIn("expected", error.message)
        for fragment in fragments:
            self.assertIn(fragment, error.message)
        return error

    def test_provides(self) -> None:
        """
        Both kinds of secrets provide L{IProxySecrets}.
        """
        self.assertProvides(IProxySecrets, FileSecrets(self.path))
        self.assertProvides(IProxySecrets, RandomSecrets(PATH))
        self.assertEqual(FileSecrets(self.path).location, self.path)

    def test_made_once_kept(self) -> None:
        """
        The first key asked for makes the file (mode 0600, one line of 43
        base64url characters) and says where it is; a later start (a new
        L{FileSecrets} on the same file) reads it, says so, and derives the
        same keys.
        """
        with capturedLogs() as events:
            first = FileSecrets(self.path).key(b"cookie\0STICKY")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path, "rb") as stream:
            line = stream.read()
        self.assertRegex(line, rb"^[A-Za-z0-9_-]{43}\n$")
        self.assertEqual(os.listdir(self.directory), [KEY_FILE])
        self.assertEqual([e["path"] for e in events if "path" in e], [self.path])
        self.assertIn("made a new secret", events[-1]["log_format"])
        with capturedLogs() as events:
            again = FileSecrets(self.path).key(b"cookie\0STICKY")
        self.assertEqual(again, first)
        self.assertEqual(len(first), 32)
        self.assertIn("using the secret kept in", events[-1]["log_format"])
        self.assertEqual(events[-1]["path"], self.path)

    def test_nothing_made_unless_asked(self) -> None:
        """
        A proxy whose strategies need no key writes no file.
        """
        FileSecrets(self.path)
        self.assertFalse(os.path.exists(self.path))

    def test_purposes(self) -> None:
        """
        Each purpose has its own key, derived from the one secret.
        """
        secrets = FileSecrets(self.path)
        keys = {
            secrets.key(purpose)
            for purpose in (b"cookie\0STICKY", b"cookie\0OTHER", b"app-cookie\0STICKY")
        }
        self.assertEqual(len(keys), 3)
        self.assertEqual(secrets.key(b"cookie\0STICKY"), secrets.key(b"cookie\0STICKY"))

    def test_malformed(self) -> None:
        """
        A file that does not hold one line of 43 base64url characters
        (empty, text, the wrong length, binary) is an error naming the
        file and what was expected, never a new secret; the file is left as
        it was, and its content is not shown.
        """
        for data in [
            b"",
            b"not a key at all\n",
            b"AAAAAAAAAAAAAAAAAAAAAA\n",
            b"\xff\xfe" * 30,
            b"A" * 43 + b"\nmore\n",
        ]:
            self.write(data)
            error = self.assertKeyError("base64url", "remove it")
            self.assertNotIn("not a key", error.message)
            with open(self.path, "rb") as stream:
                self.assertEqual(stream.read(), data)

    def test_not_a_file(self) -> None:
        """
        A directory where the file should be is an error.
        """
        os.mkdir(self.path)
        self.assertKeyError("not a regular file")

    def test_unreadable(self) -> None:
        """
        A file the proxy may not read is an error naming it, never a new
        secret.
        """
        if os.geteuid() == 0:
            raise SkipTest("root reads any file")
        self.write(b"A" * 43 + b"\n", mode=0)
        self.assertKeyError("cannot read it", "Permission denied")

    def test_unreadable_loop(self) -> None:
        """
        A file that cannot be opened at all (a symbolic link to itself) is
        an error naming it, never a new secret.
        """
        os.symlink(self.path, self.path)
        self.assertKeyError("cannot read it")
        self.assertTrue(os.path.islink(self.path))

    def test_loose_permissions(self) -> None:
        """
        A file others may read still works, with a warning naming it.
        """
        FileSecrets(self.path).key(b"p")
        os.chmod(self.path, 0o644)
        with capturedLogs() as events:
            FileSecrets(self.path).key(b"p")
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual([e["path"] for e in warnings], [self.path])

    def test_no_state_directory(self) -> None:
        """
        A state directory that does not exist is an error naming the file.
        """
        self.path = os.path.join(self.directory, "missing", KEY_FILE)
        self.assertKeyError("state directory", "No such file or directory")

    def test_two_proxies_at_once(self) -> None:
        """
        When another proxy makes the file between this one's look and its
        own write, this one takes the other's secret: both agree.
        """
        other = FileSecrets(self.path)
        link = os.link
        raced: list[bool] = []

        def other_first(source: str, destination: str) -> None:
            if not raced:
                raced.append(True)
                other.key(b"p")
            link(source, destination)

        self.patch(os, "link", other_first)
        self.assertEqual(FileSecrets(self.path).key(b"p"), other.key(b"p"))
        self.assertEqual(os.listdir(self.directory), [KEY_FILE])

    def test_derivation(self) -> None:
        """
        A key is HMAC-SHA256 of C{"stickyproxy key" 0x00 purpose} under the
        secret, so other implementations can agree.
        """
        import hashlib
        import hmac

        self.assertEqual(
            derive(b"s" * 32, b"cookie\0STICKY"),
            hmac.new(
                b"s" * 32, b"stickyproxy key\0cookie\0STICKY", hashlib.sha256
            ).digest(),
        )


class RandomSecretsTests(TestCase):
    """
    L{RandomSecrets}: for strategies built without the proxy's secrets.
    """

    def test_per_process_with_warning(self) -> None:
        """
        Keys last as long as the object, which warns once, naming who uses
        it; two such objects disagree.
        """
        secrets = RandomSecrets(PATH)
        with capturedLogs() as events:
            self.assertEqual(secrets.key(b"a"), secrets.key(b"a"))
        self.assertEqual([e["path"] for e in events], [PATH])
        self.assertNotEqual(secrets.key(b"a"), RandomSecrets(PATH).key(b"a"))


def _cookie_of(strategy: IPersistenceStrategy, name: str = "STICKY") -> str:
    """
    The cookie C{strategy} gives a new client served by backend C{b}.
    """
    pool_backend = strategy.cookie.pool.get("b")  # type: ignore[attr-defined]
    ctx = http_context()
    strategy.lookup(ctx)
    respond(ctx, 200, [(b"set-cookie", b"JSESSIONID=s1")])
    strategy.persist(ctx, pool_backend)
    [value] = [c.value for c in set_cookies(ctx) if c.name == name]
    return value


def _bound(strategy: IPersistenceStrategy, value: str, name: str = "STICKY") -> object:
    """
    The backend C{strategy} binds a client with cookie C{value} to.
    """
    ctx = http_context(cookies={name: value, "JSESSIONID": "s1"})
    bound = strategy.lookup(ctx)
    return None if bound is None else bound.name


class KeyedStrategyTests(TestCase):
    """
    The cookie strategies without C{keys}: their key comes from the proxy's
    secrets, one per strategy and cookie.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        self.path = os.path.join(directory, KEY_FILE)
        self.clock = MemoryReactorClock()

    def build(self, factory: object, secrets: IProxySecrets, **options: object):
        """
        Build a strategy over a fresh pool of a, b and c.
        """
        assert IKeyedStrategyFactory.providedBy(factory)
        return factory.build_keyed(
            options, make_pool("a", "b", "c"), self.clock, PATH, secrets
        )

    def test_factories_provide(self) -> None:
        """
        C{cookie} and C{app-cookie} provide L{IKeyedStrategyFactory}, and
        are still found as L{IPersistenceStrategyFactory} plugins.
        """
        for factory in (cookie, app_cookie):
            self.assertProvides(IKeyedStrategyFactory, factory)
            self.assertIs(REGISTRY.get(factory.name, PATH), factory)

    def test_restart_keeps_cookies(self) -> None:
        """
        A cookie issued before a restart (a new strategy over a new
        L{FileSecrets} on the same file) still binds its client after it;
        the same holds for a second proxy sharing the file.
        """
        before = self.build(cookie, FileSecrets(self.path))
        value = _cookie_of(before)
        after = self.build(cookie, FileSecrets(self.path))
        self.assertEqual(_bound(after, value), "b")

    def test_without_file_cookies_are_lost(self) -> None:
        """
        The control: built with C{build} (no proxy secrets), a strategy's
        cookies mean nothing to the next one.
        """
        before = cookie.build({}, make_pool("a", "b", "c"), self.clock, PATH)
        after = cookie.build({}, make_pool("a", "b", "c"), self.clock, PATH)
        self.assertIsNone(_bound(after, _cookie_of(before)))

    def test_configured_keys_win(self) -> None:
        """
        With C{keys}, the secrets are never asked for (no file is made).
        """
        strategy = self.build(
            cookie, FileSecrets(self.path), keys=["a long configured key!!"]
        )
        _cookie_of(strategy)
        self.assertFalse(os.path.exists(self.path))

    def test_one_key_per_purpose(self) -> None:
        """
        Strategies do not share a signing key: a cookie issued by C{cookie}
        is not honoured by C{app-cookie}'s follow mode with the same cookie
        name, nor by C{cookie} under another name, though one secret
        underlies them all.
        """
        secrets = FileSecrets(self.path)
        value = _cookie_of(self.build(cookie, secrets))
        follow = self.build(app_cookie, secrets)
        self.assertIsNone(_bound(follow, value))
        self.assertEqual(_bound(self.build(cookie, secrets), value), "b")
        other = self.build(cookie, secrets, name="OTHER")
        self.assertIsNone(_bound(other, value, "OTHER"))
        self.assertEqual(
            _bound(self.build(app_cookie, secrets), _cookie_of(follow)), "b"
        )

    def test_prefix_mode(self) -> None:
        """
        C{app-cookie}'s prefix mode keys its backend tokens from the
        secrets too: the same prefix after a restart.
        """
        tokens = [
            self.build(app_cookie, FileSecrets(self.path), mode="prefix").tokens
            for _ in range(2)
        ]
        backend = tokens[0].pool.get("b")
        self.assertEqual(tokens[0].token(backend), tokens[1].token(backend))
        self.assertTrue(os.path.exists(self.path))


@implementer(IPlugin, IPersistenceStrategyFactory)
class _OldStyleFactory:
    """
    A third-party factory written before L{IKeyedStrategyFactory}: only
    C{build}.
    """

    name = "oldstyle"
    modes = frozenset({"http"})
    description = "a plugin that knows nothing of secrets"

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def build(self, options, pool, reactor, path):  # type: ignore[no-untyped-def]
        self.calls.append((dict(options), pool.name, path))
        return source_ip.build({}, pool, reactor, path)


class ProxyServiceSecretsTests(TestCase):
    """
    L{ProxyService} keeps the secret in C{stickyproxy.key} in the config's
    C{state_dir}, and hands it to keyed factories only.
    """

    def setUp(self) -> None:
        self.state = self.mktemp()
        os.mkdir(self.state)

    def config(self, *persistence: dict[str, object]) -> ProxyConfig:
        """
        One HTTP frontend with C{persistence}, its state in the test's
        directory.
        """
        data = {
            "state_dir": self.state,
            "frontend": [
                {
                    "mode": "http",
                    "listen": "tcp:0",
                    "pool": "p",
                    "persistence": list(persistence),
                }
            ],
            "pool": {
                "p": {
                    "backend": [
                        {"name": name, "address": f"127.0.0.1:{port}"}
                        for name, port in (("a", 1), ("b", 2), ("c", 3))
                    ]
                }
            },
        }
        return load_config(data, REGISTRY)

    def strategy(self, config: ProxyConfig) -> IPersistenceStrategy:
        """
        The first strategy of the frontend, as a fresh L{ProxyService} (a
        fresh start of the proxy) builds it.
        """
        service = ProxyService(config, MemoryReactorClock(), REGISTRY)
        return service.routers["frontend0"].strategies[0]

    def test_restart(self) -> None:
        """
        A cookie issued by one L{ProxyService} binds its client in the next
        one built from the same config; the key file is in C{state_dir}.
        """
        config = self.config({"strategy": "cookie"})
        value = _cookie_of(self.strategy(config))
        self.assertEqual(os.listdir(self.state), [KEY_FILE])
        self.assertEqual(_bound(self.strategy(config), value), "b")

    def test_no_file_without_keyed_strategy(self) -> None:
        """
        A proxy whose strategies sign nothing writes no state.
        """
        self.strategy(self.config({"strategy": "app-cookie", "mode": "learn"}))
        self.assertEqual(os.listdir(self.state), [])

    def test_bad_file_stops_the_start(self) -> None:
        """
        A malformed key file stops L{ProxyService} with a L{ConfigError}
        naming it.
        """
        path = os.path.join(self.state, KEY_FILE)
        with open(path, "w") as stream:
            stream.write("garbage\n")
        error = self.assertRaises(
            ConfigError, self.strategy, self.config({"strategy": "cookie"})
        )
        self.assertEqual(error.path, path)

    def test_old_style_plugin(self) -> None:
        """
        A factory that provides only L{IPersistenceStrategyFactory} is built
        with C{build(options, pool, reactor, path)}, as before.
        """
        factory = _OldStyleFactory()
        builtins = [REGISTRY.get(name, PATH) for name in REGISTRY.names()]
        registry = StrategyRegistry.of([factory, *builtins])
        config = load_config(
            {
                "state_dir": self.state,
                "frontend": [
                    {
                        "mode": "http",
                        "listen": "tcp:0",
                        "pool": "p",
                        "persistence": {"strategy": "oldstyle", "x": 1},
                    }
                ],
                "pool": {"p": {"backend": [{"address": "127.0.0.1:1"}]}},
            },
            registry,
        )
        ProxyService(config, MemoryReactorClock(), registry)
        self.assertEqual(factory.calls, [({"x": 1}, "p", "frontend[0].persistence")])

    def test_state_dir_option(self) -> None:
        """
        C{state_dir} must be a non-empty string.
        """
        for value in ["", 3]:
            data = {
                "state_dir": value,
                "frontend": [{"listen": "tcp:0", "pool": "p"}],
                "pool": {"p": {"backend": [{"address": "127.0.0.1:1"}]}},
            }
            error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
            self.assertEqual(error.path, "state_dir")


class StateDirFlagTests(TestCase):
    """
    C{twistd stickyproxy --state-dir}, and where the state goes without it.
    """

    def make(self, *args: str, rundir: str | None = None) -> ProxyService:
        """
        Build the service from command-line C{args}, as C{twistd} would
        with C{--rundir rundir}.
        """
        options = Options()
        if rundir is not None:
            options.parent = {"rundir": rundir}  # type: ignore[assignment]
        options.parseOptions(
            [
                *"--mode http --listen tcp:0 --backend a=127.0.0.1:1".split(),
                *"--persistence cookie".split(),
                *args,
            ]
        )
        return _makeService(options, MemoryReactorClock())

    def test_flag(self) -> None:
        """
        C{--state-dir DIR} puts the key file in DIR, as an absolute path.
        """
        state = self.mktemp()
        os.mkdir(state)
        service = self.make("--state-dir", state)
        self.assertEqual(service.config.state_dir, os.path.abspath(state))
        self.assertEqual(os.listdir(state), [KEY_FILE])

    def test_rundir(self) -> None:
        """
        Without the flag, the state goes in twistd's run directory (which
        twistd changes into only after the service is built), and a
        relative C{--state-dir} is relative to it.
        """
        rundir = self.mktemp()
        os.makedirs(os.path.join(rundir, "state"))
        self.assertEqual(
            self.make(rundir=rundir).config.state_dir, os.path.abspath(rundir)
        )
        service = self.make("--state-dir", "state", rundir=rundir)
        self.assertEqual(
            service.config.state_dir, os.path.abspath(os.path.join(rundir, "state"))
        )
        self.assertIn(KEY_FILE, os.listdir(os.path.join(rundir, "state")))
