"""
Tests for the L7 frontend's defences against hostile input: refusals that
answer what came before them, Connection never unframing a message,
upgrades it cannot carry, and the request-target grammar.
"""

import ipaddress

import attrs
import h11
from zope.interface import implementer

from twisted.internet.address import IPv4Address

from stickyproxy.config._settings import HTTPSettings
from stickyproxy.core._router import Router
from stickyproxy.http._frontend import HTTPProxyFactory
from stickyproxy.http._message import connection_options, request_target
from stickyproxy.interfaces import IPersistenceStrategy

from tests.test_http import OK, HTTPTestCase, RecordingStrategy

GOOD = b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n"

# One bad request for each status the frontend refuses with.
REFUSALS = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
    ),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n", 413),
    (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"20\r\n" + b"x" * 32 + b"\r\n0\r\n\r\n",
        413,
    ),
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n", 431),
    (b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # a fragment
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
]


@implementer(IPersistenceStrategy)
@attrs.define
class HeaderReadingStrategy(RecordingStrategy):
    """
    A L{RecordingStrategy} that also reads the request header
    C{X-Session}, as the header strategy reads its own.
    """

    def lookup(self, context):
        context.header(b"x-session")
        return super().lookup(context)


class RefusalTests(HTTPTestCase):
    """
    Every refusal answers the requests before it, then closes.
    """

    settings = HTTPSettings(
        timeout_request=10,
        timeout_response=30,
        timeout_keepalive=60,
        max_header_size=1024,
        max_body_size=16,
    )

    def run_client(self, data, read_size):
        """
        Deliver C{data} in reads of C{read_size} bytes (all at once if
        C{None}), as a real transport would: nothing while reading is
        paused.  Every backend connection is accepted and every complete request it
        receives answered with L{OK}.

        :returns: what the client received.
        """
        self.setUp()  # a fresh proxy and backends for each run
        protocol, transport = self.client()
        answered = 0
        while True:
            progress = False
            while data and transport.producerState == "producing":
                if transport.disconnecting:
                    break
                size = len(data) if read_size is None else read_size
                chunk, data = data[:size], data[size:]
                protocol.dataReceived(chunk)
                progress = True
            while len(self.reactor.tcpClients) > len(self.backends):
                self.accept()
                progress = True
            for _, backend, backend_transport in self.backends[answered:]:
                forwarded = backend_transport.value()
                if forwarded.endswith(b"\r\n\r\n") and (
                    b"chunked" not in forwarded or forwarded.endswith(b"0\r\n\r\n")
                ):
                    answered += 1
                    backend.dataReceived(OK)
                    progress = True
            if not progress:
                break
        if not transport.disconnecting:
            # Whatever waits must be bounded by a timer, never by nothing.
            self.reactor.advance(3600)
        self.assertTrue(transport.disconnecting, transport.value())
        return transport.value()

    def test_refusal_answers_requests_before_it(self):
        """
        A valid request followed by a refused one, in one read or in many,
        gets its response first, then the refusal, then the connection
        closes: the refusal never waits on an exchange that does not run.
        """
        for bad, status in REFUSALS:
            for read_size in (None, 1, 7):
                answer = self.run_client(GOOD + bad, read_size)
                first, _, second = answer.partition(b"\r\n\r\nok")
                self.assertTrue(
                    first.startswith(b"HTTP/1.1 200 "), (bad, read_size, answer)
                )
                self.assertTrue(
                    second.startswith(b"HTTP/1.1 %d " % status),
                    (bad, read_size, answer),
                )
                self.assertIn(b"connection: close", second)

    def test_slow_head_after_valid_request(self):
        """
        A valid request followed by a head that never completes gets its
        response, then 408 once C{timeout_request} runs out.
        """
        for read_size in (None, 1):
            answer = self.run_client(GOOD + b"GET / HTTP/1.1\r\nHo", read_size)
            first, _, second = answer.partition(b"\r\n\r\nok")
            self.assertTrue(first.startswith(b"HTTP/1.1 200 "), answer)
            self.assertTrue(second.startswith(b"HTTP/1.1 408 "), answer)

    def test_refused_alone(self):
        """
        Each refused request on its own is answered with its status, and
        nothing reaches a backend.
        """
        for bad, status in REFUSALS:
            answer = self.run_client(bad, None)
            self.assertTrue(answer.startswith(b"HTTP/1.1 %d " % status), (bad, answer))
            self.assertEqual(self.reactor.tcpClients, [])


class ConnectionHeaderTests(HTTPTestCase):
    """
    A C{Connection} header never removes what frames or routes a message.
    """

    def test_request_framing_kept(self):
        """
        C{Connection: close, Content-Length} (or naming Transfer-Encoding or
        Host) does not take the framing away: the backend gets the body as
        the body, with its length, and one request, not two.
        """
        smuggled = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
        forwarded, answer, _ = self.exchange(
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close, Content-Length, Host\r\n"
            b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled,
            OK,
        )
        head, _, body = forwarded.partition(b"\r\n\r\n")
        self.assertIn(b"\r\ncontent-length: %d\r\n" % len(smuggled), head + b"\r\n")
        self.assertIn(b"\r\nhost: a\r\n", head + b"\r\n")
        self.assertEqual(body, smuggled)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "))
        forwarded, _, _ = self.exchange(
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Transfer-Encoding\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            OK,
        )
        self.assertIn(b"transfer-encoding: chunked\r\n", forwarded)
        self.assertTrue(forwarded.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))

    def test_options_of_one_hop_by_hop_field(self):
        """
        A C{Connection} header naming only a hop-by-hop field (the usual
        C{keep-alive}) leaves nothing more to drop, since that field is
        dropped anyway; other names are still taken apart.
        """
        self.assertEqual(connection_options([b"Keep-Alive"]), frozenset())
        self.assertEqual(connection_options([b"upgrade"]), frozenset())
        self.assertEqual(
            connection_options([b"keep-alive, X-Private"]),
            frozenset({b"keep-alive", b"x-private"}),
        )
        self.assertEqual(connection_options([b"close"]), frozenset({b"close"}))

    def test_content_length_from_proxy_reading(self):
        """
        The Content-Length forwarded is the one the proxy read, written
        afresh: no leading zeros for another parser to read otherwise.
        """
        forwarded, _, _ = self.exchange(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n\r\nabc", OK
        )
        self.assertIn(b"content-length: 3\r\n", forwarded)
        self.assertNotIn(b"003", forwarded)

    def test_routing_headers_kept(self):
        """
        What routing read the request by stays: C{Connection: Cookie} keeps
        the cookies (the strategy read one), C{Connection: X-Session} keeps
        a header a strategy read, and C{Connection: X-Forwarded-For} from a
        trusted proxy keeps the chain the client address was taken from.
        Other headers Connection names are still removed.
        """
        self.strategy = HeaderReadingStrategy(self.pool)
        self.router = Router(self.pool, [self.strategy], self.reactor)
        self.factory = HTTPProxyFactory("web", self.router, self.reactor, self.settings)
        forwarded, _, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Cookie, X-Session, X-Other\r\n"
            b"Cookie: who=a; app=1\r\nX-Session: s1\r\nX-Other: o\r\n\r\n",
            OK,
        )
        self.assertIn(b"cookie: app=1\r\n", forwarded)
        self.assertIn(b"x-session: s1\r\n", forwarded)
        self.assertNotIn(b"x-other", forwarded)
        self.factory.settings = attrs.evolve(
            self.settings, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),)
        )
        forwarded, _, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-For\r\n"
            b"X-Forwarded-For: 203.0.113.9\r\n\r\n",
            OK,
            self.client(IPv4Address("TCP", "10.1.1.1", 4000)),
        )
        self.assertEqual(self.strategy.seen[-1].client_host, "203.0.113.9")
        self.assertIn(b"x-forwarded-for: 203.0.113.9, 10.1.1.1\r\n", forwarded)

    def test_response_framing_kept(self):
        """
        A response whose Connection header names Content-Length keeps it:
        the client can read where it ends, and the next response on the
        same connection is a response of its own.
        """
        _, answer, client = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\n"
            b"Content-Length: 2\r\n\r\nok",
        )
        self.assertIn(b"content-length: 2\r\n", answer)
        self.assertNotIn(b"transfer-encoding", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nok"))
        self.assertFalse(client[1].disconnecting)

    def test_response_chunked_and_length_refused(self):
        """
        A response with both Transfer-Encoding: chunked and Content-Length
        could be read two ways: the client gets 502, not the response.
        """
        _, answer, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)

    def test_other_transfer_codings_refused(self):
        """
        A transfer coding other than chunked would be lost when the body is
        re-chunked: a request with one gets 400, a response 502 (also with
        chunked twice).
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(self.reactor.tcpClients, [])
        for coding in [
            b"gzip, chunked",
            b"identity",
            b"chunked\r\nTransfer-Encoding: chunked",
        ]:
            self.setUp()
            _, answer, _ = self.exchange(
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: "
                + coding
                + b"\r\n\r\n0\r\n\r\n",
            )
            self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), coding)

    def test_http10_without_host(self):
        """
        An HTTP/1.0 request without Host goes on as HTTP/1.1 with an empty
        Host (RFC 9112 3.2), not as an HTTP/1.1 request without one.
        """
        forwarded, _, _ = self.exchange(b"GET / HTTP/1.0\r\n\r\n", OK)
        self.assertTrue(
            forwarded.startswith(b"GET / HTTP/1.1\r\nhost: \r\n"), forwarded
        )


H2C = (
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
)


def read_request(data):
    """
    Read one complete request with h11, as a backend would.

    :returns: its body.
    """
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    body = b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return body
        elif not isinstance(event, h11.Request):
            raise AssertionError(f"not one complete request: {event!r} in {data!r}")


class UpgradeTests(HTTPTestCase):
    """
    Only the upgrades the proxy tunnels (C{upgrades}) are forwarded; the
    others go on as plain HTTP/1.1.
    """

    def assertPlain(self, forwarded):
        head = forwarded.partition(b"\r\n\r\n")[0].lower()
        for name in (b"upgrade", b"http2-settings", b"connection"):
            self.assertNotIn(b"\n" + name + b":", head)

    def test_h2c_stripped(self):
        """
        An h2c upgrade (with C{Connection: Upgrade, HTTP2-Settings}) reaches
        the backend as a plain request, without Upgrade, HTTP2-Settings or
        Connection; the response is relayed as any other, and the next
        request on the connection is served.
        """
        forwarded, answer, client = self.exchange(H2C, OK)
        self.assertTrue(forwarded.startswith(b"GET / HTTP/1.1\r\n"))
        self.assertPlain(forwarded)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertFalse(client[1].disconnecting)
        forwarded, answer, _ = self.exchange(
            b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", OK, client
        )
        self.assertTrue(forwarded.startswith(b"GET /next HTTP/1.1\r\n"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"))

    def test_stripped_upgrade_keeps_its_body(self):
        """
        An upgrade request with a body (which llhttp leaves unread, taking
        it for the new protocol) is forwarded with its body, whether the
        body has a length or is chunked, and whether it arrives with its
        head, with the next request, or a byte at a time; the request after
        it is read as a request.
        """
        upgrade = b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
        for framing, body, body_read in [
            (b"Content-Length: 5\r\n", b"hello", b"hello"),
            (
                b"Transfer-Encoding: chunked\r\n",
                b"5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
                b"hello",
            ),
        ]:
            request = b"POST /up HTTP/1.1\r\nHost: a\r\n" + upgrade + framing
            request += b"\r\n" + body
            following = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
            for read_size in (None, 1):
                self.setUp()
                protocol, transport = self.client()
                data = request + following
                size = read_size or len(data)
                while data and transport.producerState == "producing":
                    protocol.dataReceived(data[:size])
                    data = data[size:]
                    if len(self.reactor.tcpClients) > len(self.backends):
                        self.accept()
                backend, backend_transport = self.backends[0][1:]
                forwarded = backend_transport.value()
                self.assertTrue(forwarded.startswith(b"POST /up HTTP/1.1\r\n"))
                self.assertPlain(forwarded)
                self.assertEqual(read_request(forwarded), body_read, read_size)
                backend_transport.clear()
                backend.dataReceived(OK)
                while data and transport.producerState == "producing":
                    protocol.dataReceived(data[:size])
                    data = data[size:]
                if len(self.reactor.tcpClients) > len(self.backends):
                    self.accept()  # round robin: the other backend
                backend, backend_transport = self.backends[-1][1:]
                self.assertTrue(
                    backend_transport.value().startswith(b"GET /next HTTP/1.1\r\n")
                )
                backend.dataReceived(OK)
                self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)

    def test_websocket_tunnelled(self):
        """
        A WebSocket upgrade is forwarded (offered beside one the proxy does
        not tunnel, only WebSocket is); one with a body is not, since the
        tunnel would start before its body.
        """
        protocol, _ = self.client()
        protocol.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
            b"Upgrade: h2c, WebSocket\r\n\r\n"
        )
        _, backend_transport = self.accept()
        self.assertIn(
            b"connection: upgrade\r\nupgrade: WebSocket\r\n", backend_transport.value()
        )
        forwarded, _, _ = self.exchange(
            b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nContent-Length: 2\r\n\r\nhi",
            OK,
        )
        self.assertPlain(forwarded)
        self.assertTrue(forwarded.endswith(b"\r\n\r\nhi"))

    def test_upgrades_configurable(self):
        """
        C{upgrades} says which protocols are tunnelled: with C{x-custom}
        listed, it is; with nothing listed, not even WebSocket.
        """
        websocket = (
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n"
        )
        self.factory.settings = attrs.evolve(self.settings, upgrades=frozenset())
        forwarded, _, _ = self.exchange(websocket, OK)
        self.assertPlain(forwarded)
        self.setUp()
        self.factory.settings = attrs.evolve(
            self.settings, upgrades=frozenset({b"x-custom"})
        )
        protocol, _ = self.client()
        protocol.dataReceived(websocket.replace(b"websocket", b"X-Custom/2"))
        _, backend_transport = self.accept()
        self.assertIn(b"upgrade: X-Custom/2\r\n", backend_transport.value())


class RequestTargetTests(HTTPTestCase):
    """
    Only RFC 9112's request-target forms are forwarded; anything else gets
    400, so the backend sees only what one reading allows.
    """

    def test_refused(self):
        """
        A fragment, userinfo in absolute-form, a scheme other than http(s),
        an empty host, a port out of range, the asterisk-form on anything but OPTIONS, a target
        in no form at all, and whitespace, controls or bytes above 0x7E get
        400, and nothing reaches a backend.
        """
        for target in [
            b"/a#b",
            b"/#",
            b"http://user@a.example/",
            b"http://user:pw@a.example/x",
            b"HTTPS://a@b/",
            b"http://a.example\\@b.example/",
            b"ftp://a.example/",
            b"http:///x",
            b"http://a.example:80x/",
            b"http://a.example:65536/",
            b"http://a.example:99999999/p",
            b"*",
            b"a.example/x",
            b"/a\x80b",
            b"/a\x7fb",
            b"/a\x01b",
            b"/a\tb",
        ]:
            protocol, transport = self.client()
            protocol.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), target)
            self.assertEqual(self.reactor.tcpClients, [], target)

    def test_grammar(self):
        """
        L{request_target} checks every byte itself, whatever llhttp lets
        through, and names what is wrong.
        """
        for target, reason in [
            (b"/a#b", "fragment"),
            (b"/a b", "whitespace"),
            (b"/a\x00", "controls"),
            (b"/\xff", "non-ASCII"),
            (b"http://u@h/", "userinfo"),
            (b"*", "OPTIONS"),
            (b"h/x", "not a request-target"),
        ]:
            error = self.assertRaises(ValueError, request_target, b"GET", target)
            self.assertIn(reason, str(error))

    def test_accepted(self):
        """
        Origin-form (with the characters browsers leave unescaped in a
        query), OPTIONS *, and http(s) absolute-form (a query with no path,
        an IP-literal and a port) are forwarded, the absolute-form in
        origin-form with its authority as Host.
        """
        for request_line, line, host in [
            (b"GET /p/a;b?q=|{}^`&x=%20 ", b"GET /p/a;b?q=|{}^`&x=%20 ", b"a"),
            (b"OPTIONS * ", b"OPTIONS * ", b"a"),
            (b"GET http://b.example?x=1 ", b"GET /?x=1 ", b"b.example"),
            (b"GET HTTPS://[::1]:8443/x ", b"GET /x ", b"[::1]:8443"),
            (b"GET http://b.example ", b"GET / ", b"b.example"),
            (b"GET http://b.example:65535/y ", b"GET /y ", b"b.example:65535"),
        ]:
            self.setUp()  # a fresh backend connection for each
            forwarded, _, _ = self.exchange(
                request_line + b"HTTP/1.1\r\nHost: a\r\n\r\n", OK
            )
            self.assertTrue(forwarded.startswith(line + b"HTTP/1.1\r\n"), forwarded)
            self.assertIn(b"\r\nhost: " + host + b"\r\n", forwarded)
