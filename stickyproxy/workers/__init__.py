"""
Every core in use: a parent process that owns the listening sockets, the
admin listener, the health checks and the admin state, and worker
processes that serve the traffic, each with its own L{ProxyService
<stickyproxy.service.ProxyService>}.
"""

from stickyproxy.workers._control import parent_control, worker_control

__all__ = ["parent_control", "worker_control"]
