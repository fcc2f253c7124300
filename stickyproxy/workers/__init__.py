"""
Every core in use: a parent process that owns the listening sockets, the
admin listener, the health checks and the admin state, and worker
processes that serve the traffic, each with its own L{ProxyService
<stickyproxy.service.ProxyService>}.

The parent (a L{ProxyService} in the L{Role.PARENT
<stickyproxy.service.Role>} role) opens every frontend's socket and
accepts nothing on it; its L{WorkerSupervisor} spawns the workers (each a
L{Role.WORKER <stickyproxy.service.Role>} that adopts the sockets it
inherited), restarts them, relays their logs and signals them, and speaks
to each over an AMP control channel (L{parent_control},
L{worker_control}).  C{docs/workers.rst} tells the whole story.
"""

from stickyproxy.workers._control import parent_control, worker_control
from stickyproxy.workers._supervisor import (
    WorkerSupervisor,
    relay_line,
    restart_delay,
)
from stickyproxy.workers._worker import ParentLink, WorkerIdentity, worker_identity

__all__ = [
    "ParentLink",
    "WorkerIdentity",
    "WorkerSupervisor",
    "parent_control",
    "relay_line",
    "restart_delay",
    "worker_control",
    "worker_identity",
]
