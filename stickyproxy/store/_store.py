"""
The proxy's one connection to its shared store (Redis): what the Redis
stick table, replicated admin state and shared session counts talk
through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from zope.interface import implementer

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from stickyproxy.config._load import StoreConfig
from stickyproxy.interfaces import ISharedStore
from stickyproxy.store._client import Connector, RedisConnection, TxRedisConnector

#: The first wait before connecting again, and the longest.
FIRST_RETRY = 0.1
LONGEST_RETRY = 5.0
#: How long connecting (and authenticating) may take.
CONNECT_TIMEOUT = 3.0
#: How often the store is pinged while up, and how long it may leave a
#: ping unanswered before it is taken for lost (a hung server, a network
#: that drops packets: the connection itself may never say so).
HEARTBEAT = 1.0
SILENCE = 3.0


class StoreUnavailable(Exception):
    """
    The store is not connected now: the caller goes on with what it knows.
    """


@implementer(ISharedStore)
@attrs.define(eq=False)
class RedisStore(Service):
    """
    The proxy's one connection to the shared store; reconnects by itself.

    Two connections to Redis make one store: one for commands, one for the
    channels subscribed to (a Redis connection that subscribes can send
    nothing else).  The store is L{up} while both are; when either is lost
    it drops the other, logs C{store lost: ...} once, fails every command
    at once with L{StoreUnavailable}, and connects again after a wait that
    doubles from L{FIRST_RETRY} to L{LONGEST_RETRY}; back, it subscribes
    again, logs C{store back after N s}, and calls every L{when_up}
    callback.

    :ivar clock: every wait and reconnection runs on it.
    :ivar connect: makes one connection (the real one, or a test's fake).
    :ivar prefix: the namespace of every key and channel (L{key}).
    :ivar timeout: the longest a request waits on the store, in seconds:
        those who ask the store on a request's path bound their wait with
        it, then go on with what they know.
    :ivar location: where the store is, for log lines (no password).
    :ivar losses: how many times the store was lost since the start.
    """

    log = Logger()

    clock: IReactorTime
    connect: Connector
    prefix: str = "stickyproxy"
    timeout: float = 0.05
    location: str = "the store"
    losses: int = attrs.field(init=False, default=0)
    _commands: RedisConnection | None = attrs.field(init=False, default=None)
    _subscriber: RedisConnection | None = attrs.field(init=False, default=None)
    _channels: dict[bytes, list[Callable[[bytes], None]]] = attrs.field(
        init=False, factory=dict
    )
    _up_callbacks: list[Callable[[], None]] = attrs.field(init=False, factory=list)
    _attempt: Deferred[Any] | None = attrs.field(init=False, default=None)
    _retry: IDelayedCall | None = attrs.field(init=False, default=None)
    _delay: float = attrs.field(init=False, default=FIRST_RETRY)
    _lost_at: float | None = attrs.field(init=False, default=None)
    _ever_up: bool = attrs.field(init=False, default=False)
    _heartbeat: LoopingCall | None = attrs.field(init=False, default=None)
    # When the ping not answered yet was sent.
    _ping_sent: float | None = attrs.field(init=False, default=None)

    @property
    def up(self) -> bool:
        """
        Whether the store is connected now.
        """
        return self._commands is not None

    # The API

    def key(self, *parts: str) -> str:
        """
        :returns: C{parts} joined with C{":"} under L{prefix}, the store's
            namespace (C{store.key("table", "web", "10.0.0.1")}).
        """
        return ":".join((self.prefix, *parts))

    def call(self, command: str, *args: object) -> Deferred[Any]:
        """
        Send a command to the store.

        :returns: a L{Deferred} with the reply (bulk strings as C{bytes});
            it fails at once with L{StoreUnavailable} while the store is
            down, later with the server's error or the connection's loss.
            It is never bounded here: callers on a request's path bound
            their wait with L{timeout}.
        """
        if self._commands is None:
            return fail(StoreUnavailable(f"{self.location} is not connected"))
        return self._commands.execute(command, *args)

    def subscribe(self, channel: str, receive: Callable[[bytes], None]) -> None:
        """
        Call C{receive} with each message published on C{channel} (a full
        name: make it with L{key}), from now on and across reconnections
        (messages published while the store is down are lost).
        """
        name = channel.encode("utf-8")
        receivers = self._channels.setdefault(name, [])
        receivers.append(receive)
        if len(receivers) == 1 and self._subscriber is not None:
            self._subscribe(self._subscriber, name)

    def publish(self, channel: str, message: bytes) -> Deferred[int]:
        """
        Publish C{message} on C{channel}.

        :returns: a L{Deferred} firing with how many subscribers got it
            (this proxy's own included), or failing like L{call}.
        """
        return self.call("PUBLISH", channel, message)

    def when_up(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} each time the store is connected: the first time,
        and after every loss (to read the state it holds and write back
        what was kept meanwhile).  Called at once too if it is up now.
        """
        self._up_callbacks.append(callback)
        if self.up:
            self._call_up(callback)

    # The service

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        self._drop()

    # Connecting

    def _connect(self) -> None:
        self._retry = None
        self._attempt = Deferred.fromCoroutine(self._open())
        self._attempt.addTimeout(CONNECT_TIMEOUT, self.clock)
        self._attempt.addErrback(self._failed)

    async def _open(self) -> None:
        commands = await self.connect(None)
        try:
            subscriber = await self.connect(self._received)
        except BaseException:
            commands.close()
            raise
        self._attempt = None
        if not self.running:
            commands.close()
            subscriber.close()
            return
        self._commands, self._subscriber = commands, subscriber
        for connection in (commands, subscriber):
            connection.when_lost().addCallback(self._connection_lost, connection)
        if self._commands is None:
            return  # one was lost already
        self._ping_sent = None
        self._heartbeat = LoopingCall(self._ping)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(HEARTBEAT, now=False)
        for channel in self._channels:
            self._subscribe(subscriber, channel)
        self._delay = FIRST_RETRY
        if self._lost_at is None:
            self.log.info("store connected: {location}", location=self.location)
        else:
            self.log.info(
                "store back after {downtime:.1f} s: {location}",
                downtime=self.clock.seconds() - self._lost_at,
                location=self.location,
            )
        self._lost_at = None
        self._ever_up = True
        for callback in list(self._up_callbacks):
            self._call_up(callback)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        reason = failure.getErrorMessage()
        if failure.check(TimeoutError):
            reason = f"no connection within {CONNECT_TIMEOUT:g} s"
        if not self.running:
            return
        if self._lost_at is None:
            self._lost_at = self.clock.seconds()
            if self._ever_up:
                self.losses += 1
                self.log.warn(
                    "store lost: {location}: {reason}",
                    location=self.location,
                    reason=reason,
                )
            else:
                self.log.warn(
                    "store unavailable: {location}: {reason}; serving with "
                    "what this proxy knows until it is back",
                    location=self.location,
                    reason=reason,
                )
        self._retry = self.clock.callLater(self._delay, self._connect)
        self._delay = min(self._delay * 2, LONGEST_RETRY)

    def _connection_lost(self, _: None, connection: RedisConnection) -> None:
        if connection not in (self._commands, self._subscriber):
            return  # one dropped on purpose
        self._drop()
        self._failed(Failure(StoreUnavailable("connection lost")))

    def _ping(self) -> None:
        """
        Ping the store, unless the last ping is still unanswered: past
        L{SILENCE}, the store is taken for lost.
        """
        now = self.clock.seconds()
        if self._ping_sent is None:
            self._ping_sent = now
            self.call("PING").addBoth(self._pong)
        elif now - self._ping_sent >= SILENCE:
            self._drop()
            self._failed(Failure(StoreUnavailable(f"no answer for {SILENCE:g} s")))

    def _pong(self, _: object) -> None:
        # An error reply is an answer too; a lost connection says so itself.
        self._ping_sent = None

    def _drop(self) -> None:
        """
        Forget both connections, closing them.
        """
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        connections = (self._commands, self._subscriber)
        self._commands = self._subscriber = None
        for connection in connections:
            if connection is not None:
                connection.close()

    # Subscriptions

    def _subscribe(self, subscriber: RedisConnection, channel: bytes) -> None:
        subscribed = subscriber.subscribe(channel)
        subscribed.addErrback(self._subscribe_failed, channel)

    def _subscribe_failed(self, failure: Failure, channel: bytes) -> None:
        if self._subscriber is None:
            return  # lost meanwhile: subscribed again when back
        self.log.failure(
            "store: subscribing to {channel} failed", failure, channel=channel
        )

    def _received(self, channel: bytes, message: bytes) -> None:
        for receive in list(self._channels.get(channel, ())):
            try:
                receive(message)
            except Exception:
                self.log.failure(
                    "store: a receiver of {channel} failed", channel=channel
                )

    def _call_up(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            self.log.failure("store: a when_up callback failed")


def build_store(config: StoreConfig, reactor: Any) -> RedisStore:
    """
    The store a C{[store]} table describes, connecting (once started)
    through C{reactor}.
    """
    return RedisStore(
        clock=reactor,
        connect=TxRedisConnector(
            reactor,
            config.endpoint,
            password=config.password,
            username=config.username,
            db=config.db,
        ),
        prefix=config.prefix,
        timeout=config.timeout,
        location=config.location,
    )
