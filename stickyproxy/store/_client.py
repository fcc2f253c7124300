"""
The client seam of the store: one connection to Redis, as
L{stickyproxy.store.RedisStore} uses it, and the real one over
C{txredisapi}'s protocol.

The store makes its connections through a L{Connector}, so unit tests give
it a fake (C{tests/_fakeredis.py}) driven by a L{twisted.internet.task.Clock}.
Only the protocol of C{txredisapi} is used: its factories reconnect on the
global reactor, which this project never touches; connecting, reconnection
and every timer are ours, on the injected reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

#: What a subscriber connection is told of each message: its channel and
#: payload.
Receiver = Callable[[bytes, bytes], None]


class RedisConnection(Protocol):
    """
    One connection to Redis, ready for commands (authenticated and on its
    database).
    """

    def execute(self, command: str, *args: object) -> Deferred[Any]:
        """
        Send one command.

        :returns: a L{Deferred} firing with the reply (bulk strings as
            C{bytes}, integers as C{int}, C{None} for nil, lists for
            arrays), or failing with the server's error, or with the
            connection's loss.
        """

    def subscribe(self, channel: bytes) -> Deferred[Any]:
        """
        Subscribe a subscriber connection to C{channel}.
        """

    def when_lost(self) -> Deferred[None]:
        """
        :returns: a L{Deferred} that fires once the connection is gone.
        """

    def close(self) -> None:
        """
        Drop the connection (what is still pending fails).
        """


class Connector(Protocol):
    """
    Makes connections to the store.
    """

    def __call__(self, receive: Receiver | None) -> Deferred[RedisConnection]:
        """
        Connect, authenticate and select the database.

        :param receive: for a subscriber connection, what it is told of each
            message; C{None} for a connection that sends commands.
        """


@attrs.define(eq=False)
class _TxRedisConnection:
    """
    A L{RedisConnection} over a C{txredisapi} protocol.
    """

    protocol: Any

    def execute(self, command: str, *args: object) -> Deferred[Any]:
        # It raises at once when the connection is gone.
        return maybeDeferred(self.protocol.execute_command, command, *args)

    def subscribe(self, channel: bytes) -> Deferred[Any]:
        return maybeDeferred(self.protocol.subscribe, [channel])

    def when_lost(self) -> Deferred[None]:
        if not self.protocol.connected:
            return succeed(None)
        lost: Deferred[None] = self.protocol.whenDisconnected().addCallback(
            lambda _: None
        )
        return lost

    def close(self) -> None:
        self.protocol.transport.abortConnection()


@attrs.frozen
class TxRedisConnector:
    """
    The real L{Connector}: C{txredisapi}'s protocol over a Twisted client
    endpoint (C{tcp:} or C{unix:}), its timers on C{reactor}.

    :ivar endpoint: the client endpoint string of the server.
    """

    reactor: Any
    endpoint: str
    password: str | None = attrs.field(default=None, repr=False)
    username: str | None = None
    db: int = 0

    def __call__(self, receive: Receiver | None) -> Deferred[RedisConnection]:
        # Imported here: the module installs the global reactor when
        # imported, which must not happen before twistd chose one.
        import txredisapi  # type: ignore[import-untyped]

        protocol = _protocol(txredisapi, receive)
        # Its only timer (resuming after a bulk reply) runs on our reactor.
        protocol.callLater = self.reactor.callLater
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False  # no "Starting factory" line per connection
        connected = clientFromString(self.reactor, self.endpoint).connect(factory)
        return Deferred.fromCoroutine(self._ready(connected))

    async def _ready(self, connected: Deferred[Any]) -> RedisConnection:
        protocol = await connected
        connection = _TxRedisConnection(protocol)
        try:
            await protocol.whenConnected()
            if self.password is not None:
                await connection.execute(
                    "AUTH", *filter(None, (self.username, self.password))
                )
            if self.db:
                await connection.execute("SELECT", self.db)
            # A connection is ready once the server answered: over TLS, the
            # handshake (and the check of the server's certificate) is done.
            await connection.execute("PING")
        except BaseException:
            connection.close()
            if protocol.lost is not None:
                protocol.lost.raiseException()  # why: a refused certificate...
            raise
        return connection


def _protocol(txredisapi: Any, receive: Receiver | None) -> Any:
    """
    A C{txredisapi} protocol that keeps why its connection was lost (as
    C{lost}), and, for a subscriber, hands each message to C{receive}.
    """
    base = (
        txredisapi.RedisProtocol if receive is None else txredisapi.SubscriberProtocol
    )

    class Protocol(base):  # type: ignore[misc,valid-type]
        lost: Failure | None = None

        def connectionLost(self, why: Failure) -> None:
            self.lost = why
            super().connectionLost(why)

        def messageReceived(
            self, pattern: object, channel: bytes, message: bytes
        ) -> None:
            if receive is not None:
                receive(channel, message)

    return Protocol(charset=None, convertNumbers=False)
