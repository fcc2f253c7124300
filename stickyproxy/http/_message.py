"""
HTTP/1.1 message rules both sides of the L7 proxy share: which header
fields are for one connection only, which of them a C{Connection} header
may never remove, and the request-target forms of RFC 9112.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
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


#: What a message without a C{Connection} header names.
NO_OPTIONS: frozenset[bytes] = frozenset()


def connection_options(
    values: Sequence[bytes], keep: AbstractSet[bytes] = NO_OPTIONS
) -> frozenset[bytes]:
    """
    The header fields that C{Connection} header values name, and which are
    therefore not forwarded: every name listed, less L{FRAMING} and
    C{keep} (what else the proxy read the message by).

    :param values: the values of every C{Connection} header of a message.
    :param keep: lowercase names that stay whatever C{Connection} says.
    """
    if not values:  # most messages: nothing to take apart, nothing to build
        return NO_OPTIONS
    if len(values) == 1 and values[0].lower() in HOP_BY_HOP:
        # Most others, "keep-alive" or "upgrade": it names a field that is
        # never forwarded anyway.
        return NO_OPTIONS
    named = frozenset(token.lower() for token in split_list(values))
    return named.difference(FRAMING, keep)


# RFC 9110 5.5 VCHAR less "#": a fragment is never sent (RFC 9112 3.2), so
# one means the target is not what a client meant; no whitespace, controls
# or bytes above 0x7E either.
_TARGET_CHARS = re.compile(rb"[\x21\x22\x24-\x7e]+")
# RFC 9112 3.2.2: absolute-form, for http and https, authority without
# userinfo (RFC 9110 4.2.4 forbids it): a host (reg-name, IPv4 or an
# IP-literal) and an optional port.
_ABSOLUTE = re.compile(
    rb"(?i:https?)://"
    rb"(?P<authority>(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)"
    rb"(?::(?P<port>[0-9]{0,5}))?)"
    rb"(?P<rest>[/?].*)?"
)


def request_target(method: bytes, target: bytes) -> tuple[bytes, bytes | None]:
    """
    Check a request-target against RFC 9112 3.2 (CONNECT's authority-form
    aside: the frontend refuses CONNECT first).

    :returns: the target to forward (origin-form, or C{*}) and, for an
        absolute-form target, its authority, which replaces C{Host}.
    :raises ValueError: not a request-target; the message says why.
    """
    if not _TARGET_CHARS.fullmatch(target):
        if b"#" in target:
            raise ValueError("a request-target with a fragment (#)")
        raise ValueError("a request-target with whitespace, controls or non-ASCII")
    if target.startswith(b"/"):
        return target, None  # origin-form
    if target == b"*":
        if method != b"OPTIONS":
            raise ValueError("the asterisk-form is for OPTIONS only")
        return target, None
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is None:
        if b"@" in target.partition(b"://")[2].split(b"/", 1)[0]:
            raise ValueError("an absolute-form request-target with userinfo")
        raise ValueError("not a request-target (origin-form or http(s) absolute-form)")
    port = absolute["port"]
    if port and int(port) > 65535:
        raise ValueError("an absolute-form request-target with a port over 65535")
    rest = absolute["rest"] or b"/"
    if rest.startswith(b"?"):
        rest = b"/" + rest
    return rest, absolute["authority"]
