"""
Tests for the L7 proxy, L{stickyproxy.http}, over Twisted's fakes.
"""

import gc
import ipaddress
import tracemalloc

import attrs
from zope.interface import implementer

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from stickyproxy import AdminState
from stickyproxy.config._settings import HTTPSettings
from stickyproxy.core._balancers import RoundRobin
from stickyproxy.core._cookies import make_set_cookie
from stickyproxy.core._pool import Pool
from stickyproxy.core._router import Router
from stickyproxy.http._accesslog import AccessLog
from stickyproxy.http._backend import BackendConnections, BackendHTTP
from stickyproxy.http._frontend import HTTPProxyFactory, write_body
from stickyproxy.interfaces import IPersistenceStrategy, IResponseReceiver
from stickyproxy.persistence._sourceip import client_address
from stickyproxy.testing import make_backend, tcp_backend

from tests._base import SpiedPool, TestCase

CLIENT = IPv4Address("TCP", "192.0.2.10", 50000)


@implementer(IPersistenceStrategy)
@attrs.define
class RecordingStrategy:
    """
    Binds by a C{who} cookie to the backend it names, and sets it on
    responses: enough persistence to watch what the frontend does with a
    strategy, without any real one.
    """

    pool: Pool
    name: str = "recording"
    persisted: list = attrs.Factory(list)
    released: list = attrs.Factory(list)
    seen: list = attrs.Factory(list)

    def lookup(self, context):
        self.seen.append(context)
        who = context.cookie("who")
        context.remove_cookie("who")
        return self.pool.get(who) if who else None

    def persist(self, context, backend):
        self.persisted.append((context.status, backend.name))
        if context.cookie("who") != backend.name:
            context.add_response_header(
                b"set-cookie", make_set_cookie("who", backend.name).render()
            )

    def release(self, context, backend):
        self.released.append(backend.name)


class HalfCloseTransport(StringTransport):
    def loseWriteConnection(self):
        self.write_closed = True


class HTTPTestCase(TestCase):
    settings = HTTPSettings(
        timeout_request=10, timeout_response=30, timeout_keepalive=60
    )
    pool_type = Pool

    def setUp(self):
        self.reactor = MemoryReactorClock()
        backends = tuple(
            tcp_backend(self.reactor, name, port)
            for name, port in (("a", 9001), ("b", 9002))
        )
        self.pool = self.pool_type("p", backends, RoundRobin(), retries=1)
        self.strategy = RecordingStrategy(self.pool)
        self.router = Router(self.pool, [self.strategy], self.reactor)
        self.factory = HTTPProxyFactory("web", self.router, self.reactor, self.settings)
        self.backends = []  # (port, protocol, transport) in connect order

    def client(self, peer=CLIENT):
        protocol = self.factory.buildProtocol(peer)
        transport = StringTransport(
            peerAddress=peer, hostAddress=IPv4Address("TCP", "192.0.2.1", 80)
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def accept(self):
        """
        Complete the newest pending backend connect.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[len(self.backends)]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.backends.append((port, protocol, transport))
        return protocol, transport

    def exchange(self, request, response, client=None):
        """
        Send one request through a client, let the next backend answer it.
        """
        protocol, transport = client or self.client()
        protocol.dataReceived(request)
        if len(self.reactor.tcpClients) > len(self.backends):
            backend, backend_transport = self.accept()
        else:
            _, backend, backend_transport = self.backends[-1]
        forwarded = backend_transport.value()
        backend_transport.clear()
        backend.dataReceived(response)
        answer = transport.value()
        transport.clear()
        return forwarded, answer, (protocol, transport)

    def forwarded(self):
        """
        What the proxy wrote to the backend connection it used last (made
        now if it is pending).
        """
        if len(self.reactor.tcpClients) > len(self.backends):
            self.accept()
        return self.backends[-1][2].value()

    def mid_response(self):
        """
        A client whose backend has sent the head of its response and 3 of
        its 10 body bytes.

        :returns: the client's protocol and transport, the backend's.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, backend_transport = self.accept()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        return protocol, transport, backend, backend_transport


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class ForwardingTests(HTTPTestCase):
    def test_request_head_rewritten(self):
        """
        The request goes on as HTTP/1.1 with its headers, hop-by-hop ones
        (and those named in Connection) removed, and X-Forwarded-For/-Proto/
        -Host added (X-Forwarded-For appended to).
        """
        forwarded, answer, _ = self.exchange(
            b"GET /p?q=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Private\r\n"
            b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
            b"Proxy-Authorization: Basic eA==\r\nX-Forwarded-For: 198.51.100.7\r\n"
            b"Accept: */*\r\n\r\n",
            OK,
        )
        head = forwarded.split(b"\r\n")
        self.assertEqual(head[0], b"GET /p?q=1 HTTP/1.1")
        self.assertIn(b"host: shop.example", head)
        self.assertIn(b"accept: */*", head)
        self.assertIn(b"x-forwarded-for: 198.51.100.7, 192.0.2.10", head)
        self.assertIn(b"x-forwarded-proto: http", head)
        self.assertIn(b"x-forwarded-host: shop.example", head)
        for dropped in (
            b"connection",
            b"x-private",
            b"keep-alive",
            b"te",
            b"proxy-authorization",
        ):
            self.assertFalse([h for h in head if h.startswith(dropped + b":")], dropped)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(answer.endswith(b"\r\n\r\nok"))

    def test_response_hop_by_hop(self):
        """
        Hop-by-hop response headers (and those named in Connection) are not
        passed to the client.
        """
        _, answer, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\n"
            b"Keep-Alive: timeout=5\r\nX-Public: 2\r\ncontent-length: 0\r\n\r\n",
        )
        self.assertIn(b"x-public: 2", answer)
        self.assertNotIn(b"x-internal", answer)
        self.assertNotIn(b"keep-alive", answer)

    def test_forwarded_rfc7239(self):
        """
        With C{forwarded = true}, an RFC 7239 Forwarded header is added.
        """
        self.factory.settings = attrs.evolve(self.settings, forwarded=True)
        protocol, transport = self.client()
        protocol.settings = self.factory.settings
        forwarded, _, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", OK, (protocol, transport)
        )
        self.assertIn(
            b'forwarded: for=192.0.2.10;proto=http;host="a.example"', forwarded
        )

    def test_forwarded_appended_from_trusted(self):
        """
        A Forwarded header from a trusted proxy is kept and our element is
        appended; one from anyone else is dropped.
        """
        self.factory.settings = attrs.evolve(
            self.settings,
            forwarded=True,
            trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
        )
        proxy = IPv4Address("TCP", "10.1.1.1", 4000)
        forwarded, _, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=203.0.113.9\r\n\r\n",
            OK,
            self.client(proxy),
        )
        self.assertIn(
            b'forwarded: for=203.0.113.9, for=10.1.1.1;proto=http;host="a"\r\n',
            forwarded,
        )
        forwarded, _, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=203.0.113.9\r\n\r\n",
            OK,
        )
        self.assertNotIn(b"203.0.113.9", forwarded)

    def test_keep_alive_reuses_backend_connection(self):
        """
        Keep-alive both ways: a second request on the client connection is
        answered, and reuses the idle backend connection of the same backend.
        """
        self.strategy_bind = None
        _, first, client = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        self.assertIn(b"set-cookie: who=a", first)
        _, second, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=a\r\n\r\n", OK, client
        )
        self.assertTrue(second.startswith(b"HTTP/1.1 200"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.strategy.released, ["a", "a"])

    def test_http10_client(self):
        """
        An HTTP/1.0 client without keep-alive gets its answer and a close;
        a chunked response reaches it unchunked.
        """
        _, answer, (_, transport) = self.exchange(
            b"GET / HTTP/1.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        self.assertIn(b"connection: close", answer)
        self.assertNotIn(b"transfer-encoding", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nhi"))
        self.assertTrue(transport.disconnecting)

    def test_chunked_both_ways(self):
        """
        A chunked request body is re-chunked to the backend; a chunked
        response is re-chunked to an HTTP/1.1 client.
        """
        forwarded, answer, _ = self.exchange(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        self.assertIn(b"transfer-encoding: chunked", forwarded)
        self.assertTrue(forwarded.endswith(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))
        self.assertTrue(
            answer.endswith(
                b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
        )

    def test_close_delimited_response(self):
        """
        A backend response delimited by closing its connection reaches an
        HTTP/1.1 client chunked, and the client connection stays open.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, backend_transport = self.accept()
        backend.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nuntil")
        backend.dataReceived(b" close")
        backend.connectionLost(Failure(ConnectionDone()))
        answer = transport.value()
        self.assertIn(b"transfer-encoding: chunked", answer)
        self.assertTrue(answer.endswith(b"5\r\nuntil\r\n6\r\n close\r\n0\r\n\r\n"))
        self.assertFalse(transport.disconnecting)

    def test_streaming_request_body(self):
        """
        A request body is passed on as it arrives, not buffered whole;
        the client is read only once the backend is connected, and then
        the client transport produces for the backend's (backpressure).
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345"
        )
        self.assertEqual(transport.producerState, "paused")
        backend, backend_transport = self.accept()
        self.assertEqual(transport.producerState, "producing")
        self.assertIs(backend_transport.producer, transport)
        self.assertTrue(backend_transport.value().endswith(b"\r\n\r\n12345"))
        protocol.dataReceived(b"67890")
        self.assertTrue(backend_transport.value().endswith(b"1234567890"))
        self.assertIsNone(backend_transport.producer)

    def test_streaming_response_backpressure(self):
        """
        While a response streams, the backend transport produces for the
        client's: a slow client pauses reading from the backend.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, backend_transport = self.accept()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nabc")
        self.assertIs(transport.producer, backend_transport)
        transport.producer.pauseProducing()
        self.assertEqual(backend_transport.producerState, "paused")
        backend.dataReceived(b"def")
        self.assertIsNone(transport.producer)
        self.assertEqual(backend_transport.producerState, "producing")

    def test_pipelined_in_order(self):
        """
        Pipelined requests are answered in the order they came, one at a
        time.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        backend, backend_transport = self.accept()
        self.assertIn(b"GET /1 ", backend_transport.value())
        self.assertNotIn(b"GET /2 ", backend_transport.value())
        backend.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1")
        self.assertEqual(len(self.reactor.tcpClients), 2)  # round-robin: b
        backend2, backend2_transport = self.accept()
        self.assertIn(b"GET /2 ", backend2_transport.value())
        backend2.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2")
        answers = transport.value().split(b"HTTP/1.1 200 OK")
        self.assertTrue(answers[1].endswith(b"1") and answers[2].endswith(b"2"))

    def test_head(self):
        """
        A response to HEAD has no body, whatever its Content-Length says,
        and ends the exchange.
        """
        _, answer, (protocol, transport) = self.exchange(
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
        )
        self.assertIn(b"content-length: 1000", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n"))
        _, again, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK, (protocol, transport)
        )
        self.assertTrue(again.endswith(b"ok"))

    def test_continue(self):
        """
        An interim 100 Continue from the backend is relayed, then the final
        response.
        """
        _, answer, _ = self.exchange(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
            b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
        )
        self.assertTrue(
            answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
        )


class StatusTests(HTTPTestCase):
    def assertRefused(self, request, status):
        protocol, transport = self.client()
        protocol.dataReceived(request)
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 %d " % status), answer)
        self.assertIn(b"connection: close", answer)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_smuggling_rejected(self):
        """
        Ambiguous or malformed framing is refused with 400 and nothing
        reaches a backend.
        """
        for request in [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ]:
            self.assertRefused(request, 400)

    def test_version(self):
        """
        Versions other than HTTP/1.0 and 1.1 get 505.
        """
        self.assertRefused(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505)

    def test_header_limits(self):
        """
        Too many headers, or too large a head, get 431; too long a target 414.
        """
        many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", 431)
        big = b"X-Big: " + b"v" * 40000 + b"\r\n"
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n", 431)
        self.assertRefused(
            b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414
        )

    def test_body_limit(self):
        """
        With C{max_body_size}, a larger Content-Length gets 413 at once, and
        a chunked body that grows past it gets 413 when it does.
        """
        self.factory.settings = attrs.evolve(self.settings, max_body_size=5)
        self.assertRefused(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n", 413
        )
        protocol, transport = self.client()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        backend, backend_transport = self.accept()
        protocol.dataReceived(b"3\r\nabc\r\n3\r\ndef\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        self.assertTrue(backend_transport.disconnecting)

    def test_no_backend(self):
        """
        With no usable backend, the client gets 503 with Retry-After.
        """
        for backend in self.pool.backends:
            self.pool.set_admin_state(backend.name, AdminState.MAINT)
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b"retry-after: 5", answer)

    def test_backend_garbage(self):
        """
        A backend that answers something that is not HTTP gets the client a
        502, and its connection is dropped; the client may go on.
        """
        _, answer, (protocol, transport) = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"SSH-2.0-OpenSSH\r\n"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "))
        self.assertTrue(self.backends[0][2].disconnecting)

    def test_backend_closes_early(self):
        """
        A backend that closes before answering gets the client a 502.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, _ = self.accept()
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "))

    def test_backend_timeout(self):
        """
        A backend that does not answer within C{timeout_response} gets the
        client a 504.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.accept()
        self.reactor.advance(29)
        self.assertEqual(transport.value(), b"")
        reported = []

        class Passive:
            def connect_failed(self, backend, reason):
                reported.append((backend.name, reason))

        self.pool.passive = Passive()
        self.reactor.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertEqual(reported, [("a", "no response in time")])

    def test_slow_request_head(self):
        """
        A request head not complete within C{timeout_request} gets 408,
        however slowly its bytes keep coming.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n")
        for _ in range(9):
            protocol.dataReceived(b"X")
            self.reactor.advance(1)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_slow_head_on_idle_keep_alive(self):
        """
        On a keep-alive connection, a request head that begins after a
        while idle has C{timeout_request} from its first byte, however its
        bytes are split, not what was left of C{timeout_keepalive}.
        """
        _, _, (protocol, transport) = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK
        )
        transport.clear()
        self.reactor.advance(30)
        protocol.dataReceived(b"GET / HT")
        self.reactor.advance(5)
        protocol.dataReceived(b"TP/1.1\r\n")
        self.reactor.advance(4.5)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.5)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_idle_keep_alive(self):
        """
        A keep-alive connection idle for C{timeout_keepalive} is closed.
        """
        _, _, (_, transport) = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        self.reactor.advance(59)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_idle_connections_share_one_call(self):
        """
        The idle connections of a frontend are timed by one pending reactor
        call between them, not one each, and are still closed after their
        timeout (C{timeout_request}: no request came).
        """
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        clients = [self.client() for _ in range(10)]
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(9.9)
        self.assertFalse(any(transport.disconnecting for _, transport in clients))
        self.reactor.advance(0.1)
        self.assertTrue(all(transport.disconnecting for _, transport in clients))

    def idle_footprint(self):
        """
        Open 100 keep-alive connections, each idle after one request with
        20 headers (over 2 KB of them).

        :returns: the bytes each keeps (tracemalloc), CPython's and the
            fake transport's included.
        """
        headers = b"".join(b"x-header-%d: %s\r\n" % (i, b"v" * 40) for i in range(20))
        request = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=a\r\n" + headers + b"\r\n"
        self.exchange(request, OK)  # its backend connection serves the others
        count = 100
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            clients = [self.exchange(request, OK)[2] for _ in range(count)]
            self.strategy.seen.clear()  # the test's own record of requests
            gc.collect()  # what requests left in reference cycles is not kept
            size = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(self.backends), 1)
        self.assertFalse(any(transport.disconnecting for _, transport in clients))
        return size / count

    def test_idle_connection_footprint(self):
        """
        An idle keep-alive connection keeps nothing of the request it
        served (its 20 headers alone are over 2 KB) and no queue of its
        own: one costs its protocol, parser, timer and transport, under
        3.5 KB here (CPython 3.11, the fake transport and clock included).
        """
        self.assertLess(self.idle_footprint(), 3500)

    def test_idle_connection_no_parser_nor_call(self):
        """
        An idle keep-alive connection keeps no request parser (about 900
        bytes) and no reactor call of its own (about 450): it costs under
        1.5 KB here, the fake transport included.
        """
        self.assertLess(self.idle_footprint(), 1500)

    def test_parser_made_at_first_byte(self):
        """
        A keep-alive connection between requests has no parser; the next
        request, sent a byte at a time, is read by one made at its first
        byte.
        """
        request = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
        _, _, client = self.exchange(request, OK)
        protocol, transport = client
        self.assertIsNone(protocol._parser)
        for i in range(len(request)):
            protocol.dataReceived(request[i : i + 1])
        self.assertTrue(self.forwarded().startswith(b"GET /next HTTP/1.1"))

    def test_pipelined_head_kept(self):
        """
        A request head begun behind another request's (pipelined) is read
        on once that request is answered: its parser is not dropped.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HT")
        backend, backend_transport = self.accept()
        backend_transport.clear()
        backend.dataReceived(OK)
        protocol.dataReceived(b"TP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(self.forwarded().startswith(b"GET /two HTTP/1.1"))
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 1)

    def test_others_keep_being_served(self):
        """
        One client's bad request does not disturb another's exchange.
        """
        good, good_transport = self.client()
        good.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, _ = self.accept()
        bad, bad_transport = self.client(IPv4Address("TCP", "192.0.2.66", 1))
        bad.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertTrue(bad_transport.value().startswith(b"HTTP/1.1 400"))
        backend.dataReceived(OK)
        self.assertTrue(good_transport.value().startswith(b"HTTP/1.1 200"))


class BodyDeadlineTests(HTTPTestCase):
    """
    The whole request body must arrive within C{timeout_body}, plus a second
    for every C{body_min_rate} bytes received (issue 8, defect 4).
    """

    settings = HTTPSettings(
        timeout_request=10,
        timeout_response=60,
        timeout_keepalive=60,
        timeout_body=20,
        body_min_rate=100,
    )

    def post(self, length):
        """
        A client that has sent the head of a POST of C{length} body bytes,
        routed to a connected backend.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % length
        )
        backend, backend_transport = self.accept()
        return protocol, transport, backend, backend_transport

    def test_trickled_body_gets_408(self):
        """
        A body trickled a few bytes a second (never idle long enough for
        any inactivity timeout) gets C{408} once C{timeout_body} and the
        credit of the bytes it sent have passed; the client connection is
        closed, and so is the backend connection, rather than kept for
        another request.
        """
        protocol, transport, backend, backend_transport = self.post(1000)
        for _ in range(20):
            protocol.dataReceived(b"xxxxx")  # 100 bytes in 20 s: 1 s of credit
            self.reactor.advance(1)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertIn(b"the request body took too long", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertTrue(backend_transport.disconnected)
        self.assertEqual(len(self.factory.connections[self.pool.get("a")]), 0)

    def test_strict_deadline(self):
        """
        With C{body_min_rate = 0}, C{timeout_body} is a plain deadline,
        however fast the body comes.
        """
        self.factory.settings = attrs.evolve(self.settings, body_min_rate=0)
        protocol, transport, _, _ = self.post(100000)
        for _ in range(20):
            protocol.dataReceived(b"x" * 1000)
            self.reactor.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_fair_upload_not_cut(self):
        """
        A body that keeps up more than C{body_min_rate} arrives whole,
        however long past C{timeout_body} it takes.
        """
        protocol, transport, backend, backend_transport = self.post(60 * 200)
        for _ in range(60):
            protocol.dataReceived(b"x" * 200)
            self.reactor.advance(1)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(backend_transport.value().endswith(b"x" * 200))
        backend.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))

    def test_deadline_ends_with_body(self):
        """
        Once the body is complete, its deadline no longer runs: a backend
        that takes longer than C{timeout_body} to answer is given
        C{timeout_response}, and its connection is kept.
        """
        protocol, transport, backend, _ = self.post(2)
        protocol.dataReceived(b"hi")
        self.reactor.advance(50)
        backend.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual(len(self.factory.connections[self.pool.get("a")]), 1)


class PersistenceHookTests(HTTPTestCase):
    def test_persist_at_response_head(self):
        """
        Strategies record the binding once the response head is in, and
        their response headers reach the client; their request changes
        (a removed cookie) reach the backend.
        """
        forwarded, answer, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=b; theme=dark\r\n\r\n",
            b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        )
        self.assertEqual(self.strategy.persisted, [(201, "b")])
        self.assertIn(b"cookie: theme=dark\r\n", forwarded)
        self.assertNotIn(b"who=", forwarded)
        self.assertEqual(self.backends[0][0], 9002)

    def test_debug_header(self):
        """
        With C{debug_header}, responses say which strategy decided and how.
        """
        self.factory.settings = attrs.evolve(self.settings, debug_header=b"x-sticky")
        _, answer, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=b\r\n\r\n", OK
        )
        self.assertIn(b"x-sticky: recording; hit; backend=b", answer)

    def test_redispatch_header(self):
        """
        A client bound to a backend in maintenance goes elsewhere, and with
        C{redispatch_header} the new backend is told where the session was;
        a client cannot send that header itself.
        """
        self.factory.settings = attrs.evolve(self.settings, redispatch_header=b"x-was")
        self.pool.set_admin_state("b", AdminState.MAINT)
        forwarded, answer, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=b\r\nX-Was: forged\r\n\r\n", OK
        )
        self.assertEqual(self.backends[0][0], 9001)
        self.assertIn(b"x-was: b\r\n", forwarded)
        self.assertNotIn(b"forged", forwarded)
        self.assertIn(b"set-cookie: who=a", answer)

    def from_trusted_proxy(self, headers):
        """
        Send one request with C{headers} from a proxy the frontend trusts.

        :returns: the routing contexts the strategy saw.
        """
        self.factory.settings = attrs.evolve(
            self.settings, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),)
        )
        proxy = IPv4Address("TCP", "10.1.1.1", 4000)
        self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n", OK, self.client(proxy)
        )
        return self.strategy.seen

    def test_trusted_proxies(self):
        """
        Behind a trusted proxy, the client is the right-most untrusted
        address of X-Forwarded-For, and X-Forwarded-Proto: https makes the
        request secure.
        """
        seen = self.from_trusted_proxy(
            b"X-Forwarded-For: 203.0.113.9, 10.2.2.2\r\nX-Forwarded-Proto: https\r\n"
        )
        self.assertEqual((seen[0].client_host, seen[0].secure), ("203.0.113.9", True))

    def test_empty_forwarded_for_hops(self):
        """
        Empty items of X-Forwarded-For name nobody: the client is the
        right-most untrusted address, as source-ip's own C{trusted_proxies}
        finds it.
        """
        seen = self.from_trusted_proxy(
            b"X-Forwarded-For: 203.0.113.9, , 10.2.2.2\r\nX-Forwarded-For: \r\n"
        )
        self.assertEqual(seen[0].client_host, "203.0.113.9")
        self.assertEqual(
            client_address(seen[0], self.factory.settings.trusted_proxies),
            "203.0.113.9",
        )

    def test_untrusted_forwarded_for_ignored(self):
        """
        From an untrusted peer, X-Forwarded-For does not change the client.
        """
        self.factory.settings = attrs.evolve(
            self.settings, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),)
        )
        seen = self.strategy.seen
        self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"X-Forwarded-Proto: https\r\n\r\n",
            OK,
        )
        self.assertEqual((seen[0].client_host, seen[0].secure), ("192.0.2.10", False))


class ConnectionTests(HTTPTestCase):
    def test_client_leaves_mid_response(self):
        """
        A client that leaves mid-response has its backend connection
        aborted (not reused) and released.
        """
        protocol, _, backend, backend_transport = self.mid_response()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(backend_transport.disconnecting)
        self.assertEqual(self.pool.get("a").active, 0)
        self.assertEqual(len(self.factory.connections[self.pool.get("a")]), 0)

    def test_client_leaves_while_connecting(self):
        """
        A client that leaves before the backend connection is up cancels it.
        """
        protocol, _ = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.pool.get("a").active, 0)

    def test_stale_idle_connection_retried(self):
        """
        A request sent on an idle keep-alive connection the backend had just
        closed is sent again on a fresh one, to the same backend under the
        same decision: the strategy is not asked again (it took its cookie
        off the request already) and the balancer does not move the client.
        """
        _, _, client = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        protocol, transport = client
        protocol.dataReceived(b"GET /2 HTTP/1.1\r\nHost: a\r\nCookie: who=a\r\n\r\n")
        _, old_backend, _ = self.backends[0]
        old_backend.connectionLost(Failure(ConnectionDone()))
        new_backend, new_transport = self.accept()
        self.assertIn(b"GET /2 ", new_transport.value())
        new_backend.dataReceived(OK)
        self.assertTrue(transport.value().endswith(b"ok"))
        self.assertEqual(self.backends[1][0], 9001)
        self.assertEqual(self.strategy.persisted, [(200, "a"), (200, "a")])
        self.assertEqual(len(self.strategy.seen), 2)
        self.assertEqual([b.active for b in self.pool.backends], [0, 0])

    def test_idle_pool_bounded(self):
        """
        At most C{keepalive} idle connections are kept per backend, and an
        idle one is closed after C{keepalive_timeout}.
        """
        self.pool.keepalive_timeout = 30.0
        connections = self.factory.connections[self.pool.get("a")]
        connections.max_idle = 1
        clients = [self.client(IPv4Address("TCP", "192.0.2.10", p)) for p in (1, 2)]
        for protocol, _ in clients:
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=a\r\n\r\n")
        (first, first_t), (second, second_t) = self.accept(), self.accept()
        first.dataReceived(OK)
        second.dataReceived(OK)
        self.assertEqual(len(connections), 1)
        self.assertTrue(second_t.disconnecting)
        self.reactor.advance(30)
        self.assertEqual(len(connections), 0)
        self.assertTrue(first_t.disconnecting)

    def test_idle_pool_holds_a_burst(self):
        """
        By default the backend connections a burst of concurrent requests
        opened are all kept when their responses end, for the next burst:
        none is closed only to be opened again.
        """
        connections = self.factory.connections[self.pool.get("a")]
        clients = [self.client(IPv4Address("TCP", "192.0.2.10", p)) for p in range(64)]
        for protocol, _ in clients:
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=a\r\n\r\n")
        opened = [self.accept() for _ in clients]
        for backend, _ in opened:
            backend.dataReceived(OK)
        self.assertEqual(len(connections), 64)
        self.assertFalse(any(transport.disconnecting for _, transport in opened))

    def test_upgrade_tunnel(self):
        """
        An upgrade request is routed like any other; after the backend's
        101, bytes go both ways untouched.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n"
        )
        backend, backend_transport = self.accept()
        forwarded = backend_transport.value()
        self.assertIn(b"connection: upgrade\r\nupgrade: websocket\r\n", forwarded)
        self.assertIn(b"sec-websocket-key: x", forwarded)
        backend_transport.clear()
        backend.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: y\r\n\r\n\x81\x02hi"
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"upgrade: websocket", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n\x81\x02hi"))
        protocol.dataReceived(b"\x81\x82abcdXY")
        self.assertEqual(backend_transport.value(), b"\x81\x82abcdXY")
        self.assertEqual(self.strategy.persisted, [(101, "a")])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(backend_transport.disconnecting)
        self.assertEqual(self.pool.get("a").active, 0)

    def test_send_proxy(self):
        """
        A pool that sends the PROXY protocol sends it first on each backend
        connection, which is then never shared between clients.
        """
        self.pool.send_proxy = "v1"
        self.factory = HTTPProxyFactory("web", self.router, self.reactor, self.settings)
        forwarded, _, client = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        self.assertTrue(
            forwarded.startswith(b"PROXY TCP4 192.0.2.10 192.0.2.1 50000 80\r\nGET")
        )
        self.assertEqual(len(self.factory.connections[self.pool.get("a")]), 0)

    def test_backend_down_closes_idle(self):
        """
        When a backend goes down, its idle keep-alive connections are closed.
        """
        from stickyproxy.model import Health

        _, _, _ = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        connections = self.factory.connections[self.pool.get("a")]
        self.assertEqual(len(connections), 1)
        self.pool.set_health(self.pool.get("a"), Health.DOWN, "test")
        self.assertEqual(len(connections), 0)
        self.assertTrue(self.backends[0][2].disconnecting)


class FailoverTests(HTTPTestCase):
    """
    The exchange tells the router what went wrong, and the router decides
    whether the request goes again; nothing reaches the pool but through
    the router.
    """

    pool_type = SpiedPool

    def reported(self):
        """
        What the pool heard, after checking that only the router told it.
        """
        callers = {caller for _, _, _, caller in self.pool.reports}
        self.assertEqual(callers, {"stickyproxy.core._router"})
        return [report[:3] for report in self.pool.reports]

    def test_stale_connection_retried_once(self):
        """
        The fresh connection is not stale: if it too closes before a
        response, the client gets a 502.  Passive health hears of that
        failure, not of the stale connection's close, which says nothing
        of the backend's health.
        """
        _, _, client = self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        protocol, transport = client
        transport.clear()
        protocol.dataReceived(b"GET /2 HTTP/1.1\r\nHost: a\r\nCookie: who=a\r\n\r\n")
        self.backends[0][1].connectionLost(Failure(ConnectionDone()))
        fresh, _ = self.accept()
        fresh.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(
            [r for r in self.reported() if r[0] == "failure"],
            [
                (
                    "failure",
                    "a",
                    "backend closed the connection: Connection was closed cleanly.",
                )
            ],
        )
        self.assertEqual(self.pool.get("a").active, 0)

    def test_failures_reported_through_router(self):
        """
        A response broken off, and a backend that does not answer in time,
        reach passive health through the router; so do response statuses.
        """
        _, transport, backend, _ = self.mid_response()
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(transport.disconnecting)
        protocol, transport = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.accept()
        self.reactor.advance(30)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertEqual(
            self.reported(),
            [
                ("success", "a", None),
                ("status", "a", 200),
                (
                    "failure",
                    "a",
                    "backend closed the connection: Connection was closed cleanly.",
                ),
                ("success", "b", None),
                ("failure", "b", "no response in time"),
            ],
        )

    def test_tunnel_closed_by_backend(self):
        """
        When the backend closes an upgraded connection, the client
        protocol closes the client's side, and the backend is released.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n"
        )
        backend, _ = self.accept()
        backend.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n"
        )
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.get("a").active, 0)


class TunnelPeer:
    """
    The client side of a tunnel, without a transport the backend side
    could touch.
    """

    def __init__(self):
        self.data = []
        self.closed = False

    def tunnel_data(self, data):
        self.data.append(data)

    def tunnel_closed(self):
        self.closed = True


@implementer(IResponseReceiver)
class Receiver:
    """
    An exchange that only records what its backend connection tells it.
    """

    def __init__(self):
        self.calls = []

    def response_head(self, status, headers, body):
        self.calls.append(("head", status))

    def response_body(self, data):
        self.calls.append(("body", data))

    def response_complete(self):
        self.calls.append(("complete",))

    def response_failed(self, reason):
        self.calls.append(("failed", reason))

    def response_upgraded(self, rest):
        self.calls.append(("upgraded", rest))


class BackendConnectionTests(TestCase):
    """
    L{BackendHTTP} as its exchange drives it: by its methods only.
    """

    def setUp(self):
        self.connections = BackendConnections(
            make_backend("a"), MemoryReactorClock(), 4, 30.0
        )
        self.connection = BackendHTTP(self.connections)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)
        self.receiver = Receiver()

    def test_receiver(self):
        """
        The test's receiver is a complete L{IResponseReceiver}.
        """
        from zope.interface import directlyProvides

        from stickyproxy.interfaces import IResponseReceiver

        directlyProvides(self.receiver, IResponseReceiver)
        self.assertProvides(IResponseReceiver, self.receiver)

    def test_tunnel_closed_tells_peer(self):
        """
        Once upgraded, the backend's bytes and its closing go to the tunnel
        peer, which owns the client's transport.
        """
        peer = TunnelPeer()
        self.connection.start_tunnel(peer)
        self.connection.dataReceived(b"\x81\x02hi")
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((peer.data, peer.closed), ([b"\x81\x02hi"], True))

    def test_release_keeps_for_reuse(self):
        """
        Released after a complete keep-alive response, the connection is
        read again and kept idle; the next acquire reuses it, and until a
        response byte comes, a failure on it may be a stale one.
        """
        self.connection.start(self.receiver, no_body=False)
        self.connection.dataReceived(OK)
        self.transport.pauseProducing()
        self.connection.release()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(self.connections), 1)
        reused = self.successResultOf(self.connections.acquire())
        self.assertIs(reused, self.connection)
        reused.start(Receiver(), no_body=False)
        self.assertTrue(reused.stale)

    def test_discard(self):
        """
        A discarded connection is closed at once, never kept, and tells its
        exchange nothing more.
        """
        self.connection.start(self.receiver, no_body=False)
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.connection.discard()
        self.assertTrue(self.transport.disconnected)
        self.connection.dataReceived(b"content-length: 0\r\n\r\n")
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.receiver.calls, len(self.connections)), ([], 0))


class TrailerTests(HTTPTestCase):
    def test_response_trailers_do_not_leak(self):
        """
        Trailer fields after a chunked response are not forwarded, and do
        not turn up in the next response on the same backend connection
        (which may be another client's).
        """
        _, first, _ = self.exchange(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\nX-Secret: 1\r\n\r\n",
        )
        self.assertNotIn(b"x-secret", first.lower())
        other = self.client(IPv4Address("TCP", "192.0.2.77", 1))
        _, second, _ = self.exchange(
            b"GET /2 HTTP/1.1\r\nHost: a\r\nCookie: who=a\r\n\r\n", OK, other
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)  # the same connection
        self.assertNotIn(b"x-secret", second.lower())

    def test_request_trailers_dropped(self):
        """
        Trailer fields after a chunked request body do not count toward
        the head's limits nor reach the next request.
        """
        forwarded, _, client = self.exchange(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n",
            OK,
        )
        second, _, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: who=a\r\n\r\n", OK, client
        )
        self.assertNotIn(b"x-trailer", second.lower())


class WriteBodyTests(TestCase):
    def test_framing(self):
        """
        Body bytes go out as one chunk each on a chunked body, as they are
        otherwise; no bytes write nothing, since an empty chunk would end a
        chunked body early.
        """
        for chunked, expected in [(True, b"5\r\nhello\r\n"), (False, b"hello")]:
            transport = StringTransport()
            write_body(transport, b"", chunked)
            write_body(transport, b"hello", chunked)
            self.assertEqual(transport.value(), expected)


class RequestFormTests(HTTPTestCase):
    def test_absolute_form(self):
        """
        An absolute-form target reaches the backend in origin form, with
        the target's authority as Host in place of the one sent (RFC 9112
        3.2.2).
        """
        forwarded, _, _ = self.exchange(
            b"GET http://shop.example:8080/cart?x=1 HTTP/1.1\r\nHost: other\r\n\r\n",
            OK,
        )
        self.assertTrue(forwarded.startswith(b"GET /cart?x=1 HTTP/1.1\r\n"))
        self.assertIn(b"host: shop.example:8080\r\n", forwarded)
        self.assertNotIn(b"host: other", forwarded)

    def test_connect_refused(self):
        """
        CONNECT is not proxied: 501.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 501 "))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_chunked_http10_refused(self):
        """
        Transfer-Encoding in an HTTP/1.0 request is faulty framing: 400.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_http2_preface(self):
        """
        An HTTP/2 connection preface gets 505, not a parser's message.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 505 "))

    def test_response_head_limit(self):
        """
        A backend response whose head is too large gets the client a 502.
        """
        big = b"x-big: " + b"v" * 70000 + b"\r\n"
        _, answer, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n" + big + b"content-length: 0\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "))
        self.assertIn(b"head is over", answer)


class AccessLogTests(HTTPTestCase):
    def setUp(self):
        super().setUp()
        self.factory.events.subscribe(AccessLog([self.factory.name]))

    def logged(self, request, *responses):
        """
        Send a request, let the backend answer (C{None}: close), and return
        every event logged meanwhile.
        """
        from twisted.logger import capturedLogs

        protocol, transport = self.client()
        with capturedLogs() as events:
            protocol.dataReceived(request)
            backend, _ = self.accept()
            for response in responses:
                if response is None:
                    backend.connectionLost(Failure(ConnectionDone()))
                else:
                    backend.dataReceived(response)
        return events

    def test_ok(self):
        """
        Each request is logged once, with the strategy's decision and how it
        ended.
        """
        events = self.logged(b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: who=b\r\n\r\n", OK)
        (event,) = [e for e in events if "ended" in e]
        self.assertEqual(
            (event["status"], event["backend"], event["strategy"], event["outcome"]),
            (200, "b", "recording", "hit"),
        )
        self.assertEqual(event["ended"], "ok")

    def test_backend_broke_off(self):
        """
        A response the backend broke off is logged as such, with a warning.
        """
        from twisted.logger import LogLevel

        events = self.logged(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            None,
        )
        (access,) = [e for e in events if "ended" in e]
        self.assertEqual(access["ended"], "backend-broke-off")
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertTrue(any("broke off" in e["log_format"] for e in warnings))
