"""
End-to-end: the HTTP frontend of the real C{twistd -n stickyproxy} against
hostile input on raw sockets, in front of real backends
(L{tests.e2e.http_backend}): refusals that answer what came before them and
leave no socket behind, Connection headers that name framing headers,
upgrades the proxy does not carry, and request-targets outside RFC 9112.
"""

from __future__ import annotations

import re

from tests.e2e._harness import (
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
