"""
Tests for the command line of C{twistd stickyproxy} (L{stickyproxy.tap}):
C{--version}, C{--help}, one-line flag errors, C{--check} and
C{--log-format}; and for the JSON log lines (L{stickyproxy._jsonlog}).
"""

import io
import json
import os
import sys
import textwrap
from importlib.metadata import version as distribution_version

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, LogPublisher, formatEvent
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from twisted.python.usage import UsageError
from twisted.scripts.twistd import ServerOptions

from stickyproxy import ConfigError, StrategyRegistry, __version__
from stickyproxy._jsonlog import (
    event_as_json_line,
    json_lines_observer,
    stdout_json_observer,
)
from stickyproxy.core._balancers import BALANCERS
from stickyproxy.persistence._secrets import KEY_FILE
from stickyproxy.tap import Options, check_config, freeze_after_startup, run_check

from tests._base import TestCase
from tests._plugins import ALWAYS_FIRST


def _options(*argv, parent=None):
    options = Options()
    if parent is not None:
        options.parent = parent
    options.parseOptions(list(argv))
    return options


class Output:
    """
    Standard output and error, captured for one test.
    """

    def __init__(self, test):
        self.out, self.err = io.StringIO(), io.StringIO()
        test.patch(sys, "stdout", self.out)
        test.patch(sys, "stderr", self.err)


def _twistd(*argv):
    """
    Parse C{argv} as C{twistd} does (its own options, then ours).
    """
    options = ServerOptions()
    options.parseOptions(list(argv))
    return options


class VersionAndHelpTests(TestCase):
    def test_version(self):
        """
        C{--version} prints stickyproxy's own version (which its package
        metadata is made from), not Twisted's, and exits with status 0.
        """
        output = Output(self)
        exit = self.assertRaises(SystemExit, _twistd, "-n", "stickyproxy", "--version")
        self.assertIn(exit.code, (None, 0))
        line = output.out.getvalue()
        self.assertTrue(line.startswith(f"stickyproxy {__version__} ("), line)
        self.assertEqual(__version__, distribution_version("stickyproxy"))

    def test_help_names_strategies_balancers_and_admin(self):
        """
        C{--help} lists every strategy installed, a third-party plugin's
        too, with the modes each fits, every balancer, and what the admin
        listener serves.
        """
        import twisted.plugins

        root = self.mktemp()
        plugins = os.path.join(root, "twisted", "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "helpful_stickyproxy.py"), "w") as f:
            f.write(ALWAYS_FIRST)
        sys.path.insert(0, root)
        twisted.plugins.__path__.append(plugins)
        self.addCleanup(sys.path.remove, root)
        self.addCleanup(twisted.plugins.__path__.remove, plugins)

        output = Output(self)
        exit = self.assertRaises(SystemExit, _twistd, "-n", "stickyproxy", "--help")
        self.assertIn(exit.code, (None, 0))
        text = " ".join(output.out.getvalue().split())
        names = StrategyRegistry.from_plugins().names()
        self.assertIn("always-first", names)
        for name in names:
            self.assertIn(f"{name} (", text)
        self.assertIn("always-first (tcp)", text)
        self.assertIn("source-ip (http/tcp)", text)
        self.assertIn(", ".join(BALANCERS), text)
        for served in ("/api/", "dashboard", "/metrics"):
            self.assertIn(served, text)


class FlagErrorTests(TestCase):
    def assertOneLine(self, *argv):
        """
        Parsing C{argv} under C{twistd} exits with one line starting
        C{stickyproxy: }, and prints nothing else.

        :returns: that line.
        """
        output = Output(self)
        exit = self.assertRaises(SystemExit, _twistd, "-n", "stickyproxy", *argv)
        self.assertIsInstance(exit.code, str)
        self.assertTrue(exit.code.startswith("stickyproxy: "), exit.code)
        self.assertNotIn("\n", exit.code)
        self.assertEqual((output.out.getvalue(), output.err.getvalue()), ("", ""))
        return exit.code

    def test_bad_choice(self):
        """
        A C{--balance} that names no balancer is reported in one line that
        names the flag and the choices, without Twisted's "Parameter type
        enforcement failed" or its usage text.
        """
        line = self.assertOneLine("--balance", "random", "--config", "x.toml")
        self.assertTrue(
            line.startswith(
                "stickyproxy: --balance: expected one of "
                "roundrobin, leastconn, random2, hash, leastsessions, got 'random'"
            ),
            line,
        )
        self.assertIn(
            "--mode: expected one of tcp, http", self.assertOneLine("--mode", "udp")
        )

    def test_unknown_flag(self):
        """
        An unknown flag, and a flag without its value, are named.
        """
        self.assertIn("--bogus", self.assertOneLine("--bogus"))
        self.assertIn("--config", self.assertOneLine("--config"))

    def test_conflicts(self):
        """
        The checks between flags are reported in one line too.
        """
        line = self.assertOneLine("--config", "x.toml", "--demo")
        self.assertIn("--demo", line)

    def test_without_twistd(self):
        """
        Outside C{twistd} (a program that parses the options itself), a
        mistake is still the L{UsageError} it handles its own way, with
        the same message.
        """
        error = self.assertRaises(UsageError, _options, "--balance", "random")
        self.assertTrue(str(error).startswith("--balance: expected one of "))


PROXY = """
    state_dir = "{state}"

    [[frontend]]
    name = "web"
    mode = "http"
    listen = "{listen}"
    pool = "app"
    [frontend.persistence]
    strategy = "cookie"

    [pool.app]
    [[pool.app.backend]]
    name = "a"
    address = "127.0.0.1:8001"
    admin_state = "{admin_state}"
    [[pool.app.backend]]
    name = "b"
    address = "127.0.0.1:8002"
    admin_state = "{admin_state}"
    """


class CheckTests(TestCase):
    """
    C{--check}: everything L{makeService} would build, without listening
    or writing.
    """

    def setUp(self):
        self.state = self.mktemp()
        os.mkdir(self.state)

    def config(self, listen="tcp:8080", admin_state="ready", state=None):
        path = os.path.join(self.state, "proxy.toml")
        with open(path, "w") as f:
            f.write(
                textwrap.dedent(PROXY).format(
                    listen=listen,
                    admin_state=admin_state,
                    state=self.state if state is None else state,
                )
            )
        return _options("--config", path)

    def test_good(self):
        """
        A good configuration is summed up, nothing listens, and no cookie
        secret is written (the cookie strategy has no keys, and the state
        directory holds none yet).
        """
        reactor = MemoryReactorClock()
        summary = check_config(self.config(), reactor)
        self.assertEqual(
            summary,
            "stickyproxy: configuration OK: "
            f"{os.path.join(self.state, 'proxy.toml')} "
            "(1 frontend, 1 pool, 2 backends)",
        )
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(os.listdir(self.state), ["proxy.toml"])

    def test_endpoint_checked(self):
        """
        Endpoint strings are parsed, as L{ProxyService} parses them: a bad
        one is the error, naming its key.
        """
        error = self.assertRaises(
            ConfigError,
            check_config,
            self.config(listen="tcp:notaport"),
            MemoryReactorClock(),
        )
        self.assertEqual(error.path, "frontend[0].listen")

    def test_tls_key_files_read(self):
        """
        A TLS listener whose key file is missing is an error.
        """
        missing = os.path.join(self.state, "missing.pem")
        error = self.assertRaises(
            ConfigError,
            check_config,
            self.config(listen=f"ssl:8443:privateKey={missing}"),
            MemoryReactorClock(),
        )
        self.assertEqual(error.path, "frontend[0].listen")

    def test_unwritable_state_dir(self):
        """
        A state directory that does not exist, where the proxy would have
        to make its cookie secret, is an error naming the file.
        """
        absent = os.path.join(self.state, "absent")
        error = self.assertRaises(
            ConfigError,
            check_config,
            self.config(state=absent),
            MemoryReactorClock(),
        )
        self.assertEqual(error.path, os.path.join(absent, KEY_FILE))
        self.assertIn("cannot make the file", error.message)

    def test_run_check_good(self):
        """
        The good case prints its summary on standard output, and each
        warning on standard error, one line each; the status is 0.
        """
        options = self.config(admin_state="maint")
        output = Output(self)
        self.assertEqual(run_check(options, MemoryReactorClock()), 0)
        self.assertTrue(
            output.out.getvalue().startswith("stickyproxy: configuration OK: ")
        )
        (warning,) = output.err.getvalue().splitlines()
        self.assertTrue(warning.startswith("stickyproxy: warning: pool app: "))

    def test_run_check_bad(self):
        """
        A mistake is one line on standard error, and the status is 1.
        """
        options = self.config(listen="tcp:notaport")
        output = Output(self)
        self.assertEqual(run_check(options, MemoryReactorClock()), 1)
        self.assertEqual(output.out.getvalue(), "")
        (line,) = output.err.getvalue().splitlines()
        self.assertTrue(
            line.startswith("stickyproxy: configuration error: frontend[0].listen: ")
        )

    def test_not_with_demo(self):
        """
        The demo has no configuration to check.
        """
        self.assertRaises(UsageError, _options, "--check", "--demo")


class LogFormatTests(TestCase):
    def test_twistd(self):
        """
        Under C{twistd -n}, C{--log-format json} makes twistd's log
        observer (its C{--logger}) the JSON-lines one.
        """
        options = _twistd("-n", "stickyproxy", "--log-format", "json", "--config", "x")
        self.assertIs(options["logger"], stdout_json_observer)

    def test_text_leaves_twistd_alone(self):
        """
        C{--log-format text} (the default) changes nothing.
        """
        options = _twistd("-n", "stickyproxy", "--log-format", "text", "--config", "x")
        self.assertIsNone(options["logger"])

    def test_twistd_conflicts(self):
        """
        JSON lines go to standard output: they do not combine with
        twistd's own choices of where the log goes, nor with a daemon.
        """
        for twistd_flags, named in [
            (["-n", "--logfile", "x.log"], "--logfile"),
            (["-n", "--logger", "json.dumps"], "--logger"),
            ([], "twistd -n"),
        ]:
            exit = self.assertRaises(
                SystemExit,
                _twistd,
                *twistd_flags,
                "stickyproxy",
                "--log-format",
                "json",
                "--config",
                "x",
            )
            self.assertIn(named, exit.code)
        _twistd(
            "-n", "--logfile", "-", "stickyproxy", "--log-format", "json", "-c", "x"
        )

    def test_twist(self):
        """
        Under C{twist} (C{python -m twisted stickyproxy}), which has a log
        observer factory of its own, that factory becomes the JSON-lines
        one, and twist's C{--log-file} still says where.
        """
        parent = {"logFile": sys.stdout, "fileLogObserverFactory": None}
        _options("--log-format", "json", "--config", "x", parent=parent)
        self.assertIs(parent["fileLogObserverFactory"], json_lines_observer)

    def test_embedded(self):
        """
        Parsed by a program of its own, the options change no logging.
        """
        self.assertEqual(
            _options("--log-format", "json", "-c", "x")["log-format"], "json"
        )
        self.assertRaises(UsageError, _options, "--log-format", "xml", "-c", "x")

    def test_resolvable(self):
        """
        The name given to twistd's C{--logger} is the observer factory.
        """
        parent = {"nodaemon": True, "logger": None}
        _options("--log-format", "json", "-c", "x", parent=parent)
        self.assertIs(namedAny(parent["logger"]), stdout_json_observer)


class JSONLinesTests(TestCase):
    def lines(self, log):
        """
        Log through C{log(logger)} to a JSON-lines observer.

        :returns: the records written, decoded.
        """
        out = io.StringIO()
        publisher = LogPublisher(json_lines_observer(out))
        log(Logger(namespace="test.ns", observer=publisher))
        text = out.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_fields_and_text(self):
        """
        A record holds the event's fields as they are, its level by name,
        its namespace, its format and its text as the text log shows it.
        """
        (record,) = self.lines(
            lambda log: log.warn(
                "backend {pool}/{backend} is {state}",
                pool="web",
                backend="b1",
                state=b"down",
                count=3,
            )
        )
        self.assertEqual(
            {k: v for k, v in record.items() if k != "log_time"},
            {
                "pool": "web",
                "backend": "b1",
                "state": "down",
                "count": 3,
                "log_level": "warn",
                "log_namespace": "test.ns",
                "log_format": "backend {pool}/{backend} is {state}",
                "log_text": "backend web/b1 is b'down'",
            },
        )
        self.assertIsInstance(record["log_time"], float)

    def test_failure(self):
        """
        A failure's traceback is in C{log_failure}, as text.
        """
        failure = Failure(ZeroDivisionError("division by zero"))
        (record,) = self.lines(lambda log: log.failure("it broke", failure))
        self.assertEqual(
            (record["log_level"], record["log_text"]), ("critical", "it broke")
        )
        self.assertIn("ZeroDivisionError", record["log_failure"])

    def test_unencodable(self):
        """
        A value JSON has no form for is written as its text.
        """
        (record,) = self.lines(lambda log: log.info("{thing}", thing=object))
        self.assertEqual(record["thing"], str(object))

    def test_legacy(self):
        """
        An event from the legacy C{twisted.python.log} has its text once,
        not the legacy copies of it.
        """
        event = {
            "message": ("starting on 80",),
            "system": "-",
            "time": 1.0,
            "isError": 0,
            "log_format": "{log_text}",
            "log_text": "starting on 80",
            "log_level": LogLevel.info,
            "log_namespace": "log_legacy",
            "log_system": "-",
            "log_time": 1.0,
        }
        record = json.loads(event_as_json_line(event))
        self.assertEqual(
            record,
            {
                "log_time": 1.0,
                "log_level": "info",
                "log_namespace": "log_legacy",
                "log_format": "{log_text}",
                "log_text": formatEvent(event),
                "log_system": "-",
            },
        )
        self.assertEqual(record["log_text"], "starting on 80")


class FreezeTests(TestCase):
    def test_startup_objects_frozen(self):
        """
        Once the reactor has started, what was made before it is out of the
        garbage collector's sight (L{gc.freeze}), so that full collections
        do not walk it while clients wait; nothing is frozen before.
        """
        import gc

        reactor = MemoryReactorClock()
        freeze_after_startup(reactor)
        self.assertEqual(gc.get_freeze_count(), 0)
        [(freeze, _, _)] = reactor.triggers["after"]["startup"]
        self.addCleanup(gc.unfreeze)
        made_before = [object()]
        freeze()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertFalse(any(o is made_before for o in gc.get_objects()))
