"""
Tests for L{stickyproxy._balancers}.
"""

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from stickyproxy.core._balancers import (
    BALANCERS,
    ConsistentHash,
    LeastConnections,
    PowerOfTwoChoices,
    RoundRobin,
    make_balancer,
    rendezvous_order,
)
from stickyproxy.interfaces import IBalancer
from stickyproxy.testing import make_backend

from tests._base import TestCase


def _backends(weights):
    return [make_backend(f"b{i}", weight=w) for i, w in enumerate(weights)]


def _keys(count):
    return [
        f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}".encode() for i in range(count)
    ]


class InterfaceTests(TestCase):
    def test_all_provide_balancer(self):
        """
        Every configurable balancer provides L{IBalancer} and carries its
        configured name.
        """
        for name in BALANCERS:
            balancer = make_balancer(name)
            self.assertProvides(IBalancer, balancer)
            self.assertEqual(balancer.name, name)

    def test_empty_candidates(self):
        """
        With no candidates, every balancer answers C{None}.
        """
        for name in BALANCERS:
            self.assertIsNone(make_balancer(name).choose([], b"k"))


class RoundRobinTests(TestCase):
    def test_smooth_sequence(self):
        """
        Weights 5, 1, 1 give nginx's smooth sequence a a b a c a a: the heavy
        backend's turns are spread out, not bunched.
        """
        a, b, c = (make_backend(n, weight=w) for n, w in (("a", 5), ("b", 1), ("c", 1)))
        balancer = RoundRobin()
        picks = [balancer.choose([a, b, c], b"").name for _ in range(7)]
        self.assertEqual(picks, ["a", "a", "b", "a", "c", "a", "a"])

    @given(st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=6))
    def test_weights_honoured(self, weights):
        """
        Over whole cycles, each backend gets exactly its weight's share.
        """
        backends = _backends(weights)
        balancer = RoundRobin()
        cycles = 20
        counts = Counter(
            balancer.choose(backends, b"").name for _ in range(cycles * sum(weights))
        )
        self.assertEqual(counts, {b.name: b.weight * cycles for b in backends})

    def test_zero_weight_candidates(self):
        """
        A candidate with weight 0 is never picked while another has weight.
        """
        a, b = make_backend("a", weight=0), make_backend("b", weight=1)
        balancer = RoundRobin()
        self.assertEqual({balancer.choose([a, b], b"").name for _ in range(5)}, {"b"})


class LeastConnectionsTests(TestCase):
    def test_fewest_active_per_weight(self):
        """
        The backend with the fewest active connections per unit of weight wins.
        """
        a, b, c = _backends([1, 2, 1])
        a.active, b.active, c.active = 3, 4, 5  # per weight: 3, 2, 5
        self.assertIs(LeastConnections().choose([a, b, c], b""), b)

    def test_ties_rotate(self):
        """
        Idle backends share new clients instead of all going to the first.
        """
        backends = _backends([1, 1, 1])
        balancer = LeastConnections()
        picks = {balancer.choose(backends, b"").name for _ in range(3)}
        self.assertEqual(picks, {"b0", "b1", "b2"})


class PowerOfTwoChoicesTests(TestCase):
    def test_less_loaded_of_two(self):
        """
        Of the two drawn, the less loaded is chosen: the most loaded backend
        of three is only chosen when drawn twice.
        """
        backends = _backends([1, 1, 1])
        backends[0].active = 100
        balancer = PowerOfTwoChoices(random.Random(1))
        counts = Counter(balancer.choose(backends, b"").name for _ in range(900))
        self.assertLess(counts["b0"], 900 // 9 * 2)
        self.assertGreater(counts["b1"], 300)
        self.assertGreater(counts["b2"], 300)

    def test_single(self):
        """
        One candidate is chosen without drawing.
        """
        (only,) = _backends([1])
        self.assertIs(PowerOfTwoChoices().choose([only], b""), only)


class ConsistentHashTests(TestCase):
    def test_stable(self):
        """
        A key maps to the same backend every time, and in any candidate order.
        """
        backends = _backends([1, 1, 1, 1])
        balancer = ConsistentHash()
        for key in _keys(50):
            first = balancer.choose(backends, key)
            self.assertIs(balancer.choose(list(reversed(backends)), key), first)

    def test_spread(self):
        """
        Many keys land on every backend, roughly evenly.
        """
        backends = _backends([1, 1, 1])
        counts = Counter(ConsistentHash().choose(backends, k).name for k in _keys(3000))
        for name in ("b0", "b1", "b2"):
            self.assertGreater(counts[name], 800)

    @settings(max_examples=20)
    @given(st.integers(min_value=3, max_value=8), st.data())
    def test_removal_moves_only_its_keys(self, count, data):
        """
        Removing one of N backends moves exactly the keys it held (about
        1/N of them), and no other key.
        """
        backends = _backends([1] * count)
        gone = data.draw(st.sampled_from(backends))
        remaining = [b for b in backends if b is not gone]
        keys = _keys(1000)
        moved = 0
        for key in keys:
            before = rendezvous_order(key, backends)[0]
            after = rendezvous_order(key, remaining)[0]
            if before is not gone:
                self.assertIs(after, before)
            else:
                moved += 1
        self.assertLess(abs(moved / len(keys) - 1 / count), 0.5 / count)

    @settings(max_examples=20)
    @given(st.lists(st.integers(min_value=1, max_value=5), min_size=2, max_size=4))
    def test_weights_honoured(self, weights):
        """
        Each backend's share of keys follows its weight.
        """
        backends = _backends(weights)
        keys = _keys(2000)
        counts = Counter(rendezvous_order(k, backends)[0].name for k in keys)
        total = sum(weights)
        for backend in backends:
            expected = len(keys) * backend.weight / total
            self.assertLess(abs(counts[backend.name] - expected), 0.25 * expected + 40)

    def test_bounded_load(self):
        """
        With a balance factor, a backend far above its fair share is passed
        over for the next in the key's order.
        """
        backends = _backends([1, 1, 1])
        key = b"client"
        first, second = rendezvous_order(key, backends)[:2]
        first.active = 10
        self.assertIs(ConsistentHash().choose(backends, key), first)
        self.assertIs(ConsistentHash(balance_factor=1.25).choose(backends, key), second)
