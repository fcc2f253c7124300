"""
A small HTTP/1.1 backend for the end-to-end tests, run as a process of its
own (so a test can kill it by PID) with nothing but the standard library::

    python http_backend.py NAME [--port PORT] [--route ROUTE]
        [--cookie JSESSIONID] [--max-age N] [--health-path /health]
        [--log-connections]

It listens on 127.0.0.1 (port 0 by default: the kernel picks a free one)
and prints C{listening on 127.0.0.1:PORT} once it accepts connections.  It
keeps connections alive, and logs one line per request (and, with
C{--log-connections}, C{connection from PORT opened} and C{... closed} as
each connection starts and ends).  Every answer has the header
C{X-Backend: NAME}.  It serves:

C{/_control/unhealthy}, C{/_control/healthy}
    Switch what the health path answers (the switch is this process's own:
    send these to the backend directly, not through the proxy).
the health path (C{/health})
    C{200 ok}, or C{500 unhealthy} after C{/_control/unhealthy}.
C{/login}
    A new session: C{Set-Cookie: JSESSIONID=<random>.<ROUTE>; Path=/},
    with C{Max-Age=N} when C{--max-age} is given.
C{/named-framing}
    The text C{NAME} with C{Connection: Content-Length}, as a broken or
    hostile server may send it: a proxy must not unframe the response.
C{/bytes/N}
    N bytes of L{body_pattern}, with their C{Content-Length}, written as
    fast as the connection takes them, or with C{?rate=R} at R bytes a
    second at most (a slow download).
C{/ws}
    A WebSocket (RFC 6455) that echoes every text and binary message, and
    answers a close with the same close code.
anything else
    The text C{NAME} and a newline; the header C{X-Request-Cookie} shows the
    C{Cookie} header the request arrived with (C{-} when none), and
    C{X-Request-Upgrade} its C{Upgrade} header, so a test sees what the
    proxy forwarded.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import struct
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def body_pattern(size: int) -> Iterator[bytes]:
    """
    The C{size} bytes C{/bytes/SIZE} serves, in pieces of up to 64 KiB: a
    test hashes them to check what arrived.
    """
    index = 0
    while size > 0:
        block = hashlib.sha256(b"%d" % index).digest() * 2048
        yield block[:size]
        size -= len(block)
        index += 1


def read_frame(stream: BinaryIO) -> tuple[bool, int, bytes] | None:
    """
    Read one WebSocket frame (unmasking a client's).

    :returns: its FIN bit, opcode and payload; C{None} at end-of-file.
    """
    head = stream.read(2)
    if len(head) < 2:
        return None
    fin, opcode = bool(head[0] & 0x80), head[0] & 0x0F
    masked, length = bool(head[1] & 0x80), head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", stream.read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", stream.read(8))
    mask = stream.read(4) if masked else b""
    payload = stream.read(length)
    if len(payload) < length:
        return None
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return fin, opcode, payload


def frame(opcode: int, payload: bytes) -> bytes:
    """
    One unmasked, final WebSocket frame, as a server sends it.
    """
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return head + payload


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes: without this, Nagle's
    # algorithm holds the body back until the proxy's delayed ACK.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self._log_connection("opened")

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._log_connection("closed")

    def _log_connection(self, what: str) -> None:
        if self.server.log_connections:
            print(f"connection from {self.client_address[1]} {what}", flush=True)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            complete = len(self.rfile.read(length)) == length
        except ConnectionResetError:
            complete = False
        if not complete:
            self.close_connection = True  # cut off half-way: nobody to answer
            return
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        server = self.server
        path = self.path.split("?", 1)[0].split(";", 1)[0]
        headers: list[tuple[str, str]] = []
        if path == "/_control/unhealthy":
            server.healthy = False
            status, text = 200, "unhealthy from now on\n"
        elif path == "/_control/healthy":
            server.healthy = True
            status, text = 200, "healthy from now on\n"
        elif path == server.health_path:
            status, text = (200, "ok\n") if server.healthy else (500, "unhealthy\n")
        elif path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        elif path.startswith("/bytes/") and path[7:].isdigit():
            query = self.path.partition("?")[2]
            rate = query[5:] if query.startswith("rate=") else ""
            self._bytes(int(path[7:]), body, int(rate) if rate.isdigit() else 0)
            return
        elif path == "/named-framing":
            headers.append(("Connection", "Content-Length"))
            status, text = 200, f"{server.name}\n"
        elif path == "/login":
            session = f"{os.urandom(8).hex()}.{server.route}"
            cookie = f"{server.cookie}={session}; Path=/"
            if server.max_age is not None:
                cookie += f"; Max-Age={server.max_age}"
            headers.append(("Set-Cookie", cookie))
            status, text = 200, f"{server.name}\n"
        else:
            status, text = 200, f"{server.name}\n"
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("X-Backend", server.name)
        self.send_header("X-Request-Cookie", self.headers.get("Cookie", "-"))
        self.send_header("X-Request-Upgrade", self.headers.get("Upgrade", "-"))
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _bytes(self, size: int, body: bool, rate: int = 0) -> None:
        self.send_response(200)
        self.send_header("X-Backend", self.server.name)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not body:
            return
        started, sent = time.monotonic(), 0
        try:
            for piece in body_pattern(size):
                if rate:
                    # Pacing the answer is what this backend is asked for.
                    time.sleep(max(0.0, started + sent / rate - time.monotonic()))
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            self.close_connection = True  # the client left half-way

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii")).digest()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(digest).decode())
        self.send_header("X-Backend", self.server.name)
        self.end_headers()
        self.close_connection = True
        message: list[bytes] = []
        kind = OP_TEXT
        while True:
            got = read_frame(self.rfile)
            if got is None:
                return
            fin, opcode, payload = got
            if opcode == OP_CLOSE:
                self.wfile.write(frame(OP_CLOSE, payload[:2]))
                return
            if opcode == OP_PING:
                self.wfile.write(frame(OP_PONG, payload))
                continue
            if opcode == OP_PONG:
                continue
            if opcode != OP_CONTINUATION:
                kind, message = opcode, []
            message.append(payload)
            if fin:
                self.wfile.write(frame(kind, b"".join(message)))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        name: str,
        port: int,
        route: str,
        cookie: str,
        max_age: int | None,
        health_path: str,
        log_connections: bool = False,
    ) -> None:
        self.name = name
        self.log_connections = log_connections
        self.route = route
        self.cookie = cookie
        self.max_age = max_age
        self.health_path = health_path
        self.healthy = True
        super().__init__(("127.0.0.1", port), _Handler)


def main(argv: list[str]) -> None:
    """
    Serve until killed.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--route", help="the session id's suffix (default: NAME)")
    parser.add_argument("--cookie", default="JSESSIONID")
    parser.add_argument("--max-age", type=int)
    parser.add_argument("--health-path", default="/health")
    parser.add_argument("--log-connections", action="store_true")
    args = parser.parse_args(argv)
    server = _Server(
        args.name,
        args.port,
        args.route or args.name,
        args.cookie,
        args.max_age,
        args.health_path,
        args.log_connections,
    )
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main(sys.argv[1:])
