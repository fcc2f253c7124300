"""
Tests for L{stickyproxy.persistence._signing}: signed opaque values and their payload.
"""

from hypothesis import given
from hypothesis import strategies as st

from stickyproxy.persistence._signing import (
    MAX_TOKEN_LENGTH,
    TOKEN_SIZE,
    CookieSigner,
    SessionPayload,
    b64decode,
    b64encode,
    backend_token,
    backend_tokens,
)

from tests._base import TestCase

OLD = b"the old key, long enough to use"
NEW = b"the new key, long enough to use"


def _flip(value: str, index: int) -> str:
    """
    C{value} with the character at C{index} replaced by another of the
    base64url alphabet.
    """
    replacement = "B" if value[index] != "B" else "C"
    return value[:index] + replacement + value[index + 1 :]


class Base64Tests(TestCase):
    def test_round_trip(self):
        """
        Encoding then decoding gives the bytes back, without padding.
        """
        for size in range(10):
            data = bytes(range(250, 250 - size, -1))
            encoded = b64encode(data)
            self.assertNotIn("=", encoded)
            self.assertEqual(b64decode(encoded), data)

    def test_rejects_non_alphabet(self):
        """
        Padding, the standard alphabet's C{+} and C{/}, spaces and other
        characters are refused rather than skipped.
        """
        for text in ["AAAA=", "AA+A", "AA/A", "AA A", "AA\nA", "AA.A", "AAé"]:
            self.assertIsNone(b64decode(text), text)

    def test_rejects_impossible_length(self):
        """
        A length that no byte string encodes to is refused.
        """
        self.assertIsNone(b64decode("AAAAA"))

    def test_rejects_non_canonical(self):
        """
        Unused low bits must be zero: each value has one spelling.
        """
        self.assertEqual(b64decode("AA"), b"\0")
        self.assertIsNone(b64decode("AB"))


class CookieSignerTests(TestCase):
    def test_round_trip(self):
        """
        A signed value verifies to its payload.
        """
        signer = CookieSigner((NEW,))
        self.assertEqual(signer.verify(signer.sign(b"payload")), b"payload")
        self.assertEqual(signer.verify(signer.sign(b"")), b"")

    def test_opaque(self):
        """
        The value is base64url without padding.
        """
        value = CookieSigner((NEW,)).sign(b"\xff" * 25)
        self.assertRegex(value, r"^[A-Za-z0-9_-]+$")
        self.assertEqual(len(value), 55)

    def test_rotation(self):
        """
        The first key signs and every key verifies: after a rotation, values
        signed with the old key still verify, new ones are signed with the
        new key, and once the old key is removed its values no longer verify.
        """
        before = CookieSigner((OLD,))
        during = CookieSigner((NEW, OLD))
        after = CookieSigner((NEW,))
        old_value = before.sign(b"payload")
        new_value = during.sign(b"payload")
        self.assertEqual(during.verify(old_value), b"payload")
        self.assertEqual(after.verify(new_value), b"payload")
        self.assertIsNone(before.verify(new_value))
        self.assertIsNone(after.verify(old_value))

    def test_wrong_key(self):
        """
        A value signed with another key does not verify.
        """
        self.assertIsNone(CookieSigner((OLD,)).verify(CookieSigner((NEW,)).sign(b"x")))

    def test_purpose(self):
        """
        A value signed for one purpose does not verify for another, even
        under the same key.
        """
        first = CookieSigner((NEW,), purpose=b"cookie\0A")
        second = CookieSigner((NEW,), purpose=b"cookie\0B")
        self.assertIsNone(second.verify(first.sign(b"x")))

    def test_every_flipped_character(self):
        """
        Changing any one character of a value makes it fail.
        """
        signer = CookieSigner((NEW,))
        value = signer.sign(b"some payload of a cookie")
        for index in range(len(value)):
            self.assertIsNone(signer.verify(_flip(value, index)), index)

    def test_truncated_and_extended(self):
        """
        A value cut short or with anything appended fails.
        """
        signer = CookieSigner((NEW,))
        value = signer.sign(b"payload")
        for end in range(len(value)):
            self.assertIsNone(signer.verify(value[:end]))
        self.assertIsNone(signer.verify(value + "A"))
        self.assertIsNone(signer.verify(value + "AAAA"))

    def test_garbage(self):
        """
        Empty, non-base64, huge, and non-string values all fail, without
        raising.
        """
        signer = CookieSigner((NEW,))
        for value in ["", "=", "not base64!", "%00", "A" * 22, "🍪", "A" * 10**6]:
            self.assertIsNone(signer.verify(value))
        self.assertIsNone(signer.verify(None))  # type: ignore[arg-type]
        self.assertIsNone(signer.verify(b"bytes"))  # type: ignore[arg-type]

    def test_length_limit(self):
        """
        A value longer than L{MAX_TOKEN_LENGTH} is refused before decoding,
        even when correctly signed.
        """
        signer = CookieSigner((NEW,))
        value = signer.sign(b"x" * 500)
        self.assertGreater(len(value), MAX_TOKEN_LENGTH)
        self.assertIsNone(signer.verify(value))

    def test_needs_keys(self):
        """
        A signer needs at least one non-empty key.
        """
        self.assertRaises(ValueError, CookieSigner, ())
        self.assertRaises(ValueError, CookieSigner, (b"",))
        self.assertRaises(ValueError, CookieSigner, ("text",))

    @given(st.text(max_size=200))
    def test_any_text_fails_quietly(self, value):
        """
        No text a client can send verifies (without the key) or raises.
        """
        self.assertIsNone(CookieSigner((NEW,)).verify(value))

    @given(st.binary(max_size=100))
    def test_any_bytes_round_trip(self, payload):
        """
        Any payload survives signing.
        """
        signer = CookieSigner((NEW, OLD))
        self.assertEqual(signer.verify(signer.sign(payload)), payload)


class BackendTokenTests(TestCase):
    def test_keyed_and_stable(self):
        """
        A backend's token is the same for one key and name, differs between
        keys and names, and does not contain the name.
        """
        token = backend_token(NEW, "app1")
        self.assertEqual(len(token), TOKEN_SIZE)
        self.assertEqual(token, backend_token(NEW, "app1"))
        self.assertNotEqual(token, backend_token(OLD, "app1"))
        self.assertNotEqual(token, backend_token(NEW, "app2"))
        self.assertNotIn(b"app1", token)

    def test_every_key(self):
        """
        L{backend_tokens} knows each backend's token under every key.
        """
        tokens = backend_tokens([NEW, OLD], ["a", "b"])
        self.assertEqual(len(tokens), 4)
        self.assertEqual(tokens[backend_token(OLD, "b")], "b")
        self.assertEqual(tokens[backend_token(NEW, "a")], "a")


class SessionPayloadTests(TestCase):
    def test_round_trip(self):
        """
        A payload packs to 25 bytes and unpacks to itself; an C{expires} of
        C{None} is stored as 0.
        """
        for expires in (None, 2000):
            payload = SessionPayload(b"123456", b"abcdef", 1000, 1500, expires)
            packed = payload.pack()
            self.assertEqual(len(packed), 25)
            self.assertEqual(SessionPayload.unpack(packed), payload)

    def test_times_clamped(self):
        """
        Times are whole seconds within 0..2**32-1.
        """
        payload = SessionPayload(b"123456", b"abcdef", -5, 2**40, None)
        unpacked = SessionPayload.unpack(payload.pack())
        self.assertEqual((unpacked.issued, unpacked.last_seen), (0, 2**32 - 1))

    def test_wrong_size_or_version(self):
        """
        Data of another size or version is not a payload.
        """
        packed = SessionPayload(b"123456", b"abcdef", 1, 2, 3).pack()
        self.assertIsNone(SessionPayload.unpack(packed[:-1]))
        self.assertIsNone(SessionPayload.unpack(packed + b"\0"))
        self.assertIsNone(SessionPayload.unpack(b"\x02" + packed[1:]))
        self.assertIsNone(SessionPayload.unpack(b""))
