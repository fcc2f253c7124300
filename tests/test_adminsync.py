"""
Tests for keeping admin states the same in several places
(L{stickyproxy.core._adminsync}) and the record that carries them.
"""

from twisted.internet.task import Clock

from stickyproxy.core._adminsync import PEER, AdminSync
from stickyproxy.core._pool import Pool
from stickyproxy.model import AdminRecord, AdminState, StateChange
from stickyproxy.testing import make_backend, make_pool

from tests._base import TestCase


class Place:
    """
    One proxy (or worker): a pool whose admin changes are recorded as they
    would be sent elsewhere.
    """

    def __init__(self, clock: Clock) -> None:
        self.pool: Pool = make_pool("a", "b")
        self.pool.clock = clock
        self.sent: list[AdminRecord] = []
        self.sync = AdminSync(lambda: {"pool": self.pool}, self.sent.append)
        self.pool.observe(self.sync.backend_changed)


class AdminSyncTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.here = Place(self.clock)
        self.there = Place(self.clock)

    def carry(self) -> None:
        """
        Apply at the other place everything this one sent.
        """
        for record in self.here.sent:
            self.there.sync.apply(record, "here")

    def test_drain_with_deadline_is_sent_whole(self) -> None:
        """
        A drain with a deadline is sent with the deadline, because the pool
        sets the deadline before it tells observers of the drain.
        """
        self.here.pool.add_session_source(lambda name: 3)
        self.here.pool.drain("a", 60.0)
        self.assertEqual(
            self.here.sent,
            [AdminRecord("pool", "a", AdminState.DRAIN, 1, 1060.0)],
        )

    def test_applied_drain_matches_and_is_not_sent_again(self) -> None:
        """
        The other place drains the backend until the same deadline, and
        sends nothing on (its change is a peer's).
        """
        self.there.pool.add_session_source(lambda name: 3)
        self.here.pool.add_session_source(lambda name: 3)
        self.here.pool.drain("a", 60.0)
        self.carry()
        a = self.there.pool["a"]
        self.assertIs(a.admin_state, AdminState.DRAIN)
        self.assertAlmostEqual(self.there.pool.drain_deadline("a"), 1060.0)
        self.assertEqual(self.there.sent, [])
        # The deadline is kept: at its end the other place goes to maint.
        self.clock.advance(60)
        self.assertIs(a.admin_state, AdminState.MAINT)

    def test_new_deadline_is_sent(self) -> None:
        """
        A new deadline for a drain under way is an admin change too.
        """
        self.here.pool.add_session_source(lambda name: 3)
        self.there.pool.add_session_source(lambda name: 3)
        self.here.pool.drain("a", 60.0)
        self.here.pool.drain("a", 10.0)
        self.assertEqual(
            [record.drain_deadline for record in self.here.sent], [1060.0, 1010.0]
        )
        self.carry()
        self.assertAlmostEqual(self.there.pool.drain_deadline("a"), 1010.0)

    def test_weight_and_states(self) -> None:
        """
        Weight, maint and ready travel; applying the same record twice
        changes nothing the second time.
        """
        self.here.pool.set_weight("b", 5)
        self.here.pool.set_admin_state("a", AdminState.MAINT)
        self.carry()
        self.assertEqual(self.there.pool["b"].weight, 5)
        self.assertIs(self.there.pool["a"].admin_state, AdminState.MAINT)
        seen: list[str] = []
        self.there.pool.observe(lambda change: seen.append(change.kind))
        self.carry()
        self.assertEqual(seen, [])
        self.here.pool.set_admin_state("a", AdminState.READY)
        self.carry()
        self.assertIs(self.there.pool["a"].admin_state, AdminState.READY)
        self.assertEqual(seen, ["admin"])

    def test_peer_reason(self) -> None:
        """
        The other place logs where the change came from.
        """
        reasons: list[str] = []
        self.there.pool.observe(lambda change: reasons.append(change.reason))
        self.here.pool.set_admin_state("a", AdminState.MAINT)
        self.carry()
        self.assertEqual(reasons, [f"{PEER} here"])

    def test_peers_sent_on_when_asked(self) -> None:
        """
        A change applied from elsewhere is sent on by a sync made with
        C{peers=True} (a parent's, to its workers), not by another.
        """
        relayed: list[AdminRecord] = []
        relay = AdminSync(lambda: {"pool": self.there.pool}, relayed.append, True)
        self.there.pool.observe(relay.backend_changed)
        self.here.pool.set_admin_state("a", AdminState.MAINT)
        self.carry()
        self.assertEqual(self.there.sent, [])
        self.assertEqual(relayed, [AdminRecord("pool", "a", AdminState.MAINT, 1, None)])

    def test_own_transition_is_sent(self) -> None:
        """
        A drain that ends by itself (no sessions left) is sent: the place
        that decided it tells the others.
        """
        self.here.pool.drain("a", 60.0)
        self.assertEqual(
            [record.admin_state for record in self.here.sent],
            [AdminState.DRAIN, AdminState.MAINT],
        )

    def test_unknown_backend(self) -> None:
        """
        A record for a backend this place does not have changes nothing.
        """
        record = AdminRecord("pool", "zz", AdminState.MAINT, 1, None)
        self.assertFalse(self.there.sync.apply(record, "here"))
        other = AdminRecord("other", "a", AdminState.MAINT, 1, None)
        self.assertFalse(self.there.sync.apply(other, "here"))
        self.assertIs(self.there.pool["a"].admin_state, AdminState.READY)

    def test_removed_backend_is_not_sent(self) -> None:
        """
        A change to a backend no longer in the pool is not sent.
        """
        old = self.here.pool["a"]
        self.here.pool.set_admin_state("a", AdminState.MAINT)
        self.here.pool.remove("a")
        self.here.pool.add(make_backend("a"))
        self.here.sent.clear()
        self.here.sync.backend_changed(
            StateChange("pool", old, "admin", "ready", "maint", "operator")
        )
        self.assertEqual(self.here.sent, [])

    def test_snapshot(self) -> None:
        """
        A snapshot holds every backend's record.
        """
        self.here.pool.set_weight("b", 2)
        self.assertEqual(
            self.here.sync.snapshot(),
            [
                AdminRecord("pool", "a", AdminState.READY, 1, None),
                AdminRecord("pool", "b", AdminState.READY, 2, None),
            ],
        )


class AdminRecordTests(TestCase):
    def test_round_trip(self) -> None:
        """
        What to_json writes, from_json reads back.
        """
        for record in [
            AdminRecord("p", "b", AdminState.DRAIN, 3, 12.5),
            AdminRecord("p", "b", AdminState.READY, 0, None),
        ]:
            self.assertEqual(AdminRecord.from_json(record.to_json()), record)

    def test_bad_fields(self) -> None:
        """
        A wrong field is a ValueError naming it.
        """
        good = AdminRecord("p", "b", AdminState.DRAIN, 3, 12.5).to_json()
        for field, value in [
            ("pool", 1),
            ("weight", -1),
            ("weight", True),
            ("admin_state", "gone"),
            ("drain_deadline", "soon"),
        ]:
            error = self.assertRaises(
                ValueError, AdminRecord.from_json, {**good, field: value}
            )
            self.assertIn(field.split("_")[0], str(error))
