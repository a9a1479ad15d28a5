"""The W3C trace context of SQS messages (protocol section 17): where a send finds it and
how a receive shows it.

A send's context is, first, a ``traceparent`` message attribute (with ``tracestate``), as
OpenTelemetry's botocore instrumentation and the other SDKs' SQS instrumentations inject
it; else the ``AWSTraceHeader`` system attribute, AWS X-Ray's format
(``Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=1``), converted; else the request's
``traceparent`` header. The task stores it (Task.trace) as a native enqueue's, so native
workers, pushes and spans see it too. A receive shows a task's context as those two
message attributes and as ``AWSTraceHeader``, to whoever asks for them.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from katar.core.model import trace_context
from katar.protocol import TraceContext

_ROOT: Final = re.compile(r"1-([0-9a-f]{8})-([0-9a-f]{24})")
_PARENT: Final = re.compile(r"[0-9a-f]{16}")
_decoder: Final = msgspec.json.Decoder(TraceContext)


def from_xray(header: str) -> str | None:
    """The W3C traceparent of an X-Ray trace header (``Root``, ``Parent``, ``Sampled``, in
    any order, other fields ignored); None without a valid Root and Parent (X-Ray's sampled
    ``?``, undecided, is not sampled)."""
    fields: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name.strip(), value.strip())
    root = _ROOT.fullmatch(fields.get("Root", ""))
    parent = fields.get("Parent", "")
    if root is None or _PARENT.fullmatch(parent) is None:
        return None
    flags = "01" if fields.get("Sampled") == "1" else "00"
    return f"00-{root[1]}{root[2]}-{parent}-{flags}"


def to_xray(traceparent: str) -> str:
    """The X-Ray trace header of a W3C traceparent (stored: valid)."""
    trace_id, parent, flags = traceparent[3:35], traceparent[36:52], traceparent[53:55]
    sampled = int(flags, 16) & 1
    return f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={parent};Sampled={sampled}"


def _string(attributes: dict[str, dict[str, str]], name: str) -> str | None:
    value = attributes.get(name)
    return None if value is None else value.get("StringValue")


def sent_trace(
    attributes: dict[str, dict[str, str]],
    system: dict[str, dict[str, str]],
    request: msgspec.Raw | None,
) -> msgspec.Raw | None:
    """The trace context a sent message's task stores (Task.trace): its ``traceparent``
    message attribute's, else its ``AWSTraceHeader``'s, else the request's; one that is not
    valid is ignored, as W3C says, and the next is tried."""
    found = trace_context(_string(attributes, "traceparent"), _string(attributes, "tracestate"))
    if found is not None:
        return found
    xray = _string(system, "AWSTraceHeader")
    if xray is not None:
        found = trace_context(from_xray(xray), None)
        if found is not None:
            return found
    return request


def stored(trace: bytes | msgspec.Raw) -> TraceContext:
    """A task's stored trace context."""
    return _decoder.decode(bytes(trace))


def message_attributes(context: TraceContext) -> dict[str, dict[str, str]]:
    """The ``traceparent`` (and ``tracestate``) message attributes of a task's context."""
    shown = {"traceparent": {"DataType": "String", "StringValue": context.traceparent}}
    if context.tracestate is not None:
        shown["tracestate"] = {"DataType": "String", "StringValue": context.tracestate}
    return shown
