"""
The admin listener: a JSON API over the live proxy, at the service layer.

L{AdminRoot} is the root resource of the admin C{Site}; its children are
the API (C{/api}), Prometheus metrics (C{/metrics}, from
L{stickyproxy.metrics}) and the dashboard (the index).
"""

from stickyproxy.admin._root import AdminRoot
from stickyproxy.admin._traffic import Traffic, TrafficCounter

__all__ = ["AdminRoot", "Traffic", "TrafficCounter"]
