"""
Makes C{twistd stickyproxy} available, and the reactor it runs on
(C{--reactor stickyproxy-epoll}).
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

stickyproxy = ServiceMaker(
    "stickyproxy",
    "stickyproxy.tap",
    "A load balancer with session persistence (sticky sessions).",
    "stickyproxy",
)

stickyproxy_epoll = Reactor(
    "stickyproxy-epoll",
    "stickyproxy._eventloop",
    "The epoll reactor without a logging context per event (Linux).",
)
