"""The client's OpenTelemetry instrumentation (protocol section 17), used only where
OpenTelemetry is installed (``katar[otel]``): the producer sends the current context with its
enqueues; the worker runs each handler in a ``process <queue>`` span (CONSUMER) in the
task's context, linked to it.

Without OpenTelemetry, :func:`installed` is False (a look at the installed packages, once,
that imports nothing) and neither function does anything more (katar._context: the
current context, shared with the embedded API).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from katar._context import context_headers, installed
from katar.protocol import TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceContext

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["context_headers", "in_span", "installed", "processing"]


@contextmanager
def processing(queue: str, task_id: str, trace: TraceContext | None) -> Iterator[Span | None]:
    """A ``process <queue>`` span around a handler, under the task's trace context and
    linked to it, current while the block runs; an exception records itself on the span,
    whose status it sets to error, and goes on. None (and no span) without OpenTelemetry."""
    if not installed():
        yield None
        return
    from opentelemetry import propagate
    from opentelemetry import trace as api
    from opentelemetry.trace import Link, SpanKind

    links: list[Link] = []
    parent = None
    if trace is not None:
        carrier = {TRACEPARENT_HEADER: trace.traceparent}
        if trace.tracestate is not None:
            carrier[TRACESTATE_HEADER] = trace.tracestate
        parent = propagate.extract(carrier)
        created = api.get_current_span(parent).get_span_context()
        if created.is_valid:
            links.append(Link(created))
        else:
            parent = None
    tracer = api.get_tracer("katar.client")
    span = tracer.start_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "katar",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": task_id,
        },
    )
    # Current in this task (an async handler's); records an exception and sets the status.
    with api.use_span(span, end_on_exit=True):
        yield span


def in_span(span: Span | None, call: Callable[[], Any]) -> Any:
    """``call()`` with ``span`` current (in the thread that runs it: a sync handler runs in
    the worker's pool, where the context of the loop's task is not)."""
    if span is None:
        return call()
    from opentelemetry import trace as api

    # The span's end, exception and status are processing's.
    with api.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    ):
        return call()
