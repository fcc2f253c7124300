"""
Prometheus metrics of a running proxy, served at C{/metrics} on the admin
listener: counters and histograms fed by the event stream, and gauges read
from the live pools at each scrape.
"""

from stickyproxy.metrics._resource import MetricsResource, proxy_registry
from stickyproxy.metrics._state import StateCollector
from stickyproxy.metrics._traffic import TrafficMetrics

__all__ = ["MetricsResource", "StateCollector", "TrafficMetrics", "proxy_registry"]
