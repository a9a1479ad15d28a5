"""The digests SQS answers with a message (the SDKs recompute and compare them: the Java
and JavaScript SDKs reject a message whose digest differs), and the checks of a message's
body and attributes (the attributes' rule is katar.attributes, which the native enqueue
shares).

``MD5OfMessageAttributes`` is the MD5 of the attributes encoded as SQS documents it
("Calculating the MD5 message digest for message attributes"): by name in byte order, each
as its name, its data type (both as a 4-byte big-endian length and UTF-8 bytes), one byte
for the transport type (1 for String and Number, 2 for Binary), and the value (4-byte length
and bytes).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import struct
from collections.abc import Callable, Mapping
from typing import Any

from katar import attributes as rule
from katar.attributes import BAD_CHARACTER, Attributes, InvalidAttribute
from katar.sqs.errors import INVALID_MESSAGE_CONTENTS, INVALID_PARAMETER_VALUE, SqsError, invalid

try:
    # CPython's own MD5: most bodies and attributes are small, and OpenSSL's setup
    # of each new hash (hashlib.md5) costs several times the hashing; large bodies hash
    # as fast. A build without it (FIPS) has OpenSSL's.
    _md5: Callable[[bytes], Any] = importlib.import_module("_md5").md5
except ImportError:  # pragma: no cover - builds without CPython's MD5
    _md5 = functools.partial(hashlib.md5, usedforsecurity=False)


def md5_hex(data: bytes) -> str:
    """The hex MD5 of ``data`` (SQS's digests; not used for any security purpose)."""
    digest: str = _md5(data).hexdigest()
    return digest


def check_body(body: str, where: str = "MessageBody") -> None:
    """Refuse a body with characters SQS does not allow."""
    if not body:
        raise invalid(f"The request must contain the parameter {where}.")
    bad = BAD_CHARACTER.search(body)
    if bad is not None:
        raise SqsError(
            INVALID_MESSAGE_CONTENTS,
            f"Invalid binary character '#x{ord(bad.group()):X}' was found in the message "
            "body, the set of allowed characters is #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 "
            "to #xFFFD | #x10000 to #x10FFFF",
        )


def check_attributes(attributes: Any, system: bool = False) -> Attributes:
    """Message (or, ``system``, system) attributes checked by the one rule
    (katar.attributes), a breach answered as SQS answers it."""
    try:
        return rule.check_attributes(attributes, system)
    except InvalidAttribute as exc:
        kind = INVALID_MESSAGE_CONTENTS if exc.contents else INVALID_PARAMETER_VALUE
        raise SqsError(kind, exc.message) from None


def md5_of_attributes(attributes: Mapping[str, Mapping[str, str]]) -> str | None:
    """SQS's MD5OfMessageAttributes (and MD5OfMessageSystemAttributes): None when there
    are none (SQS then leaves the field out)."""
    if not attributes:
        return None
    parts: list[bytes] = []
    for name in sorted(attributes, key=lambda n: n.encode()):
        value = attributes[name]
        for text in (name, value["DataType"]):
            encoded = text.encode()
            parts.append(struct.pack(">I", len(encoded)) + encoded)
        if "BinaryValue" in value:
            raw = base64.b64decode(value["BinaryValue"])
            parts.append(b"\x02" + struct.pack(">I", len(raw)) + raw)
        else:
            encoded = value["StringValue"].encode()
            parts.append(b"\x01" + struct.pack(">I", len(encoded)) + encoded)
    return md5_hex(b"".join(parts))
