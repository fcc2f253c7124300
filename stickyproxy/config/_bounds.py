"""
The sane range of every duration and count in the configuration, in one
place.

A value outside its range is a mistake, not a wish: a probe every
microsecond is a probe storm, a timeout of a nanosecond fails everything,
a timer of a million years is a typo for milliseconds.  The loader and the
strategies read each key with its range here, so the error names the key
and the range (C{pool.web.health.interval: expected a number from 0.1 to
86400, got a number (1e-06)}); C{docs/configuration.rst} lists them.
"""

from __future__ import annotations

from stickyproxy.config._options import Bounds

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# Durations, in seconds.

#: Every timeout of a connection's phases: connect, request head and body,
#: response, keep-alive (both sides), tunnel, PROXY header, idle TCP, probe.
TIMEOUT = Bounds(0.01, 30 * DAY)
#: Between two probes of one backend (C{interval}, C{fast_interval},
#: C{down_interval}): no probe storms.
PROBE_INTERVAL = Bounds(0.1, DAY)
#: How long passive checks keep a backend down without a probe.
PASSIVE_COOLDOWN = Bounds(0.1, 30 * DAY)
#: A slow start's ramp (C{0}: off); shorter would be no ramp at all.
SLOW_START = Bounds(1, DAY, off=True)
#: The longest wait for a persistence store: every request may wait that long.
PERSISTENCE_TIMEOUT = Bounds(0.001, 10)
#: How long an idle stick-table entry (a learnt binding) is kept.
TABLE_TIMEOUT = Bounds(1, 365 * DAY)
#: How long a drain may wait for a backend's sessions to end (admin API).
DRAIN_DEADLINE = Bounds(1, 30 * DAY)
#: A persistence cookie's lifetimes (C{max_age}, C{max_idle}, C{max_life}):
#: browsers cap C{Max-Age} at 400 days (RFC 6265bis).
COOKIE_LIFETIME = Bounds(1, 400 * DAY)
#: How long a shutdown waits for requests and connections under way
#: (C{0}: it cuts them off at once).
SHUTDOWN_TIMEOUT = Bounds(0, DAY)
#: The C{Retry-After} of a 503, in whole seconds.
RETRY_AFTER = Bounds(0, DAY)

# Rates and ratios.

#: The bytes a second a request body earns more time with (C{0}: none).
BODY_MIN_RATE = Bounds(1, 1e9, off=True)
#: The share of a probe interval it may move either way.
JITTER = Bounds(0, 0.5)

# Counts.

#: Backends tried after a failed connect.
RETRIES = Bounds(0, 100)
#: Idle keep-alive connections kept per backend.
KEEPALIVE = Bounds(0, 10000)
#: A backend's share of new clients.
WEIGHT = Bounds(0, 256)
#: Probes in a row to come up (C{rise}) or go down (C{fall}).
THRESHOLD = Bounds(1, 100)
#: Failed connects, or failing answers, in a row that take a backend down.
PASSIVE_FALL = Bounds(1, 1000)
#: The largest request head, in bytes (responses may be twice as large).
MAX_HEADER_SIZE = Bounds(1024, 1024 * 1024)
#: The most header fields in a request.
MAX_HEADERS = Bounds(1, 10000)
#: The largest request body, in bytes (C{0}: no limit).
MAX_BODY_SIZE = Bounds(1, None, off=True)
#: Worker processes (C{workers}): each costs a whole proxy's memory.
WORKERS = Bounds(1, 256)
#: Entries in one stick table (memory is the operator's to spend).
TABLE_SIZE = Bounds(1)
#: The prefix lengths source-ip affinity masks addresses to.
IPV4_MASK = Bounds(0, 32)
IPV6_MASK = Bounds(0, 128)
