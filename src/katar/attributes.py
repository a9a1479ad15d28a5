"""Message attributes: the rule for what a task's SQS message attributes (and system
attributes) may be, and how many bytes they count towards its size. One rule for both ways
a task gets them: a send over the SQS API (katar.sqs) and a native enqueue (katar.http, the
embedded API). Each front answers a breach in its own error format: the error here is a
ValidationError (the native fronts' 422) that says whether SQS calls it
InvalidMessageContents (characters outside SQS's set) or InvalidParameterValue.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from katar.errors import ValidationError

#: The characters a body or a string attribute may hold (the SQS API reference).
BAD_CHARACTER: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: A message attribute's name: letters, digits, "_", "-" and ".", up to 256 characters, not
#: starting with "AWS." or "Amazon." nor with a period, and no two periods in a row.
_ATTRIBUTE_NAME: Final = re.compile(r"[A-Za-z0-9_\-.]{1,256}")
MAX_ATTRIBUTES: Final = 10
#: The system attributes a sender may set: SQS allows AWSTraceHeader only.
SYSTEM_ATTRIBUTES: Final = ("AWSTraceHeader",)
#: The keys of a task's ``attributes`` a native enqueue may give (a FIFO send's
#: MessageDeduplicationId is the SQS front's own).
NATIVE_KEYS: Final = ("MessageAttributes", "MessageSystemAttributes")

Attributes = dict[str, dict[str, str]]


class InvalidAttribute(ValidationError):
    """A message attribute is not one SQS allows."""

    def __init__(self, message: str, contents: bool = False) -> None:
        super().__init__(message)
        #: Whether SQS names this InvalidMessageContents (else InvalidParameterValue).
        self.contents = contents


def check_attributes(attributes: Any, system: bool = False) -> Attributes:
    """Message attributes as a request gives them (JSON: {name: {DataType, StringValue |
    BinaryValue (base64)}}), checked; kept as {name: {"DataType", "StringValue" |
    "BinaryValue"}} with binary values in base64, as stored and answered. ``system``: the
    system attributes (AWSTraceHeader, a String)."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise InvalidAttribute("MessageAttributes must be a map of names to attribute values.")
    if not system and len(attributes) > MAX_ATTRIBUTES:
        raise InvalidAttribute(
            f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum "
            f"[{MAX_ATTRIBUTES}]."
        )
    checked: Attributes = {}
    for name, value in attributes.items():
        if system:
            if name not in SYSTEM_ATTRIBUTES:
                raise InvalidAttribute(f"Message system attribute name '{name}' is invalid.")
        else:
            _check_name(name)
        if not isinstance(value, dict):
            raise InvalidAttribute(f"The message attribute '{name}' must be an object.")
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or not data_type:
            raise InvalidAttribute(
                f"The message attribute '{name}' must contain a non-empty attribute type."
            )
        base = data_type.partition(".")[0]
        if base not in ("String", "Number", "Binary") or len(data_type) > 256:
            raise InvalidAttribute(
                f"The type of message attribute '{name}' is invalid. You must use only the "
                "following supported type prefixes: Binary, Number, String."
            )
        if system and data_type != "String":
            raise InvalidAttribute(f"The message system attribute '{name}' must be of type String.")
        if base == "Binary":
            raw = value.get("BinaryValue")
            if not isinstance(raw, str) or value.get("StringValue") is not None:
                raise InvalidAttribute(
                    f"The message attribute '{name}' with type 'Binary' must use field 'Binary'."
                )
            try:
                decoded = base64.b64decode(raw, validate=True)
            except ValueError:
                raise InvalidAttribute(
                    f"The binary value of message attribute '{name}' is not base64."
                ) from None
            if not decoded:
                raise InvalidAttribute(
                    f"The message attribute '{name}' must contain a non-empty value of "
                    "message attribute type 'Binary'."
                )
            checked[name] = {"DataType": data_type, "BinaryValue": raw}
            continue
        text = value.get("StringValue")
        if not isinstance(text, str) or value.get("BinaryValue") is not None:
            raise InvalidAttribute(
                f"The message attribute '{name}' with type '{base}' must use field 'String'."
            )
        if not text:
            raise InvalidAttribute(
                f"The message attribute '{name}' must contain a non-empty value of message "
                f"attribute type '{base}'."
            )
        if base == "Number":
            _check_number(name, text)
        elif BAD_CHARACTER.search(text):
            raise InvalidAttribute(
                f"The message attribute '{name}' contains characters outside the allowed set.",
                contents=True,
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
        raise InvalidAttribute(
            f"Message attribute name '{name[:300]}' is invalid: use up to 256 letters, "
            "digits, '_', '-' and '.', not starting or ending with '.', without '..', and "
            "not starting with 'AWS.' or 'Amazon.'."
        )


def _check_number(name: str, text: str) -> None:
    try:
        value = float(text)
    except ValueError:
        raise InvalidAttribute(
            f"Can't cast the value of message (user) attribute '{name}' to a number."
        ) from None
    if value != value or value in (float("inf"), float("-inf")) or len(text.lstrip("+-")) > 38 + 2:
        raise InvalidAttribute(f"The value of message attribute '{name}' is not a valid number.")


def attributes_size(attributes: Mapping[str, Mapping[str, str]]) -> int:
    """The bytes the attributes count towards a message's size, as SQS counts them: names,
    types and values (a binary value's decoded bytes)."""
    size = 0
    for name, value in attributes.items():
        size += len(name.encode()) + len(value["DataType"].encode())
        if "BinaryValue" in value:
            size += len(base64.b64decode(value["BinaryValue"]))
        else:
            size += len(value["StringValue"].encode())
    return size


def check_native(attributes: Any) -> tuple[msgspec.Raw | None, int]:
    """A native enqueue's ``attributes`` (``{"MessageAttributes": {...},
    "MessageSystemAttributes": {"AWSTraceHeader": ...}}``, each optional), checked as a
    send over SQS checks them: what to keep with the task, as JSON (None: nothing), and the
    bytes they count towards its size."""
    if not isinstance(attributes, dict):
        raise InvalidAttribute(
            'attributes must be an object: {"MessageAttributes": {...}, '
            '"MessageSystemAttributes": {...}}'
        )
    unknown = sorted(set(attributes) - set(NATIVE_KEYS))
    if unknown:
        raise InvalidAttribute(
            f"attributes may hold {' and '.join(NATIVE_KEYS)} only, not {unknown[0][:100]!r}"
        )
    kept: dict[str, Attributes] = {}
    size = 0
    message = check_attributes(attributes.get("MessageAttributes"))
    if message:
        kept["MessageAttributes"] = message
        size += attributes_size(message)
    system = check_attributes(attributes.get("MessageSystemAttributes"), system=True)
    if system:
        kept["MessageSystemAttributes"] = system
    return (msgspec.Raw(msgspec.json.encode(kept)) if kept else None), size
