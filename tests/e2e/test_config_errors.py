"""
End-to-end: a configuration mistake ends C{twistd} with a non-zero status
and one last line, C{stickyproxy: configuration error: <key path>: ...},
and never a traceback.
"""

from __future__ import annotations

import textwrap

from tests.e2e._harness import (
    HOST,
    E2ETestCase,
    free_port,
    listen_on,
)


class ConfigErrorTests(E2ETestCase):
    """
    Each test runs the proxy on one broken config file.
    """

    def setUp(self) -> None:
        super().setUp()
        self.port = free_port()
        self.listen = f"tcp:{self.port}:interface={HOST}"

    def config(
        self,
        frontend: str = "",
        persistence: str = 'strategy = "source-ip"',
        pool: str = "",
        backend: str = f'address = "{HOST}:1"',
        listen: str | None = None,
    ) -> str:
        """
        A one-frontend config with extra lines in its tables.
        """
        listen = self.listen if listen is None else listen
        return "\n".join(
            [
                "[[frontend]]",
                'name = "db"',
                'mode = "tcp"',
                f'listen = "{listen}"',
                'pool = "pg"',
                textwrap.dedent(frontend),
                "[frontend.persistence]",
                textwrap.dedent(persistence),
                "[pool.pg]",
                textwrap.dedent(pool),
                "[[pool.pg.backend]]",
                'name = "pg1"',
                textwrap.dedent(backend),
                "",
            ]
        )

    def assertConfigError(
        self, config: str | bytes, path: str, *fragments: str, probe: bool = True
    ) -> str:
        """
        Run the proxy on C{config}: it must exit non-zero, with the
        one-line error naming C{path} (and containing each of C{fragments})
        last, and no traceback.  With C{probe}, it fails at once if the
        proxy starts serving instead.

        :returns: the error line.
        """
        file = self.workdir / "proxy.toml"
        if isinstance(config, str):
            file.write_text(config, encoding="utf-8")
        else:
            file.write_bytes(config)
        proxy = self.run_proxy_to_exit(
            "--config", str(file), port=self.port if probe else None
        )
        return self.assert_config_error(proxy, path, *fragments)

    def test_unknown_key(self) -> None:
        """
        An unknown key is named with its path and the keys expected there.
        """
        self.assertConfigError(
            self.config(frontend='colour = "blue"'),
            "frontend[0].colour",
            "unknown key",
            "listen",
        )

    def test_unknown_strategy(self) -> None:
        """
        A persistence strategy nobody registered is refused, and the
        registered ones are listed.
        """
        self.assertConfigError(
            self.config(persistence='strategy = "telepathy"'),
            "frontend[0].persistence.strategy",
            "'telepathy'",
            "source-ip",
        )

    def test_unknown_pool(self) -> None:
        """
        A frontend naming a pool that is not defined is refused.
        """
        config = self.config().replace('pool = "pg"', 'pool = "mysql"', 1)
        self.assertConfigError(config, "frontend[0].pool", "'mysql'")

    def test_wrong_type(self) -> None:
        """
        A string where an integer belongs (C{retries = "two"}) is refused.
        """
        self.assertConfigError(
            self.config(pool='retries = "two"'), "pool.pg.retries", "an integer"
        )

    def test_unparsable_listen(self) -> None:
        """
        A listen string that is no Twisted server endpoint is refused.
        """
        self.assertConfigError(
            self.config(listen="tcp:notaport"), "frontend[0].listen", "tcp:notaport"
        )

    def test_unknown_listen_endpoint_type(self) -> None:
        """
        A listen string of an endpoint type Twisted does not know is refused.
        """
        self.assertConfigError(
            self.config(listen="carrier-pigeon:7000"),
            "frontend[0].listen",
            "carrier-pigeon",
        )

    def test_port_in_use(self) -> None:
        """
        A listen port something else holds is a configuration error naming
        the frontend's listen key, not a crash.
        """
        holder = listen_on(self.port)
        self.addCleanup(holder.close)
        self.assertConfigError(
            self.config(), "frontend[0].listen", "already in use", probe=False
        )

    def test_unparsable_backend_address(self) -> None:
        """
        A backend address that is neither host:port nor a client endpoint
        string is refused with the backend's key path.
        """
        self.assertConfigError(
            self.config(backend='address = "no-port-here"'),
            "pool.pg.backend[0].address",
            "no-port-here",
        )

    def test_backend_port_out_of_range(self) -> None:
        """
        A backend port above 65535 is refused.
        """
        self.assertConfigError(
            self.config(backend=f'address = "{HOST}:99999"'),
            "pool.pg.backend[0].address",
            "99999",
        )

    def test_strategy_option_out_of_range(self) -> None:
        """
        A strategy option out of its range (C{mask = 99}) is refused by the
        strategy, with the full key path.
        """
        self.assertConfigError(
            self.config(persistence='strategy = "source-ip"\nmask = 99'),
            "frontend[0].persistence.mask",
            "0 to 32",
        )

    def test_strategy_option_unknown(self) -> None:
        """
        An option the strategy does not have (a table-mode option in hash
        mode) is refused.
        """
        self.assertConfigError(
            self.config(persistence='strategy = "source-ip"\ntimeout = 60'),
            "frontend[0].persistence.timeout",
            "unknown key",
        )

    def test_not_toml(self) -> None:
        """
        A file that is not TOML is named, with the parser's complaint.
        """
        file = str(self.workdir / "proxy.toml")
        self.assertConfigError(self.config() + "[[[\n", file, "not valid TOML")

    def test_missing_file(self) -> None:
        """
        A config file that cannot be read is named.
        """
        missing = str(self.workdir / "missing.toml")
        proxy = self.run_proxy_to_exit("--config", missing)
        self.assert_config_error(proxy, missing, "cannot read")

    # The cases below failed when written: see each docstring.

    def test_not_utf8(self) -> None:
        """
        A config file that is not UTF-8 is a configuration error naming the
        file.  (Failed when written: C{tomllib.load} raises
        C{UnicodeDecodeError}, which C{read_config_file} does not catch, so
        a traceback was printed.)
        """
        file = str(self.workdir / "proxy.toml")
        config = self.config().encode("utf-8").replace(b'"db"', b'"d\xff"')
        self.assertConfigError(config, file)

    def test_tls_listen_key_missing(self) -> None:
        """
        A TLS listener whose key file does not exist is a configuration
        error naming the listen key.  (Failed when written: the C{ssl:}
        parser reads the file and raises C{FileNotFoundError}, which
        C{ListenerService} does not catch, so a traceback was printed.)
        """
        missing = self.workdir / "missing.pem"
        listen = f"ssl:{self.port}:interface={HOST}:privateKey={missing}"
        self.assertConfigError(self.config(listen=listen), "frontend[0].listen")

    def test_tls_backend_key_missing(self) -> None:
        """
        A TLS backend whose client certificate file does not exist is a
        configuration error naming the backend's address.  (Failed when
        written: C{FileNotFoundError} escapes C{build_pool}.)
        """
        missing = self.workdir / "missing.pem"
        address = f"ssl:host={HOST}:port=1:certKey={missing}"
        self.assertConfigError(
            self.config(backend=f'address = "{address}"'), "pool.pg.backend[0].address"
        )

    def test_nan_timeout(self) -> None:
        """
        C{connect_timeout = nan} is not a positive number and is refused.
        (Failed when written: NaN passes every comparison in
        C{OptionReader.number}, so the proxy started, then closed every
        client: C{callLater} refuses a NaN delay.)
        """
        self.assertConfigError(
            self.config(pool="connect_timeout = nan"), "pool.pg.connect_timeout"
        )
