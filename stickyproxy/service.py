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
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.admin._root import admin_site
from stickyproxy.config._load import (
    BackendConfig,
    FrontendConfig,
    HealthConfig,
    PoolConfig,
    ProxyConfig,
    read_backend,
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
from stickyproxy.core._logfile import (
    TO_LOG,
    TO_STDOUT,
    ILineLog,
    line_log,
    writable_file_problem,
)
from stickyproxy.core._pool import Pool
from stickyproxy.core._proxyheader import ProxyHeaderWrappingFactory
from stickyproxy.core._router import Router
from stickyproxy.core._tls import TLSListeningReactor
from stickyproxy.health._monitor import HealthMonitor
from stickyproxy.health._probes import HTTPProbe, TCPProbe, treq_client
from stickyproxy.http._accesslog import AccessLog
from stickyproxy.http._frontend import HTTPProxyFactory
from stickyproxy.interfaces import (
    IHealthProbe,
    IKeyedStrategyFactory,
    IPersistenceStrategy,
    IProxySecrets,
)
from stickyproxy.model import Backend
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._secrets import KEY_FILE, FileSecrets
from stickyproxy.tcp._connectionlog import ConnectionLog
from stickyproxy.tcp._splice import TCPProxyFactory

_T = TypeVar("_T")


class ListenerService(Service):
    """
    Listens on one endpoint string with one factory.

    Unlike L{twisted.application.internet.StreamServerEndpointService}, a
    failure to listen is a L{ConfigError} naming the config key, and
    L{bind} may be called early (C{twistd} does, so a port in use is
    reported before anything starts).  A C{haproxy:} prefix means clients
    come through a load balancer that sends the PROXY protocol, within
    C{timeout_proxy_header} seconds.  TLS listeners (C{ssl:}) negotiate the
    factory's ALPN protocols and log failed handshakes: see
    L{TLSListeningReactor}.
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
    ) -> None:
        self.description = description
        self.path = path
        #: The frontend's own factory (unwrapped by any C{haproxy:} reader).
        self.factory = factory
        self._factory = factory
        if description.startswith("haproxy:"):
            # Ours rather than Twisted's haproxy: wrapper: see ProxyHeaderReceiver.
            description = description[len("haproxy:") :]
            self._factory = ProxyHeaderWrappingFactory(
                factory, reactor, timeout_proxy_header
            )
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

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self.bind()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
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
    return Pool(
        name=config.name,
        backends=tuple(backends),
        balancer=make_balancer(config.balance, config.balance_factor),
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


def build_monitor(
    config: HealthConfig,
    pool: Pool,
    reactor: Any,
    events: EventStream | None = None,
) -> HealthMonitor:
    """
    Make the health monitor of a pool: its probe from the config's C{type}
    (none: passive checks only).

    :param events: where its probes are published.
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
    return HealthMonitor(pool, reactor, probe, config.settings, events=events)


class ProxyService(MultiService):
    """
    Every frontend of a configuration, with their pools, on one reactor.

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
    """

    log = Logger()

    def __init__(
        self,
        config: ProxyConfig,
        reactor: Any,
        registry: StrategyRegistry | None = None,
        secrets: IProxySecrets | None = None,
    ) -> None:
        """
        Build everything a configuration describes, without listening yet.

        :param registry: where strategy names are found; all installed
            plugins when C{None}.
        :param secrets: where strategies without C{keys} get theirs; the
            file in C{config.state_dir} when C{None}.
        :raises ConfigError: an endpoint or strategy option is wrong, or
            the secret file in C{config.state_dir} cannot be read or made.
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.secrets: IProxySecrets = (
            secrets
            if secrets is not None
            else FileSecrets(os.path.join(config.state_dir, KEY_FILE))
        )
        registry = registry if registry is not None else StrategyRegistry.from_plugins()
        self.events = EventStream()
        self.log_files: dict[str, ILineLog] = {}
        self.pools: Mapping[str, Pool] = {
            name: build_pool(pool, reactor) for name, pool in config.pools.items()
        }
        for pool in self.pools.values():
            pool.observe(self.events.backend_changed)
        for pool in self.pools.values():
            if not pool.accepting_new():
                self.log.warn(
                    "pool {pool}: no backend takes new clients (all in drain or "
                    "maint, or of weight 0); new clients will be refused",
                    pool=pool.name,
                )
        self.monitors: dict[str, HealthMonitor] = {}
        for name, pool_config in config.pools.items():
            monitor = build_monitor(
                pool_config.health, self.pools[name], reactor, self.events
            )
            monitor.setName(f"health:{name}")
            monitor.setServiceParent(self)
            self.monitors[name] = monitor
        self.admin: ListenerService | None = None
        if config.admin is not None:
            self.admin = ListenerService(
                reactor,
                config.admin.listen,
                admin_site(self, reactor),
                "admin.listen",
            )
            self.admin.setName("admin")
            self.admin.setServiceParent(self)
        self.routers: dict[str, Router] = {}
        self.listeners: dict[str, ListenerService] = {}
        for frontend in config.frontends:
            router = self._router(frontend, registry)
            factory: IProtocolFactory
            if frontend.http is not None:
                factory = HTTPProxyFactory(
                    frontend.name, router, reactor, frontend.http, self.events
                )
            else:
                factory = TCPProxyFactory(
                    frontend.name,
                    router,
                    reactor,
                    frontend.idle_timeout,
                    self.events,
                    frontend.alpn,
                )
            listener = ListenerService(
                reactor,
                frontend.listen,
                factory,
                join_path(frontend.path, "listen"),
                frontend.timeout_proxy_header,
                frontend.timeout_handshake,
            )
            listener.setName(frontend.name)
            listener.setServiceParent(self)
            self.routers[frontend.name] = router
            self.listeners[frontend.name] = listener
        self._subscribe_logs(config.frontends)

    def _subscribe_logs(self, frontends: Iterable[FrontendConfig]) -> None:
        """
        Subscribe the access log of the HTTP frontends and the connection
        log of the TCP ones that have C{access_log} set, their lines going
        to the proxy's log, standard output, or a file (checked here to be
        writable, and opened by L{open_logs}; one per path).

        :raises ConfigError: naming the C{access_log} of a file that cannot
            be written.
        """
        logged: dict[str, list[str]] = {"http": [], "tcp": []}
        lines: dict[str, ILineLog] = {}
        for frontend in frontends:
            destination = frontend.access_log
            if destination is None:
                continue
            logged[frontend.mode].append(frontend.name)
            if destination == TO_LOG:
                continue
            if destination not in self.log_files:
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
                self.log_files[destination] = line_log(destination)
            lines[frontend.name] = self.log_files[destination]
        if logged["http"]:
            self.events.subscribe(AccessLog(logged["http"], self.reactor, lines))
        if logged["tcp"]:
            self.events.subscribe(ConnectionLog(logged["tcp"], self.reactor, lines))

    def open_logs(self) -> None:
        """
        Open the access and connection log files now, if not already
        (L{privilegedStartService} does it otherwise).  Call it before
        dropping privileges.

        :raises ConfigError: a file cannot be opened.
        """
        for destination, lines in self.log_files.items():
            try:
                lines.open()
            except OSError as error:
                raise ConfigError(
                    destination, f"cannot open the log file ({error.strerror})"
                ) from None

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

    def _router(self, frontend: FrontendConfig, registry: StrategyRegistry) -> Router:
        pool = self.pools[frontend.pool]
        strategies: list[IPersistenceStrategy] = []
        for persistence in frontend.persistence:
            factory = registry.get(
                persistence.strategy, join_path(persistence.path, "strategy")
            )
            arguments = (persistence.options, pool, self.reactor, persistence.path)
            if IKeyedStrategyFactory.providedBy(factory):
                strategies.append(factory.build_keyed(*arguments, self.secrets))
            else:
                strategies.append(factory.build(*arguments))
        return Router(
            pool=pool,
            strategies=tuple(strategies),
            clock=self.reactor,
            strict=frontend.strict,
            persistence_timeout=frontend.persistence_timeout,
        )

    def bind(self) -> None:
        """
        Listen on every frontend, and the admin listener, now (idempotent).

        :raises ConfigError: naming the first listener that cannot listen;
            those already bound stay bound until the service stops.
        """
        for listener in self.listeners.values():
            listener.bind()
        if self.admin is not None:
            self.admin.bind()

    def privilegedStartService(self) -> None:
        self.bind()
        self.open_logs()
        super().privilegedStartService()

    def stopService(self) -> Deferred[None]:
        for pool in self.pools.values():
            pool.stop()
        stopped: Deferred[None] = super().stopService()
        return stopped.addBoth(self._close_logs)

    def _close_logs(self, result: _T) -> _T:
        for lines in self.log_files.values():
            lines.close()
        return result

    def addresses(self) -> dict[str, IAddress | None]:
        """
        :returns: where each frontend listens, by name.
        """
        return {name: listener.address() for name, listener in self.listeners.items()}
