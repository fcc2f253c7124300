"""
Fakes for testing persistence strategies (ours or a plugin's) without a
network: backends whose endpoints go nowhere, pools of them, and contexts.

    from stickyproxy.testing import make_pool, routing_context

    pool = make_pool("a", "b", "c")
    strategy = MyFactory().build({}, pool, Clock(), "frontend[0].persistence")
    strategy.lookup(routing_context("10.0.0.1"))
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint

from ._backends import AdminState, Backend, Health, Pool
from ._balancers import RoundRobin
from ._router import RoutingContext
from .interfaces import IBalancer


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    """
    A client endpoint whose every connect is refused: for backends whose
    connections a test never makes.
    """

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return fail(ConnectionRefusedError("stickyproxy.testing endpoint"))


def make_backend(
    name: str,
    weight: int = 1,
    admin_state: AdminState = AdminState.READY,
    health: Health = Health.UP,
    endpoint: IStreamClientEndpoint | None = None,
) -> Backend:
    """
    A backend named C{name} (its route is its name too).
    """
    return Backend(
        name=name,
        address=f"{name}.invalid:1",
        endpoint=endpoint if endpoint is not None else RefusingEndpoint(),
        weight=weight,
        route=name,
        admin_state=admin_state,
        health=health,
    )


def make_pool(
    *names: str, balancer: IBalancer | None = None, retries: int = 2, name: str = "pool"
) -> Pool:
    """
    A pool of L{make_backend} backends (round-robin unless told otherwise).
    """
    return Pool(
        name=name,
        backends=tuple(make_backend(n) for n in names),
        balancer=balancer if balancer is not None else RoundRobin(),
        retries=retries,
    )


def routing_context(
    host: str, port: int = 0, mode: str = "tcp", frontend: str = "test"
) -> RoutingContext:
    """
    The context a frontend builds for a client at C{host}.
    """
    return RoutingContext(
        mode=mode, frontend=frontend, client_host=host, client_port=port
    )


def assert_provides(interface: type[Interface], obj: object) -> None:
    """
    Check that C{obj} fully provides C{interface} (methods and attributes).

    :raises zope.interface.exceptions.Invalid: it does not.
    """
    verifyObject(interface, obj)
