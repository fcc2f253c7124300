"""
The client connections a frontend holds, so that a reload or a shutdown can
let them finish: one set per frontend factory, and a way to wait until it
is empty.

A protocol joins the set when its connection is made and leaves it when the
connection is lost: one set operation each way per connection, nothing per
request or per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, succeed

_C = TypeVar("_C")


class ClientSet(Generic[_C]):
    """
    The open client connections of one frontend.
    """

    def __init__(self) -> None:
        self._clients: set[_C] = set()
        self._waiting: list[Deferred[None]] = []

    def add(self, client: _C) -> None:
        """
        A client connection was made.
        """
        self._clients.add(client)

    def discard(self, client: _C) -> None:
        """
        A client connection was lost (again, or never added: no harm).
        """
        self._clients.discard(client)
        if not self._clients and self._waiting:
            waiting, self._waiting = self._waiting, []
            for done in waiting:
                done.callback(None)

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[_C]:
        # A copy: closing a client may discard it while the caller iterates.
        return iter(list(self._clients))

    def when_empty(self) -> Deferred[None]:
        """
        :returns: a L{Deferred} that fires once no connection is open (at
            once if none is).
        """
        if not self._clients:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        return done
