"""
stickyproxy: a load-balancing proxy with session persistence, on Twisted.

Run it with C{twistd -n stickyproxy --config proxy.toml}, or embed
L{stickyproxy.service.ProxyService} in any Twisted application.
"""

from ._backends import AdminState, Backend, Pool
from ._config import ProxyConfig, load_config, read_config_file
from ._options import ConfigError, OptionReader
from ._router import Decision, NoBackendAvailable, Outcome, Router, RoutingContext
from ._strategies import StrategyRegistry

__version__ = "0.1.0"

__all__ = [
    "AdminState",
    "Backend",
    "ConfigError",
    "Decision",
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
