"""
The built-in persistence strategies, offered through the same plugin path
third-party strategies use.
"""

from stickyproxy._http_strategies import app_cookie, cookie, header, route
from stickyproxy._strategies import source_ip

__all__ = ["app_cookie", "cookie", "header", "route", "source_ip"]
