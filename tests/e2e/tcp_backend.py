"""
A small TCP backend for the end-to-end tests, run as a process of its own
(so a test can kill it by PID) with nothing but the standard library::

    python tcp_backend.py NAME [--port PORT] [--reply-bytes N]

It listens on 127.0.0.1 (port 0 by default: the kernel picks a free one)
and prints C{listening on 127.0.0.1:PORT} once it accepts connections.
For each connection it:

  1. sends its name and a newline, so a client knows where it landed;
  2. reads to end-of-file, hashing what it receives with SHA-256;
  3. sends C{<sha256 hex> <byte count>} and a newline, then C{N} bytes of
     L{pattern} seeded with its name, and closes.

The test modules import L{pattern} from here to predict those bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import socketserver
import sys
from collections.abc import Iterator

CHUNK = 1 << 20


def pattern(seed: str, size: int) -> Iterator[bytes]:
    """
    Deterministic, incompressible bytes in chunks of at most 1 MiB.

    Every chunk starts with its own index, so a lost, repeated or reordered
    chunk changes the stream's hash.

    :param seed: which stream; different seeds give different bytes.
    :param size: how many bytes in all.
    """
    block = hashlib.shake_256(seed.encode("utf-8")).digest(CHUNK)
    index = 0
    remaining = size
    while remaining > 0:
        piece = (index.to_bytes(8, "big") + block[8:])[:remaining]
        yield piece
        remaining -= len(piece)
        index += 1


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock = self.request
        try:
            sock.sendall(self.server.name.encode("utf-8") + b"\n")
            digest = hashlib.sha256()
            count = 0
            while True:
                data = sock.recv(1 << 18)
                if not data:
                    break
                digest.update(data)
                count += len(data)
            sock.sendall(f"{digest.hexdigest()} {count}\n".encode("ascii"))
            for piece in pattern(self.server.name, self.server.reply_bytes):
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client (the proxy) went away: nothing to answer


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, name: str, port: int, reply_bytes: int) -> None:
        self.name = name
        self.reply_bytes = reply_bytes
        super().__init__(("127.0.0.1", port), _Handler)


def main(argv: list[str]) -> None:
    """
    Serve until killed.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply-bytes", type=int, default=0)
    args = parser.parse_args(argv)
    server = _Server(args.name, args.port, args.reply_bytes)
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main(sys.argv[1:])
