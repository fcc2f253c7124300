"""
End-to-end: C{twistd -n stickyproxy} with C{workers = 2}: both workers
serve the one socket, a cookie one issued is honoured by the other, a
worker killed with C{SIGKILL} is restarted with no request failing, and
C{SIGHUP} and C{SIGTERM} reach every worker.

Which worker served a request is read from the access log: the parent
relays each worker's log lines as C{[worker N] ...}.
"""

from __future__ import annotations

import http.client
import os
import re
import signal

from tests._certificates import write_self_signed
from tests.e2e._harness import (
    EXIT_TIMEOUT,
    HOST,
    IO_TIMEOUT,
    STARTUP_TIMEOUT,
    HTTPE2ETestCase,
    free_port,
    http_config,
)

#: The most requests a test makes while waiting for something to happen.
MOST_REQUESTS = 3000
#: An access log line of one of these tests' requests, as the parent
#: relays it: the worker, the request's number, the backend, the strategy
#: and the outcome.
ACCESS = re.compile(
    r'\[worker (\d+)\] main \S+ "GET /n/(\d+)" (\d+) (\S+) (\S+) (\S+)', re.MULTILINE
)
EXTRA = re.compile(r'\[worker (\d+)\] extra \S+ "GET /x/\d+"')
STARTED = re.compile(r"started worker (\d+) \(pid (\d+)\)")


class WorkersTests(HTTPE2ETestCase):
    """
    Two workers behind one HTTP frontend with cookie persistence (its key
    made by the parent in the state directory), in front of two
    L{tests.e2e.http_backend} processes.
    """

    def setUp(self) -> None:
        super().setUp()
        self.backends = self.start_http_backends("b1", "b2")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.config = "workers = 2\n" + self.http_proxy_config(
            self.port, {"strategy": "cookie"}
        )
        self.proxy = self.start_proxy_with_config(self.config, self.port)
        self.wait(
            lambda: self.ready_workers() == {1, 2},
            STARTUP_TIMEOUT * 2,
            "both workers to run",
            self.proxy,
        )
        self.requests = 0

    def ready_workers(self, since: int = 0) -> set[int]:
        """
        :returns: the workers whose reactor has started (since character
            C{since} of the parent's output).
        """
        found = re.findall(
            r"\[worker (\d+)\] Starting reactor", self.proxy.output()[since:]
        )
        return {int(worker) for worker in found}

    def worker_pids(self) -> dict[int, int]:
        """
        :returns: the pid of each worker, as the parent last logged it.
        """
        return {int(w): int(p) for w, p in STARTED.findall(self.proxy.output())}

    def request(self, cookie: str | None = None) -> tuple[int, str | None, str | None]:
        """
        GET C{/n/NUMBER} on a new connection, numbered in order.

        :returns: the request's number, the backend that answered, and the
            cookie it set (C{None} when it set none).
        """
        self.requests += 1
        if self.requests > MOST_REQUESTS:
            self.fail_with_output(f"still waiting after {MOST_REQUESTS} requests")
        number = self.requests
        connection = http.client.HTTPConnection(HOST, self.port, timeout=IO_TIMEOUT)
        try:
            headers = {"Connection": "close"}
            if cookie is not None:
                headers["Cookie"] = cookie
            connection.request("GET", f"/n/{number}", headers=headers)
            response = connection.getresponse()
            response.read()
        except OSError as error:
            self.fail_with_output(f"request {number} failed: {error!r}")
        finally:
            connection.close()
        if response.status != 200:
            self.fail_with_output(f"request {number}: status {response.status}")
        set_cookie = response.getheader("Set-Cookie")
        return number, response.getheader("X-Backend"), set_cookie

    def served(self, since: int = 0) -> dict[int, tuple[int, str, str]]:
        """
        :returns: for each request the access log shows (since character
            C{since} of the parent's output): the worker that served it,
            the backend and the persistence outcome.
        """
        return {
            int(number): (int(worker), backend, outcome)
            for worker, number, _, backend, _, outcome in ACCESS.findall(
                self.proxy.output()[since:]
            )
        }

    def test_shared_socket(self):
        """
        Both workers, two processes, accept connections on the socket the
        parent opened; the secret of the cookie keys is in the state
        directory, made once for all.
        """
        pids = self.worker_pids()
        self.assertEqual(len(set(pids.values())), 2)
        self.assertNotIn(self.proxy.pid, pids.values())

        def both() -> bool:
            self.request()
            return {w for w, _, _ in self.served().values()} == {1, 2}

        self.wait(both, STARTUP_TIMEOUT * 3, "requests served by both workers")
        self.assertTrue((self.workdir / "stickyproxy.key").exists())

    def test_cookie_across_workers(self):
        """
        A cookie one worker issued is honoured by the other: every request
        that carries it, each on a new connection, reaches the same
        backend, and both workers serve such requests as hits.
        """
        number, first, set_cookie = self.request()
        self.assertIsNotNone(set_cookie)
        assert set_cookie is not None
        cookie = set_cookie.split(";", 1)[0]
        numbers = []

        def both() -> bool:
            number, backend, _ = self.request(cookie)
            numbers.append(number)
            if backend != first:
                self.fail_with_output(f"request {number} went to {backend}")
            served = self.served()
            workers = {served[n][0] for n in numbers if n in served}
            return workers == {1, 2}

        self.wait(both, STARTUP_TIMEOUT * 3, "both workers to honour the cookie")
        served = self.served()
        self.assertEqual(
            {served[n][2] for n in numbers if n in served}, {"hit"}, self.outputs()
        )

    def test_worker_killed(self):
        """
        A worker killed with C{SIGKILL} is started again; meanwhile, and
        after, every request is served: the socket stays open in the parent
        and the other worker, so there is no gap.
        """
        self.request()
        pid = self.worker_pids()[1]
        os.kill(pid, signal.SIGKILL)
        mark = len(self.proxy.output())

        def restarted() -> bool:
            self.request()
            pids = self.worker_pids()
            return pids.get(1, pid) != pid and 1 in self.ready_workers(mark)

        self.wait(restarted, STARTUP_TIMEOUT * 3, "worker 1 to be started again")
        self.wait_for_line(
            self.proxy, rf"worker 1 \(pid {pid}\) ended by signal 9", IO_TIMEOUT
        )

        def serves() -> bool:
            number, _, _ = self.request()
            return any(w == 1 for w, _, _ in self.served(mark).values())

        self.wait(serves, STARTUP_TIMEOUT * 3, "the new worker 1 to serve")

    def test_signals(self):
        """
        C{SIGHUP} reloads the parent and then every worker; C{SIGTERM}
        stops every worker gracefully, then the parent, which exits as
        C{twistd} does (by C{SIGTERM}, once stopped), leaving no worker
        behind.
        """
        pids = self.worker_pids()
        mark = len(self.proxy.output())
        self.proxy.send_signal(signal.SIGHUP)
        for worker in (1, 2):
            self.wait_for_line(
                self.proxy, rf"\[worker {worker}\] reloaded: ", IO_TIMEOUT, mark
            )
        self.request()
        self.proxy.send_signal(signal.SIGTERM)
        self.assertIn(
            self.proxy.wait_exit(EXIT_TIMEOUT), (0, -signal.SIGTERM), self.outputs()
        )
        output = self.proxy.output()
        self.assertIn("Server Shut Down.", output)
        for worker, pid in pids.items():
            self.assertIn(f"[worker {worker}] Received SIGTERM", output)
            self.assertIn(f"worker {worker} (pid {pid}) stopped", output)
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    def served_on(self, port: int, since: int) -> set[int]:
        """
        Make requests to frontend C{extra} on C{port} until both workers
        have served one (as the access log shows, after character
        C{since} of the parent's output).

        :returns: the workers that served them.
        """
        workers: set[int] = set()

        def both() -> bool:
            self.requests += 1
            if self.requests > MOST_REQUESTS:
                self.fail_with_output(f"still waiting after {MOST_REQUESTS} requests")
            result = self.curl(f"http://{HOST}:{port}/x/{self.requests}")
            if result.status != 200:
                self.fail_with_output(f"extra: status {result.status}")
            found = EXTRA.findall(self.proxy.output()[since:])
            workers.update(int(worker) for worker in found)
            return workers == {1, 2}

        self.wait(both, STARTUP_TIMEOUT * 3, "both workers to serve on extra")
        return workers

    def test_reload_adds_a_listener(self):
        """
        A reload that adds a frontend hands its new socket to both
        workers, which serve on it; a worker killed since starts again
        with it (rather than failing, again and again, on a frontend it
        has no socket for) and serves on it too.
        """
        extra = free_port()
        ports = {name: backend.port for name, backend in self.backends.items()}
        self.write_config(
            self.config
            + http_config(extra, ports, name="extra", frontend={"access_log": True})
        )
        mark = len(self.proxy.output())
        self.proxy.send_signal(signal.SIGHUP)
        for worker in (1, 2):
            self.wait_for_line(
                self.proxy, rf"\[worker {worker}\] reloaded: ", IO_TIMEOUT, mark
            )
        self.served_on(extra, mark)
        pid = self.worker_pids()[1]
        mark = len(self.proxy.output())
        os.kill(pid, signal.SIGKILL)
        self.wait(
            lambda: 1 in self.ready_workers(mark),
            STARTUP_TIMEOUT * 3,
            "worker 1 to be started again",
            self.proxy,
        )
        self.served_on(extra, mark)
        # Started once, not again and again.
        started = STARTED.findall(self.proxy.output()[mark:])
        self.assertEqual([w for w, _ in started], ["1"], self.outputs())


class SharedSocketKindsTests(HTTPE2ETestCase):
    """
    Workers serving an C{ssl:} frontend (the shared socket is plain TCP;
    each worker does TLS) and a C{unix:} one.
    """

    def test_tls_and_unix(self):
        """
        Both frontends serve through the workers, and keep serving after a
        worker is killed: the UNIX socket's path stays while the parent
        holds it, and goes when the parent stops.
        """
        self.backends = self.start_http_backends("b1")
        key, cert = write_self_signed(self.workdir)
        port = free_port()
        path = self.workdir / "proxy.sock"
        backend = {"b1": self.backends["b1"].port}
        tls = http_config(port, backend, name="tls").replace(
            f'"tcp:{port}:interface={HOST}"',
            f'"ssl:{port}:interface={HOST}:privateKey={key}:certKey={cert}"',
        )
        unix = http_config(0, backend, name="unix").replace(
            f'"tcp:0:interface={HOST}"', f'"unix:{path}"'
        )
        proxy = self.start_proxy_with_config("workers = 2\n" + tls + unix, port)
        self.wait(
            lambda: (
                len(re.findall(r"\[worker \d\] Starting reactor", proxy.output())) == 2
            ),
            STARTUP_TIMEOUT * 2,
            "both workers to run",
            proxy,
        )

        def both_serve() -> None:
            for url, args in (
                (f"https://{HOST}:{port}/", ("--cacert", str(cert))),
                ("http://localhost/", ("--unix-socket", str(path))),
            ):
                result = self.curl(url, *args)
                self.assertEqual(result.backend, "b1", result.describe())

        both_serve()
        pid = int(STARTED.findall(proxy.output())[0][1])
        os.kill(pid, signal.SIGKILL)
        self.wait_for_line(proxy, rf"\(pid {pid}\) ended by signal 9", IO_TIMEOUT)
        self.assertTrue(path.exists())
        both_serve()
        proxy.stop(EXIT_TIMEOUT)
        self.assertFalse(path.exists())
