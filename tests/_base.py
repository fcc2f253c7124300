"""
The shared base TestCase, a clock that creeps as a real one does, and a
pool that watches who reports to it.
"""

import os
import shutil
import sys
import tempfile
from collections.abc import Callable

from zope.interface import Interface

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stickyproxy.core._pool import Pool
from stickyproxy.model import Backend, RequestFinished
from stickyproxy.testing import assert_provides


class TestCase(SynchronousTestCase):
    """
    A synchronous TestCase with an interface check, whose temporary files
    go with it.
    """

    _temporary: str | None = None
    _temporaries = 0

    def mktemp(self) -> str:
        """
        A new path (not created yet) in a temporary directory of this
        test's own, removed with everything in it when the test ends.

        Trial's own C{mktemp} makes directories under the current one, which
        under pytest is the repository, and never removes them.
        """
        if self._temporary is None:
            self._temporary = tempfile.mkdtemp(prefix="stickyproxy-test-")
            self.addCleanup(shutil.rmtree, self._temporary, ignore_errors=True)
        self._temporaries += 1
        return os.path.join(self._temporary, f"temp{self._temporaries}")

    def assertProvides(self, interface: type[Interface], obj: object) -> None:
        """
        Fail unless C{obj} fully provides C{interface}.
        """
        try:
            assert_provides(interface, obj)
        except Exception as error:
            self.fail(f"{obj!r} does not provide {interface.__name__}: {error}")


class CreepingClock(Clock):
    """
    A L{Clock} on which time moves on a little at every reading, as a real
    one does between two calls to C{seconds()}, and which refuses a negative
    delay as the real reactor does: code that computes a delay from two
    readings fails here, as it would, now and then, in production.

    :ivar step: how far each reading moves time on.
    """

    def __init__(self, step: float = 0.001) -> None:
        super().__init__()
        self.step = step

    def seconds(self) -> float:
        self.rightNow += self.step
        return self.rightNow

    def advance(self, amount: float) -> None:
        # As Clock.advance, but the scheduler's own comparisons read the
        # time without moving it: only the code under test makes it creep.
        self.rightNow += amount
        self._sortCalls()
        while self.calls and self.calls[0].getTime() <= self.rightNow:
            call = self.calls.pop(0)
            call.called = 1
            call.func(*call.args, **call.kw)
            self._sortCalls()

    def run_next(self) -> None:
        """
        Advance to the time of the next pending call, and run it.
        """
        self.advance(max(0.0, self.calls[0].getTime() - self.rightNow))

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        if delay < 0:
            raise AssertionError(f"{delay} is not greater than or equal to 0 seconds")
        return super().callLater(delay, callable, *args, **kw)


class SpiedPool(Pool):
    """
    A pool that records what it hears about passive health, and from which
    module: only the router may tell it.

    :ivar reports: C{(signal, backend name, detail, calling module)}.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.reports: list[tuple[str, str, object, str]] = []

    def _record(self, signal: str, backend: Backend, detail: object) -> None:
        caller = sys._getframe(2).f_globals["__name__"]
        self.reports.append((signal, backend.name, detail, caller))

    def report_connect_failure(self, backend: Backend, reason: str) -> None:
        self._record("failure", backend, reason)
        super().report_connect_failure(backend, reason)

    def report_connect_success(self, backend: Backend) -> None:
        self._record("success", backend, None)
        super().report_connect_success(backend)

    def report_status(self, backend: Backend, status: int) -> None:
        self._record("status", backend, status)
        super().report_status(backend, status)


def finished_request(
    status=200,
    backend="a",
    frontend="web",
    pool="p",
    persistence="new",
    strategy=None,
    bytes_in=0,
    bytes_out=0,
    total_time=0.01,
    ended="ok",
):
    """
    A L{RequestFinished} event, as a frontend publishes it, with defaults
    for everything a test does not care about.
    """
    return RequestFinished(
        frontend=frontend,
        pool=pool,
        backend=backend,
        client="192.0.2.1",
        method="GET",
        target="/",
        status=status,
        persistence=persistence,
        strategy=strategy,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        head_time=None if status is None else total_time,
        total_time=total_time,
        ended=ended,
    )
