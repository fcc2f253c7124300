"""
End-to-end: C{app-cookie} persistence for clients that carry the
application's session id in the URL (URL rewriting, C{;jsessionid=ID} or
C{?jsessionid=ID}) instead of its cookie, in front of real HTTP backends.
"""

from __future__ import annotations

from tests.e2e._harness import COOKIE_KEYS, HTTP_NAMES, HTTPE2ETestCase

REPEATS = 4


class AppCookieURLTests(HTTPE2ETestCase):
    """
    The session id a backend set with C{Set-Cookie: JSESSIONID=...} at
    C{/login}, sent back in the URL by a client without cookies.
    """

    def login(self) -> tuple[str, str]:
        """
        Log in through the proxy.

        :returns: the session id the backend set, and that backend.
        """
        login = self.served("/login")
        session = login.set_cookie("JSESSIONID")
        if session is None or login.backend is None:
            self.fail_with_output("the login set no session:\n" + login.describe())
        return session, login.backend

    def assert_hits(self, paths: list[str], backend: str, *args: str) -> None:
        """
        Each path, requested C{REPEATS} times (which round-robin alone
        would spread over every backend), is an app-cookie hit on
        C{backend}.
        """
        for path in paths:
            for _ in range(REPEATS):
                result = self.served(path, *args)
                self.assertEqual(
                    self.decision(result), ("app-cookie", "hit", backend), path
                )

    def test_learn(self) -> None:
        """
        C{mode = "learn"}: after the login, requests without any cookie that
        carry the session id as a C{;jsessionid=} path parameter or a
        C{jsessionid} query parameter all reach the backend that issued it;
        an id the proxy never learned is balanced over all backends.
        """
        self.start_http_proxy({"strategy": "app-cookie", "mode": "learn"})
        session, backend = self.login()
        self.assert_hits(
            [
                f"/cart;jsessionid={session}",
                f"/shop;jsessionid={session}/cart?x=1",
                f"/cart?x=1&jsessionid={session}",
            ],
            backend,
        )
        strangers = [self.served("/cart;jsessionid=never.learned") for _ in range(3)]
        self.assertEqual({r.backend for r in strangers}, set(HTTP_NAMES))

    def test_follow(self) -> None:
        """
        C{mode = "follow"}: a client that keeps the proxy's cookie but
        sends the application's session id only in the URL stays bound to
        its backend (the session lives on); without the id anywhere it is
        balanced afresh.
        """
        self.start_http_proxy(
            {"strategy": "app-cookie", "mode": "follow", "keys": list(COOKIE_KEYS)}
        )
        login = self.served("/login")
        session, sticky = login.set_cookie("JSESSIONID"), login.set_cookie("STICKY")
        if session is None or sticky is None or login.backend is None:
            self.fail_with_output("the login set no cookies:\n" + login.describe())
        proxy_cookie = ("-H", f"Cookie: STICKY={sticky}")
        self.assert_hits(
            [f"/cart;jsessionid={session}", f"/cart?jsessionid={session}"],
            login.backend,
            *proxy_cookie,
        )
        gone = [self.served("/cart", *proxy_cookie) for _ in range(3)]
        self.assertEqual({r.backend for r in gone}, set(HTTP_NAMES))
