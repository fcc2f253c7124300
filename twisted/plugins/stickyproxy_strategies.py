"""
The built-in persistence strategies, offered through the same plugin path
third-party strategies use.
"""

from stickyproxy.persistence._appcookie import app_cookie
from stickyproxy.persistence._cookie import cookie
from stickyproxy.persistence._header import header
from stickyproxy.persistence._route import route
from stickyproxy.persistence._sourceip import source_ip

__all__ = ["app_cookie", "cookie", "header", "route", "source_ip"]
