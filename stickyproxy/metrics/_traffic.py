"""
The counters and histograms of traffic and probes, fed by the event stream.
"""

from __future__ import annotations

from typing import TypeVar

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram

from stickyproxy.core._events import IgnoreEvents
from stickyproxy.model import (
    ConnectionClosed,
    ConnectionOpened,
    ProbeRan,
    RequestFinished,
    StateChange,
)

_Metric = Counter | Histogram
_M = TypeVar("_M", Counter, Histogram)


@attrs.frozen
class _HTTPSeries:
    """
    The children one kind of finished request counts in.
    """

    requests: Counter
    bytes_in: Counter
    bytes_out: Counter
    duration: Histogram


@attrs.frozen
class _TCPSeries:
    """
    The children one frontend's connections to one backend count in.
    """

    connections: Counter
    bytes_in: Counter
    bytes_out: Counter


@attrs.frozen
class _ProbeSeries:
    """
    The children one backend's probes count in.
    """

    duration: Histogram
    failures: Counter


class TrafficMetrics(IgnoreEvents):
    """
    Counts what the event stream reports, in metrics of a given registry.

    It runs for every request and connection, so each event costs a dict
    lookup and a few increments: the labelled children are looked up once
    per distinct label values (C{labels()} is several times dearer) and
    kept, by label values, until their backend is removed from its pool.
    Labels are names, status codes and outcomes, never client addresses,
    so the number of series stays bounded.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self._requests = counter(
            "stickyproxy_requests_total",
            "HTTP requests finished, by the status the client got (empty when "
            "it got none) and the backend that served them (empty when none "
            "did).",
            "frontend",
            "backend",
            "code",
        )
        self._request_duration = Histogram(
            "stickyproxy_request_duration_seconds",
            "Seconds from an HTTP request's head to the end of its response "
            "(upgrades to a tunnel are left out).",
            ("frontend",),
            registry=registry,
        )
        self._http_bytes = counter(
            "stickyproxy_http_bytes_total",
            "HTTP body bytes: in, read from clients; out, written to them.",
            "frontend",
            "backend",
            "direction",
        )
        self._decisions = counter(
            "stickyproxy_persistence_decisions_total",
            "Requests (HTTP) and connections (L4) given a backend, by the "
            "strategy that decided (empty when none knew the client) and the "
            "outcome (hit, new, redispatch, invalid).",
            "frontend",
            "strategy",
            "outcome",
        )
        self._tcp_connections = counter(
            "stickyproxy_tcp_connections_total",
            "L4 client connections spliced to a backend.",
            "frontend",
            "backend",
        )
        self._tcp_bytes = counter(
            "stickyproxy_tcp_bytes_total",
            "L4 bytes of closed connections: in, from clients to the backend; "
            "out, from the backend to clients.",
            "frontend",
            "backend",
            "direction",
        )
        self._probe_duration = Histogram(
            "stickyproxy_probe_duration_seconds",
            "Seconds each active health probe took.",
            ("pool", "backend"),
            registry=registry,
        )
        self._probe_failures = counter(
            "stickyproxy_probe_failures_total",
            "Active health probes the backend failed.",
            "pool",
            "backend",
        )
        # Keyed by what the events carry: (frontend, pool, backend, status),
        # (frontend, pool, backend) and (pool, backend).
        self._http: dict[tuple[str, str, str | None, int | None], _HTTPSeries] = {}
        self._tcp: dict[tuple[str, str, str], _TCPSeries] = {}
        self._probes: dict[tuple[str, str], _ProbeSeries] = {}
        self._decided: dict[tuple[str, str | None, str], Counter] = {}
        # The series of each backend (by pool and name), removed with it.
        self._owned: dict[tuple[str, str], set[tuple[_Metric, tuple[str, ...]]]] = {}
        # Backends removed (and not added again): what their connections
        # still open report is counted in metrics of no registry, rather
        # than bringing their series back for good.
        self._removed: set[tuple[str, str]] = set()

    def request_finished(self, event: RequestFinished) -> None:
        key = (event.frontend, event.pool, event.backend, event.status)
        series = self._http.get(key)
        if series is None:
            series = self._http[key] = self._http_series(key)
        series.requests.inc()
        if event.bytes_in:
            series.bytes_in.inc(event.bytes_in)
        if event.bytes_out:
            series.bytes_out.inc(event.bytes_out)
        if event.ended != "upgraded":
            series.duration.observe(event.total_time)
        if event.persistence != "none":
            self._decision(event.frontend, event.strategy, event.persistence)

    def connection_opened(self, event: ConnectionOpened) -> None:
        self._tcp_series(event.frontend, event.pool, event.backend).connections.inc()
        self._decision(event.frontend, event.strategy, event.persistence)

    def connection_closed(self, event: ConnectionClosed) -> None:
        series = self._tcp_series(event.frontend, event.pool, event.backend)
        series.bytes_in.inc(event.bytes_in)
        series.bytes_out.inc(event.bytes_out)

    def probe_ran(self, event: ProbeRan) -> None:
        key = (event.pool, event.backend)
        series = self._probes.get(key)
        if series is None:
            series = self._probes[key] = _ProbeSeries(
                self._child(key, self._probe_duration, *key),
                self._child(key, self._probe_failures, *key),
            )
        series.duration.observe(event.latency)
        if not event.ok:
            series.failures.inc()

    def backend_changed(self, change: StateChange) -> None:
        owner = (change.pool, change.backend.name)
        if change.kind == "removed":
            self._removed.add(owner)
            self._forget(owner)
        elif change.kind == "added" and owner in self._removed:
            # Back under the same name: the caches hold the series nowhere.
            self._removed.discard(owner)
            self._forget(owner)

    def _decision(self, frontend: str, strategy: str | None, outcome: str) -> None:
        key = (frontend, strategy, outcome)
        child = self._decided.get(key)
        if child is None:
            child = self._decided[key] = self._decisions.labels(
                frontend, strategy or "", outcome
            )
        child.inc()

    def _http_series(self, key: tuple[str, str, str | None, int | None]) -> _HTTPSeries:
        frontend, pool, backend, status = key
        owner = None if backend is None else (pool, backend)
        name = backend or ""
        code = "" if status is None else str(status)
        return _HTTPSeries(
            self._child(owner, self._requests, frontend, name, code),
            self._child(owner, self._http_bytes, frontend, name, "in"),
            self._child(owner, self._http_bytes, frontend, name, "out"),
            self._request_duration.labels(frontend),
        )

    def _tcp_series(self, frontend: str, pool: str, backend: str) -> _TCPSeries:
        key = (frontend, pool, backend)
        series = self._tcp.get(key)
        if series is None:
            owner = (pool, backend)
            series = self._tcp[key] = _TCPSeries(
                self._child(owner, self._tcp_connections, frontend, backend),
                self._child(owner, self._tcp_bytes, frontend, backend, "in"),
                self._child(owner, self._tcp_bytes, frontend, backend, "out"),
            )
        return series

    def _child(self, owner: tuple[str, str] | None, metric: _M, *labels: str) -> _M:
        """
        The child of C{metric} with these label values, noted as a series
        of the backend C{owner} (pool and name), if any.
        """
        if owner in self._removed:
            return type(metric)("removed", "", registry=None)
        if owner is not None:
            self._owned.setdefault(owner, set()).add((metric, labels))
        return metric.labels(*labels)

    def _forget(self, owner: tuple[str, str]) -> None:
        """
        Drop the series of a backend removed from its pool (or the caches
        of one back), so that backends coming and going (deploys) do not
        pile up series.

        The caches are emptied too: a cached child whose series is gone
        would count where no scrape sees it (removals are rare, and the
        other series' children are found again by their labels).
        """
        for metric, labels in self._owned.pop(owner, ()):
            metric.remove(*labels)
        self._http.clear()
        self._tcp.clear()
        self._probes.clear()
