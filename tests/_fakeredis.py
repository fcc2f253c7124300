"""
A fake Redis for unit tests, driven by a L{twisted.internet.task.Clock}:
L{FakeRedis} holds the data and answers the commands the proxy sends;
L{FakeRedis.connector} is the L{stickyproxy.store.Connector} a
L{stickyproxy.store.RedisStore} connects through.

The server can be made slow (C{latency}: every reply waits that long on
the clock), silent (C{silent}: replies never come), failing (C{fail_with}:
every command fails), refusing (C{refusing}: connects fail), hanging
(C{hanging}: connects never complete), and it can
drop its connections (L{FakeRedis.disconnect}) or lose its data
(L{FakeRedis.flush}, as a restart without persistence does).

Commands answer as C{txredisapi} with C{charset=None} does: bulk strings
as C{bytes}, integers as C{int}, C{"OK"} as a C{str}, nil as C{None}.
Add the commands you need to L{FakeRedis.commands}.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import attrs

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock


class FakeRedisError(Exception):
    """
    An error reply (what C{txredisapi.ResponseError} is for the real one).
    """


def _text(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, float):
        return format(value, "f").encode()
    return str(value).encode()


@attrs.define(eq=False)
class FakeConnection:
    """
    One connection to a L{FakeRedis}.
    """

    server: FakeRedis
    receive: Callable[[bytes, bytes], None] | None
    lost: Deferred[None] = attrs.field(factory=Deferred)
    pending: list[Deferred[Any]] = attrs.field(factory=list)
    channels: set[bytes] = attrs.field(factory=set)
    sent: list[tuple[Any, ...]] = attrs.field(factory=list)

    @property
    def open(self) -> bool:
        return not self.lost.called

    def execute(self, command: str, *args: object) -> Deferred[Any]:
        if not self.open:
            return fail(ConnectionDone("not connected"))
        self.sent.append((command.upper(), *args))
        return self._reply(lambda: self.server.run(command, args))

    def subscribe(self, channel: bytes) -> Deferred[Any]:
        if not self.open:
            return fail(ConnectionDone("not connected"))

        def run() -> object:
            self.channels.add(_text(channel))
            return [b"subscribe", channel, len(self.channels)]

        return self._reply(run)

    def _reply(self, run: Callable[[], object]) -> Deferred[Any]:
        server = self.server
        if server.fail_with is not None:
            return fail(FakeRedisError(server.fail_with))
        result: Deferred[Any] = Deferred()
        self.pending.append(result)

        def answer() -> None:
            if result in self.pending:
                self.pending.remove(result)
                try:
                    value = run()
                except FakeRedisError as error:
                    result.errback(error)
                else:
                    result.callback(value)

        if server.silent:
            return result
        if server.latency:
            server.clock.callLater(server.latency, answer)
        else:
            answer()
        return result

    def when_lost(self) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        self.lost.addBoth(lambda _: waiting.callback(None))
        return waiting

    def close(self) -> None:
        if not self.open:
            return
        if self in self.server.connections:
            self.server.connections.remove(self)
        self.lost.callback(None)
        pending, self.pending = self.pending, []
        for result in pending:
            result.errback(ConnectionDone("connection lost"))


@attrs.define(eq=False)
class FakeRedis:
    """
    The fake server: strings (with expiry on the clock), hashes, sorted
    sets and pub/sub.

    :ivar data: every key's value (C{bytes}, C{dict} or C{dict} of member
        to score for a sorted set).
    :ivar expires: keys' expiry times on the clock.
    """

    clock: Clock
    latency: float = 0.0
    silent: bool = False
    refusing: bool = False
    hanging: bool = False
    fail_with: str | None = None
    data: dict[bytes, Any] = attrs.field(factory=dict)
    expires: dict[bytes, float] = attrs.field(factory=dict)
    connections: list[FakeConnection] = attrs.field(factory=list)
    connects: int = 0

    def connector(
        self, receive: Callable[[bytes, bytes], None] | None
    ) -> Deferred[FakeConnection]:
        """
        Connect (a L{stickyproxy.store.Connector}).
        """
        self.connects += 1
        if self.refusing:
            return fail(ConnectionRefusedError("fake redis refuses"))
        if self.hanging:
            return Deferred()  # a connect (or AUTH) that never completes
        connection = FakeConnection(self, receive)
        self.connections.append(connection)
        return succeed(connection)

    def disconnect(self) -> None:
        """
        Drop every connection (as a server that stops does).
        """
        for connection in list(self.connections):
            connection.close()

    def flush(self) -> None:
        """
        Lose every key (as a restart without persistence does).
        """
        self.data.clear()
        self.expires.clear()

    # Commands

    def _live(self, key: bytes) -> bool:
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= self.clock.seconds():
            del self.expires[key]
            self.data.pop(key, None)
        return key in self.data

    def get_value(self, key: str | bytes) -> Any:
        """
        The value of C{key} now (for assertions), or C{None}.
        """
        key = _text(key)
        return self.data[key] if self._live(key) else None

    def ttl(self, key: str | bytes) -> float | None:
        """
        The seconds C{key} has left, or C{None} when it does not expire.
        """
        key = _text(key)
        if not self._live(key) or key not in self.expires:
            return None
        return self.expires[key] - self.clock.seconds()

    def run(self, command: str, args: tuple[object, ...]) -> object:
        name = command.upper()
        handler = getattr(self, f"_{name.lower()}", None)
        if handler is None:
            raise FakeRedisError(f"unknown command '{name}'")
        return handler(*[_text(a) for a in args])

    def _set_expiry(self, key: bytes, milliseconds: bytes) -> None:
        self.expires[key] = self.clock.seconds() + int(milliseconds) / 1000

    def _ping(self) -> str:
        return "PONG"

    def _get(self, key: bytes) -> bytes | None:
        return self.data[key] if self._live(key) else None

    def _getex(self, key: bytes, *options: bytes) -> bytes | None:
        value = self._get(key)
        upper = [o.upper() for o in options]
        if value is not None and b"PX" in upper:
            self._set_expiry(key, options[upper.index(b"PX") + 1])
        return value

    def _mget(self, *keys: bytes) -> list[bytes | None]:
        return [self._get(key) for key in keys]

    def _set(self, key: bytes, value: bytes, *options: bytes) -> str | None:
        upper = [o.upper() for o in options]
        exists = self._live(key)
        if (b"NX" in upper and exists) or (b"XX" in upper and not exists):
            return None
        self.data[key] = value
        self.expires.pop(key, None)
        if b"PX" in upper:
            self._set_expiry(key, options[upper.index(b"PX") + 1])
        elif b"EX" in upper:
            seconds = options[upper.index(b"EX") + 1]
            self._set_expiry(key, str(int(seconds) * 1000).encode())
        return "OK"

    def _del(self, *keys: bytes) -> int:
        removed = 0
        for key in keys:
            if self._live(key):
                del self.data[key]
                self.expires.pop(key, None)
                removed += 1
        return removed

    def _pexpire(self, key: bytes, milliseconds: bytes) -> int:
        if not self._live(key):
            return 0
        self._set_expiry(key, milliseconds)
        return 1

    def _pttl(self, key: bytes) -> int:
        if not self._live(key):
            return -2
        if key not in self.expires:
            return -1
        return round((self.expires[key] - self.clock.seconds()) * 1000)

    def _keys(self, pattern: bytes) -> list[bytes]:
        return [
            key
            for key in list(self.data)
            if self._live(key) and fnmatch.fnmatchcase(key, pattern)
        ]

    def _scan(self, cursor: bytes, *options: bytes) -> list[Any]:
        """
        Everything in one go (cursor 0 back), as a small database may.
        """
        upper = [o.upper() for o in options]
        pattern = options[upper.index(b"MATCH") + 1] if b"MATCH" in upper else b"*"
        return [b"0", self._keys(pattern)]

    def _hset(self, key: bytes, *pairs: bytes) -> int:
        table = self.data[key] if self._live(key) else {}
        self.data[key] = table
        added = 0
        for field, value in zip(pairs[::2], pairs[1::2], strict=True):
            added += field not in table
            table[field] = value
        return added

    def _hget(self, key: bytes, field: bytes) -> bytes | None:
        return self.data[key].get(field) if self._live(key) else None

    def _hgetall(self, key: bytes) -> list[bytes]:
        if not self._live(key):
            return []
        return [item for pair in self.data[key].items() for item in pair]

    def _hdel(self, key: bytes, *fields: bytes) -> int:
        if not self._live(key):
            return 0
        return sum(self.data[key].pop(field, None) is not None for field in fields)

    def _zadd(self, key: bytes, *pairs: bytes) -> int:
        members = self.data[key] if self._live(key) else {}
        self.data[key] = members
        added = 0
        for score, member in zip(pairs[::2], pairs[1::2], strict=True):
            added += member not in members
            members[member] = float(score)
        return added

    def _zrem(self, key: bytes, *members: bytes) -> int:
        if not self._live(key):
            return 0
        return sum(self.data[key].pop(m, None) is not None for m in members)

    def _zremrangebyscore(self, key: bytes, low: bytes, high: bytes) -> int:
        if not self._live(key):
            return 0
        members = self.data[key]
        gone = [m for m, s in members.items() if _score(low) <= s <= _score(high)]
        for member in gone:
            del members[member]
        return len(gone)

    def _zcard(self, key: bytes) -> int:
        return len(self.data[key]) if self._live(key) else 0

    def _publish(self, channel: bytes, message: bytes) -> int:
        receivers = [c for c in self.connections if channel in c.channels]
        for connection in receivers:
            if connection.receive is not None:
                connection.receive(channel, message)
        return len(receivers)


def _score(text: bytes) -> float:
    return float(text)  # "-inf" and "+inf" too
