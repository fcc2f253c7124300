"""
The metrics of the shared store's connection, read at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from stickyproxy.metrics._state import LiveProxy


class StoreCollector:
    """
    A Prometheus collector of the store's connection: whether it is up, and
    how many times it was lost.  A proxy without C{[store]} has neither.
    """

    def __init__(self, proxy: LiveProxy) -> None:
        self._proxy = proxy

    def describe(self) -> Iterator[Metric]:
        """
        The families, without samples (the registry checks their names).
        """
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        """
        The families, with their samples when the proxy has a store.
        """
        store = self._proxy.store
        if store is None:
            return iter(())
        up, losses = _families()
        up.add_metric([], store.up)
        losses.add_metric([], store.losses)
        return iter((up, losses))


def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
    return (
        GaugeMetricFamily(
            "stickyproxy_store_up",
            "Whether the shared store ([store]) is connected (1) or not (0).",
        ),
        CounterMetricFamily(
            "stickyproxy_store_losses",
            "How many times the connection to the shared store was lost.",
        ),
    )
