"""Signatures per the Standard Webhooks specification (https://www.standardwebhooks.com):
``webhook-signature: v1,<base64 of HMAC-SHA256("{id}.{timestamp}.{body}")>`` with the key
that a ``whsec_`` secret encodes in base64; several signatures, space-separated, while a
rotated secret's grace period runs, so that a receiver with either secret verifies."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from katar.core.model import SECRET_PREFIX

#: SHA-256's block: an HMAC key is padded (or first hashed) to it (RFC 2104).
_BLOCK: Final = 64
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


def key_of(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret holds."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value: one ``v1,`` signature per secret."""
    content = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key_of(s), content, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> list[tuple[bytes, bytes]]:
    """The three Standard Webhooks headers of a message."""
    return [
        (b"webhook-id", msg_id.encode()),
        (b"webhook-timestamp", b"%d" % timestamp),
        (b"webhook-signature", signature(secrets, msg_id, timestamp, body).encode()),
    ]


class Keyed:
    """One secret's HMAC-SHA256 keyed once (RFC 2104's inner and outer hashes of the padded
    key): a message's signature copies both instead of keying an HMAC again, which a push
    queue's every push would otherwise do with the same key."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: str) -> None:
        key = key_of(secret)
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def sign(self, prefix: bytes, body: bytes) -> bytes:
        """``v1,`` and the base64 HMAC of ``prefix`` then ``body``."""
        inner = self._inner.copy()
        inner.update(prefix)
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return b"v1," + binascii.b2a_base64(outer.digest(), newline=False)


def signed(keyed: Sequence[Keyed], msg_id: bytes, timestamp: int, body: bytes) -> bytes:
    """:func:`signature`'s value, as bytes, with secrets keyed once (the same bytes)."""
    prefix = b"%s.%d." % (msg_id, timestamp)
    if len(keyed) == 1:
        return keyed[0].sign(prefix, body)
    return b" ".join(k.sign(prefix, body) for k in keyed)
