"""
Tests for the L4 proxy, L{stickyproxy.tcp}, over Twisted's fakes.
"""

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from stickyproxy import AdminState
from stickyproxy.core._balancers import RoundRobin
from stickyproxy.core._pool import Pool
from stickyproxy.core._proxyheader import v1_header, v2_header
from stickyproxy.core._proxyparser import ProxyHeaderParser
from stickyproxy.core._router import Router
from stickyproxy.model import Health
from stickyproxy.persistence._sourceip import source_ip
from stickyproxy.service import ListenerService
from stickyproxy.tcp._splice import TCPProxyFactory
from stickyproxy.testing import routing_context, tcp_backend

from tests._base import SpiedPool, TestCase

CLIENT = IPv4Address("TCP", "10.0.0.1", 5555)
LISTENER = IPv4Address("TCP", "192.0.2.9", 7000)


class HalfCloseTransport(StringTransport):
    """
    A L{StringTransport} that also records half-closes.
    """

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


class TCPTestCase(TestCase):
    """
    A TCP frontend on a pool of three backends, with source-ip persistence
    in a table, over a L{MemoryReactorClock}.
    """

    pool_type = Pool

    def setUp(self):
        self.reactor = MemoryReactorClock()
        backends = tuple(
            tcp_backend(self.reactor, name, port)
            for name, port in (("a", 9001), ("b", 9002), ("c", 9003))
        )
        self.pool = self.pool_type(
            "p", backends, RoundRobin(), connect_timeout=3.0, retries=2
        )
        self.strategy = source_ip.build({"mode": "table"}, self.pool, self.reactor, "p")
        self.router = Router(self.pool, [self.strategy], self.reactor)
        self.factory = TCPProxyFactory("front", self.router, self.reactor)

    def connect_client(self, peer=CLIENT):
        protocol = self.factory.buildProtocol(peer)
        transport = HalfCloseTransport(hostAddress=LISTENER, peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def accept_backend(self, index=-1):
        """
        Complete the pending backend connect number C{index}.
        """
        host, port, factory, timeout, bind = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = HalfCloseTransport()
        protocol.makeConnection(transport)
        return port, protocol, transport

    def refuse_backend(self, index=-1):
        factory = self.reactor.tcpClients[index][2]
        connector = self.reactor.connectors[index]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))


class TCPProxyTests(TCPTestCase):
    def test_paused_until_backend_connects(self):
        """
        The client is not read from until the backend is connected; then
        reading resumes and each transport produces for the other.
        """
        client, client_transport = self.connect_client()
        self.assertEqual(client_transport.producerState, "paused")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        _, backend, backend_transport = self.accept_backend()
        self.assertEqual(client_transport.producerState, "producing")
        self.assertIs(client_transport.producer, backend_transport)
        self.assertIs(backend_transport.producer, client_transport)
        self.assertTrue(client_transport.streaming)

    def test_bytes_both_ways(self):
        """
        Bytes are passed unchanged in both directions, including bytes the
        client sent before the backend connection was up.
        """
        client, client_transport = self.connect_client()
        client.dataReceived(b"early ")
        _, backend, backend_transport = self.accept_backend()
        client.dataReceived(b"request")
        backend.dataReceived(b"response")
        self.assertEqual(backend_transport.value(), b"early request")
        self.assertEqual(client_transport.value(), b"response")

    def test_backpressure(self):
        """
        When the client stops reading, the backend transport is paused (the
        producer registration does it), and resumed after.
        """
        client, client_transport = self.connect_client()
        _, backend, backend_transport = self.accept_backend()
        client_transport.producer.pauseProducing()
        self.assertEqual(backend_transport.producerState, "paused")
        client_transport.producer.resumeProducing()
        self.assertEqual(backend_transport.producerState, "producing")

    def test_half_close_passed_on(self):
        """
        A FIN from either side is passed on as a half-close; once both sides
        have finished sending, both connections are closed.
        """
        client, client_transport = self.connect_client()
        _, backend, backend_transport = self.accept_backend()
        client.readConnectionLost()
        self.assertTrue(backend_transport.write_closed)
        self.assertFalse(client_transport.disconnecting)
        backend.dataReceived(b"still answering")
        self.assertEqual(client_transport.value(), b"still answering")
        backend.readConnectionLost()
        self.assertTrue(client_transport.write_closed)
        self.assertTrue(client_transport.disconnecting)
        self.assertTrue(backend_transport.disconnecting)

    def test_half_close_before_connect(self):
        """
        A client that sends and half-closes before the backend is up has its
        bytes and its FIN delivered once it is.
        """
        client, _ = self.connect_client()
        client.dataReceived(b"all of it")
        client.readConnectionLost()
        _, _, backend_transport = self.accept_backend()
        self.assertEqual(backend_transport.value(), b"all of it")
        self.assertTrue(backend_transport.write_closed)

    def test_backend_closes(self):
        """
        When the backend connection ends, the client is closed cleanly and
        the backend no longer counts the client as active.
        """
        client, client_transport = self.connect_client()
        port, backend, _ = self.accept_backend()
        self.assertEqual(self.pool.get("a").active, 1)
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(client_transport.disconnecting)
        self.assertEqual(self.pool.get("a").active, 0)

    def test_client_closes(self):
        """
        When the client goes, the backend connection is closed and released
        once, however the two losses are ordered.
        """
        client, _ = self.connect_client()
        _, backend, backend_transport = self.accept_backend()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(backend_transport.disconnecting)
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.get("a").active, 0)

    def test_client_leaves_while_connecting(self):
        """
        A client that leaves before the backend answers cancels the connect.
        """
        client, _ = self.connect_client()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.pool.get("a").active, 0)

    def test_refused_retried_elsewhere(self):
        """
        A backend that refuses gets the client retried on another one; the
        client never notices, and is bound to where it landed.
        """
        client, client_transport = self.connect_client()
        self.refuse_backend()
        self.assertEqual(self.reactor.tcpClients[-1][1], 9002)
        port, backend, backend_transport = self.accept_backend()
        self.assertFalse(client_transport.disconnecting)
        client.dataReceived(b"hi")
        self.assertEqual(backend_transport.value(), b"hi")
        self.assertEqual(self.strategy.lookup(client.context).name, "b")

    def test_all_refused(self):
        """
        When every allowed attempt is refused, the client is closed (not
        left hanging).
        """
        client, client_transport = self.connect_client()
        for _ in range(3):
            self.refuse_backend()
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertTrue(client_transport.disconnecting)

    def test_connect_timeout(self):
        """
        A backend that does not answer within C{connect_timeout} is given up
        and the client retried elsewhere.
        """
        self.connect_client()
        self.reactor.advance(3.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_sticky(self):
        """
        A second connection from the same client goes where the first went,
        while the first is still open and after it closed.
        """
        client, _ = self.connect_client()
        self.refuse_backend()  # lands on b
        self.accept_backend()
        self.connect_client(IPv4Address("TCP", "10.0.0.1", 6000))
        self.assertEqual(self.reactor.tcpClients[-1][1], 9002)
        self.accept_backend()
        client.connectionLost(Failure(ConnectionDone()))
        self.connect_client(IPv4Address("TCP", "10.0.0.1", 6001))
        self.assertEqual(self.reactor.tcpClients[-1][1], 9002)

    def test_idle_timeout(self):
        """
        With C{idle_timeout}, a connection silent both ways that long is
        closed on both sides; traffic either way restarts the count.
        """
        self.factory.idle_timeout = 10.0
        client, client_transport = self.connect_client()
        _, backend, backend_transport = self.accept_backend()
        self.reactor.advance(6)
        backend.dataReceived(b"tick")
        self.reactor.advance(6)
        client.dataReceived(b"tock")
        self.reactor.advance(9)
        self.assertFalse(client_transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(client_transport.disconnecting)
        self.assertTrue(backend_transport.disconnecting)

    def test_no_idle_timeout_by_default(self):
        """
        Without C{idle_timeout}, silence never closes a connection.
        """
        _, client_transport = self.connect_client()
        self.accept_backend()
        self.reactor.advance(100000)
        self.assertFalse(client_transport.disconnecting)

    def test_send_proxy_v1(self):
        """
        With C{send_proxy = "v1"}, the backend first gets a PROXY v1 line
        naming the client and the address it connected to.
        """
        self.pool.send_proxy = "v1"
        client, _ = self.connect_client()
        client.dataReceived(b"payload")
        _, _, backend_transport = self.accept_backend()
        self.assertEqual(
            backend_transport.value(),
            b"PROXY TCP4 10.0.0.1 192.0.2.9 5555 7000\r\npayload",
        )

    def test_send_proxy_v2(self):
        """
        With C{send_proxy = "v2"}, the backend first gets a binary header
        that the parser reads back as the client's address.
        """
        self.pool.send_proxy = "v2"
        client, _ = self.connect_client()
        client.dataReceived(b"payload")
        _, _, backend_transport = self.accept_backend()
        info, rest = ProxyHeaderParser().feed(backend_transport.value())
        self.assertEqual((info.source.host, info.source.port), ("10.0.0.1", 5555))
        self.assertEqual(
            (info.destination.host, info.destination.port), ("192.0.2.9", 7000)
        )
        self.assertEqual(rest, b"payload")


class ReportTests(TCPTestCase):
    pool_type = SpiedPool

    def test_connects_reported_by_router(self):
        """
        A refused connect and the one that works reach passive health from
        the router, never from the splice.
        """
        self.connect_client()
        self.refuse_backend()
        self.accept_backend()
        self.assertEqual(
            [(signal, name, caller) for signal, name, _, caller in self.pool.reports],
            [
                ("failure", "a", "stickyproxy.core._router"),
                ("success", "b", "stickyproxy.core._router"),
            ],
        )


class ProxyHeaderTests(TestCase):
    def test_v1_round_trip_ipv6(self):
        """
        A v1 header for IPv6 addresses parses back to them.
        """
        src = IPv6Address("TCP", "2001:db8::1", 40000)
        dst = IPv6Address("TCP", "2001:db8::2", 443)
        info, _ = ProxyHeaderParser().feed(v1_header(src, dst))
        self.assertEqual((info.source.host, info.source.port), ("2001:db8::1", 40000))

    def test_v2_round_trip_ipv6(self):
        """
        A v2 header for IPv6 addresses parses back to them.
        """
        src = IPv6Address("TCP", "2001:db8::1", 40000)
        dst = IPv6Address("TCP", "2001:db8::2", 443)
        info, _ = ProxyHeaderParser().feed(v2_header(src, dst))
        self.assertEqual(
            (ipaddress.ip_address(info.destination.host), info.destination.port),
            (ipaddress.ip_address("2001:db8::2"), 443),
        )

    def test_mixed_families(self):
        """
        An IPv4 client on an IPv6 listener is sent as IPv4-mapped IPv6.
        """
        src = IPv4Address("TCP", "10.0.0.1", 1)
        dst = IPv6Address("TCP", "::1", 2)
        info, _ = ProxyHeaderParser().feed(v1_header(src, dst))
        self.assertEqual(
            ipaddress.ip_address(info.source.host),
            ipaddress.ip_address("::ffff:10.0.0.1"),
        )

    def test_unknown(self):
        """
        A client that is not on TCP/IP (a UNIX socket) is sent as unknown
        (v1) or LOCAL (v2).
        """
        from twisted.internet.address import UNIXAddress

        src, dst = UNIXAddress(b"/a"), UNIXAddress(b"/b")
        self.assertEqual(v1_header(src, dst), b"PROXY UNKNOWN\r\n")
        self.assertEqual(v2_header(src, dst)[12:13], b"\x20")

    def test_addresses_read_once(self):
        """
        The addresses of a pair of hosts are parsed and written once: the
        next headers between them differ in their ports only, and are
        built without reading an address again.
        """
        from stickyproxy.core import _proxyheader

        parsed = []

        def ip_address(host):
            parsed.append(host)
            return ipaddress.ip_address(host)

        self.patch(_proxyheader, "ip_address", ip_address)
        _proxyheader._v1_start.cache_clear()
        _proxyheader._v2_start.cache_clear()
        dst = IPv4Address("TCP", "192.0.2.200", 80)
        headers = [
            (v1_header(src, dst), v2_header(src, dst))
            for src in (
                IPv4Address("TCP", "192.0.2.100", 40000),
                IPv4Address("TCP", "192.0.2.100", 40001),
            )
        ]
        self.assertEqual(
            [v1 for v1, _ in headers],
            [
                b"PROXY TCP4 192.0.2.100 192.0.2.200 40000 80\r\n",
                b"PROXY TCP4 192.0.2.100 192.0.2.200 40001 80\r\n",
            ],
        )
        info, _ = ProxyHeaderParser().feed(headers[1][1])
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.100", 40001))
        self.assertEqual(len(parsed), 4)  # v1 and v2: two hosts each, once


class ProxyHeaderReceiverTests(TestCase):
    """
    Clients behind another load balancer: C{haproxy:} listen strings.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        backend = tcp_backend(self.reactor, "a", 9001)
        pool = Pool("p", (backend,), RoundRobin())
        self.strategy = source_ip.build({"mode": "table"}, pool, self.reactor, "p")
        router = Router(pool, [self.strategy], self.reactor)
        factory = TCPProxyFactory("front", router, self.reactor)
        ListenerService(self.reactor, "haproxy:tcp:7000", factory, "listen").bind()
        wrapping_factory = self.reactor.tcpServers[0][1]
        self.wrapper = wrapping_factory.buildProtocol(None)
        self.transport = HalfCloseTransport(
            peerAddress=IPv4Address("TCP", "192.0.2.100", 33333), hostAddress=LISTENER
        )
        self.wrapper.makeConnection(self.transport)

    def accept_backend(self):
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(None)
        transport = HalfCloseTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_routes_on_real_client(self):
        """
        Nothing is routed until the header is read; then the client's
        address from the header is the one routing (and the binding) uses,
        and bytes after the header reach the backend.
        """
        self.assertEqual(self.reactor.tcpClients, [])
        self.wrapper.dataReceived(b"PROXY TCP4 203.0.113.5 192.0.2.9 4000 7000\r\nhel")
        self.wrapper.dataReceived(b"lo")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(
            self.wrapper.wrappedProtocol.context.client_host, "203.0.113.5"
        )
        _, backend_transport = self.accept_backend()
        self.assertEqual(backend_transport.value(), b"hello")
        self.assertEqual(self.strategy.lookup(routing_context("203.0.113.5")).name, "a")

    def test_v2_in_pieces(self):
        """
        A v2 header that arrives a few bytes at a time is read whole.
        """
        header = v2_header(
            IPv6Address("TCP", "2001:db8::7", 1234),
            IPv6Address("TCP", "2001:db8::1", 7000),
        )
        for i in range(0, len(header), 5):
            self.wrapper.dataReceived(header[i : i + 5])
        self.assertEqual(
            ipaddress.ip_address(self.wrapper.wrappedProtocol.context.client_host),
            ipaddress.ip_address("2001:db8::7"),
        )

    def test_garbage_closes(self):
        """
        A connection that does not start with a PROXY header is closed
        without being routed.
        """
        self.wrapper.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_silent_client_closed(self):
        """
        A client that sends no PROXY header is closed after
        C{timeout_proxy_header} (10 s by default), without being routed.
        """
        self.reactor.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])

    def logged_until_deadline(self, data: bytes = b"") -> list[str]:
        """
        What is logged while the client sends C{data} and the header's
        deadline passes.
        """
        with capturedLogs() as events:
            if data:
                self.wrapper.dataReceived(data)
            self.reactor.advance(10)
        return [formatEvent(event) for event in events]

    def test_silent_client_logged(self):
        """
        A client closed for sending no PROXY header in time is logged once,
        with the frontend and the client's address: a load balancer that
        sends none must show up in the log, not just as closed connections.
        """
        self.assertEqual(
            self.logged_until_deadline(),
            [
                "stickyproxy TCP frontend 'front': closed 192.0.2.100: "
                "no PROXY header within 10 s"
            ],
        )

    def test_garbage_logged(self):
        """
        A client closed for sending something else than a PROXY header is
        logged once, with what was wrong, and is not logged again when the
        header's deadline passes.
        """
        self.assertEqual(
            self.logged_until_deadline(b"GET / HTTP/1.1\r\n\r\n"),
            [
                "stickyproxy TCP frontend 'front': closed 192.0.2.100: "
                "no valid PROXY header (not a PROXY header)"
            ],
        )

    def test_header_bounded_as_a_whole(self):
        """
        The bound is on the whole header, not on silence between its bytes:
        one trickled a byte a second is cut off at the deadline.
        """
        header = b"PROXY TCP4 203.0.113.5 192.0.2.9 4000 7000\r\n"
        for byte in header[:10]:
            self.wrapper.dataReceived(bytes([byte]))
            self.reactor.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_header_in_time_stops_timer(self):
        """
        Once the header is read, its timer is gone: the connection lives on
        as long as the proxied protocol wants.
        """
        self.reactor.advance(9)
        self.wrapper.dataReceived(b"PROXY TCP4 203.0.113.5 192.0.2.9 4000 7000\r\n")
        self.accept_backend()
        self.reactor.advance(100)
        self.assertFalse(self.transport.disconnecting)

    def test_configured_timeout(self):
        """
        The listener takes its bound from the frontend's
        C{timeout_proxy_header}, and the clock it is given.
        """
        reactor = MemoryReactorClock()
        factory = TCPProxyFactory(
            "front", Router(Pool("p", (), RoundRobin()), [], reactor), reactor
        )
        ListenerService(reactor, "haproxy:tcp:7000", factory, "listen", 2.5).bind()
        wrapper = reactor.tcpServers[0][1].buildProtocol(None)
        transport = HalfCloseTransport(hostAddress=LISTENER, peerAddress=CLIENT)
        wrapper.makeConnection(transport)
        reactor.advance(2.4)
        self.assertFalse(transport.disconnecting)
        reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_half_close_through(self):
        """
        A half-close from the client passes through the wrapper to the backend.
        """
        self.wrapper.dataReceived(b"PROXY TCP4 203.0.113.5 192.0.2.9 4000 7000\r\n")
        _, backend_transport = self.accept_backend()
        self.wrapper.readConnectionLost()
        self.assertTrue(backend_transport.write_closed)
        self.assertFalse(self.transport.disconnecting)


class OnDownTests(TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        backend = tcp_backend(self.reactor, "a", 9001)
        self.pool = Pool("p", (backend,), RoundRobin())
        self.factory = TCPProxyFactory(
            "front", Router(self.pool, [], self.reactor), self.reactor
        )

    def splice(self):
        client = self.factory.buildProtocol(CLIENT)
        client_transport = HalfCloseTransport(hostAddress=LISTENER, peerAddress=CLIENT)
        client.makeConnection(client_transport)
        protocol = self.reactor.tcpClients[-1][2].buildProtocol(None)
        backend_transport = HalfCloseTransport()
        protocol.makeConnection(backend_transport)
        return client_transport, backend_transport

    def test_close(self):
        """
        With C{on_down = "close"}, a backend going down closes its open
        connections so their clients reconnect to a healthy backend.
        """
        self.pool.on_down = "close"
        client_transport, backend_transport = self.splice()
        self.pool.set_health(self.pool.get("a"), Health.DOWN, "test")
        self.assertTrue(client_transport.disconnecting)
        self.assertTrue(backend_transport.disconnected)

    def test_keep(self):
        """
        By default (C{on_down = "keep"}), open connections run on.
        """
        client_transport, _ = self.splice()
        self.pool.set_health(self.pool.get("a"), Health.DOWN, "test")
        self.assertFalse(client_transport.disconnecting)

    def test_removed_close(self):
        """
        With C{on_down = "close"}, removing a backend (from maintenance)
        closes its open connections, as its going down would.
        """
        self.pool.on_down = "close"
        client_transport, backend_transport = self.splice()
        self.pool.set_admin_state("a", AdminState.MAINT)
        self.assertFalse(client_transport.disconnecting)
        self.pool.remove("a")
        self.assertTrue(client_transport.disconnecting)
        self.assertTrue(backend_transport.disconnected)
        self.assertEqual(self.factory._open, {})

    def test_removed_keep(self):
        """
        With C{on_down = "keep"}, they run on to their end, and the frontend
        keeps nothing for the removed backend.
        """
        client_transport, _ = self.splice()
        self.pool.set_admin_state("a", AdminState.MAINT)
        self.pool.remove("a")
        self.assertFalse(client_transport.disconnecting)
        self.assertEqual(self.factory._open, {})
