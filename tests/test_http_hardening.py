"""
Tests for the L7 frontend's defences against hostile input: refusals that
answer what came before them, Connection never unframing a message,
upgrades it cannot carry, and the request-target grammar.
"""

import attrs

from stickyproxy.config._settings import HTTPSettings

from tests.test_http import OK, HTTPTestCase

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
    (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
]


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


del attrs
