"""
HTTP/1.1 message rules both sides of the L7 proxy share: which header
fields are for one connection only, and which of them a C{Connection}
header may never remove.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet

# RFC 9110 7.6.1, RFC 2616 13.5.1 and RFC 7540 3.2.1: meaningful for one
# connection only.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# What the proxy frames and routes every message by.  RFC 9110 7.6.1 lets
# Connection name only fields meant for the next hop; one that names these
# is ignored on that point (as HAProxy does), so that no Connection header
# can take a message's framing away between the proxy and the next hop.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})


def split_list(values: Iterable[bytes]) -> list[bytes]:
    """
    The items of comma-separated header values, stripped, empty ones left
    out (RFC 9110 5.6.1).
    """
    return [
        item.strip() for value in values for item in value.split(b",") if item.strip()
    ]


def connection_options(
    values: Iterable[bytes], keep: AbstractSet[bytes] = frozenset()
) -> frozenset[bytes]:
    """
    The header fields that C{Connection} header values name, and which are
    therefore not forwarded: every name listed, less L{FRAMING} and
    C{keep} (what else the proxy read the message by).

    :param values: the values of every C{Connection} header of a message.
    :param keep: lowercase names that stay whatever C{Connection} says.
    """
    named = frozenset(token.lower() for token in split_list(values))
    return named.difference(FRAMING, keep)
