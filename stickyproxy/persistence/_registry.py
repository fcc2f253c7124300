"""
The strategy registry and the built-in strategies that fit L4.

Built-ins are found exactly as third-party strategies are: through
L{twisted.plugin.getPlugins}, from C{twisted/plugins/stickyproxy_strategies.py}.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

import attrs
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from twisted.logger import Logger
from twisted.plugin import getPlugins

from stickyproxy.config._options import ConfigError
from stickyproxy.interfaces import (
    IKeyedStrategyFactory,
    IPersistenceStrategyFactory,
    IStoreStrategyFactory,
)

log = Logger()


def _origin(plugin: object) -> str:
    return getattr(plugin, "__module__", None) or type(plugin).__module__


@attrs.define(eq=False)
class StrategyRegistry:
    """
    Persistence strategy factories by name.

    Built from plugins with L{from_plugins}; a plugin that does not provide
    the interface correctly is logged and skipped, and a name offered twice
    is kept by the built-in that owns it, or, between two third parties,
    refused when used (it would be a coin toss which one runs).
    """

    _factories: dict[str, IPersistenceStrategyFactory] = attrs.field(factory=dict)
    _conflicts: dict[str, list[str]] = attrs.field(factory=dict)

    @classmethod
    def from_plugins(cls, package: ModuleType | None = None) -> StrategyRegistry:
        """
        Load every L{IPersistenceStrategyFactory} plugin.

        :param package: the plugin package to search; C{twisted.plugins}
            when C{None}.
        """
        return cls.of(getPlugins(IPersistenceStrategyFactory, package))

    @classmethod
    def of(cls, factories: Iterable[IPersistenceStrategyFactory]) -> StrategyRegistry:
        """
        Build a registry from factories, checking each one.
        """
        registry = cls()
        for factory in factories:
            registry.add(factory)
        return registry

    def add(self, factory: IPersistenceStrategyFactory) -> None:
        """
        Register one factory, or log why it cannot be.
        """
        origin = _origin(factory)
        try:
            verifyObject(IPersistenceStrategyFactory, factory)
            if IKeyedStrategyFactory.providedBy(factory):
                verifyObject(IKeyedStrategyFactory, factory)
            if IStoreStrategyFactory.providedBy(factory):
                verifyObject(IStoreStrategyFactory, factory)
            if not (isinstance(factory.name, str) and factory.name):
                raise Invalid("its name is not a non-empty string")
            if factory.name != factory.name.lower():
                raise Invalid(f"its name {factory.name!r} is not lowercase")
            if not set(factory.modes) <= {"tcp", "http"}:
                raise Invalid(f"its modes {sorted(factory.modes)} are not tcp/http")
        except Invalid as error:
            log.error(
                "skipping persistence strategy plugin from {origin}: {reason}",
                origin=origin,
                reason=str(error).strip(),
            )
            return
        name = factory.name
        existing = self._factories.get(name)
        if existing is None and name not in self._conflicts:
            self._factories[name] = factory
            return
        builtin = [f for f in (existing, factory) if f is not None and _is_builtin(f)]
        if builtin:
            self._factories[name] = builtin[0]
            log.warn(
                "ignoring persistence strategy {strategy!r} from {origin}: "
                "the name belongs to a built-in strategy",
                strategy=name,
                origin=_origin(factory if builtin[0] is not factory else existing),
            )
            return
        origins = self._conflicts.setdefault(
            name, [_origin(existing)] if existing is not None else []
        )
        origins.append(origin)
        self._factories.pop(name, None)
        log.error(
            "persistence strategy {strategy!r} is provided by several plugins "
            "({origins}); it cannot be used until one is removed",
            strategy=name,
            origins=", ".join(origins),
        )

    def names(self) -> list[str]:
        """
        :returns: the usable strategy names, sorted.
        """
        return sorted(self._factories)

    def get(self, name: str, path: str) -> IPersistenceStrategyFactory:
        """
        Find a factory by name.

        :param path: the config key naming it, for the error.
        :raises ConfigError: no usable strategy has that name.
        """
        factory = self._factories.get(name)
        if factory is not None:
            return factory
        if name in self._conflicts:
            raise ConfigError(
                path,
                f"strategy {name!r} is provided by several plugins "
                f"({', '.join(self._conflicts[name])}); remove all but one",
            )
        raise ConfigError(
            path,
            f"expected one of the registered strategies ({', '.join(self.names())}), "
            f"got {name!r}",
        )


def _is_builtin(factory: object) -> bool:
    return _origin(factory).startswith("stickyproxy.")
