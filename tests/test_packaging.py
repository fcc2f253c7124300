"""
Tests for how stickyproxy is packaged and found: the C{twistd} plugin, the
command line, the layout of the built wheel, and the strategy plugin
example of the documentation.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import types
import unittest
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

from zope.interface.verify import verifyObject

import twisted.plugins  # noqa: F401 (its __path__ is set at the first import)
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from stickyproxy import (
    ConfigError,
    StrategyRegistry,
    load_config,
    read_config_file,
    tap,
)
from stickyproxy.interfaces import IPersistenceStrategyFactory
from stickyproxy.service import ProxyService
from stickyproxy.testing import routing_context

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "docs", "examples", "netpin")
BUILD_TIMEOUT = 600


def _parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class ServiceMakerPluginTests(SynchronousTestCase):
    """
    C{twistd stickyproxy} is found through Twisted's plugin system.
    """

    def test_plugin(self) -> None:
        """
        Exactly one L{IServiceMaker} plugin has the tapname C{stickyproxy};
        it fully provides the interface and points at L{stickyproxy.tap}.
        """
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "stickyproxy"]
        self.assertEqual(len(makers), 1)
        verifyObject(IServiceMaker, makers[0])
        self.assertIs(makers[0].options, tap.Options)
        self.assertTrue(makers[0].description)

    def test_builtin_strategies(self) -> None:
        """
        The built-in strategies are plugins too, found by name.
        """
        names = [p.name for p in getPlugins(IPersistenceStrategyFactory)]
        self.assertIn("source-ip", names)
        self.assertIn("source-ip", StrategyRegistry.from_plugins().names())


class OptionsTests(SynchronousTestCase):
    """
    L{tap.Options}: the short flags, and the mistakes they refuse.
    """

    def test_short_flags(self) -> None:
        """
        The short flags land in the options; a C{--backend} without a name
        is named after its position.
        """
        options = _parse(
            "--listen",
            "tcp:7000",
            "--backend",
            "a=127.0.0.1:1",
            "--backend",
            "127.0.0.1:2",
            "--mode",
            "tcp",
            "--balance",
            "leastconn",
            "--persistence",
            "source-ip",
        )
        self.assertEqual(
            {
                k: options[k]
                for k in ("listen", "backends", "mode", "balance", "persistence")
            },
            {
                "listen": "tcp:7000",
                "backends": [("a", "127.0.0.1:1"), (None, "127.0.0.1:2")],
                "mode": "tcp",
                "balance": "leastconn",
                "persistence": "source-ip",
            },
        )
        self.assertIsNone(options["config"])
        self.assertFalse(options["demo"])

    def test_defaults(self) -> None:
        """
        Without C{--mode}, C{--balance} or C{--persistence}: a TCP frontend,
        round-robin, and no persistence.
        """
        options = _parse("--listen", "tcp:7000", "--backend", "127.0.0.1:1")
        data = options.config_data()
        frontend, pool = data["frontend"][0], data["pool"]["main"]
        self.assertEqual(
            (frontend["mode"], pool["balance"], "persistence" in frontend),
            ("tcp", "roundrobin", False),
        )

    def test_endpoint_backends(self) -> None:
        """
        A backend given as a client endpoint string is not mistaken for
        C{NAME=ADDRESS}, with or without a name in front.
        """
        options = _parse(
            "--listen",
            "tcp:7000",
            "--backend",
            "tcp:host=127.0.0.1:port=1",
            "--backend",
            "sock=unix:path=/run/app.sock",
        )
        self.assertEqual(
            options["backends"],
            [(None, "tcp:host=127.0.0.1:port=1"), ("sock", "unix:path=/run/app.sock")],
        )

    def test_config_data(self) -> None:
        """
        The short flags make the tables a config file would hold, and they
        load.
        """
        options = _parse(
            "--listen",
            "tcp:7000",
            "--backend",
            "a=127.0.0.1:1",
            "--persistence",
            "source-ip",
        )
        config = load_config(options.config_data(), StrategyRegistry.from_plugins())
        [frontend] = config.frontends
        self.assertEqual(
            (frontend.listen, frontend.mode, frontend.persistence[0].strategy),
            ("tcp:7000", "tcp", "source-ip"),
        )
        self.assertEqual(
            [(b.name, b.address) for b in config.pools[frontend.pool].backends],
            [("a", "127.0.0.1:1")],
        )

    def test_config_or_demo_alone(self) -> None:
        """
        C{--config FILE} and C{--demo} each suffice on their own.
        """
        self.assertEqual(_parse("--config", "proxy.toml")["config"], "proxy.toml")
        self.assertTrue(_parse("--demo")["demo"])

    def assertRefused(self, *argv: str) -> None:
        """
        Fail unless parsing C{argv} raises L{usage.UsageError}.
        """
        self.assertRaises(usage.UsageError, _parse, *argv)

    def test_bad_mode(self) -> None:
        """
        A C{--mode} other than tcp or http is refused.
        """
        self.assertRefused(
            "--mode", "udp", "--listen", "tcp:7000", "--backend", "127.0.0.1:1"
        )

    def test_bad_balance(self) -> None:
        """
        A C{--balance} that names no balancer is refused.
        """
        self.assertRefused(
            "--balance", "random", "--listen", "tcp:7000", "--backend", "127.0.0.1:1"
        )

    def test_backend_without_listen(self) -> None:
        """
        C{--backend} needs C{--listen}.
        """
        self.assertRefused("--backend", "127.0.0.1:1")

    def test_config_with_flags(self) -> None:
        """
        C{--config} describes everything: it is not combined with the
        frontend flags or C{--demo}.
        """
        self.assertRefused("--config", "proxy.toml", "--backend", "127.0.0.1:1")
        self.assertRefused("--config", "proxy.toml", "--listen", "tcp:7000")
        self.assertRefused("--config", "proxy.toml", "--demo")

    def test_demo_with_backend(self) -> None:
        """
        C{--demo} brings its own backends.
        """
        self.assertRefused("--demo", "--backend", "127.0.0.1:1")

    def test_nothing(self) -> None:
        """
        With nothing to proxy, the command line is refused.
        """
        self.assertRefused()
        self.assertRefused("--listen", "tcp:7000")

    def test_bad_backend(self) -> None:
        """
        A C{--backend} with an empty name or address is refused.
        """
        self.assertRefused("--listen", "tcp:7000", "--backend", "=127.0.0.1:1")
        self.assertRefused("--listen", "tcp:7000", "--backend", "a=")


_IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "_trial_temp*",
    "_build",
)
_BUILD_FILES = (
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "MANIFEST.in",
    "README.rst",
    "NEWS.rst",
)
_wheel: list[str | Exception] = []


def _build_wheel() -> str:
    """
    Build stickyproxy's wheel once per process, from a copy of the
    packaging files and packages (so a stale C{build/} cannot leak into it,
    and the working tree is left alone), with a C{dropin.cache} planted in
    the copy's C{twisted/plugins}.

    :returns: the wheel's path.
    :raises unittest.SkipTest: no build backend can be had.
    """
    if not _wheel:
        try:
            _wheel.append(_do_build_wheel())
        except Exception as error:
            _wheel.append(error)
    result = _wheel[0]
    if isinstance(result, Exception):
        raise result
    return result


def _backend_installed() -> bool:
    """
    Whether the build backend can run without build isolation (setuptools,
    and the wheel package for a setuptools older than 70.1).
    """
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _do_build_wheel() -> str:
    work = tempfile.mkdtemp(prefix="stickyproxy-wheel-")
    atexit.register(shutil.rmtree, work, True)
    source = os.path.join(work, "src")
    out = os.path.join(work, "dist")
    # Only what a wheel is made of: the rest of a working tree may hold
    # anything (test temp directories, sockets, venvs).
    os.makedirs(source)
    for name in _BUILD_FILES:
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy2(os.path.join(ROOT, name), source)
    for name in ("stickyproxy", "twisted"):
        shutil.copytree(
            os.path.join(ROOT, name), os.path.join(source, name), ignore=_IGNORED
        )
    with open(os.path.join(source, "twisted", "plugins", "dropin.cache"), "wb") as f:
        f.write(b"a plugin cache must never be packaged")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out]
    if _backend_installed():
        command += ["--no-build-isolation", "--no-index"]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        done = subprocess.run(
            [*command, source],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"building the wheel took over {BUILD_TIMEOUT}s") from None
    if done.returncode != 0:
        if "No module named pip" in done.stdout or "build dependencies" in done.stdout:
            raise unittest.SkipTest(
                f"no build backend to build a wheel:\n{done.stdout}"
            )
        raise AssertionError(f"{' '.join(command)} failed:\n{done.stdout}")
    wheels = [name for name in os.listdir(out) if name.endswith(".whl")]
    if len(wheels) != 1:
        raise AssertionError(f"expected one wheel in {out}, found {wheels}")
    return os.path.join(out, wheels[0])


class WheelTests(SynchronousTestCase):
    """
    The built wheel has the plugin modules, and nothing that would break
    Twisted's own packages or go stale (STYLE 15, 27).
    """

    def setUp(self) -> None:
        with zipfile.ZipFile(_build_wheel()) as wheel:
            self.names = set(wheel.namelist())

    def test_plugin_modules(self) -> None:
        """
        The C{twistd} plugin and the built-in strategies' plugin module are
        in C{twisted/plugins/}.
        """
        self.assertIn("twisted/plugins/stickyproxy_plugin.py", self.names)
        self.assertIn("twisted/plugins/stickyproxy_strategies.py", self.names)

    def test_typed(self) -> None:
        """
        The package is marked as typed.
        """
        self.assertIn("stickyproxy/py.typed", self.names)

    def test_every_module(self) -> None:
        """
        Every module of the source package is in the wheel.
        """
        expected = {
            f"{directory}/{name}".replace(os.sep, "/")
            for directory, _, files in _walk("stickyproxy")
            for name in files
            if name.endswith(".py")
        }
        self.assertEqual(expected - self.names, set())

    def test_package_data(self) -> None:
        """
        Every other file of the source package is in the wheel too: the
        admin dashboard's page, style and script.
        """
        expected = {
            f"{directory}/{name}".replace(os.sep, "/")
            for directory, _, files in _walk("stickyproxy")
            for name in files
            if not name.endswith((".py", ".pyc"))
        }
        self.assertIn("stickyproxy/admin/dashboard.js", expected)
        self.assertEqual(expected - self.names, set())

    def test_no_plugin_cache(self) -> None:
        """
        No C{dropin.cache} is shipped, even when the source tree has one.
        """
        self.assertEqual([n for n in self.names if n.endswith("dropin.cache")], [])

    def test_no_twisted_init(self) -> None:
        """
        No C{__init__.py} under C{twisted/}: it would replace Twisted's own.
        """
        self.assertEqual(
            [n for n in self.names if n.startswith("twisted/") and "__init__" in n],
            [],
        )

    def test_only_our_packages(self) -> None:
        """
        Tests, docs and byte code stay out of the wheel.
        """
        tops = {n.split("/", 1)[0] for n in self.names}
        self.assertEqual(
            {t for t in tops if not t.endswith(".dist-info")},
            {"stickyproxy", "twisted"},
        )
        self.assertEqual([n for n in self.names if n.endswith(".pyc")], [])


def _walk(package: str) -> Iterator[tuple[str, list[str], list[str]]]:
    for directory, dirs, files in os.walk(os.path.join(ROOT, package)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        yield os.path.relpath(directory, ROOT), dirs, files


@contextmanager
def _example_plugins(directory: str) -> Iterator[types.ModuleType]:
    """
    Copy the docs' example project into C{directory} with its
    C{twisted/plugins/} turned into a package of its own, put it on
    C{sys.path} and yield that plugin package; then undo it all.

    Neither the example itself (Twisted would write a cache there) nor a
    C{twisted/plugins} directory ever goes on C{sys.path}.
    """
    name = "stickyproxy_test_example_plugins"
    shutil.copytree(
        os.path.join(EXAMPLE, "twisted", "plugins"),
        os.path.join(directory, name),
        ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"),
    )
    with open(os.path.join(directory, name, "__init__.py"), "w"):
        pass
    for module in ("netpin.py", "test_netpin.py"):
        shutil.copy(os.path.join(EXAMPLE, module), directory)
    sys.path.insert(0, directory)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(directory)
        for module in list(sys.modules):
            if module.split(".")[0] in (name, "netpin", "test_netpin"):
                del sys.modules[module]


class DocsPluginExampleTests(SynchronousTestCase):
    """
    The strategy plugin that C{docs/plugins.rst} shows works as it says.
    """

    def setUp(self) -> None:
        if not os.path.isdir(EXAMPLE):
            raise unittest.SkipTest(f"{EXAMPLE} is not here (an installed copy?)")
        # Not self.mktemp(): under pytest that leaves directories in the cwd.
        self.directory = tempfile.mkdtemp(prefix="stickyproxy-example-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def test_found_and_used(self) -> None:
        """
        The example's plugin module is found by L{getPlugins}, registers
        C{netpin} next to the built-ins, and a frontend can chain it before
        C{source-ip}.
        """
        with _example_plugins(self.directory) as package:
            registry = StrategyRegistry.of(
                [
                    *getPlugins(IPersistenceStrategyFactory),
                    *getPlugins(IPersistenceStrategyFactory, package),
                ]
            )
            self.assertIn("netpin", registry.names())
            config = load_config(
                {
                    "frontend": {
                        "listen": "tcp:0",
                        "pool": "app",
                        "persistence": [
                            {"strategy": "netpin", "rules": {"10.1.0.0/16": "b"}},
                            {"strategy": "source-ip"},
                        ],
                    },
                    "pool": {
                        "app": {
                            "backend": [
                                {"name": "a", "address": "127.0.0.1:1"},
                                {"name": "b", "address": "127.0.0.1:2"},
                            ]
                        }
                    },
                },
                registry,
            )
            proxy = ProxyService(config, MemoryReactorClock(), registry)
            [router] = proxy.routers.values()
            decision = router.choose(routing_context("10.1.2.3"))
            self.assertEqual(
                (decision.backend.name, decision.strategy), ("b", "netpin")
            )
            with self.assertRaises(ConfigError) as caught:
                ProxyService(
                    load_config(
                        {
                            "frontend": {
                                "listen": "tcp:0",
                                "pool": "app",
                                "persistence": {"strategy": "netpin", "rules": {}},
                            },
                            "pool": {"app": {"backend": {"address": "127.0.0.1:1"}}},
                        },
                        registry,
                    ),
                    MemoryReactorClock(),
                    registry,
                )
            self.assertEqual(caught.exception.path, "frontend.persistence.rules")

    def test_example_tests(self) -> None:
        """
        The example project's own tests pass.
        """
        with _example_plugins(self.directory):
            module = importlib.import_module("test_netpin")
            suite = unittest.defaultTestLoader.loadTestsFromModule(module)
            result = unittest.TestResult()
            suite.run(result)
        self.assertEqual(
            [str(failure) for failure in result.errors + result.failures], []
        )
        self.assertGreater(result.testsRun, 0)


_TOML_BLOCK = re.compile(r"^\.\. code-block:: toml\n\n((?:(?: {3,}.*)?\n)+)", re.M)


class DocsConfigExamplesTests(SynchronousTestCase):
    """
    The configuration examples of the README and the docs load.
    """

    def test_examples(self) -> None:
        """
        Every complete config in a C{code-block:: toml} of the README or the
        docs, and every C{docs/examples/*.toml}, loads, and a
        L{ProxyService} can be built from it.
        """
        registry = StrategyRegistry.from_plugins()
        checked = []
        pages = [os.path.join(ROOT, "README.rst")]
        pages += glob.glob(os.path.join(ROOT, "docs", "**", "*.rst"), recursive=True)
        for page in pages:
            if not os.path.exists(page):
                continue
            with open(page, encoding="utf-8") as f:
                text = f.read()
            for number, match in enumerate(_TOML_BLOCK.finditer(text)):
                block = textwrap.dedent(match.group(1))
                if "[[frontend]]" not in block:
                    continue  # a fragment, not a whole config
                where = f"{os.path.relpath(page, ROOT)}, toml block {number + 1}"
                try:
                    config = load_config(tomllib.loads(block), registry)
                    ProxyService(config, MemoryReactorClock(), registry)
                except Exception as error:
                    self.fail(f"{where}: {error}")
                checked.append(where)
        for path in glob.glob(os.path.join(ROOT, "docs", "examples", "*.toml")):
            config = read_config_file(path, registry)
            ProxyService(config, MemoryReactorClock(), registry)
            checked.append(path)
        if os.path.isdir(os.path.join(ROOT, "docs")):
            self.assertGreaterEqual(len(checked), 2, checked)
