"""Signatures per the Standard Webhooks specification (https://www.standardwebhooks.com):
``webhook-signature: v1,<base64 of HMAC-SHA256("{id}.{timestamp}.{body}")>`` with the key
that a ``whsec_`` secret encodes in base64; several signatures, space-separated, while a
rotated secret's grace period runs, so that a receiver with either secret verifies."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from katar.core.model import SECRET_PREFIX


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
