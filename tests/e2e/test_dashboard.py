"""
End-to-end: the dashboard at C{/} of the real proxy's admin listener, in a
real browser (headless Chromium, driven over the DevTools protocol), over
real backends and cookie clients.

Skipped when Chromium is not installed (Debian: C{apt-get install
chromium}).
"""

from __future__ import annotations

from typing import Any

from tests.e2e._harness import (
    COOKIE_KEYS,
    HOST,
    HTTP_NAMES,
    STARTUP_TIMEOUT,
    Browser,
    HTTPE2ETestCase,
    WaitTimeout,
    accepts,
    free_port,
    require_chromium,
    toml_table,
)

#: Seconds a cookie client's session counts after its last request.
MAX_IDLE = 12
#: How long anything may take to show on the page (it polls every second).
SHOWS = 30.0

#: Each backend's card, as the page shows it.
CARDS = """
Array.from(document.querySelectorAll("article[data-backend]"), (card) => {
  const f = (name) => card.querySelector(`[data-field="${name}"]`);
  return {
    pool: card.dataset.pool,
    name: card.dataset.backend,
    state: f("state").textContent,
    admin: f("admin_state").textContent,
    sessions: Number(f("sessions").textContent),
    requests: f("request_rate").textContent,
    draining: !f("drain").hidden,
    drain_sessions: f("drain_sessions").textContent,
    drain_time: f("drain_time").textContent,
    sessions_bar: [f("drain_sessions_bar").value, f("drain_sessions_bar").max],
    time_bar: [f("drain_time_bar").value, f("drain_time_bar").max],
    error: f("error").textContent,
  };
})
"""


class DashboardBrowserTests(HTTPE2ETestCase):
    """
    An HTTP frontend with cookie persistence over three backends, and the
    admin listener.
    """

    def setUp(self) -> None:
        super().setUp()
        require_chromium()
        self.backends = self.start_http_backends(*HTTP_NAMES)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        admin_port = free_port()
        self.admin_url = f"http://{HOST}:{admin_port}/"
        persistence = {
            "strategy": "cookie",
            "keys": list(COOKIE_KEYS),
            "max_idle": MAX_IDLE,
        }
        config = self.http_proxy_config(self.port, persistence)
        config += "\n".join(
            toml_table("admin", {"listen": f"tcp:{admin_port}:interface={HOST}"})
        )
        self.proxy = self.start_proxy_with_config(config + "\n", self.port)
        self.wait(
            lambda: accepts(admin_port),
            STARTUP_TIMEOUT,
            "the admin listener to accept connections",
            self.proxy,
        )

    def open_dashboard(self) -> Browser:
        """
        A browser showing the dashboard, once its script has updated it
        from the API.
        """
        browser = self.start_browser()
        try:
            browser.load(self.admin_url)
        except (RuntimeError, WaitTimeout) as error:
            self.fail_with_output(f"loading {self.admin_url} in Chromium: {error}")
        self.wait(
            lambda: (browser.text("status") or "").startswith("Live"),
            SHOWS,
            "the dashboard to update from the API",
            self.proxy,
        )
        return browser

    def cards(self, browser: Browser) -> dict[str, dict[str, Any]]:
        """
        Each backend's card as the page shows it, by backend name.
        """
        cards: list[dict[str, Any]] = browser.evaluate(CARDS)
        return {card["name"]: card for card in cards}

    def test_every_backend(self) -> None:
        """
        The first HTML from the proxy already lists the frontend, the pool
        and every backend with its state; in the browser the page goes live
        and shows every backend up and ready.
        """
        page = self.curl(self.admin_url)
        self.assertEqual(page.status, 200, page.describe())
        self.assertEqual(page.header("content-type"), "text/html; charset=utf-8")
        html = page.body.decode("utf-8")
        self.assertIn('data-frontend="main"', html)
        self.assertIn('data-pool="main"', html)
        for name in HTTP_NAMES:
            self.assertIn(f'data-backend="{name}" data-state="up"', html)
        browser = self.open_dashboard()
        cards = self.cards(browser)
        self.assertEqual(sorted(cards), sorted(HTTP_NAMES))
        for card in cards.values():
            self.assertEqual(
                (card["pool"], card["state"], card["admin"]), ("main", "up", "ready")
            )
