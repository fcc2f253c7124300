"""
A Twisted application that runs stickyproxy next to its own services.

    twistd -ny docs/examples/myapp.py

It proxies as docs/examples/proxy.toml says, and drains backend web2 when
SIGUSR1 arrives (kill -USR1 <pid>) to show what the running objects offer.
"""

import os
import signal

from twisted.application import service
from twisted.internet import reactor

from stickyproxy import AdminState, ConfigError, StrategyRegistry, read_config_file
from stickyproxy.service import ProxyService

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proxy.toml")

application = service.Application("myapp")
services = service.MultiService()
services.setServiceParent(application)

registry = StrategyRegistry.from_plugins()
try:
    config = read_config_file(CONFIG, registry)
    proxy = ProxyService(config, reactor, registry)
except ConfigError as error:
    raise SystemExit(f"myapp: configuration error: {error}") from None
proxy.setServiceParent(services)

# ... the application's own services join `services` here ...


def drain_web2(signum: int, frame: object) -> None:
    reactor.callFromThread(proxy.pools["web"].set_admin_state, "web2", AdminState.DRAIN)


signal.signal(signal.SIGUSR1, drain_web2)
