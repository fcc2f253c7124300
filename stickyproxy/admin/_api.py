"""
The JSON API of the admin listener (C{/api}).

Every resource reads the live state through the L{ProxyService} on each
request, never a copy: a reload may replace pools and routers.  Errors
are C{{"error": "..."}} with the status that fits (400, 401, 404, 405,
409); a request that fails changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from stickyproxy.admin._traffic import TrafficCounter
from stickyproxy.core._pool import Pool
from stickyproxy.model import AdminState, Backend

if TYPE_CHECKING:
    from stickyproxy.service import ProxyService

JSON = object


class ApiError(Exception):
    """
    A request the API refuses: the status and what was wrong.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def iso_time(seconds: float) -> str:
    """
    :returns: a time in seconds since the epoch as ISO 8601 UTC, to the
        second (C{"2026-11-30T20:15:02Z"}).
    """
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(request: Request, code: int, body: JSON | None) -> bytes:
    """
    Set the status and type of a JSON response.

    :returns: the body to send (empty for C{None}, as for 204).
    """
    request.setResponseCode(code)
    if body is None:
        return b""
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=1).encode("utf-8") + b"\n"


class JSONResource(Resource):
    """
    A leaf that answers JSON, routing on the method and the path segments
    below it: subclasses implement L{respond}.  An L{ApiError} becomes the
    error response.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        method = request.method.decode("ascii", "replace")
        try:
            segments = [s.decode("utf-8") for s in request.postpath or ()]
        except UnicodeDecodeError:
            return write_json(request, 404, {"error": "no such resource"})
        if segments and segments[-1] == "":
            segments.pop()  # a trailing slash
        try:
            code, body = self.respond(
                request, "GET" if method == "HEAD" else method, segments
            )
        except ApiError as error:
            if error.code == 405:
                request.setHeader(b"allow", error.message.encode("ascii"))
                error = ApiError(405, f"method {method} not allowed here")
            return write_json(request, error.code, {"error": error.message})
        return write_json(request, code, body)

    def respond(
        self, request: Request, method: str, segments: Sequence[str]
    ) -> tuple[int, JSON | None]:
        """
        Answer one request.

        :param method: the request method (C{HEAD} as C{GET}).
        :param segments: the decoded path below this resource.
        :returns: the status and the JSON body (C{None} for none).
        :raises ApiError: the request is refused.
        """
        raise NotImplementedError


class JSONError(JSONResource):
    """
    The same error for any request: what a parent resource returns for a
    child it refuses.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message

    def respond(
        self, request: Request, method: str, segments: Sequence[str]
    ) -> tuple[int, JSON | None]:
        raise ApiError(self.code, self.message)


def only(method: str, *allowed: str) -> None:
    """
    :raises ApiError: 405 unless C{method} is one of C{allowed} (the
        C{Allow} header lists them).
    """
    if method not in allowed:
        raise ApiError(405, ", ".join(allowed))


class _Live(JSONResource):
    """
    A JSON resource over the live proxy.
    """

    def __init__(self, service: ProxyService, traffic: TrafficCounter) -> None:
        super().__init__()
        self.service = service
        self.traffic = traffic

    def pool(self, name: str) -> Pool:
        """
        :raises ApiError: 404, the proxy has no such pool.
        """
        pool = self.service.pools.get(name)
        if pool is None:
            raise ApiError(
                404, f"no pool {name!r} (pools: {_names(self.service.pools)})"
            )
        return pool

    def backend_json(self, pool: Pool, backend: Backend) -> dict[str, JSON]:
        """
        :returns: a backend's object, as C{GET /api/backends} lists it.
        """
        monitor = self.service.monitors.get(pool.name)
        probe: JSON = None
        detail = backend.health.value
        if monitor is not None:
            status = monitor.status(backend)
            detail = status.detail
            if status.probe is not None:
                probe = {
                    "ok": status.probe.ok,
                    "reason": status.probe.reason,
                    "time": iso_time(status.probe.time),
                }
        sessions = pool.sessions(backend.name)
        found: dict[str, JSON] = {
            "pool": pool.name,
            "name": backend.name,
            "address": backend.address,
            "state": "up" if backend.healthy else "down",
            "health": {"state": detail, "probe": probe},
            "admin_state": backend.admin_state.value,
            "weight": backend.weight,
            "active": backend.active,
            "sessions": sessions,
        }
        if backend.admin_state is AdminState.DRAIN:
            deadline = pool.drain_deadline(backend.name)
            found["drain"] = {
                "sessions_left": sessions,
                "deadline": None if deadline is None else iso_time(deadline),
            }
        found["traffic"] = self.traffic.traffic(pool.name, backend.name).as_json()
        return found


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


class BackendsResource(_Live):
    """
    C{GET /api/backends}: every backend of every pool.
    """

    def respond(
        self, request: Request, method: str, segments: Sequence[str]
    ) -> tuple[int, JSON | None]:
        if segments:
            raise ApiError(404, "no such resource (backends are under /api/pools)")
        only(method, "GET")
        return 200, self.listing()

    def listing(self) -> list[dict[str, JSON]]:
        """
        :returns: what C{GET} answers (the dashboard shows the same).
        """
        return [
            self.backend_json(pool, backend)
            for pool in self.service.pools.values()
            for backend in pool.backends
        ]


class PoolsResource(_Live):
    """
    C{GET /api/pools}: the pools, with their balancer and backends.
    """

    def respond(
        self, request: Request, method: str, segments: Sequence[str]
    ) -> tuple[int, JSON | None]:
        if not segments:
            only(method, "GET")
            return 200, self.listing()
        raise ApiError(404, "no such resource")

    def listing(self) -> list[dict[str, JSON]]:
        """
        :returns: what C{GET} answers (the dashboard shows the same).
        """
        return [self.pool_json(pool) for pool in self.service.pools.values()]

    def pool_json(self, pool: Pool) -> dict[str, JSON]:
        """
        :returns: a pool's object, as C{GET /api/pools} lists it.
        """
        return {
            "name": pool.name,
            "balance": pool.balancer.name,
            "backends": [backend.name for backend in pool.backends],
            "panic": pool.panic,
            "no_backend": self.traffic.no_backend(pool.name),
        }


class FrontendsResource(_Live):
    """
    C{GET /api/frontends}: the frontends, with their pool and strategies.
    """

    def respond(
        self, request: Request, method: str, segments: Sequence[str]
    ) -> tuple[int, JSON | None]:
        if not segments:
            only(method, "GET")
            return 200, self.listing()
        raise ApiError(404, "no such resource")

    def listing(self) -> list[dict[str, JSON]]:
        """
        :returns: what C{GET} answers (the dashboard shows the same).
        """
        return [self.frontend_json(name) for name in self.service.routers]

    def frontend_json(self, name: str) -> dict[str, JSON]:
        """
        :returns: a frontend's object, as C{GET /api/frontends} lists it.
        """
        config = next(f for f in self.service.config.frontends if f.name == name)
        router = self.service.routers[name]
        return {
            "name": name,
            "mode": config.mode,
            "listen": config.listen,
            "pool": router.pool.name,
            "strategies": [strategy.name for strategy in router.strategies],
        }


class ApiResource(Resource):
    """
    C{/api}: one child per collection.  More mount themselves with
    C{putChild} (e.g. C{reload}); an unknown name is a JSON 404.
    """

    def __init__(self, service: ProxyService, traffic: TrafficCounter) -> None:
        super().__init__()
        self.backends = BackendsResource(service, traffic)
        self.pools = PoolsResource(service, traffic)
        self.frontends = FrontendsResource(service, traffic)
        self.putChild(b"backends", self.backends)
        self.putChild(b"pools", self.pools)
        self.putChild(b"frontends", self.frontends)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return JSONError(404, "no such resource")

    def render(self, request: Request) -> bytes:
        return write_json(
            request, 200, {"resources": sorted(n.decode() for n in self.children)}
        )
