"""
The configuration: a TOML file (or the short command-line flags, turned
into the same tables) loaded into frozen, validated attrs objects.

Everything that can be checked without a reactor is checked here; endpoint
strings and strategy options are checked when L{ProxyService} builds the
running objects, with the same L{ConfigError} and key paths.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

import attrs

from stickyproxy.config import _bounds as bounds
from stickyproxy.config._options import ConfigError, OptionReader, describe, join_path
from stickyproxy.config._settings import HealthSettings, HTTPSettings, StatusRanges
from stickyproxy.core._balancers import BALANCERS
from stickyproxy.core._logfile import TO_LOG, TO_STDOUT
from stickyproxy.core._pool import KEEPALIVE
from stickyproxy.core._router import PERSISTENCE_TIMEOUT
from stickyproxy.interfaces import IPersistenceStrategyFactory
from stickyproxy.model import AdminState, Health

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODES = ("tcp", "http")


class StrategyRegistry(Protocol):
    """
    Where strategy names are looked up (a
    L{stickyproxy.StrategyRegistry}): config checks names against it
    without importing the persistence package.
    """

    def get(self, name: str, path: str) -> IPersistenceStrategyFactory:
        """
        :raises ConfigError: no usable strategy has that name.
        """


def _frozen_mapping(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@attrs.frozen
class BackendConfig:
    """
    One C{[[pool.NAME.backend]]} table.
    """

    name: str
    address: str
    weight: int = 1
    admin_state: AdminState = AdminState.READY
    route: str = ""
    path: str = ""


@attrs.frozen
class PoolConfig:
    """
    One C{[pool.NAME]} table.
    """

    name: str
    backends: tuple[BackendConfig, ...]
    balance: str = "roundrobin"
    balance_factor: float | None = None
    session_balance_factor: float | None = None
    connect_timeout: float = 3.0
    retries: int = 2
    send_proxy: str | None = None
    fail_open: bool = False
    passive_panic: bool = True
    keepalive: int = KEEPALIVE
    keepalive_timeout: float = 30.0
    health: HealthConfig = attrs.field(factory=lambda: HealthConfig())
    path: str = ""


@attrs.frozen
class HealthConfig:
    """
    One C{[pool.NAME.health]} table: the probe (C{type}: C{None} for passive
    checks only, C{"tcp"} or C{"http"}) with its options, and the timing and
    thresholds in C{settings}.
    """

    settings: HealthSettings = HealthSettings()
    type: str | None = None
    send: bytes = b""
    expect: bytes | None = None
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    expect_status: StatusRanges = StatusRanges.parse("200-399")
    expect_body: bytes | None = None
    on_down: str = "keep"


@attrs.frozen
class PersistenceConfig:
    """
    One C{[frontend.persistence]} table: a strategy name and its options.
    """

    strategy: str
    options: Mapping[str, object] = attrs.field(factory=dict, converter=_frozen_mapping)
    path: str = ""


@attrs.frozen
class FrontendConfig:
    """
    One C{[[frontend]]} table.

    :ivar access_log: where its access log (HTTP) or connection log (TCP)
        goes: C{"log"} (the proxy's log), C{"stdout"}, or a file's
        absolute path; C{None} for nowhere.
    """

    name: str
    mode: str
    listen: str
    pool: str
    persistence: tuple[PersistenceConfig, ...] = ()
    idle_timeout: float | None = None
    alpn: tuple[bytes, ...] = ()
    timeout_proxy_header: float = 10.0
    timeout_handshake: float = 10.0
    strict: bool = False
    persistence_timeout: float = PERSISTENCE_TIMEOUT
    http: HTTPSettings | None = None
    access_log: str | None = None
    path: str = ""


@attrs.frozen
class AdminConfig:
    """
    The C{[admin]} table.

    :ivar listen: where the admin listener listens: a server endpoint
        string, given the loopback interface when a C{tcp:}, C{tcp6:} or
        C{ssl:} string names none (see L{loopback_by_default}).
    :ivar token: the bearer token every change must carry, or C{None}.
    """

    listen: str
    token: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class StoreConfig:
    """
    The C{[store]} table: the Redis server several proxies share.

    :ivar url: the C{url} as given, for messages (see L{location}).
    :ivar endpoint: the server as a Twisted client endpoint string.
    :ivar password: from the URL, or C{None}.
    :ivar username: from the URL (Redis 6 ACLs), or C{None}.
    :ivar db: the database number.
    :ivar timeout: the longest a request waits on the store, in seconds.
    :ivar prefix: the namespace of every key and channel.
    """

    url: str = attrs.field(repr=False)
    endpoint: str
    password: str | None = attrs.field(default=None, repr=False)
    username: str | None = None
    db: int = 0
    timeout: float = 0.05
    prefix: str = "stickyproxy"

    @property
    def location(self) -> str:
        """
        The server, as log lines show it: the endpoint and database, never
        the password.
        """
        return f"{self.endpoint} db {self.db}"


@attrs.frozen
class ProxyConfig:
    """
    The whole configuration.

    :ivar state_dir: where the proxy keeps what must outlive it (the
        secret that signs cookies without configured keys); a relative
        path is relative to the working directory.
    :ivar shutdown_timeout: how long a shutdown waits for requests and
        connections under way, in seconds.
    :ivar workers: how many worker processes serve the frontends (1: this
        process serves them itself); see L{stickyproxy.workers}.
    """

    frontends: tuple[FrontendConfig, ...]
    pools: Mapping[str, PoolConfig] = attrs.field(converter=_frozen_mapping)
    admin: AdminConfig | None = None
    store: StoreConfig | None = None
    state_dir: str = "."
    shutdown_timeout: float = 30.0
    workers: int = 1


def same(one: object, other: object) -> bool:
    """
    Whether two pieces of configuration say the same, wherever in the file
    they were written: their key paths (which move when a table does) are
    not compared.
    """
    return _unplaced(one) == _unplaced(other)


def _unplaced(value: object) -> object:
    if isinstance(value, tuple):
        return tuple(_unplaced(each) for each in value)
    kind = type(value)
    if not attrs.has(kind):
        return value
    fields = attrs.fields_dict(kind)
    return attrs.evolve(
        value,  # type: ignore[misc]
        **{
            name: "" if name == "path" else _unplaced(getattr(value, name))
            for name, field in fields.items()
            if field.init
        },
    )


def read_backend(reader: OptionReader, default_name: str) -> BackendConfig:
    """
    Read one C{[[pool.NAME.backend]]} table (a file's, or one added at
    run time through the admin API).

    :param default_name: the name when the table has none.
    :raises ConfigError: naming the key that is wrong.
    """
    name = reader.string("name", default_name)
    backend = BackendConfig(
        name=name,
        address=reader.string("address"),
        weight=reader.integer("weight", 1, bounds=bounds.WEIGHT),
        admin_state=AdminState(
            reader.string("admin_state", "ready", choices=[s.value for s in AdminState])
        ),
        route=reader.string("route", name),
        path=reader.path,
    )
    reader.finish()
    return backend


def _pool(name: str, reader: OptionReader) -> PoolConfig:
    backend_readers = reader.tables("backend")
    if not backend_readers:
        raise reader.fail("backend", "at least one [[pool.NAME.backend]] table")
    # Unnamed backends are backend1, backend2, ... skipping names in use.
    taken = {r.string("name") for r in backend_readers if r.has("name")}
    free = (f"backend{n}" for n in range(1, len(backend_readers) + len(taken) + 2))
    unused = (name for name in free if name not in taken)
    backends = tuple(
        read_backend(r, "" if r.has("name") else next(unused)) for r in backend_readers
    )
    seen: set[str] = set()
    for backend in backends:
        if backend.name in seen:
            raise ConfigError(
                join_path(backend.path, "name"),
                f"duplicate backend name {backend.name!r}",
            )
        seen.add(backend.name)
    balance = reader.string("balance", "roundrobin", choices=list(BALANCERS))
    factor = reader.optional_number("balance_factor")
    if factor is not None and balance != "hash":
        raise ConfigError(
            reader.key("balance_factor"), 'expected only with balance = "hash"'
        )
    if factor is not None and factor <= 1.0:
        raise reader.fail("balance_factor", "a number above 1.0 (e.g. 1.25)")
    session_factor = reader.optional_number("session_balance_factor")
    if session_factor is not None and session_factor <= 1.0:
        raise reader.fail("session_balance_factor", "a number above 1.0 (e.g. 1.25)")
    pool = PoolConfig(
        name=name,
        backends=backends,
        balance=balance,
        balance_factor=factor,
        session_balance_factor=session_factor,
        connect_timeout=reader.number("connect_timeout", 3.0, bounds=bounds.TIMEOUT),
        retries=reader.integer("retries", 2, bounds=bounds.RETRIES),
        send_proxy=reader.optional_string("send_proxy"),
        fail_open=reader.boolean("fail_open", False),
        passive_panic=reader.boolean("passive_panic", True),
        keepalive=reader.integer("keepalive", KEEPALIVE, bounds=bounds.KEEPALIVE),
        keepalive_timeout=reader.number(
            "keepalive_timeout", 30.0, bounds=bounds.TIMEOUT
        ),
        health=_health(reader.table("health")),
        path=reader.path,
    )
    if pool.send_proxy not in (None, "v1", "v2"):
        raise reader.fail("send_proxy", "'v1' or 'v2'")
    if pool.send_proxy is not None and pool.health.type == "http":
        raise ConfigError(
            join_path(reader.key("health"), "type"),
            'expected "tcp" on a pool with send_proxy: HTTP probes cannot send '
            "the PROXY header its backends expect (TCP probes do)",
        )
    reader.finish()
    return pool


def _statuses(
    reader: OptionReader, name: str, default: str = "200-399"
) -> StatusRanges:
    try:
        return StatusRanges.parse(reader.string(name, default))
    except ValueError:
        raise reader.fail(
            name, 'HTTP statuses such as "200-399" or "200,204"'
        ) from None


def _optional_bytes(reader: OptionReader, name: str) -> bytes | None:
    text = reader.optional_string(name)
    return None if text is None else text.encode("utf-8")


def _health(reader: OptionReader) -> HealthConfig:
    interval = reader.number("interval", 2.0, bounds=bounds.PROBE_INTERVAL)
    settings = HealthSettings(
        interval=interval,
        timeout=reader.number("timeout", 1.0, bounds=bounds.TIMEOUT),
        rise=reader.integer("rise", 2, bounds=bounds.THRESHOLD),
        fall=reader.integer("fall", 3, bounds=bounds.THRESHOLD),
        jitter=reader.number("jitter", 0.1, bounds=bounds.JITTER),
        fast_interval=reader.optional_number(
            "fast_interval", bounds=bounds.PROBE_INTERVAL
        ),
        down_interval=reader.optional_number(
            "down_interval", bounds=bounds.PROBE_INTERVAL
        ),
        passive_fall=reader.integer("passive_fall", 3, bounds=bounds.PASSIVE_FALL),
        passive_cooldown=reader.number(
            "passive_cooldown", 10.0, bounds=bounds.PASSIVE_COOLDOWN
        ),
        passive_status=(
            _statuses(reader, "passive_status")
            if reader.has("passive_status")
            else None
        ),
        init_state=Health(reader.string("init_state", "up", choices=("up", "down"))),
        slow_start=reader.number("slow_start", 0.0, bounds=bounds.SLOW_START),
    )
    kind = reader.optional_string("type")
    health = HealthConfig(
        settings=settings,
        type=kind,
        on_down=reader.string("on_down", "keep", choices=("keep", "close")),
    )
    if kind == "tcp":
        health = attrs.evolve(
            health,
            send=(reader.optional_string("send") or "").encode("utf-8"),
            expect=_optional_bytes(reader, "expect"),
        )
    elif kind == "http":
        path = reader.string("path", "/")
        if not path.startswith("/"):
            raise reader.fail("path", 'a path starting with "/"')
        health = attrs.evolve(
            health,
            method=reader.string("method", "GET", choices=("GET", "HEAD")),
            path=path,
            host=reader.optional_string("host"),
            expect_status=_statuses(reader, "expect_status"),
            expect_body=_optional_bytes(reader, "expect_body"),
        )
    elif kind is not None:
        raise reader.fail("type", "'tcp' or 'http' (or no type: passive checks only)")
    if kind is None and settings.init_state is Health.DOWN:
        raise ConfigError(
            reader.key("init_state"),
            "expected 'up' without a probe: with no type, nothing would ever "
            "bring the backends up",
        )
    reader.elsewhere('expected only with type = "tcp"', "send", "expect")
    reader.elsewhere(
        'expected only with type = "http"',
        "method",
        "path",
        "host",
        "expect_status",
        "expect_body",
    )
    reader.finish()
    return health


def _persistence(
    reader: OptionReader, mode: str, registry: StrategyRegistry
) -> PersistenceConfig:
    name = reader.string("strategy")
    factory = registry.get(name, reader.key("strategy"))
    if mode not in factory.modes:
        raise ConfigError(
            reader.key("strategy"),
            f"strategy {name!r} fits {' and '.join(sorted(factory.modes))} "
            f"frontends, not mode = {mode!r}",
        )
    return PersistenceConfig(strategy=name, options=reader.rest(), path=reader.path)


def _header_name(reader: OptionReader, name: str) -> bytes | None:
    if not reader.has(name):
        return None
    return reader.token(name).lower().encode("ascii")


HTTP_KEYS = (
    "trusted_proxies",
    "forwarded",
    "redispatch_header",
    "debug_header",
    "timeout_request",
    "timeout_body",
    "body_min_rate",
    "timeout_keepalive",
    "timeout_response",
    "timeout_tunnel",
    "upgrades",
    "max_header_size",
    "max_headers",
    "max_body_size",
    "retry_after",
)


def _http_settings(reader: OptionReader) -> HTTPSettings:
    networks = reader.networks("trusted_proxies")
    max_body = reader.integer("max_body_size", 0, bounds=bounds.MAX_BODY_SIZE)
    return HTTPSettings(
        trusted_proxies=networks,
        forwarded=reader.boolean("forwarded", False),
        redispatch_header=_header_name(reader, "redispatch_header"),
        debug_header=_header_name(reader, "debug_header"),
        timeout_request=reader.number("timeout_request", 10.0, bounds=bounds.TIMEOUT),
        timeout_body=reader.number("timeout_body", 30.0, bounds=bounds.TIMEOUT),
        body_min_rate=reader.number(
            "body_min_rate", 500.0, bounds=bounds.BODY_MIN_RATE
        ),
        timeout_keepalive=reader.number(
            "timeout_keepalive", 60.0, bounds=bounds.TIMEOUT
        ),
        timeout_response=reader.number("timeout_response", 60.0, bounds=bounds.TIMEOUT),
        timeout_tunnel=reader.number("timeout_tunnel", 3600.0, bounds=bounds.TIMEOUT),
        upgrades=frozenset(
            name.lower().encode("ascii")
            for name in reader.tokens("upgrades", ("websocket",))
        ),
        max_header_size=reader.integer(
            "max_header_size", 32768, bounds=bounds.MAX_HEADER_SIZE
        ),
        max_headers=reader.integer("max_headers", 100, bounds=bounds.MAX_HEADERS),
        max_body_size=max_body or None,
        retry_after=reader.integer("retry_after", 5, bounds=bounds.RETRY_AFTER),
    )


_ALPN_NAME = re.compile(r"[\x21-\x7e]{1,255}")


def _alpn(reader: OptionReader) -> tuple[bytes, ...]:
    """
    Read C{alpn}: the ALPN protocol names a TLS listener offers, most
    preferred first.
    """
    names = reader.strings("alpn", ())
    if len(set(names)) != len(names) or not all(map(_ALPN_NAME.fullmatch, names)):
        raise reader.fail(
            "alpn",
            "an array of distinct ALPN protocol names (1 to 255 printable "
            'ASCII characters each, e.g. ["imap", "h2"])',
        )
    return tuple(name.encode("ascii") for name in names)


def _frontend(
    reader: OptionReader,
    index: int,
    pools: Mapping[str, PoolConfig],
    registry: StrategyRegistry,
) -> FrontendConfig:
    mode = reader.string("mode", "tcp", choices=MODES)
    pool = reader.string("pool")
    if pool not in pools:
        known = ", ".join(sorted(pools)) or "none defined"
        raise ConfigError(
            reader.key("pool"),
            f"expected the name of a [pool.NAME] table ({known}), got {pool!r}",
        )
    persistence: tuple[PersistenceConfig, ...] = ()
    if reader.has("persistence"):
        persistence = tuple(
            _persistence(r, mode, registry) for r in reader.tables("persistence")
        )
    if mode == "http":
        reader.elsewhere('expected only on mode = "tcp" frontends', "idle_timeout")
        reader.elsewhere(
            'expected only on mode = "tcp" frontends (HTTP frontends always '
            'negotiate "http/1.1")',
            "alpn",
        )
    else:
        reader.elsewhere('expected only on mode = "http" frontends', *HTTP_KEYS)
    listen = reader.string("listen")
    if not listen.startswith("haproxy:"):
        reader.elsewhere(
            'expected only with a "haproxy:" listen string', "timeout_proxy_header"
        )
    frontend = FrontendConfig(
        name=reader.string("name", f"frontend{index}"),
        mode=mode,
        listen=listen,
        pool=pool,
        persistence=persistence,
        idle_timeout=(
            reader.optional_number("idle_timeout", bounds=bounds.TIMEOUT)
            if mode == "tcp"
            else None
        ),
        alpn=_alpn(reader) if mode == "tcp" else (),
        timeout_proxy_header=(
            reader.number("timeout_proxy_header", 10.0, bounds=bounds.TIMEOUT)
            if listen.startswith("haproxy:")
            else 10.0
        ),
        timeout_handshake=reader.number(
            "timeout_handshake", 10.0, bounds=bounds.TIMEOUT
        ),
        strict=reader.boolean("strict", False),
        persistence_timeout=reader.number(
            "persistence_timeout",
            PERSISTENCE_TIMEOUT,
            bounds=bounds.PERSISTENCE_TIMEOUT,
        ),
        http=_http_settings(reader) if mode == "http" else None,
        access_log=_access_log(reader),
        path=reader.path,
    )
    reader.finish()
    return frontend


def _access_log(reader: OptionReader) -> str | None:
    """
    Read C{access_log}: C{true} (the proxy's log), C{false}, C{"stdout"},
    or a file's absolute path.
    """
    value = reader.value("access_log", False)
    if value is True:
        return TO_LOG
    if value is False:
        return None
    if isinstance(value, str) and "\0" not in value:
        if value == TO_STDOUT or os.path.isabs(value):
            return value
    raise reader.fail("access_log", 'true, false, "stdout" or a file\'s absolute path')


def load_config(data: Mapping[str, object], registry: StrategyRegistry) -> ProxyConfig:
    """
    Validate parsed TOML and build the configuration.

    :param registry: where strategy names are looked up.
    :raises ConfigError: the first mistake, with its key path.
    """
    top = OptionReader(data, "")
    pools = {
        name: _pool(name, OptionReader(table, join_path("pool", name)))
        for name, table in _named_tables(top, "pool").items()
    }
    frontend_readers = top.tables("frontend", [])
    if not frontend_readers:
        raise ConfigError("frontend", "expected at least one [[frontend]] table")
    frontends = tuple(
        _frontend(r, i, pools, registry) for i, r in enumerate(frontend_readers)
    )
    names = [f.name for f in frontends]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise ConfigError(
                f"frontend[{index}].name", f"duplicate frontend name {name!r}"
            )
    admin = _admin(top.table("admin")) if top.has("admin") else None
    store = _store(top.table("store")) if top.has("store") else None
    state_dir = top.string("state_dir", ".")
    if not state_dir or "\0" in state_dir:
        raise top.fail("state_dir", "a directory path")
    shutdown_timeout = top.number(
        "shutdown_timeout", 30.0, bounds=bounds.SHUTDOWN_TIMEOUT
    )
    workers = read_workers(top.value("workers", 1), "workers")
    top.finish()
    return ProxyConfig(
        frontends=frontends,
        pools=pools,
        admin=admin,
        store=store,
        state_dir=state_dir,
        shutdown_timeout=shutdown_timeout,
        workers=workers,
    )


def cpu_count() -> int:
    """
    :returns: the CPUs this process may run on (its affinity, as C{taskset}
        or a container's cpuset sets it), at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def read_workers(value: object, path: str) -> int:
    """
    Read a worker count: an integer in L{bounds.WORKERS}, or C{"auto"},
    one per CPU (nginx's C{worker_processes auto}).

    :param path: what the error calls it (C{workers}, C{--workers}).
    :raises ConfigError: anything else.
    """
    if value == "auto":
        return cpu_count()
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and bounds.WORKERS.allows(value)
    ):
        return value
    raise ConfigError(
        path,
        f'expected {bounds.WORKERS.describe("an integer")} or "auto", '
        f"got {describe(value)}",
    )


#: Where each endpoint type's interface is when given positionally.
_INTERFACE_POSITION = {"tcp": 1, "tcp6": 1, "ssl": 5}
_LOOPBACK = {"tcp": "127.0.0.1", "tcp6": "\\:\\:1", "ssl": "127.0.0.1"}


def loopback_by_default(listen: str) -> str:
    """
    Bind an admin endpoint string to the loopback interface unless it
    names an interface: C{tcp:8081} listens on 127.0.0.1 (C{tcp6:} on
    C{::1}), so the admin API is never exposed by omission.  Exposing it
    takes an explicit C{interface=0.0.0.0}.
    """
    kind, colon, rest = listen.partition(":")
    if kind == "haproxy" and colon:
        # The listener strips the prefix: the endpoint behind it counts.
        return f"haproxy:{loopback_by_default(rest)}"
    position = _INTERFACE_POSITION.get(kind)
    if position is None or not colon:
        return listen
    arguments = re.split(r"(?<!\\):", rest)
    positional = [a for a in arguments if "=" not in a]
    if len(positional) > position or any(a.startswith("interface=") for a in arguments):
        return listen
    return f"{listen}:interface={_LOOPBACK[kind]}"


#: What a bearer token may hold (RFC 6750's b64token).
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def _admin(reader: OptionReader) -> AdminConfig:
    listen = reader.string("listen")
    if not listen:
        raise reader.fail("listen", "a Twisted server endpoint string, e.g. tcp:8081")
    token = reader.optional_string("token")
    token_file = reader.optional_string("token_file")
    if token is not None and token_file is not None:
        raise ConfigError(
            reader.key("token_file"), "expected either token or token_file, not both"
        )
    key = reader.key("token")
    if token_file is not None:
        key = reader.key("token_file")
        token = _read_token(token_file, key)
    if token is not None and not _TOKEN.fullmatch(token):
        # Never echoed: it is a secret.
        raise ConfigError(
            key,
            "expected a bearer token: letters, digits and -._~+/ (then any "
            "=), e.g. from: openssl rand -base64 24",
        )
    reader.finish()
    return AdminConfig(listen=loopback_by_default(listen), token=token)


_STORE_URL = (
    "a Redis URL: redis://[[user]:password@]host[:port][/db], the same "
    "with rediss:// for TLS, or unix:///path/to/redis.sock[?db=N&password=...]"
)
#: The query arguments of a C{rediss://} URL, each a path: the argument of
#: Twisted's C{tls:} client endpoint it becomes, and what it must name.
_TLS_PATHS = {
    "ssl_ca_path": ("trustRoots", os.path.isdir, "a directory"),
    "ssl_certfile": ("certificate", os.path.isfile, "a file"),
    "ssl_keyfile": ("privateKey", os.path.isfile, "a file"),
}
#: What a store prefix may hold: it starts every key and channel name.
_PREFIX = re.compile(r"[A-Za-z0-9._-]+")


def _store(reader: OptionReader) -> StoreConfig:
    url = reader.string("url")
    try:
        store = _store_url(url)
    except ValueError as error:
        # Not echoed: it may hold a password.
        raise ConfigError(
            reader.key("url"), f"expected {_STORE_URL}; {error}"
        ) from None
    prefix = reader.string("prefix", "stickyproxy")
    if not _PREFIX.fullmatch(prefix):
        raise reader.fail("prefix", "letters, digits, '.', '_' or '-'")
    timeout = reader.number("timeout", 0.05, bounds=bounds.PERSISTENCE_TIMEOUT)
    reader.finish()
    return attrs.evolve(store, timeout=timeout, prefix=prefix)


def _store_url(url: str) -> StoreConfig:
    """
    :raises ValueError: C{url} is not a Redis URL (saying why).
    """
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    known = {"db", "password"}
    if parts.scheme == "rediss":
        known.update(_TLS_PATHS)
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown query argument {unknown[0]!r}")
    password = parts.password
    if password is None and "password" in query:
        password = query["password"][-1]
    elif password is not None:
        password = urllib.parse.unquote(password)
    username = urllib.parse.unquote(parts.username) if parts.username else None
    db = query["db"][-1] if "db" in query else "0"
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError("no host")
        port = parts.port or 6379
        path = parts.path.lstrip("/")
        if path:
            db = path
        host = parts.hostname.replace(":", "\\:")
        kind = "tls" if parts.scheme == "rediss" else "tcp"
        endpoint = f"{kind}:host={host}:port={port}"
        if parts.scheme == "rediss":
            endpoint += _tls_arguments(query)
    elif parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError("expected an absolute socket path")
        endpoint = "unix:path=" + parts.path.replace(":", "\\:")
    else:
        raise ValueError(f"scheme {parts.scheme + ':' if parts.scheme else 'none'}")
    if not db.isdigit():
        raise ValueError(f"the database must be a number, not {db!r}")
    return StoreConfig(
        url=url,
        endpoint=endpoint,
        password=password,
        username=username,
        db=int(db),
    )


def _tls_arguments(query: dict[str, list[str]]) -> str:
    """
    The arguments of a C{tls:} client endpoint that the query of a
    C{rediss://} URL gives: its CA directory and client certificate.

    :raises ValueError: a path does not name what it must.
    """
    arguments = ""
    for name, (argument, exists, what) in _TLS_PATHS.items():
        if name in query:
            path = query[name][-1]
            if not exists(path):
                raise ValueError(f"{name} must be {what}, not {path!r}")
            arguments += f":{argument}=" + path.replace(":", "\\:")
    return arguments


def _read_token(path: str, key: str) -> str:
    """
    The token in a file (its first line, without surrounding whitespace).
    """
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().strip().splitlines()
    except OSError as error:
        raise ConfigError(key, f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"expected UTF-8 text in {path}") from None
    if len(lines) != 1 or not lines[0].strip():
        raise ConfigError(key, f"expected one line holding the token in {path}")
    return lines[0].strip()


def _named_tables(reader: OptionReader, name: str) -> dict[str, Mapping[str, object]]:
    tables = {}
    for key, value in reader.table(name).rest().items():
        if not isinstance(value, Mapping):
            raise ConfigError(join_path(name, key), "expected a table")
        tables[key] = value
    return tables


def read_config_file(path: str, registry: StrategyRegistry) -> ProxyConfig:
    """
    Read and validate a TOML config file.

    :raises ConfigError: the file cannot be read, is not TOML, or is wrong.
    """
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except OSError as error:
        raise ConfigError(
            path, f"cannot read the config file: {error.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, f"not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(path, f"not valid TOML: not UTF-8 text ({error})") from None
    return load_config(data, registry)
