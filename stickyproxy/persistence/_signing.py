"""
Signed, opaque tokens for the cookies the proxy issues.

A token is the base64url encoding (no padding) of::

    payload | tag

where C{tag} is the first 16 bytes of HMAC-SHA256 over C{purpose | 0x00 |
payload}, keyed with one of the configured secrets.  C{purpose} (for
cookies, the cookie's name) keeps a value issued for one purpose from being
accepted for another.  The first key signs; every key verifies, so keys can
be rotated by putting the new one first and dropping the old one once the
cookies it signed have run out.

The payload is opaque here.  The cookie strategies use L{SessionPayload},
25 bytes::

    version    1 byte   0x01
    session    6 bytes  random, names the session (for counting sessions)
    backend    6 bytes  the backend's token: HMAC-SHA256(key, "backend" 0x00
                        name), first 6 bytes, so the value names the backend
                        without revealing its name, address or port
    issued     uint32   when the session was bound to this backend (seconds)
    last_seen  uint32   when the cookie was last refreshed (seconds)
    expires    uint32   when the proxy stops honouring it, 0 for never

(big-endian), so a whole cookie value (41 bytes) is 55 characters.  Times are the
proxy's C{reactor.seconds()}, truncated to whole seconds.

Nothing here raises on bad input: a forged, garbled, truncated, overlong or
foreign value verifies as C{None}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Iterable, Sequence

import attrs

TAG_SIZE = 16
TOKEN_SIZE = 6
MAX_TOKEN_LENGTH = 512
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64encode(data: bytes) -> str:
    """
    :returns: C{data} in base64url, without padding.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes | None:
    """
    Decode base64url without padding, strictly: only the alphabet, and only
    the one canonical spelling of each byte string.

    :returns: the bytes, or C{None} when C{text} is not such an encoding.
    """
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.b64decode(
            text + "=" * (-len(text) % 4), altchars=b"-_", validate=True
        )
    except (binascii.Error, ValueError):
        return None
    # Unused low bits of the last character could spell one value several
    # ways; accept only the canonical one.
    return data if b64encode(data) == text else None


def backend_token(key: bytes, name: str) -> bytes:
    """
    The opaque, keyed token that names a backend in proxy-issued values:
    stable for a key and name, meaningless without the key.
    """
    message = b"backend\0" + name.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).digest()[:TOKEN_SIZE]


def _check_keys(keys: Sequence[bytes]) -> tuple[bytes, ...]:
    """
    :raises ValueError: C{keys} is empty or holds an empty or non-bytes key.
    """
    if not keys or not all(isinstance(k, bytes) and k for k in keys):
        raise ValueError("at least one non-empty key is needed")
    return tuple(keys)


@attrs.frozen
class CookieSigner:
    """
    Signs and verifies opaque values with a list of keys.

    :ivar keys: the secrets; the first signs, all verify.
    :ivar purpose: bound into every tag, so that a value signed for one
        purpose does not verify for another.
    """

    keys: tuple[bytes, ...] = attrs.field(converter=_check_keys, repr=False)
    purpose: bytes = b""

    def _tag(self, key: bytes, payload: bytes) -> bytes:
        message = self.purpose + b"\0" + payload
        return hmac.digest(key, message, "sha256")[:TAG_SIZE]

    def sign(self, payload: bytes) -> str:
        """
        :returns: C{payload} and its tag under the first key, in base64url.
        """
        return b64encode(payload + self._tag(self.keys[0], payload))

    def verify(self, value: str) -> bytes | None:
        """
        :returns: the payload of a value made by L{sign} with any of the
            keys, or C{None} for anything else.
        """
        if not isinstance(value, str) or len(value) > MAX_TOKEN_LENGTH:
            return None
        raw = b64decode(value)
        if raw is None or len(raw) < TAG_SIZE:
            return None
        payload, tag = raw[:-TAG_SIZE], raw[-TAG_SIZE:]
        valid = False
        for key in self.keys:
            # Every key is tried, so timing does not tell which one matched.
            valid |= hmac.compare_digest(tag, self._tag(key, payload))
        return payload if valid else None


_PAYLOAD = struct.Struct(">B6s6sIII")
PAYLOAD_VERSION = 1
_UINT32_MAX = 2**32 - 1


def _stamp(seconds: float | None) -> int:
    """
    :returns: C{seconds} as a whole number within uint32 (0 for C{None}).
    """
    if seconds is None:
        return 0
    return min(max(int(seconds), 0), _UINT32_MAX)


@attrs.frozen
class SessionPayload:
    """
    What a proxy-issued cookie says (see the module docstring for the
    encoding).

    :ivar session: random bytes naming the session.
    :ivar backend: the backend's token (L{backend_token}).
    :ivar issued: when the session was bound to the backend.
    :ivar last_seen: when the value was last refreshed.
    :ivar expires: when it stops being honoured, or C{None} for never.
    """

    session: bytes
    backend: bytes
    issued: int
    last_seen: int
    expires: int | None = None

    def pack(self) -> bytes:
        """
        :returns: the encoded payload.
        """
        return _PAYLOAD.pack(
            PAYLOAD_VERSION,
            self.session,
            self.backend,
            _stamp(self.issued),
            _stamp(self.last_seen),
            _stamp(self.expires),
        )

    @classmethod
    def unpack(cls, data: bytes) -> SessionPayload | None:
        """
        :returns: the decoded payload, or C{None} when C{data} is not one
            of this version.
        """
        if len(data) != _PAYLOAD.size:
            return None
        version, session, backend, issued, last_seen, expires = _PAYLOAD.unpack(data)
        if version != PAYLOAD_VERSION:
            return None
        return cls(session, backend, issued, last_seen, expires or None)


def backend_tokens(keys: Iterable[bytes], names: Iterable[str]) -> dict[bytes, str]:
    """
    :returns: every backend's token under every key, mapped to its name,
        so that values made before a key rotation still name their backend.
        When two tokens collide (one chance in 2**48 per pair), the first
        name wins.
    """
    tokens: dict[bytes, str] = {}
    names = list(names)
    for key in keys:
        for name in names:
            tokens.setdefault(backend_token(key, name), name)
    return tokens
