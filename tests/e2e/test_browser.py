"""
End-to-end: a real browser (headless Chromium, driven over the DevTools
protocol) on the C{--demo} HTTP frontend, whose page names the backend
that served it in C{<p id="backend">}.

Skipped when Chromium is not installed (Debian: C{apt-get install
chromium}).
"""

from __future__ import annotations

from collections import Counter

from tests.e2e._harness import (
    HOST,
    Browser,
    E2ETestCase,
    WaitTimeout,
    free_port,
    require_chromium,
)

DEMO_BACKENDS = ("demo1", "demo2", "demo3")
DEMO_COOKIE = "STICKY"


class DemoBrowserTests(E2ETestCase):
    """
    C{twistd -n stickyproxy --demo --mode http --listen ...}: three demo web
    backends behind an HTTP frontend with cookie persistence.
    """

    LOADS = 8
    PROFILES = 3

    def setUp(self) -> None:
        super().setUp()
        require_chromium()
        self.port = free_port()
        listen = f"tcp:{self.port}:interface={HOST}"
        self.proxy = self.start_proxy(
            "--demo", "--mode", "http", "--listen", listen, port=self.port
        )
        self.url = f"http://{HOST}:{self.port}/"

    def shown_backend(self, browser: Browser) -> str:
        """
        Load the demo page in C{browser} and read the backend it names.
        """
        try:
            browser.load(self.url)
            shown = browser.text("backend")
        except (RuntimeError, WaitTimeout) as error:
            self.fail_with_output(f"loading {self.url} in Chromium: {error}")
        if shown not in DEMO_BACKENDS:
            self.fail_with_output(f"the page names no demo backend: {shown!r}")
        return shown

    def test_one_browser_stays(self) -> None:
        """
        One browser (one profile, one session) loading the demo page 8 times
        is served by the same backend every time, and holds the proxy's
        C{STICKY} cookie: a session cookie, C{HttpOnly}, for the proxy's
        host.
        """
        browser = self.start_browser()
        shown = [self.shown_backend(browser) for _ in range(self.LOADS)]
        self.assertEqual(len(set(shown)), 1, shown)
        cookies = {c["name"]: c for c in browser.cookies(self.url)}
        self.assertIn(DEMO_COOKIE, cookies, cookies)
        sticky = cookies[DEMO_COOKIE]
        self.assertTrue(sticky["session"], sticky)
        self.assertTrue(sticky["httpOnly"], sticky)
        self.assertEqual(sticky["domain"], HOST)

    def test_fresh_profiles_spread(self) -> None:
        """
        Browsers with fresh profiles (no cookies yet), one after another,
        together land on more than one backend; each keeps its own on a
        second load.
        """
        seen = []
        for n in range(self.PROFILES):
            browser = self.start_browser(f"chromium-{n}")
            first = self.shown_backend(browser)
            self.assertEqual(self.shown_backend(browser), first)
            seen.append(first)
            browser.close()
            browser.process.stop()
        self.assertGreater(len(set(seen)), 1, Counter(seen))
