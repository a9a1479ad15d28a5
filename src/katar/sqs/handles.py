"""Receipt handles: opaque, unforgeable names of one delivery of a message.

A handle is ``<task id>.<attempt>.<queue's name, base64url>.<MAC>`` in base64url: the
delivery it names (the task and its attempt, ApproximateReceiveCount) bound to its queue,
and an HMAC-SHA256 (its first 16 bytes) of those under the servers' handle key. Every
server derives the key from the same inputs (the credentials' secrets: the same
configuration), so that servers on one PostgreSQL database accept each other's handles. A
server without credentials is open to every caller on loopback, who may delete anything
anyway: its key is a fixed one, and its handles name a delivery without any secret.

A handle that decodes and whose MAC holds names a delivery that happened; whether it is
still the current one is the engine's question (an ack of an earlier attempt changes
nothing, as SQS's stale handles do). Anything else is ``ReceiptHandleIsInvalid``.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Iterable
from typing import Final, NamedTuple

from katar.auth import AwsCredential
from katar.sqs.errors import RECEIPT_HANDLE_IS_INVALID, SqsError

_MAC_BYTES: Final = 16
_LABEL: Final = b"katar sqs receipt handle v1"
#: SHA-256's block, and HMAC's pads of the key (RFC 2104).
_BLOCK: Final = 64
_INNER_PAD: Final = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD: Final = bytes(x ^ 0x5C for x in range(256))
#: base64url's two letters of its own, to and from standard base64's (binascii's codecs
#: are base64.urlsafe_* without their Python layers: a handle is made or read per message).
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")


class Receipt(NamedTuple):
    """The delivery a receipt handle names."""

    task_id: int
    attempt: int


def handle_key(credentials: Iterable[AwsCredential]) -> bytes:
    """The key of the handles' MACs, the same on every server with the same credentials."""
    mac = hmac.new(_LABEL, digestmod=hashlib.sha256)
    for credential in sorted(credentials, key=lambda c: c.access_key_id):
        for part in (credential.access_key_id, credential.secret):
            encoded = part.encode()
            mac.update(len(encoded).to_bytes(4, "big") + encoded)
    return mac.digest()


class Handles:
    """Makes and reads receipt handles under one key."""

    def __init__(self, key: bytes) -> None:
        # HMAC-SHA256 (RFC 2104, as the hmac module computes it) from its two hashes, keyed
        # once: a MAC is then two copies, two updates and two digests, all in C, where
        # hmac.new redoes the key's schedule and wraps each step in Python (a handle is made
        # for each message received, and read for each one deleted).
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_INNER_PAD))
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))

    def _mac(self, queue: str, task_id: int, attempt: int) -> bytes:
        inner = self._inner.copy()
        inner.update(b"%d.%d." % (task_id, attempt) + queue.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_BYTES]

    def make(self, queue: str, task_id: int, attempt: int) -> str:
        """The handle of delivery ``attempt`` of the task."""
        mac = self._mac(queue, task_id, attempt)
        raw = b"%d.%d." % (task_id, attempt) + mac
        return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).decode().rstrip("=")

    def read(self, queue: str, handle: object) -> Receipt:
        """The delivery ``handle`` names on ``queue``; ReceiptHandleIsInvalid when it is not
        one of this queue's handles."""
        if not isinstance(handle, str) or not handle or len(handle) > 1024:
            raise _invalid(handle)
        try:
            # As base64.urlsafe_b64decode: ASCII only, characters outside the alphabet
            # skipped (ValueError covers a non-ASCII handle's UnicodeEncodeError).
            padded = (handle + "=" * (-len(handle) % 4)).encode("ascii")
            raw = binascii.a2b_base64(padded.translate(_FROM_URLSAFE))
        except (binascii.Error, ValueError):
            raise _invalid(handle) from None
        head, _, mac = raw.partition(b".")
        attempt_text, dot, mac = mac.partition(b".")
        if not dot or not head.isdigit() or not attempt_text.isdigit():
            raise _invalid(handle)
        task_id, attempt = int(head), int(attempt_text)
        if not 0 < task_id < 2**63 or not 0 < attempt < 2**31:
            raise _invalid(handle)
        if not hmac.compare_digest(mac, self._mac(queue, task_id, attempt)):
            raise _invalid(handle)
        return Receipt(task_id, attempt)


def _invalid(handle: object) -> SqsError:
    shown = handle[:100] if isinstance(handle, str) else repr(handle)[:100]
    return SqsError(
        RECEIPT_HANDLE_IS_INVALID,
        f'The input receipt handle "{shown}" is not a valid receipt handle.',
    )
