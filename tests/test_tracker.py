"""
Tests for L{stickyproxy.health._tracker}: the rise/fall thresholds alone,
with no reactor, no clock and no pool.
"""

from stickyproxy.config._settings import HealthSettings, StatusRanges
from stickyproxy.health._tracker import RiseFallTracker, Verdict
from stickyproxy.model import Health

from tests._base import TestCase

SETTINGS = HealthSettings(
    rise=2, fall=3, passive_fall=2, passive_status=StatusRanges.parse("500-599")
)


class Walk:
    """
    A tracker and the state its verdicts lead to, as the pool would keep it.
    """

    def __init__(self, health=Health.UP, initial=False):
        self.tracker = RiseFallTracker(SETTINGS, initial)
        self.health = health

    def step(self, verdict):
        if verdict is not None:
            self.health = verdict.health
        return verdict

    def probe(self, ok, reason="probe"):
        return self.step(self.tracker.probed(self.health, ok, reason))

    def refused(self):
        return self.step(self.tracker.connect_failed(self.health, "refused"))

    def answered(self, status):
        return self.step(self.tracker.answered(self.health, status))


class ProbeTests(TestCase):
    def test_fall(self):
        """
        Failed probes take an up backend through C{going down}, counting,
        to C{down} at C{fall}; more failures change nothing.
        """
        walk = Walk()
        self.assertEqual(
            [walk.probe(False, "refused") for _ in range(4)],
            [
                Verdict(Health.GOING_DOWN, "refused (1/3)"),
                Verdict(Health.GOING_DOWN, "refused (2/3)"),
                Verdict(Health.DOWN, "refused (3/3)"),
                None,
            ],
        )

    def test_rise(self):
        """
        Good probes take a down backend through C{going up} to C{up} at
        C{rise}, as a rise (a slow start applies); more change nothing.
        """
        walk = Walk(Health.DOWN)
        self.assertEqual(
            [walk.probe(True, "ok") for _ in range(3)],
            [
                Verdict(Health.GOING_UP, "ok (1/2)"),
                Verdict(Health.UP, "ok (2/2)", rose=True),
                None,
            ],
        )

    def test_turn_back(self):
        """
        One good probe while going down restores C{up} (no rise: it never
        stopped serving); one failure while going up means C{down} again,
        and the counts start over.
        """
        walk = Walk()
        walk.probe(False)
        walk.probe(False)
        self.assertEqual(walk.probe(True, "ok"), Verdict(Health.UP, "ok"))
        self.assertEqual(walk.probe(False).reason, "probe (1/3)")

        walk = Walk(Health.DOWN)
        walk.probe(True)
        self.assertEqual(walk.probe(False, "no"), Verdict(Health.DOWN, "no"))
        self.assertEqual(walk.probe(True).reason, "probe (1/2)")

    def test_initial(self):
        """
        A backend waiting in C{init_state} comes up at its first good probe,
        without a slow start; after that, C{rise} counts again.
        """
        walk = Walk(Health.DOWN, initial=True)
        self.assertEqual(walk.probe(True, "ok"), Verdict(Health.UP, "ok (1/2)"))
        for _ in range(3):
            walk.probe(False)
        self.assertEqual(walk.probe(True).health, Health.GOING_UP)


class PassiveTests(TestCase):
    def test_connect_failures(self):
        """
        C{passive_fall} connect failures in a row take a serving backend
        down at once; a connect that works resets the count.
        """
        walk = Walk()
        self.assertIsNone(walk.refused())
        walk.tracker.connect_succeeded()
        self.assertIsNone(walk.refused())
        self.assertEqual(
            walk.refused(),
            Verdict(Health.DOWN, "connect failed: refused (2 in a row)", passive=True),
        )

    def test_statuses(self):
        """
        Answers in C{passive_status} count apart from connects: a connect
        that works does not reset them, an answer outside does.
        """
        walk = Walk()
        self.assertIsNone(walk.answered(503))
        walk.tracker.connect_succeeded()
        self.assertEqual(
            walk.answered(500),
            Verdict(Health.DOWN, "answered HTTP 500 (2 in a row)", passive=True),
        )
        walk = Walk()
        walk.answered(500)
        self.assertIsNone(walk.answered(200))
        self.assertIsNone(walk.answered(500))

    def test_only_serving(self):
        """
        Passive signals take down only a backend that serves: one already
        down, or still going up, stays as it is.
        """
        for health in (Health.DOWN, Health.GOING_UP):
            walk = Walk(health)
            for _ in range(3):
                self.assertIsNone(walk.refused())

    def test_rise_after_passive_down(self):
        """
        A backend taken down by passive signals needs C{rise} good probes
        to come back; C{came_up} (a cooldown over) brings it back at once
        and starts every count again.
        """
        walk = Walk()
        walk.refused()
        walk.refused()
        self.assertEqual(walk.probe(True).health, Health.GOING_UP)
        self.assertEqual(walk.probe(True).health, Health.UP)

        walk = Walk()
        walk.refused()
        walk.refused()
        self.assertEqual(
            walk.step(walk.tracker.came_up("cooldown over")),
            Verdict(Health.UP, "cooldown over", rose=True),
        )
        self.assertIsNone(walk.refused())


class PassiveDownTests(TestCase):
    """
    What passive checks alone decided, live traffic may undo (issue 8,
    defect 5): the rules behind C{passive_panic}.
    """

    def test_connect_brings_back(self):
        """
        A backend that failed connects alone took down is up again at its
        first connect that works, with every count started again.
        """
        walk = Walk()
        walk.refused()
        walk.refused()
        self.assertEqual(walk.health, Health.DOWN)
        self.assertEqual(
            walk.step(walk.tracker.connect_succeeded()),
            Verdict(Health.UP, "a connection to it succeeded", rose=True),
        )
        self.assertIsNone(walk.refused())

    def test_failing_again_is_a_verdict(self):
        """
        Tried again while so down, and failing, it is marked down again
        (so it goes to the back of the line).
        """
        walk = Walk()
        walk.refused()
        walk.refused()
        self.assertEqual(
            walk.refused(),
            Verdict(Health.DOWN, "connect failed: refused", passive=True),
        )

    def test_status_needs_an_answer(self):
        """
        A backend failing answers took down comes back with an answer
        outside C{passive_status}; a connect that works proves nothing.
        """
        walk = Walk()
        walk.answered(500)
        walk.answered(500)
        self.assertIsNone(walk.tracker.connect_succeeded())
        self.assertEqual(walk.answered(200).health, Health.UP)

    def test_probe_confirms(self):
        """
        A failed probe confirms the passive verdict: the backend is down by
        a probe's word from then on, and live traffic no longer undoes it.
        """
        walk = Walk()
        walk.refused()
        walk.refused()
        self.assertEqual(walk.probe(False), Verdict(Health.DOWN, "probe"))
        self.assertIsNone(walk.tracker.connect_succeeded())
        self.assertIsNone(walk.probe(False))

    def test_probe_verdicts_not_passive(self):
        """
        Probes take a backend down without the passive mark.
        """
        walk = Walk()
        for _ in range(2):
            walk.probe(False)
        self.assertFalse(walk.probe(False).passive)
