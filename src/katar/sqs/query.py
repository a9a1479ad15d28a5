"""The SQS query protocol (older SDKs and tools): ``Action=...`` with its parameters in a
form body or the query string, flattened (``Attribute.1.Name``, ``Entries`` as
``SendMessageBatchRequestEntry.1.Id``, ...), answered in XML.

:func:`parameters` unflattens a request into the JSON 1.0 protocol's parameters, so that the
actions (katar.sqs.actions) serve both protocols; :func:`answer` and :func:`error` write
their answers as SQS does.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any, Final
from xml.sax.saxutils import escape

from katar.sqs.errors import SqsError, invalid

NAMESPACE: Final = "http://queue.amazonaws.com/doc/2012-11-05/"
XML_TYPE: Final = b"text/xml"

#: The parameters that are whole numbers (the query protocol sends every value as text).
_INTEGERS: Final = frozenset(
    {
        "DelaySeconds",
        "MaxNumberOfMessages",
        "VisibilityTimeout",
        "WaitTimeSeconds",
        "MaxResults",
        "MaxNumberOfMessagesPerSecond",
    }
)
#: Each action's entries of a batch, by their flattened name.
_ENTRIES: Final = {
    "SendMessageBatch": "SendMessageBatchRequestEntry",
    "DeleteMessageBatch": "DeleteMessageBatchRequestEntry",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibilityBatchRequestEntry",
}
_INDEXED: Final = re.compile(r"([A-Za-z]+)\.(\d+)(?:\.(.*))?")


def _groups(flat: Mapping[str, str], prefix: str) -> list[dict[str, str]]:
    """``prefix.N.rest`` parameters as a list of {rest: value}, by N (``prefix.N`` alone
    under the key "")."""
    found: dict[int, dict[str, str]] = {}
    for key, value in flat.items():
        match = _INDEXED.fullmatch(key)
        if match is None or match.group(1) != prefix:
            continue
        found.setdefault(int(match.group(2)), {})[match.group(3) or ""] = value
    return [found[n] for n in sorted(found)]


def _message_attributes(flat: Mapping[str, str], prefix: str) -> dict[str, Any] | None:
    groups = _groups(flat, prefix)
    if not groups:
        return None
    attributes: dict[str, Any] = {}
    for group in groups:
        name = group.get("Name")
        if name is None:
            raise invalid(f"{prefix}.N.Name is required for each message attribute")
        value: dict[str, Any] = {"DataType": group.get("Value.DataType")}
        if "Value.StringValue" in group:
            value["StringValue"] = group["Value.StringValue"]
        if "Value.BinaryValue" in group:
            value["BinaryValue"] = group["Value.BinaryValue"]
        attributes[name] = value
    return attributes


def _number(name: str, value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        raise invalid(f"Value {value[:40]} for parameter {name} is invalid.") from None


def _message(flat: Mapping[str, str]) -> dict[str, Any]:
    """A message's parameters (SendMessage's, or a batch entry's)."""
    params: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            continue
        params[key] = _number(key, value) if key in _INTEGERS else value
    attributes = _message_attributes(flat, "MessageAttribute")
    if attributes is not None:
        params["MessageAttributes"] = attributes
    system = _message_attributes(flat, "MessageSystemAttribute")
    if system is not None:
        params["MessageSystemAttributes"] = system
    return params


def parameters(action: str, flat: Mapping[str, str], queue_url: str | None) -> dict[str, Any]:
    """The action's parameters as the JSON protocol gives them. ``queue_url``: the URL the
    request was sent to, when it is a queue's (the query protocol's way to name it)."""
    params = _message(flat)
    for name in ("Action", "Version"):
        params.pop(name, None)
    if queue_url is not None and "QueueUrl" not in params:
        params["QueueUrl"] = queue_url
    attributes = _groups(flat, "Attribute")
    if attributes:
        params["Attributes"] = {a.get("Name", ""): a.get("Value", "") for a in attributes}
    for flat_name, name in (
        ("AttributeName", "AttributeNames"),
        ("MessageAttributeName", "MessageAttributeNames"),
        ("MessageSystemAttributeName", "MessageSystemAttributeNames"),
        ("TagKey", "TagKeys"),
        ("AWSAccountId", "AWSAccountIds"),
        ("ActionName", "Actions"),
    ):
        values = _groups(flat, flat_name)
        if values:
            params[name] = [v.get("", "") for v in values]
    tags = _groups(flat, "Tag")
    if tags:
        params["Tags" if action == "TagQueue" else "tags"] = {
            t.get("Key", ""): t.get("Value", "") for t in tags
        }
    entry_name = _ENTRIES.get(action)
    if entry_name is not None:
        entries = []
        for group in _groups(flat, entry_name):
            entries.append(_message(group))
        params["Entries"] = entries
    return params


def _element(name: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, bytes):
        text = base64.b64encode(value).decode()
    else:
        text = escape(str(value))
    return f"<{name}>{text}</{name}>"


def _attributes(attributes: Mapping[str, str]) -> str:
    return "".join(
        f"<Attribute>{_element('Name', k)}{_element('Value', v)}</Attribute>"
        for k, v in attributes.items()
    )


def _message_attribute_xml(attributes: Mapping[str, Mapping[str, str]]) -> str:
    parts = []
    for name, value in attributes.items():
        inner = "".join(
            _element(key, value[key])
            for key in ("StringValue", "BinaryValue", "DataType")
            if key in value
        )
        parts.append(
            f"<MessageAttribute>{_element('Name', name)}<Value>{inner}</Value></MessageAttribute>"
        )
    return "".join(parts)


def _body(action: str, result: Mapping[str, Any]) -> str:
    """The <ActionResult> element's content."""
    parts: list[str] = []
    for key, value in result.items():
        if key in ("QueueUrls", "queueUrls"):
            parts += [_element("QueueUrl", url) for url in value]
        elif key == "Attributes":
            parts.append(_attributes(value))
        elif key == "Tags":
            parts += [
                f"<Tag>{_element('Key', k)}{_element('Value', v)}</Tag>" for k, v in value.items()
            ]
        elif key == "Messages":
            for message in value:
                inner = []
                for field, content in message.items():
                    if field == "Attributes":
                        inner.append(_attributes(content))
                    elif field == "MessageAttributes":
                        inner.append(_message_attribute_xml(content))
                    else:
                        inner.append(_element(field, content))
                parts.append(f"<Message>{''.join(inner)}</Message>")
        elif key == "Successful":
            entry = action + "ResultEntry"
            parts += [
                f"<{entry}>{''.join(_element(k, v) for k, v in e.items())}</{entry}>" for e in value
            ]
        elif key == "Results":
            parts += [
                "<ListMessageMoveTasksResultEntry>"
                + "".join(_element(k, v) for k, v in e.items())
                + "</ListMessageMoveTasksResultEntry>"
                for e in value
            ]
        elif key == "Failed":
            parts += [
                "<BatchResultErrorEntry>"
                + "".join(_element(k, v) for k, v in e.items())
                + "</BatchResultErrorEntry>"
                for e in value
            ]
        else:
            parts.append(_element(key, value))
    return "".join(parts)


def answer(action: str, result: Mapping[str, Any], request_id: str) -> bytes:
    """An action's answer in XML."""
    body = _body(action, result)
    result_element = f"<{action}Result>{body}</{action}Result>" if body else ""
    return (
        f'<?xml version="1.0"?><{action}Response xmlns="{NAMESPACE}">{result_element}'
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    ).encode()


def error(exc: SqsError, request_id: str) -> bytes:
    """An error in XML, with the query protocol's code."""
    kind = exc.kind
    fault = "Sender" if kind.sender else "Receiver"
    return (
        f'<?xml version="1.0"?><ErrorResponse xmlns="{NAMESPACE}"><Error>'
        f"<Type>{fault}</Type>{_element('Code', kind.code)}{_element('Message', exc.message)}"
        f"<Detail/></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
