"""
End-to-end: the dashboard at C{/} of the real proxy's admin listener, in a
real browser (headless Chromium, driven over the DevTools protocol), over
real backends and cookie clients.

C{test_drain} saves a screenshot of the page while a backend drains: into
the directory named by C{STICKYPROXY_SCREENSHOT_DIR} when it is set (the
documentation's is made with C{STICKYPROXY_SCREENSHOT_DIR=docs/_static}),
else into the test's temporary directory, so that ordinary runs leave the
working tree alone.

Skipped when Chromium is not installed (Debian: C{apt-get install
chromium}).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.e2e._harness import (
    COOKIE_KEYS,
    HOST,
    HTTP_NAMES,
    Browser,
    HTTPE2ETestCase,
    WaitTimeout,
    free_port,
    require_chromium,
)

#: Where C{test_drain} saves C{dashboard.png}, when set.
SCREENSHOT_DIR = "STICKYPROXY_SCREENSHOT_DIR"
#: The admin token of L{TokenBrowserTests}.
TOKEN = "end-to-end-admin-token-not-a-secret"
#: Seconds a cookie client's session counts after its last request.
MAX_IDLE = 8
#: Cookie clients, each with its own jar, spread over the backends.
CLIENTS = 6
#: The drain deadline typed into the page, in seconds.
DEADLINE = 300
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


class DashboardE2ETestCase(HTTPE2ETestCase):
    """
    An HTTP frontend with cookie persistence over three backends, and the
    admin listener (with the C{[admin]} options in L{admin}).
    """

    admin: dict[str, object] = {}

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
        self.proxy = self.start_proxy_with_admin(
            config,
            self.port,
            {"listen": f"tcp:{admin_port}:interface={HOST}", **self.admin},
            admin_port,
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

    def card_shows(
        self,
        browser: Browser,
        name: str,
        what: str,
        timeout: float = SHOWS,
        **expected: object,
    ) -> dict[str, Any]:
        """
        Wait until the card of backend C{name} shows C{expected} (and, for
        C{sessions_at_least}, at least that many sessions).

        :returns: the card, as it then was.
        """
        at_least = expected.pop("sessions_at_least", None)

        def shown() -> dict[str, Any] | None:
            card = self.cards(browser).get(name)
            if card is None or any(card[k] != v for k, v in expected.items()):
                return None
            if at_least is not None and card["sessions"] < at_least:
                return None
            return card

        return self.wait(
            shown, timeout, f"the card of {name} to show {what}", self.proxy
        )

    def api_backend(self, name: str) -> dict[str, Any]:
        """
        The backend's object from C{GET /api/backends}.
        """
        result = self.curl(self.admin_url + "api/backends")
        backends = {b["name"]: b for b in json.loads(result.body)}
        found: dict[str, Any] = backends[name]
        return found


class DashboardBrowserTests(DashboardE2ETestCase):
    """
    The dashboard of a proxy whose admin listener needs no token.
    """

    def test_every_backend(self) -> None:
        """
        The first HTML from the proxy already lists the frontend, the pool
        and every backend with its state; in the browser the page goes live
        and shows every backend up and ready.  A change the API refuses
        (a negative weight) shows the API's error on the backend's card.
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
        browser.type_into('article[data-backend="b2"] input[name="weight"]', "-1")
        browser.click('article[data-backend="b2"] button[data-action="weight"]')
        error = self.wait(
            lambda: self.cards(browser)["b2"]["error"],
            SHOWS,
            "the card of b2 to show an error",
            self.proxy,
        )
        self.assertIn("Could not set the weight: 400", error)
        self.assertEqual(self.api_backend("b2")["weight"], 1)

    def test_backends_come_and_go(self) -> None:
        """
        A backend added through the API appears on the page, and one removed
        disappears, without the page being reloaded.
        """
        browser = self.open_dashboard()
        browser.evaluate("window.notReloaded = true")
        port = self.backends["b1"].port
        added = self.curl(
            self.admin_url + "api/pools/main/backends",
            "-X",
            "POST",
            "--data",
            json.dumps({"name": "b4", "address": f"{HOST}:{port}"}),
        )
        self.assertEqual(added.status, 201, added.describe())
        self.card_shows(browser, "b4", "up and ready", state="up", admin="ready")
        removed = self.curl(
            self.admin_url + "api/pools/main/backends/b1", "-X", "DELETE"
        )
        self.assertEqual(removed.status, 204, removed.describe())
        self.wait(
            lambda: sorted(self.cards(browser)) == ["b2", "b3", "b4"],
            SHOWS,
            "the card of b1 to go",
            self.proxy,
        )
        self.assertTrue(browser.evaluate("window.notReloaded"))

    def test_drain(self) -> None:
        """
        Clicking "Drain" (with a deadline) on a backend that holds cookie
        sessions puts it in drain: its card shows the drain's progress
        (sessions left out of those at the start, time left to the
        deadline, as bars), its sticky clients keep coming to it, the
        sessions left fall as they leave (a page opened then shows them out
        of the same number), and it goes to maint when the last has gone.
        The page is saved as a screenshot meanwhile.
        """
        browser = self.open_dashboard()
        jars = [self.jar(f"client{n}") for n in range(CLIENTS)]
        bound = [self.served("/", *jar).backend for jar in jars]
        target = bound[0]
        assert target is not None
        mine = [
            jar for jar, backend in zip(jars, bound, strict=True) if backend == target
        ]
        self.assertGreaterEqual(len(mine), 2, bound)
        self.card_shows(browser, target, "its sessions", sessions_at_least=len(mine))

        selector = f'article[data-backend="{target}"]'
        browser.type_into(f'{selector} input[name="deadline"]', str(DEADLINE))
        browser.click(f'{selector} button[data-action="drain"]')
        card = self.card_shows(
            browser, target, "a drain in progress", admin="drain", draining=True
        )
        left, before = (int(n) for n in card["drain_sessions"].split(" of "))
        self.assertEqual((left, before), (len(mine), len(mine)), card)
        self.assertEqual(card["sessions_bar"], [left, before])
        self.assertIn("left of", card["drain_time"])
        elapsed, total = card["time_bar"]
        self.assertTrue(0 <= elapsed < 10 and DEADLINE - 10 < total <= DEADLINE, card)
        self.assertIsNotNone(self.api_backend(target)["drain"]["deadline"])

        # New clients go elsewhere; one sticky client stays on the draining
        # backend while the others leave, so its sessions left fall.
        for n in range(CLIENTS):
            self.assertNotEqual(self.served("/", *self.jar(f"new{n}")).backend, target)
        stays = mine[0]

        def fallen() -> dict[str, Any] | None:
            self.assertEqual(self.served("/", *stays).backend, target)
            card = self.cards(browser)[target]
            shown = card["draining"] and card["drain_sessions"] == f"1 of {before}"
            return card if shown and card["requests"] not in ("–", "0.0") else None

        card = self.wait(
            fallen,
            MAX_IDLE + SHOWS,
            f"{target}'s sessions left to fall to 1 of {before}",
            self.proxy,
            interval=1.0,
        )
        self.assertEqual(card["sessions_bar"], [1, before])
        self.save_screenshot(browser)

        # A page opened now (with nothing remembered) shows the same.
        self.served("/", *stays)
        browser.evaluate("sessionStorage.clear()")
        browser.load(self.admin_url)
        self.card_shows(
            browser, target, "the drain's start", drain_sessions=f"1 of {before}"
        )

        # The last one leaves: the drain is over.
        card = self.card_shows(
            browser, target, "maint", timeout=MAX_IDLE + SHOWS, admin="maint"
        )
        self.assertFalse(card["draining"], card)
        self.assertEqual(self.api_backend(target)["admin_state"], "maint")

    def save_screenshot(self, browser: Browser) -> None:
        """
        Save the page as C{dashboard.png} (see the module's docstring).
        """
        directory = Path(os.environ.get(SCREENSHOT_DIR) or self.workdir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "dashboard.png"
        browser.screenshot(path)
        self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")


class TokenBrowserTests(DashboardE2ETestCase):
    """
    The dashboard of a proxy whose admin listener needs a token for changes.
    """

    admin = {"token": TOKEN}

    def dialog_open(self, browser: Browser) -> bool:
        return bool(browser.evaluate('document.getElementById("token-dialog").open'))

    def test_asks_once(self) -> None:
        """
        The first change asks for the token in a dialog: cancelled, the
        change is not made and the card says why; given, the change is
        made with it, and the next change does not ask again.
        """
        browser = self.open_dashboard()
        b1 = 'article[data-backend="b1"]'
        browser.click(f'{b1} button[data-action="maint"]')
        self.wait(lambda: self.dialog_open(browser), SHOWS, "the token dialog")
        browser.click('#token-dialog button[value="cancel"]')
        self.wait(
            lambda: "needs the admin token" in self.cards(browser)["b1"]["error"],
            SHOWS,
            "the card of b1 to say the change needs the token",
            self.proxy,
        )
        self.assertEqual(self.api_backend("b1")["admin_state"], "ready")

        browser.click(f'{b1} button[data-action="maint"]')
        self.wait(lambda: self.dialog_open(browser), SHOWS, "the token dialog")
        browser.type_into('#token-dialog input[name="token"]', TOKEN)
        browser.click('#token-dialog button[value="ok"]')
        card = self.card_shows(browser, "b1", "maint", admin="maint")
        self.assertEqual(card["error"], "")
        self.assertEqual(self.api_backend("b1")["admin_state"], "maint")

        browser.click(f'{b1} button[data-action="ready"]')
        self.card_shows(browser, "b1", "ready", admin="ready")
        self.assertFalse(self.dialog_open(browser))
        self.assertEqual(self.api_backend("b1")["admin_state"], "ready")
