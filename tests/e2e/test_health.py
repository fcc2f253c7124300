"""
End-to-end: health checking in front of real HTTP backends
(L{tests.e2e.http_backend}): active HTTP probes, passive checks on live
traffic, and a drained backend.
"""

from __future__ import annotations

import re
import socket
import time
from collections import Counter

from tests.e2e._harness import (
    COOKIE_KEYS,
    HOST,
    HTTP_NAMES,
    HTTPE2ETestCase,
    listen_on,
)

NAMES = HTTP_NAMES
COOKIE = "STICKY"
COOKIE_PERSISTENCE = {"strategy": "cookie", "keys": list(COOKIE_KEYS)}
#: Time for what the timing budgets leave out: starting curl, polling the
#: proxy's log, a loaded machine.
SLACK = 0.75


def state_line(backend: str, new: str, pool: str = "main") -> str:
    """
    A regular expression for the proxy's log line saying that C{backend}'s
    health state became C{new}; its groups are C{old} and C{reason}.
    """
    return (
        rf"backend {pool}/{re.escape(backend)} health state: "
        rf"(?P<old>[a-z ]+) -> {re.escape(new)} \((?P<reason>.*)\)$"
    )


def requests_accepted(listener: socket.socket) -> list[bytes]:
    """
    Accept every connection waiting on C{listener} and read the start of
    what each sent (up to the end of a request head, or one second).
    """
    listener.setblocking(False)
    heads = []
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return heads
        with connection:
            connection.settimeout(1.0)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    data = connection.recv(4096)
                    if not data:
                        break
                    head += data
            except OSError:
                pass
            heads.append(head)


class ActiveHealthTests(HTTPE2ETestCase):
    """
    C{[pool.main.health] type = "http"}: probes of C{/health} every half
    second.
    """

    INTERVAL = 0.5
    TIMEOUT = 0.5
    FALL = 2
    RISE = 2
    JITTER = 0.1
    HEALTH = {
        "type": "http",
        "path": "/health",
        "interval": INTERVAL,
        "timeout": TIMEOUT,
        "fall": FALL,
        "rise": RISE,
        "jitter": JITTER,
    }

    def test_failing_health_path(self) -> None:
        """
        A backend whose health path starts answering 500 goes down after
        C{fall} failed probes, within fall x interval x (1 + jitter) +
        timeout, as measured; from then on no request reaches it and none
        fails: cookieless ones go to the other two, and a client whose
        cookie names it is moved (200, a new cookie) and stays moved.  Once
        its health path answers 200 again it is up after C{rise} passed
        probes, within rise x interval x (1 + jitter) + timeout, and takes
        new clients again.
        """
        self.start_http_proxy(COOKIE_PERSISTENCE, health=self.HEALTH)
        victim = "b2"
        jars = [self.jar(f"client{n}") for n in range(len(NAMES))]
        bound = {self.served("/", *jar).backend: jar for jar in jars}
        self.assertEqual(set(bound), set(NAMES))
        control = f"http://{HOST}:{self.backends[victim].port}/_control/"

        mark = len(self.proxy.output())
        started = time.monotonic()
        self.assertEqual(self.curl(control + "unhealthy").status, 200)
        budget = self.FALL * self.INTERVAL * (1 + self.JITTER) + self.TIMEOUT
        down = self.wait_for_line(
            self.proxy, state_line(victim, "down"), budget + 5, since=mark
        )
        took = time.monotonic() - started
        self.assertLessEqual(
            took, budget + SLACK, f"{victim} went down after {took:.2f}s"
        )
        self.assertGreaterEqual(
            took, (self.FALL - 1) * self.INTERVAL * (1 - self.JITTER)
        )
        self.assertIn("probe failed: HTTP 500", down["reason"])
        self.assertIn(f"({self.FALL}/{self.FALL})", down["reason"])
        going = re.compile(state_line(victim, "going down"), re.M).search(
            self.proxy.output(), mark, down.start()
        )
        self.assertIsNotNone(going, "no 'going down' line before 'down'")
        assert going is not None
        self.assertIn("(1/", going["reason"])

        others = set(NAMES) - {victim}
        spread = Counter(self.served().backend for _ in range(8))
        self.assertEqual(set(spread), others, spread)
        moved = self.served("/", *bound[victim])
        self.assertEqual(self.decision(moved)[:2], ("cookie", "redispatch"))
        self.assertIsNotNone(moved.set_cookie(COOKIE), moved.describe())
        stays = [self.served("/", *bound[victim]).backend for _ in range(4)]
        self.assertEqual(set(stays), {moved.backend}, stays)
        for name in others:
            self.assertEqual(self.served("/", *bound[name]).backend, name)

        mark = len(self.proxy.output())
        started = time.monotonic()
        self.assertEqual(self.curl(control + "healthy").status, 200)
        budget = self.RISE * self.INTERVAL * (1 + self.JITTER) + self.TIMEOUT
        up = self.wait_for_line(
            self.proxy, state_line(victim, "up"), budget + 5, since=mark
        )
        took = time.monotonic() - started
        self.assertLessEqual(
            took, budget + SLACK, f"{victim} came up after {took:.2f}s"
        )
        self.assertEqual(up["old"], "going up")
        self.assertIn(f"probe passed ({self.RISE}/{self.RISE})", up["reason"])
        spread = Counter(self.served().backend for _ in range(6))
        self.assertEqual(set(spread), set(NAMES), spread)


class PassiveHealthTests(HTTPE2ETestCase):
    """
    HTTP probes only every 30 s, and C{passive_fall = 2}: live traffic finds
    a dead backend first.
    """

    INTERVAL = 30.0
    PASSIVE_FALL = 2

    def test_killed_backend_taken_out_passively(self) -> None:
        """
        A backend killed outright is taken down by passive checks: after
        C{passive_fall} refused connects in a row (each retried on another
        backend, so every request succeeds) the proxy logs its state change
        to down with the failed connects as the reason, within seconds of
        the kill, long before the next probe is due.  From then on the
        proxy does not try it at all (a listener put on its port receives
        no request but, at most, a probe), and every request is served by
        the other two backends.
        """
        self.start_http_proxy(
            None,
            health={
                "type": "http",
                "path": "/health",
                "interval": self.INTERVAL,
                "timeout": 1.0,
                "passive_fall": self.PASSIVE_FALL,
            },
        )
        spread = Counter(self.served().backend for _ in range(3))
        self.assertEqual(set(spread), set(NAMES))
        victim = "b2"
        port = self.backends[victim].port
        mark = len(self.proxy.output())
        killed = time.monotonic()
        self.backends[victim].kill()
        pattern = re.compile(state_line(victim, "down"), re.MULTILINE)
        served: list[str | None] = []

        def down_logged() -> re.Match[str] | None:
            served.append(self.served().backend)
            return pattern.search(self.proxy.output(), mark)

        down = self.wait(down_logged, 10.0, f"{victim} to go down", self.proxy)
        took = time.monotonic() - killed
        self.assertNotIn(victim, served)
        self.assertIn("connect failed", down["reason"])
        self.assertIn(f"({self.PASSIVE_FALL} in a row)", down["reason"])
        self.assertLess(
            took, self.INTERVAL / 10, f"{victim} went down after {took:.2f}s"
        )

        listener = listen_on(port, reuse=True)
        self.addCleanup(listener.close)
        after = Counter(self.served().backend for _ in range(12))
        self.assertEqual(set(after), set(NAMES) - {victim}, after)
        tried = [
            head
            for head in requests_accepted(listener)
            if b"stickyproxy-probe" not in head
        ]
        self.assertEqual(tried, [], f"connections to {victim}'s port after it was down")


class DrainTests(HTTPE2ETestCase):
    """
    C{admin_state = "drain"}, set across a restart of the proxy (there is
    no admin interface yet); the cookie is stateless, so the same keys
    recognise the cookies issued before the restart.
    """

    def test_drained_backend_keeps_sticky_clients(self) -> None:
        """
        After a restart with backend b2 in C{admin_state = "drain"} (same
        cookie keys), clients whose cookies name b2 still reach it, as
        hits, while 30 new cookieless clients, and 6 new clients with
        cookie jars, all go to b1 and b3; clients of b1 and b3 keep theirs.
        """
        self.start_http_proxy(COOKIE_PERSISTENCE)
        drained = "b2"
        clients: dict[str, list[tuple[str, ...]]] = {}
        for n in range(6):
            jar = self.jar(f"client{n}")
            backend = self.served("/", *jar).backend
            assert backend is not None
            clients.setdefault(backend, []).append(jar)
        self.assertEqual(
            {k: len(v) for k, v in clients.items()}, dict.fromkeys(NAMES, 2)
        )

        self.proxy.stop()
        config = self.http_proxy_config(
            self.port,
            COOKIE_PERSISTENCE,
            backend_options={drained: {"admin_state": "drain"}},
        )
        self.proxy = self.start_proxy_with_config(
            config, self.port, config_name="drain.toml"
        )

        for name, jars in clients.items():
            for jar in jars:
                for _ in range(3):
                    result = self.served("/", *jar)
                    self.assertEqual(self.decision(result), ("cookie", "hit", name))
        others = set(NAMES) - {drained}
        new = Counter(self.served().backend for _ in range(30))
        self.assertEqual(set(new), others, new)
        fresh = [self.jar(f"new{n}") for n in range(6)]
        first = [self.served("/", *jar).backend for jar in fresh]
        self.assertEqual(set(first), others, first)
        again = [self.served("/", *jar).backend for jar in fresh]
        self.assertEqual(again, first)
