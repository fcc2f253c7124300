"""
The event stream: one fan-out of L{IProxyEvents} to every subscriber.
"""

from __future__ import annotations

import attrs
from zope.interface import implementer

from twisted.logger import Logger

from stickyproxy.interfaces import IProxyEvents
from stickyproxy.model import (
    ConnectionClosed,
    ConnectionOpened,
    ProbeRan,
    RequestFinished,
    StateChange,
)


@implementer(IProxyEvents)
class IgnoreEvents:
    """
    An L{IProxyEvents} that ignores everything: subclass it and override
    only the events a subscriber cares about.
    """

    def request_finished(self, event: RequestFinished) -> None:
        pass

    def connection_opened(self, event: ConnectionOpened) -> None:
        pass

    def connection_closed(self, event: ConnectionClosed) -> None:
        pass

    def backend_changed(self, change: StateChange) -> None:
        pass

    def probe_ran(self, event: ProbeRan) -> None:
        pass


@implementer(IProxyEvents)
@attrs.define(eq=False)
class EventStream:
    """
    Publishes each event to every subscriber, in subscription order.

    Producers check L{active} before they build an event, so that with no
    subscriber an event costs one attribute read.

    :ivar active: whether anyone listens.
    """

    _subscribers: list[IProxyEvents] = attrs.field(factory=list)
    active: bool = attrs.field(init=False, default=False)

    log = Logger()

    def subscribe(self, subscriber: IProxyEvents) -> None:
        """
        Send every event from now on to C{subscriber} too.
        """
        self._subscribers.append(subscriber)
        self.active = True

    def unsubscribe(self, subscriber: IProxyEvents) -> None:
        """
        Stop sending events to C{subscriber} (if it was subscribed).
        """
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        self.active = bool(self._subscribers)

    def _publish(self, method: str, event: object) -> None:
        for subscriber in list(self._subscribers):
            try:
                getattr(subscriber, method)(event)
            except Exception:
                self.log.failure(
                    "event subscriber {subscriber!r} failed on {event}",
                    subscriber=subscriber,
                    event=method,
                )

    def request_finished(self, event: RequestFinished) -> None:
        self._publish("request_finished", event)

    def connection_opened(self, event: ConnectionOpened) -> None:
        self._publish("connection_opened", event)

    def connection_closed(self, event: ConnectionClosed) -> None:
        self._publish("connection_closed", event)

    def backend_changed(self, change: StateChange) -> None:
        self._publish("backend_changed", change)

    def probe_ran(self, event: ProbeRan) -> None:
        self._publish("probe_ran", event)
