"""
End-to-end: two real proxies sharing a real C{redis-server} (C{[store]}):
what one learns, the other honours; Redis killed mid-test, both keep
serving, and what was learned meanwhile reaches Redis when it is back; a
proxy restarted, or reloaded with new tables, finds its clients' bindings
in Redis.
"""

from __future__ import annotations

import signal

from tests._certificates import write_self_signed
from tests.e2e._harness import (
    HOST,
    HTTP_NAMES,
    STARTUP_TIMEOUT,
    HTTPE2ETestCase,
    Process,
    free_port,
    frontend_config,
    require_loopback_aliases,
    toml_table,
)
from tests.e2e._redis import redis_command, start_redis, store_config

REPEATS = 4
LEARN = {"strategy": "app-cookie", "mode": "learn", "store": "redis"}
TCP_NAMES = ("alpha", "bravo", "charlie")


def table_key(strategy: str, key: str | bytes, frontend: str = "main") -> bytes:
    """
    The Redis key of a binding in a shared table.
    """
    raw = key if isinstance(key, bytes) else key.encode()
    return f"stickyproxy:table:{frontend}:{strategy}:".encode() + raw


class SharedStoreTests(HTTPE2ETestCase):
    """
    Proxies A and B, with the same configuration but their ports, sharing
    one Redis.
    """

    def setUp(self) -> None:
        super().setUp()
        self.redis = start_redis(self)

    def start_pair(self, config: str) -> tuple[tuple[Process, int], ...]:
        """
        Start proxies A and B on C{config} (a text with C{{port}} where
        each one's port goes) and the shared C{[store]}, and wait until
        they are connected to it.

        :returns: each proxy and its port.
        """
        pair = []
        for name in ("a", "b"):
            port = free_port()
            text = config.replace("{port}", str(port))
            text += store_config(self.redis.port) + "\n"
            proxy = self.start_proxy_with_config(text, port, config_name=f"{name}.toml")
            self.wait_for_line(proxy, "store connected", STARTUP_TIMEOUT)
            pair.append((proxy, port))
        return tuple(pair)

    def start_http_pair(self) -> None:
        """
        Start the HTTP backends, and proxies A and B in front of them with
        app-cookie C{learn} in the shared store.
        """
        self.backends = self.start_http_backends(*HTTP_NAMES)
        config = self.http_proxy_config(0, LEARN).replace(
            "tcp:0:interface", "tcp:{port}:interface"
        )
        (self.a, a_port), (self.b, b_port) = self.start_pair(config)
        self.url_a = f"http://127.0.0.1:{a_port}"
        self.url_b = f"http://127.0.0.1:{b_port}"

    def through(self, url: str, path: str = "/", session: str | None = None):
        """
        A request through the proxy at C{url} (with the session's cookie),
        failing the test unless a backend served it with 200.
        """
        args = () if session is None else ("-b", f"JSESSIONID={session}")
        result = self.curl(url + path, *args)
        if result.status != 200 or result.backend not in self.backends:
            self.fail_with_output(
                f"{url}{path} was not served by a backend:\n{result.describe()}"
            )
        return result

    def login(self, url: str) -> tuple[str, str]:
        """
        Log in through the proxy at C{url}.

        :returns: the session id a backend set, and that backend.
        """
        login = self.through(url, "/login")
        session = login.set_cookie("JSESSIONID")
        if session is None or login.backend is None:
            self.fail_with_output("the login set no session:\n" + login.describe())
        return session, login.backend

    def assert_hits(self, url: str, session: str, backend: str) -> None:
        """
        C{REPEATS} requests with the session through the proxy at C{url}
        (round-robin alone would spread them) are app-cookie hits on
        C{backend}.
        """
        for _ in range(REPEATS):
            result = self.through(url, "/cart", session)
            self.assertEqual(self.decision(result), ("app-cookie", "hit", backend))

    def test_app_cookie_learned_on_a_honoured_by_b(self) -> None:
        """
        A session the application set through A is in Redis, and B sends
        its requests to the same backend.
        """
        self.start_http_pair()
        session, backend = self.login(self.url_a)
        stored = redis_command(self.redis.port, "GET", table_key("app-cookie", session))
        self.assertEqual(stored, backend.encode())
        self.assert_hits(self.url_b, session, backend)
        self.assert_hits(self.url_a, session, backend)

    def test_source_ip_table_learned_on_a_honoured_by_b(self) -> None:
        """
        A source-ip table binding made by a connection through A is
        honoured by B, whose own round-robin would have chosen otherwise.
        """
        require_loopback_aliases()
        backends = self.start_backends(*TCP_NAMES)
        config = frontend_config(
            0,
            {name: backend.port for name, backend in backends.items()},
            persistence={"strategy": "source-ip", "mode": "table", "store": "redis"},
        ).replace("tcp:0:interface", "tcp:{port}:interface")
        (_, a_port), (_, b_port) = self.start_pair(config)
        sources = ("127.0.0.2", "127.0.0.3")
        through_a = {source: self.greeting(a_port, source) for source in sources}
        self.assertEqual(len(set(through_a.values())), 2, through_a)
        for source, backend in through_a.items():
            for _ in range(REPEATS):
                self.assertEqual(self.greeting(b_port, source), backend, source)
        key = table_key("source-ip", bytes([127, 0, 0, 3]))
        self.assertEqual(
            redis_command(self.redis.port, "GET", key),
            through_a["127.0.0.3"].encode(),
        )

    def test_redis_killed_and_back(self) -> None:
        """
        With Redis killed, both proxies keep serving every request (no
        5xx), known sessions stay where they were, and a session learned
        meanwhile is written to Redis once it is back (restarted empty on
        the same port), where B finds it.
        """
        self.start_http_pair()
        before, before_backend = self.login(self.url_a)
        self.assert_hits(self.url_b, before, before_backend)
        port = self.redis.port
        self.redis.kill()
        for proxy in (self.a, self.b):
            self.wait_for_line(proxy, "store lost: ", STARTUP_TIMEOUT)
        during, during_backend = self.login(self.url_a)
        for url in (self.url_a, self.url_b):
            self.assert_hits(url, before, before_backend)
            for _ in range(REPEATS):
                self.through(url, "/", during)
        self.assert_hits(self.url_a, during, during_backend)
        self.redis = start_redis(self, port)
        for proxy in (self.a, self.b):
            self.wait_for_line(proxy, r"store back after \d+\.\d s", STARTUP_TIMEOUT)

        def written_back() -> bool:
            keys = [table_key("app-cookie", s) for s in (before, during)]
            return redis_command(port, "MGET", *keys) == [
                before_backend.encode(),
                during_backend.encode(),
            ]

        self.wait(written_back, STARTUP_TIMEOUT, "the sessions to be written back")
        self.assert_hits(self.url_b, during, during_backend)
        for proxy in (self.a, self.b):
            self.assertNotIn("Traceback", proxy.output())

    def test_restart_and_reload_keep_sticky_clients(self) -> None:
        """
        One proxy with an app-cookie C{learn} frontend and a source-ip
        table frontend in the store, stopped (C{SIGTERM}) and started again
        on the same configuration, then reloaded (C{SIGHUP}) with changed
        persistence (new, empty local tables): each time every client still
        reaches the backend it was bound to.  Asked in the reverse order,
        round-robin alone would move them.
        """
        require_loopback_aliases()
        self.backends = self.start_http_backends(*HTTP_NAMES)
        tcp = self.start_backends(*TCP_NAMES)
        port, tcp_port = free_port(), free_port()
        self.url_a = f"http://{HOST}:{port}"

        def config(timeout: int) -> str:
            table = {"store": "redis", "timeout": timeout}
            return (
                self.http_proxy_config(port, {**LEARN, **table})
                + frontend_config(
                    tcp_port,
                    {name: backend.port for name, backend in tcp.items()},
                    name="tcp",
                    persistence={"strategy": "source-ip", "mode": "table", **table},
                )
                + store_config(self.redis.port)
                + "\n"
            )

        def start() -> Process:
            proxy = self.start_proxy_with_config(config(1800), port)
            self.wait_for_line(proxy, "store connected", STARTUP_TIMEOUT)
            return proxy

        proxy = start()
        sessions = [self.login(self.url_a) for _ in HTTP_NAMES]
        self.assertEqual({backend for _, backend in sessions}, set(HTTP_NAMES))
        sources = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
        bound = [(source, self.greeting(tcp_port, source)) for source in sources]
        self.assertEqual({backend for _, backend in bound}, set(TCP_NAMES))

        def still_bound() -> None:
            for session, backend in reversed(sessions):
                self.assert_hits(self.url_a, session, backend)
            for source, backend in reversed(bound):
                self.assertEqual(self.greeting(tcp_port, source), backend, source)

        proxy.stop()
        proxy = start()
        still_bound()
        self.write_config(config(900))
        mark = len(proxy.output())
        proxy.send_signal(signal.SIGHUP)
        self.wait_for_line(
            proxy, "reloaded: .*new pool or persistence", STARTUP_TIMEOUT, mark
        )
        still_bound()
        self.assertNotIn("Traceback", proxy.output())

    def test_rediss(self) -> None:
        """
        A proxy whose store is C{rediss://} (TLS, the server's certificate
        checked against C{ssl_ca_path}) keeps its bindings there; a proxy
        that trusts another certificate does not connect, says so, and
        serves on.
        """
        trusted, other = self.workdir / "trusted", self.workdir / "other"
        for directory in (trusted, other):
            directory.mkdir()
        # ssl_ca_path holds certificates only: no key.
        key, cert = write_self_signed(self.workdir)
        (trusted / "ca.pem").write_bytes(cert.read_bytes())
        other_key, other_cert = write_self_signed(other)
        other_key.unlink()
        redis = start_redis(self, tls=(key, cert))
        self.backends = self.start_http_backends(*HTTP_NAMES)
        proxies = []
        for name, certificates in (("good", trusted), ("bad", other)):
            port = free_port()
            url = f"rediss://{HOST}:{redis.port}/0?ssl_ca_path={certificates}"
            config = self.http_proxy_config(port, LEARN)
            config += "\n".join(toml_table("store", {"url": url})) + "\n"
            proxy = self.start_proxy_with_config(config, port, config_name=name)
            proxies.append((proxy, f"http://{HOST}:{port}"))
        (good, good_url), (bad, bad_url) = proxies
        self.wait_for_line(good, "store connected: tls:", STARTUP_TIMEOUT)
        self.wait_for_line(bad, "store unavailable: tls:", STARTUP_TIMEOUT)
        session, backend = self.login(good_url)
        key_name = table_key("app-cookie", session)
        self.wait(
            lambda: (
                redis_command(redis.port, "GET", key_name, ca=cert) == backend.encode()
            ),
            STARTUP_TIMEOUT,
            "the session to be in Redis",
        )
        self.assert_hits(good_url, session, backend)
        self.login(bad_url)
        self.assertNotIn("store connected", bad.output())
