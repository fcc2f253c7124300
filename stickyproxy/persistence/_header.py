"""
C{strategy = "header"}: affinity on a request header's value.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin

from stickyproxy.config._options import OptionReader
from stickyproxy.interfaces import (
    IBackendPool,
    IPersistenceStrategy,
    IProxySecrets,
    IRoutingContext,
    IStickTableStore,
    IStoreStrategyFactory,
)
from stickyproxy.persistence._affinity import read_affinity
from stickyproxy.persistence._proxycookie import _http
from stickyproxy.persistence._secrets import StoreFactory


def _header_value(context: IRoutingContext, header: bytes) -> bytes | None:
    """
    :returns: the request header's first value, stripped; C{None} when it
        is absent or empty.
    """
    value = _http(context).header(header)
    if value is None:
        return None
    value = value.strip()
    return value or None


@attrs.frozen
class HeaderKey:
    """
    The key of header persistence: the request header's value.
    """

    header: bytes

    def __call__(self, context: IRoutingContext) -> bytes | None:
        return _header_value(context, self.header)

    def text(self, key: bytes) -> str:
        """
        :returns: the header value a key holds.
        """
        return key.decode("latin-1")

    def parse(self, text: str) -> bytes:
        """
        :returns: the key of a header value.
        :raises ValueError: it has characters a header cannot carry.
        """
        return text.encode("latin-1")


@implementer(IPlugin, IStoreStrategyFactory)
@attrs.frozen
class HeaderFactory(StoreFactory):
    """
    C{strategy = "header"}: affinity on a request header's value.
    """

    name: str = "header"
    modes: frozenset[str] = frozenset({"http"})
    description: str = "a request header's value; consistent hash or table"

    def build_stored(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
        tables: IStickTableStore | None,
    ) -> IPersistenceStrategy:
        with OptionReader(options, path) as reader:
            key = HeaderKey(reader.token("header").lower().encode("ascii"))
            return read_affinity(self.name, reader, pool, reactor, key, tables)


header = HeaderFactory()
