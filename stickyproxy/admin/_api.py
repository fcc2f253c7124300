"""
The JSON API of the admin listener (C{/api}).

Every resource reads the live state through the L{ProxyService} on each
request, never a copy: a reload may replace pools and routers.  Errors
are C{{"error": "..."}} with the status that fits (400, 401, 404, 405,
409); a request that fails changes nothing.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, cast
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from stickyproxy.admin._traffic import Traffic, TrafficCounter
from stickyproxy.config import _bounds as bounds
from stickyproxy.config._options import ConfigError, OptionReader
from stickyproxy.core._balancers import SessionCap
from stickyproxy.core._pool import BackendInUse, Pool
from stickyproxy.interfaces import IListableStickTable, IStickTableStrategy
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


def authorized(service: ProxyService, request: Request) -> bool:
    """
    :returns: whether C{request} carries the admin token (C{Authorization:
        Bearer TOKEN}), or no token is configured.
    """
    admin = service.config.admin
    token = None if admin is None else admin.token
    if token is None:
        return True
    given = request.getHeader(b"authorization") or b""
    scheme, _, credentials = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(
        credentials.strip(), token.encode("utf-8")
    )


def require_token(service: ProxyService, request: Request) -> None:
    """
    :raises ApiError: 401 (with C{WWW-Authenticate}) unless C{request}
        carries the admin token, or none is configured.
    """
    if not authorized(service, request):
        request.setHeader(b"www-authenticate", b'Bearer realm="stickyproxy"')
        raise ApiError(401, "this needs the admin token: Authorization: Bearer TOKEN")


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
    log = Logger()

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
        except Exception:
            # A bug: logged, and still answered in JSON (not Twisted's page).
            self.log.failure(
                "admin API: {method} {uri}", method=method, uri=request.uri
            )
            return write_json(request, 500, {"error": "internal error (see the log)"})
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
            started = pool.drain_started(backend.name)
            found["drain"] = {
                "sessions_left": sessions,
                "deadline": None if deadline is None else iso_time(deadline),
                "started": None if started is None else iso_time(started.time),
                "sessions_at_start": None if started is None else started.sessions,
            }
        found["traffic"] = self.backend_traffic(pool.name, backend.name).as_json()
        return found

    def _counters(self) -> list[TrafficCounter]:
        """
        :returns: this process's traffic, and its workers' (L{ProxyService
            <stickyproxy.service.ProxyService>}C{.remote_traffic}).
        """
        remote = self.service.remote_traffic
        return [self.traffic] if remote is None else [self.traffic, remote]

    def backend_traffic(self, pool: str, backend: str) -> Traffic:
        """
        :returns: a backend's totals, its workers' included.
        """
        total = Traffic()
        for counter in self._counters():
            total.add(counter.traffic(pool, backend))
        return total

    def no_backend(self, pool: str) -> int:
        """
        :returns: how many requests of a pool's frontends got no backend,
            its workers' included.
        """
        return sum(counter.no_backend(pool) for counter in self._counters())


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
    C{/api/pools}: the pools, their backends, and changes to them.

    - C{GET /api/pools}, C{GET /api/pools/POOL};
    - C{GET} and C{POST /api/pools/POOL/backends} (add one);
    - C{GET}, C{PUT} and C{DELETE /api/pools/POOL/backends/NAME}.
    """

    def respond(
        self, request: Request, method: str, segments: Sequence[str]
    ) -> tuple[int, JSON | None]:
        if not segments:
            only(method, "GET")
            return 200, self.listing()
        pool = self.pool(segments[0])
        if len(segments) == 1:
            only(method, "GET")
            return 200, self.pool_json(pool)
        if segments[1] != "backends" or len(segments) > 3:
            raise ApiError(404, "no such resource")
        if len(segments) == 2:
            only(method, "GET", "POST")
            if method == "POST":
                return self.add(request, pool)
            return 200, [self.backend_json(pool, b) for b in pool.backends]
        only(method, "GET", "PUT", "DELETE")
        backend = pool.get(segments[2])
        if backend is None:
            known = _names(b.name for b in pool.backends)
            raise ApiError(
                404, f"pool {pool.name} has no backend {segments[2]!r} ({known})"
            )
        if method == "PUT":
            self.change(pool, backend, read_body(request))
        elif method == "DELETE":
            try:
                pool.remove(backend.name, REASON)
            except BackendInUse as error:
                raise ApiError(409, str(error)) from None
            return 204, None
        return 200, self.backend_json(pool, backend)

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
            "session_balance_factor": (
                pool.balancer.factor if isinstance(pool.balancer, SessionCap) else None
            ),
            "backends": [backend.name for backend in pool.backends],
            "panic": pool.panic,
            "no_backend": self.no_backend(pool.name),
        }

    def add(self, request: Request, pool: Pool) -> tuple[int, JSON]:
        """
        Add the backend the body describes, checked as the config file's
        backends are.
        """
        try:
            backend = self.service.new_backend(pool.name, read_body(request))
        except ConfigError as error:
            raise ApiError(400, str(error)) from None
        try:
            pool.add(backend, REASON)
        except ValueError as error:
            raise ApiError(409, str(error)) from None
        # Every character quoted: a "/" in a name is one path segment.
        names = quote(pool.name, safe=""), quote(backend.name, safe="")
        location = "/api/pools/{}/backends/{}".format(*names)
        request.setHeader(b"location", location.encode("ascii"))
        return 201, self.backend_json(pool, backend)

    def change(self, pool: Pool, backend: Backend, body: Mapping[str, object]) -> None:
        """
        Apply C{{"admin_state": ..., "deadline": ...}} and/or
        C{{"weight": N}}, all checked before anything changes.
        """
        try:
            reader = OptionReader(body, "")
            state = None
            if reader.has("admin_state"):
                choices = [s.value for s in AdminState]
                state = AdminState(reader.string("admin_state", choices=choices))
            deadline = reader.optional_number("deadline", bounds=bounds.DRAIN_DEADLINE)
            if deadline is not None and state is not AdminState.DRAIN:
                raise ConfigError(
                    "deadline", 'expected only with "admin_state": "drain"'
                )
            weight = None
            if reader.has("weight"):
                weight = reader.integer("weight", bounds=bounds.WEIGHT)
            reader.finish()
            if state is None and weight is None:
                raise ConfigError("", 'expected "admin_state" or "weight"')
        except ConfigError as error:
            raise ApiError(400, str(error)) from None
        if weight is not None:
            pool.set_weight(backend.name, weight, REASON)
        if state is AdminState.DRAIN:
            pool.drain(backend.name, deadline, REASON)
        elif state is not None:
            pool.set_admin_state(backend.name, state, REASON)


#: The reason pool changes made through the API are logged with.
REASON = "admin API"


def read_body(request: Request) -> Mapping[str, object]:
    """
    :returns: the request's body, a JSON object.
    :raises ApiError: 400, it is not one.
    """
    assert request.content is not None
    try:
        body = json.loads(request.content.read())
    except ValueError as error:
        raise ApiError(400, f"expected a JSON object as the body: {error}") from None
    except RecursionError:
        raise ApiError(
            400, "expected a JSON object as the body: nested too deeply"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object as the body")
    return body


class FrontendsResource(_Live):
    """
    C{/api/frontends}: the frontends, and their stick tables.

    - C{GET /api/frontends}, C{GET /api/frontends/NAME};
    - C{GET /api/frontends/NAME/table?offset=0&limit=100};
    - C{DELETE /api/frontends/NAME/table} (every entry) or
      C{.../table?key=KEY} (one).

    Table keys are client addresses or session ids: with a token, listing
    them needs it too.
    """

    def respond(
        self, request: Request, method: str, segments: Sequence[str]
    ) -> tuple[int, JSON | None]:
        if not segments:
            only(method, "GET")
            return 200, self.listing()
        name = segments[0]
        if name not in self.service.routers:
            known = _names(self.service.routers)
            raise ApiError(404, f"no frontend {name!r} (frontends: {known})")
        if len(segments) == 1:
            only(method, "GET")
            return 200, self.frontend_json(name)
        if segments[1:] != ["table"]:
            raise ApiError(404, "no such resource")
        only(method, "GET", "DELETE")
        require_token(self.service, request)
        strategies = self.tables(name)
        if method == "GET":
            offset, limit = _page(request)
            return 200, _list_entries(strategies, offset, limit)
        keys = _arguments(request, "key")
        if "key" in keys:
            _forget(strategies, keys["key"])
        else:
            for strategy in strategies:
                cast(IListableStickTable, strategy.table).clear()
        return 204, None

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

    def tables(self, name: str) -> list[IStickTableStrategy]:
        """
        :returns: the strategies of a frontend whose stick table can be
            listed (L{IStickTableStrategy} with an L{IListableStickTable}).
        :raises ApiError: 404, it has none.
        """
        strategies = self.service.routers[name].strategies
        keeping = [s for s in strategies if IStickTableStrategy.providedBy(s)]
        listable = [s for s in keeping if IListableStickTable.providedBy(s.table)]
        if not keeping:
            names = _names(s.name for s in strategies)
            raise ApiError(
                404, f"frontend {name} keeps no stick table (strategies: {names})"
            )
        if not listable:
            raise ApiError(404, f"the stick table of frontend {name} cannot be listed")
        return listable


#: The most entries one page of a table holds.
MAX_PAGE = 1000


def _arguments(request: Request, *known: str) -> dict[str, str]:
    """
    :returns: the query arguments, each given once at most.
    :raises ApiError: 400, one is unknown or repeated (a typo must not
        turn "forget this key" into "forget them all").
    """
    found = {}
    for name, values in (request.args or {}).items():
        text = name.decode("utf-8", "replace")
        if text not in known:
            raise ApiError(
                400, f"unknown query argument {text!r} (expected: {_names(known)})"
            )
        if len(values) != 1:
            raise ApiError(400, f"query argument {text!r} given more than once")
        try:
            found[text] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"query argument {text!r} is not UTF-8") from None
    return found


_DIGITS = re.compile(r"[0-9]{1,18}")


def _page(request: Request) -> tuple[int, int]:
    """
    :returns: the C{offset} (default 0) and C{limit} (default 100, at most
        L{MAX_PAGE}) of a listing.
    """
    arguments = _arguments(request, "offset", "limit")
    page = []
    for name, default, low, high in (
        ("offset", 0, 0, None),
        ("limit", 100, 1, MAX_PAGE),
    ):
        text = arguments.get(name, str(default))
        # ASCII digits only, and few: int() takes "²" for a digit and
        # refuses more than 4300 of them.
        value = int(text) if _DIGITS.fullmatch(text) else -1
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high else f"of at least {low}"
            raise ApiError(400, f"{name}: expected an integer {allowed}, got {text!r}")
        page.append(value)
    return page[0], page[1]


def _list_entries(
    strategies: Sequence[IStickTableStrategy], offset: int, limit: int
) -> JSON:
    """
    :returns: one page of the entries of every table, in order.
    """
    entries: list[JSON] = []
    total = 0
    for strategy in strategies:
        table = cast(IListableStickTable, strategy.table)
        for entry in table.entries():
            if offset <= total < offset + limit:
                expires = entry.expires
                entries.append(
                    {
                        "key": strategy.key_text(entry.key),
                        "backend": entry.backend,
                        "expires": None if expires is None else iso_time(expires),
                        "strategy": strategy.name,
                    }
                )
            total += 1
    return {"entries": entries, "total": total, "offset": offset, "limit": limit}


def _forget(strategies: Sequence[IStickTableStrategy], text: str) -> None:
    """
    Forget the entry of one key, in every table that has it.

    :raises ApiError: 400, no strategy can read the key; 404, no table
        has it.
    """
    errors = []
    found = False
    for strategy in strategies:
        try:
            key = strategy.key_bytes(text)
        except ValueError as error:
            errors.append(f"{strategy.name}: {error}")
            continue
        table = cast(IListableStickTable, strategy.table)
        if any(entry.key == key for entry in table.entries()):
            table.forget(key)
            found = True
    if len(errors) == len(strategies):
        raise ApiError(400, f"key: {'; '.join(errors)}")
    if not found:
        raise ApiError(404, f"no entry for key {text!r}")


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
        if path == b"":
            return self  # /api/, as /api/pools/ is /api/pools
        return JSONError(404, "no such resource")

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET")
            method = request.method.decode("ascii", "replace")
            return write_json(
                request, 405, {"error": f"method {method} not allowed here"}
            )
        return write_json(
            request, 200, {"resources": sorted(n.decode() for n in self.children)}
        )
