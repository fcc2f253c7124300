"""
A real C{redis-server} for the end-to-end tests of proxies that share a
store: started on a free port of 127.0.0.1 with a directory of the test's
own and no persistence, stopped by its PID; and a tiny client (RESP over a
socket) to look at what the proxies wrote.

    redis = start_redis(self)            # in an E2ETestCase
    config += store_config(redis.port)   # the proxies' [store] table
    redis_command(redis.port, "GET", key)
    redis.kill(); start_redis(self, redis.port)   # lost, then back
    redis = start_redis(self, tls=(key, cert))    # TLS only (rediss://)
    redis_command(redis.port, "GET", key, ca=cert)
"""

from __future__ import annotations

import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.e2e._harness import (
    HOST,
    IO_TIMEOUT,
    STARTUP_TIMEOUT,
    E2ETestCase,
    Process,
    free_port,
    toml_table,
)


class RedisServer(Process):
    """
    A C{redis-server} process.

    :ivar port: where it listens on 127.0.0.1.
    :ivar ca: with TLS, the certificate to check it against.
    """

    port: int = 0
    ca: Path | None = None


class RedisError(Exception):
    """
    Redis answered with an error.
    """


def redis_server_path() -> str | None:
    """
    :returns: the C{redis-server} on C{PATH}, or C{None}.
    """
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """
    Skip the test unless C{redis-server} is installed.

    :returns: its path.
    """
    found = redis_server_path()
    if found is None:
        raise SkipTest(
            "no redis-server on PATH: apt-get install redis-server (.ci/run does)"
        )
    return found


def start_redis(
    test: E2ETestCase, port: int | None = None, tls: tuple[Path, Path] | None = None
) -> RedisServer:
    """
    Start C{redis-server} on 127.0.0.1 (on C{port}, or a free one), with no
    persistence, its directory in the test's, and wait until it answers
    C{PING}; a cleanup of C{test} stops it by PID.

    :param tls: a key and its (self-signed) certificate: the server then
        speaks TLS only, with them, and asks clients for no certificate.
    :raises SkipTest: C{redis-server} is not installed.
    """
    executable = require_redis_server()
    port = port if port is not None else free_port()
    directory = test.workdir / "redis"
    directory.mkdir(exist_ok=True)
    argv = [
        executable,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    if tls is not None:
        key, cert = (str(path) for path in tls)
        argv[1:3] = ["--port", "0", "--tls-port", str(port)]
        argv += ["--tls-cert-file", cert, "--tls-key-file", key]
        argv += ["--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
    server = test.start_process("redis", argv, kind=RedisServer)
    assert isinstance(server, RedisServer)
    server.port = port
    server.ca = tls[1] if tls is not None else None

    def answers() -> bool:
        try:
            return redis_command(port, "PING", ca=server.ca) == "PONG"
        except (OSError, RedisError):
            return False

    test.wait(
        answers, STARTUP_TIMEOUT, f"redis-server to answer on port {port}", server
    )
    return server


#: The tests' C{[store] timeout}: they check what proxies share, not the
#: bound on a request's wait (the unit tests do, on a clock), so the bound
#: is generous enough for a loaded machine, where a round trip to Redis
#: can take longer than the default 50 ms and a lookup would fall back to
#: this proxy's own choice.
STORE_TIMEOUT = 2.0


def store_config(port: int, **options: object) -> str:
    """
    The C{[store]} table of proxies that share the Redis on C{port}.
    """
    table = {"url": f"redis://{HOST}:{port}/0", "timeout": STORE_TIMEOUT, **options}
    return "\n".join(toml_table("store", table))


def redis_command(port: int, *args: str | bytes, ca: Path | None = None) -> Any:
    """
    Send one command to the Redis on C{port}, on a connection of its own
    (over TLS, checked against the certificate C{ca}, if given).

    :returns: the reply: C{str} for a status, C{bytes} for a bulk string,
        C{int}, C{None} for nil, or a list of those.
    :raises RedisError: Redis answered with an error.
    """
    parts = [a if isinstance(a, bytes) else a.encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
    )
    with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as plain:
        sock = plain
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            sock = context.wrap_socket(plain, server_hostname=HOST)
        sock.sendall(request)
        return _reply(sock.makefile("rb"))


def _reply(stream: Any) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_reply(stream) for _ in range(count)]
    raise OSError(f"not a Redis reply: {line!r}")
