"""
stickyproxy: a load-balancing proxy with session persistence, on Twisted.

Run it with C{twistd -n stickyproxy --config proxy.toml}, or embed
L{stickyproxy.service.ProxyService} in any Twisted application.
"""

from stickyproxy.config._load import ProxyConfig, load_config, read_config_file
from stickyproxy.config._options import ConfigError, OptionReader
from stickyproxy.core._events import EventStream, IgnoreEvents
from stickyproxy.core._pool import Pool
from stickyproxy.core._router import NoBackendAvailable, Router, RoutingContext
from stickyproxy.model import AdminState, Backend, Decision, Outcome
from stickyproxy.persistence._registry import StrategyRegistry

__version__ = "0.1.0"

__all__ = [
    "AdminState",
    "Backend",
    "ConfigError",
    "Decision",
    "EventStream",
    "IgnoreEvents",
    "NoBackendAvailable",
    "OptionReader",
    "Outcome",
    "Pool",
    "ProxyConfig",
    "Router",
    "RoutingContext",
    "StrategyRegistry",
    "__version__",
    "load_config",
    "read_config_file",
]
