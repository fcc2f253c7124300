"""
C{twistd stickyproxy}: command-line options and L{makeService}.
"""

from __future__ import annotations

import gc
import os
import platform
import signal
import sys
import textwrap
from collections.abc import Callable, Mapping
from functools import partial
from types import FrameType
from typing import Any

import attrs
from zope.interface import provider

from twisted import __version__ as twisted_version
from twisted.application.service import IService, Service
from twisted.internet.error import ReactorNotRunning
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import usage

from stickyproxy import __version__
from stickyproxy._demo import DemoService, demo_config_data, listen_demo_backends
from stickyproxy._eventloop import install_lean_reactor, reactor_option
from stickyproxy._jsonlog import json_lines_observer, stdout_json_observer
from stickyproxy.config._load import (
    MODES,
    ProxyConfig,
    load_config,
    read_config_file,
    read_workers,
)
from stickyproxy.config._options import ConfigError
from stickyproxy.core._balancers import BALANCERS
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._secrets import KEY_FILE, FileSecrets
from stickyproxy.service import ListenerService, ProxyService, Role
from stickyproxy.workers import (
    ParentLink,
    WorkerSupervisor,
    parent_control,
    worker_control,
    worker_identity,
)
from stickyproxy.workers._supervisor import KILL_GRACE

LOG_FORMATS = ("text", "json")


def _choice(flag: str, choices: tuple[str, ...]) -> Any:
    """
    :returns: a coerce function for C{flag} that accepts only C{choices};
        its L{usage.UsageError} reaches the user as it is (a C{ValueError}
        would be prefixed with "Parameter type enforcement failed").
    """

    def coerce(value: str) -> str:
        if value not in choices:
            raise usage.UsageError(
                f"{flag}: expected one of {', '.join(choices)}, got {value!r}"
            )
        return value

    return coerce


_mode = _choice("--mode", MODES)
_balance = _choice("--balance", tuple(BALANCERS))
_log_format = _choice("--log-format", LOG_FORMATS)


def _workers(value: str) -> int:
    """
    The coerce function of C{--workers}: a count, or C{auto}.
    """
    try:
        return read_workers(value if value == "auto" else int(value), "--workers")
    except ValueError:
        raise usage.UsageError(
            f'--workers: expected an integer or "auto", got {value!r}'
        ) from None
    except ConfigError as error:
        raise usage.UsageError(str(error)) from None


class Options(usage.Options):
    """
    Either C{--config FILE}, or the short flags for one frontend, or C{--demo}.
    """

    synopsis = (
        "[--config FILE] | [--listen ENDPOINT --backend [NAME=]ADDRESS ...] | [--demo]"
    )
    longdesc = (
        "A load-balancing proxy with session persistence (sticky sessions). "
        "Give a TOML config file, or describe one frontend with the short "
        "flags, or try the built-in demo."
    )
    optFlags = [
        ["demo", None, "Run demo backends in this process, with a proxy in front."],
        [
            "check",
            None,
            "Check the configuration and exit, as haproxy -c does: status 0 "
            "when the proxy would start, else 1 and the error.  Nothing "
            "listens and nothing is written.",
        ],
    ]
    optParameters = [
        ["config", "c", None, "The TOML configuration file."],
        [
            "workers",
            None,
            None,
            "Worker processes serving the frontends, or auto (one per CPU); "
            "overrides workers in the config (default: 1, this process).",
            _workers,
        ],
        ["mode", None, None, "Frontend mode: tcp (the default) or http.", _mode],
        [
            "listen",
            None,
            None,
            "Where to listen: a Twisted server endpoint string, e.g. tcp:7000.",
        ],
        ["persistence", None, None, "Persistence strategy name, e.g. source-ip."],
        [
            "cookie-name",
            None,
            None,
            "With --persistence cookie: the name of the proxy's cookie.",
        ],
        [
            "balance",
            None,
            None,
            "Balancer: " + ", ".join(BALANCERS) + " (default: roundrobin).",
            _balance,
        ],
        [
            "admin",
            None,
            None,
            "Admin listener endpoint string, e.g. tcp:9900:interface=127.0.0.1: "
            "the JSON API (/api/), the dashboard (/) and Prometheus metrics "
            "(/metrics).",
        ],
        [
            "state-dir",
            None,
            None,
            "Where the proxy keeps its cookie key when none is configured "
            "(overrides state_dir; default: twistd's run directory).",
        ],
        [
            "log-format",
            None,
            "text",
            "text, or json: one JSON object per line on standard output "
            "(with twistd -n).",
            _log_format,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["backends"] = []
        #: The arguments parsed (those a worker is started with).
        self.argv: list[str] = []

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, and under C{twistd}, report a mistake as one line naming the
        flag rather than as twistd's whole usage text (which C{--help}
        shows).

        :raises usage.UsageError: a mistake, when not under C{twistd} (a
            program parsing these options reports it its own way).
        """
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            raise SystemExit(
                f"stickyproxy: {error} (see twistd stickyproxy --help)"
            ) from None

    def opt_version(self) -> None:
        """
        Print stickyproxy's version and exit.
        """
        print(version())
        sys.exit(0)

    def getUsage(self, width: int | None = None) -> str:
        """
        The flags, then what their names can be: every strategy installed
        (plugins included), every balancer, and what C{--admin} serves.
        """
        registry = StrategyRegistry.from_plugins()
        strategies = ", ".join(
            f"{name} ({'/'.join(sorted(registry.get(name, '').modes))})"
            for name in registry.names()
        )
        width = width or int(os.environ.get("COLUMNS", "80"))
        sections = [
            (
                "Persistence strategies (--persistence NAME, or strategy = NAME "
                "in [frontend.persistence]):",
                strategies,
            ),
            (
                "Balancers (--balance NAME, or balance = NAME in [pool.NAME]):",
                ", ".join(BALANCERS),
            ),
            (
                "Admin listener (--admin ENDPOINT, or listen in [admin]):",
                "the JSON API under /api/, the dashboard at /, and Prometheus "
                "metrics at /metrics.",
            ),
        ]
        text = "".join(
            "\n"
            + textwrap.fill(title, width, subsequent_indent="  ")
            + "\n"
            + textwrap.fill(body, width, initial_indent="  ", subsequent_indent="  ")
            + "\n"
            for title, body in sections
        )
        return super().getUsage(width) + text

    def opt_backend(self, value: str) -> None:
        """
        A backend as [NAME=]ADDRESS (host:port, [v6]:port or an endpoint); repeatable.
        """
        name: str | None
        name, sep, address = value.partition("=")
        if not sep or ":" in name:
            name, address = None, value  # named like an unnamed one in a config file
        if name == "" or not address:
            raise usage.UsageError(f"--backend: expected [NAME=]ADDRESS, got {value!r}")
        self["backends"].append((name, address))

    def postOptions(self) -> None:
        given = [
            f"--{key}"
            for key in (
                "mode",
                "listen",
                "persistence",
                "cookie-name",
                "balance",
                "admin",
            )
            if self[key] is not None
        ] + (["--backend"] if self["backends"] else [])
        if self["config"] and (given or self["demo"]):
            raise usage.UsageError(
                "--config describes everything; do not combine it with "
                + ", ".join(given or ["--demo"])
            )
        if self["demo"]:
            extra = [
                flag for flag in given if flag not in ("--mode", "--listen", "--admin")
            ]
            if extra:
                raise usage.UsageError(
                    "--demo brings its own backends and settings; it takes only "
                    f"--mode, --listen and --admin, not {', '.join(extra)}"
                )
        if not (self["config"] or self["demo"] or self["backends"]):
            raise usage.UsageError(
                "nothing to proxy: give --config FILE, or --listen ENDPOINT with "
                "--backend ADDRESS (repeatable), or --demo"
            )
        if self["backends"] and not self["listen"]:
            raise usage.UsageError("--listen ENDPOINT is required with --backend")
        if self["state-dir"] == "":
            raise usage.UsageError("--state-dir: expected a directory, got ''")
        if self["cookie-name"] and self["persistence"] != "cookie":
            raise usage.UsageError(
                "--cookie-name names the cookie of --persistence cookie; for "
                "other strategies' cookies, use --config"
            )
        if self["demo"] and (self["workers"] or 1) > 1:
            raise usage.UsageError(
                "--demo runs in one process; it does not take --workers"
            )
        if self["check"] and self["demo"]:
            raise usage.UsageError(
                "--check checks --config FILE or the short flags; --demo has "
                "nothing to check"
            )
        if self["log-format"] == "json":
            self._log_json()
        if self["check"]:
            from twisted.internet import reactor

            sys.exit(run_check(self, reactor))

    def _log_json(self) -> None:
        """
        Have the program that parses these options (C{twistd}, or C{twist})
        log JSON lines to standard output.
        """
        parent = getattr(self, "parent", None)
        if parent is None:
            return  # embedded: the program chooses its own log observers
        if "fileLogObserverFactory" in parent or "logFile" in parent:
            # twist: its --log-file still says where.
            parent["fileLogObserverFactory"] = json_lines_observer
            return
        taken = [
            flag
            for flag, given in (
                ("--logfile", parent.get("logfile") not in (None, "", "-")),
                ("--syslog", parent.get("syslog")),
                ("--logger", parent.get("logger") is not None),
            )
            if given
        ]
        if taken:
            raise usage.UsageError(
                "--log-format json writes to standard output; it does not "
                f"combine with twistd's {', '.join(taken)}"
            )
        if not parent.get("nodaemon", True):
            raise usage.UsageError(
                "--log-format json writes to standard output, which a daemon "
                "does not have: run twistd -n (and let systemd or docker keep "
                "the log)"
            )
        # twistd's own --logger, resolved after these options are parsed.
        parent["logger"] = f"{stdout_json_observer.__module__}.stdout_json_observer"

    def demo_mode(self) -> str | None:
        """
        :returns: with C{--listen}, the mode of the one demo frontend that
            listens there (C{--mode}); else C{None}, for both.
        """
        return (self["mode"] or "tcp") if self["listen"] else None

    def config_data(self) -> dict[str, object]:
        """
        The short flags as the tables a config file would hold.
        """
        frontend: dict[str, object] = {
            "name": "main",
            "mode": self["mode"] or "tcp",
            "listen": self["listen"],
            "pool": "main",
        }
        if self["persistence"]:
            persistence = {"strategy": self["persistence"]}
            if self["cookie-name"]:
                persistence["name"] = self["cookie-name"]
            frontend["persistence"] = persistence
        data: dict[str, object] = {
            "frontend": [frontend],
            "pool": {
                "main": {
                    "balance": self["balance"] or "roundrobin",
                    "backend": [
                        {"address": address}
                        if name is None
                        else {"name": name, "address": address}
                        for name, address in self["backends"]
                    ],
                }
            },
        }
        if self["admin"]:
            data["admin"] = {"listen": self["admin"]}
        return data


def _state_dir(options: Options, config: ProxyConfig) -> str:
    """
    The state directory: C{--state-dir}, else the config's C{state_dir}, as
    an absolute path; a relative one is relative to twistd's run directory
    (C{--rundir}), which twistd changes into only after this has run.
    """
    parent = getattr(options, "parent", None)
    rundir = (parent.get("rundir") if parent is not None else None) or "."
    chosen = options["state-dir"] or config.state_dir
    return os.path.abspath(os.path.join(rundir, chosen))


def _config(
    options: Options,
    registry: StrategyRegistry,
    demo_ports: dict[str, ListenerService] | None = None,
) -> ProxyConfig:
    """
    The configuration an option set describes.

    :param demo_ports: with C{--demo}, where its backends listen.
    :raises ConfigError: naming the first mistake.
    """
    config: ProxyConfig
    if demo_ports is not None:
        config = load_config(
            demo_config_data(
                options["listen"], options.demo_mode(), demo_ports, options["admin"]
            ),
            registry,
        )
    elif options["config"]:
        config = read_config_file(options["config"], registry)
    else:
        config = load_config(options.config_data(), registry)
    return attrs.evolve(
        config,
        state_dir=_state_dir(options, config),
        workers=options["workers"] or config.workers,
    )


def _worker_command(
    options: Options, config: ProxyConfig, reactor: object
) -> list[str]:
    """
    :returns: how a worker is started: as this process was, under C{twist}
        (no pid file, no daemon), logging JSON lines for its parent to
        relay, with the paths this process resolved, on this process's
        reactor if it is the proxy's own.
    """
    command = [sys.executable, "-m", "twisted", *reactor_option(reactor)]
    command += ["stickyproxy", *options.argv]
    command += ["--state-dir", config.state_dir, "--log-format", "json"]
    if options["config"]:
        command += ["--config", options["config"]]
    return command


def _parent_gone(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # stopping already


def _makeService(
    options: Options, reactor: Any, environment: Mapping[str, str] = os.environ
) -> ProxyService:
    """
    Build (and bind) the proxy an option set describes, on C{reactor}:
    the whole proxy, or with C{workers} above 1, the parent of workers
    (see L{stickyproxy.workers}), or one of them when C{environment} says
    this process is.

    :raises ConfigError: any configuration mistake, including a port in use.
    """
    registry = StrategyRegistry.from_plugins()
    demo_ports = None
    if options["demo"]:
        mode = options.demo_mode()
        demo_ports = {}
        for each in ("tcp", "http") if mode is None else (mode,):
            demo_ports.update(listen_demo_backends(reactor, each))
    config = _config(options, registry, demo_ports)
    try:
        identity = worker_identity(environment)
    except ValueError as error:
        raise ConfigError(
            "workers", f"not started by a parent as expected: {error}"
        ) from None
    role = Role.ALONE if config.workers == 1 else Role.PARENT
    if identity is not None:
        role = Role.WORKER
    proxy = ProxyService(
        config,
        reactor,
        registry,
        role=role,
        sockets=None if identity is None else identity.sockets,
    )
    if options["config"]:
        # Absolute: twistd changes into its --rundir after this has run.
        options["config"] = os.path.abspath(options["config"])
        proxy.config_source = partial(_config, options, registry)
    if demo_ports is not None:
        DemoService(demo_ports, proxy).setServiceParent(proxy)
    reopen: Callable[[], object] = proxy.reopen_logs
    if role is Role.PARENT:
        # The proxy's strategies made the cookie secret's file, if they
        # need one, before any worker reads it.
        workers = WorkerSupervisor(
            reactor,
            config.workers,
            _worker_command(options, config, reactor),
            environment,
            proxy.sockets,
            control=partial(parent_control, proxy),
            kill_after=config.shutdown_timeout + KILL_GRACE,
        )
        workers.setServiceParent(proxy)

        def reopen() -> None:
            proxy.reopen_logs()
            workers.signal_all(signal.SIGUSR1)

    elif role is Role.WORKER:
        control = worker_control(proxy)
        # Serve once the parent sent every backend's state.
        control.synced.addCallback(lambda _: proxy.start_accepting())
        link = ParentLink(reactor, control, partial(_parent_gone, reactor))
        link.setServiceParent(proxy)
    OnSignal(signal.SIGUSR1, reopen, reactor).setServiceParent(proxy)
    proxy.bind()
    proxy.open_logs()
    return proxy


class OnSignal(Service):
    """
    While running, calls C{action} in the reactor thread when the process
    gets signal C{signum}, then the handler that was there before (such
    as twistd's, which rotates its C{--logfile} on C{SIGUSR1}).
    """

    def __init__(self, signum: int, action: Callable[[], object], reactor: Any) -> None:
        self.signum = signum
        self.action = action
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self.signum, self.received)

    def stopService(self) -> None:
        super().stopService()
        previous, self._previous = self._previous, None
        if signal.getsignal(self.signum) == self.received:
            # None: the handler before was not set from Python.
            signal.signal(self.signum, signal.SIG_DFL if previous is None else previous)

    def received(self, signum: int, frame: FrameType | None) -> None:
        """
        The signal handler: hand C{action} to the reactor (a signal may
        interrupt it anywhere), and chain to the previous handler.
        """
        self.reactor.callFromThread(self.action)
        if callable(self._previous):
            self._previous(signum, frame)


def check_config(options: Options, reactor: Any) -> str:
    """
    What C{--check} does: build the proxy the options describe, as
    L{makeService} would (endpoint strings parsed, TLS key files read,
    strategies built with their keys), but neither listen nor write
    anything; a missing cookie secret is only checked to be makeable.

    :returns: a one-line summary of what was checked.
    :raises ConfigError: the mistake L{makeService} would stop at, except a
        port that is taken.
    """
    registry = StrategyRegistry.from_plugins()
    config = _config(options, registry)
    secrets = FileSecrets(os.path.join(config.state_dir, KEY_FILE), create=False)
    ProxyService(config, reactor, registry, secrets=secrets)
    backends = sum(len(pool.backends) for pool in config.pools.values())
    counted = ", ".join(
        f"{count} {noun}{'' if count == 1 else 's'}"
        for count, noun in (
            (len(config.frontends), "frontend"),
            (len(config.pools), "pool"),
            (backends, "backend"),
        )
    )
    source = options["config"] or "the command line"
    return f"stickyproxy: configuration OK: {source} ({counted})"


def run_check(options: Options, reactor: Any) -> int:
    """
    Run L{check_config} for C{twistd stickyproxy --check}: its summary goes
    to standard output, and each warning logged while checking, or the
    error, to standard error, one line each.

    :returns: the exit status: 0 when the configuration is good, else 1.
    """

    @provider(ILogObserver)
    def warn(event: LogEvent) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            print(f"stickyproxy: warning: {formatEvent(event)}", file=sys.stderr)

    globalLogPublisher.addObserver(warn)
    try:
        summary = check_config(options, reactor)
    except ConfigError as error:
        print(f"stickyproxy: configuration error: {error}", file=sys.stderr)
        return 1
    finally:
        globalLogPublisher.removeObserver(warn)
    print(summary)
    return 0


def version() -> str:
    """
    :returns: what C{--version} prints: stickyproxy's version (the one its
        package metadata is made from), and Twisted's and Python's.
    """
    return (
        f"stickyproxy {__version__} (Twisted {twisted_version}, "
        f"Python {platform.python_version()})"
    )


log = Logger()


def install_signal_handlers(proxy: ProxyService, reactor: Any) -> None:
    """
    Add the proxy's signal handlers: C{SIGHUP} reloads the config file (at
    once: a reload asked for during startup waits for the reactor), and,
    once the reactor runs with its own handlers (C{SIGTERM} and C{SIGINT}
    stop it, gracefully: see L{ProxyService.stopService}), a second
    C{SIGTERM} or C{SIGINT} cuts every connection off at once.  The
    handlers only pass the work to the reactor (C{callFromThread}).  For
    C{twistd} only: a program that embeds the proxy keeps its own signals.

    A parent of workers passes each signal on to them, but C{SIGHUP}: once
    its own reload succeeded, its control channels have them reload (see
    L{ProxyService.reloaded}).  A worker
    ignores C{SIGINT}: a ^C in a terminal reaches every process of the
    group, and its parent stops it.
    """
    workers = _supervisor(proxy)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(_reload, proxy))

    def stop_now(signum: int) -> None:
        _stop_now(proxy, signum)
        if workers is not None:
            workers.stop_now()

    def install() -> None:
        stops: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
        if proxy.role is Role.WORKER:
            # Its parent stops it: a ^C reaches the whole process group.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stops = (signal.SIGTERM,)
        reactors: dict[int, Any] = {s: signal.getsignal(s) for s in stops}
        stopping: list[int] = []

        def stop(signum: int, frame: FrameType | None) -> None:
            handler = reactors[signum]
            if not stopping and callable(handler):
                stopping.append(signum)
                handler(signum, frame)  # the reactor's: it logs and stops
            else:
                reactor.callFromThread(stop_now, signum)

        for signum in stops:
            signal.signal(signum, stop)

    reactor.addSystemEventTrigger("after", "startup", install)


def _stop_now(proxy: ProxyService, signum: int) -> None:
    log.warn(
        "received {signal} again: stopping at once",
        signal=signal.Signals(signum).name,
    )
    proxy.stop_now()


def _supervisor(proxy: ProxyService) -> WorkerSupervisor | None:
    """
    :returns: the workers of a parent, or C{None}.
    """
    for service in proxy:
        if isinstance(service, WorkerSupervisor):
            return service
    return None


def _reload(proxy: ProxyService) -> None:
    """
    C{SIGHUP}: reload the config file.  The outcome is logged by the
    proxy; a rejected config changes nothing.
    """
    log.info("received SIGHUP: reloading the configuration")
    try:
        proxy.reload_from_source()
    except ConfigError:
        pass
    except Exception:
        log.failure("reloading the configuration")


def freeze_after_startup(reactor: Any) -> None:
    """
    Once the reactor has started, move every object made so far (modules,
    the configuration, listeners) out of the garbage collector's sight
    (L{gc.freeze}): they live as long as the process, and each full
    collection walked them all while every client waited (150 ms and more
    on a busy 2-core machine under new connections; 11 to 36 ms after).
    Cycles that a reload leaves of them are kept, not collected.
    """

    def freeze() -> None:
        gc.collect()
        gc.freeze()

    reactor.addSystemEventTrigger("after", "startup", freeze)


def makeService(options: Options) -> IService:
    """
    The C{twistd} entry point.  A configuration mistake ends the process
    with status 1 and a one-line message naming the key, not a traceback.
    """
    install_lean_reactor()
    from twisted.internet import reactor

    try:
        proxy = _makeService(options, reactor)
    except ConfigError as error:
        raise SystemExit(f"stickyproxy: configuration error: {error}") from None
    install_signal_handlers(proxy, reactor)
    freeze_after_startup(reactor)
    return proxy
