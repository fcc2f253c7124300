"""
The built-in persistence strategies, offered through the same plugin path
third-party strategies use.
"""

from stickyproxy._strategies import sourceIP

__all__ = ["sourceIP"]
