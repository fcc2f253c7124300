"""
End-to-end: a pool that passive checks alone emptied (no probe configured)
keeps trying its backends, and serves again as soon as they are back
(issue 8, defect 5).
"""

from __future__ import annotations

from tests.e2e._harness import HTTPE2ETestCase

NAMES = ("b1", "b2")
#: Long enough that a test done well within it cannot owe anything to it.
PASSIVE_COOLDOWN = 60.0
PANIC = "every backend is down by passive checks alone"


class PassivePanicTests(HTTPE2ETestCase):
    """
    Two backends, passive checks only (C{passive_fall = 1}), killed
    together and started again on the same ports.
    """

    def outage(self, **pool: object) -> None:
        """
        Start the proxy, kill both backends, wait until the proxy has found
        both down (a request then gets C{503}), and start them again.
        """
        self.start_http_proxy(
            None,
            names=NAMES,
            health={"passive_fall": 1, "passive_cooldown": PASSIVE_COOLDOWN},
            pool=pool,
        )
        self.served()
        ports = {name: backend.port for name, backend in self.backends.items()}
        for backend in self.backends.values():
            backend.kill()
        self.wait(
            lambda: self.get().status == 503,
            10.0,
            "a 503 with both backends dead",
            self.proxy,
        )
        for name, port in ports.items():
            self.backends[name] = self.start_http_backend(name, "--port", str(port))

    def test_serves_again_at_once(self) -> None:
        """
        Once the backends listen again, the very next request is served,
        not one after C{passive_cooldown}: the backend it reached is up
        again, and serves the requests that follow.  The proxy logs once
        that it tries its down backends anyway, and once that this is over.
        """
        self.outage()
        self.served()
        self.wait_for_line(self.proxy, "panic routing \\(passive\\) is over", 10.0)
        output = self.proxy.output()
        self.assertEqual(output.count(PANIC), 1, output)
        self.assertIn("a connection to it succeeded", output)
        for _ in range(4):
            self.served()

    def test_off_waits_for_cooldown(self) -> None:
        """
        With C{passive_panic = false} (HAProxy's behaviour), the proxy
        refuses clients until C{passive_cooldown}, although the backends
        are back.
        """
        self.outage(passive_panic=False)
        self.assertEqual(self.get().status, 503)
        self.assertNotIn(PANIC, self.proxy.output())
