"""
Tests for L{stickyproxy.core._sending.send_now}: a chunk goes out at once
when a TCP transport has nothing queued, and every other way keeps
Twisted's order and error handling.
"""

from __future__ import annotations

import errno

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from stickyproxy.core._sending import KNOWN_QUEUE, send_now

from tests._base import TestCase


class FakeSocket:
    """
    A non-blocking socket that takes up to C{room} bytes per C{send} (all
    when C{None}), or raises C{error}.
    """

    def __init__(self, room: int | None = None, error: OSError | None = None):
        self.room = room
        self.error = error
        self.sent: list[bytes] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 42

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = bytes(data[: self.room] if self.room is not None else data)
        self.sent.append(taken)
        return len(taken)


def connection(socket: FakeSocket) -> tuple[tcp.Connection, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    transport = tcp.Connection(socket, Protocol(), reactor)  # type: ignore[arg-type]
    transport.connected = True
    return transport, reactor


class SendNowTests(TestCase):
    def test_twisted_has_the_queue(self):
        """
        This Twisted's TCP transport has the queue C{send_now} reads;
        without it the fast path is off (and this test tells why).
        """
        self.assertTrue(KNOWN_QUEUE)

    def test_empty_queue_sends_at_once(self):
        """
        With nothing queued, the chunk is sent by this call: the transport
        does not ask the reactor to watch for writability.
        """
        socket = FakeSocket()
        transport, reactor = connection(socket)
        send_now(transport, b"chunk")
        self.assertEqual(socket.sent, [b"chunk"])
        self.assertEqual(reactor.getWriters(), [])

    def test_partial_send_queues_the_rest(self):
        """
        What the socket does not take is queued, to go when it is writable.
        """
        socket = FakeSocket(room=2)
        transport, reactor = connection(socket)
        send_now(transport, b"chunk")
        self.assertEqual(socket.sent, [b"ch"])
        self.assertEqual(reactor.getWriters(), [transport])
        socket.room = None
        transport.doWrite()
        self.assertEqual(socket.sent, [b"ch", b"unk"])

    def test_queued_bytes_go_first(self):
        """
        With bytes already queued, the chunk is queued behind them, not
        sent ahead of them.
        """
        socket = FakeSocket(room=0)
        transport, reactor = connection(socket)
        send_now(transport, b"first")
        socket.room = None
        send_now(transport, b"second")
        self.assertEqual(socket.sent, [b""])
        transport.doWrite()
        self.assertEqual(socket.sent, [b"", b"firstsecond"])

    def test_would_block_queues(self):
        """
        A socket that would block takes nothing; the chunk is queued.
        """
        socket = FakeSocket(error=BlockingIOError(errno.EWOULDBLOCK, "full"))
        transport, reactor = connection(socket)
        send_now(transport, b"chunk")
        self.assertEqual(reactor.getWriters(), [transport])

    def test_error_left_to_the_transport(self):
        """
        A send error is not raised to the caller: the chunk is queued and
        the transport reports the lost connection when it next writes.
        """
        socket = FakeSocket(error=ConnectionResetError(errno.ECONNRESET, "reset"))
        transport, reactor = connection(socket)
        send_now(transport, b"chunk")
        self.assertEqual(reactor.getWriters(), [transport])
        self.assertIsInstance(transport.doWrite(), Exception)

    def test_closing_transport_queues(self):
        """
        A transport that is closing takes the usual way, so its close is
        not overtaken.
        """
        socket = FakeSocket()
        transport, reactor = connection(socket)
        transport.disconnecting = True
        send_now(transport, b"chunk")
        self.assertEqual(socket.sent, [])

    def test_aborted_transport_sends_nothing(self):
        """
        After C{abortConnection}, nothing more is sent (Twisted drops later
        writes; sending at once must not get them out before the reset).
        """
        socket = FakeSocket()
        transport, reactor = connection(socket)
        transport.abortConnection()
        send_now(transport, b"chunk")
        self.assertEqual(socket.sent, [])

    def test_other_transports_write(self):
        """
        A transport that is not Twisted's TCP one (TLS, a test transport)
        is written to as usual.
        """
        transport = StringTransport()
        send_now(transport, b"chunk")
        self.assertEqual(transport.value(), b"chunk")
