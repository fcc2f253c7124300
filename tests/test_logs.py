"""
Tests for the access log of HTTP frontends (L{AccessLog}), the connection
log of TCP frontends (L{ConnectionLog}), where their lines go (the proxy's
log, standard output, a file reopened on C{SIGUSR1}) and the C{access_log}
key.
"""

import io
import os
import signal
import textwrap

from zope.interface import implementer

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from stickyproxy import ConfigError, StrategyRegistry, load_config, read_config_file
from stickyproxy.core._logfile import (
    ILineLog,
    LogFile,
    StreamLog,
    clf_time,
    quoted,
    writable_file_problem,
)
from stickyproxy.http._accesslog import AccessLog
from stickyproxy.service import ProxyService
from stickyproxy.tap import OnSignal, Options, _makeService, check_config
from stickyproxy.tcp._connectionlog import ConnectionLog
from stickyproxy.tcp._splice import TCPProxyFactory

from tests._base import TestCase
from tests.test_http import HTTPTestCase
from tests.test_tcp import TCPTestCase

REGISTRY = StrategyRegistry.from_plugins()


def _options_for_tests(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


@implementer(ILineLog)
class Lines:
    """
    An L{ILineLog} that keeps its lines.
    """

    def __init__(self):
        self.lines = []
        self.reopened = 0

    def open(self):
        pass

    def write_line(self, line):
        self.lines.append(line)

    def reopen(self):
        self.reopened += 1

    def close(self):
        pass


class LogFileTests(TestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.path = os.path.join(self.directory, "access.log")

    def read(self, path=None):
        with open(path or self.path, encoding="utf-8") as f:
            return f.read()

    def test_provides(self):
        """
        The file, the stream and the tests' fake provide L{ILineLog}.
        """
        self.assertProvides(ILineLog, LogFile(self.path))
        self.assertProvides(ILineLog, StreamLog(io.StringIO()))
        self.assertProvides(ILineLog, Lines())

    def test_lines_appended(self):
        """
        Nothing is made until the file is opened or written to; then each
        line is in the file at once, after what it held.
        """
        log = LogFile(self.path)
        self.assertFalse(os.path.exists(self.path))
        with open(self.path, "w") as f:
            f.write("before\n")
        log.write_line("one")
        self.assertEqual(self.read(), "before\none\n")
        log.write_line("two")
        self.assertEqual(self.read(), "before\none\ntwo\n")
        log.close()

    def test_reopen_after_rename(self):
        """
        After logrotate renamed the file, L{LogFile.reopen} starts a new
        file by the name; the renamed one keeps the lines before.
        """
        log = LogFile(self.path)
        log.write_line("old")
        os.rename(self.path, self.path + ".1")
        log.write_line("still old")
        log.reopen()
        log.write_line("new")
        log.close()
        self.assertEqual(self.read(self.path + ".1"), "old\nstill old\n")
        self.assertEqual(self.read(), "new\n")

    def test_reopen_fails(self):
        """
        When the file cannot be reopened, the error is logged and lines go
        on to the file that was open.
        """
        log = LogFile(self.path)
        log.write_line("one")
        moved = self.directory + ".moved"
        os.rename(self.directory, moved)
        with capturedLogs() as events:
            log.reopen()
        log.write_line("two")
        log.close()
        (error,) = events
        self.assertEqual(error["path"], self.path)
        self.assertEqual(self.read(os.path.join(moved, "access.log")), "one\ntwo\n")

    def test_stream(self):
        """
        A stream gets each line, flushed.
        """
        stream = io.StringIO()
        log = StreamLog(stream)
        log.write_line("one")
        log.reopen()
        log.write_line("two")
        self.assertEqual(stream.getvalue(), "one\ntwo\n")

    def test_writable_file_problem(self):
        """
        A file that could be appended to has no problem; a missing
        directory and a directory in the file's place are named.
        """
        self.assertIsNone(writable_file_problem(self.path))
        missing = os.path.join(self.directory, "no", "access.log")
        self.assertIn("no directory", writable_file_problem(missing))
        self.assertIn("is a directory", writable_file_problem(self.directory))
        self.assertFalse(os.path.exists(self.path))


class FormatTests(TestCase):
    def test_clf_time(self):
        """
        Times are in the common log format, in UTC, with English months.
        """
        self.assertEqual(clf_time(1796069936.9), "30/Nov/2026:20:18:56 +0000")
        self.assertEqual(clf_time(0), "01/Jan/1970:00:00:00 +0000")

    def test_quoted(self):
        """
        Quoted fields escape quotes, backslashes, control characters and
        bytes beyond ASCII, so a client cannot end a field or a line; an
        empty field is C{"-"}.
        """
        self.assertEqual(quoted('a "b" \\ c'), '"a \\x22b\\x22 \\x5C c"')
        self.assertEqual(quoted("x\ny\x7f\xe9"), '"x\\x0Ay\\x7F\\xE9"')
        self.assertEqual(quoted(""), '"-"')


class AccessLogLineTests(HTTPTestCase):
    """
    The lines of an access log that goes to a file or standard output.
    """

    def setUp(self):
        super().setUp()
        self.reactor.advance(1796069936)
        self.lines = Lines()
        self.factory.events.subscribe(
            AccessLog(["web"], self.reactor, {"web": self.lines})
        )

    def test_combined(self):
        """
        A served request is a line of the combined log format (client,
        time it started, request line, status, body bytes, referrer, user
        agent), then the frontend, backend, strategy, outcome, duration and
        how it ended.
        """
        protocol, transport = self.client()
        protocol.dataReceived(
            b"GET /x?y HTTP/1.1\r\nHost: a\r\nReferer: http://r/\r\n"
            b'User-Agent: curl/8 "x"\r\n\r\n'
        )
        backend, _ = self.accept()
        self.reactor.advance(0.25)
        backend.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        self.assertEqual(
            self.lines.lines,
            [
                '192.0.2.10 - - [30/Nov/2026:20:18:56 +0000] "GET /x?y HTTP/1.1" '
                '200 2 "http://r/" "curl/8 \\x22x\\x22" web a balancer new 250ms ok'
            ],
        )

    def test_refused(self):
        """
        A request refused before its version was read has no version, and
        C{-} for what was never decided.
        """
        protocol, _ = self.client()
        protocol.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
        (line,) = self.lines.lines
        self.assertTrue(
            line.endswith('"GET /x" 400 0 "-" "-" web - - - 0ms refused'), line
        )

    def test_abandoned_mid_response(self):
        """
        A client that leaves in the middle of its response is logged, with
        the status it got, the body bytes sent so far and how it ended.
        """
        protocol, _, _, _ = self.mid_response()
        self.reactor.advance(2)
        protocol.connectionLost(Failure(ConnectionLost()))
        (line,) = self.lines.lines
        self.assertIn('"GET / HTTP/1.1" 200 3 "-" "-" web a', line)
        self.assertTrue(line.endswith(" 2000ms abandoned"), line)

    def test_to_the_log(self):
        """
        A frontend without lines of its own is logged as before, as an event
        of the proxy's log, which also holds the new fields.
        """
        self.factory.events.subscribe(AccessLog(["web"]))
        protocol, _ = self.client()
        with capturedLogs() as events:
            protocol.dataReceived(b"GET /x HTTP/1.1\r\nUser-Agent: u\r\n\r\n")
        (event,) = [e for e in events if "ended" in e]
        self.assertEqual(
            (event["status"], event["ended"], event["user_agent"]),
            (400, "refused", ""),
        )


class ConnectionLogTests(TCPTestCase):
    def setUp(self):
        super().setUp()
        self.reactor.advance(1796069936)
        self.lines = Lines()

    def log(self, factory=None, lines=True):
        factory = factory or self.factory
        factory.events.subscribe(
            ConnectionLog(
                ["front"], self.reactor, {"front": self.lines} if lines else None
            )
        )

    def test_line(self):
        """
        A connection is logged when it closes: client, the time it opened,
        frontend, backend, strategy, outcome, bytes each way, duration and
        how it ended.
        """
        self.log()
        client, _ = self.connect_client()
        _, backend, _ = self.accept_backend()
        client.dataReceived(b"ping")
        backend.dataReceived(b"pong!")
        self.reactor.advance(1.5)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            self.lines.lines,
            [
                "10.0.0.1 - - [30/Nov/2026:20:18:56 +0000] front a balancer new "
                "in=4 out=5 1500ms client-closed"
            ],
        )

    def test_how_it_ended(self):
        """
        Who ended it is told apart: the backend closing, either side's
        connection lost, the backend going down with C{on_down = "close"}.
        """
        self.log()
        client, _ = self.connect_client()
        _, backend, _ = self.accept_backend()
        backend.readConnectionLost()
        client.connectionLost(Failure(ConnectionDone()))
        client, _ = self.connect_client()
        _, backend, _ = self.accept_backend()
        backend.connectionLost(Failure(ConnectionLost()))
        client, _ = self.connect_client()
        self.accept_backend()
        client.connectionLost(Failure(ConnectionLost()))
        client, _ = self.connect_client()
        self.accept_backend()
        client.close()
        client.connectionLost(Failure(ConnectionDone()))
        ended = [line.rpartition(" ")[2] for line in self.lines.lines]
        self.assertEqual(
            ended,
            ["backend-closed", "backend-aborted", "client-aborted", "backend-down"],
        )

    def test_idle(self):
        """
        A connection closed for being idle says so.
        """
        factory = TCPProxyFactory("front", self.router, self.reactor, idle_timeout=5)
        self.factory = factory
        self.log()
        client, _ = self.connect_client()
        self.accept_backend()
        self.reactor.advance(5)
        client.connectionLost(Failure(ConnectionDone()))
        (line,) = self.lines.lines
        self.assertTrue(line.endswith(" 5000ms idle-timeout"), line)

    def test_to_the_log(self):
        """
        Without lines of its own, a frontend's connections are events of
        the proxy's log, with the values as fields.
        """
        self.log(lines=False)
        client, _ = self.connect_client()
        self.accept_backend()
        with capturedLogs() as events:
            client.connectionLost(Failure(ConnectionDone()))
        (event,) = events
        self.assertEqual(
            (event["backend"], event["outcome"], event["ended"], event["bytes_in"]),
            ("a", "new", "client-closed", 0),
        )

    def test_other_frontends(self):
        """
        Only the frontends it was made for are logged.
        """
        self.factory.events.subscribe(ConnectionLog(["other"], self.reactor))
        client, _ = self.connect_client()
        self.accept_backend()
        with capturedLogs() as events:
            client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(list(events), [])


CONFIG = """
    state_dir = "{state}"

    [[frontend]]
    name = "web"
    mode = "http"
    listen = "tcp:8080"
    pool = "app"
    access_log = {web}

    [[frontend]]
    name = "db"
    listen = "tcp:5432"
    pool = "app"
    access_log = {db}

    [pool.app]
    [[pool.app.backend]]
    name = "a"
    address = "127.0.0.1:8001"
    """


class ServiceLogTests(TestCase):
    """
    The C{access_log} key, and the logs L{ProxyService} makes of it.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.path = os.path.join(self.directory, "access.log")

    def config(self, web="true", db="false"):
        text = textwrap.dedent(CONFIG).format(state=self.directory, web=web, db=db)
        path = os.path.join(self.directory, "proxy.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def service(self, web="true", db="false"):
        config = read_config_file(self.config(web, db), REGISTRY)
        return ProxyService(config, MemoryReactorClock(), REGISTRY)

    def test_values(self):
        """
        C{access_log} is true, false, C{"stdout"} or an absolute path, on
        HTTP and TCP frontends alike; anything else names the key.
        """
        for web, db in [("true", "false"), ('"stdout"', f'"{self.path}"')]:
            self.service(web, db)
        for value in ['"access.log"', "1", '"log"', '""']:
            error = self.assertRaises(ConfigError, self.service, "false", value)
            self.assertEqual(error.path, "frontend[1].access_log")
            self.assertIn("absolute path", error.message)

    def test_subscribers(self):
        """
        The HTTP frontends' access log and the TCP frontends' connection log
        subscribe; a file is shared by the frontends that name it, and not
        made before the proxy starts.
        """
        proxy = self.service(f'"{self.path}"', f'"{self.path}"')
        access, connections = proxy.events._subscribers
        self.assertIsInstance(access, AccessLog)
        self.assertIsInstance(connections, ConnectionLog)
        self.assertEqual(
            (access.frontends, connections.frontends),
            (frozenset({"web"}), frozenset({"db"})),
        )
        self.assertIs(access.lines["web"], connections.lines["db"])
        self.assertEqual(list(proxy.log_files), [self.path])
        self.assertFalse(os.path.exists(self.path))
        proxy.privilegedStartService()
        self.assertTrue(os.path.exists(self.path))
        proxy.stopService()

    def test_stdout(self):
        """
        C{"stdout"} lines go to the process's own standard output.
        """
        proxy = self.service('"stdout"')
        (lines,) = proxy.log_files.values()
        self.assertIsInstance(lines, StreamLog)

    def test_to_the_log(self):
        """
        With C{true}, nothing is written but the proxy's log.
        """
        proxy = self.service("true", "true")
        self.assertEqual(proxy.log_files, {})
        access, connections = proxy.events._subscribers
        self.assertEqual((access.lines, connections.lines), ({}, {}))

    def test_unwritable(self):
        """
        A file in a directory that does not exist is refused when the
        proxy is built, naming the key.
        """
        missing = os.path.join(self.directory, "missing", "access.log")
        error = self.assertRaises(ConfigError, self.service, f'"{missing}"')
        self.assertEqual(error.path, "frontend[0].access_log")
        self.assertIn("no directory", error.message)

    def test_check_makes_no_file(self):
        """
        C{--check} checks the file could be written, without making it.
        """
        options = _options_for_tests("--config", self.config(f'"{self.path}"'))
        check_config(options, MemoryReactorClock())
        self.assertFalse(os.path.exists(self.path))

    def test_reopen(self):
        """
        L{ProxyService.reopen_logs} reopens every log file, and says so.
        """
        proxy = self.service(f'"{self.path}"')
        lines = Lines()
        proxy.log_files = {self.path: lines}
        with capturedLogs() as events:
            proxy.reopen_logs()
        self.assertEqual(lines.reopened, 1)
        self.assertIn(self.path, events[0]["paths"])

    def test_config_keeps_tcp_alike(self):
        """
        C{access_log} is no longer refused on a TCP frontend.
        """
        config = load_config(
            {
                "frontend": [{"listen": "tcp:1", "pool": "p", "access_log": True}],
                "pool": {"p": {"backend": [{"address": "127.0.0.1:1"}]}},
            },
            REGISTRY,
        )
        self.assertEqual(config.frontends[0].access_log, "log")


class FakeThreadReactor:
    """
    Runs what is called from a thread at once, and remembers it.
    """

    def __init__(self):
        self.called = []

    def callFromThread(self, f, *args):
        self.called.append(f)
        f(*args)


class OnSignalTests(TestCase):
    def test_handler(self):
        """
        While running, the service's handler is installed for its signal;
        called, it runs the action through the reactor and then the handler
        that was there before; stopped, it puts that one back.
        """
        calls = []
        before = signal.signal(signal.SIGUSR1, lambda *a: calls.append("previous"))
        self.addCleanup(signal.signal, signal.SIGUSR1, before)
        previous = signal.getsignal(signal.SIGUSR1)
        reactor = FakeThreadReactor()
        service = OnSignal(signal.SIGUSR1, lambda: calls.append("action"), reactor)
        service.startService()
        handler = signal.getsignal(signal.SIGUSR1)
        self.assertEqual(handler, service.received)
        handler(signal.SIGUSR1, None)
        self.assertEqual(calls, ["action", "previous"])
        self.assertEqual(len(reactor.called), 1)
        service.stopService()
        self.assertIs(signal.getsignal(signal.SIGUSR1), previous)

    def test_reopens_the_proxy_logs(self):
        """
        Under C{twistd}, C{SIGUSR1} reopens the proxy's log files.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "proxy.toml")
        with open(path, "w") as f:
            f.write(
                textwrap.dedent(CONFIG).format(
                    state=directory, web=f'"{directory}/access.log"', db="false"
                )
            )
        before = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, before)
        proxy = _makeService(_options_for_tests("--config", path), MemoryReactorClock())
        (on_signal,) = [s for s in proxy if isinstance(s, OnSignal)]
        self.assertEqual(
            (on_signal.signum, on_signal.action), (signal.SIGUSR1, proxy.reopen_logs)
        )
        self.assertTrue(os.path.exists(os.path.join(directory, "access.log")))
