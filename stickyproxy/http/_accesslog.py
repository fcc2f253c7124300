"""
The access log: one line per HTTP request, as a subscriber of the event
stream.
"""

from __future__ import annotations

from twisted.logger import Logger

from stickyproxy.core._logfile import FrontendLog, dash, quoted
from stickyproxy.model import RequestFinished


class AccessLog(FrontendLog):
    """
    Logs each finished request of the named frontends, naming the strategy
    that decided and how (C{balancer} when none did; C{-} for a request no
    backend was chosen for).

    A frontend with a line log (a file, standard output) gets lines in the
    combined log format, followed by the frontend, backend, strategy,
    persistence outcome, duration and how the request ended; the others
    get an event of the proxy's log, with the same values as its fields.
    """

    log = Logger()

    def request_finished(self, event: RequestFinished) -> None:
        if event.frontend not in self.frontends:
            return
        routed = event.backend is not None
        backend = event.backend if routed else "-"
        strategy = (event.strategy or "balancer") if routed else "-"
        outcome = event.persistence if routed else "-"
        duration_ms = round(event.total_time * 1000)
        lines = self.lines.get(event.frontend)
        if lines is None:
            self.log.info(
                '{frontend} {client} "{method} {target}" {status} {backend} '
                "{strategy} {outcome} {duration_ms}ms {ended}",
                frontend=event.frontend,
                client=event.client,
                method=event.method or "-",
                target=event.target or "-",
                status=event.status,
                backend=backend,
                strategy=strategy,
                outcome=outcome,
                duration_ms=duration_ms,
                ended=event.ended,
                bytes_in=event.bytes_in,
                bytes_out=event.bytes_out,
                version=event.version,
                referer=event.referer,
                user_agent=event.user_agent,
            )
            return
        request = " ".join(
            part
            for part in (
                event.method,
                event.target,
                f"HTTP/{event.version}" if event.version else "",
            )
            if part
        )
        lines.write_line(
            f"{event.client} - - [{self.started(event.total_time)}] {quoted(request)} "
            f"{dash(event.status)} {event.bytes_out} {quoted(event.referer)} "
            f"{quoted(event.user_agent)} {event.frontend} {backend} {strategy} "
            f"{outcome} {duration_ms}ms {event.ended}"
        )
