"""
Runtime admin states shared by every proxy of a store: a drain, maint,
ready or weight change made through one proxy reaches all the others.

Each change is written to a hash in the store (so a proxy that starts, or
comes back after losing the store, reads the current states first) and
published on a channel (so the running ones apply it at once).  A change
carries when it was made and by which proxy; of two changes to one
backend, the later wins everywhere (ties go to the greater proxy id).
Health is not shared: every proxy probes for itself.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.core._adminsync import AdminSync
from stickyproxy.core._pool import Pool
from stickyproxy.interfaces import ISharedStore
from stickyproxy.model import AdminRecord


def proxy_id() -> str:
    """
    :returns: a name for this proxy process that no other shares and that
        log lines can be read by: its host, its process id, and a few
        random characters (two containers may have the same host name and
        process id).
    """
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@attrs.frozen(order=True)
class Stamp:
    """
    When and where a change was made: the later change wins.

    :ivar at: the clock's seconds (the epoch's, so hosts whose clocks agree
        agree on the order).
    :ivar proxy: the id of the proxy that made it, to break ties.
    """

    at: float
    proxy: str


@attrs.frozen
class _Held:
    """
    The change a backend's state here comes from, as the store holds it.
    """

    stamp: Stamp
    message: bytes


def _encode(stamp: Stamp, record: AdminRecord) -> bytes:
    return json.dumps(
        {"at": stamp.at, "proxy": stamp.proxy, "record": record.to_json()},
        separators=(",", ":"),
    ).encode("utf-8")


def _decode(message: bytes) -> tuple[Stamp, AdminRecord]:
    """
    :raises ValueError: C{message} is not one L{_encode} wrote.
    """
    data = json.loads(message)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    at, proxy, record = data.get("at"), data.get("proxy"), data.get("record")
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise ValueError(f"at: expected a number, got {at!r}")
    if not isinstance(proxy, str) or not isinstance(record, dict):
        raise ValueError("proxy and record: expected a string and an object")
    return Stamp(float(at), proxy), AdminRecord.from_json(record)


def _field(pool: str, backend: str) -> str:
    # JSON, so that no pool or backend name can make two fields one.
    return json.dumps([pool, backend], separators=(",", ":"))


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """
    The fields and values of an C{HGETALL} reply (a flat list, or a dict).
    """
    if isinstance(reply, Mapping):
        return list(reply.items())
    items = list(reply or ())
    return list(zip(items[::2], items[1::2], strict=True))


class SharedAdminState:
    """
    Keeps the runtime admin state of this proxy's backends the same as on
    every other proxy of the store.

    Subscribe L{sync} to the proxy's event stream and call L{start}: each
    admin change made here is written to the hash C{store.key("admin")}
    and published on the channel C{store.key("admin", "changes")}; each
    one published by another proxy is applied here, unless this proxy
    holds a later one for that backend (which it then writes back, so the
    hash ends with the later one even when two writes crossed).  Each time
    the store is up (at the start, and after every loss) the hash is read
    and applied the same way, and changes made here while the store was
    away are written and published then.

    :ivar id: this proxy's id (L{proxy_id}): it names the origin of the
        changes it makes, and its own messages are ignored.
    """

    log = Logger()

    def __init__(
        self,
        store: ISharedStore,
        pools: Callable[[], Mapping[str, Pool]],
        clock: IReactorTime,
        id: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.id = id if id is not None else proxy_id()
        self.sync = AdminSync(pools, self._changed_here)
        self._hash = store.key("admin")
        self._channel = store.key("admin", "changes")
        self._held: dict[str, _Held] = {}
        self._counted: Callable[[], Deferred[None]] | None = None

    def start(self, counted: Callable[[], Deferred[None]] | None = None) -> None:
        """
        Follow the other proxies' changes, and read the states the store
        holds each time it is up.

        :param counted: reads the shared session counts: called first each
            time the store is up, so that a drain read from the store does
            not end at once for want of them.
        """
        self._counted = counted
        self.store.subscribe(self._channel, self._received)
        self.store.when_up(self._up)

    def _up(self) -> None:
        if self._counted is None:
            self._read_all()
        else:
            self._counted().addCallback(lambda _: self._read_all())

    def _changed_here(self, record: AdminRecord) -> None:
        stamp = Stamp(self.clock.seconds(), self.id)
        field = _field(record.pool, record.backend)
        self._held[field] = held = _Held(stamp, _encode(stamp, record))
        if self.store.up:
            self._write(field, held)
        # Otherwise it is written when the store is back (_read_all).

    def _write(self, field: str, held: _Held) -> None:
        """
        Write a change to the hash, then publish it (in that order on one
        connection: whoever hears of it and reads the hash finds it).
        """
        self.store.call("HSET", self._hash, field, held.message).addErrback(
            self._failed, "writing an admin state"
        )
        self.store.publish(self._channel, held.message).addErrback(
            self._failed, "publishing an admin state"
        )

    def _failed(self, failure: Failure, doing: str) -> None:
        # The store logs its loss once; the change is written again when it
        # is back, from what _held keeps.
        self.log.warn(
            "store: {doing} failed: {reason}",
            doing=doing,
            reason=failure.getErrorMessage(),
        )

    def _received(self, message: bytes) -> None:
        self._consider(message, "a published admin change")

    def _consider(self, message: bytes, what: str) -> Stamp | None:
        """
        Apply a change from the store unless this proxy holds a later one
        for that backend (then written back).

        :returns: the change's stamp, or C{None} if it cannot be read.
        """
        try:
            stamp, record = _decode(message)
        except ValueError as error:
            self.log.warn(
                "store: ignoring {what} that cannot be read: {error}",
                what=what,
                error=str(error),
            )
            return None
        field = _field(record.pool, record.backend)
        held = self._held.get(field)
        if held is not None and held.stamp >= stamp:
            if held.stamp > stamp and self.store.up:
                self._write(field, held)
            return stamp
        if stamp.proxy == self.id:
            return stamp
        if self.sync.apply(record, stamp.proxy):
            self._held[field] = _Held(stamp, message)
        return stamp

    def _read_all(self) -> None:
        self.store.call("HGETALL", self._hash).addCallbacks(
            self._apply_all, self._failed, errbackArgs=("reading admin states",)
        )

    def _apply_all(self, reply: Any) -> None:
        stored = set()
        for field, message in _pairs(reply):
            if self._consider(message, "a stored admin state") is not None:
                stored.add(field.decode("utf-8") if isinstance(field, bytes) else field)
        # What the store lacks (changed here while it was away, or it lost
        # its data) is written, and reaches the others, now; what it holds
        # older was written back by _consider.
        for field, held in list(self._held.items()):
            if field not in stored:
                self._write(field, held)
