"""
The store several proxies share (Redis): one connection per proxy,
L{RedisStore}, which reconnects by itself and never makes a request wait
on a store that is not there.
"""

from stickyproxy.store._client import Connector, RedisConnection, TxRedisConnector
from stickyproxy.store._store import RedisStore, StoreUnavailable, build_store

__all__ = [
    "Connector",
    "RedisConnection",
    "RedisStore",
    "StoreUnavailable",
    "TxRedisConnector",
    "build_store",
]
