"""
End-to-end: the admin API of the real proxy, over TCP (with a token) and a
UNIX socket, driven with curl; and a drain with a deadline over real cookie
clients.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from tests.e2e._harness import (
    COOKIE_KEYS,
    HOST,
    HTTP_NAMES,
    STARTUP_TIMEOUT,
    HTTPE2ETestCase,
    HTTPResult,
    free_port,
    frontend_config,
)

TOKEN = "end-to-end-admin-token.not-a-secret"
#: Seconds a cookie client's session counts after its last request.
MAX_IDLE = 3
#: Generous bounds for what the proxy does on its own.
SETTLES = 30.0


class AdminE2ETestCase(HTTPE2ETestCase):
    """
    The proxy's admin API, through curl.
    """

    admin: str
    unix_socket: str | None = None

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        """
        One request to the admin API.

        :returns: its status and its JSON body (C{None} when empty).
        """
        args = ["-X", method]
        if token is not None:
            args += ["-H", f"Authorization: Bearer {token}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        if self.unix_socket is not None:
            args += ["--unix-socket", self.unix_socket]
        result: HTTPResult = self.curl(self.admin + path, *args)
        return result.status, json.loads(result.body) if result.body else None

    def ok(self, method: str, path: str, body: Any = None, code: int = 200) -> Any:
        """
        L{api}, failing the test unless it answers C{code}.
        """
        status, answer = self.api(method, path, body)
        if status != code:
            self.fail_with_output(f"{method} {path} answered {status}: {answer}")
        return answer

    def backend(self, name: str, pool: str = "main") -> dict[str, Any]:
        """
        A backend's object from C{GET /api/backends}.
        """
        for found in self.ok("GET", "/api/backends"):
            if (found["pool"], found["name"]) == (pool, name):
                return found  # type: ignore[no-any-return]
        self.fail_with_output(f"no backend {pool}/{name} in /api/backends")


def listening_on_loopback_only(port: int) -> bool | None:
    """
    Whether the TCP socket listening on C{port} is bound to 127.0.0.1
    (from C{/proc/net/tcp}); C{None} when that cannot be read.
    """
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            return address == "0100007F"
    return None


class AdminTCPTests(AdminE2ETestCase):
    """
    An HTTP frontend with cookies and a TCP frontend with a source-ip
    table, over the same three backends, and the admin listener on
    C{tcp:PORT} (no interface named) with a token file.
    """

    def setUp(self) -> None:
        super().setUp()
        self.backends = self.start_http_backends(*HTTP_NAMES)
        self.port, self.tcp_port, admin_port = free_port(), free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.admin = f"http://{HOST}:{admin_port}"
        token_file = self.workdir / "admin.token"
        token_file.write_text(TOKEN + "\n")
        ports = {name: backend.port for name, backend in self.backends.items()}
        config = self.http_proxy_config(
            self.port, {"strategy": "cookie", "keys": list(COOKIE_KEYS)}
        )
        config += frontend_config(
            self.tcp_port,
            ports,
            name="db",
            persistence={"strategy": "source-ip", "mode": "table"},
        )
        self.proxy = self.start_proxy_with_admin(
            config,
            self.port,
            {"listen": f"tcp:{admin_port}", "token_file": str(token_file)},
            admin_port,
        )
        self.admin_port = admin_port

    def test_read(self) -> None:
        """
        Without a token, the state is readable: every backend of both
        pools, up and ready; the pools; the frontends.  The listener binds
        127.0.0.1 though its endpoint named no interface.
        """
        if listening_on_loopback_only(self.admin_port) is False:
            self.fail_with_output("the admin listener is not bound to 127.0.0.1")
        status, backends = self.api("GET", "/api/backends", token=None)
        self.assertEqual(status, 200)
        self.assertEqual(
            [(b["pool"], b["name"], b["state"], b["admin_state"]) for b in backends],
            [("main", n, "up", "ready") for n in HTTP_NAMES]
            + [("db", n, "up", "ready") for n in HTTP_NAMES],
        )
        self.assertEqual(
            [(p["name"], p["backends"]) for p in self.ok("GET", "/api/pools")],
            [("main", list(HTTP_NAMES)), ("db", list(HTTP_NAMES))],
        )
        self.assertEqual(
            [
                (f["name"], f["mode"], f["strategies"])
                for f in self.ok("GET", "/api/frontends")
            ],
            [("main", "http", ["cookie"]), ("db", "tcp", ["source-ip"])],
        )
        self.served("/")
        self.assertEqual(
            sum(self.backend(n)["traffic"]["requests"] for n in HTTP_NAMES), 1
        )

    def test_change(self) -> None:
        """
        Changes need the token (401 without it, and nothing changes); with
        it, weight 0 sends a backend no new clients, bad input gets 400 or
        404, and a backend is added, refused removal while it holds a
        session (409), put in maint and removed.
        """
        for token in (None, "wrong"):
            status, answer = self.api(
                "PUT", "/api/pools/main/backends/b1", {"weight": 0}, token=token
            )
            self.assertEqual(status, 401, answer)
        self.assertEqual(self.backend("b1")["weight"], 1)
        self.assertEqual(
            self.ok("PUT", "/api/pools/main/backends/b1", {"weight": 0})["weight"], 0
        )
        for _ in range(4):
            self.assertNotEqual(self.served("/").backend, "b1")
        self.ok("PUT", "/api/pools/main/backends/b1", {"weight": 1})
        status, answer = self.api("PUT", "/api/pools/main/backends/b1", {"weight": -1})
        self.assertEqual((status, list(answer)), (400, ["error"]))
        self.assertIn("weight: expected an integer from 0 to 256", answer["error"])
        status, answer = self.api("PUT", "/api/pools/nope/backends/b1", {"weight": 1})
        self.assertEqual(status, 404, answer)

        b4 = self.backends["b4"] = self.start_http_backend("b4")
        added = self.ok(
            "POST",
            "/api/pools/main/backends",
            {"name": "b4", "address": f"{HOST}:{b4.port}"},
            code=201,
        )
        self.assertEqual((added["name"], added["admin_state"]), ("b4", "ready"))
        jar = None
        for n in range(8):
            if self.served("/", *self.jar(f"new{n}")).backend == "b4":
                jar = f"new{n}"
                break
        if jar is None:
            self.fail_with_output("no new client reached the added backend b4")
        self.assertEqual(self.served("/", *self.jar(jar)).backend, "b4")
        status, answer = self.api("DELETE", "/api/pools/main/backends/b4")
        self.assertEqual(status, 409, answer)
        self.assertIn("holds 1 sessions", answer["error"])
        self.ok("PUT", "/api/pools/main/backends/b4", {"admin_state": "maint"})
        self.assertIsNone(self.ok("DELETE", "/api/pools/main/backends/b4", code=204))
        self.assertEqual(
            self.ok("GET", "/api/pools/main")["backends"], list(HTTP_NAMES)
        )
        # Its client is balanced afresh.
        self.assertIn(self.served("/", *self.jar(jar)).backend, HTTP_NAMES)

    def test_table(self) -> None:
        """
        The TCP frontend's stick table lists the client's binding (with the
        token only); one key, then all, are forgotten; the HTTP frontend,
        whose cookies keep no table, has none to show.
        """
        served = self.curl(f"http://{HOST}:{self.tcp_port}/")
        self.assertIn(served.backend, HTTP_NAMES, served.describe())
        status, _ = self.api("GET", "/api/frontends/db/table", token=None)
        self.assertEqual(status, 401)
        table = self.ok("GET", "/api/frontends/db/table")
        self.assertEqual(
            [(e["key"], e["backend"], e["strategy"]) for e in table["entries"]],
            [(HOST, served.backend, "source-ip")],
        )
        self.assertEqual((table["total"], table["offset"], table["limit"]), (1, 0, 100))
        self.ok("DELETE", f"/api/frontends/db/table?key={HOST}", code=204)
        self.assertEqual(self.ok("GET", "/api/frontends/db/table")["total"], 0)
        self.curl(f"http://{HOST}:{self.tcp_port}/")
        self.ok("DELETE", "/api/frontends/db/table", code=204)
        self.assertEqual(self.ok("GET", "/api/frontends/db/table")["entries"], [])
        status, answer = self.api("GET", "/api/frontends/main/table")
        self.assertEqual(status, 404, answer)


class AdminUnixSocketTests(AdminE2ETestCase):
    """
    The admin listener on a UNIX socket with file permissions, from the
    short flags' C{--admin}.
    """

    def test_unix_socket(self) -> None:
        """
        C{--admin unix:PATH:mode=600} makes a socket only its owner may
        use, and the API answers there; without a token, changes are open
        to whoever may use the socket.
        """
        self.backends = self.start_http_backends("b1")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        path = self.workdir / "admin.sock"
        self.unix_socket = str(path)
        self.admin = "http://admin"
        self.proxy = self.start_proxy(
            "--mode",
            "http",
            "--listen",
            f"tcp:{self.port}:interface={HOST}",
            "--backend",
            f"b1={HOST}:{self.backends['b1'].port}",
            "--admin",
            f"unix:{path}:mode=600",
            port=self.port,
        )
        self.wait(path.exists, STARTUP_TIMEOUT, "the admin socket", self.proxy)
        mode = os.stat(path).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(oct(stat.S_IMODE(mode)), oct(0o600))
        self.assertEqual(
            [(b["name"], b["state"]) for b in self.ok("GET", "/api/backends")],
            [("b1", "up")],
        )
        drained = self.ok(
            "PUT", "/api/pools/main/backends/b1", {"admin_state": "drain"}
        )
        drain = drained["drain"]
        self.assertEqual(
            (drain["sessions_left"], drain["deadline"], drain["sessions_at_start"]),
            (0, None, 0),
        )


class DrainE2ETests(AdminE2ETestCase):
    """
    Cookie clients of a backend drained with a deadline, through the API.
    """

    def setUp(self) -> None:
        super().setUp()
        admin_port = free_port()
        self.admin = f"http://{HOST}:{admin_port}"
        persistence = {
            "strategy": "cookie",
            "keys": list(COOKIE_KEYS),
            "max_idle": MAX_IDLE,
        }
        self.backends = self.start_http_backends(*HTTP_NAMES)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        config = self.http_proxy_config(self.port, persistence)
        self.proxy = self.start_proxy_with_admin(
            config,
            self.port,
            {"listen": f"tcp:{admin_port}", "token": TOKEN},
            admin_port,
        )

    def test_drain_until_the_last_client_leaves(self) -> None:
        """
        A backend drained with a long deadline keeps every cookie client,
        and gets no new one, while its clients keep coming; its sessions
        fall as they stop; it goes to maint when its last cookie client
        has stopped coming (its session over, C{max_idle} later), not
        before; only then is that client moved.
        """
        first = self.served("/", *self.jar("a"))
        drained = first.backend
        second = None
        for n in range(6):
            if self.served("/", *self.jar(f"c{n}")).backend == drained:
                second = f"c{n}"
                break
        if second is None:
            self.fail_with_output(f"no second client was balanced to {drained}")
        self.assertEqual(self.backend(drained)["sessions"], 2)

        answer = self.ok(
            "PUT",
            f"/api/pools/main/backends/{drained}",
            {"admin_state": "drain", "deadline": 600},
        )
        self.assertEqual(answer["admin_state"], "drain")
        self.assertEqual(answer["drain"]["sessions_left"], 2)
        self.assertIsNotNone(answer["drain"]["deadline"])
        for n in range(4):
            self.assertNotEqual(self.served("/", *self.jar(f"new{n}")).backend, drained)

        moved: list[str] = []

        def client_comes(jar: str) -> None:
            backend = self.served("/", *self.jar(jar)).backend
            if backend != drained:
                moved.append(f"{jar} went to {backend}")

        # Both keep coming a little; then the second stops, and the first
        # keeps coming until the second's session is over.
        for _ in range(3):
            client_comes("a")
            client_comes(second)

        def second_is_over() -> bool:
            client_comes("a")
            state = self.backend(drained)
            if state["admin_state"] != "drain":
                moved.append(f"{drained} left drain early: {state}")
                return True
            return state["drain"]["sessions_left"] == 1

        self.wait(second_is_over, MAX_IDLE + SETTLES, "the second session to end")
        self.assertEqual(moved, [])

        # The last client stops coming.
        last_request = time.monotonic()
        self.wait(
            lambda: self.backend(drained)["admin_state"] == "maint",
            MAX_IDLE + SETTLES,
            f"{drained} to go to maint",
            self.proxy,
        )
        waited = time.monotonic() - last_request
        self.assertGreater(waited, MAX_IDLE - 0.5)
        self.wait_for_line(
            self.proxy,
            rf"backend main/{drained} admin state: drain -> maint "
            r"\(drained: no sessions left\)",
            SETTLES,
        )
        self.assertNotIn("drain", self.backend(drained))
        # Only now is it moved.
        self.assertNotEqual(self.served("/", *self.jar("a")).backend, drained)
