"""
netpin: a stickyproxy persistence strategy that pins client networks to
backends.

    [[frontend.persistence]]
    strategy = "netpin"
    rules = { "10.1.0.0/16" = "app1", "2001:db8::/32" = "app2" }

    [[frontend.persistence]]
    strategy = "source-ip"

A client in a listed network goes to its backend; everyone else falls
through to the next strategy of the chain.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin

from stickyproxy import Backend, ConfigError, OptionReader
from stickyproxy.interfaces import (
    IBackendPool,
    IPersistenceStrategy,
    IPersistenceStrategyFactory,
    IRoutingContext,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@implementer(IPersistenceStrategy)
@attrs.frozen
class NetworkPin:
    """
    The strategy one frontend uses: rules, most specific network first.
    """

    rules: tuple[tuple[Network, Backend], ...]
    name = "netpin"

    def lookup(self, context: IRoutingContext) -> Backend | None:
        try:
            address = ipaddress.ip_address(context.client_host)
        except ValueError:  # not an IP client, e.g. a UNIX socket peer
            return None
        for network, backend in self.rules:
            if address in network:
                return backend
        return None

    def persist(self, context: IRoutingContext, backend: Backend) -> None:
        pass  # the rules are the binding: nothing to learn

    def release(self, context: IRoutingContext, backend: Backend) -> None:
        pass


@implementer(IPlugin, IPersistenceStrategyFactory)
@attrs.frozen
class NetworkPinFactory:
    """
    C{strategy = "netpin"}: what the plugin module exposes.
    """

    name: str = "netpin"
    modes: frozenset[str] = frozenset({"tcp", "http"})
    description: str = "listed client networks go to listed backends"

    def build(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        # Leaving the block checks that no other key was given: a mistake
        # (a typo) is then an error naming it.
        with OptionReader(options, path) as reader:
            rules_reader = reader.table("rules")
            rules = []
            for cidr, backend_name in rules_reader.rest().items():
                key = rules_reader.key(cidr)
                try:
                    network = ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(
                        key, "expected a network such as 10.0.0.0/8 as the key"
                    ) from None
                if not isinstance(backend_name, str):
                    raise rules_reader.fail(cidr, "a backend name")
                backend = pool.get(backend_name)
                if backend is None:
                    known = ", ".join(b.name for b in pool.backends)
                    raise ConfigError(
                        key,
                        f"expected a backend of pool {pool.name} ({known}), "
                        f"got {backend_name!r}",
                    )
                rules.append((network, backend))
            if not rules:
                raise reader.fail("rules", "a table of network = backend name")
            rules.sort(key=lambda rule: rule[0].prefixlen, reverse=True)
            return NetworkPin(tuple(rules))


netpin = NetworkPinFactory()
