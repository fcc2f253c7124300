"""
The built-in demo: small backends inside the proxy's own process, so that
C{twistd -n stickyproxy --demo} shows stickiness with nothing else installed.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from .service import ListenerService

DEMO_BACKENDS = ("demo1", "demo2", "demo3")
DEMO_TCP_LISTEN = "tcp:7000:interface=127.0.0.1"


class DemoTCPBackend(LineReceiver):
    """
    Greets each client by address with its own name, then echoes lines back
    with it.  The proxy sends it a PROXY v1 line first, which names the
    client; the greeting waits for it.
    """

    delimiter = b"\n"
    factory: Any
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


def listen_demo_backends(reactor: Any) -> dict[str, ListenerService]:
    """
    Start the demo backends on free ports of 127.0.0.1, right away.
    """
    listeners = {}
    for name in DEMO_BACKENDS:
        factory = Factory.forProtocol(DemoTCPBackend)
        factory.name = name  # type: ignore[attr-defined]
        factory.noisy = False
        listener = ListenerService(
            reactor, "tcp:0:interface=127.0.0.1", factory, f"demo.{name}"
        )
        listener.bind()
        listeners[name] = listener
    return listeners


def demo_config_data(
    listen: str | None, backends: dict[str, ListenerService]
) -> dict[str, object]:
    """
    The demo's configuration, as the tables a config file would hold.
    """
    return {
        "frontend": [
            {
                "name": "demo-tcp",
                "mode": "tcp",
                "listen": listen or DEMO_TCP_LISTEN,
                "pool": "demo",
                "persistence": {"strategy": "source-ip"},
            }
        ],
        "pool": {
            "demo": {
                "send_proxy": "v1",
                "backend": [
                    {"name": name, "address": f"127.0.0.1:{_port(listener)}"}
                    for name, listener in backends.items()
                ],
            }
        },
    }


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
            where = f"{address.host}:{address.port}"
            self.log.info(
                "demo frontend {frontend} (TCP, source-ip affinity) on {where}; "
                "three backends behind it. Try, several times: "
                "nc {host} {port}   -- the same backend greets you each time; "
                "from another source address (nc -s 127.0.0.2 {host} {port}) "
                "you may land elsewhere. Without nc: python3 -c "
                "\"import socket; print(socket.create_connection(('{host}', {port}))"
                '.recv(100).decode())"',
                frontend=name,
                where=where,
                host=address.host,
                port=address.port,
            )
