"""
C{twistd stickyproxy}: command-line options and L{makeService}.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from twisted.application.service import IService
from twisted.python import usage

from stickyproxy._demo import DemoService, demo_config_data, listen_demo_backends
from stickyproxy.config._load import MODES, ProxyConfig, load_config, read_config_file
from stickyproxy.config._options import ConfigError
from stickyproxy.core._balancers import BALANCERS
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.service import ProxyService


def _mode(value: str) -> str:
    if value not in MODES:
        raise ValueError(f"--mode: expected one of {', '.join(MODES)}, got {value!r}")
    return value


def _balance(value: str) -> str:
    if value not in BALANCERS:
        raise ValueError(
            f"--balance: expected one of {', '.join(BALANCERS)}, got {value!r}"
        )
    return value


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
    ]
    optParameters = [
        ["config", "c", None, "The TOML configuration file."],
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
        ["admin", None, None, "Admin listener endpoint string."],
        [
            "state-dir",
            None,
            None,
            "Where the proxy keeps its cookie key when none is configured "
            "(overrides state_dir; default: twistd's run directory).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["backends"] = []

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
            extra = [flag for flag in given if flag not in ("--mode", "--listen")]
            if extra:
                raise usage.UsageError(
                    "--demo brings its own backends and settings; it takes only "
                    f"--mode and --listen, not {', '.join(extra)}"
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


def _makeService(options: Options, reactor: Any) -> ProxyService:
    """
    Build (and bind) the proxy an option set describes, on C{reactor}.

    :raises ConfigError: any configuration mistake, including a port in use.
    """
    registry = StrategyRegistry.from_plugins()
    demo_ports = None
    config: ProxyConfig
    if options["demo"]:
        # With --listen, one demo frontend (of --mode) listens there; else both.
        mode = (options["mode"] or "tcp") if options["listen"] else None
        modes = ("tcp", "http") if mode is None else (mode,)
        demo_ports = {}
        for each in modes:
            demo_ports.update(listen_demo_backends(reactor, each))
        config = load_config(
            demo_config_data(options["listen"], mode, demo_ports), registry
        )
    elif options["config"]:
        config = read_config_file(options["config"], registry)
    else:
        config = load_config(options.config_data(), registry)
    config = attrs.evolve(config, state_dir=_state_dir(options, config))
    proxy = ProxyService(config, reactor, registry)
    if demo_ports is not None:
        DemoService(demo_ports, proxy).setServiceParent(proxy)
    proxy.bind()
    return proxy


def makeService(options: Options) -> IService:
    """
    The C{twistd} entry point.  A configuration mistake ends the process
    with status 1 and a one-line message naming the key, not a traceback.
    """
    from twisted.internet import reactor

    try:
        return _makeService(options, reactor)
    except ConfigError as error:
        raise SystemExit(f"stickyproxy: configuration error: {error}") from None
