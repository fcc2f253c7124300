"""
Backends and pools: who can serve, and in what state.

A backend's operational state (healthy or not) comes from health tracking;
its administrative state (ready, drain, maint) from the operator.  The pool
turns the two into the two lists the router needs: backends that may keep
their bound clients, and backends that may take new ones.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Sequence

import attrs
from zope.interface import implementer

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from .interfaces import IBackendPool, IBalancer


class AdminState(enum.Enum):
    """
    What the operator wants of a backend (as HAProxy's C{ready}, C{drain},
    C{maint}).
    """

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


def connect_endpoint(
    reactor: object, address: str, timeout: float
) -> IStreamClientEndpoint:
    """
    Make the client endpoint for a backend address.

    :param address: C{host:port}, C{[v6]:port}, or any Twisted client
        endpoint string (C{tcp:host=...:port=...}, C{unix:path=...}).
    :param timeout: the connect timeout in seconds.
    :raises ValueError: the address cannot be parsed.
    """
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host and "=" not in address:
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(f"port {number} is out of range")
        if host.startswith("[") and host.endswith("]"):
            return TCP6ClientEndpoint(reactor, host[1:-1], number, timeout)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if ":" in host:
                raise ValueError(
                    "an IPv6 address needs brackets: [addr]:port"
                ) from None
            return HostnameEndpoint(reactor, host.encode("ascii"), number, timeout)
        if ip.version == 6:
            raise ValueError("an IPv6 address needs brackets: [addr]:port")
        return TCP4ClientEndpoint(reactor, host, number, timeout)
    endpoint: IStreamClientEndpoint = clientFromString(reactor, address)
    return endpoint


@attrs.define(eq=False)
class Backend:
    """
    One server behind the proxy, with its live state.

    :ivar name: unique within its pool.
    :ivar address: the configured address, as written.
    :ivar endpoint: how to connect to it.
    :ivar weight: its share of new clients relative to the others (0 takes
        none).
    :ivar route: the token route-based persistence matches.
    :ivar admin_state: the operator's wish.
    :ivar healthy: the operational state from health tracking.
    :ivar active: connections (or requests) open or being opened to it.
    """

    name: str
    address: str
    endpoint: IStreamClientEndpoint
    weight: int = 1
    route: str = ""
    admin_state: AdminState = AdminState.READY
    healthy: bool = True
    active: int = 0

    def serves_bound(self) -> bool:
        """
        :returns: whether clients already bound here may stay (up, and ready
            or draining).
        """
        return self.healthy and self.admin_state is not AdminState.MAINT

    def accepts_new(self) -> bool:
        """
        :returns: whether new clients may be sent here (up, ready, weighted).
        """
        return self.healthy and self.admin_state is AdminState.READY and self.weight > 0


StateObserver = Callable[[Backend], None]


@implementer(IBackendPool)
@attrs.define(eq=False)
class Pool:
    """
    A named set of backends with the settings shared by their connections.

    :ivar connect_timeout: seconds before a connect attempt is abandoned.
    :ivar retries: how many other backends are tried after a failed connect.
    :ivar send_proxy: C{None}, C{"v1"} or C{"v2"}: the PROXY protocol
        header sent to backends.
    """

    name: str
    backends: tuple[Backend, ...]
    balancer: IBalancer
    connect_timeout: float = 3.0
    retries: int = 2
    send_proxy: str | None = None
    _by_name: dict[str, Backend] = attrs.field(init=False)
    _observers: list[StateObserver] = attrs.field(init=False, factory=list)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._by_name = {backend.name: backend for backend in self.backends}

    def get(self, name: str) -> Backend | None:
        return self._by_name.get(name)

    def serving_bound(self) -> Sequence[Backend]:
        return [b for b in self.backends if b.serves_bound()]

    def accepting_new(self) -> Sequence[Backend]:
        return [b for b in self.backends if b.accepts_new()]

    def observe(self, observer: StateObserver) -> None:
        """
        Call C{observer(backend)} after each change of a backend's state.
        """
        self._observers.append(observer)

    def set_admin_state(self, name: str, state: AdminState) -> None:
        """
        Set a backend's administrative state.

        :raises KeyError: no backend has that name.
        """
        backend = self._by_name[name]
        if backend.admin_state is not state:
            old, backend.admin_state = backend.admin_state, state
            self.log.info(
                "backend {pool}/{backend} admin state {old} -> {new}",
                pool=self.name,
                backend=name,
                old=old.value,
                new=state.value,
            )
            self._notify(backend)

    def set_healthy(self, backend: Backend, healthy: bool, reason: str) -> None:
        """
        Record the operational state reached by health tracking.
        """
        if backend.healthy is not healthy:
            backend.healthy = healthy
            self.log.warn(
                "backend {pool}/{backend} is {state}: {reason}",
                pool=self.name,
                backend=backend.name,
                state="up" if healthy else "down",
                reason=reason,
            )
            self._notify(backend)

    def report_connect_failure(self, backend: Backend, reason: str) -> None:
        """
        Passive health signal: a connect to C{backend} failed.  Health
        tracking (when configured) decides what it means; alone, it is logged.
        """
        self.log.warn(
            "connect to {pool}/{backend} failed: {reason}",
            pool=self.name,
            backend=backend.name,
            reason=reason,
        )

    def _notify(self, backend: Backend) -> None:
        for observer in list(self._observers):
            observer(backend)
