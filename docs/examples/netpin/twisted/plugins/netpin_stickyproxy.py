"""
Makes C{strategy = "netpin"} available to stickyproxy.
"""

from netpin import netpin

__all__ = ["netpin"]
