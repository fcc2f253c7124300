"""
End-to-end: absurd durations and counts stop C{twistd} with one line that
names the key and its range (issue 8, defect 11).
"""

from __future__ import annotations

from tests.e2e._harness import HOST, E2ETestCase, free_port


class BoundsTests(E2ETestCase):
    def run_with(self, pool: str = "", health: str = "", persistence: str = "") -> str:
        """
        Run the proxy on a config with these extra lines until it exits.

        :returns: the path of the config file.
        """
        port = free_port()
        path = self.write_config(
            "\n".join(
                [
                    "[[frontend]]",
                    f'listen = "tcp:{port}:interface={HOST}"',
                    'pool = "pg"',
                    "[frontend.persistence]",
                    'strategy = "source-ip"',
                    persistence,
                    "[pool.pg]",
                    pool,
                    "[pool.pg.health]",
                    health,
                    "[[pool.pg.backend]]",
                    f'address = "{HOST}:1"',
                    "",
                ]
            )
        )
        self.proxy = self.run_proxy_to_exit("--config", path, port=port)
        return path

    def test_probe_storm_refused(self) -> None:
        """
        C{interval = 0.000001} (a probe storm) is refused before anything
        starts, with the key and the range.
        """
        self.run_with(health='type = "tcp"\ninterval = 0.000001')
        self.assert_config_error(
            self.proxy,
            "pool.pg.health.interval",
            "expected a positive number from 0.1 to 86400",
            "got a number (1e-06)",
        )

    def test_strategy_option_refused(self) -> None:
        """
        A strategy's duration is bounded the same way: a stick table whose
        entries would last a millisecond.
        """
        self.run_with(persistence='mode = "table"\ntimeout = 0.001')
        self.assert_config_error(
            self.proxy,
            "frontend[0].persistence.timeout",
            "expected a positive number from 1 to 31536000",
        )

    def test_count_refused(self) -> None:
        """
        A count past its range: a million retries.
        """
        self.run_with(pool="retries = 1000000")
        self.assert_config_error(
            self.proxy, "pool.pg.retries", "expected an integer from 0 to 100"
        )
