"""
The built-in demo: small backends inside the proxy's own process, so that
C{twistd -n stickyproxy --demo} shows stickiness with nothing else installed.

Two frontends: TCP with source-ip affinity in front of line-echo backends,
and HTTP with cookie persistence in front of web backends whose page says
which backend answered.
"""

from __future__ import annotations

import html
from typing import Any

from zope.interface import implementer

from twisted.application.service import MultiService
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from stickyproxy.service import ListenerService

DEMO_BACKENDS = ("demo1", "demo2", "demo3")
DEMO_LISTEN = {
    "tcp": "tcp:7000:interface=127.0.0.1",
    "http": "tcp:8080:interface=127.0.0.1",
    # HAProxy's customary stats port: the dashboard, API and metrics.
    "admin": "tcp:8404:interface=127.0.0.1",
}
DEMO_COOKIE = "STICKY"


@implementer(IHalfCloseableProtocol)
class DemoTCPBackend(LineReceiver):
    """
    Greets each client by address with its own name, then echoes lines back
    with it.  The proxy sends it a PROXY v1 line first, which names the
    client; the greeting waits for it.

    Half-closeable, so that a client that sends and then shuts its side
    (C{printf 'ping\\n' | nc ...}) still gets its echo: the connection is
    closed only after the replies are written.
    """

    delimiter = b"\n"
    factory: Any
    transport: Any
    _client: str | None = None

    def lineReceived(self, line: bytes) -> None:
        if self._client is None:
            fields = line.split()
            self._client = fields[2].decode() if fields[:1] == [b"PROXY"] else "there"
            self.sendLine(
                f"hello {self._client}, this is backend {self.factory.name}".encode()
            )
            if fields[:1] == [b"PROXY"]:
                return
        self.sendLine(self.factory.name.encode() + b": " + line.rstrip(b"\r"))

    def readConnectionLost(self) -> None:
        """
        The client sent all it will: echo a last line left without its
        newline, then close once everything is written.
        """
        rest = self.clearLineBuffer()
        if rest:
            self.lineReceived(rest)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()


class DemoPage(Resource):
    """
    A page that says which backend served it, and how often it served this
    browser; C{/healthz} answers the health probe.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.served = 0

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"x-backend", self.name.encode())
        request.setHeader(b"cache-control", b"no-store")
        if request.path == b"/healthz":
            return b"ok\n"
        self.served += 1
        if b"text/html" not in (request.getHeader(b"accept") or b""):
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            text = f"backend {self.name} served this (request {self.served} here)\n"
            return text.encode()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        cookies = html.escape(
            (request.getHeader(b"cookie") or b"none").decode("latin-1")
        )
        client = html.escape(
            (request.getHeader(b"x-forwarded-for") or b"?").decode("latin-1")
        )
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>stickyproxy demo: {self.name}</title>
<style>body{{font-family:sans-serif;margin:3em}}#backend{{font-size:3em}}</style>
</head><body>
<p>This page was served by backend</p>
<p id="backend">{self.name}</p>
<p>Reload: the proxy's <code>{DEMO_COOKIE}</code> cookie keeps you on
{self.name}. Delete the cookie (or open a private window) and you may land
on another backend.</p>
<p>Requests served here: {self.served}. Client: {client}.
Cookies the backend received: {cookies} (the proxy takes its own off).</p>
</body></html>
""".encode()


class _QuietSite(Site):
    """
    A site that does not log each request: the proxy's access log does.
    """

    def log(self, request: Any) -> None:
        pass


def listen_demo_backends(reactor: Any, mode: str) -> dict[str, ListenerService]:
    """
    Start the demo backends of one kind (C{"tcp"} or C{"http"}) on free
    ports of 127.0.0.1, right away.
    """
    listeners = {}
    for name in DEMO_BACKENDS:
        factory: Any
        if mode == "http":
            factory = _QuietSite(DemoPage(name))
        else:
            factory = Factory.forProtocol(DemoTCPBackend)
            factory.name = name
        factory.noisy = False
        listener = ListenerService(
            reactor, "tcp:0:interface=127.0.0.1", factory, f"demo.{mode}.{name}"
        )
        listener.bind()
        listeners[f"{mode}:{name}"] = listener
    return listeners


def _backends(
    listeners: dict[str, ListenerService], mode: str
) -> list[dict[str, object]]:
    return [
        {"name": key.split(":", 1)[1], "address": f"127.0.0.1:{_port(listener)}"}
        for key, listener in listeners.items()
        if key.startswith(f"{mode}:")
    ]


def demo_config_data(
    listen: str | None,
    mode: str | None,
    backends: dict[str, ListenerService],
    admin: str | None = None,
) -> dict[str, object]:
    """
    The demo's configuration, as the tables a config file would hold.

    :param listen: where the one demo frontend of C{mode} listens; both
        demo frontends on their usual ports when C{mode} is C{None}.
    :param admin: where the admin listener (dashboard, API, metrics)
        listens; on its usual port when the whole demo runs on its usual
        ports, else nowhere.
    """
    modes = ("tcp", "http") if mode is None else (mode,)
    frontends: list[dict[str, object]] = []
    pools: dict[str, object] = {}
    if "tcp" in modes:
        frontends.append(
            {
                "name": "demo-tcp",
                "mode": "tcp",
                "listen": listen or DEMO_LISTEN["tcp"],
                "pool": "demo-tcp",
                "persistence": {"strategy": "source-ip"},
            }
        )
        pools["demo-tcp"] = {"send_proxy": "v1", "backend": _backends(backends, "tcp")}
    if "http" in modes:
        frontends.append(
            {
                "name": "demo-http",
                "mode": "http",
                "listen": listen or DEMO_LISTEN["http"],
                "pool": "demo-http",
                "persistence": {
                    "strategy": "cookie",
                    "name": DEMO_COOKIE,
                    # A fixed key, for the demo only: real configs keep theirs secret.
                    "keys": ["stickyproxy demo key, not a secret"],
                },
                "debug_header": "X-Sticky-Debug",
                "access_log": True,
            }
        )
        pools["demo-http"] = {
            "backend": _backends(backends, "http"),
            "health": {"type": "http", "path": "/healthz", "interval": 2.0},
        }
    data: dict[str, object] = {"frontend": frontends, "pool": pools}
    if admin is None and listen is None and mode is None:
        admin = DEMO_LISTEN["admin"]
    if admin is not None:
        data["admin"] = {"listen": admin}
    return data


def _port(listener: ListenerService) -> int:
    return getattr(listener.address(), "port", 0)


class DemoService(MultiService):
    """
    Owns the demo backends and, once the proxy listens, says what to try.
    """

    log = Logger()

    def __init__(self, backends: dict[str, ListenerService], proxy: Any) -> None:
        super().__init__()
        for listener in backends.values():
            listener.setServiceParent(self)
        self._proxy = proxy

    def startService(self) -> None:
        super().startService()
        for name, address in self._proxy.addresses().items():
            if address is None:
                continue
            hint = _HTTP_HINT if name == "demo-http" else _TCP_HINT
            self.log.info(
                hint,
                frontend=name,
                host=address.host,
                port=address.port,
                cookie=DEMO_COOKIE,
            )
        admin = self._proxy.admin
        address = None if admin is None else admin.address()
        if address is not None:
            self.log.info(_ADMIN_HINT, host=address.host, port=address.port)


_TCP_HINT = (
    "demo frontend {frontend}: TCP with source-ip affinity on {host}:{port}, three "
    "backends behind it. Try, several times: nc {host} {port}  -- the same backend "
    "greets you each time; from another source address (nc -s 127.0.0.2 {host} "
    '{port}) you may land elsewhere. Without nc: python3 -c "import socket; '
    "print(socket.create_connection(('{host}', {port})).recv(100).decode())\""
)
_ADMIN_HINT = (
    "demo dashboard: open http://{host}:{port}/ to watch the backends live and "
    "drain one; the JSON API is at http://{host}:{port}/api/backends and "
    "Prometheus metrics at http://{host}:{port}/metrics"
)
_HTTP_HINT = (
    "demo frontend {frontend}: HTTP with cookie persistence on {host}:{port}, three "
    "web backends behind it. Open http://{host}:{port}/ in a browser and reload, or "
    "run several times: curl -s -c jar -b jar http://{host}:{port}/  -- the "
    "{cookie} cookie in the jar keeps you on one backend; without the jar "
    "(curl -s http://{host}:{port}/) requests spread over all three."
)
