"""
Makes C{twistd stickyproxy} available.
"""

from twisted.application.service import ServiceMaker

stickyproxy = ServiceMaker(
    "stickyproxy",
    "stickyproxy.tap",
    "A load balancer with session persistence (sticky sessions).",
    "stickyproxy",
)
