"""The digests SQS answers with a message (the SDKs recompute and compare them: the Java
and JavaScript SDKs reject a message whose digest differs), and the checks of a message's
body and attributes.

``MD5OfMessageAttributes`` is the MD5 of the attributes encoded as SQS documents it
("Calculating the MD5 message digest for message attributes"): by name in byte order, each
as its name, its data type (both as a 4-byte big-endian length and UTF-8 bytes), one byte
for the transport type (1 for String and Number, 2 for Binary), and the value (4-byte length
and bytes).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Mapping
from typing import Any, Final

from katar.sqs.errors import INVALID_MESSAGE_CONTENTS, SqsError, invalid

#: The characters a body or a string attribute may hold (the SQS API reference).
_BAD_CHARACTER: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: A message attribute's name: letters, digits, "_", "-" and ".", up to 256 characters, not
#: starting with "AWS." or "Amazon." nor with a period, and no two periods in a row.
_ATTRIBUTE_NAME: Final = re.compile(r"[A-Za-z0-9_\-.]{1,256}")
MAX_ATTRIBUTES: Final = 10


def md5_hex(data: bytes) -> str:
    """The hex MD5 of ``data`` (SQS's digests; not used for any security purpose)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def check_body(body: str, where: str = "MessageBody") -> None:
    """Refuse a body with characters SQS does not allow."""
    if not body:
        raise invalid(f"The request must contain the parameter {where}.")
    bad = _BAD_CHARACTER.search(body)
    if bad is not None:
        raise SqsError(
            INVALID_MESSAGE_CONTENTS,
            f"Invalid binary character '#x{ord(bad.group()):X}' was found in the message "
            "body, the set of allowed characters is #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 "
            "to #xFFFD | #x10000 to #x10FFFF",
        )


def check_attributes(attributes: Any, system: bool = False) -> dict[str, dict[str, str]]:
    """Message attributes as a request gives them (JSON: {name: {DataType, StringValue |
    BinaryValue (base64)}}), checked; kept as {name: {"DataType", "StringValue" |
    "BinaryValue"}} with binary values in base64, as stored and answered."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise invalid("MessageAttributes must be a map of names to attribute values.")
    if not system and len(attributes) > MAX_ATTRIBUTES:
        raise invalid(
            f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum "
            f"[{MAX_ATTRIBUTES}]."
        )
    checked: dict[str, dict[str, str]] = {}
    for name, value in attributes.items():
        if system:
            if name != "AWSTraceHeader":
                raise invalid(f"Message system attribute name '{name}' is invalid.")
        else:
            _check_name(name)
        if not isinstance(value, dict):
            raise invalid(f"The message attribute '{name}' must be an object.")
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or not data_type:
            raise invalid(
                f"The message attribute '{name}' must contain a non-empty attribute type."
            )
        base = data_type.partition(".")[0]
        if base not in ("String", "Number", "Binary") or len(data_type) > 256:
            raise invalid(
                f"The type of message attribute '{name}' is invalid. You must use only the "
                "following supported type prefixes: Binary, Number, String."
            )
        if system and data_type != "String":
            raise invalid(f"The message system attribute '{name}' must be of type String.")
        if base == "Binary":
            raw = value.get("BinaryValue")
            if not isinstance(raw, str) or value.get("StringValue") is not None:
                raise invalid(
                    f"The message attribute '{name}' with type 'Binary' must use field 'Binary'."
                )
            try:
                decoded = base64.b64decode(raw, validate=True)
            except ValueError:
                raise invalid(
                    f"The binary value of message attribute '{name}' is not base64."
                ) from None
            if not decoded:
                raise invalid(
                    f"The message attribute '{name}' must contain a non-empty value of "
                    "message attribute type 'Binary'."
                )
            checked[name] = {"DataType": data_type, "BinaryValue": raw}
            continue
        text = value.get("StringValue")
        if not isinstance(text, str) or value.get("BinaryValue") is not None:
            raise invalid(
                f"The message attribute '{name}' with type '{base}' must use field 'String'."
            )
        if not text:
            raise invalid(
                f"The message attribute '{name}' must contain a non-empty value of message "
                f"attribute type '{base}'."
            )
        if base == "Number":
            _check_number(name, text)
        elif _BAD_CHARACTER.search(text):
            raise SqsError(
                INVALID_MESSAGE_CONTENTS,
                f"The message attribute '{name}' contains characters outside the allowed set.",
            )
        checked[name] = {"DataType": data_type, "StringValue": text}
    return checked


def _check_name(name: str) -> None:
    lowered = name.lower()
    if (
        not _ATTRIBUTE_NAME.fullmatch(name)
        or name.startswith(".")
        or name.endswith(".")
        or ".." in name
        or lowered.startswith("aws.")
        or lowered.startswith("amazon.")
    ):
        raise invalid(
            f"Message attribute name '{name[:300]}' is invalid: use up to 256 letters, "
            "digits, '_', '-' and '.', not starting or ending with '.', without '..', and "
            "not starting with 'AWS.' or 'Amazon.'."
        )


def _check_number(name: str, text: str) -> None:
    try:
        value = float(text)
    except ValueError:
        raise invalid(
            f"Can't cast the value of message (user) attribute '{name}' to a number."
        ) from None
    if value != value or value in (float("inf"), float("-inf")) or len(text.lstrip("+-")) > 38 + 2:
        raise invalid(f"The value of message attribute '{name}' is not a valid number.")


def attributes_size(attributes: Mapping[str, Mapping[str, str]]) -> int:
    """The bytes the attributes count towards a message's size: names, types and values."""
    size = 0
    for name, value in attributes.items():
        size += len(name.encode()) + len(value["DataType"].encode())
        if "BinaryValue" in value:
            size += len(base64.b64decode(value["BinaryValue"]))
        else:
            size += len(value["StringValue"].encode())
    return size


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
