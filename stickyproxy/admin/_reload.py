"""
C{POST /api/reload}: read the config file again and apply it, as C{SIGHUP}
does (see L{ProxyService.reload}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.web.server import Request

from stickyproxy.admin._api import JSON, ApiError, JSONResource, only
from stickyproxy.config._options import ConfigError

if TYPE_CHECKING:
    from stickyproxy.service import ProxyService


class ReloadResource(JSONResource):
    """
    C{POST /api/reload}: 200 with C{{"changes": [...]}} (one line each), or
    400 with the one-line error of a config that cannot be applied (the
    running one stays).
    """

    def __init__(self, service: ProxyService) -> None:
        super().__init__()
        self.service = service

    def respond(
        self, request: Request, method: str, segments: Sequence[str]
    ) -> tuple[int, JSON | None]:
        if segments:
            raise ApiError(404, "no such resource")
        only(method, "POST")
        try:
            changes = self.service.reload_from_source()
        except ConfigError as error:
            raise ApiError(400, str(error)) from None
        return 200, {"changes": changes}
