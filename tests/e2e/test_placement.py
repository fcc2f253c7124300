"""
End-to-end: session-balanced placement in the real proxy.  A backend added
through the admin API to a pool whose sessions are spread over the others
takes the new sessions first with C{balance = "leastsessions"}, while the
old sessions stay where they are.
"""

from __future__ import annotations

from collections import Counter

from tests.e2e._harness import COOKIE_KEYS, HOST, HTTP_NAMES, free_port
from tests.e2e.test_admin import TOKEN, AdminE2ETestCase

#: Sessions begun before the new backend comes, per backend.
EACH = 2


class LeastSessionsTests(AdminE2ETestCase):
    """
    An HTTP frontend with the proxy's cookie, C{leastsessions} over b1, b2
    and b3, and the admin listener.
    """

    def setUp(self) -> None:
        super().setUp()
        self.backends = self.start_http_backends(*HTTP_NAMES)
        self.port, admin_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.admin = f"http://{HOST}:{admin_port}"
        config = self.http_proxy_config(
            self.port,
            {"strategy": "cookie", "keys": list(COOKIE_KEYS)},
            pool={"balance": "leastsessions"},
        )
        self.proxy = self.start_proxy_with_admin(
            config,
            self.port,
            {"listen": f"tcp:{admin_port}", "token": TOKEN},
            admin_port,
        )

    def sessions(self) -> dict[str, int]:
        """
        Each backend's live sessions, as the admin API shows them.
        """
        return {b["name"]: b["sessions"] for b in self.ok("GET", "/api/backends")}

    def test_new_backend_fills_first(self) -> None:
        """
        Sessions begun one after another spread evenly over b1, b2 and b3;
        after b4 is added, the next new sessions all go to b4 until it holds
        as many as the others, and the old sessions stay where they were.
        """
        old = {}
        for n in range(EACH * len(HTTP_NAMES)):
            old[f"old{n}"] = self.served("/", *self.jar(f"old{n}")).backend
        self.assertEqual(
            Counter(old.values()), dict.fromkeys(HTTP_NAMES, EACH), (old, self.proxy)
        )
        self.assertEqual(self.sessions(), dict.fromkeys(HTTP_NAMES, EACH))

        b4 = self.backends["b4"] = self.start_http_backend("b4")
        self.ok(
            "POST",
            "/api/pools/main/backends",
            {"name": "b4", "address": f"{HOST}:{b4.port}"},
            code=201,
        )
        new = [self.served("/", *self.jar(f"new{n}")).backend for n in range(EACH)]
        self.assertEqual(new, ["b4"] * EACH)
        self.assertEqual(self.sessions(), dict.fromkeys((*HTTP_NAMES, "b4"), EACH))
        # Once b4 holds its share, new sessions spread over all four again.
        spread = {
            self.served("/", *self.jar(f"more{n}")).backend
            for n in range(len(HTTP_NAMES) + 1)
        }
        self.assertEqual(spread, {*HTTP_NAMES, "b4"})
        for jar, backend in old.items():
            self.assertEqual(self.served("/", *self.jar(jar)).backend, backend)
