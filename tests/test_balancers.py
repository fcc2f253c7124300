"""
Tests for L{stickyproxy._balancers}.
"""

import math
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from stickyproxy.core._balancers import (
    BALANCERS,
    ConsistentHash,
    LeastConnections,
    LeastSessions,
    PowerOfTwoChoices,
    RoundRobin,
    SessionCap,
    bounded,
    make_balancer,
    rendezvous_first,
    rendezvous_order,
)
from stickyproxy.interfaces import IBalancer
from stickyproxy.model import StateChange
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

    def test_order_is_stable(self):
        """
        The order of a key's backends is the same in every process and
        release: proxies and workers that share a config route a client
        alike, and an upgrade moves nobody.
        """
        backends = _backends([1, 1, 2, 1])
        self.assertEqual(
            [
                [b.name for b in rendezvous_order(key, backends)]
                for key in (b"10.0.0.1", b"10.0.0.2", b"\x0a\x00\x00\x03")
            ],
            [
                ["b1", "b3", "b2", "b0"],
                ["b1", "b3", "b2", "b0"],
                ["b2", "b0", "b1", "b3"],
            ],
        )

    @settings(max_examples=50)
    @given(st.lists(st.integers(min_value=0, max_value=5), max_size=6), st.binary())
    def test_first_without_sorting(self, weights, key):
        """
        L{rendezvous_first} names the first backend of the key's order, or
        C{None} when there is none.
        """
        backends = _backends(weights)
        order = rendezvous_order(key, backends)
        self.assertIs(rendezvous_first(key, backends), order[0] if order else None)

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


class LeastSessionsTests(TestCase):
    def test_fewest_sessions_per_weight(self):
        """
        The backend with the fewest live sessions per unit of weight wins,
        whatever its open connections.
        """
        a, b, c = _backends([1, 2, 1])
        a.active = 0
        sessions = {"b0": 3, "b1": 4, "b2": 5}  # per weight: 3, 2, 5
        balancer = LeastSessions(sessions=sessions.__getitem__)
        self.assertIs(balancer.choose([a, b, c], b""), b)

    def test_new_backend_fills_first(self):
        """
        A backend added to a pool whose others hold sessions takes every
        new session until it holds as many as they do.
        """
        backends = _backends([1, 1, 1])
        sessions = {"b0": 10, "b1": 10, "b2": 0}
        balancer = LeastSessions(sessions=sessions.__getitem__)
        picks = []
        for _ in range(10):
            name = balancer.choose(backends, b"").name
            sessions[name] += 1
            picks.append(name)
        self.assertEqual(picks, ["b2"] * 10)

    def test_ties_rotate(self):
        """
        New sessions arriving before their counts show spread over equally
        loaded backends instead of all going to the first.
        """
        backends = _backends([1, 1, 1])
        balancer = LeastSessions(sessions=lambda name: 7)
        picks = {balancer.choose(backends, b"").name for _ in range(3)}
        self.assertEqual(picks, {"b0", "b1", "b2"})

    def test_made_with_the_pool_count(self):
        """
        C{make_balancer} gives C{"leastsessions"} the session count it is
        given; without one, picking says what is missing.
        """
        backends = _backends([1, 1])
        balancer = make_balancer("leastsessions", sessions={"b0": 1, "b1": 0}.get)
        self.assertIs(balancer.choose(backends, b""), backends[1])
        error = self.assertRaises(
            TypeError, make_balancer("leastsessions").choose, backends, b""
        )
        self.assertIn("sessions=", str(error))


class BoundedTests(TestCase):
    @given(
        st.lists(
            st.tuples(
                st.integers(min_value=1, max_value=5),
                st.integers(min_value=0, max_value=200),
            ),
            min_size=1,
            max_size=8,
        ),
        st.floats(min_value=1.01, max_value=3.0),
    )
    def test_bound(self, loads, factor):
        """
        A backend is allowed exactly when, taking one more, it holds at most
        C{ceil(factor * share)} of the total with the newcomer (its share
        by weight); some backend is always allowed.
        """
        backends = _backends([weight for weight, _ in loads])
        counts = {b.name: count for b, (_, count) in zip(backends, loads, strict=True)}
        allowed = bounded(backends, lambda b: counts[b.name], factor)
        self.assertTrue(allowed)
        total = sum(counts.values()) + 1
        weights = sum(b.weight for b in backends)
        for backend in backends:
            limit = factor * total * backend.weight / weights
            self.assertEqual(
                backend in allowed, counts[backend.name] + 1 <= math.ceil(limit)
            )


class SessionCapTests(TestCase):
    def test_over_the_cap_left_out(self):
        """
        A backend over C{factor} times its share of the sessions is left out
        of the inner balancer's candidates; the others are all offered.
        """
        backends = _backends([1, 1, 1])
        # 51 with the newcomer: a share of 17, at most 22 each (ceil 21.25).
        sessions = {"b0": 30, "b1": 10, "b2": 10}
        offered = []

        class Inner(RoundRobin):
            def choose(self, candidates, key):
                offered.append([b.name for b in candidates])
                return super().choose(candidates, key)

        cap = SessionCap(Inner(), 1.25, sessions.__getitem__)
        self.assertEqual(cap.choose(backends, b"").name, "b1")
        self.assertEqual(offered, [["b1", "b2"]])
        sessions["b0"] = 14  # 35 in all: at most 15 each (ceil 14.58)
        cap.choose(backends, b"")
        self.assertEqual(offered[-1], ["b0", "b1", "b2"])

    def test_hash_keeps_its_order(self):
        """
        In front of C{hash}, a key whose first backend is over the cap goes
        to the next one in its order: the cap bounds sessions, as
        C{balance_factor} bounds connections.
        """
        backends = _backends([1, 1, 1])
        key = b"client"
        first, second, _ = rendezvous_order(key, backends)
        sessions = dict.fromkeys((b.name for b in backends), 0)
        sessions[first.name] = 10
        capped = make_balancer("hash", None, 1.25, sessions=sessions.__getitem__)
        self.assertIs(make_balancer("hash").choose(backends, key), first)
        self.assertIs(capped.choose(backends, key), second)

    def test_interface(self):
        """
        The cap provides L{IBalancer} under the name of the balancer it
        wraps, and passes the pool's changes on to it.
        """
        inner = RoundRobin()
        backends = _backends([1, 1])
        cap = make_balancer("roundrobin", None, 1.5, sessions=lambda name: 0)
        self.assertIsInstance(cap, SessionCap)
        self.assertProvides(IBalancer, cap)
        self.assertEqual(cap.name, "roundrobin")
        cap = SessionCap(inner, 1.5, lambda name: 0)
        cap.choose(backends, b"")
        self.assertTrue(inner._current)
        cap.backend_changed(
            StateChange("pool", backends[0], "weight", "1", "2", "operator")
        )
        self.assertEqual(inner._current, {})
