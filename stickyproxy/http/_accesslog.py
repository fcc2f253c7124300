"""
The access log: one line per HTTP request, as a subscriber of the event
stream.
"""

from __future__ import annotations

from collections.abc import Collection

from twisted.logger import Logger

from stickyproxy.core._events import IgnoreEvents
from stickyproxy.model import RequestFinished


class AccessLog(IgnoreEvents):
    """
    Logs each finished request of the named frontends, naming the strategy
    that decided and how (C{balancer} when none did; C{-} for a request no
    backend was chosen for).
    """

    log = Logger()

    def __init__(self, frontends: Collection[str]) -> None:
        """
        :param frontends: the frontends whose requests are logged (those
            with C{access_log = true}).
        """
        self.frontends = frozenset(frontends)

    def request_finished(self, event: RequestFinished) -> None:
        if event.frontend not in self.frontends:
            return
        routed = event.backend is not None
        self.log.info(
            '{frontend} {client} "{method} {target}" {status} {backend} '
            "{strategy} {outcome} {duration_ms}ms {ended}",
            frontend=event.frontend,
            client=event.client,
            method=event.method or "-",
            target=event.target or "-",
            status=event.status,
            backend=event.backend if routed else "-",
            strategy=(event.strategy or "balancer") if routed else "-",
            outcome=event.persistence if routed else "-",
            duration_ms=round(event.total_time * 1000),
            ended=event.ended,
        )
