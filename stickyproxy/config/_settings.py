"""
The settings values of frontends and health checks, built by
L{stickyproxy.config._load} and read by the parts they configure.
"""

from __future__ import annotations

import attrs

from stickyproxy.core._addresses import IPNetwork
from stickyproxy.model import Health


@attrs.frozen
class StatusRanges:
    """
    A set of HTTP statuses written as C{"200-399"} or C{"200,204,300-399"}.
    """

    ranges: tuple[tuple[int, int], ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> StatusRanges:
        """
        :raises ValueError: not a list of statuses or ranges within 100-599.
        """
        ranges = []
        for part in text.replace(" ", "").split(","):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if not 100 <= first <= last <= 599:
                raise ValueError(part)
            ranges.append((first, last))
        return cls(tuple(ranges), text)

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and any(
            low <= status <= high for low, high in self.ranges
        )


@attrs.frozen
class HealthSettings:
    """
    The timing and thresholds of one pool's health tracking (see the
    configuration reference for each key).
    """

    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    jitter: float = 0.1
    fast_interval: float | None = None
    down_interval: float | None = None
    passive_fall: int = 3
    passive_cooldown: float = 10.0
    passive_status: StatusRanges | None = None
    init_state: Health = Health.UP
    slow_start: float = 0.0


@attrs.frozen
class HTTPSettings:
    """
    The options of one HTTP frontend (see the configuration reference).
    """

    trusted_proxies: tuple[IPNetwork, ...] = ()
    forwarded: bool = False
    redispatch_header: bytes | None = None
    debug_header: bytes | None = None
    timeout_request: float = 10.0
    timeout_body: float = 30.0
    body_min_rate: float = 500.0
    timeout_keepalive: float = 60.0
    timeout_response: float = 60.0
    timeout_tunnel: float = 3600.0
    upgrades: frozenset[bytes] = frozenset({b"websocket"})  # lowercase
    max_header_size: int = 32768
    max_headers: int = 100
    max_body_size: int | None = None
    retry_after: int = 5
