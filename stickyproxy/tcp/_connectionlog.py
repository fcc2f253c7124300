"""
The connection log of TCP frontends: one line per spliced connection, as a
subscriber of the event stream.
"""

from __future__ import annotations

from twisted.logger import Logger

from stickyproxy.core._logfile import FrontendLog
from stickyproxy.model import ConnectionClosed


class ConnectionLog(FrontendLog):
    """
    Logs each connection of the named frontends when it closes: the
    client, the backend, the strategy that decided and how (C{balancer}
    when none did), the bytes each way, how long it lasted and how it
    ended.

    A frontend with a line log (a file, standard output) gets lines that
    start as the common log format does (client and time); the others get
    an event of the proxy's log, with the same values as its fields.
    """

    log = Logger()

    def connection_closed(self, event: ConnectionClosed) -> None:
        if event.frontend not in self.frontends:
            return
        strategy = event.strategy or "balancer"
        duration_ms = round(event.duration * 1000)
        lines = self.lines.get(event.frontend)
        if lines is None:
            self.log.info(
                "{frontend} {client} {backend} {strategy} {outcome} "
                "in={bytes_in} out={bytes_out} {duration_ms}ms {ended}",
                frontend=event.frontend,
                client=event.client,
                pool=event.pool,
                backend=event.backend,
                strategy=strategy,
                outcome=event.persistence,
                bytes_in=event.bytes_in,
                bytes_out=event.bytes_out,
                duration_ms=duration_ms,
                ended=event.ended,
            )
            return
        lines.write_line(
            f"{event.client} - - [{self.started(event.duration)}] {event.frontend} "
            f"{event.backend} {strategy} {event.persistence} in={event.bytes_in} "
            f"out={event.bytes_out} {duration_ms}ms {event.ended}"
        )
