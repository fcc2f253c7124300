"""
Sending a chunk at once when a TCP transport has nothing queued.

Twisted's TCP transport queues every write and sends it when the reactor
next finds the socket writable.  For a splice, which passes each chunk it
reads straight on, that is an C{epoll_ctl} to watch for writability, a turn
of the loop, the C{send}, and an C{epoll_ctl} to stop watching: per chunk.
When nothing is queued, the chunk can go out now, in order, with one
C{send}; what the socket does not take is queued as before, so flow control
(producers paused at C{bufferSize}) is unchanged.

This reads the transport's queue, which Twisted does not publish; the
attributes are checked once, at import, and without them every write goes
the usual way.
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.interfaces import ITransport

#: Whether this Twisted's TCP transport has the queue this module reads
#: (the list part of it, C{_tempDataLen}, is set per transport, and read
#: with a default that takes the usual way).
KNOWN_QUEUE = all(
    hasattr(tcp.Connection, name)
    for name in (
        "dataBuffer",
        "disconnecting",
        "_writeDisconnecting",
        "_writeDisconnected",
        "writeSomeData",
    )
)


def send_now(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once when nothing is
    queued before it.

    An error (the peer gone) is not raised here: the bytes are queued, and
    the transport finds the error on its next write, as it would have.
    """
    if (
        KNOWN_QUEUE
        and isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataLen", 1)
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not getattr(transport, "_aborting", True)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent >= len(data):
                return
            data = data[sent:]
    transport.write(data)
