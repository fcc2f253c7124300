"""
The C{/metrics} resource, and the registry behind it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stickyproxy.metrics._merge import Families, merge
from stickyproxy.metrics._state import LiveProxy, StateCollector
from stickyproxy.metrics._store import StoreCollector
from stickyproxy.metrics._traffic import TrafficMetrics


def proxy_registry(proxy: LiveProxy) -> CollectorRegistry:
    """
    A registry of a proxy's metrics, its own rather than
    C{prometheus_client}'s global one, so that several proxies (or tests)
    in one process do not collide: counters fed by its event stream from
    now on, and gauges read from its pools at each scrape.
    """
    registry = CollectorRegistry()
    proxy.events.subscribe(TrafficMetrics(registry))
    registry.register(StateCollector(proxy))
    registry.register(StoreCollector(proxy))
    return registry


class MetricsResource(Resource):
    """
    Serves a proxy's metrics in the Prometheus text format (or OpenMetrics,
    when the scraper asks for it).

    The exposition is built on the reactor thread, where the pools live:
    C{prometheus_client.twisted}'s resource would read them from a thread
    of the global reactor's pool.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, proxy: LiveProxy) -> None:
        """
        :param proxy: the proxy (a L{stickyproxy.service.ProxyService})
            whose metrics are served; they count from now on.
        """
        super().__init__()
        self.registry = proxy_registry(proxy)
        self._proxy = proxy

    def render(self, request: Request) -> bytes:
        if request.method in (b"GET", b"HEAD"):
            rendered: bytes = super().render(request)
            return rendered
        # Rather than Resource's UnsupportedMethod, whose error page is
        # deprecated.
        request.setResponseCode(405)
        request.setHeader(b"allow", b"GET, HEAD")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"metrics are read with GET\n"

    def render_GET(self, request: Request) -> bytes | int:
        accept = request.getHeader(b"accept")
        encode, content_type = choose_encoder(
            "" if accept is None else accept.decode("latin-1")
        )
        request.setHeader(b"content-type", content_type.encode("ascii"))
        remote = self._proxy.remote_metrics
        if remote is None:
            return encode(self.registry)
        # The workers' counters, added to the proxy's own.
        collecting = remote()
        collecting.addCallback(
            lambda others: encode(Families(merge(self.registry.collect(), others)))
        )
        collecting.addCallback(request.write)
        collecting.addErrback(self._failed, request)
        collecting.addCallback(lambda _: request.finish())
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Request) -> None:
        self.log.failure("collecting the workers' metrics", failure)
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(b"the workers' metrics could not be collected\n")
