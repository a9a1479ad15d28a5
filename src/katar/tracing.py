"""Server spans over OTLP/HTTP (protocol section 17), for every front to call.

A server started with an OTLP endpoint (``--otlp-endpoint``, ``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``[server] otlp_endpoint``) makes one :class:`Tracing`; without one it makes none, and
nothing here imports OpenTelemetry (``katar[otel]``): the fronts test ``tracing is None``
and do nothing more. The spans follow the OpenTelemetry messaging conventions: names
``send <queue>`` (PRODUCER), ``receive <queue>`` and ``settle <queue>`` (CLIENT), ``process
<queue>`` (CONSUMER, a push); ``messaging.system`` is ``katar``.

A span is made only where there is a trace to put it in: the request's own ``traceparent``
(its parent), else the first traced task's context; each task's context is also a link (the
creation context the conventions link a receive or a settle to). So a queue whose tasks
carry no context makes no span, and the sampling is the parent's: a context whose sampled
flag is off makes no span that is exported (ParentBased).

Spans end in a batch span processor: a bounded queue (spans beyond it are dropped, never
waited for) that a thread of the SDK exports, so the event loop never blocks on the
collector.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import msgspec

from katar.core.model import Task
from katar.protocol import TraceContext

if TYPE_CHECKING:
    from opentelemetry.trace import Link, Span

#: The attributes' names (OpenTelemetry semantic conventions, messaging).
SYSTEM: Final = "messaging.system"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
DESTINATION: Final = "messaging.destination.name"
MESSAGE_ID: Final = "messaging.message.id"
BATCH_COUNT: Final = "messaging.batch.message_count"
#: How many delivered tasks' contexts a server keeps for their settle spans (the oldest go
#: first): a delivery settled after that many others, or on another server, gets a settle
#: span only when the ack's poll carries a traceparent of its own.
REMEMBERED: Final = 100_000
#: The most parsed trace contexts kept (Tracing._context).
_CONTEXTS: Final = 10_000
#: The batch span processor's queue: spans beyond it are dropped rather than waited for.
MAX_QUEUE: Final = 8192

_trace_decoder: Final = msgspec.json.Decoder(TraceContext)
#: A task as a span sees it: its id and its stored trace context (Task.trace), if any.
Message = tuple[int, "bytes | msgspec.Raw | None"]


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint given as OTEL_EXPORTER_OTLP_ENDPOINT is: its
    base URL, to which the signal's path ``/v1/traces`` is added (a URL that names it already
    is kept)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    """The server's spans, exported to ``endpoint`` over OTLP/HTTP (protobuf)."""

    def __init__(self, endpoint: str, *, service_name: str = "katar", exporter: Any = None) -> None:
        """``exporter``: a span exporter instead of OTLP/HTTP's (the tests' in-memory one)."""
        # Imported here, and only here: a server without an endpoint never loads the SDK.
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from katar._version import __version__

        self.endpoint = otlp_traces_url(endpoint)
        resource = Resource.create({"service.name": service_name, "service.version": __version__})
        self._provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=self.endpoint)
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=MAX_QUEUE, schedule_delay_millis=1000)
        )
        self._tracer = self._provider.get_tracer("katar", __version__)
        self._trace = trace
        self._link = trace.Link
        self._kinds = trace.SpanKind
        self._propagator = TraceContextTextMapPropagator()
        #: Stored trace contexts already parsed (_context), at most _CONTEXTS.
        self._contexts: dict[bytes, Any] = {}
        #: The contexts of the traced tasks delivered lately, by id: what their settle links to.
        self._delivered: OrderedDict[int, bytes] = OrderedDict()

    # -- what the fronts call ----------------------------------------------------------------

    def send(
        self,
        queue: str,
        tasks: Sequence[Task],
        start_ns: int,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """A ``send <queue>`` span (PRODUCER) for an enqueue that began at ``start_ns``:
        under the request's context, else the first traced task's; linked to each task's."""
        self._span(
            "send", "enqueue", queue, [(t.id, t.trace) for t in tasks if not t.duplicate],
            start_ns, traceparent, tracestate, self._kinds.PRODUCER,
        )  # fmt: skip

    def receive(
        self,
        queue: str,
        tasks: Sequence[Task],
        start_ns: int,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """A ``receive <queue>`` span (CLIENT) for a poll that delivered ``tasks``; their
        contexts are remembered for their settle."""
        remembered = self._delivered
        for task in tasks:
            if task.trace is not None:
                remembered[task.id] = bytes(task.trace)
                remembered.move_to_end(task.id)
        while len(remembered) > REMEMBERED:
            remembered.popitem(last=False)
        self._span(
            "receive", "poll", queue, [(t.id, t.trace) for t in tasks], start_ns,
            traceparent, tracestate, self._kinds.CLIENT,
        )  # fmt: skip

    def settle(
        self,
        queue: str,
        acks: Iterable[tuple[int, str]],
        start_ns: int,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """A ``settle <queue>`` span (CLIENT) for the acks (task id, status) of a poll that
        end deliveries ("done", "failed"; a heartbeat settles nothing), linked to the tasks'
        contexts this server delivered."""
        settled: list[Message] = []
        names: set[str] = set()
        for task_id, status in acks:
            if status == "in progress":
                continue
            names.add(status)
            trace = self._delivered.pop(task_id, None)
            settled.append((task_id, trace))
        if settled:
            name = names.pop() if len(names) == 1 else "ack"
            self._span(
                "settle", name, queue, settled, start_ns, traceparent, tracestate,
                self._kinds.CLIENT,
            )  # fmt: skip

    @contextmanager
    def process(self, queue: str, task: Task) -> Iterator[Span | None]:
        """A ``process <queue>`` span (CONSUMER) around a task's handling by the server (a
        push to an endpoint), under the task's context; None for a task without one. An
        exception records itself on the span and sets its status to error."""
        if task.trace is None:
            yield None
            return
        parent = self._context(task.trace)
        message = [(task.id, task.trace)]
        with self._tracer.start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=self._kinds.CONSUMER,
            attributes=self._attributes("process", "process", queue, message),
            links=self._links(message),
        ) as span:
            yield span

    def inject(self, span: Span | None) -> dict[str, str]:
        """The ``traceparent`` and ``tracestate`` headers of ``span``'s context (a push's
        request carries them), or none."""
        if span is None:
            return {}
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=self._trace.set_span_in_context(span))
        return headers

    def shutdown(self) -> None:
        """Export what is queued, then stop (blocking: call it from a thread)."""
        self._provider.shutdown()

    # -- the spans ------------------------------------------------------------------------------

    def _span(
        self,
        operation: str,
        name: str,
        queue: str,
        tasks: Sequence[Message],
        start_ns: int,
        traceparent: str | None,
        tracestate: str | None,
        kind: Any,
    ) -> None:
        links = self._links(tasks)
        parent: Any = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent}
            if tracestate is not None:
                carrier["tracestate"] = tracestate
            parent = self._propagator.extract(carrier)
            if not self._trace.get_current_span(parent).get_span_context().is_valid:
                parent = None
        if parent is None:
            first = next((trace for _id, trace in tasks if trace is not None), None)
            if first is None:
                return  # nothing to put the span in
            parent = self._context(first)
        span = self._tracer.start_span(
            f"{operation} {queue}",
            context=parent,
            kind=kind,
            attributes=self._attributes(operation, name, queue, tasks),
            links=links,
            start_time=start_ns,
        )
        span.end(time.time_ns())

    @staticmethod
    def _attributes(
        operation: str, name: str, queue: str, tasks: Sequence[Message]
    ) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            SYSTEM: "katar",
            OPERATION_TYPE: operation,
            OPERATION_NAME: name,
            DESTINATION: queue,
        }
        if len(tasks) == 1:
            attributes[MESSAGE_ID] = str(tasks[0][0])
        else:
            attributes[BATCH_COUNT] = len(tasks)
        return attributes

    def _context(self, trace: bytes | msgspec.Raw) -> Any:
        """The OpenTelemetry context of a stored trace context (Task.trace): remembered for
        the next spans of the same task or trace (a delivery's, its settle's), since a
        delivery makes a link and often a parent of each."""
        key = bytes(trace)
        found = self._contexts.get(key)
        if found is None:
            stored = _trace_decoder.decode(key)
            carrier = {"traceparent": stored.traceparent}
            if stored.tracestate is not None:
                carrier["tracestate"] = stored.tracestate
            found = self._propagator.extract(carrier)
            if len(self._contexts) >= _CONTEXTS:
                self._contexts.clear()  # a bound, not a cache policy: the next ones refill it
            self._contexts[key] = found
        return found

    def _links(self, tasks: Sequence[Message]) -> list[Link]:
        links: list[Link] = []
        for _id, trace in tasks:
            if trace is not None:
                context = self._trace.get_current_span(self._context(trace))
                links.append(self._link(context.get_span_context()))
        return links
