"""
Tests for netpin, with stickyproxy's fakes: no network, no reactor.
"""

from netpin import netpin
from zope.interface.verify import verifyObject

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from stickyproxy import ConfigError
from stickyproxy.interfaces import IPersistenceStrategy, IPersistenceStrategyFactory
from stickyproxy.testing import make_pool, routing_context


class NetworkPinTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pool = make_pool("app1", "app2")

    def build(self, **options: object) -> IPersistenceStrategy:
        return netpin.build(options, self.pool, Clock(), "frontend[0].persistence")

    def test_provides(self) -> None:
        """
        The factory and its strategies provide their interfaces.
        """
        verifyObject(IPersistenceStrategyFactory, netpin)
        verifyObject(IPersistenceStrategy, self.build(rules={"10.0.0.0/8": "app1"}))

    def test_most_specific_network_wins(self) -> None:
        """
        A client in two networks goes to the backend of the narrower one;
        a client in none is not bound.
        """
        strategy = self.build(rules={"10.0.0.0/8": "app1", "10.1.0.0/16": "app2"})
        backend = strategy.lookup(routing_context("10.1.2.3"))
        self.assertEqual(backend.name if backend else None, "app2")
        backend = strategy.lookup(routing_context("10.9.2.3"))
        self.assertEqual(backend.name if backend else None, "app1")
        self.assertIsNone(strategy.lookup(routing_context("192.0.2.1")))

    def test_unknown_backend(self) -> None:
        """
        A rule naming a backend the pool does not have is a config error at
        that rule's key.
        """
        with self.assertRaises(ConfigError) as caught:
            self.build(rules={"10.0.0.0/8": "app9"})
        self.assertEqual(
            caught.exception.path, "frontend[0].persistence.rules.10.0.0.0/8"
        )

    def test_unknown_option(self) -> None:
        """
        An option netpin does not know is reported by name.
        """
        with self.assertRaises(ConfigError) as caught:
            self.build(rules={"10.0.0.0/8": "app1"}, mask=24)
        self.assertEqual(caught.exception.path, "frontend[0].persistence.mask")
