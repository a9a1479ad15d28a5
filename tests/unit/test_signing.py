"""The push's signatures: the keyed-once HMACs sign as the Standard Webhooks recipe does."""

from __future__ import annotations

import base64

import pytest

from katar.core.model import new_secret
from katar.push import signing


@pytest.mark.parametrize("size", [1, 24, 32, 64, 65, 100])
def test_a_keyed_secret_signs_as_a_fresh_hmac(size: int) -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(size))).decode()
    body = b'{"queue":"q","_id":"7","data":{"n":1}}'
    expected = signing.signature([secret], "7-1", 1_765_000_000, body)
    assert signing.signed([signing.Keyed(secret)], b"7-1", 1_765_000_000, body) == (
        expected.encode()
    )


def test_two_secrets_sign_in_their_order_and_each_signature_stands_alone() -> None:
    first, second = new_secret(), new_secret()
    keyed = [signing.Keyed(first), signing.Keyed(second)]
    for _ in range(2):  # a keyed HMAC is copied per message, never used up
        signed = signing.signed(keyed, b"9-2", 1_765_000_001, b"{}")
        assert signed == signing.signature([first, second], "9-2", 1_765_000_001, b"{}").encode()
    assert signing.signed([], b"9-2", 1, b"{}") == b""
