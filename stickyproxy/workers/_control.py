"""
The control channel between the parent process and each worker: AMP
(L{twisted.protocols.amp}) over the pipe the process model gives a worker.

The parent owns the admin state, the health checks and the admin listener;
the workers serve the traffic.  So the parent tells every worker each
backend's admin state (ready, drain, maint, weight) and health, the
backends added or removed through its admin API, and, when it reloads,
the listening sockets of frontends the reload added or moved, then to
reload; a worker that (re)starts first receives all of it.  A worker
tells the parent what only it sees: passive health signals, how many
sessions and connections it holds, the traffic it served, and (when the
parent's C{/metrics} is scraped) its counters.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping
from functools import partial
from typing import Any, cast

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from zope.interface import implementer

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from stickyproxy.admin._traffic import TrafficCounter
from stickyproxy.config._load import ProxyConfig
from stickyproxy.config._options import ConfigError
from stickyproxy.core._adminsync import PEER, AdminSync, admin_record
from stickyproxy.core._events import IgnoreEvents
from stickyproxy.core._pool import Pool
from stickyproxy.interfaces import IPassiveHealth
from stickyproxy.metrics import TrafficMetrics
from stickyproxy.metrics._merge import counters_from_json, counters_json, merge
from stickyproxy.model import AdminRecord, AdminState, Backend, Health, StateChange
from stickyproxy.service import ProxyService

#: How often (seconds) a worker tells the parent its session counts, when
#: they changed.
LOAD_INTERVAL = 1.0

#: Where the workers' changes come from, as the parent's logs say it.
PARENT = "parent"


class _JSON(amp.Argument):
    """
    A JSON value of any size: AMP limits a value to 64 KiB, so the text is
    cut into as many keys as it needs (C{name}, C{name.1}, C{name.2} ...).
    """

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: amp.AMP,
    ) -> None:
        data = json.dumps(objects.pop(name.decode("ascii"))).encode("utf-8")
        size = amp.MAX_VALUE_LENGTH
        for index, start in enumerate(range(0, len(data), size)):
            key = name if index == 0 else b"%s.%d" % (name, index)
            strings[key] = data[start : start + size]

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: amp.AMP,
    ) -> None:
        parts = [strings.pop(name)]
        while (key := b"%s.%d" % (name, len(parts))) in strings:
            parts.append(strings.pop(key))
        objects[name.decode("ascii")] = json.loads(b"".join(parts))


#: The arguments that name a backend.
_BACKEND: list[tuple[bytes, amp.Argument]] = [
    (b"pool", amp.Unicode()),
    (b"backend", amp.Unicode()),
]


# Parent to worker


class SetAdmin(amp.Command):
    """
    A backend's admin state (an L{AdminRecord}): the worker's matches it.
    """

    arguments = [
        *_BACKEND,
        (b"admin_state", amp.Unicode()),
        (b"weight", amp.Integer()),
        (b"drain_deadline", amp.Float(optional=True)),
    ]
    response = [(b"applied", amp.Boolean())]


class SetHealth(amp.Command):
    """
    A backend's health, as the parent's checks found it, whether passive
    checks alone took it down (so that a worker tries it anyway when every
    backend is so, as the parent does: C{passive_panic}), and the share of
    its weight it gets (less than 1 during a slow start, which the
    parent's monitor runs).
    """

    arguments = [
        *_BACKEND,
        (b"health", amp.Unicode()),
        (b"reason", amp.Unicode()),
        (b"passive", amp.Boolean()),
        (b"ramp", amp.Float()),
    ]
    response = [(b"applied", amp.Boolean())]


class AddBackend(amp.Command):
    """
    A backend added to a pool at run time: its table, as a config file's
    C{[[pool.NAME.backend]]} (what L{ProxyService.new_backend} reads), and
    its health.
    """

    arguments = [
        (b"pool", amp.Unicode()),
        (b"table", _JSON()),
        (b"health", amp.Unicode()),
    ]
    response = [(b"applied", amp.Boolean())]


class RemoveBackend(amp.Command):
    """
    A backend removed from a pool at run time.
    """

    arguments = _BACKEND
    response = [(b"applied", amp.Boolean())]


class Listen(amp.Command):
    """
    A listening socket the parent opened since the worker started (a
    reload added or moved the frontend): the worker's own reload, which
    follows, serves on it.
    """

    arguments = [(b"frontend", amp.Unicode()), (b"socket", amp.Descriptor())]
    requiresAnswer = False


class Reload(amp.Command):
    """
    The parent reloaded its configuration: the worker reloads the same
    file (after every L{Listen} that the reload needs, sent before on the
    same channel).
    """

    requiresAnswer = False


class Collect(amp.Command):
    """
    The worker's counters and histograms (see L{counters_json}), for the
    parent's C{/metrics}.
    """

    response = [(b"families", _JSON())]


class KeepBackends(amp.Command):
    """
    The backends a pool has in the parent: a worker that (re)starts removes
    the others (removed at run time before it started).
    """

    arguments = [(b"pool", amp.Unicode()), (b"backends", _JSON())]
    response = [(b"removed", amp.Integer())]


# Worker to parent


class ConnectFailed(amp.Command):
    """
    Passive health: a worker's connect to a backend failed.
    """

    arguments = [
        *_BACKEND,
        (b"reason", amp.Unicode()),
    ]
    requiresAnswer = False


class ConnectSucceeded(amp.Command):
    """
    Passive health: a worker's connect to a backend worked.
    """

    arguments = _BACKEND
    requiresAnswer = False


class ResponseStatus(amp.Command):
    """
    Passive health: a backend answered a worker's request with C{status}.
    """

    arguments = [
        *_BACKEND,
        (b"status", amp.Integer()),
    ]
    requiresAnswer = False


class Synced(amp.Command):
    """
    The parent sent the worker that just connected everything it follows:
    it may serve.
    """

    requiresAnswer = False


class Resync(amp.Command):
    """
    The worker reloaded its configuration: the parent sends every
    backend's admin state and health again.
    """

    requiresAnswer = False


class Load(amp.Command):
    """
    What a worker holds of each backend: C{[[pool, backend, active,
    sessions], ...]}; and the traffic it served since its last C{Load}
    (what L{TrafficCounter.take} gives, or C{None}), for the parent's
    admin API and dashboard.
    """

    arguments = [(b"backends", _JSON()), (b"traffic", _JSON())]
    requiresAnswer = False


#: The changes of a backend that L{SetHealth} carries.
_HEALTH_KINDS = frozenset({"health", "passive", "ramp"})


def _log_failure(failure: Failure, log: Logger, what: str) -> None:
    """
    Log a command that failed, unless the other side went away (the
    process model logs that, and restarts the worker).
    """
    if not failure.check(ConnectionClosed, amp.ProtocolSwitched):
        log.failure("control channel: {what}", failure, what=what)


def _send(
    protocol: amp.AMP, log: Logger, command: type[amp.Command], **arguments: object
) -> None:
    """
    Send a command whose answer nobody waits for; log a failure.
    """
    if protocol.transport is None or protocol.boxSender is None:
        return
    sent: Deferred[object] | None = protocol.callRemote(command, **arguments)
    if sent is not None:
        sent.addErrback(_log_failure, log, command.__name__)


def backend_table(backend: Backend) -> dict[str, object]:
    """
    :returns: a backend as a C{[[pool.NAME.backend]]} table.
    """
    return {
        "name": backend.name,
        "address": backend.address,
        "weight": backend.weight,
        "route": backend.route,
        "admin_state": backend.admin_state.value,
    }


# The parent's end


@attrs.define(eq=False)
class _Workers(IgnoreEvents):
    """
    What the parent's channels share: the workers connected now, what each
    holds and counted, and the one subscription to the parent's event
    stream that sends its changes to all of them.
    """

    log = Logger()

    service: ProxyService
    # By channel, not worker id: a worker's successor may connect before
    # its channel is known to be lost.
    channels: list[ParentControl] = attrs.field(factory=list)
    # What each worker last said it holds: (pool, backend) -> (active, sessions).
    loads: dict[ParentControl, dict[tuple[str, str], tuple[int, int]]] = attrs.field(
        factory=dict
    )
    # Each worker's counters at the last scrape, and the sum of those of
    # the workers gone (so that counters never go back when one dies).
    counters: dict[ParentControl, list[Metric]] = attrs.field(factory=dict)
    departed: list[Metric] = attrs.field(factory=list)
    # Every worker's traffic (sent as it grows: a worker gone keeps its share).
    traffic: TrafficCounter = attrs.field(factory=TrafficCounter)
    sync: AdminSync = attrs.field(init=False)
    # The pools given a session count of the workers (a reload adds new ones).
    _counted: weakref.WeakSet[Pool] = attrs.field(init=False, factory=weakref.WeakSet)

    def __attrs_post_init__(self) -> None:
        # The store's changes too: the workers follow the parent alone.
        self.sync = AdminSync(lambda: self.service.pools, self.publish, peers=True)
        # However asked for (SIGHUP, the admin API), the workers reload too.
        self.service.reloaded.append(self.reloaded)

    def reloaded(self, changes: list[str]) -> None:
        """
        The parent's reload applied: each worker gets the sockets it lacks
        (for frontends the reload added or moved), then reloads.
        """
        for channel in list(self.channels):
            channel.reload()

    def join(self, channel: ParentControl) -> None:
        if not self.channels:
            self.service.events.subscribe(self)
            self.service.remote_metrics = self.collect
            self.service.remote_traffic = self.traffic
        self.channels.append(channel)

    def leave(self, channel: ParentControl) -> None:
        if channel in self.channels:
            self.channels.remove(channel)
            self.loads.pop(channel, None)
            self.departed = merge(self.departed, self.counters.pop(channel, []))
            self.count()
        if not self.channels:
            self.service.events.unsubscribe(self)

    def collect(self) -> Deferred[list[Metric]]:
        """
        Ask every worker for its counters.

        :returns: their sums, those of the workers gone included.
        """
        asking = [self._ask(channel) for channel in self.channels]
        collected = gatherResults(asking)
        return collected.addCallback(
            lambda _: merge(self.departed, *self.counters.values())
        )

    def _ask(self, channel: ParentControl) -> Deferred[None]:
        """
        Ask one worker for its counters; if it cannot answer (it is going
        away, most likely), its last ones stand in.
        """

        def answered(answer: dict[str, Any]) -> None:
            self.counters[channel] = counters_from_json(answer["families"])

        asking: Deferred[None] = channel.callRemote(Collect).addCallback(answered)
        what = f"the metrics of worker {channel.worker_id}"
        asking.addErrback(_log_failure, self.log, what)
        return asking

    def publish(self, record: AdminRecord) -> None:
        for channel in list(self.channels):
            channel.send_admin(record)

    def backend_changed(self, change: StateChange) -> None:
        self.sync.backend_changed(change)
        if change.kind in _HEALTH_KINDS:
            # (A new pool's, during a reload, is not among the pools yet:
            # the workers ask for it after their own reload.)
            pool = self.service.pools.get(change.pool)
            if pool is not None:
                for channel in list(self.channels):
                    channel.send_health(pool, change.backend, change.reason)
        elif change.reason.startswith((PEER, "reload")):
            # A reload's backends are the workers' own: they reload too.
            return
        elif change.kind == "added":
            for channel in list(self.channels):
                channel.send_added(change.pool, change.backend)
        elif change.kind == "removed":
            for channel in list(self.channels):
                channel.send_removed(change.pool, change.backend.name)

    def sessions(self, pool: str, backend: str) -> int:
        """
        :returns: how many sessions the workers hold on a backend: their
            sum, or with a shared store (where each worker's count is
            already every proxy's) the largest, the freshest read.
        """
        key = (pool, backend)
        counts = [load.get(key, (0, 0))[1] for load in self.loads.values()]
        if self.service.store is not None:
            return max(counts, default=0)
        return sum(counts)

    def count(self) -> None:
        """
        Show the workers' counts in the parent's pools: their open
        connections as each backend's C{active}, their sessions through a
        session source (given once to each pool, new ones included).
        """
        for pool in self.service.pools.values():
            if pool not in self._counted:
                self._counted.add(pool)
                pool.add_session_source(partial(self.sessions, pool.name))
            for backend in pool.backends:
                key = (pool.name, backend.name)
                backend.active = sum(
                    load.get(key, (0, 0))[0] for load in self.loads.values()
                )


_WORKERS: weakref.WeakKeyDictionary[ProxyService, _Workers] = (
    weakref.WeakKeyDictionary()
)


class ParentControl(amp.AMP):
    """
    The parent's end of one worker's channel.
    """

    log = Logger()

    def __init__(self, service: ProxyService, worker_id: int) -> None:
        super().__init__()
        self.service = service
        self.worker_id = worker_id
        workers = _WORKERS.get(service)
        if workers is None:
            # A proxy, not the service: the entry must not keep its key.
            workers = _WORKERS[service] = _Workers(weakref.proxy(service))
        self._workers = workers
        # The frontends' ports whose socket the worker has, by name.
        self._handed: dict[str, object] = {}

    def connectionMade(self) -> None:
        super().connectionMade()
        # Its process inherited the sockets of the ports there are now.
        self._handed = self._ports()
        self._workers.join(self)
        self.send_all()
        self._send(Synced)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self._workers.leave(self)

    def send_all(self, backends: bool = True) -> None:
        """
        Send the worker everything it follows: every backend's admin state
        and health, and, with C{backends}, the backends themselves (it adds
        those it lacks, and removes those the parent's pools lack).
        """
        for pool in self.service.pools.values():
            if backends:
                for backend in pool.backends:
                    self.send_added(pool.name, backend)
            for backend in pool.backends:
                self.send_admin(admin_record(pool, backend))
                self.send_health(pool, backend, "the parent's health checks")
            if backends:
                names = [backend.name for backend in pool.backends]
                self._send(KeepBackends, pool=pool.name, backends=names)

    def _ports(self) -> dict[str, object]:
        """
        :returns: the frontends' listening ports, by name.
        """
        listeners = self.service.listeners.items()
        return {name: each.port for name, each in listeners if each.port is not None}

    def reload(self) -> None:
        """
        Have the worker reload after the parent: send it the sockets it
        lacks (of frontends a reload added or moved), then L{Reload}.
        """
        for name, port in self._ports().items():
            if self._handed.get(name) is not port:
                self._handed[name] = port
                self._send(Listen, frontend=name, socket=cast(Any, port).fileno())
        self._send(Reload)

    @Resync.responder
    def resync(self) -> dict[str, object]:
        # The worker reloaded after the parent (which sent what changed
        # before the worker had those backends): their states again.
        self.send_all(backends=False)
        return {}

    def send_admin(self, record: AdminRecord) -> None:
        self._send(
            SetAdmin,
            pool=record.pool,
            backend=record.backend,
            admin_state=record.admin_state.value,
            weight=record.weight,
            drain_deadline=record.drain_deadline,
        )

    def send_health(self, pool: Pool, backend: Backend, reason: str) -> None:
        self._send(
            SetHealth,
            pool=pool.name,
            backend=backend.name,
            health=backend.health.value,
            reason=reason,
            passive=pool.passive_down(backend),
            ramp=backend.ramp,
        )

    def send_added(self, pool: str, backend: Backend) -> None:
        self._send(
            AddBackend,
            pool=pool,
            table=backend_table(backend),
            health=backend.health.value,
        )

    def send_removed(self, pool: str, backend: str) -> None:
        self._send(RemoveBackend, pool=pool, backend=backend)

    def _send(self, command: type[amp.Command], **arguments: object) -> None:
        _send(self, self.log, command, **arguments)

    def _backend(self, pool: str, backend: str) -> tuple[Pool, Backend] | None:
        live = self.service.pools.get(pool)
        found = live.get(backend) if live is not None else None
        return None if live is None or found is None else (live, found)

    @ConnectFailed.responder
    def connect_failed(self, pool: str, backend: str, reason: str) -> dict[str, object]:
        found = self._backend(pool, backend)
        if found is not None:
            found[0].report_connect_failure(
                found[1], f"{reason} (worker {self.worker_id})"
            )
        return {}

    @ConnectSucceeded.responder
    def connect_succeeded(self, pool: str, backend: str) -> dict[str, object]:
        found = self._backend(pool, backend)
        if found is not None:
            found[0].report_connect_success(found[1])
        return {}

    @ResponseStatus.responder
    def response_status(
        self, pool: str, backend: str, status: int
    ) -> dict[str, object]:
        found = self._backend(pool, backend)
        if found is not None:
            found[0].report_status(found[1], status)
        return {}

    @Load.responder
    def load(self, backends: list[list[Any]], traffic: Any) -> dict[str, object]:
        self._workers.loads[self] = {
            (str(pool), str(name)): (int(active), int(sessions))
            for pool, name, active, sessions in backends
        }
        self._workers.count()
        if traffic is not None:
            self._workers.traffic.add_json(traffic)
        return {}


def parent_control(service: ProxyService, worker_id: int) -> amp.AMP:
    """
    The parent's end of a worker's control channel: it sends the worker
    every admin state and health change of C{service}'s backends (all of
    them first), and feeds C{service} what the worker reports.

    :param worker_id: the worker's number, for the logs.
    """
    return ParentControl(service, worker_id)


# The worker's end


@implementer(IPassiveHealth)
class _PassiveToParent:
    """
    A worker pool's passive health signals, sent to the parent, whose
    monitor counts them.  Every failure is sent; a good signal only when
    it may change something there: after a failure this worker sent, or
    while the backend is not up.  (Sending each request's would cost the
    worker an AMP message per request.)
    """

    def __init__(self, channel: WorkerControl, pool: Pool) -> None:
        self._channel = channel
        self._pool = pool.name
        self._failed: set[str] = set()  # last connect sent was a failure
        self._bad_status: set[str] = set()  # last status sent was one

    def connect_failed(self, backend: Backend, reason: str) -> None:
        self._failed.add(backend.name)
        self._channel.send(
            ConnectFailed, pool=self._pool, backend=backend.name, reason=reason
        )

    def connect_succeeded(self, backend: Backend) -> None:
        if backend.name in self._failed or backend.health is not Health.UP:
            self._failed.discard(backend.name)
            self._channel.send(ConnectSucceeded, pool=self._pool, backend=backend.name)

    def response_status(self, backend: Backend, status: int) -> None:
        config = self._channel.service.config.pools.get(self._pool)
        statuses = None if config is None else config.health.settings.passive_status
        bad = statuses is not None and status in statuses
        if bad or backend.name in self._bad_status or backend.health is not Health.UP:
            if bad:
                self._bad_status.add(backend.name)
            else:
                self._bad_status.discard(backend.name)
            self._channel.send(
                ResponseStatus, pool=self._pool, backend=backend.name, status=status
            )


class WorkerControl(amp.AMP):
    """
    A worker's end of its control channel.
    """

    log = Logger()

    def __init__(self, service: ProxyService) -> None:
        super().__init__()
        self.service = service
        self._sync = AdminSync(lambda: service.pools, lambda record: None)
        self._timer: IDelayedCall | None = None
        self._sent_load: object = None
        self._config: ProxyConfig | None = None  # the one followed
        self._counters = CollectorRegistry()
        self._traffic: TrafficMetrics | None = None
        self._totals = TrafficCounter()  # since the last Load
        #: Fires once the parent sent everything the worker follows (every
        #: backend's state), before which it should not serve.
        self.synced: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.tick()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._traffic is not None:
            self.service.events.unsubscribe(self._traffic)
            self.service.events.unsubscribe(self._totals)

    def send(self, command: type[amp.Command], **arguments: object) -> None:
        """
        Send the parent a command whose answer nobody waits for.
        """
        _send(self, self.log, command, **arguments)

    def tick(self) -> None:
        """
        Follow the worker's configuration, if it is new (see L{follow}),
        and tell the parent what the worker holds, if it changed; again in
        L{LOAD_INTERVAL}.
        """
        self._timer = self.service.reactor.callLater(LOAD_INTERVAL, self.tick)
        config = self.service.config
        if config is not self._config:
            reloaded = self._config is not None
            self._config = config
            self.follow()
            if reloaded:
                # After the parent's reload (which sent the states of
                # backends the worker did not have yet): all of them again.
                self.send(Resync)
        load = [
            [pool.name, backend.name, backend.active, pool.sessions(backend.name)]
            for pool in self.service.pools.values()
            for backend in pool.backends
        ]
        traffic = self._totals.take()
        if load != self._sent_load or traffic is not None:
            self._sent_load = load
            self.send(Load, backends=load, traffic=traffic)

    def follow(self) -> None:
        """
        Send the passive health signals of every pool (a reload may build
        new ones) to the parent; count the traffic for the parent's
        C{/metrics}, admin API and dashboard once the configuration has an
        admin listener (without one, the worker's requests publish no
        event: that costs them nothing).
        """
        for pool in self.service.pools.values():
            if not isinstance(pool.passive, _PassiveToParent):
                pool.passive = _PassiveToParent(self, pool)
        if self._traffic is None and self.service.config.admin is not None:
            self._traffic = TrafficMetrics(self._counters)
            self.service.events.subscribe(self._traffic)
            self.service.events.subscribe(self._totals)

    def _pool(self, name: str) -> Pool | None:
        pool = self.service.pools.get(name)
        if pool is None:
            self.log.warn(
                "control channel: the parent named pool {pool}, unknown here "
                "(a reload under way?)",
                pool=name,
            )
        return pool

    @Listen.responder
    def listen(self, frontend: str, socket: int) -> dict[str, object]:
        self.service.inherit(frontend, socket)
        return {}

    @Reload.responder
    def reload_config(self) -> dict[str, object]:
        try:
            self.service.reload_from_source()
        except ConfigError:
            pass  # logged by the proxy, whose configuration stays
        return {}

    @Collect.responder
    def collect(self) -> dict[str, object]:
        return {"families": counters_json(self._counters)}

    @Synced.responder
    def parent_synced(self) -> dict[str, object]:
        if not self.synced.called:
            self.synced.callback(None)
        return {}

    @SetAdmin.responder
    def set_admin(
        self,
        pool: str,
        backend: str,
        admin_state: str,
        weight: int,
        drain_deadline: float | None,
    ) -> dict[str, object]:
        # The parent ends drains (it counts every worker's sessions): a
        # worker drains with no deadline of its own.
        record = AdminRecord(pool, backend, AdminState(admin_state), weight, None)
        return {"applied": self._sync.apply(record, PARENT)}

    @SetHealth.responder
    def set_health(
        self,
        pool: str,
        backend: str,
        health: str,
        reason: str,
        passive: bool,
        ramp: float,
    ) -> dict[str, object]:
        live = self._pool(pool)
        found = live.get(backend) if live is not None else None
        if live is None or found is None:
            return {"applied": False}
        live.set_ramp(found, ramp)
        live.set_health(found, Health(health), f"{PEER} {PARENT}: {reason}", passive)
        return {"applied": True}

    @AddBackend.responder
    def add_backend(
        self, pool: str, table: Mapping[str, object], health: str
    ) -> dict[str, object]:
        live = self._pool(pool)
        if live is None or live.get(str(table.get("name"))) is not None:
            return {"applied": False}
        try:
            backend = self.service.new_backend(pool, table)
        except ConfigError as error:
            self.log.error(
                "control channel: the parent's new backend of pool {pool} is "
                "refused here: {error}",
                pool=pool,
                error=str(error),
            )
            return {"applied": False}
        backend.health = Health(health)
        live.add(backend, f"{PEER} {PARENT}")
        return {"applied": True}

    @RemoveBackend.responder
    def remove_backend(self, pool: str, backend: str) -> dict[str, object]:
        live = self._pool(pool)
        if live is None or live.get(backend) is None:
            return {"applied": False}
        self._remove(live, backend)
        return {"applied": True}

    @KeepBackends.responder
    def keep_backends(self, pool: str, backends: list[str]) -> dict[str, object]:
        live = self._pool(pool)
        if live is None:
            return {"removed": 0}
        gone = [b.name for b in live.backends if b.name not in set(backends)]
        for name in gone:
            self._remove(live, name)
        return {"removed": len(gone)}

    def _remove(self, pool: Pool, name: str) -> None:
        """
        Remove a backend the parent removed (its sessions there were none,
        or it was in maint: so here too, by the parent's count).
        """
        reason = f"{PEER} {PARENT}"
        pool.set_admin_state(name, AdminState.MAINT, reason)
        pool.remove(name, reason)


def worker_control(service: ProxyService) -> WorkerControl:
    """
    A worker's end of its control channel: it makes C{service}'s backends
    follow the parent's admin states and health, and reports to the parent
    what only the worker sees (passive health, sessions and connections).
    """
    return WorkerControl(service)
