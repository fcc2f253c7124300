"""
Tests for the placement simulator's numpy model (C{benchmarks/placement.py}),
against the real pool and balancers it stands in for at large scale.
"""

import importlib.util
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest

from tests._base import TestCase

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "placement.py"


def _load():
    """
    The simulator, imported from its file (C{benchmarks/} is no package).

    :raises SkipTest: numpy (the C{bench} extra) or the script is missing.
    """
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise SkipTest("the model needs numpy: pip install -e '.[bench]'") from None
    if not SCRIPT.exists():
        raise SkipTest(f"{SCRIPT.name} is not here (an installed copy?)")
    spec = importlib.util.spec_from_file_location("placement", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("placement", module)
    spec.loader.exec_module(module)
    return module


def _run(placement, placer, backends=30, per_backend=10, seed=3):
    """
    Run the simulator's timeline over C{placer}: returns the simulation.
    """
    sim = placement.Simulation(
        placer=placer,
        random=placement.random.Random(seed),
        rate=backends * per_backend / placement.LIFETIME,
    )
    sim.run(backends)
    return sim


class ModelAgreesWithPoolTests(TestCase):
    """
    L{ModelPlacer} is a second copy of each balancer's rule: on the same
    seeded timeline it places every session where the real pool does.
    """

    def setUp(self):
        self.placement = _load()

    def assertSameRun(self, keys, scores, seed):
        placement = self.placement
        names = [f"b{i}" for i in range(30)]
        pool = _run(placement, placement.PoolPlacer.build(keys, names), seed=seed)
        model = _run(
            placement, placement.ModelPlacer.build(keys, names, scores), seed=seed
        )
        self.assertEqual(
            {s: b.name for s, b in pool.sessions.items()},
            {s: model.placer.names[h] for s, h in model.sessions.items()},
        )
        self.assertEqual(pool.ratios, model.ratios)
        self.assertEqual(pool.changes, model.changes)
        self.assertEqual(pool.fill_times, model.fill_times)

    def test_every_balancer_places_as_the_pool(self):
        """
        For every balancer of the table (C{hash} with the proxy's own
        blake2b scores), the model and the real pool end the timeline with
        every live session on the same backend, and see the same load over
        time, the same moves per change and the same fill times.  The pool
        is small and full, so that the caps and C{balance_factor} turn
        sessions away.
        """
        for label, keys in self.placement.BALANCERS:
            for seed in (3, 4):
                with self.subTest(balancer=label, seed=seed):
                    self.assertSameRun(keys, self.placement.proxy_scores, seed)

    def test_deterministic_balancers_need_no_hash(self):
        """
        The balancers that read no key place as the pool does with the
        model's own hash too: it is used for C{hash} alone.
        """
        for label, keys in self.placement.BALANCERS:
            if keys["balance"] != "hash":
                with self.subTest(balancer=label):
                    self.assertSameRun(keys, self.placement.fast_scores, 3)


class BlocksTests(TestCase):
    """
    L{ModelPlacer} finds where new sessions go with L{fast_scores} a block
    of them at a time (L{fast_firsts}).
    """

    def test_blocks_place_as_one_at_a_time(self):
        """
        With the model's hash taken one session at a time, C{hash} (with
        and without C{balance_factor}) places every session as with blocks:
        a block is dropped when the candidates change.
        """
        placement = self.placement = _load()
        names = [f"b{i}" for i in range(30)]

        def one_at_a_time(model, session):
            return placement.fast_scores(model, session)

        for label, keys in placement.BALANCERS:
            if keys["balance"] == "hash":
                with self.subTest(balancer=label):
                    runs = [
                        _run(placement, placement.ModelPlacer.build(keys, names, s))
                        for s in (placement.fast_scores, one_at_a_time)
                    ]
                    self.assertEqual(runs[0].sessions, runs[1].sessions)
                    self.assertEqual(runs[0].changes, runs[1].changes)


class FastHashTests(TestCase):
    """
    The model's own hash (L{fast_scores}) places keys elsewhere than the
    proxy's blake2b, but spreads and keeps them alike, within a tolerance.
    """

    def setUp(self):
        self.placement = _load()

    def picks(self, build, keys, backends):
        placer = build({"balance": "hash"}, [f"b{i}" for i in range(backends)])
        before = placer.picks(keys)
        for i in range(backends // 10):
            placer.add(f"n{i}")
        return before, placer.picks(keys)

    def test_spread_and_remap_like_the_proxy(self):
        """
        Over 50 backends and 10,000 keys, both hashes give the busiest
        backend under 1.25 times the average share, within 0.1 of each
        other; adding 5 backends moves 5/55 of the keys (9.1%, within one
        point) with both, and only onto the added ones.
        """
        placement = self.placement
        keys = list(range(10_000))
        spreads, moves = [], []
        for build in (placement.PoolPlacer.build, placement.ModelPlacer.build):
            before, after = self.picks(build, keys, 50)
            counts: dict[str, int] = {}
            for name in before:
                counts[name] = counts.get(name, 0) + 1
            spreads.append(max(counts.values()) / (len(keys) / 50))
            moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
            self.assertTrue(all(b.startswith("n") for _, b in moved))
            moves.append(len(moved) / len(keys))
        for spread in spreads:
            self.assertLess(spread, 1.25)
        self.assertLess(abs(spreads[0] - spreads[1]), 0.1)
        for moved in moves:
            self.assertLessEqual(abs(moved - 5 / 55), 0.01)

    def test_simulation_like_the_proxy(self):
        """
        On the simulator's timeline (N = 50, S = 20), C{hash} with the
        model's hash sees the proxy's mean max/avg load within 0.1, and
        the same share of sessions moved by each failure and scale-down
        within 1 point (2 by key).
        """
        placement = self.placement
        keys = {"balance": "hash"}
        pool = placement.simulate(keys, 50, 20, 1, placement.PoolPlacer.build)
        model = placement.simulate(keys, 50, 20, 1, placement.ModelPlacer.build)
        self.assertLessEqual(abs(pool["max_avg_mean"] - model["max_avg_mean"]), 0.1)
        for kind in ("failure", "scale-down"):
            ours, theirs = model["changes"][kind], pool["changes"][kind]
            self.assertLessEqual(abs(ours["sticky"] - theirs["sticky"]), 0.01)
            self.assertLessEqual(abs(ours["by_key"] - theirs["by_key"]), 0.02)
