"""
End-to-end: the HTTP frontend of the real C{twistd -n stickyproxy} against
hostile input on raw sockets, in front of real backends
(L{tests.e2e.http_backend}): refusals that answer what came before them and
leave no socket behind, Connection headers that name framing headers,
upgrades the proxy does not carry, and request-targets outside RFC 9112.
"""

from __future__ import annotations

import http.client
import re

from tests.e2e._harness import (
    HOST,
    IO_TIMEOUT,
    HTTPE2ETestCase,
    WaitTimeout,
    close_wait,
    connect,
    wait_for,
)


def statuses(data: bytes) -> list[bytes]:
    """
    The statuses of the responses in what the proxy sent, in order.
    """
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", data)


def assert_not_smuggled(test: HTTPE2ETestCase, headers: bytes) -> None:
    """
    Send, in one write, a POST with C{headers} whose body is a request of
    its own, then a last request: the client gets two responses, and no
    backend ever serves the request hidden in the body.
    """
    hidden = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (
        b"POST / HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
        % (headers, len(hidden))
        + hidden
        + b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = test.raw_exchange(test.port, request)
    test.assertEqual(statuses(answer), [b"200", b"200"], answer)
    for name, backend in test.backends.items():
        test.assertNotIn("/smuggled", backend.output(), name)


class RefusalTests(HTTPE2ETestCase):
    """
    A refused request is answered after the requests before it, and the
    connection then closes for good.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start_http_proxy(None)

    def assert_no_close_wait(self) -> None:
        try:
            wait_for(
                lambda: close_wait(self.port) == 0,
                IO_TIMEOUT,
                "the proxy to close the sockets its clients left",
            )
        except WaitTimeout as error:
            self.fail_with_output(str(error))

    def test_valid_then_garbage_in_one_read(self) -> None:
        """
        C{GET /who ... GARBAGE} sent in one write gets 200 for the valid
        request, then 400, then the proxy closes; so does a valid request
        followed by one without Host, or with two Content-Lengths.  No
        socket is left in CLOSE-WAIT, also when the client leaves without
        reading.
        """
        good = b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n"
        for bad in [
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            b"Content-Length: 2\r\n\r\nab",
        ]:
            answer = self.raw_exchange(self.port, good + bad)
            self.assertEqual(statuses(answer), [b"200", b"400"], answer)
        for _ in range(5):
            with connect(self.port) as sock:
                sock.sendall(good + b"GARBAGE\r\n\r\n")
        self.assert_no_close_wait()
        self.served()

    def test_smuggler_clte_probe(self) -> None:
        """
        The probe with which defparam/smuggler reported "Potential CLTE"
        against the proxy: a POST whose Content-Length (4) stops inside a
        chunked body, so that C{0} and an empty line follow it in the same
        write.  The proxy answers the POST, then 400 for what follows, at
        once, instead of hanging until the scanner's timeout.
        """
        probe = (
            b"POST /?cb=1 HTTP/1.1\r\nTransfer-Encoding : chunked\r\nHost: x\r\n"
            b"Content-type: application/x-www-form-urlencoded; charset=UTF-8\r\n"
            b"Content-Length: 4\r\n\r\n1\r\nZ\r\n0\r\n\r\n"
        )
        answer = self.raw_exchange(self.port, probe)
        self.assertIn(statuses(answer), [[b"400"], [b"200", b"400"]], answer)
        probe = probe.replace(b"Transfer-Encoding : chunked", b"X-Pad: chunked")
        answer = self.raw_exchange(self.port, probe)
        self.assertEqual(statuses(answer), [b"200", b"400"], answer)

    def test_request_target_grammar(self) -> None:
        """
        Targets outside RFC 9112's forms -- a fragment, userinfo in
        absolute-form, the asterisk-form on GET, no form at all -- get 400
        and a close, and reach no backend; an absolute-form target is
        served in origin-form.
        """
        for target in [
            b"/who#frag",
            b"http://user:pw@x/who",
            b"*",
            b"who",
        ]:
            answer = self.raw_exchange(
                self.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            self.assertEqual(statuses(answer), [b"400"], (target, answer))
        for name, backend in self.backends.items():
            self.assertNotIn("/who", backend.output(), name)
        answer = self.raw_exchange(
            self.port,
            b"GET http://x/abs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        self.assertEqual(statuses(answer), [b"200"], answer)


class ConnectionHeaderTests(HTTPE2ETestCase):
    """
    A C{Connection} header that names a framing header does not unframe
    the message, in either direction.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start_http_proxy(None)

    def test_request_not_unframed(self) -> None:
        """
        A POST with C{Connection: keep-alive, Content-Length} and a body
        that is itself a request reaches the backend as one request with
        its body: the backend never serves the request hidden in it, and
        the client gets one response for each of its two requests.
        """
        assert_not_smuggled(self, b"Connection: keep-alive, Content-Length\r\n")

    def test_response_not_unframed(self) -> None:
        """
        A response with C{Connection: Content-Length} keeps its
        Content-Length on the way to the client, so a keep-alive client
        reads it, and the next one on the same connection, in full.
        """
        client = http.client.HTTPConnection(HOST, self.port, timeout=IO_TIMEOUT)
        self.addCleanup(client.close)
        for _ in range(2):
            client.request("GET", "/named-framing")
            response = client.getresponse()
            body = response.read()
            self.assertEqual(response.status, 200, body)
            self.assertEqual(response.getheader("Content-Length"), str(len(body)))
            self.assertIn(body.decode().strip(), self.backends)


class UpgradeTests(HTTPE2ETestCase):
    """
    Upgrades to protocols the proxy does not tunnel go on as HTTP/1.1.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start_http_proxy(None)

    def test_curl_http2_upgrade(self) -> None:
        """
        C{curl --http2} offers an h2c upgrade (C{Connection: Upgrade,
        HTTP2-Settings}), on a GET and on a POST with a body: the backend
        gets a plain HTTP/1.1 request without Upgrade and answers it, and
        curl gets that answer over HTTP/1.1.
        """
        for args in [(), ("--data", "a=1")]:
            result = self.served("/", "--http2", *args)
            self.assertEqual(result.header("x-request-upgrade"), "-", result.describe())

    def test_upgrade_with_body_pipelined(self) -> None:
        """
        An h2c upgrade request with a body, and a request after it in the
        same write: the body reaches the backend as the body and the next
        request as a request, each answered.
        """
        assert_not_smuggled(
            self,
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
        )
