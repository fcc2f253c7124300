"""
Tests for TLS listeners: ALPN negotiated from the frontend's factory,
handshakes that complete without a shared protocol, failed handshakes in
the log, and C{haproxy:ssl:} reading the PROXY header before TLS.

Real TLS (pyOpenSSL) over L{twisted.test.iosim}, on a memory reactor.
"""

from pathlib import Path

from zope.interface import implementer

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from stickyproxy.config._load import load_config
from stickyproxy.config._options import ConfigError
from stickyproxy.http._frontend import HTTPProxyFactory
from stickyproxy.persistence._registry import StrategyRegistry
from stickyproxy.service import ListenerService, ProxyService
from stickyproxy.tcp._splice import TCPProxyFactory

from tests._base import TestCase
from tests._certificates import self_signed

HOST = "localhost"
CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
SERVER = IPv4Address("TCP", "127.0.0.1", 8443)
REGISTRY = StrategyRegistry.from_plugins()


class _Recorder(Protocol):
    """
    Records what it receives and whether its connection was made.
    """

    def __init__(self) -> None:
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


@implementer(IProtocolNegotiationFactory)
class _Speaks(Factory):
    """
    A server factory that speaks C{protocols} over ALPN, and keeps the
    protocols it built.
    """

    noisy = False

    def __init__(self, *protocols: bytes) -> None:
        self.protocols = list(protocols)
        self.built: list[_Recorder] = []

    def acceptableProtocols(self) -> list[bytes]:
        return self.protocols

    def buildProtocol(self, addr: object) -> _Recorder:
        protocol = _Recorder()
        self.built.append(protocol)
        return protocol


class _SendsFirst(ProtocolWrapper):
    """
    Writes its factory's C{first} bytes, in the clear, before the wrapped
    protocol (a TLS client) starts: a load balancer's PROXY header.
    """

    def makeConnection(self, transport: object) -> None:
        transport.write(self.factory.first)  # type: ignore[attr-defined]
        super().makeConnection(transport)


class TLSListenerTests(TestCase):
    """
    L{ListenerService} on C{ssl:} and C{haproxy:ssl:} endpoint strings.
    """

    def setUp(self) -> None:
        key, cert = self_signed(HOST)
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "key.pem").write_bytes(key)
        (directory / "cert.pem").write_bytes(cert)
        self.tls = f"ssl:0:privateKey={directory}/key.pem:certKey={directory}/cert.pem"
        self.trust = Certificate.loadPEM(cert)
        self.reactor = MemoryReactorClock()

    def listen(self, factory: Factory, prefix: str = "") -> ListenerService:
        """
        Listen with C{factory} on the test's TLS endpoint (after C{prefix}).
        """
        listener = ListenerService(
            self.reactor, prefix + self.tls, factory, "frontend[0].listen"
        )
        listener.setName("web")
        listener.bind()
        return listener

    def server_protocol(self) -> Protocol:
        """
        The protocol the (only) listener builds for a new client, as the
        reactor would.
        """
        if self.reactor.sslServers:
            _, factory, context, _, _ = self.reactor.sslServers[0]
            factory = TLSMemoryBIOFactory(context, False, factory, self.reactor)
        else:
            _, factory, _, _ = self.reactor.tcpServers[0]
        protocol: Protocol = factory.buildProtocol(CLIENT)
        return protocol

    def pump_to(self, client_side: Protocol) -> iosim.IOPump:
        """
        Connect C{client_side} to a new server protocol of the listener,
        from L{CLIENT}.
        """
        server_side = self.server_protocol()
        return iosim.connect(
            server_side,
            iosim.FakeTransport(server_side, True, SERVER, CLIENT),
            client_side,
            iosim.makeFakeClient(client_side),
            greet=False,
            clock=self.reactor,
        )

    def connect(
        self, offered: list[bytes] | None, first: bytes = b""
    ) -> tuple[_Recorder, iosim.IOPump]:
        """
        Connect a TLS client that offers C{offered} over ALPN (C{None}: no
        ALPN at all), after sending C{first} in the clear, and run the
        handshake.

        :returns: the client's protocol and the pump.
        """
        client = _Recorder()
        options = optionsForClientTLS(
            HOST, trustRoot=self.trust, acceptableProtocols=offered
        )
        tls = TLSMemoryBIOFactory(
            options, True, Factory.forProtocol(lambda: client), self.reactor
        )
        client_side = tls.buildProtocol(SERVER)
        if first:
            wrapping = WrappingFactory(tls)
            wrapping.protocol = _SendsFirst
            wrapping.first = first  # type: ignore[attr-defined]
            client_side = wrapping.buildProtocol(SERVER)
        pump = self.pump_to(client_side)
        pump.flush()
        return client, pump

    def test_first_shared_protocol(self) -> None:
        """
        A client offering C{h2} and C{http/1.1} to a listener whose factory
        speaks C{http/1.1} negotiates C{http/1.1}, and data flows.
        """
        server = _Speaks(b"http/1.1")
        self.listen(server)
        client, pump = self.connect([b"h2", b"http/1.1"])
        self.assertEqual(client.transport.negotiatedProtocol, b"http/1.1")
        client.transport.write(b"GET / HTTP/1.1\r\n\r\n")
        pump.flush()
        self.assertEqual(server.built[0].received, b"GET / HTTP/1.1\r\n\r\n")

    def test_preference_is_the_servers(self) -> None:
        """
        The listener's factory's order decides, not the client's.
        """
        self.listen(_Speaks(b"imap", b"h2"))
        client, _ = self.connect([b"h2", b"imap"])
        self.assertEqual(client.transport.negotiatedProtocol, b"imap")

    def test_no_protocols_no_alpn(self) -> None:
        """
        A factory that names no protocol (a TCP frontend without C{alpn})
        completes the handshake with a client that offers ALPN, without
        choosing a protocol (Twisted alone aborts it with an internal
        error).
        """
        server = _Speaks()
        self.listen(server)
        client, pump = self.connect([b"h2", b"http/1.1"])
        self.assertIsNone(client.transport.negotiatedProtocol)
        client.transport.write(b"ping")
        pump.flush()
        self.assertEqual(server.built[0].received, b"ping")

    def test_no_shared_protocol_no_alpn(self) -> None:
        """
        A client whose offer shares nothing with the factory's list still
        completes the handshake, without ALPN (as HAProxy does); so does a
        client that offers no ALPN at all.
        """
        server = _Speaks(b"http/1.1")
        self.listen(server)
        for offered in ([b"h2"], None):
            client, pump = self.connect(offered)
            self.assertIsNone(client.transport.negotiatedProtocol)
            client.transport.write(b"ping")
            pump.flush()
            self.assertEqual(server.built[-1].received, b"ping", offered)

    def test_haproxy_header_before_tls(self) -> None:
        """
        On C{haproxy:ssl:}, the PROXY header comes in the clear before the
        handshake (where load balancers send it); the frontend's protocol
        sees the client it names, and ALPN is the frontend's.
        """
        server = _Speaks(b"http/1.1")
        self.listen(server, "haproxy:")
        header = b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 8443\r\n"
        client, pump = self.connect([b"h2", b"http/1.1"], first=header)
        self.assertEqual(client.transport.negotiatedProtocol, b"http/1.1")
        client.transport.write(b"hello")
        pump.flush()
        protocol = server.built[0]
        self.assertEqual(protocol.received, b"hello")
        self.assertEqual(protocol.transport.getPeer().host, "198.51.100.9")

    def test_failed_handshake_logged_once(self) -> None:
        """
        A client that speaks plain HTTP to the TLS listener fails the
        handshake, and that is logged once, as a warning naming the
        listener, the client and OpenSSL's reason.
        """
        self.listen(_Speaks(b"http/1.1"))
        plain = _Recorder()
        with capturedLogs() as events:
            pump = self.pump_to(plain)
            plain.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            pump.flush()
        ours = [e for e in events if e.get("listener") == "web"]
        self.assertEqual(len(ours), 1, ours)
        self.assertEqual(ours[0]["log_level"], LogLevel.warn)
        self.assertEqual(ours[0]["client"], CLIENT.host)
        self.assertIn("http request", ours[0]["reason"])

    def test_client_leaving_mid_handshake(self) -> None:
        """
        A client that connects and leaves without a handshake (a port scan,
        a load balancer's TCP check) is logged once, for information only.
        """
        self.listen(_Speaks(b"http/1.1"))
        silent = _Recorder()
        with capturedLogs() as events:
            pump = self.pump_to(silent)
            silent.transport.loseConnection()
            pump.flush()
        ours = [e for e in events if e.get("listener") == "web"]
        self.assertEqual([e["log_level"] for e in ours], [LogLevel.info])

    def test_silent_client_cut_off(self) -> None:
        """
        A client that connects and never completes its handshake is closed
        after C{timeout_handshake} (10 s by default), logged once, for
        information; before that it is left alone.
        """
        self.listen(_Speaks(b"http/1.1"))
        silent = _Recorder()
        with capturedLogs() as events:
            pump = self.pump_to(silent)
            self.reactor.advance(9.9)
            pump.flush()
            self.assertFalse(pump.serverIO.disconnecting)
            self.reactor.advance(0.2)
            pump.flush()
        self.assertTrue(pump.serverIO.disconnecting or pump.serverIO.disconnected)
        ours = [e for e in events if e.get("listener") == "web"]
        self.assertEqual([e["log_level"] for e in ours], [LogLevel.info], ours)
        self.assertIn("no TLS handshake within 10 s", formatEvent(ours[0]))

    def test_no_timeout_after_handshake(self) -> None:
        """
        Once the handshake is done, the handshake timer is gone: the
        connection stays open however long it is quiet.
        """
        self.listen(_Speaks(b"http/1.1"))
        client, pump = self.connect([b"http/1.1"])
        self.reactor.advance(60)
        pump.flush()
        self.assertFalse(pump.serverIO.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_log_after_handshake(self) -> None:
        """
        A connection whose handshake completed logs nothing of TLS when it
        ends.
        """
        self.listen(_Speaks(b"http/1.1"))
        with capturedLogs() as events:
            client, pump = self.connect([b"http/1.1"])
            client.transport.loseConnection()
            pump.flush()
        self.assertEqual([e for e in events if e.get("listener") == "web"], [])


class FrontendALPNTests(TestCase):
    """
    What each kind of frontend offers in ALPN, and the C{alpn} key.
    """

    def factories(self, *frontends: dict[str, object]) -> list[Factory]:
        """
        The factories L{ProxyService} builds for C{frontends}; the ports
        listen with switches in front of them (a reload may swap them),
        which negotiate what they do.
        """
        config = load_config(
            {
                "frontend": [
                    {"listen": "tcp:0", "pool": "p", **frontend}
                    for frontend in frontends
                ],
                "pool": {"p": {"backend": [{"address": "127.0.0.1:1"}]}},
            },
            REGISTRY,
        )
        reactor = MemoryReactorClock()
        proxy = ProxyService(config, reactor, REGISTRY)
        proxy.bind()
        built = [listener.factory for listener in proxy.listeners.values()]
        ported = [factory for _, factory, _, _ in reactor.tcpServers]
        self.assertEqual(
            [factory.acceptableProtocols() for factory in ported],
            [factory.acceptableProtocols() for factory in built],
        )
        return built

    def test_http_frontend(self) -> None:
        """
        An HTTP frontend's factory speaks C{http/1.1}.
        """
        [factory] = self.factories({"mode": "http"})
        self.assertIsInstance(factory, HTTPProxyFactory)
        self.assertProvides(IProtocolNegotiationFactory, factory)
        self.assertEqual(factory.acceptableProtocols(), [b"http/1.1"])

    def test_tcp_frontend(self) -> None:
        """
        A TCP frontend's factory speaks what its C{alpn} says, in order, and
        nothing by default.
        """
        configured, default = self.factories(
            {"alpn": ["imap", "x-custom/1"]}, {"name": "other"}
        )
        self.assertIsInstance(configured, TCPProxyFactory)
        self.assertProvides(IProtocolNegotiationFactory, configured)
        self.assertEqual(configured.acceptableProtocols(), [b"imap", b"x-custom/1"])
        self.assertEqual(default.acceptableProtocols(), [])

    def test_alpn_errors(self) -> None:
        """
        C{alpn} must be an array of distinct protocol names of printable
        ASCII, and only on TCP frontends; each mistake names the key.
        """
        pool = {"p": {"backend": [{"address": "127.0.0.1:1"}]}}
        for frontend, fragment in [
            ({"alpn": "h2"}, "an array of strings"),
            ({"alpn": [""]}, "distinct ALPN protocol names"),
            ({"alpn": ["h2", "h2"]}, "distinct ALPN protocol names"),
            ({"alpn": ["with space"]}, "printable ASCII"),
            ({"alpn": ["x" * 256]}, "1 to 255"),
            ({"mode": "http", "alpn": ["h2"]}, 'always negotiate "http/1.1"'),
        ]:
            data = {
                "frontend": [{"listen": "tcp:0", "pool": "p", **frontend}],
                "pool": pool,
            }
            error = self.assertRaises(ConfigError, load_config, data, REGISTRY)
            self.assertEqual(error.path, "frontend[0].alpn")
            self.assertIn(fragment, error.message)
