"""
Tests for the control channel between the parent and its workers
(L{stickyproxy.workers._control}): real L{ProxyService}s on memory
reactors, their two ends connected through L{iosim}, no processes.
"""

from __future__ import annotations

import socket
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from zope.interface import implementer

from treq.testing import StubTreq
from twisted.internet.interfaces import IUNIXTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import amp
from twisted.test.iosim import IOPump, connect, makeFakeClient, makeFakeServer

from stickyproxy import AdminState, load_config
from stickyproxy.admin import AdminRoot, TrafficCounter
from stickyproxy.core._adminsync import PEER
from stickyproxy.interfaces import IPassiveHealth
from stickyproxy.metrics import MetricsResource
from stickyproxy.metrics._merge import counters_from_json, counters_json, merge
from stickyproxy.model import ConnectionOpened, Health
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ProxyService, Role
from stickyproxy.workers import parent_control, worker_control
from stickyproxy.workers._control import (
    LOAD_INTERVAL,
    KeepBackends,
    ParentControl,
    WorkerControl,
    _PassiveToParent,
)

from tests._base import TestCase, finished_request
from tests.test_metrics import Scrape
from tests.test_workers import PortReactor

REGISTRY = StrategyRegistry.of([source_ip])


def config_data() -> dict[str, Any]:
    """
    One TCP frontend on a pool of two backends, checked passively only,
    and an admin listener (where the parent serves C{/metrics}).
    """
    return {
        "admin": {"listen": "tcp:8081"},
        "frontend": [
            {
                "name": "l4",
                "listen": "tcp:7000",
                "pool": "app",
                "persistence": {"strategy": "source-ip"},
            }
        ],
        "pool": {
            "app": {
                "backend": [
                    {"name": "a", "address": "127.0.0.1:9001"},
                    {"name": "b", "address": "127.0.0.1:9002"},
                ],
                "health": {"passive_fall": 2},
            },
        },
    }


def proxy(reactor: MemoryReactorClock) -> ProxyService:
    return ProxyService(load_config(config_data(), REGISTRY), reactor, REGISTRY)


class Worker:
    """
    A worker's service, connected to the parent's through a channel.
    """

    def __init__(self, parent: ProxyService, worker_id: int) -> None:
        self.reactor = MemoryReactorClock()
        self.service = proxy(self.reactor)
        self.channel = worker_control(self.service)
        self.parent_end = parent_control(parent, worker_id)
        self.pump: IOPump = connect(
            self.parent_end,
            makeFakeServer(self.parent_end),
            self.channel,
            makeFakeClient(self.channel),
        )

    @property
    def pool(self) -> Any:
        return self.service.pools["app"]

    def tick(self) -> None:
        """
        One load interval passes for the worker; what it sent arrives.
        """
        self.reactor.advance(LOAD_INTERVAL)
        self.pump.flush()

    def stop(self) -> None:
        """
        The worker goes away (its channel is closed).
        """
        self.pump.clientIO.loseConnection()
        self.pump.flush()


class ChannelTestCase(TestCase):
    """
    A parent's service, and workers connected to it on demand.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.parent = proxy(self.reactor)
        self.pool = self.parent.pools["app"]

    def worker(self, worker_id: int = 1) -> Worker:
        worker = Worker(self.parent, worker_id)
        worker.pump.flush()
        return worker

    def flush(self, *workers: Worker) -> None:
        for worker in workers:
            worker.pump.flush()


class ControlTests(ChannelTestCase):
    def test_factories(self) -> None:
        """
        The two factories make the two ends' AMP protocols, and a worker's
        pools report passive health through an L{IPassiveHealth}.
        """
        self.assertIsInstance(parent_control(self.parent, 1), ParentControl)
        self.assertIsInstance(parent_control(self.parent, 1), amp.AMP)
        self.assertIsInstance(worker_control(self.parent), WorkerControl)
        worker = self.worker()
        self.assertIsInstance(worker.pool.passive, _PassiveToParent)
        self.assertProvides(IPassiveHealth, worker.pool.passive)

    def test_admin_changes_reach_every_worker(self) -> None:
        """
        Maint, ready and weight changes made in the parent apply in every
        worker.
        """
        one, two = self.worker(1), self.worker(2)
        self.pool.set_admin_state("a", AdminState.MAINT)
        self.pool.set_weight("b", 7)
        self.flush(one, two)
        for worker in (one, two):
            self.assertIs(worker.pool["a"].admin_state, AdminState.MAINT)
            self.assertEqual(worker.pool["b"].weight, 7)
        self.pool.set_admin_state("a", AdminState.READY)
        self.flush(one, two)
        for worker in (one, two):
            self.assertIs(worker.pool["a"].admin_state, AdminState.READY)

    def test_other_proxies_changes_reach_every_worker(self) -> None:
        """
        Changes the parent applies from another proxy (through the store)
        reach every worker too: the workers follow the parent alone.
        """
        one, two = self.worker(1), self.worker(2)
        self.pool.drain("a", None, f"{PEER} other-proxy: drain")
        self.pool.set_weight("b", 7, f"{PEER} other-proxy")
        self.flush(one, two)
        for worker in (one, two):
            self.assertIs(worker.pool["a"].admin_state, AdminState.DRAIN)
            self.assertEqual(worker.pool["b"].weight, 7)

    def test_drain_ends_in_the_parent(self) -> None:
        """
        A drain with a deadline drains the backend in the workers, which do
        not end it themselves (each sees only its own sessions): at the
        deadline, the parent's maint reaches them.
        """
        one = self.worker(1)
        one.pool.add_session_source(lambda name: 1)
        one.tick()
        self.pool.drain("a", 30.0)
        self.flush(one)
        self.assertIs(one.pool["a"].admin_state, AdminState.DRAIN)
        self.assertIsNone(one.pool.drain_deadline("a"))
        one.reactor.advance(60)
        self.assertIs(one.pool["a"].admin_state, AdminState.DRAIN)
        self.reactor.advance(30)
        self.flush(one)
        self.assertIs(self.pool["a"].admin_state, AdminState.MAINT)
        self.assertIs(one.pool["a"].admin_state, AdminState.MAINT)

    def test_sessions_are_summed(self) -> None:
        """
        The parent's pools count the sessions and connections its workers
        hold; a worker that leaves takes its count with it.
        """
        one, two = self.worker(1), self.worker(2)
        one.pool.add_session_source(lambda name: 3 if name == "a" else 0)
        two.pool.add_session_source(lambda name: 4 if name == "a" else 0)
        two.pool["a"].active = 2
        one.tick()
        two.tick()
        self.assertEqual(self.pool.sessions("a"), 7)
        self.assertEqual(self.pool["a"].active, 2)
        self.assertEqual(self.pool.sessions("b"), 0)
        two.stop()
        self.assertEqual(self.pool.sessions("a"), 3)
        self.assertEqual(self.pool["a"].active, 0)

    def test_shared_counts_are_not_summed(self) -> None:
        """
        With a shared store each worker's count is already the count of
        every proxy: the parent shows the freshest (the largest), not N
        times it.
        """
        self.parent.store = cast(Any, object())  # only its presence matters
        one, two = self.worker(1), self.worker(2)
        one.pool.add_session_source(lambda name: 5 if name == "a" else 0)
        two.pool.add_session_source(lambda name: 6 if name == "a" else 0)
        one.tick()
        two.tick()
        self.assertEqual(self.pool.sessions("a"), 6)

    def test_drain_to_maint_on_the_workers_sessions(self) -> None:
        """
        A drain with a deadline ends in maint once no worker holds a
        session on the backend any more.
        """
        held = {"a": 2}
        one = self.worker(1)
        one.pool.add_session_source(lambda name: held.get(name, 0))
        one.tick()
        self.pool.drain("a", 600.0)
        self.reactor.advance(5)
        self.assertIs(self.pool["a"].admin_state, AdminState.DRAIN)
        held["a"] = 0
        one.tick()
        self.reactor.advance(1)
        self.assertIs(self.pool["a"].admin_state, AdminState.MAINT)

    def test_newcomer_receives_everything(self) -> None:
        """
        A worker that (re)starts receives every backend's current state:
        admin state, drain, weight and health, the backends added at run
        time, and loses those removed at run time; then it is told it has
        it all.
        """
        self.pool.drain("a")
        self.pool.set_weight("a", 3)
        self.pool.set_health(self.pool["a"], Health.DOWN, "probe failed")
        added = self.parent.new_backend("app", {"name": "c", "address": "10.0.0.3:80"})
        self.pool.add(added, "admin API")
        self.pool.set_admin_state("b", AdminState.MAINT)
        self.pool.remove("b", "admin API")
        worker = self.worker()
        self.successResultOf(worker.channel.synced)
        a = worker.pool["a"]
        self.assertEqual((a.admin_state, a.weight), (AdminState.DRAIN, 3))
        self.assertIs(a.health, Health.DOWN)
        self.assertEqual([b.name for b in worker.pool.backends], ["a", "c"])
        self.assertEqual(worker.pool["c"].address, "10.0.0.3:80")

    def test_health_from_the_parent(self) -> None:
        """
        A backend the parent's checks take down (or bring up) is so in
        every worker.
        """
        one, two = self.worker(1), self.worker(2)
        self.pool.set_health(self.pool["a"], Health.DOWN, "probe failed")
        self.flush(one, two)
        for worker in (one, two):
            self.assertIs(worker.pool["a"].health, Health.DOWN)
            self.assertEqual(worker.pool.accepting_new(), [worker.pool["b"]])
        self.pool.set_health(self.pool["a"], Health.UP, "probe passed")
        self.flush(one, two)
        self.assertIs(one.pool["a"].health, Health.UP)

    def test_backends_added_and_removed_at_run_time(self) -> None:
        """
        A backend added through the parent's API is added in every worker,
        with its address, weight and route; one removed is removed.  A
        reload's are not sent: the workers reload too.
        """
        one = self.worker(1)
        table = {"name": "c", "address": "10.0.0.3:80", "weight": 4, "route": "r"}
        self.pool.add(self.parent.new_backend("app", table), "admin API")
        self.flush(one)
        c = one.pool["c"]
        self.assertEqual((c.address, c.weight, c.route), ("10.0.0.3:80", 4, "r"))
        self.pool.remove("c", "admin API")
        self.flush(one)
        self.assertIsNone(one.pool.get("c"))
        reloaded = self.parent.new_backend("app", {"name": "d", "address": "x:1"})
        self.pool.add(reloaded, "reload")
        self.flush(one)
        self.assertIsNone(one.pool.get("d"))

    def test_worker_reload_after_the_parent(self) -> None:
        """
        A worker that reloads after the parent (C{SIGHUP} is passed on
        once the parent's reload is done) gets the states of the backends
        the reload added, which it did not have when the parent sent them.
        """
        one = self.worker(1)
        data = config_data()
        data["pool"]["app"]["backend"].append({"name": "c", "address": "x:1"})
        config = load_config(data, REGISTRY)
        self.parent.reload(config)
        self.pool.set_health(self.pool["c"], Health.DOWN, "init_state")
        self.flush(one)
        self.assertIsNone(one.pool.get("c"))
        one.service.reload(config)
        one.tick()
        self.assertIs(one.pool["c"].health, Health.DOWN)

    def test_passive_failures_reach_the_parent(self) -> None:
        """
        Failed connects seen by workers are counted by the parent's
        monitor, whose verdict every worker follows.
        """
        one, two = self.worker(1), self.worker(2)
        one.pool.report_connect_failure(one.pool["a"], "refused")
        self.flush(one)
        self.assertIs(self.pool["a"].health, Health.UP)
        two.pool.report_connect_failure(two.pool["a"], "refused")
        self.flush(two, one)
        self.assertIs(self.pool["a"].health, Health.DOWN)
        self.assertIs(one.pool["a"].health, Health.DOWN)
        self.assertIs(two.pool["a"].health, Health.DOWN)

    def test_passive_panic_in_every_worker(self) -> None:
        """
        When passive checks alone took every backend down, the workers try
        them anyway, as the parent would (C{passive_panic}): they know the
        backends are down by passive checks alone.
        """
        one, two = self.worker(1), self.worker(2)
        for name in ("a", "b"):
            for _ in range(2):
                one.pool.report_connect_failure(one.pool[name], "refused")
        self.flush(one, two)
        self.assertTrue(self.pool.panic)
        for worker in (one, two):
            self.assertIs(worker.pool["a"].health, Health.DOWN)
            self.assertTrue(worker.pool.panic)
            self.assertEqual(len(worker.pool.accepting_new()), 2)

    def test_passive_mark_without_a_health_change(self) -> None:
        """
        A backend already down that passive checks mark (or whose mark a
        probe's verdict clears) changes no health, yet the workers learn
        it: they try it in a passive panic exactly when the parent would.
        """
        one = self.worker(1)
        a = self.pool["a"]
        self.pool.set_health(a, Health.DOWN, "probe failed")
        self.pool.set_health(a, Health.DOWN, "refused", passive=True)
        self.flush(one)
        self.assertTrue(one.pool.passive_down(one.pool["a"]))
        self.pool.set_health(a, Health.DOWN, "probe failed")
        self.flush(one)
        self.assertFalse(self.pool.passive_down(a))
        self.assertFalse(one.pool.passive_down(one.pool["a"]))

    def test_slow_start_in_every_worker(self) -> None:
        """
        A backend coming back with C{slow_start} ramps its weight in every
        worker as in the parent, whose monitor runs the ramp; a worker
        that starts meanwhile starts where the ramp is.
        """
        data = config_data()
        data["pool"]["app"]["health"].update(slow_start=10, passive_cooldown=5)
        config = load_config(data, REGISTRY)
        self.parent = ProxyService(config, self.reactor, REGISTRY)
        self.parent.startService()
        self.addCleanup(self.parent.stopService)
        self.pool = self.parent.pools["app"]
        one = self.worker(1)
        for _ in range(2):
            one.pool.report_connect_failure(one.pool["a"], "refused")
        self.flush(one)
        self.assertIs(one.pool["a"].health, Health.DOWN)
        self.reactor.advance(5)  # the cooldown: back up, slowly
        self.flush(one)
        self.assertIs(one.pool["a"].health, Health.UP)
        self.assertEqual(one.pool["a"].ramp, 0.01)
        self.reactor.advance(5)
        two = self.worker(2)
        self.flush(one)
        self.assertEqual(self.pool["a"].ramp, 0.5)
        self.assertEqual(one.pool["a"].ramp, 0.5)
        self.assertEqual(two.pool["a"].ramp, 0.5)
        self.reactor.advance(5)
        self.flush(one, two)
        self.assertEqual(one.pool["a"].ramp, 1.0)
        self.assertEqual(two.pool["a"].ramp, 1.0)

    def test_good_signals_sent_when_they_count(self) -> None:
        """
        A successful connect is sent only after a failure the worker sent
        (it resets the parent's count) or while the backend is down, not
        for every request.
        """
        one = self.worker(1)
        sent: list[str] = []
        original = one.channel.send

        def spy(command: type[amp.Command], **arguments: object) -> None:
            sent.append(command.__name__)
            original(command, **arguments)

        one.channel.send = spy  # type: ignore[method-assign]
        backend = one.pool["a"]
        one.pool.report_connect_success(backend)
        one.pool.report_connect_failure(backend, "refused")
        one.pool.report_connect_success(backend)
        one.pool.report_connect_success(backend)
        self.assertEqual(sent, ["ConnectFailed", "ConnectSucceeded"])
        self.flush(one)
        # The success reset the parent's count: one more failure is not two.
        one.pool.report_connect_failure(backend, "refused")
        self.flush(one)
        self.assertIs(self.pool["a"].health, Health.UP)


class MetricsTests(ChannelTestCase):
    """
    The parent's C{/metrics} shows the workers' counters summed.
    """

    def setUp(self) -> None:
        super().setUp()
        self.resource = MetricsResource(self.parent)
        self.stub = StubTreq(self.resource)

    def scrape(self, *workers: Worker) -> Scrape:
        getting = self.stub.get("http://admin.invalid/metrics")
        self.flush(*workers)
        self.stub.flush()
        response = self.successResultOf(getting)
        self.assertEqual(response.code, 200)
        return Scrape(self.successResultOf(self.stub.content(response)).decode())

    def requests(self, worker: Worker, count: int, status: int = 200) -> None:
        for _ in range(count):
            worker.service.events.request_finished(
                finished_request(status=status, pool="app", frontend="web")
            )

    def test_counters_summed(self) -> None:
        """
        Each counter and histogram sample is the sum of the workers'; the
        parent's gauges appear once.
        """
        one, two = self.worker(1), self.worker(2)
        self.requests(one, 2)
        self.requests(two, 3)
        self.requests(two, 1, status=502)
        scrape = self.scrape(one, two)
        total = "stickyproxy_requests_total"
        self.assertEqual(
            scrape.value(total, frontend="web", backend="a", code="200"), 5
        )
        self.assertEqual(
            scrape.value(total, frontend="web", backend="a", code="502"), 1
        )
        self.assertEqual(
            scrape.value("stickyproxy_request_duration_seconds_count", frontend="web"),
            6,
        )
        self.assertEqual(
            scrape.by_backend("stickyproxy_backend_up", pool="app"), {"a": 1, "b": 1}
        )

    def test_no_admin_no_counting(self) -> None:
        """
        Without an admin listener in the configuration, a worker counts
        nothing (its requests publish no event at all), until a reload
        brings one.
        """
        data = config_data()
        del data["admin"]
        service = ProxyService(load_config(data, REGISTRY), self.reactor, REGISTRY)
        channel = worker_control(service)
        channel.makeConnection(StringTransport())
        self.assertFalse(service.events.active)
        service.reload(load_config(config_data(), REGISTRY))
        self.reactor.advance(LOAD_INTERVAL)
        service.events.request_finished(finished_request(pool="app"))
        families = counters_from_json(channel.collect()["families"])
        counted = [
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "stickyproxy_requests_total"
        ]
        self.assertEqual(counted, [1.0])

    def test_successor_before_the_loss(self) -> None:
        """
        A worker's successor (the same id) that connects before its
        predecessor's channel is seen lost takes nothing from the sums.
        """
        first = self.worker(1)
        self.requests(first, 2)
        self.scrape(first)
        successor = self.worker(1)
        first.stop()
        self.requests(successor, 1)
        scrape = self.scrape(successor)
        self.assertEqual(
            scrape.value(
                "stickyproxy_requests_total", frontend="web", backend="a", code="200"
            ),
            3,
        )

    def test_departed_workers_still_count(self) -> None:
        """
        The counters of a worker gone stay in the sums, so they never go
        back; its successor's add to them.
        """
        one, two = self.worker(1), self.worker(2)
        self.requests(one, 2)
        self.requests(two, 3)
        self.scrape(one, two)
        two.stop()
        again = self.worker(2)
        self.requests(again, 1)
        scrape = self.scrape(one, again)
        self.assertEqual(
            scrape.value(
                "stickyproxy_requests_total", frontend="web", backend="a", code="200"
            ),
            6,
        )


class TrafficTests(ChannelTestCase):
    """
    The parent's admin API (which the dashboard reads, and computes its
    rates from) shows the traffic its workers served.
    """

    def setUp(self) -> None:
        super().setUp()
        self.stub = StubTreq(AdminRoot(self.parent))

    def get(self, path: str) -> Any:
        getting = self.stub.get(f"http://admin.invalid{path}")
        self.stub.flush()
        response = self.successResultOf(getting)
        self.assertEqual(response.code, 200)
        return self.successResultOf(self.stub.json_content(response))

    def serve(self, worker: Worker, count: int, **fields: Any) -> None:
        for _ in range(count):
            worker.service.events.request_finished(
                finished_request(pool="app", frontend="l4", **fields)
            )

    def test_backend_totals_of_every_worker(self) -> None:
        """
        Each backend's totals are the sums of what every worker served:
        requests, errors and persistence outcomes; a worker gone keeps its
        share, and requests that got no backend are counted per pool.
        """
        one, two = self.worker(1), self.worker(2)
        self.serve(one, 2)
        self.serve(two, 3, persistence="hit")
        self.serve(two, 1, status=502)
        self.serve(one, 1, backend=None, ended="no-backend")
        one.tick()
        two.tick()
        two.stop()
        again = self.worker(2)
        self.serve(again, 1, backend="b")
        again.tick()
        traffic = self.get("/api/pools/app/backends/a")["traffic"]
        self.assertEqual((traffic["requests"], traffic["errors"]), (6, 1))
        self.assertEqual(traffic["outcomes"]["hit"], 3)
        self.assertEqual(traffic["outcomes"]["new"], 3)
        self.assertEqual(
            self.get("/api/pools/app/backends/b")["traffic"]["requests"], 1
        )
        self.assertEqual(self.get("/api/pools/app")["no_backend"], 1)

    def test_connections_and_nothing_twice(self) -> None:
        """
        L4 connections count too, and a worker sends each of its counts
        once: what it served before a tick is not added again at the next.
        """
        one = self.worker(1)
        one.service.events.connection_opened(
            ConnectionOpened("l4", "app", "a", "192.0.2.1", "new", None)
        )
        one.tick()
        one.tick()
        traffic = self.get("/api/pools/app/backends/a")["traffic"]
        self.assertEqual(traffic["connections"], 1)

    def test_bad_totals(self) -> None:
        """
        Totals not shaped as a counter's are refused, and nothing is added.
        """
        counter = TrafficCounter()
        for bad in ({}, {"backends": [["app", "a", {}]], "no_backend": {}}, [1]):
            self.assertRaises(ValueError, counter.add_json, bad)
        self.assertIsNone(counter.take())


@implementer(IUNIXTransport)
class DescriptorTransport(StringTransport):
    """
    A transport that keeps what is written and the descriptors sent, as a
    UNIX socket sends them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.descriptors: list[int] = []

    def sendFileDescriptor(self, descriptor: int) -> None:
        self.descriptors.append(descriptor)


class ListenerTests(TestCase):
    """
    A reload of the parent that adds or moves a frontend hands its socket
    to every worker.
    """

    def setUp(self) -> None:
        self.reactor = PortReactor()
        self.parent = ProxyService(
            load_config(config_data(), REGISTRY),
            self.reactor,
            REGISTRY,
            role=Role.PARENT,
        )
        self.parent.bind()

    def connect(self, worker_id: int) -> DescriptorTransport:
        transport = DescriptorTransport()
        parent_control(self.parent, worker_id).makeConnection(transport)
        transport.clear()
        return transport

    def test_reload_hands_sockets_then_reloads_workers(self) -> None:
        """
        The parent's reload opens the new frontend's socket, and sends it
        to each worker before having it reload: the worker's reload serves
        the new frontend on it.  A worker connected since inherited it at
        start: it is not sent again.
        """
        data = config_data()
        data["frontend"].append(
            dict(data["frontend"][0], name="new", listen="tcp:7001")
        )
        config = load_config(data, REGISTRY)
        sent = self.connect(1)
        inherited = socket.socket().detach()
        reactor = PortReactor()
        worker = ProxyService(
            load_config(config_data(), REGISTRY),
            reactor,
            REGISTRY,
            role=Role.WORKER,
            sockets={"l4": inherited},
        )
        worker.bind()
        worker.config_source = lambda: config
        channel = worker_control(worker)
        channel.makeConnection(StringTransport())
        self.parent.reload(config)
        self.assertEqual(sent.descriptors, [7001])
        received = socket.socket().detach()  # its copy, in the worker
        channel.fileDescriptorReceived(received)
        channel.dataReceived(sent.value())
        self.assertEqual(list(worker.listeners), ["l4", "new"])
        self.assertEqual(reactor.adoptedPorts[-1][0], received)
        later = self.connect(2)
        self.parent.reload(config)
        self.assertEqual(later.descriptors, [])
        self.assertEqual(sent.descriptors, [7001])

    def test_moved_frontend(self) -> None:
        """
        A frontend moved to a new address is handed again, under its name.
        """
        sent = self.connect(1)
        data = config_data()
        data["frontend"][0]["listen"] = "tcp:7005"
        self.parent.reload(load_config(data, REGISTRY))
        self.assertEqual(sent.descriptors, [7005])


class MergeTests(TestCase):
    def test_merge(self) -> None:
        """
        Samples of counters and histograms with the same name and labels
        add up; a gauge is the first group's; C{_created} is not summed.
        """
        one, two = CollectorRegistry(), CollectorRegistry()
        for registry, count in ((one, 1), (two, 2)):
            Counter("c", "", ["x"], registry=registry).labels("1").inc(count)
            Histogram("h", "", registry=registry, buckets=[1]).observe(0.75 * count)
            Gauge("g", "", registry=registry).set(count)
        merged = merge(one.collect(), counters_from_json(counters_json(two)))
        samples = {
            (s.name, tuple(s.labels.items())): s.value
            for family in merged
            for s in family.samples
        }
        self.assertEqual(samples["c_total", (("x", "1"),)], 3)
        self.assertEqual(samples["h_bucket", (("le", "1.0"),)], 1)
        self.assertEqual(samples["h_bucket", (("le", "+Inf"),)], 2)
        self.assertEqual(samples["h_sum", ()], 2.25)
        self.assertEqual(samples["g", ()], 1)
        created = [c for f in one.collect() for c in f.samples if c.name == "c_created"]
        self.assertEqual(samples["c_created", (("x", "1"),)], created[0].value)

    def test_bad_json(self) -> None:
        """
        What is not a list of families is a L{ValueError}.
        """
        for bad in ([1], [["c", "counter", "", [["c_total", "x", 1]]]], None):
            self.assertRaises(ValueError, counters_from_json, bad)

    def test_large_values(self) -> None:
        """
        A JSON argument larger than AMP's 64 KiB limit on one value travels
        in several keys, each within the limit, and comes back whole.
        """
        names = [f"backend-{n:06d}" for n in range(10000)]
        box = KeepBackends.makeArguments({"pool": "app", "backends": names}, None)
        self.assertGreater(len(box), 2)
        self.assertTrue(
            all(len(value) <= amp.MAX_VALUE_LENGTH for value in box.values())
        )
        parsed = KeepBackends.parseArguments(box, None)
        self.assertEqual(parsed, {"pool": "app", "backends": names})
