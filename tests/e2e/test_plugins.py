"""
End-to-end: a third-party persistence strategy shipped as a Twisted plugin
in a directory of its own (as another distribution would install it) is
found and used by the real proxy; broken plugins beside it do no harm.
"""

from __future__ import annotations

import textwrap

from tests._plugins import ALWAYS_FIRST, RAISES_ON_IMPORT
from tests.e2e._harness import (
    E2ETestCase,
    Process,
    free_port,
    loopback_aliases,
    loopback_sources,
    proxy_config,
)

# Backend names in config order; the first is not first alphabetically, so
# "first" cannot be confused with "sorted first".
NAMES = ("zulu", "alpha", "mike")

HALF_DONE = '''
"""
A throw-away plugin that claims the interface but has no build method.
"""

from zope.interface import implementer

from twisted.plugin import IPlugin

from stickyproxy.interfaces import IPersistenceStrategyFactory


@implementer(IPlugin, IPersistenceStrategyFactory)
class HalfDone:
    name = "half-done"
    modes = frozenset({"tcp"})
    description = "forgot to write build()"


halfDone = HalfDone()
'''


class ThirdPartyStrategyTests(E2ETestCase):
    """
    A plugin directory on C{PYTHONPATH}: C{<dir>/twisted/plugins/*.py},
    with no C{__init__.py} under C{twisted/}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.plugins = self.workdir / "site"
        (self.plugins / "twisted" / "plugins").mkdir(parents=True)
        self.backends = self.start_backends(*NAMES)
        self.port = free_port()

    def add_plugin(self, module: str, source: str) -> None:
        """
        Write C{<plugins>/twisted/plugins/<module>.py}.
        """
        path = self.plugins / "twisted" / "plugins" / f"{module}.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")

    def start(self, strategy: str) -> Process:
        """
        Start the proxy with the plugin directory on its path, using
        C{strategy} over the backends (round-robin).
        """
        ports = {name: backend.port for name, backend in self.backends.items()}
        config = proxy_config(self.port, ports, {"strategy": strategy})
        return self.start_proxy_with_config(
            config, self.port, pythonpath=[self.plugins]
        )

    def assert_all_first(self) -> None:
        """
        Every connection, from every source, reaches the first backend.
        """
        sources = ["127.0.0.1"] * 3
        if loopback_aliases():
            sources += loopback_sources(2, 10)
        seen = {
            f"{source} #{i}": self.greeting(self.port, source)
            for i, source in enumerate(sources)
        }
        wrong = {k: v for k, v in seen.items() if v != NAMES[0]}
        if wrong:
            self.fail_with_output(f"connections that missed {NAMES[0]}: {wrong}")

    def test_plugin_strategy_used(self) -> None:
        """
        C{strategy = "always-first"}, from a plugin outside the project,
        sends every client to the first backend even though the pool
        balances round-robin.
        """
        self.add_plugin("throwaway_stickyproxy", ALWAYS_FIRST)
        self.start("always-first")
        self.assert_all_first()

    def test_plugin_not_on_path(self) -> None:
        """
        The control: without the plugin directory on the path, the strategy
        name is unknown and the proxy refuses the config.
        """
        ports = {name: backend.port for name, backend in self.backends.items()}
        path = self.write_config(
            proxy_config(self.port, ports, {"strategy": "always-first"})
        )
        proxy = self.run_proxy_to_exit("--config", path, port=self.port)
        self.assert_config_error(
            proxy, "frontend[0].persistence.strategy", "'always-first'"
        )

    def test_broken_neighbours(self) -> None:
        """
        A plugin module that raises on import, and one whose factory does
        not provide the interface, sit beside the good plugin: the proxy
        logs them, starts, and serves with the good one.
        """
        self.add_plugin("throwaway_stickyproxy", ALWAYS_FIRST)
        self.add_plugin("explodes_stickyproxy", RAISES_ON_IMPORT)
        self.add_plugin("halfdone_stickyproxy", HALF_DONE)
        proxy = self.start("always-first")
        self.assert_all_first()
        output = proxy.output()
        # Both broken modules were really tried (else this test proves little).
        self.assertIn("broken on purpose", output)
        self.assertIn("halfdone_stickyproxy", output)

    def test_plugin_option_error(self) -> None:
        """
        An option the plugin's strategy does not accept is a one-line
        configuration error with the key path the plugin was given.
        """
        self.add_plugin("throwaway_stickyproxy", ALWAYS_FIRST)
        ports = {name: backend.port for name, backend in self.backends.items()}
        path = self.write_config(
            proxy_config(self.port, ports, {"strategy": "always-first", "favour": 2})
        )
        proxy = self.run_proxy_to_exit(
            "--config", path, pythonpath=[self.plugins], port=self.port
        )
        self.assert_config_error(proxy, "frontend[0].persistence.favour", "unknown key")
