"""
Tests for the shared test base, L{tests._base}.
"""

import os
import unittest as pyunit

from tests._base import TestCase


class MktempTests(TestCase):
    def test_cleaned_up_outside_cwd(self):
        """
        C{mktemp} paths lie outside the current directory (the repository,
        under pytest), are distinct, and are gone, with what was written in
        them, once their test ends.
        """
        paths = []

        class Sample(TestCase):
            def test_write(self):
                for _ in range(2):
                    path = self.mktemp()
                    os.makedirs(os.path.join(path, "deep"))
                    with open(os.path.join(path, "deep", "file"), "w") as f:
                        f.write("x")
                    paths.append(path)

        result = pyunit.TestResult()
        Sample("test_write").run(result)
        self.assertTrue(result.wasSuccessful(), result.errors + result.failures)
        self.assertEqual(len(set(paths)), 2)
        cwd = os.path.realpath(os.getcwd())
        for path in paths:
            self.assertFalse(os.path.realpath(path).startswith(cwd + os.sep), path)
            self.assertFalse(os.path.exists(path), path)
            self.assertFalse(os.path.exists(os.path.dirname(path)), path)
