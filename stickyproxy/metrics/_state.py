"""
The gauges of backend state, read from the live pools at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from twisted.internet.defer import Deferred

from stickyproxy.core._events import EventStream
from stickyproxy.core._pool import Pool
from stickyproxy.model import AdminState
from stickyproxy.store import RedisStore

BACKEND = ("pool", "backend")


class LiveProxy(Protocol):
    """
    What the metrics read of a proxy (a L{stickyproxy.service.ProxyService}).
    """

    @property
    def pools(self) -> Mapping[str, Pool]:
        """
        The live pools by name (a reload may replace them).
        """

    @property
    def events(self) -> EventStream:
        """
        Everything that happens in the proxy.
        """

    @property
    def remote_metrics(self) -> Callable[[], Deferred[list[Metric]]] | None:
        """
        Where the counters of the processes that serve for the proxy (its
        workers) come from, to be added to its own; C{None} when it serves
        alone.
        """

    @property
    def store(self) -> RedisStore | None:
        """
        The store shared with other proxies, or C{None} without one.
        """


class StateCollector:
    """
    A Prometheus collector of every backend's state, read from the proxy's
    pools when scraped, so that it is never stale and costs nothing between
    scrapes, and backends added or removed at run time (or by a reload)
    appear and disappear with them.
    """

    def __init__(self, proxy: LiveProxy) -> None:
        self._proxy = proxy

    def describe(self) -> Iterator[Metric]:
        """
        The families, without samples (the registry checks their names).
        """
        return iter(_families().values())

    def collect(self) -> Iterator[Metric]:
        """
        The families, with one sample per backend (and per admin state).
        """
        families = _families()
        up = families["up"]
        admin = families["admin_state"]
        for pool in self._proxy.pools.values():
            families["panic"].add_metric([pool.name], pool.panic)
            for backend in pool.backends:
                labels = [pool.name, backend.name]
                up.add_metric(labels, backend.healthy)
                for state in AdminState:
                    admin.add_metric(
                        [*labels, state.value], backend.admin_state is state
                    )
                families["weight"].add_metric(labels, backend.weight)
                families["active"].add_metric(labels, backend.active)
                families["sessions"].add_metric(labels, pool.sessions(backend.name))
        return iter(families.values())


def _families() -> dict[str, GaugeMetricFamily]:
    return {
        "up": GaugeMetricFamily(
            "stickyproxy_backend_up",
            "Whether health checks let the backend serve (1) or not (0).",
            labels=BACKEND,
        ),
        "admin_state": GaugeMetricFamily(
            "stickyproxy_backend_admin_state",
            "The backend's administrative state: 1 for the current one "
            "(ready, drain or maint), 0 for the others.",
            labels=(*BACKEND, "state"),
        ),
        "weight": GaugeMetricFamily(
            "stickyproxy_backend_weight",
            "The backend's share of new clients (0 takes none).",
            labels=BACKEND,
        ),
        "active": GaugeMetricFamily(
            "stickyproxy_backend_active_connections",
            "Connections (L4) or requests (HTTP) open or being opened to the backend.",
            labels=BACKEND,
        ),
        "sessions": GaugeMetricFamily(
            "stickyproxy_backend_sessions",
            "Sticky sessions the backend holds: its open connections, or the "
            "live bindings to it a strategy keeps, whichever is more.",
            labels=BACKEND,
        ),
        "panic": GaugeMetricFamily(
            "stickyproxy_pool_panic",
            "Whether the pool ignores health because no backend is up "
            "(fail_open or passive_panic).",
            labels=("pool",),
        ),
    }
