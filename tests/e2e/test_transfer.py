"""
End-to-end: bulk data through the L4 proxy, both ways, with half-close.
"""

from __future__ import annotations

import hashlib
import socket

from tests.e2e._harness import E2ETestCase, LineReader, connect, free_port, proxy_config
from tests.e2e.tcp_backend import pattern

MiB = 1 << 20
SIZE = 64 * MiB


class HalfCloseTransferTests(E2ETestCase):
    """
    The client sends 64 MiB and half-closes; the backend reads to end of
    file, answers with the SHA-256 of what it got and 64 MiB of its own,
    and closes.
    """

    def test_64_mib_each_way(self) -> None:
        """
        64 MiB from the client reaches the backend intact, the client's
        half-close reaches it as end-of-file, and the backend's 64 MiB
        answer (sent after that end-of-file) reaches the client intact,
        followed by end-of-file.
        """
        backend = self.start_backend("bulk", reply_bytes=SIZE)
        port = free_port()
        self.start_proxy_with_config(
            proxy_config(port, {"bulk": backend.port}, {"strategy": "source-ip"}),
            port,
        )
        try:
            sent, name, report, received, count = self.exchange(port)
        except OSError as error:
            self.fail_with_output(f"the transfer failed: {error!r}")
        if name != b"bulk" or report is None:
            self.fail_with_output(f"no answer from the backend: {name!r}, {report!r}")
        self.assertEqual(report.decode("ascii"), f"{sent} {SIZE}")
        expected = hashlib.sha256()
        for piece in pattern("bulk", SIZE):
            expected.update(piece)
        self.assertEqual((count, received), (SIZE, expected.hexdigest()))

    def exchange(self, port: int) -> tuple[str, bytes | None, bytes | None, str, int]:
        """
        Send C{SIZE} bytes of the client's pattern, half-close, and read the
        answer, hashing as the bytes go.

        :returns: the SHA-256 (hex) of what was sent, the backend's name
            line, its report line, and the SHA-256 and length of what
            followed.
        """
        sent = hashlib.sha256()
        received = hashlib.sha256()
        count = 0
        with connect(port, timeout=60.0) as sock:
            for piece in pattern("client", SIZE):
                sent.update(piece)
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
            reader = LineReader(sock)
            name = reader.line()
            report = reader.line()
            for data in reader.chunks():
                received.update(data)
                count += len(data)
        return sent.hexdigest(), name, report, received.hexdigest(), count
