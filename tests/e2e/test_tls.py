"""
End-to-end: frontends listening on C{ssl:} (TLS ends at the proxy), with a
self-signed certificate made by the test, driven by clients that offer
ALPN as they all do: curl, Python's C{ssl} module, and headless Chromium.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import subprocess
from pathlib import Path

from tests._certificates import spki_fingerprint, write_self_signed
from tests.e2e._harness import (
    HOST,
    HTTP_NAMES,
    IO_TIMEOUT,
    CurlFailed,
    E2ETestCase,
    HTTPE2ETestCase,
    LineReader,
    WaitTimeout,
    curl,
    free_port,
    frontend_config,
)

TCP_NAMES = ("alpha", "bravo")


def tls_listen(port: int, key: Path, cert: Path, prefix: str = "") -> str:
    """
    The endpoint string of a TLS listener on C{127.0.0.1:port}.
    """
    return f"{prefix}ssl:{port}:interface={HOST}:privateKey={key}:certKey={cert}"


def client_context(cert: Path, alpn: list[str] | None) -> ssl.SSLContext:
    """
    A client context that trusts only C{cert} and offers C{alpn}.
    """
    context = ssl.create_default_context(cafile=str(cert))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


class HTTPOverTLSTests(HTTPE2ETestCase):
    """
    An HTTP frontend on C{ssl:}, with cookie persistence, in front of the
    HTTP test backends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.key, self.cert = write_self_signed(self.workdir)
        self.backends = self.start_http_backends(*HTTP_NAMES)
        self.port = free_port()
        self.url = f"https://{HOST}:{self.port}"
        listen = tls_listen(self.port, self.key, self.cert)
        config = self.http_proxy_config(
            self.port, {"strategy": "cookie"}, frontend={"listen": listen}
        )
        self.proxy = self.start_proxy_with_config(config, self.port)

    def test_curl(self) -> None:
        """
        curl, which offers C{h2} and C{http/1.1} over ALPN, negotiates
        C{http/1.1} and is served by a backend; the cookie the proxy sets
        is C{Secure}, since the client came over TLS.
        """
        result = self.served("/", "--cacert", str(self.cert))
        self.assertEqual(result.status, 200)
        cookie = [c for c in result.header_values("set-cookie") if "STICKY=" in c]
        self.assertEqual(len(cookie), 1, result.describe())
        self.assertIn("Secure", cookie[0])

    def test_curl_reports_http11(self) -> None:
        """
        curl's own account of the handshake says the server accepted
        C{http/1.1} over ALPN.
        """
        done = subprocess.run(
            ["curl", "-sS", "-v", "-o", "/dev/null", "--noproxy", "*"]
            + ["--max-time", str(IO_TIMEOUT), "--cacert", str(self.cert), self.url],
            capture_output=True,
            timeout=IO_TIMEOUT + 5,
            stdin=subprocess.DEVNULL,
        )
        stderr = done.stderr.decode("utf-8", "replace")
        if done.returncode != 0:
            self.fail_with_output(f"curl failed ({done.returncode}):\n{stderr}")
        self.assertIn("ALPN: server accepted http/1.1", stderr)

    def test_python_ssl(self) -> None:
        """
        Python's C{ssl} module offering C{h2} and C{http/1.1} gets
        C{http/1.1}, and its request is answered by a backend.
        """
        context = client_context(self.cert, ["h2", "http/1.1"])
        connection = http.client.HTTPSConnection(
            HOST, self.port, context=context, timeout=IO_TIMEOUT
        )
        self.addCleanup(connection.close)
        connection.connect()
        assert isinstance(connection.sock, ssl.SSLSocket)
        self.assertEqual(connection.sock.selected_alpn_protocol(), "http/1.1")
        connection.request("GET", "/")
        response = connection.getresponse()
        self.assertEqual(response.status, 200)
        self.assertIn(response.getheader("X-Backend"), HTTP_NAMES)

    def test_h2_only_client(self) -> None:
        """
        A client that offers only C{h2} completes the handshake without
        ALPN, and is then served over HTTP/1.1.
        """
        context = client_context(self.cert, ["h2"])
        with socket.create_connection((HOST, self.port), IO_TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname=HOST) as tls:
                self.assertIsNone(tls.selected_alpn_protocol())
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                self.assertTrue(LineReader(tls).line().startswith(b"HTTP/1.1 200"))

    def test_chromium(self) -> None:
        """
        Headless Chromium (which offers C{h2} and C{http/1.1}), trusting
        exactly the test's key, loads the page over TLS with C{http/1.1}
        and shows the backend's answer.
        """
        fingerprint = spki_fingerprint(self.cert.read_bytes())
        browser = self.start_browser(
            options=[f"--ignore-certificate-errors-spki-list={fingerprint}"]
        )
        devtools = browser.devtools
        devtools.call("Network.enable")
        devtools.events.clear()
        try:
            result = devtools.call("Page.navigate", url=self.url + "/")
            if result.get("errorText"):
                self.fail_with_output(f"Chromium: {result['errorText']}")
            response = devtools.wait_event("Network.responseReceived")["params"]
            devtools.wait_event("Page.loadEventFired")
            text = devtools.call(
                "Runtime.evaluate",
                expression="document.body.innerText",
                returnByValue=True,
            )["result"]["value"]
        except (RuntimeError, WaitTimeout) as error:
            self.fail_with_output(f"loading {self.url} in Chromium: {error}")
        self.assertEqual(response["response"]["status"], 200)
        self.assertEqual(response["response"]["protocol"], "http/1.1")
        self.assertIn(text.strip(), HTTP_NAMES)

    def test_failed_handshake_logged(self) -> None:
        """
        Plain HTTP sent to the TLS port fails the handshake, and the proxy
        logs it once, with OpenSSL's reason.
        """
        try:
            curl(f"http://{HOST}:{self.port}/")
        except CurlFailed:
            pass
        else:
            self.fail_with_output("plain HTTP to the TLS port got an answer")
        pattern = r"TLS handshake with 127\.0\.0\.1 failed: http request"
        self.wait_for_line(self.proxy, pattern, IO_TIMEOUT)
        self.served("/", "--cacert", str(self.cert))  # later lines are there too
        self.assertEqual(len(self.find_lines(pattern)), 1, self.proxy.output())

    def find_lines(self, pattern: str) -> list[str]:
        """
        The proxy's log lines that contain C{pattern} (a regular
        expression).
        """
        return re.findall(f".*{pattern}.*", self.proxy.output())


class TCPOverTLSTests(E2ETestCase):
    """
    A TCP frontend that ends TLS, in front of the TCP test backends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.key, self.cert = write_self_signed(self.workdir)
        self.backends = self.start_backends(*TCP_NAMES)

    def start(self, prefix: str = "", **frontend: object) -> int:
        """
        Start the proxy with a TCP frontend on TLS (after C{prefix}).

        :returns: its port.
        """
        port = free_port()
        ports = {name: backend.port for name, backend in self.backends.items()}
        listen = tls_listen(port, self.key, self.cert, prefix)
        config = frontend_config(port, ports, frontend={"listen": listen, **frontend})
        self.start_proxy_with_config(config, port)
        return port

    def greeting_over_tls(
        self, port: int, alpn: list[str] | None, first: bytes = b""
    ) -> tuple[str | None, str]:
        """
        Send C{first} in the clear, then connect over TLS offering C{alpn}.

        :returns: the protocol negotiated, and the backend's greeting.
        """
        context = client_context(self.cert, alpn)
        with socket.create_connection((HOST, port), IO_TIMEOUT) as raw:
            raw.sendall(first)
            with context.wrap_socket(raw, server_hostname=HOST) as tls:
                line = LineReader(tls).line()
                return tls.selected_alpn_protocol(), (line or b"").decode()

    def test_no_alpn_configured(self) -> None:
        """
        Without C{alpn}, a client offering ALPN completes the handshake with
        no protocol chosen, and reaches a backend.
        """
        port = self.start()
        protocol, greeting = self.greeting_over_tls(port, ["h2", "http/1.1"])
        self.assertIsNone(protocol)
        self.assertIn(greeting, TCP_NAMES)

    def test_alpn_configured(self) -> None:
        """
        With C{alpn = ["x-test/1", "imap"]}, the first of those the client
        offers is chosen.
        """
        port = self.start(alpn=["x-test/1", "imap"])
        protocol, greeting = self.greeting_over_tls(port, ["imap", "x-test/1"])
        self.assertEqual(protocol, "x-test/1")
        self.assertIn(greeting, TCP_NAMES)
        protocol, _ = self.greeting_over_tls(port, ["imap"])
        self.assertEqual(protocol, "imap")

    def test_haproxy_tls(self) -> None:
        """
        On C{haproxy:ssl:}, the PROXY header is read in the clear before the
        handshake, as load balancers send it; ALPN is then the frontend's.
        """
        port = self.start("haproxy:", alpn=["imap"])
        header = f"PROXY TCP4 198.51.100.9 {HOST} 5555 {port}\r\n".encode()
        protocol, greeting = self.greeting_over_tls(port, ["imap"], header)
        self.assertEqual(protocol, "imap")
        self.assertIn(greeting, TCP_NAMES)
