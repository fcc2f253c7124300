"""
L{ProxyService}: the whole proxy as one Twisted service, for C{twistd} or
for embedding in any other Twisted program::

    from stickyproxy.service import ProxyService
    from stickyproxy import read_config_file, StrategyRegistry

    registry = StrategyRegistry.from_plugins()
    config = read_config_file("proxy.toml", registry)
    ProxyService(config, reactor, registry).setServiceParent(application)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from enum import Enum
from functools import partial
from typing import Any, TypeVar, cast

import attrs
from prometheus_client.metrics_core import Metric
from zope.interface import implementer

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IProtocolNegotiationFactory,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from stickyproxy.admin._root import admin_site
from stickyproxy.admin._traffic import TrafficCounter
from stickyproxy.config._load import (
    BackendConfig,
    FrontendConfig,
    HealthConfig,
    PoolConfig,
    ProxyConfig,
    read_backend,
    same,
)
from stickyproxy.config._options import (
    ConfigError,
    OptionReader,
    describe_error,
    join_path,
)
from stickyproxy.core._balancers import make_balancer
from stickyproxy.core._endpoints import connect_endpoint
from stickyproxy.core._events import EventStream
from stickyproxy.core._inherited import AdoptingReactor, HoldingReactor
from stickyproxy.core._logfile import (
    TO_LOG,
    TO_STDOUT,
    ILineLog,
    line_log,
    writable_file_problem,
)
from stickyproxy.core._pool import Pool, SessionSource
from stickyproxy.core._proxyheader import ProxyHeaderWrappingFactory, inner_prefix
from stickyproxy.core._router import Router
from stickyproxy.core._tls import TLSListeningReactor, acceptable_protocols
from stickyproxy.health._monitor import HealthMonitor
from stickyproxy.health._probes import HTTPProbe, TCPProbe, treq_client
from stickyproxy.http._accesslog import AccessLog
from stickyproxy.http._frontend import HTTPProxyFactory
from stickyproxy.interfaces import (
    IHealthProbe,
    IKeyedStrategyFactory,
    IPersistenceStrategy,
    IProxyEvents,
    IProxySecrets,
    IStoreStrategyFactory,
)
from stickyproxy.model import AdminState, Backend, StateChange
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._secrets import KEY_FILE, FileSecrets
from stickyproxy.persistence.tables._redis import RedisTables
from stickyproxy.store import RedisStore, build_store
from stickyproxy.store._shared import SharedState
from stickyproxy.tcp._connectionlog import ConnectionLog
from stickyproxy.tcp._splice import TCPProxyFactory

_T = TypeVar("_T")


@implementer(IProtocolNegotiationFactory)
class FrontendSwitch(Factory):
    """
    The factory a listener's port holds: it hands each new connection to
    the frontend's current factory, which a reload may replace without
    touching the socket.  Connections already made keep the factory that
    built them.

    :ivar current: the frontend's factory.
    """

    noisy = False

    def __init__(self, current: IProtocolFactory) -> None:
        self.current = current

    def logPrefix(self) -> str:
        return inner_prefix(self.current, "stickyproxy frontend")

    def acceptableProtocols(self) -> list[bytes]:
        return acceptable_protocols(self.current)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        protocol: Protocol | None = self.current.buildProtocol(addr)  # type: ignore[arg-type, assignment]
        return protocol

    def startFactory(self) -> None:
        self.current.doStart()

    def stopFactory(self) -> None:
        self.current.doStop()

    def switch(self, factory: IProtocolFactory) -> IProtocolFactory:
        """
        Hand new connections to C{factory} from now on.

        :returns: the factory it replaces.
        """
        old, self.current = self.current, factory
        if self.numPorts:
            factory.doStart()
            old.doStop()
        return old


class ListenerService(Service):
    """
    Listens on one endpoint string with one factory (which L{switch} may
    replace, keeping the socket, unless made with C{switchable=False}).

    Unlike L{twisted.application.internet.StreamServerEndpointService}, a
    failure to listen is a L{ConfigError} naming the config key, and
    L{bind} may be called early (C{twistd} does, so a port in use is
    reported before anything starts).  A C{haproxy:} prefix means clients
    come through a load balancer that sends the PROXY protocol, within
    C{timeout_proxy_header} seconds.  TLS listeners (C{ssl:}) negotiate the
    factory's ALPN protocols and log failed handshakes: see
    L{TLSListeningReactor}.

    Under workers (L{stickyproxy.workers}), listeners are made with
    C{accept=False}: they open the socket and accept nothing on it (until
    L{start_accepting}).  The parent's stay so; each worker's are made with
    the C{inherited} socket, which they adopt instead of opening one (see
    L{stickyproxy.core._inherited}), and accept once the worker may serve.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: IProtocolFactory,
        path: str,
        timeout_proxy_header: float = 10.0,
        timeout_handshake: float = 10.0,
        switchable: bool = True,
        accept: bool = True,
        inherited: int | None = None,
    ) -> None:
        self.description = description
        self.path = path
        #: The listener's own factory (unwrapped by any C{haproxy:} reader).
        self.factory = factory
        self._switch = FrontendSwitch(factory) if switchable else None
        self._factory = factory if self._switch is None else self._switch
        if description.startswith("haproxy:"):
            # Ours rather than Twisted's haproxy: wrapper: see ProxyHeaderReceiver.
            description = description[len("haproxy:") :]
            self._factory = ProxyHeaderWrappingFactory(
                self._factory, reactor, timeout_proxy_header
            )
        # Made holding its socket, and told to accept since.
        self._held = not accept
        self._accepting = False
        if inherited is not None:
            reactor = AdoptingReactor(reactor, inherited)
        if not accept:
            reactor = HoldingReactor(reactor)
        listening = TLSListeningReactor(
            reactor, lambda: self.name or self.path, timeout_handshake
        )
        try:
            self._endpoint = serverFromString(listening, description)
        except Exception as error:
            # Parsers do more than parse (ssl: reads its key files), so any
            # error here is the string's fault.
            raise ConfigError(
                path,
                "expected a Twisted server endpoint string, "
                f"got {description!r} ({describe_error(error)})",
            ) from None
        self.port: IListeningPort | None = None

    def switch(self, factory: IProtocolFactory) -> IProtocolFactory:
        """
        Hand new connections to C{factory}, on the same socket.

        :returns: the factory it replaces, whose connections run on.
        :raises ValueError: the listener was made with C{switchable=False}.
        """
        if self._switch is None:
            raise ValueError(f"{self.path}: this listener's factory is fixed")
        self.factory = factory
        return self._switch.switch(factory)

    def bind(self) -> None:
        """
        Start listening now, if not already.

        :raises ConfigError: the endpoint refused (port in use, no permission).
        """
        if self.port is not None:
            return
        outcome: list[Any] = []
        listening = self._endpoint.listen(self._factory)
        listening.addBoth(outcome.append)
        if not outcome:
            # An endpoint that listens later (rare): report failures in the log.
            listening.addCallback(self._listening)
            listening.addErrback(
                lambda f: self.log.failure(
                    "cannot listen on {endpoint}", f, endpoint=self.description
                )
            )
            return
        result = outcome[0]
        if isinstance(result, Failure):
            raise ConfigError(
                self.path,
                f"cannot listen on {self.description!r}: {result.getErrorMessage()}",
            )
        self._listening(result)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        if self._held and self._accepting:
            cast(Any, port).startReading()

    def start_accepting(self) -> None:
        """
        Accept connections, on a listener made with C{accept=False}, from
        now on (or as soon as it listens).
        """
        if self._held and not self._accepting:
            self._accepting = True
            if self.port is not None:
                cast(Any, self.port).startReading()

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self.bind()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self.stop_listening()

    def stop_listening(self) -> Deferred[None] | None:
        """
        Close the socket (connections made on it stay open).

        :returns: what the port's C{stopListening} returns.
        """
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def address(self) -> IAddress | None:
        """
        :returns: where it listens (with the real port when it was 0).
        """
        return None if self.port is None else self.port.getHost()


def build_backend(
    config: BackendConfig, reactor: Any, connect_timeout: float
) -> Backend:
    """
    Make the live backend for a backend config.

    :raises ConfigError: its address cannot be parsed.
    """
    try:
        endpoint = connect_endpoint(reactor, config.address, connect_timeout)
    except Exception as error:
        raise ConfigError(
            join_path(config.path, "address"),
            "expected host:port, [ipv6]:port or a Twisted client endpoint "
            f"string, got {config.address!r} ({describe_error(error)})",
        ) from None
    return Backend(
        name=config.name,
        address=config.address,
        endpoint=endpoint,
        weight=config.weight,
        route=config.route,
        admin_state=config.admin_state,
    )


def build_pool(config: PoolConfig, reactor: Any) -> Pool:
    """
    Make the live pool for a pool config.

    :raises ConfigError: a backend address cannot be parsed.
    """
    backends = [
        build_backend(backend, reactor, config.connect_timeout)
        for backend in config.backends
    ]
    # The balancer reads the pool's session count, through the pool it is
    # built into: a forward reference, resolved at the first pick.
    pool: Pool = Pool(
        name=config.name,
        backends=tuple(backends),
        balancer=make_balancer(
            config.balance,
            config.balance_factor,
            config.session_balance_factor,
            sessions=lambda name: pool.sessions(name),
        ),
        connect_timeout=config.connect_timeout,
        retries=config.retries,
        send_proxy=config.send_proxy,
        fail_open=config.fail_open,
        passive_panic=config.passive_panic,
        keepalive=config.keepalive,
        keepalive_timeout=config.keepalive_timeout,
        on_down=config.health.on_down,
        clock=reactor,
    )
    return pool


def build_monitor(
    config: HealthConfig,
    pool: Pool,
    reactor: Any,
    events: EventStream | None = None,
    adopt: Collection[Backend] = (),
) -> HealthMonitor:
    """
    Make the health monitor of a pool: its probe from the config's C{type}
    (none: passive checks only).

    :param events: where its probes are published.
    :param adopt: backends that keep the health they have (see
        L{HealthMonitor}).
    """
    probe: IHealthProbe | None = None
    if config.type == "tcp":
        probe = TCPProbe(
            send=config.send, expect=config.expect, send_proxy=pool.send_proxy
        )
    elif config.type == "http":
        probe = HTTPProbe(
            client=treq_client(reactor, pool),
            method=config.method,
            path=config.path,
            host=config.host,
            expect_status=config.expect_status,
            expect_body=config.expect_body,
        )
    return HealthMonitor(
        pool, reactor, probe, config.settings, events=events, adopt=adopt
    )


Frontend = HTTPProxyFactory | TCPProxyFactory


class Role(Enum):
    """
    What a L{ProxyService} does in its process model (see
    L{stickyproxy.workers}).
    """

    #: Everything, in this one process: the default.
    ALONE = "alone"
    #: The parent of workers: it opens the frontends' sockets and accepts
    #: nothing on them, and runs the health monitors and the admin listener.
    PARENT = "parent"
    #: A worker: it serves on the sockets its parent opened (once told to:
    #: L{ProxyService.start_accepting}), and runs no health monitor and no
    #: admin listener.
    WORKER = "worker"


#: The longest a backend that a reload removed from the config drains
#: before it leaves its pool, sessions or not (seconds).
LEAVING_DEADLINE = 86400.0


def _pool_settings(config: PoolConfig) -> PoolConfig:
    """
    A pool's own settings: what a reload cannot change on the live pool.
    """
    return attrs.evolve(config, backends=(), health=HealthConfig())


def _factory_settings(config: FrontendConfig) -> tuple[object, ...]:
    return (config.mode, config.http, config.idle_timeout, config.alpn)


def _socket_settings(config: FrontendConfig) -> tuple[object, ...]:
    """
    What a listening socket holds from when it started: a reload that keeps
    the socket cannot change them.
    """
    return (config.timeout_proxy_header, config.timeout_handshake, config.alpn)


def _open_log(lines: ILineLog, destination: str) -> None:
    """
    Open a log file.

    :raises ConfigError: it cannot be opened.
    """
    try:
        lines.open()
    except OSError as error:
        raise ConfigError(
            destination, f"cannot open the log file ({error.strerror})"
        ) from None


def _carry_over(
    old_pool: Pool, old: PoolConfig, new_pool: Pool, new: PoolConfig
) -> list[Backend]:
    """
    Give the backends of a pool built afresh the runtime state (admin
    state, weight, health) of their namesakes whose config is the same.

    :returns: the backends that got it.
    """
    before = {b.name: b for b in old.backends}
    carried = []
    for config in new.backends:
        live = old_pool.get(config.name)
        was = before.get(config.name)
        if live is None or was is None or not same(was, config):
            continue
        backend = new_pool[config.name]
        backend.admin_state = live.admin_state
        backend.weight = live.weight
        backend.health = live.health
        carried.append(backend)
    return carried


@attrs.define(eq=False)
class _Plan:
    """
    What a configuration needs that does not run yet, built (and its new
    listeners bound) before anything running is touched, and the steps that
    switch over to it.
    """

    config: ProxyConfig
    pools: dict[str, Pool] = attrs.field(factory=dict)
    new_pools: dict[str, Pool] = attrs.field(factory=dict)
    # The pools that get a new monitor, with the backends it adopts.
    monitors: dict[str, Collection[Backend]] = attrs.field(factory=dict)
    steps: list[Callable[[], object]] = attrs.field(factory=list)
    routers: dict[str, Router] = attrs.field(factory=dict)
    factories: dict[str, Frontend] = attrs.field(factory=dict)
    new_factories: list[Frontend] = attrs.field(factory=list)
    listeners: dict[str, ListenerService] = attrs.field(factory=dict)
    new_listeners: list[ListenerService] = attrs.field(factory=list)
    sources: dict[str, tuple[SessionSource, ...]] = attrs.field(factory=dict)
    new_sources: list[tuple[Pool, SessionSource]] = attrs.field(factory=list)
    admin: ListenerService | None = None
    # Access and connection logs: where each destination's lines go (kept
    # or new), the new ones, where each frontend's go, who is logged.
    log_files: dict[str, ILineLog] = attrs.field(factory=dict)
    new_log_files: list[ILineLog] = attrs.field(factory=list)
    log_lines: dict[str, ILineLog] = attrs.field(factory=dict)
    logged: dict[str, list[str]] = attrs.field(factory=lambda: {"http": [], "tcp": []})
    changes: list[str] = attrs.field(factory=list)


class ProxyService(MultiService):
    """
    Every frontend of a configuration, with their pools, on one reactor.

    L{reload} replaces the configuration while it runs, and L{stopService}
    stops gracefully: requests and connections under way finish, up to
    C{shutdown_timeout}.

    :ivar pools: the live pools by name (their backends' states can be
        changed through L{Pool.set_admin_state} and L{Pool.drain}).
    :ivar monitors: each pool's health monitor, by pool name.
    :ivar routers: each frontend's router, by frontend name.
    :ivar listeners: each frontend's listener, by frontend name.
    :ivar admin: the admin listener (L{stickyproxy.admin.AdminRoot}), or
        C{None} without C{[admin]}.
    :ivar events: everything that happens, for subscribers (L{IProxyEvents}).
    :ivar log_files: where access and connection log lines go other than
        the proxy's log, by C{access_log} value (C{"stdout"} or a path).
    :ivar secrets: the proxy's secret, kept in C{stickyproxy.key} in the
        config's C{state_dir}, from which strategies without C{keys} derive
        theirs (L{IKeyedStrategyFactory}); read or made only if one does.
    :ivar store: the store shared with other proxies (C{[store]}), or
        C{None}; made from the first configuration and kept as it is by
        reloads.
    :ivar shared: with a store, what this proxy shares through it beside
        bindings: its backends' admin states and session counts (a
        worker's, its session counts only: its parent shares the admin
        states).
    :ivar config_source: reads the configuration again for
        L{reload_from_source} (C{twistd stickyproxy --config FILE} sets
        it), or C{None}: there is nothing to read.
    :ivar remote_metrics: collects the counters of the worker processes
        that serve for this proxy, which its C{/metrics} adds to its own
        (the control channel sets it), or C{None}.
    :ivar remote_traffic: each backend's traffic in those worker
        processes, which its admin API and dashboard add to its own (the
        control channel sets it), or C{None}.
    :ivar role: what it does in its process model.
    :ivar reloaded: called with the changes after each reload that applied,
        however asked for (C{SIGHUP}, the admin API): a parent has its
        workers reload too.
    """

    log = Logger()

    def __init__(
        self,
        config: ProxyConfig,
        reactor: Any,
        registry: StrategyRegistry | None = None,
        secrets: IProxySecrets | None = None,
        role: Role = Role.ALONE,
        sockets: Mapping[str, int] | None = None,
    ) -> None:
        """
        Build everything a configuration describes, without listening yet.

        :param registry: where strategy names are found; all installed
            plugins when C{None}.
        :param secrets: where strategies without C{keys} get theirs; the
            file in C{config.state_dir} when C{None}.
        :param sockets: a L{Role.WORKER}'s inherited listening sockets, by
            frontend name.
        :raises ConfigError: an endpoint or strategy option is wrong, or
            the secret file in C{config.state_dir} cannot be read or made,
            or a worker has no socket for a frontend.
        """
        super().__init__()
        self.reactor = reactor
        self.role = role
        self._sockets = dict(sockets or {})
        self.secrets: IProxySecrets = (
            secrets
            if secrets is not None
            else FileSecrets(os.path.join(config.state_dir, KEY_FILE))
        )
        self.registry = (
            registry if registry is not None else StrategyRegistry.from_plugins()
        )
        self.events = EventStream()
        self.config_source: Callable[[], ProxyConfig] | None = None
        self.reloaded: list[Callable[[list[str]], object]] = []
        self.remote_metrics: Callable[[], Deferred[list[Metric]]] | None = None
        self.remote_traffic: TrafficCounter | None = None
        # Nothing runs yet: the first configuration is all new.
        self.config = ProxyConfig(frontends=(), pools={})
        # One store for the proxy's life: a reload keeps it as it is.
        self.store: RedisStore | None = None
        self.shared: SharedState | None = None
        if config.store is not None:
            self.store = build_store(config.store, reactor)
            self.store.setServiceParent(self)
            self.shared = SharedState(
                self.store,
                lambda: self.pools,
                reactor,
                admin=role is not Role.WORKER,
            )
            self.shared.setServiceParent(self)
            if self.shared.admin is not None:
                self.events.subscribe(self.shared.admin.sync)
        self.pools: dict[str, Pool] = {}
        self.monitors: dict[str, HealthMonitor] = {}
        self.routers: dict[str, Router] = {}
        self.listeners: dict[str, ListenerService] = {}
        self._factories: dict[str, Frontend] = {}
        # The session counts each frontend's strategies gave its pool.
        self._sources: dict[str, tuple[SessionSource, ...]] = {}
        # Backends a reload removed from the config, draining meanwhile.
        self._leaving: dict[Backend, Pool] = {}
        # Frontend factories a reload replaced, until their clients leave.
        self._retired: set[Frontend] = set()
        self.admin: ListenerService | None = None
        self._admin_site: Site | None = None
        self.log_files: dict[str, ILineLog] = {}
        self._logs_open = False
        self._log_subscribers: list[IProxyEvents] = []
        self._bound = False
        self._stopping: Deferred[None] | None = None
        self._drained: Deferred[None] | None = None  # the wait, while it lasts
        self._hurry = False
        self._accepting = False  # a worker, told to accept
        self._switch(self._plan(config))

    def new_backend(self, pool: str, table: Mapping[str, object]) -> Backend:
        """
        Make a backend for a pool from a table shaped like a
        C{[[pool.NAME.backend]]} of the config file, checked as the file's
        are, without adding it.

        :raises KeyError: no pool has that name.
        :raises ConfigError: the table is wrong (its keys named with no
            prefix: C{address: expected host:port ...}).
        """
        live = self.pools[pool]
        config = read_backend(OptionReader(table, ""), "")
        if not config.name:
            raise ConfigError("name", "expected a non-empty string")
        return build_backend(config, self.reactor, live.connect_timeout)

    # Reloading

    def reload(self, config: ProxyConfig) -> list[str]:
        """
        Apply a new configuration to the running proxy, and log the outcome.

        Everything new is built first, and its new listeners bound; only
        then does anything running change.  What the new configuration
        does not change keeps running as it is: a listener whose C{listen}
        is the same keeps its socket, a frontend whose pool and persistence
        are the same keeps its strategies (their stick tables), a backend
        whose config is the same keeps its runtime state.  Connections and
        requests under way finish as they started.

        :returns: what changed, one line each.
        :raises ConfigError: C{config} cannot be applied (a bad endpoint or
            strategy option, a port that cannot be bound): nothing changed.
        """
        return self._reload(lambda: config)

    def reload_from_source(self) -> list[str]:
        """
        Read the configuration again (with L{config_source}) and L{reload}
        it.

        :returns: what changed, one line each.
        :raises ConfigError: there is no source (the proxy was started
            without C{--config}), or what it read is wrong or cannot be
            applied.
        """
        return self._reload(self._read_source)

    def _read_source(self) -> ProxyConfig:
        if self.config_source is None:
            raise ConfigError(
                "",
                "there is no config file to read again: a reload needs a proxy "
                "started with --config FILE",
            )
        return self.config_source()

    def _reload(self, read: Callable[[], ProxyConfig]) -> list[str]:
        try:
            if self._stopping is not None:
                raise ConfigError("", "the proxy is shutting down")
            plan = self._plan(read())
        except ConfigError as error:
            self.log.error(
                "reload rejected, the running configuration stays: {error}",
                error=str(error),
            )
            raise
        self._switch(plan)
        changes = plan.changes or ["nothing changed"]
        self.log.info("reloaded: {changes}", changes="; ".join(changes))
        for observer in self.reloaded:
            observer(changes)
        return changes

    def _plan(self, config: ProxyConfig) -> _Plan:
        """
        Build what C{config} needs beyond what runs now, keeping every
        running object it does not change, and bind its new listeners if
        the running ones are bound.

        :raises ConfigError: C{config} cannot be applied: whatever was
            built is undone, and nothing running was changed.
        """
        plan = _Plan(config)
        try:
            for name, pool_config in config.pools.items():
                self._plan_pool(plan, name, pool_config)
            for frontend in config.frontends:
                self._plan_frontend(plan, frontend)
            for name in self.config.pools.keys() - config.pools.keys():
                plan.changes.append(f"pool {name}: removed")
            for old in self.config.frontends:
                if old.name not in plan.factories:
                    plan.changes.append(f"frontend {old.name}: removed")
            self._plan_admin(plan, config)
            self._plan_logs(plan, config)
            if self.config.state_dir != config.state_dir and self.config.frontends:
                plan.changes.append("state_dir: takes effect at the next restart")
            if self.config.workers != config.workers and self.config.frontends:
                plan.changes.append("workers: takes effect at the next restart")
            if self.config.frontends and not same(self.config.store, config.store):
                plan.changes.append("store: takes effect at the next restart")
            if self._bound:
                for listener in plan.new_listeners:
                    listener.bind()
        except BaseException:
            self._discard(plan)
            raise
        return plan

    def _discard(self, plan: _Plan) -> None:
        """
        Undo what a plan that cannot be applied built.
        """
        for listener in plan.new_listeners:
            listener.stop_listening()
        for pool, source in plan.new_sources:
            pool.remove_session_source(source)
        for factory in plan.new_factories:
            factory.detach()
        for lines in plan.new_log_files:
            lines.close()

    def _plan_pool(self, plan: _Plan, name: str, config: PoolConfig) -> None:
        pool = self.pools.get(name)
        old = self.config.pools.get(name)
        if pool is None or old is None:
            plan.pools[name] = plan.new_pools[name] = self._new_pool(config)
            plan.monitors[name] = ()
            plan.changes.append(f"pool {name}: added")
        elif not same(_pool_settings(old), _pool_settings(config)):
            new = plan.pools[name] = plan.new_pools[name] = self._new_pool(config)
            plan.monitors[name] = _carry_over(pool, old, new, config)
            plan.changes.append(
                f"pool {name}: new settings: built afresh (the stick tables of "
                "its frontends start empty)"
            )
        else:
            plan.pools[name] = pool
            if not same(old.health, config.health):
                plan.monitors[name] = pool.backends
                plan.changes.append(f"pool {name}: new health check settings")
            self._plan_backends(plan, pool, old, config)

    def _new_pool(self, config: PoolConfig) -> Pool:
        pool = build_pool(config, self.reactor)
        if self.shared is not None:
            pool.counter = self.shared.sessions.table
        pool.observe(self.events.backend_changed)
        pool.observe(self._backend_changed)
        return pool

    def _plan_backends(
        self, plan: _Plan, pool: Pool, old: PoolConfig, config: PoolConfig
    ) -> None:
        """
        Plan the changes to a kept pool's backends: added, removed (after a
        drain, while they hold sessions), replaced (a new address or route),
        new weights and admin states.  A backend whose config is the same
        keeps its runtime state.
        """
        before = {b.name: b for b in old.backends}
        prefix = f"pool {pool.name}: backend"
        for wanted in config.backends:
            name = wanted.name
            live = pool.get(name)
            was = before.get(name)
            if live is None:
                backend = build_backend(wanted, self.reactor, config.connect_timeout)
                plan.steps.append(partial(pool.add, backend, "reload"))
                plan.changes.append(f"{prefix} {name} added ({wanted.address})")
            elif (live.address, live.route) != (wanted.address, wanted.route):
                backend = build_backend(wanted, self.reactor, config.connect_timeout)
                plan.steps.append(partial(self._replace, pool, backend))
                plan.changes.append(
                    f"{prefix} {name} replaced ({live.address} -> {wanted.address})"
                )
            elif live in self._leaving or was is None:
                # Removed by an earlier reload (and draining since), or
                # added at runtime: from now on, as configured.
                plan.steps.append(partial(self._stay, pool, live, wanted))
                plan.changes.append(f"{prefix} {name} now as configured")
            else:
                if was.weight != wanted.weight:
                    plan.steps.append(
                        partial(pool.set_weight, name, wanted.weight, "reload")
                    )
                    plan.changes.append(
                        f"{prefix} {name} weight {was.weight} -> {wanted.weight}"
                    )
                if was.admin_state is not wanted.admin_state:
                    state = wanted.admin_state
                    plan.steps.append(
                        partial(pool.set_admin_state, name, state, "reload")
                    )
                    plan.changes.append(
                        f"{prefix} {name} admin state {was.admin_state.value} -> "
                        f"{wanted.admin_state.value}"
                    )
        names = {b.name for b in config.backends}
        for live in pool.backends:
            if live.name not in names and live not in self._leaving:
                plan.steps.append(partial(self._leave, pool, live))
                sessions = pool.sessions(live.name)
                if live.admin_state is AdminState.MAINT or not sessions:
                    plan.changes.append(f"{prefix} {live.name} removed")
                else:
                    plan.changes.append(
                        f"{prefix} {live.name} not in the config: it drains its "
                        f"{sessions} sessions, then leaves"
                    )

    def _plan_frontend(self, plan: _Plan, config: FrontendConfig) -> None:
        """
        Plan one frontend: keep its router (and strategies) while its pool
        and persistence are the same, its factory while its router and
        settings are, and its listener while its C{listen} is.
        """
        name = config.name
        prefix = f"frontend {name}"
        old = next((f for f in self.config.frontends if f.name == name), None)
        pool = plan.pools[config.pool]
        router = self.routers.get(name)
        listener = self.listeners.get(name)
        if old is None or router is None or listener is None:
            plan.changes.append(f"{prefix}: added ({config.listen})")
            router = self._new_router(plan, config, pool)
        elif router.pool is not pool or not same(old.persistence, config.persistence):
            plan.changes.append(
                f"{prefix}: new pool or persistence"
                " (its in-memory stick tables start empty)"
            )
            router = self._new_router(plan, config, pool)
        else:
            plan.sources[name] = self._sources[name]
            if (old.strict, old.persistence_timeout) != (
                config.strict,
                config.persistence_timeout,
            ):
                plan.changes.append(f"{prefix}: new routing settings")
                router = attrs.evolve(
                    router,
                    strict=config.strict,
                    persistence_timeout=config.persistence_timeout,
                )
        plan.routers[name] = router
        factory = self._factories.get(name)
        if (
            old is None
            or factory is None
            or factory.router is not router
            or _factory_settings(old) != _factory_settings(config)
        ):
            if old is not None and router is self.routers.get(name):
                plan.changes.append(f"{prefix}: new settings")
            factory = self._new_factory(config, router)
            plan.new_factories.append(factory)
        plan.factories[name] = factory
        if old is not None and listener is not None and old.listen == config.listen:
            plan.listeners[name] = listener
            if _socket_settings(old) != _socket_settings(config):
                plan.changes.append(
                    f"{prefix}: timeout_proxy_header, timeout_handshake and alpn "
                    "take effect at the next restart (its socket is kept)"
                )
            return
        if old is not None:
            plan.changes.append(f"{prefix}: listens on {config.listen}")
        listener = ListenerService(
            self.reactor,
            config.listen,
            factory,
            join_path(config.path, "listen"),
            config.timeout_proxy_header,
            config.timeout_handshake,
            accept=self.role is Role.ALONE,
            inherited=self._inherited(config),
        )
        listener.setName(name)
        plan.listeners[name] = listener
        plan.new_listeners.append(listener)

    def _inherited(self, config: FrontendConfig) -> int | None:
        """
        :returns: the socket a L{Role.WORKER} serves the frontend on (one
            it inherited, or was handed since: L{inherit}), or C{None}
            when the process opens its own.
        :raises ConfigError: a worker has no socket for the frontend: its
            parent does not listen on it (yet).
        """
        if self.role is not Role.WORKER:
            return None
        socket = self._sockets.get(config.name)
        if socket is None:
            raise ConfigError(
                join_path(config.path, "listen"),
                "expected a listener the parent shares with its workers, "
                "but the parent has none for this frontend (its running "
                "configuration lacks it: reload the parent, not a worker)",
            )
        return socket

    def inherit(self, name: str, descriptor: int) -> None:
        """
        Take a listening socket the parent of a L{Role.WORKER} opened
        since it started (its reload added or moved frontend C{name}):
        the worker's next reload serves the frontend on it.
        """
        unused = self._sockets.get(name)
        if unused is not None:
            os.close(unused)
        self._sockets[name] = descriptor

    def _plan_admin(self, plan: _Plan, config: ProxyConfig) -> None:
        """
        Plan the admin listener: the same site (its traffic totals go on),
        on a new socket if C{[admin] listen} changed.  Its token is read
        from the running config at each request.
        """
        old, new = self.config.admin, config.admin
        if self.role is Role.WORKER:
            return  # its parent's
        if new is None:
            if old is not None:
                plan.changes.append("admin: stops listening")
            return
        if self.admin is not None and old is not None and old.listen == new.listen:
            plan.admin = self.admin
            return
        if self._admin_site is None:
            self._admin_site = admin_site(self, self.reactor)
        plan.admin = ListenerService(
            self.reactor, new.listen, self._admin_site, "admin.listen", switchable=False
        )
        plan.new_listeners.append(plan.admin)
        if self.config.frontends:
            plan.changes.append(f"admin: listens on {new.listen}")

    def _plan_logs(self, plan: _Plan, config: ProxyConfig) -> None:
        """
        Plan the access log of the HTTP frontends and the connection log of
        the TCP ones that have C{access_log} set, their lines going to the
        proxy's log, standard output, or a file (one per path, checked to be
        writable, and opened now if the running ones are open).

        :raises ConfigError: naming the C{access_log} of a file that cannot
            be written (or opened).
        """
        for frontend in config.frontends:
            destination = frontend.access_log
            if destination is None:
                continue
            plan.logged[frontend.mode].append(frontend.name)
            if destination == TO_LOG:
                continue
            lines = plan.log_files.get(destination) or self.log_files.get(destination)
            if lines is None:
                problem = (
                    None
                    if destination == TO_STDOUT
                    else writable_file_problem(destination)
                )
                if problem is not None:
                    raise ConfigError(
                        join_path(frontend.path, "access_log"),
                        f"expected a file the proxy can append to; {problem}",
                    )
                lines = line_log(destination)
                if self._logs_open:
                    _open_log(lines, destination)
                plan.new_log_files.append(lines)
            plan.log_files[destination] = lines
            plan.log_lines[frontend.name] = lines

    def _new_router(self, plan: _Plan, config: FrontendConfig, pool: Pool) -> Router:
        """
        Build a frontend's strategies and router, noting the session counts
        the strategies gave the pool (taken back when they are replaced).
        """
        before = pool.session_sources
        strategies: list[IPersistenceStrategy] = []
        tables = None
        if self.store is not None:
            tables = RedisTables(self.store, self.reactor, config.name)
        try:
            for persistence in config.persistence:
                factory = self.registry.get(
                    persistence.strategy, join_path(persistence.path, "strategy")
                )
                arguments = (persistence.options, pool, self.reactor, persistence.path)
                if IStoreStrategyFactory.providedBy(factory):
                    strategies.append(
                        factory.build_stored(*arguments, self.secrets, tables)
                    )
                elif IKeyedStrategyFactory.providedBy(factory):
                    strategies.append(factory.build_keyed(*arguments, self.secrets))
                else:
                    strategies.append(factory.build(*arguments))
        finally:
            added = tuple(s for s in pool.session_sources if s not in before)
            plan.sources[config.name] = added
            plan.new_sources.extend((pool, source) for source in added)
        return Router(
            pool=pool,
            strategies=tuple(strategies),
            clock=self.reactor,
            strict=config.strict,
            persistence_timeout=config.persistence_timeout,
        )

    def _new_factory(self, config: FrontendConfig, router: Router) -> Frontend:
        if config.http is not None:
            return HTTPProxyFactory(
                config.name, router, self.reactor, config.http, self.events
            )
        return TCPProxyFactory(
            config.name,
            router,
            self.reactor,
            config.idle_timeout,
            self.events,
            config.alpn,
        )

    # Switching over

    def _switch(self, plan: _Plan) -> None:
        """
        Make a plan the running configuration.  Nothing here can fail on a
        configuration: it was all checked and built.
        """
        config = plan.config
        # Health first: backends added below are tracked by the new monitor.
        for name in self.monitors.keys() - plan.monitors.keys() - config.pools.keys():
            self._stop_monitor(name)
        for name, adopted in plan.monitors.items():
            self._stop_monitor(name)
            if self.role is Role.WORKER:
                continue  # its parent probes
            monitor = build_monitor(
                config.pools[name].health,
                plan.pools[name],
                self.reactor,
                self.events,
                adopted,
            )
            monitor.setServiceParent(self)
            self.monitors[name] = monitor
        for step in plan.steps:
            step()
        if self.admin is not None and plan.admin is not self.admin:
            self._stop_listener(self.admin, "admin")
        for name, listener in list(self.listeners.items()):
            factory = self._factories[name]
            if plan.listeners.get(name) is not listener:
                self._retire(factory)
                self._stop_listener(listener, f"frontend {name}")
            elif plan.factories[name] is not factory:
                listener.switch(plan.factories[name])
                self._retire(factory)
        for name, sources in self._sources.items():
            if plan.sources.get(name) is not sources:
                pool = self.routers[name].pool
                for source in sources:
                    pool.remove_session_source(source)
        for listener in plan.new_listeners:
            listener.setServiceParent(self)
            if listener.name is not None:
                # The listener holds the socket now (adopted, or to be).
                self._sockets.pop(listener.name, None)
            if self._accepting:
                listener.start_accepting()  # a worker's new frontend
        for name, pool in self.pools.items():
            if plan.pools.get(name) is not pool:
                pool.stop()
                for backend in [b for b, p in self._leaving.items() if p is pool]:
                    del self._leaving[backend]
        for name, pool in plan.new_pools.items():
            self._announce(pool, self.pools.get(name), "added")
        for name, pool in self.pools.items():
            if plan.pools.get(name) is not pool:
                self._announce(pool, plan.pools.get(name), "removed")
        self.config = config
        self.pools = plan.pools
        self.routers = plan.routers
        self.listeners = plan.listeners
        self.admin = plan.admin
        self._factories = plan.factories
        self._sources = plan.sources
        self._follow_logs(plan)
        for pool in plan.new_pools.values():
            if not pool.accepting_new():
                self.log.warn(
                    "pool {pool}: no backend takes new clients (all in drain or "
                    "maint, or of weight 0); new clients will be refused",
                    pool=pool.name,
                )

    def _announce(self, pool: Pool, other: Pool | None, kind: str) -> None:
        """
        Tell the event stream's subscribers (the metrics) of the backends
        of C{pool} that C{other} lacks, as C{"added"} (C{pool} is new) or
        C{"removed"} (C{pool} is retired): a pool built or dropped by a
        reload does not say so itself.
        """
        present = ("absent", "present")
        old, new = present if kind == "added" else present[::-1]
        for backend in pool.backends:
            if other is None or other.get(backend.name) is None:
                self.events.backend_changed(
                    StateChange(pool.name, backend, kind, old, new, "reload")
                )

    def _stop_monitor(self, name: str) -> None:
        monitor = self.monitors.pop(name, None)
        if monitor is not None:
            monitor.detach()
            monitor.disownServiceParent()

    def _stop_listener(self, listener: ListenerService, what: str) -> None:
        stopped = listener.disownServiceParent()
        if stopped is not None:
            stopped.addErrback(
                lambda f: self.log.failure("{what}: closing its socket", f, what=what)
            )

    def _retire(self, factory: Frontend) -> None:
        """
        A reload replaced C{factory}: its clients finish (see its
        C{retire}), then it lets go of its pool.
        """
        factory.retire()
        self._retired.add(factory)

        def gone(_: object) -> None:
            self._retired.discard(factory)
            factory.detach()

        factory.clients.when_empty().addCallback(gone)

    def _follow_logs(self, plan: _Plan) -> None:
        """
        Subscribe the access and connection logs a plan describes, in place
        of the running ones; close the files no longer used.
        """
        for subscriber in self._log_subscribers:
            self.events.unsubscribe(subscriber)
        self._log_subscribers = []
        if plan.logged["http"]:
            self._log_subscribers.append(
                AccessLog(plan.logged["http"], self.reactor, plan.log_lines)
            )
        if plan.logged["tcp"]:
            self._log_subscribers.append(
                ConnectionLog(plan.logged["tcp"], self.reactor, plan.log_lines)
            )
        for subscriber in self._log_subscribers:
            self.events.subscribe(subscriber)
        for destination, lines in self.log_files.items():
            if plan.log_files.get(destination) is not lines:
                lines.close()
        self.log_files = plan.log_files

    def open_logs(self) -> None:
        """
        Open the access and connection log files now, if not already
        (L{privilegedStartService} does it otherwise).  Call it before
        dropping privileges.

        :raises ConfigError: a file cannot be opened.
        """
        self._logs_open = True
        for destination, lines in self.log_files.items():
            _open_log(lines, destination)

    def reopen_logs(self) -> None:
        """
        Reopen the log files by their names: after logrotate moved them
        away (C{SIGUSR1} under C{twistd}).
        """
        for lines in self.log_files.values():
            lines.reopen()
        if self.log_files:
            self.log.info(
                "reopened the log files: {paths}",
                paths=", ".join(p for p in self.log_files if p != TO_STDOUT),
            )

    def _close_logs(self, result: _T) -> _T:
        for lines in self.log_files.values():
            lines.close()
        return result

    # Backends that a reload removed

    def _leave(self, pool: Pool, backend: Backend) -> None:
        """
        A backend left the config: it leaves the pool now if it holds no
        sessions (or is in maint); else it drains first, keeping its sticky
        clients, and leaves once the drain puts it in maint (no sessions
        left, or L{LEAVING_DEADLINE}).
        """
        if backend.admin_state is AdminState.MAINT or not pool.sessions(backend.name):
            pool.remove(backend.name, "reload: not in the config")
            return
        self._leaving[backend] = pool
        pool.drain(backend.name, LEAVING_DEADLINE, "reload: not in the config: drain")

    def _stay(self, pool: Pool, backend: Backend, config: BackendConfig) -> None:
        """
        A backend that was leaving (or that was added at runtime) is in the
        config now, as configured.
        """
        self._leaving.pop(backend, None)
        pool.set_weight(backend.name, config.weight, "reload")
        pool.set_admin_state(backend.name, config.admin_state, "reload")

    def _replace(self, pool: Pool, backend: Backend) -> None:
        """
        A backend's address or route changed: the new one takes its place
        (and its name, so its clients' bindings hold).
        """
        old = pool[backend.name]
        self._leaving.pop(old, None)
        pool.set_admin_state(old.name, AdminState.MAINT, "reload: replaced")
        pool.remove(old.name, "reload: replaced")
        pool.add(backend, "reload")

    def _backend_changed(self, change: StateChange) -> None:
        pool = self._leaving.get(change.backend)
        if pool is None:
            return
        if change.kind == "removed":
            del self._leaving[change.backend]
        elif change.kind == "admin" and change.new == AdminState.MAINT.value:
            pool.remove(change.backend.name, "reload: drained, not in the config")

    # Listening and stopping

    def bind(self) -> None:
        """
        Listen on every frontend, and the admin listener, now (idempotent).

        :raises ConfigError: naming the first listener that cannot listen;
            those already bound stay bound until the service stops.
        """
        self._bound = True
        for listener in self.listeners.values():
            listener.bind()
        if self.admin is not None:
            self.admin.bind()

    def privilegedStartService(self) -> None:
        self.bind()
        self.open_logs()
        super().privilegedStartService()

    def stopService(self) -> Deferred[None]:
        """
        Stop gracefully: stop listening at once; let the requests and
        spliced connections under way finish, up to the config's
        C{shutdown_timeout}, then cut off what is left; then stop the rest.
        Idle keep-alive connections close at once, and so do L4 clients
        still waiting for a backend.

        :returns: a L{Deferred} that fires once everything has stopped.
        """
        if self._stopping is not None:
            return self._stopping
        self._stopping = stopping = Deferred[None]()
        frontends = self._frontends()
        listening = [listener.stop_listening() for listener in self.listeners.values()]
        for frontend in frontends:
            frontend.wind_down()
        left = sum(len(frontend.clients) for frontend in frontends)
        timeout = 0.0 if self._hurry else self.config.shutdown_timeout
        if left:
            self.log.info(
                "shutting down: waiting up to {timeout:g} s for {count} client "
                "connections to finish",
                timeout=timeout,
                count=left,
            )
        self._drained = done = Deferred[None]()
        timer = self.reactor.callLater(timeout, self._cut_off, done)
        gatherResults(
            [f.clients.when_empty() for f in frontends]
            + [d for d in listening if d is not None],
            consumeErrors=True,
        ).addErrback(
            lambda failure: self.log.failure("shutting down", failure)
        ).addBoth(lambda _: None if done.called else done.callback(None))

        def stop(_: object) -> Deferred[None]:
            if timer.active():
                timer.cancel()
            for pool in self.pools.values():
                pool.stop()
            stopped: Deferred[None] = super(ProxyService, self).stopService()
            return stopped.addBoth(self._close_logs)

        done.addCallback(stop).chainDeferred(stopping)
        return stopping

    def _frontends(self) -> list[Frontend]:
        """
        :returns: every frontend factory that may have clients: the running
            ones, and those a reload replaced.
        """
        return [*self._factories.values(), *self._retired]

    def _cut_off(self, done: Deferred[None]) -> None:
        """
        The shutdown timeout is over (or a second signal came): cut off
        every client connection left, and stop.
        """
        if done.called:
            return
        left = sum(len(frontend.clients) for frontend in self._frontends())
        if left:
            self.log.warn(
                "shutting down: cutting off {count} client connections still open",
                count=left,
            )
        for frontend in self._frontends():
            frontend.cut()
        done.callback(None)

    def stop_now(self) -> None:
        """
        Cut off every client connection now, rather than wait for them: a
        second SIGTERM or SIGINT during a graceful stop.  Before the stop
        begins, it makes it not wait at all.
        """
        self._hurry = True
        if self._drained is not None:
            self._cut_off(self._drained)

    def start_accepting(self) -> None:
        """
        Have a L{Role.WORKER} accept connections on its frontends: once it
        knows its backends' states from its parent.  Frontends a reload
        adds accept at once.
        """
        self._accepting = True
        for listener in self.listeners.values():
            listener.start_accepting()

    def sockets(self) -> dict[str, int]:
        """
        :returns: the descriptors of the frontends' listening sockets, by
            name: what a L{Role.PARENT}'s workers inherit.
        """
        return {
            name: cast(Any, listener.port).fileno()
            for name, listener in self.listeners.items()
            if listener.port is not None
        }

    def addresses(self) -> dict[str, IAddress | None]:
        """
        :returns: where each frontend listens, by name.
        """
        return {name: listener.address() for name, listener in self.listeners.items()}
