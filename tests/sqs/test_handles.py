"""Receipt handles: their MAC is HMAC-SHA256 under the handle key (so that servers of other
versions on one store accept each other's handles), and only this queue's intact handles
are read."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from katar.sqs.errors import SqsError
from katar.sqs.handles import Handles, Receipt


@pytest.mark.parametrize("key", [b"", b"k" * 32, b"k" * 64, b"k" * 65, bytes(range(200))])
def test_a_handle_is_the_delivery_and_its_hmac(key: bytes) -> None:
    handles = Handles(key)
    handle = handles.make("émails", 123456789, 3)
    mac = hmac.new(key, "123456789.3.émails".encode(), hashlib.sha256).digest()[:16]
    assert handle == base64.urlsafe_b64encode(b"123456789.3." + mac).decode().rstrip("=")
    assert handles.read("émails", handle) == Receipt(123456789, 3)


@pytest.mark.parametrize(
    "handle",
    [None, 7, "", "x" * 1025, "é", "!!!!", "MTIzLjM", "abc.def"],
)
def test_what_is_not_a_handle_is_invalid(handle: object) -> None:
    with pytest.raises(SqsError) as caught:
        Handles(b"key").read("q", handle)
    assert caught.value.kind.code == "ReceiptHandleIsInvalid"


def test_another_queue_or_key_or_a_changed_byte_is_invalid() -> None:
    handles = Handles(b"key")
    handle = handles.make("q", 42, 1)
    for queue, reader, text in [
        ("other", handles, handle),
        ("q", Handles(b"another key"), handle),
        ("q", handles, handle[:-1] + ("A" if handle[-1] != "A" else "B")),
    ]:
        with pytest.raises(SqsError):
            reader.read(queue, text)
