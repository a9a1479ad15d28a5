"""The current OpenTelemetry trace context, where OpenTelemetry is installed (``katar[otel]``):
what the Python producers (katar.client) and the embedded API (katar.api) send with an
enqueue when the caller gives no context of its own.

Without OpenTelemetry, :func:`installed` is False (a look at the installed packages, once,
that imports nothing) and :func:`context_headers` gives nothing.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Final

from katar.protocol import TRACEPARENT_HEADER, TRACESTATE_HEADER

#: The headers of the W3C trace context, the only ones passed on.
_HEADERS: Final = (TRACEPARENT_HEADER, TRACESTATE_HEADER)


@functools.cache
def installed() -> bool:
    """Whether the OpenTelemetry API is installed (looked for, not imported)."""
    return importlib.util.find_spec("opentelemetry") is not None and (
        importlib.util.find_spec("opentelemetry.trace") is not None
    )


def context_headers() -> dict[str, str]:
    """The current trace context as ``traceparent`` and ``tracestate`` headers (through the
    global propagator, as the application configured it); none without OpenTelemetry or
    outside a recording span."""
    if not installed():
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {name: carrier[name] for name in _HEADERS if name in carrier}
