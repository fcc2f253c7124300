"""
Tests for the in-memory L{stickyproxy.interfaces.IStickTable}.
"""

import tracemalloc

from twisted.internet.task import Clock

from stickyproxy.interfaces import IStickTable
from stickyproxy.persistence.tables._memory import StickTable

from tests._base import TestCase


class StickTableTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = StickTable(clock=self.clock, timeout=10.0, size=3)

    def test_provides(self):
        """
        L{StickTable} provides L{IStickTable}.
        """
        self.assertProvides(IStickTable, self.table)

    def test_bind_and_get(self):
        """
        A bound key reads back its backend; an unknown key reads C{None}.
        """
        self.table.bind(b"k", "b1")
        self.assertEqual(self.table.get(b"k"), "b1")
        self.assertIsNone(self.table.get(b"other"))

    def test_rebind(self):
        """
        Binding a key again replaces its backend.
        """
        self.table.bind(b"k", "b1")
        self.table.bind(b"k", "b2")
        self.assertEqual(self.table.get(b"k"), "b2")

    def test_held_binding_does_not_expire(self):
        """
        While a binding is held (a connection is open), it outlives the
        timeout; its idle time starts at the last release.
        """
        self.table.bind(b"k", "b1")
        self.clock.advance(100)
        self.assertEqual(self.table.get(b"k"), "b1")
        self.table.release(b"k")
        self.clock.advance(9.9)
        self.assertEqual(self.table.get(b"k"), "b1")
        self.clock.advance(10)
        self.assertIsNone(self.table.get(b"k"))

    def test_lookup_refreshes(self):
        """
        Each lookup restarts the idle time of a released binding.
        """
        self.table.bind(b"k", "b1")
        self.table.release(b"k")
        for _ in range(5):
            self.clock.advance(6)
            self.assertEqual(self.table.get(b"k"), "b1")

    def test_two_holds(self):
        """
        A binding held twice stays until both are released.
        """
        self.table.bind(b"k", "b1")
        self.table.bind(b"k", "b1")
        self.table.release(b"k")
        self.clock.advance(20)
        self.assertEqual(self.table.get(b"k"), "b1")
        self.table.release(b"k")
        self.clock.advance(10)
        self.assertIsNone(self.table.get(b"k"))

    def test_size_evicts_oldest(self):
        """
        Past C{size}, the least recently used binding goes first.
        """
        for key in (b"a", b"b", b"c"):
            self.table.bind(key, "b1")
            self.clock.advance(1)
        self.table.get(b"a")  # now b is the oldest
        self.table.bind(b"d", "b1")
        self.assertEqual(len(self.table), 3)
        self.assertIsNone(self.table.get(b"b"))
        self.assertEqual(self.table.get(b"a"), "b1")

    def test_sweep_on_bind(self):
        """
        Expired bindings are swept out as new ones arrive, so an idle table
        does not keep them; held ones stay.
        """
        table = StickTable(clock=self.clock, timeout=10.0, size=100)
        table.bind(b"held", "b1")
        table.bind(b"idle", "b1")
        table.release(b"idle")
        self.clock.advance(11)
        table.bind(b"new", "b2")
        self.assertEqual(len(table), 2)
        self.assertEqual(table.get(b"held"), "b1")

    def test_release_unknown(self):
        """
        Releasing an unknown key does nothing.
        """
        self.table.release(b"nothing")
        self.assertEqual(len(self.table), 0)

    def test_forget(self):
        """
        A forgotten binding is gone at once, held or not.
        """
        self.table.bind(b"k", "b1")
        self.table.forget(b"k")
        self.assertIsNone(self.table.get(b"k"))
        self.assertEqual(self.table.count("b1"), 0)
        self.table.forget(b"unknown")

    def test_idle_time_resolution(self):
        """
        Uses within one tick (a thousandth of the timeout, here 10 ms) keep
        the tick's time, so an idle binding may expire that much early, and
        no more.
        """
        self.table.bind(b"k", "b1")
        self.table.release(b"k")
        self.clock.advance(0.005)
        self.assertEqual(self.table.get(b"k"), "b1")
        self.clock.advance(9.995)
        self.assertIsNone(self.table.get(b"k"))
        self.table.bind(b"k", "b1")
        self.table.release(b"k")
        self.clock.advance(0.02)
        self.assertEqual(self.table.get(b"k"), "b1")
        self.clock.advance(9.99)
        self.assertEqual(self.table.get(b"k"), "b1")

    def test_binding_size(self):
        """
        A binding costs its key and little more (about 100 bytes on
        CPython 3.11): a table of a million fits in a few hundred MB.  Its
        backend and last use are a value it shares with the other bindings
        used in the same tick.
        """
        count = 20_000
        keys = [b"client-%d" % i for i in range(count)]
        table = StickTable(clock=self.clock, timeout=1800.0, size=count)
        tracemalloc.start()
        try:
            for key in keys:
                table.bind(key, "b1")
                table.release(key)
                self.clock.advance(0.05)
            size = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        self.assertEqual(len(table), count)
        self.assertLess(size / count, 120)
