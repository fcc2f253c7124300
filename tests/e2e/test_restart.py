"""
End-to-end: the proxy's cookies survive a restart of the real C{twistd}
process (and a crash), with no C{keys} configured, because the key is
kept in C{stickyproxy.key} in the state directory; two proxies that share
that directory agree; a broken key file stops the start.
"""

from __future__ import annotations

import os
import stat

from tests.e2e._harness import HOST, HTTP_NAMES, HTTPE2ETestCase, free_port

COOKIE = "STICKY"
#: Cookie persistence with no keys: the key comes from the state file.
NO_KEYS = {"strategy": "cookie"}
KEY_FILE = "stickyproxy.key"


class RestartTests(HTTPE2ETestCase):
    """
    C{strategy = "cookie"} without C{keys}, in front of three backends.
    """

    def bound_clients(self) -> dict[str, str]:
        """
        One new client per backend (round-robin sends three new clients to
        three backends).

        :returns: each client's cookie, mapped to the backend it got.
        """
        clients = {}
        for _ in HTTP_NAMES:
            result = self.served("/")
            value = result.set_cookie(COOKIE)
            if value is None or result.backend is None:
                self.fail_with_output(
                    "no cookie for a new client:\n" + result.describe()
                )
            clients[value] = result.backend
        self.assertEqual(set(clients.values()), set(HTTP_NAMES))
        return clients

    def assert_still_bound(self, clients: dict[str, str]) -> None:
        """
        Each cookie is a hit on the backend it was issued for, twice.
        """
        for value, backend in clients.items():
            for _ in range(2):
                result = self.served("/", "-H", f"Cookie: {COOKIE}={value}")
                self.assertEqual(
                    self.decision(result), ("cookie", "hit", backend), value
                )

    def restart(self, config: str, crash: bool = False) -> None:
        """
        Stop the proxy (SIGTERM, or SIGKILL when C{crash}) and start it
        again with C{config} on the same port; wait for it to say it uses
        the kept key.
        """
        if crash:
            self.proxy.kill()
        else:
            self.proxy.stop()
        self.proxy = self.start_proxy_with_config(config, self.port)
        self.wait_for_line(self.proxy, "using the secret kept in .*stickyproxy.key", 10)

    def test_restart_and_crash(self) -> None:
        """
        The first start makes C{stickyproxy.key} (mode 0600) in twistd's
        run directory and logs where; cookies issued then still bind their
        clients after a clean restart, and after a crash (SIGKILL) and
        start, and no new key is made.
        """
        self.start_http_proxy(NO_KEYS)
        key = self.workdir / KEY_FILE
        self.wait_for_line(self.proxy, f"made a new secret and kept it in {key}", 10)
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        secret = key.read_bytes()
        clients = self.bound_clients()
        config = self.http_proxy_config(self.port, NO_KEYS)
        self.restart(config)
        self.assert_still_bound(clients)
        self.restart(config, crash=True)
        self.assert_still_bound(clients)
        self.assertEqual(key.read_bytes(), secret)

    def test_two_proxies_share_state(self) -> None:
        """
        Two proxies whose configurations name the same C{state_dir} read
        each other's cookies: a client bound by one is a hit on the same
        backend through the other.
        """
        state = self.workdir / "state"
        state.mkdir()
        settings = f'state_dir = "{state}"\n'
        self.backends = self.start_http_backends(*HTTP_NAMES)
        for name in ("first.toml", "second.toml"):
            self.port = free_port()
            self.url = f"http://{HOST}:{self.port}"
            config = settings + self.http_proxy_config(self.port, NO_KEYS)
            self.start_proxy_with_config(config, self.port, config_name=name)
            if name == "first.toml":
                clients = self.bound_clients()
        self.assert_still_bound(clients)
        self.assertEqual(os.listdir(state), [KEY_FILE])

    def test_malformed_key_file(self) -> None:
        """
        A key file that is not what the proxy writes stops the start with a
        one-line configuration error naming the file and what was expected;
        the file is left alone.
        """
        key = self.workdir / KEY_FILE
        key.write_bytes(b"this is not a key\n")
        self.backends = self.start_http_backends(*HTTP_NAMES)
        port = free_port()
        path = self.write_config(self.http_proxy_config(port, NO_KEYS))
        proxy = self.run_proxy_to_exit("--config", path, port=port)
        self.assert_config_error(proxy, str(key), "43 base64url characters")
        self.assertEqual(key.read_bytes(), b"this is not a key\n")
