"""
The seams of stickyproxy.

A frontend (L4 or L7) builds an L{IRoutingContext} for each connection or
request and hands it to the router.  The router asks the frontend's
L{IPersistenceStrategy} chain which backend the client is bound to, falls
back to the pool's L{IBalancer}, and afterwards lets each strategy record
the binding.  Strategies are made by L{IPersistenceStrategyFactory}
providers, found by name through Twisted's plugin system, so a third party
adds one by shipping a module under C{twisted/plugins/}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ._backends import Backend, StateChange


class IRoutingContext(Interface):
    """
    What the router knows about one client connection or request.

    Protocols fill it in; strategies read it.  It is deliberately small: an
    L4 frontend knows only addresses, an L7 frontend adds the request head.
    """

    mode = Attribute("str: the frontend's mode, C{'tcp'} or C{'http'}")
    frontend = Attribute("str: the name of the frontend that accepted the client")
    client_host = Attribute(
        "str: the client's IP address, already corrected by the PROXY protocol "
        "or trusted forwarding headers"
    )
    client_port = Attribute("int: the client's source port (0 when unknown)")
    tried = Attribute(
        "list[Backend]: backends that already failed this client (refused or "
        "timed out) in this attempt; a stateless strategy (a hash) skips them, "
        "so a retry goes where the hash will send the client once they are "
        "marked down, and the client moves only once"
    )


class IBackendPool(Interface):
    """
    A named group of backends that share a balancer and connect settings.
    """

    name = Attribute("str: the pool's name in the configuration")
    backends = Attribute("tuple[Backend, ...]: every backend, in config order")

    def get(name: str) -> Backend | None:
        """
        Find a backend by name.

        :param name: the backend's configured name.
        :returns: the backend, or C{None} when the pool has no such backend.
        """

    def serves_bound(backend: Backend) -> bool:
        """
        :returns: whether clients bound to C{backend} may stay there: it is
            not in maintenance, and up (or the pool fails open).
        """

    def serving_bound() -> Sequence[Backend]:
        """
        The backends that may keep serving clients already bound to them.

        :returns: backends that are up and not in maintenance (draining ones
            included), in config order.
        """

    def accepting_new() -> Sequence[Backend]:
        """
        The backends that may take clients with no binding yet.

        :returns: backends that are up and ready, in config order.
        """

    def sessions(name: str) -> int:
        """
        :returns: how many sticky sessions the named backend holds.
        :raises KeyError: no backend has that name.
        """

    def add_session_source(source: Callable[[str], int]) -> None:
        """
        Make the pool count, in L{sessions}, the bindings a strategy holds:
        C{source(backend_name)} returns how many it has for that backend.
        """

    def observe(observer: Callable[[StateChange], None]) -> None:
        """
        Call C{observer} with each change of a backend's state.
        """


class IBalancer(Interface):
    """
    Picks a backend for a client that has no binding (or lost it).
    """

    name = Attribute("str: the balancer's configured name, e.g. C{'roundrobin'}")

    def choose(candidates: Sequence[Backend], key: bytes) -> Backend | None:
        """
        Pick one backend.

        :param candidates: the backends allowed for this pick, without
            duplicates; may be empty.
        :param key: bytes identifying the client (its address for L4), used
            by hashing balancers and ignored by the others.
        :returns: one of C{candidates}, or C{None} when it is empty.
        """


class IStickTable(Interface):
    """
    Learned bindings from a key to a backend name, with idle expiry and a
    size bound.  A binding that is I{held} (it has open connections) does
    not expire; its idle time starts when the last hold is released.
    """

    def get(key: bytes) -> str | None:
        """
        Look a key up, refreshing its idle time.

        :returns: the backend name bound to C{key}, or C{None} when unknown
            or expired.
        """

    def bind(key: bytes, backend: str) -> None:
        """
        Bind C{key} to C{backend} (replacing any earlier binding) and hold it
        once.  May evict the least recently used binding to stay in bounds.
        """

    def release(key: bytes) -> None:
        """
        Drop one hold taken by L{bind}; the idle clock starts at zero holds.
        Releasing an unknown key does nothing.
        """

    def forget(key: bytes) -> None:
        """
        Remove the binding of C{key} now (its session ended), held or not.
        Forgetting an unknown key does nothing.
        """

    def __len__() -> int:
        """
        :returns: how many bindings are stored (expired ones may linger
            until the next sweep).
        """


class IPersistenceStrategy(Interface):
    """
    Decides which backend a client is already bound to, and records the
    binding once a backend has served it.
    """

    name = Attribute("str: the registry name of the strategy that made this")

    def lookup(context: IRoutingContext) -> Backend | None:
        """
        Find the backend the client is bound to.

        It may return a backend that is down or in maintenance: the router,
        not the strategy, decides whether the binding is honoured.  Every
        strategy of a chain is asked, even after an earlier one knew the
        client, because an HTTP strategy also takes its own data off the
        request here (its cookie, a route prefix) before it is forwarded.

        :returns: the bound backend, or C{None} when the client is not bound.
        """

    def persist(context: IRoutingContext, backend: Backend) -> None:
        """
        Record that C{backend} now serves the client (write a table entry,
        set a cookie).  Called once per connection (L4, once connected) or
        request (L7, once the response head arrived: an HTTP context then
        carries the response, whose headers may be changed here).
        """

    def release(context: IRoutingContext, backend: Backend) -> None:
        """
        The connection or request recorded by L{persist} has ended (called
        only after L{persist}).
        """


class IPersistenceStrategyFactory(Interface):
    """
    A named maker of L{IPersistenceStrategy} providers: what a plugin ships.

    Providers must also provide L{twisted.plugin.IPlugin} and live in a
    module under C{twisted/plugins/}.
    """

    name = Attribute(
        "str: the unique, lowercase name configs use (C{strategy = 'name'})"
    )
    modes = Attribute(
        "frozenset[str]: the frontend modes it fits, from C{'tcp'} and C{'http'}"
    )
    description = Attribute("str: one line that says what it keys on")

    def build(
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        """
        Make a strategy for one frontend.

        :param options: the strategy's table from the config, without the
            C{strategy} key.
        :param pool: the pool the frontend sends clients to.
        :param reactor: the clock all expiry must use.
        :param path: the config key path of C{options}, for error messages.
        :raises stickyproxy.ConfigError: an option is unknown or invalid
            (L{stickyproxy.OptionReader} produces these).
        :returns: a new strategy.
        """
