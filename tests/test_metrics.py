"""
Tests for L{stickyproxy.metrics}: the Prometheus families at C{/metrics},
scraped through the resource and parsed with C{prometheus_client}'s own
parser.
"""

import attrs
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from stickyproxy import (
    AdminState,
    ConnectionClosed,
    ConnectionOpened,
    EventStream,
    Health,
    ProbeRan,
    StrategyRegistry,
    load_config,
)
from stickyproxy.interfaces import IProxyEvents
from stickyproxy.metrics import MetricsResource, TrafficMetrics
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ProxyService
from stickyproxy.testing import make_backend, make_pool

from tests._base import TestCase, finished_request
from tests.test_admin import TOKEN, AdminTestCase

URL = "http://admin.invalid/"


@attrs.define
class FakeProxy:
    """
    What the metrics read of a proxy: its pools, its event stream and its
    store (none).
    """

    pools: dict
    events: EventStream = attrs.field(factory=EventStream)
    remote_metrics: object = None
    store: None = None

    def __attrs_post_init__(self):
        for pool in self.pools.values():
            pool.observe(self.events.backend_changed)


def opened(backend="a", persistence="new", strategy=None, frontend="l4", pool="p"):
    return ConnectionOpened(
        frontend=frontend,
        pool=pool,
        backend=backend,
        client="192.0.2.1",
        persistence=persistence,
        strategy=strategy,
    )


def closed(backend="a", bytes_in=0, bytes_out=0, frontend="l4", pool="p"):
    return ConnectionClosed(
        frontend=frontend,
        pool=pool,
        backend=backend,
        client="192.0.2.1",
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        duration=1.0,
    )


class Scrape:
    """
    One parsed exposition.
    """

    def __init__(self, text):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name):
        """
        Every sample named C{name} (a family's own name, or one of its
        C{_total}, C{_bucket}, C{_sum}, C{_count} series), as
        C{(labels, value)}.
        """
        return [
            (s.labels, s.value)
            for family in self.families.values()
            for s in family.samples
            if s.name == name
        ]

    def value(self, name, **labels):
        """
        The value of the sample C{name} with exactly these labels, or
        C{None} when there is none.
        """
        found = [
            v for sample_labels, v in self.samples(name) if sample_labels == labels
        ]
        assert len(found) <= 1, found
        return found[0] if found else None

    def by_backend(self, name, pool="p"):
        """
        The samples C{name} of C{pool}'s backends, by backend name.
        """
        return {
            labels["backend"]: value
            for labels, value in self.samples(name)
            if labels["pool"] == pool
        }

    def label_sets(self, name):
        return sorted(tuple(sorted(labels.items())) for labels, _ in self.samples(name))


class MetricsTestCase(TestCase):
    def setUp(self):
        self.pool = make_pool("a", "b", name="p")
        self.proxy = FakeProxy({"p": self.pool})
        self.resource = MetricsResource(self.proxy)
        self.events = self.proxy.events

    def get(self, resource=None, **headers):
        stub = StubTreq(resource or self.resource)
        response = self.successResultOf(
            stub.get(URL, headers={k: [v] for k, v in headers.items()})
        )
        body = self.successResultOf(stub.content(response))
        return response, body

    def scrape(self, resource=None):
        response, body = self.get(resource)
        self.assertEqual(response.code, 200)
        return Scrape(body.decode("utf-8"))


class ResourceTests(MetricsTestCase):
    def test_subscriber_provides(self):
        """
        The event subscriber provides L{IProxyEvents}, and subscribes to the
        proxy's stream when the resource is made.
        """
        [subscriber] = self.events._subscribers
        self.assertIsInstance(subscriber, TrafficMetrics)
        self.assertProvides(IProxyEvents, subscriber)
        self.assertTrue(self.events.active)

    def test_text_format(self):
        """
        A plain scrape gets the Prometheus text format, which
        C{prometheus_client}'s parser reads.
        """
        response, body = self.get()
        self.assertEqual(
            response.headers.getRawHeaders("content-type"),
            ["text/plain; version=0.0.4; charset=utf-8"],
        )
        self.assertIn("stickyproxy_backend_up", Scrape(body.decode()).families)

    def test_openmetrics(self):
        """
        A scraper that asks for OpenMetrics gets it.
        """
        response, body = self.get(accept="application/openmetrics-text; version=1.0.0")
        [content_type] = response.headers.getRawHeaders("content-type")
        self.assertTrue(content_type.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_get_only(self):
        """
        Metrics are read-only: other methods get 405, naming those allowed,
        in plain text (not labelled HTML).
        """
        stub = StubTreq(self.resource)
        response = self.successResultOf(stub.post(URL, data=b""))
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])
        self.assertEqual(
            response.headers.getRawHeaders("content-type"),
            ["text/plain; charset=utf-8"],
        )
        response = self.successResultOf(stub.head(URL))
        self.assertEqual(response.code, 200)

    def test_own_registry(self):
        """
        Each resource has its own registry: two proxies in one process (or
        two tests) do not collide, and nothing lands in
        C{prometheus_client}'s global registry.
        """
        other = FakeProxy({"q": make_pool("x", name="q")})
        second = MetricsResource(other)
        self.events.request_finished(finished_request())
        self.assertEqual(
            self.scrape().value(
                "stickyproxy_requests_total", frontend="web", backend="a", code="200"
            ),
            1.0,
        )
        scrape = self.scrape(second)
        self.assertEqual(scrape.samples("stickyproxy_requests_total"), [])
        self.assertEqual(
            scrape.label_sets("stickyproxy_backend_up"),
            [(("backend", "x"), ("pool", "q"))],
        )
        names = {m.name for m in REGISTRY.collect()}
        self.assertFalse([n for n in names if n.startswith("stickyproxy")], names)

    def test_proxy_service(self):
        """
        A real L{ProxyService} is what the resource reads: its pools'
        backends, and the traffic its stream publishes.
        """
        registry = StrategyRegistry.of([source_ip])
        config = load_config(
            {
                "frontend": [{"name": "l4", "listen": "tcp:0", "pool": "p"}],
                "pool": {"p": {"backend": [{"name": "a", "address": "127.0.0.1:1"}]}},
            },
            registry,
        )
        proxy = ProxyService(config, MemoryReactorClock(), registry)
        resource = MetricsResource(proxy)
        proxy.pools["p"].set_admin_state("a", AdminState.MAINT)
        proxy.events.connection_opened(opened())
        scrape = self.scrape(resource)
        self.assertEqual(
            scrape.value(
                "stickyproxy_backend_admin_state", pool="p", backend="a", state="maint"
            ),
            1.0,
        )
        self.assertEqual(
            scrape.value(
                "stickyproxy_tcp_connections_total", frontend="l4", backend="a"
            ),
            1.0,
        )


class AdminSiteTests(AdminTestCase):
    """
    C{/metrics} on the admin listener.
    """

    admin = {"token": TOKEN}

    def test_mounted(self):
        """
        The admin site serves the proxy's metrics at C{/metrics}, without
        the token (it is read-only), counting what the proxy's event stream
        publishes and showing its pools.
        """
        self.proxy.events.connection_opened(opened(frontend="db", pool="app"))
        code, headers, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200, body)
        scrape = Scrape(body.decode("utf-8"))
        self.assertEqual(
            scrape.value(
                "stickyproxy_tcp_connections_total", frontend="db", backend="a"
            ),
            1,
        )
        self.assertEqual(
            scrape.by_backend("stickyproxy_backend_weight", pool="app"),
            {"a": 1, "b": 2},
        )
        self.assertEqual(
            scrape.by_backend("stickyproxy_backend_up", pool="spare"), {"s": 1}
        )


class StateTests(MetricsTestCase):
    """
    The gauges read from the live pools at each scrape.
    """

    def test_backend_up(self):
        """
        C{stickyproxy_backend_up} is 1 while health lets a backend serve
        (up, or going down), and 0 otherwise.
        """
        up = "stickyproxy_backend_up"
        self.assertEqual(self.scrape().by_backend(up), {"a": 1, "b": 1})
        self.pool.set_health(self.pool["a"], Health.GOING_DOWN, "probe failed")
        self.pool.set_health(self.pool["b"], Health.DOWN, "probe failed")
        self.assertEqual(self.scrape().by_backend(up), {"a": 1, "b": 0})
        self.pool.set_health(self.pool["b"], Health.UP, "probe passed")
        self.assertEqual(self.scrape().by_backend(up), {"a": 1, "b": 1})

    def test_admin_state(self):
        """
        C{stickyproxy_backend_admin_state} has one series per state, 1 for
        the backend's current one.
        """

        def states(scrape, backend):
            return {
                state.value: scrape.value(
                    "stickyproxy_backend_admin_state",
                    pool="p",
                    backend=backend,
                    state=state.value,
                )
                for state in AdminState
            }

        scrape = self.scrape()
        self.assertEqual(states(scrape, "a"), {"ready": 1, "drain": 0, "maint": 0})
        self.pool.drain("b")
        scrape = self.scrape()
        self.assertEqual(states(scrape, "b"), {"ready": 0, "drain": 1, "maint": 0})
        self.assertEqual(states(scrape, "a"), {"ready": 1, "drain": 0, "maint": 0})

    def test_weight(self):
        """
        C{stickyproxy_backend_weight} is the backend's weight now.
        """
        self.pool.set_weight("a", 0)
        self.assertEqual(
            self.scrape().by_backend("stickyproxy_backend_weight"), {"a": 0, "b": 1}
        )

    def test_active_connections(self):
        """
        C{stickyproxy_backend_active_connections} is what the backend has
        open now.
        """
        self.pool["a"].active = 3
        self.assertEqual(
            self.scrape().by_backend("stickyproxy_backend_active_connections"),
            {"a": 3, "b": 0},
        )

    def test_sessions(self):
        """
        C{stickyproxy_backend_sessions} counts the sessions the pool says a
        backend holds: live bindings of a strategy, or its open connections
        when they are more.
        """
        self.pool.add_session_source(lambda name: {"a": 5}.get(name, 0))
        self.pool["b"].active = 2
        self.assertEqual(
            self.scrape().by_backend("stickyproxy_backend_sessions"), {"a": 5, "b": 2}
        )

    def test_pool_panic(self):
        """
        C{stickyproxy_pool_panic} is 1 while the pool ignores health.
        """
        self.assertEqual(self.scrape().value("stickyproxy_pool_panic", pool="p"), 0)
        self.pool.fail_open = True
        self.pool.set_health(self.pool["a"], Health.DOWN, "probe failed")
        self.pool.set_health(self.pool["b"], Health.DOWN, "probe failed")
        self.assertEqual(self.scrape().value("stickyproxy_pool_panic", pool="p"), 1)

    def test_backends_come_and_go(self):
        """
        A backend added at run time has its series from the next scrape on;
        a removed one has none, neither gauges nor counters, while the
        others' counters go on counting.
        """
        self.events.request_finished(finished_request(backend="a"))
        self.events.request_finished(finished_request(backend="b"))
        self.events.connection_opened(opened(backend="b"))
        self.events.connection_closed(closed(backend="b", bytes_in=5))
        self.events.probe_ran(ProbeRan("p", "b", False, "refused", 0.1))
        self.pool.add(make_backend("c"))
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        self.events.request_finished(finished_request(backend="a"))
        scrape = self.scrape()
        self.assertEqual(
            scrape.label_sets("stickyproxy_backend_up"),
            [(("backend", "a"), ("pool", "p")), (("backend", "c"), ("pool", "p"))],
        )
        for family in scrape.families.values():
            for sample in family.samples:
                self.assertNotEqual(sample.labels.get("backend"), "b", sample)
        self.assertEqual(
            scrape.value(
                "stickyproxy_requests_total", frontend="web", backend="a", code="200"
            ),
            2,
        )

    def test_backend_back_under_the_same_name(self):
        """
        A backend removed and added again under the same name (a deploy)
        counts afresh, in series a scrape sees.
        """
        self.events.request_finished(finished_request(backend="b"))
        self.events.probe_ran(ProbeRan("p", "b", False, "refused", 0.1))
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        self.pool.add(make_backend("b"))
        self.events.request_finished(finished_request(backend="b"))
        self.events.request_finished(finished_request(backend="b"))
        self.events.probe_ran(ProbeRan("p", "b", True, "ok", 0.1))
        scrape = self.scrape()
        self.assertEqual(
            scrape.value(
                "stickyproxy_requests_total", frontend="web", backend="b", code="200"
            ),
            2,
        )
        self.assertEqual(
            scrape.value("stickyproxy_probe_failures_total", pool="p", backend="b"), 0
        )

    def test_removed_backend_stays_gone(self):
        """
        A request or connection still open to a removed backend, which
        ends after the removal, brings none of its series back (they would
        stay for good, a counter restarting from zero); the frontend's own
        series still count it.  Added again, the backend counts afresh.
        """
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b")
        self.events.request_finished(finished_request(backend="b", bytes_out=5))
        self.events.connection_opened(opened(backend="b"))
        self.events.connection_closed(closed(backend="b", bytes_in=5))
        self.events.probe_ran(ProbeRan("p", "b", False, "refused", 0.1))
        scrape = self.scrape()
        for family in scrape.families.values():
            for sample in family.samples:
                self.assertNotEqual(sample.labels.get("backend"), "b", sample)
        self.assertEqual(
            scrape.value("stickyproxy_request_duration_seconds_count", frontend="web"),
            1,
        )
        self.pool.add(make_backend("b"))
        self.events.request_finished(finished_request(backend="b"))
        self.events.connection_closed(closed(backend="b", bytes_in=7))
        scrape = self.scrape()
        self.assertEqual(
            scrape.value(
                "stickyproxy_requests_total", frontend="web", backend="b", code="200"
            ),
            1,
        )
        self.assertEqual(
            scrape.value(
                "stickyproxy_tcp_bytes_total",
                frontend="l4",
                backend="b",
                direction="in",
            ),
            7,
        )

    def test_removal_keeps_same_name_elsewhere(self):
        """
        Removing a backend drops only its own pool's series: a backend of
        the same name in another pool keeps its counters.
        """
        self.proxy.pools["q"] = make_pool("a", name="q")
        self.proxy.pools["q"].observe(self.events.backend_changed)
        self.events.request_finished(finished_request(frontend="web", pool="p"))
        self.events.request_finished(finished_request(frontend="api", pool="q"))
        self.events.probe_ran(ProbeRan("q", "a", True, "ok", 0.1))
        self.pool.set_admin_state("a", AdminState.MAINT)
        self.pool.remove("a")
        scrape = self.scrape()
        name = "stickyproxy_requests_total"
        self.assertIsNone(scrape.value(name, frontend="web", backend="a", code="200"))
        self.assertEqual(scrape.value(name, frontend="api", backend="a", code="200"), 1)
        self.assertEqual(
            scrape.value(
                "stickyproxy_probe_duration_seconds_count", pool="q", backend="a"
            ),
            1,
        )

    def test_pools_read_live(self):
        """
        The pools are read from the proxy at each scrape: when a reload
        replaces them, the next scrape shows the new ones.
        """
        self.proxy.pools = {"new": make_pool("z", name="new")}
        self.assertEqual(
            self.scrape().label_sets("stickyproxy_backend_up"),
            [(("backend", "z"), ("pool", "new"))],
        )


class TrafficTests(MetricsTestCase):
    """
    The counters and histograms fed by the event stream.
    """

    def test_requests_total(self):
        """
        C{stickyproxy_requests_total} counts finished requests by frontend,
        backend and status code; one that no backend served, or that got
        no response, has an empty backend or code.
        """
        self.events.request_finished(finished_request(200))
        self.events.request_finished(finished_request(200))
        self.events.request_finished(finished_request(502, backend="b"))
        self.events.request_finished(
            finished_request(503, backend=None, persistence="none")
        )
        self.events.request_finished(finished_request(None, ended="abandoned"))
        scrape = self.scrape()
        name = "stickyproxy_requests_total"
        self.assertEqual(scrape.value(name, frontend="web", backend="a", code="200"), 2)
        self.assertEqual(scrape.value(name, frontend="web", backend="b", code="502"), 1)
        self.assertEqual(scrape.value(name, frontend="web", backend="", code="503"), 1)
        self.assertEqual(scrape.value(name, frontend="web", backend="a", code=""), 1)
        self.assertEqual(len(scrape.samples(name)), 4)

    def test_persistence_decisions(self):
        """
        C{stickyproxy_persistence_decisions_total} counts every request and
        connection given a backend, by strategy (empty when none knew the
        client) and outcome; requests never routed are not decisions.
        """
        self.events.request_finished(
            finished_request(strategy="cookie", persistence="hit")
        )
        self.events.request_finished(
            finished_request(strategy="cookie", persistence="hit")
        )
        self.events.request_finished(
            finished_request(strategy="cookie", persistence="invalid")
        )
        self.events.request_finished(finished_request(strategy=None, persistence="new"))
        self.events.request_finished(
            finished_request(503, backend=None, persistence="none")
        )
        self.events.connection_opened(
            opened(strategy="source-ip", persistence="redispatch")
        )
        scrape = self.scrape()
        name = "stickyproxy_persistence_decisions_total"
        self.assertEqual(
            sorted(
                (labels["frontend"], labels["strategy"], labels["outcome"], value)
                for labels, value in scrape.samples(name)
            ),
            [
                ("l4", "source-ip", "redispatch", 1),
                ("web", "", "new", 1),
                ("web", "cookie", "hit", 2),
                ("web", "cookie", "invalid", 1),
            ],
        )

    def test_request_duration(self):
        """
        C{stickyproxy_request_duration_seconds} is a histogram of request
        times per frontend; an upgraded request (a tunnel, timed to its
        end) is left out.
        """
        self.events.request_finished(finished_request(total_time=0.02))
        self.events.request_finished(finished_request(total_time=3.0, backend="b"))
        self.events.request_finished(finished_request(frontend="api", total_time=0.2))
        self.events.request_finished(
            finished_request(101, total_time=600.0, ended="upgraded")
        )
        scrape = self.scrape()
        name = "stickyproxy_request_duration_seconds"
        self.assertEqual(scrape.value(f"{name}_count", frontend="web"), 2)
        self.assertAlmostEqual(scrape.value(f"{name}_sum", frontend="web"), 3.02)
        self.assertEqual(scrape.value(f"{name}_bucket", frontend="web", le="0.025"), 1)
        self.assertEqual(scrape.value(f"{name}_bucket", frontend="web", le="5.0"), 2)
        self.assertEqual(scrape.value(f"{name}_count", frontend="api"), 1)
        # Counted as a request all the same.
        self.assertEqual(
            scrape.value(
                "stickyproxy_requests_total", frontend="web", backend="a", code="101"
            ),
            1,
        )

    def test_http_bytes(self):
        """
        C{stickyproxy_http_bytes_total} adds up body bytes each way, per
        frontend and backend.
        """
        self.events.request_finished(finished_request(bytes_in=10, bytes_out=100))
        self.events.request_finished(finished_request(404, bytes_out=50))
        scrape = self.scrape()
        name = "stickyproxy_http_bytes_total"
        self.assertEqual(
            scrape.value(name, frontend="web", backend="a", direction="in"), 10
        )
        self.assertEqual(
            scrape.value(name, frontend="web", backend="a", direction="out"), 150
        )

    def test_tcp_connections(self):
        """
        C{stickyproxy_tcp_connections_total} counts L4 connections spliced
        to each backend, and C{stickyproxy_tcp_bytes_total} the bytes each
        way of those closed.
        """
        for backend in ("a", "a", "b"):
            self.events.connection_opened(opened(backend))
        self.events.connection_closed(closed("a", bytes_in=7, bytes_out=70))
        self.events.connection_closed(closed("a", bytes_in=3, bytes_out=30))
        scrape = self.scrape()
        connections = "stickyproxy_tcp_connections_total"
        self.assertEqual(scrape.value(connections, frontend="l4", backend="a"), 2)
        self.assertEqual(scrape.value(connections, frontend="l4", backend="b"), 1)
        name = "stickyproxy_tcp_bytes_total"
        self.assertEqual(
            scrape.value(name, frontend="l4", backend="a", direction="in"), 10
        )
        self.assertEqual(
            scrape.value(name, frontend="l4", backend="a", direction="out"), 100
        )
        self.assertEqual(
            scrape.value(name, frontend="l4", backend="b", direction="in"), 0
        )

    def test_probes(self):
        """
        C{stickyproxy_probe_duration_seconds} is a histogram of each
        backend's probe times, and C{stickyproxy_probe_failures_total}
        counts its failed probes (0 until one fails).
        """
        self.events.probe_ran(ProbeRan("p", "a", True, "HTTP 200", 0.003))
        self.events.probe_ran(ProbeRan("p", "a", False, "HTTP 500", 0.2))
        self.events.probe_ran(ProbeRan("p", "b", True, "HTTP 200", 0.004))
        scrape = self.scrape()
        name = "stickyproxy_probe_duration_seconds"
        self.assertEqual(scrape.value(f"{name}_count", pool="p", backend="a"), 2)
        self.assertAlmostEqual(
            scrape.value(f"{name}_sum", pool="p", backend="a"), 0.203
        )
        self.assertEqual(
            scrape.value(f"{name}_bucket", pool="p", backend="a", le="0.005"), 1
        )
        failures = "stickyproxy_probe_failures_total"
        self.assertEqual(scrape.value(failures, pool="p", backend="a"), 1)
        self.assertEqual(scrape.value(failures, pool="p", backend="b"), 0)
