"""
The root of the admin listener's site.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site, version

from stickyproxy.admin._api import (
    ApiError,
    ApiResource,
    JSONError,
    require_token,
    write_json,
)
from stickyproxy.admin._dashboard import DashboardResource, Snapshot
from stickyproxy.admin._reload import ReloadResource
from stickyproxy.admin._traffic import TrafficCounter
from stickyproxy.metrics import MetricsResource

if TYPE_CHECKING:
    from stickyproxy.service import ProxyService

#: Methods that change nothing: open without the token.
READ_METHODS = (b"GET", b"HEAD")


class AdminRoot(Resource):
    """
    The admin site's root: C{api} (the JSON API), C{metrics} (Prometheus),
    the index, and whatever else is mounted with C{putChild}.

    With an C{[admin] token}, every request but C{GET} and C{HEAD} must
    carry it, whatever resource it is for: that check is here, once.

    :ivar traffic: each backend's running totals, from the event stream.
    """

    def __init__(self, service: ProxyService) -> None:
        super().__init__()
        self.service = service
        self.traffic = TrafficCounter()
        service.events.subscribe(self.traffic)
        self.api = ApiResource(service, self.traffic)
        self.api.putChild(b"reload", ReloadResource(service))
        self.putChild(b"api", self.api)
        self.putChild(b"metrics", MetricsResource(service))
        self.putChild(b"", DashboardResource(self.snapshot))

    def snapshot(self) -> Snapshot:
        """
        What the dashboard shows: what the API lists, now.
        """
        admin = self.service.config.admin
        return Snapshot(
            frontends=self.api.frontends.listing(),
            pools=self.api.pools.listing(),
            backends=self.api.backends.listing(),
            token_required=admin is not None and admin.token is not None,
        )

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if request.method not in READ_METHODS:
            if cross_site(request):
                return JSONError(
                    403, "refused: a change sent by a web page of another site"
                )
            try:
                require_token(self.service, request)
            except ApiError as error:
                return JSONError(error.code, error.message)
        child: IResource = super().getChildWithDefault(path, request)
        return child

    def getChild(self, path: bytes, request: Request) -> IResource:
        return JSONError(404, "no such resource")


def cross_site(request: Request) -> bool:
    """
    Whether a browser sent C{request} for a page of another site: any page
    the operator's browser opens could otherwise add a backend of its own
    (a C{POST} of C{text/plain} needs no CORS preflight), whenever the
    admin listener has no token.  Browsers say where a request comes from
    in C{Sec-Fetch-Site}, or, older ones, in C{Origin} (compared with
    C{Host}); other clients (curl) send neither.
    """
    site = request.getHeader(b"sec-fetch-site")
    if site is not None:
        return site not in (b"same-origin", b"none")
    origin = request.getHeader(b"origin")
    if origin is None:
        return False
    host = request.getHeader(b"host")
    return host is None or urlsplit(origin).netloc != host


#: The largest request body the admin listener reads (its JSON is small).
MAX_BODY = 64 * 1024


class AdminRequest(Request):
    """
    A request whose body is kept in memory up to L{MAX_BODY} bytes: a
    larger one is read but not kept (Twisted would spool it to a temporary
    file, before any token is checked), and answered with 413.
    """

    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self.too_large = length is not None and length > MAX_BODY

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)

    def process(self) -> None:
        if not self.too_large:
            super().process()
            return
        self.setHeader(b"server", version)
        self.setHeader(b"date", http.datetimeToString())
        body = {"error": f"the body is larger than {MAX_BODY} bytes"}
        self.write(write_json(self, 413, body))
        self.finish()


def admin_site(service: ProxyService, reactor: object) -> Site:
    """
    The admin listener's site over L{AdminRoot}: no tracebacks shown, no
    large bodies, and no access log (a dashboard polls; changes are logged
    by the pools).
    """
    site = _QuietSite(AdminRoot(service), AdminRequest, reactor=reactor)
    site.displayTracebacks = False
    return site


class _QuietSite(Site):
    noisy = False

    def logPrefix(self) -> str:
        # Its port's "... starting on 8081" names it as the frontends do.
        return "stickyproxy admin listener"

    def log(self, request: http.Request) -> None:
        pass
