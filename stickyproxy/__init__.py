"""
stickyproxy: a load-balancing proxy with session persistence, on Twisted.

Run it with C{twistd -n stickyproxy --config proxy.toml}, or embed
L{stickyproxy.service.ProxyService} in any Twisted application.
"""

from stickyproxy.config._load import ProxyConfig, load_config, read_config_file
from stickyproxy.config._options import ConfigError, OptionReader
from stickyproxy.config._settings import HealthSettings
from stickyproxy.core._events import EventStream, IgnoreEvents
from stickyproxy.core._pool import BackendInUse, Pool
from stickyproxy.core._router import NoBackendAvailable, Router, RoutingContext
from stickyproxy.health._monitor import HealthMonitor
from stickyproxy.health._probes import HTTPProbe, TCPProbe
from stickyproxy.model import (
    AdminState,
    Backend,
    ConnectionClosed,
    ConnectionOpened,
    Decision,
    Health,
    Outcome,
    ProbeRan,
    RequestFinished,
    StateChange,
)
from stickyproxy.persistence._registry import StrategyRegistry

__version__ = "0.1.0"

__all__ = [
    "AdminState",
    "Backend",
    "BackendInUse",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionOpened",
    "Decision",
    "EventStream",
    "HTTPProbe",
    "Health",
    "HealthMonitor",
    "HealthSettings",
    "IgnoreEvents",
    "NoBackendAvailable",
    "OptionReader",
    "Outcome",
    "Pool",
    "ProbeRan",
    "ProxyConfig",
    "RequestFinished",
    "Router",
    "RoutingContext",
    "StateChange",
    "StrategyRegistry",
    "TCPProbe",
    "__version__",
    "load_config",
    "read_config_file",
]
