"""
End-to-end: the harness itself leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
import unittest as pyunit
from pathlib import Path

from tests.e2e._harness import E2ETestCase


class CleanupTests(E2ETestCase):
    def test_workdir_and_processes_go(self) -> None:
        """
        An end-to-end test's directory (its config, process logs, anything
        its processes wrote there, such as a browser profile) lies outside
        the current directory and is removed once its processes are
        stopped; the processes are gone by then.
        """
        seen: dict[str, object] = {}

        class Sample(E2ETestCase):
            def test_run(self) -> None:
                self.write_config("x = 1\n")
                process = self.start_process(
                    "sleeper",
                    [
                        sys.executable,
                        "-c",
                        "import pathlib, time; "
                        "pathlib.Path('profile').mkdir(); "
                        "pathlib.Path('profile/lock').write_text('x'); "
                        "print('ready', flush=True); time.sleep(600)",
                    ],
                )
                self.wait(lambda: "ready" in process.output(), 20, "the sleeper")
                seen["workdir"], seen["process"] = self.workdir, process

        result = pyunit.TestResult()
        Sample("test_run").run(result)
        self.assertTrue(result.wasSuccessful(), result.errors + result.failures)
        workdir, process = seen["workdir"], seen["process"]
        assert isinstance(workdir, Path)
        self.assertFalse(
            str(workdir.resolve()).startswith(os.path.realpath(os.getcwd()) + os.sep)
        )
        self.assertFalse(workdir.exists(), workdir)
        self.assertTrue(process.exited())  # type: ignore[attr-defined]
