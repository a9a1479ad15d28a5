"""Server spans over OTLP/HTTP (protocol section 17), for every front to call.

A server started with an OTLP endpoint (``--otlp-endpoint``, ``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``[server] otlp_endpoint``) makes one :class:`Tracing`; without one it makes none: the
fronts test ``tracing is None`` and do nothing more. The spans follow the OpenTelemetry
messaging conventions: names ``send <queue>`` (PRODUCER), ``receive <queue>`` and ``settle
<queue>`` (CLIENT), ``process <queue>`` (CONSUMER, a push); ``messaging.system`` is
``katar``.

A span is made only where there is a trace to put it in: the request's own ``traceparent``
(its parent), else the first traced task's context; each task's context is also a link (the
creation context the conventions link a receive or a settle to), at most :data:`MAX_LINKS`
of them (the span's ``dropped_links_count`` says how many more). So a queue whose tasks
carry no context makes no span, and the sampling is the parent's: a context whose sampled
flag is off makes no span.

No OpenTelemetry SDK is involved: its per-span machinery (a span object, its attributes and
links checked one by one, then a protobuf message built for the export) costs several times
Katar's own work on a task. A span here is encoded at once into the OTLP protobuf bytes it is
exported as (``Span`` of opentelemetry/proto/trace/v1/trace.proto), out of parts kept per
trace context and per queue, and queued; a thread posts the queued spans, in batches, as
ExportTraceServiceRequest messages to the collector's OTLP/HTTP traces URL. The queue is
bounded: spans beyond it are dropped rather than waited for, so the event loop never waits
for the collector.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import os
import ssl
import struct
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from random import getrandbits
from typing import Final, NamedTuple

import msgspec

from katar.core.model import Task, trace_context
from katar.errors import ConfigError
from katar.protocol import Ack, TraceContext

log = logging.getLogger("katar.tracing")

#: The attributes' names (OpenTelemetry semantic conventions, messaging).
SYSTEM: Final = "messaging.system"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
DESTINATION: Final = "messaging.destination.name"
MESSAGE_ID: Final = "messaging.message.id"
BATCH_COUNT: Final = "messaging.batch.message_count"
#: The most links a span carries: a batch's traced tasks beyond it are counted in the
#: span's ``dropped_links_count``, not linked. Linking every task of a batch of 100 cost a
#: traced drain more than the spans themselves; the first 32 show the batch's traces.
MAX_LINKS: Final = 32
#: How many delivered tasks' contexts a server keeps for their settle spans (the oldest go
#: first), for the acks whose task the store does not hand back (see Tracing.settle).
REMEMBERED: Final = 100_000
#: The most parsed trace contexts kept (Tracing._context).
_CONTEXTS: Final = 10_000
#: The export queue: spans beyond it are dropped rather than waited for.
MAX_QUEUE: Final = 8192
#: The most spans one export request carries; that many waiting start an export at once.
MAX_EXPORT: Final = 512
#: Seconds between exports otherwise (the SDK's batch span processor's default; the
#: standard variable OTEL_BSP_SCHEDULE_DELAY, in ms, sets it as it does the SDK's).
EXPORT_EVERY: Final = 5.0
#: Seconds an export request may take.
EXPORT_TIMEOUT: Final = 10.0

#: The span kinds (trace.proto's SpanKind).
CLIENT: Final = 3
PRODUCER: Final = 4
CONSUMER: Final = 5

_trace_decoder: Final = msgspec.json.Decoder(TraceContext)


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint given as OTEL_EXPORTER_OTLP_ENDPOINT is: its
    base URL, to which the signal's path ``/v1/traces`` is added (a URL that names it already
    is kept)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


# -- protobuf, as much of it as the spans need ---------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes, an embedded message); ``tag`` is the field
    number shifted left by 3, with wire type 2."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _attribute(key: str, value: str | int | float | bool, tag: int = 0x4A) -> bytes:
    """One attribute as a field of tag ``tag`` (a Span's attributes: 0x4A)."""
    if isinstance(value, bool):
        any_value = b"\x10" + (b"\x01" if value else b"\x00")
    elif isinstance(value, int):
        any_value = b"\x18" + _varint(value & (1 << 64) - 1)
    elif isinstance(value, float):
        any_value = b"\x21" + struct.pack("<d", value)
    else:
        any_value = _field(0x0A, str(value).encode())
    return _field(tag, _field(0x0A, key.encode()) + _field(0x12, any_value))


#: A span's start and end (fields 7 and 8, fixed64).
_TIMES: Final = struct.Struct("<BQBQ")
#: A span's flags (field 16, fixed32): sampled (0x01), its parent's remoteness known (0x100),
#: its parent remote (0x200): every parent here is a context received, never a span of this
#: process.
_SPAN_FLAGS: Final = b"\x85\x01" + struct.pack("<I", 0x301)
_MESSAGE_ID_KEY: Final = _field(0x0A, MESSAGE_ID.encode())
_BATCH_COUNT_KEY: Final = _field(0x0A, BATCH_COUNT.encode())
_ERROR: Final = 2  # Status.code (trace.proto's StatusCode)


class _Context(NamedTuple):
    """A stored trace context, parsed once, with the encoded parts of what refers to it."""

    traceparent: str
    tracestate: str | None
    sampled: bool
    #: A child span's first fields: trace id (1), trace state (3), parent span id (4).
    child: bytes
    #: A span's link to it (Span field 13: a Link).
    link: bytes
    trace_id: bytes


def _parse(stored: TraceContext) -> _Context:
    """A stored context (valid: trace_context checked it before it was stored)."""
    traceparent, tracestate = stored.traceparent, stored.tracestate
    trace_id = bytes.fromhex(traceparent[3:35])
    span_id = bytes.fromhex(traceparent[36:52])
    flags = int(traceparent[53:55], 16) & 0x01
    state = b"" if not tracestate else _field(0x1A, tracestate.encode())
    child = b"\x0a\x10" + trace_id + state + b"\x22\x08" + span_id
    # Link: trace id (1), span id (2), trace state (3), flags (6: sampled, remote)
    link = b"\x0a\x10" + trace_id + b"\x12\x08" + span_id + state
    link += b"\x35" + struct.pack("<I", flags | 0x300)
    return _Context(traceparent, tracestate, flags == 1, child, _field(0x6A, link), trace_id)


def _span_id() -> bytes:
    return (getrandbits(64) or 1).to_bytes(8, "big")  # all zeros is not a span id


#: Span ids made at once (_SpanIds), from one draw of random bytes.
_SPAN_IDS: Final = 512
_UNPACK_IDS: Final = struct.Struct("8s" * _SPAN_IDS).unpack
_NO_SPAN_ID: Final = bytes(8)


class _SpanIds(list[bytes]):
    """Random span ids, drawn _SPAN_IDS at a time: an id is then a list's pop."""

    def refill(self) -> bytes:
        """The next id, the list refilled."""
        self[:] = _UNPACK_IDS(os.urandom(8 * _SPAN_IDS))
        while _NO_SPAN_ID in self:  # all zeros is not a span id
            self.remove(_NO_SPAN_ID)
        return self.pop() if self else _span_id()


#: A trace's and queue's parts of the one-task poll's spans (Tracing._hot): the context, the
#: queue, a receive span's start, a settle span's start by status.
_HotParts = tuple[_Context, str, bytes, dict[str, bytes]]


class Span:
    """A span being made around work (a push's ``process`` span), ended with the block of
    :meth:`Tracing.process`. A span whose parent is not sampled records nothing: only its
    context (the parent's) is passed on."""

    __slots__ = ("_attributes", "_events", "_status", "context", "recording", "span_id")

    def __init__(self, context: _Context) -> None:
        self.context = context
        self.recording = context.sampled
        self.span_id = _span_id() if self.recording else b""
        self._attributes: list[bytes] = []
        self._status = b""
        self._events: list[bytes] = []

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        if self.recording:
            self._attributes.append(_attribute(key, value))

    def set_error(self, description: str | None = None) -> None:
        """The span's status: error, with ``description``."""
        status = b"" if not description else _field(0x12, description[:1024].encode())
        self._status = _field(0x7A, status + b"\x18" + bytes((_ERROR,)))

    def record_exception(self, exc: BaseException) -> None:
        """An ``exception`` event (the conventions' exception.type and exception.message)."""
        event = b"\x09" + struct.pack("<Q", time.time_ns()) + _field(0x12, b"exception")
        event += _attribute("exception.type", type(exc).__qualname__, 0x1A)
        event += _attribute("exception.message", str(exc)[:1024], 0x1A)
        self._events.append(_field(0x5A, event))

    def headers(self) -> dict[str, str]:
        """The ``traceparent`` and ``tracestate`` headers of this span's context (its
        parent's, unchanged, when it records nothing)."""
        context = self.context
        if self.recording:
            flags = context.traceparent[53:55]
            traceparent = f"00-{context.trace_id.hex()}-{self.span_id.hex()}-{flags}"
        else:
            traceparent = context.traceparent
        headers = {"traceparent": traceparent}
        if context.tracestate:
            headers["tracestate"] = context.tracestate
        return headers


class Tracing:
    """The server's spans, exported to ``endpoint`` over OTLP/HTTP (protobuf).

    What a span costs a task is most of what tracing costs a drain, so the spans of a poll
    are made with the fewest steps in Python: a batch's contexts looked at in C (a list's
    count, a dict's update), a context parsed once and its encoded parts reused, the span
    id and times packed in one call, the span queued as bytes for the export thread."""

    def __init__(
        self, endpoint: str, *, service_name: str = "katar", export_every: float | None = None
    ) -> None:
        """``export_every``: seconds between exports, over OTEL_BSP_SCHEDULE_DELAY (ms) and
        EXPORT_EVERY."""
        from katar._version import __version__

        self.endpoint = otlp_traces_url(endpoint)
        resource = _attribute("service.name", service_name, 0x0A)
        resource += _attribute("service.version", __version__, 0x0A)
        resource += _attribute("telemetry.sdk.name", "katar", 0x0A)
        resource += _attribute("telemetry.sdk.language", "python", 0x0A)
        scope = _field(0x0A, _field(0x0A, b"katar") + _field(0x12, __version__.encode()))
        if export_every is None:
            export_every = _schedule_delay()
        self._exporter = _Exporter(self.endpoint, _field(0x0A, resource), scope, export_every)
        self._queue = self._exporter.queue
        #: Whether a delivery's contexts are remembered for its settle: not when the store
        #: hands back every acked task (katar serve on a store that servers share).
        self.remember = True
        #: Stored trace contexts already parsed (_context), at most _CONTEXTS.
        self._contexts: dict[bytes, _Context] = {}
        #: The last context parsed and what it was parsed from: the tasks of a poll mostly
        #: share one (their enqueue's), which an equality test finds without a copy.
        self._last: tuple[object, _Context] = (_NOTHING, _NO_CONTEXT)
        #: Per (operation, operation name, queue): a span's name, kind and attributes.
        self._heads: dict[tuple[str, str, str], bytes] = {}
        #: The same, of a worker's poll: its receive span's by queue; its settle span's by
        #: queue and name (fewer steps than a key of three).
        self._poll_heads: dict[str, bytes] = {}
        self._settle_heads: dict[str, dict[str, bytes]] = {}
        self._span_ids = _SpanIds()
        #: The one-task poll's span parts for the last trace and queue (_hot).
        self._hot_parts: _HotParts = (_NO_CONTEXT, "", b"", {})
        #: The contexts of the tasks delivered lately, by id (None for a task without one):
        #: what their settle links to when the store hands back no task for the ack.
        self._delivered: dict[int, bytes | msgspec.Raw | None] = {}

    # -- what the fronts call ----------------------------------------------------------------

    def send(
        self,
        queue: str,
        tasks: Sequence[Task],
        start_ns: int,
        traceparent: str | None = None,
        tracestate: str | None = None,
        *,
        name: str = "enqueue",
        context: bytes | msgspec.Raw | None = None,
    ) -> None:
        """A ``send <queue>`` span (PRODUCER) for an enqueue that began at ``start_ns``:
        under the request's context, else the first traced task's; linked to each task's.
        ``name``: the operation's (``enqueue``; SQS: ``SendMessage``...). ``context``: the
        request's, stored as a task's (Task.trace), instead of ``traceparent``."""
        created = [t for t in tasks if not t.duplicate]
        if created:
            parent = self._parent(traceparent, tracestate, context)
            found, links = self._links([t.trace for t in created])
            self._emit(
                parent, found, self._head("send", name, queue),
                _attributed(created[0].id, len(created)), links, start_ns, time.time_ns(),
            )  # fmt: skip

    def receive(
        self,
        queue: str,
        tasks: Sequence[Task],
        start_ns: int,
        traceparent: str | None = None,
        tracestate: str | None = None,
        *,
        name: str = "poll",
        context: bytes | msgspec.Raw | None = None,
    ) -> None:
        """A ``receive <queue>`` span (CLIENT) for a poll that delivered ``tasks``; their
        contexts are remembered for their settle. ``name``, ``context``: as :meth:`send`'s."""
        if tasks:
            parent = self._parent(traceparent, tracestate, context)
            times = _TIMES.pack(0x39, start_ns, 0x41, time.time_ns())
            span = self._receive(queue, name, tasks, parent, times)
            if span is not None:
                self._add(span)

    def settle(
        self,
        queue: str,
        acks: Iterable[tuple[int, str]],
        start_ns: int,
        traceparent: str | None = None,
        tracestate: str | None = None,
        tasks: Iterable[Task] = (),
        *,
        name: str | None = None,
        context: bytes | msgspec.Raw | None = None,
    ) -> None:
        """A ``settle <queue>`` span (CLIENT) for the acks (task id, status) that end
        deliveries ("done", "failed"; "in progress", a heartbeat, settles nothing unless
        ``name`` is given), linked to the tasks' contexts: those of ``tasks``, the acked
        tasks as the store handed them back (from any server's delivery), else those this
        server delivered. The operation's name is ``name`` (SQS: ``DeleteMessage``...),
        else the acks' status ("ack" for several). ``context``: as :meth:`send`'s."""
        if name is None:
            ended = [(task_id, status) for task_id, status in acks if status != "in progress"]
            if not ended:
                return
            statuses = {status for _id, status in ended}
            name = statuses.pop() if len(statuses) == 1 else "ack"
            ids = [task_id for task_id, _status in ended]
            traces = self._forget(ids)
        else:  # a heartbeat's delivery is still on: its settle is to come
            ids = [task_id for task_id, _status in acks]
            if not ids:
                return
            traces = list(map(self._delivered.get, ids))
        if tasks:
            traces = _stored(tasks, ids, traces)
        parent = self._parent(traceparent, tracestate, context)
        found, links = self._links(traces)
        self._emit(
            parent, found, self._head("settle", name, queue), _attributed(ids[0], len(ids)),
            links, start_ns, time.time_ns(),
        )  # fmt: skip

    def poll(
        self,
        queue: str,
        acks: Sequence[Ack],
        tasks: Sequence[Task],
        start_ns: int,
        traceparent: str | None = None,
        tracestate: str | None = None,
        settled: Sequence[Task] = (),
    ) -> None:
        """A worker's poll: the ``settle <queue>`` span of its acks, as :meth:`settle`'s
        (``settled``: the acked tasks the store handed back), and the ``receive <queue>``
        span of the ``tasks`` it delivered, as :meth:`receive`'s."""
        times = _TIMES.pack(0x39, start_ns, 0x41, time.time_ns())
        if traceparent is None and not settled and len(acks) < 2 and len(tasks) < 2:
            self._one(queue, acks, tasks, times)  # a worker's poll for one task at a time
            return
        parent = None if traceparent is None else self._parent(traceparent, tracestate, None)
        queue_ = self._queue  # _add, inline
        if acks:
            span = self._settle_acks(queue, acks, parent, times, settled)
            if span is not None:
                if len(queue_) < MAX_QUEUE:
                    queue_.append(span)
                    if len(queue_) == MAX_EXPORT:
                        self._exporter.wake()
                else:
                    self._exporter.dropped += 1
        if tasks:
            span = self._receive(queue, "poll", tasks, parent, times)
            if span is not None:
                if len(queue_) < MAX_QUEUE:
                    queue_.append(span)
                    if len(queue_) == MAX_EXPORT:
                        self._exporter.wake()
                else:
                    self._exporter.dropped += 1

    def _one(self, queue: str, acks: Sequence[Ack], tasks: Sequence[Task], times: bytes) -> None:
        """:meth:`poll`'s spans for a poll with at most one ack and one task, without a
        trace context of its own (nor acked tasks handed back): each span then goes in its
        task's trace, and is made of the parts kept for that trace and the queue
        (:meth:`_hot`), the task's id, the times and a span id. A drain of one task a poll
        makes two spans a task: these are the fewest steps in Python found for them."""
        last, found = self._last
        hot = self._hot_parts
        ids = self._span_ids
        queue_ = self._queue
        if acks:
            ack = acks[0]
            status: str = ack.status
            if status != "in progress":
                task_id_ = ack.task_id
                try:
                    task_id = int(task_id_)
                except ValueError:  # it names no task
                    task_id = 0
                trace = self._delivered.pop(task_id, None)
                if trace is not None:
                    if trace is not last and trace != last:
                        found = self._context(trace)
                        last = trace
                    if found.sampled:
                        if hot[0] is not found or hot[1] != queue:
                            hot = self._hot(found, queue)
                        prefix = hot[3].get(status) or self._hot_settle(hot, status)
                        value = task_id_.encode() if type(task_id_) is str else b"%d" % task_id
                        span = b"".join(
                            (
                                prefix, _MESSAGE_IDS[len(value)], value, times, b"\x12\x08",
                                ids.pop() if ids else ids.refill(),
                            )
                        )  # fmt: skip
                        if len(queue_) < MAX_QUEUE:
                            queue_.append(span)
                            if len(queue_) == MAX_EXPORT:
                                self._exporter.wake()
                        else:
                            self._exporter.dropped += 1
        if tasks:
            task = tasks[0]
            trace = task.trace
            if trace is not None:
                task_id = task.id
                if self.remember:
                    remembered = self._delivered
                    remembered[task_id] = trace
                    if len(remembered) > REMEMBERED:
                        self._forget_oldest()
                if trace is not last and trace != last:
                    found = self._context(trace)
                if found.sampled:
                    if hot[0] is not found or hot[1] != queue:
                        hot = self._hot(found, queue)
                    value = b"%d" % task_id
                    span = b"".join(
                        (
                            hot[2], _MESSAGE_IDS[len(value)], value, times, b"\x12\x08",
                            ids.pop() if ids else ids.refill(),
                        )
                    )  # fmt: skip
                    if len(queue_) < MAX_QUEUE:
                        queue_.append(span)
                        if len(queue_) == MAX_EXPORT:
                            self._exporter.wake()
                    else:
                        self._exporter.dropped += 1

    def _hot(self, context: _Context, queue: str) -> _HotParts:
        """The parts of the one-task poll's spans (:meth:`_one`) in ``context``'s trace on
        ``queue``, kept for the next polls, which are mostly of the same trace and queue: a
        receive span's fields but the task's id, the times and the span id; the same of the
        settle spans, by status (:meth:`_hot_settle`)."""
        receive = b"".join(
            (context.child, self._head("receive", "poll", queue), context.link, _SPAN_FLAGS)
        )
        hot: _HotParts = (context, queue, receive, {})
        self._hot_parts = hot
        return hot

    def _hot_settle(self, hot: _HotParts, status: str) -> bytes:
        """The start of a settle span of ``status`` among :meth:`_hot`'s parts."""
        context, queue, _receive, settles = hot
        prefix = b"".join(
            (context.child, self._head("settle", status, queue), context.link, _SPAN_FLAGS)
        )
        if len(settles) < 8:  # the statuses: "done", "failed"; no other reaches here
            settles[status] = prefix
        return prefix

    @contextmanager
    def process(self, queue: str, task: Task) -> Iterator[Span | None]:
        """A ``process <queue>`` span (CONSUMER) around a task's handling by the server (a
        push to an endpoint), under the task's context and linked to it; None for a task
        without one. An exception records itself on the span, sets its status to error, and
        goes on."""
        if task.trace is None:
            yield None
            return
        context = self._context(task.trace)
        span = Span(context)
        start = time.time_ns()
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc)
            span.set_error(f"{type(exc).__qualname__}: {exc}")
            raise
        finally:
            if span.recording:
                head = self._head("process", "process", queue)
                body = b"".join(
                    (
                        context.child, b"\x12\x08", span.span_id, head,
                        _message_id(task.id), *span._attributes,
                        _TIMES.pack(0x39, start, 0x41, time.time_ns()), context.link,
                        *span._events, span._status, _SPAN_FLAGS,
                    )
                )  # fmt: skip
                self._add(body)

    @staticmethod
    def inject(span: Span | None) -> dict[str, str]:
        """The ``traceparent`` and ``tracestate`` headers of ``span``'s context (a push's
        request carries them), or none."""
        return {} if span is None else span.headers()

    def flush(self, timeout: float = EXPORT_TIMEOUT) -> None:
        """Export what is queued now (blocking: call it from a thread)."""
        self._exporter.flush(timeout)

    def shutdown(self) -> None:
        """Export what is queued, then stop (blocking: call it from a thread)."""
        self._exporter.stop()

    @property
    def dropped(self) -> int:
        """Spans dropped so far: the queue was full, or their export failed."""
        return self._exporter.dropped

    # -- the spans ------------------------------------------------------------------------------

    def _receive(
        self,
        queue: str,
        name: str,
        tasks: Sequence[Task],
        parent: _Context | None,
        times: bytes,
    ) -> bytes | None:
        """:meth:`receive`'s span, under ``parent`` if not None (None: no span)."""
        remembered = self._delivered
        if len(tasks) == 1:  # the fewest steps for the one-task poll
            task = tasks[0]
            trace = task.trace
            task_id = task.id
            if trace is not None:
                if self.remember:
                    remembered[task_id] = trace
                    if len(remembered) > REMEMBERED:
                        self._forget_oldest()
                last, found = self._last
                if trace is not last and trace != last:
                    found = self._context(trace)
                links = found.link
                if parent is None:
                    parent = found
            elif parent is None:
                return None  # nothing to put the span in
            else:
                links = b""
            value = b"%d" % task_id
            attribute = _MESSAGE_IDS[len(value)]
        else:
            traces = [t.trace for t in tasks]
            if self.remember and (traces[0] is not None or traces.count(None) != len(traces)):
                remembered.update(zip([t.id for t in tasks], traces, strict=True))
                if len(remembered) > REMEMBERED:
                    self._forget_oldest()
            first, links = self._links(traces)
            if parent is None:
                if first is None:
                    return None
                parent = first
            attribute = _BATCH_COUNTS.get(len(tasks)) or _batch_count(len(tasks))
            value = b""
        if not parent.sampled:
            return None  # its trace is not sampled: the span would not be exported
        if name == "poll":
            head = self._poll_heads.get(queue) or self._poll_head(queue)
        else:
            head = self._heads.get(("receive", name, queue)) or self._head("receive", name, queue)
        ids = self._span_ids
        # The fields in any order (protobuf's rule): those that change, last.
        return b"".join(
            (
                parent.child, head, attribute, value, links, _SPAN_FLAGS, times, b"\x12\x08",
                ids.pop() if ids else ids.refill(),
            )
        )  # fmt: skip

    def _forget_oldest(self) -> None:
        """Forget the oldest remembered contexts beyond REMEMBERED (a dict keeps its order)."""
        remembered = self._delivered
        for task_id in list(itertools.islice(remembered, len(remembered) - REMEMBERED)):
            del remembered[task_id]

    def _poll_head(self, queue: str) -> bytes:
        """The head of a poll's receive span (:meth:`_head`), kept by queue."""
        head = self._head("receive", "poll", queue)
        if len(self._poll_heads) >= _CONTEXTS:
            self._poll_heads.clear()  # a bound, not a cache policy
        self._poll_heads[queue] = head
        return head

    def _settle_head(self, queue: str, name: str) -> bytes:
        """The head of a poll's settle span (:meth:`_head`), kept by queue and name."""
        head = self._head("settle", name, queue)
        if len(self._settle_heads) >= _CONTEXTS:
            self._settle_heads.clear()  # a bound, not a cache policy
        self._settle_heads.setdefault(queue, {})[name] = head
        return head

    def _settle_acks(
        self,
        queue: str,
        acks: Sequence[Ack],
        parent: _Context | None,
        times: bytes,
        settled: Sequence[Task],
    ) -> bytes | None:
        """:meth:`poll`'s settle span (None: no span)."""
        if len(acks) == 1:  # the fewest steps for the one-task poll
            ack = acks[0]
            name: str = ack.status
            if name == "in progress":
                return None
            try:
                task_id = int(ack.task_id)
            except ValueError:  # it names no task
                task_id = 0
            trace = self._delivered.pop(task_id, None)
            value = ack.task_id.encode() if type(ack.task_id) is str else b"%d" % task_id
            if settled:
                trace = _stored(settled, [task_id], [trace])[0]
            if trace is not None:
                last, found = self._last
                if trace is not last and trace != last:
                    found = self._context(trace)
                links = found.link
                if parent is None:
                    parent = found
            elif parent is None:
                return None  # nothing to put the span in
            else:
                links = b""
            attribute = _MESSAGE_IDS[len(value)]
        else:
            statuses = {ack.status for ack in acks}
            if "in progress" in statuses:  # heartbeats: not settled (settle filters them)
                ids_statuses = [(_task_id(ack.task_id), ack.status) for ack in acks]
                self.settle(queue, ids_statuses, _start(times), tasks=settled)
                return None
            name = statuses.pop() if len(statuses) == 1 else "ack"
            ids = _task_ids([ack.task_id for ack in acks])
            traces = self._forget(ids)
            if settled:
                traces = _stored(settled, ids, traces)
            first, links = self._links(traces)
            if parent is None:
                if first is None:
                    return None
                parent = first
            attribute = _BATCH_COUNTS.get(len(ids)) or _batch_count(len(ids))
            value = b""
        if not parent.sampled:
            return None
        heads = self._settle_heads.get(queue)
        head = heads.get(name) if heads is not None else None
        if head is None:
            head = self._settle_head(queue, name)
        ids_ = self._span_ids
        return b"".join(
            (
                parent.child, head, attribute, value, links, _SPAN_FLAGS, times, b"\x12\x08",
                ids_.pop() if ids_ else ids_.refill(),
            )
        )  # fmt: skip

    def _forget(self, ids: list[int]) -> list[bytes | msgspec.Raw | None]:
        """The remembered contexts of the tasks ``ids`` (None for those unknown), forgotten:
        their deliveries ended."""
        remembered = self._delivered
        if not remembered:
            return [None] * len(ids)
        return list(map(remembered.pop, ids, itertools.repeat(None)))

    def _links(self, traces: Sequence[bytes | msgspec.Raw | None]) -> tuple[_Context | None, bytes]:
        """The first context of ``traces`` (None for a task without one), and the links to
        them all: at most MAX_LINKS, the span's dropped_links_count saying how many more."""
        count = len(traces)
        first = traces[0]
        if first is not None and traces.count(first) == count:
            # One context for every task (a batch enqueued in one trace): parsed once.
            last, found = self._last
            if first is not last and first != last:
                found = self._context(first)
            if count <= MAX_LINKS:
                return found, found.link * count
            return found, found.link * MAX_LINKS + b"\x70" + _varint(count - MAX_LINKS)
        linked = [trace for trace in traces if trace is not None]
        if not linked:
            return None, b""
        dropped = b""
        if len(linked) > MAX_LINKS:
            dropped = b"\x70" + _varint(len(linked) - MAX_LINKS)
            linked = linked[:MAX_LINKS]
        contexts = self._contexts
        each = [contexts.get(bytes(trace)) or self._context(trace) for trace in linked]
        return each[0], b"".join([context.link for context in each]) + dropped

    def _emit(
        self,
        parent: _Context | None,
        first: _Context | None,
        head: bytes,
        attribute: bytes,
        links: bytes,
        start_ns: int,
        end_ns: int,
    ) -> None:
        """Queue a span for the export: under ``parent``, else under ``first`` (the first
        task's context); none when there is neither, or when its trace is not sampled."""
        if parent is None:
            if first is None:
                return  # nothing to put the span in
            parent = first
        if not parent.sampled:
            return  # its trace is not sampled: the span would not be exported
        self._add(
            b"".join(
                (
                    parent.child, head, attribute, links, _SPAN_FLAGS,
                    _TIMES.pack(0x39, start_ns, 0x41, end_ns), b"\x12\x08", _span_id(),
                )
            )
        )  # fmt: skip

    def _add(self, span: bytes) -> None:
        """Queue an encoded span for the export."""
        queue = self._queue
        if len(queue) < MAX_QUEUE:
            queue.append(span)
            if len(queue) == MAX_EXPORT:
                self._exporter.wake()
        else:
            self._exporter.dropped += 1

    def _parent(
        self, traceparent: str | None, tracestate: str | None, context: bytes | msgspec.Raw | None
    ) -> _Context | None:
        """A request's own trace context: given as stored, or as its headers (ignored when
        the traceparent is not W3C's)."""
        if context is None and traceparent is not None:
            context = trace_context(traceparent, tracestate)
        return None if context is None else self._context(context)

    def _head(self, operation: str, name: str, queue: str) -> bytes:
        """A span's name (5), kind (6) and constant attributes (9), encoded once per
        operation and queue."""
        key = (operation, name, queue)
        head = self._heads.get(key)
        if head is None:
            head = _field(0x2A, f"{operation} {queue}".encode())
            head += b"\x30" + bytes((_KINDS[operation],))
            head += _attribute(SYSTEM, "katar")
            head += _attribute(OPERATION_TYPE, operation)
            head += _attribute(OPERATION_NAME, name)
            head += _attribute(DESTINATION, queue)
            if len(self._heads) >= _CONTEXTS:
                self._heads.clear()  # a bound, not a cache policy
            self._heads[key] = head
        return head

    def _context(self, trace: bytes | msgspec.Raw) -> _Context:
        """A stored trace context (Task.trace), parsed: kept for the next spans of the same
        task or trace (a delivery's, its settle's), since a delivery makes a link and often
        a parent of each."""
        key = bytes(trace)
        found = self._contexts.get(key)
        if found is None:
            found = _parse(_trace_decoder.decode(key))
            if len(self._contexts) >= _CONTEXTS:
                self._contexts.clear()  # a bound, not a cache policy: the next ones refill it
            self._contexts[key] = found
        self._last = (trace, found)
        return found


#: A span's kind (trace.proto's SpanKind) by operation.
_KINDS: Final = {"send": PRODUCER, "receive": CLIENT, "settle": CLIENT, "process": CONSUMER}
#: What no trace is (Tracing._last before any context).
_NOTHING: Final = object()
_NO_CONTEXT: Final = _Context("", None, False, b"", b"", b"")
_ids_decoder: Final = msgspec.json.Decoder(list[int])


def _start(times: bytes) -> int:
    """The start (ns) of a span's times, as packed."""
    start: int = _TIMES.unpack(times)[1]
    return start


def _task_id(task_id: str | int) -> int:
    """An ack's task id as a number (0 for one that is not: it names no task)."""
    try:
        return int(task_id)
    except ValueError:
        return 0


def _task_ids(task_ids: list[str | int]) -> list[int]:
    """Acks' task ids as numbers, as :func:`_task_id`: those of a batch parsed at once, as a
    JSON array (an id that is not a number, then, one by one)."""
    try:
        ids = _ids_decoder.decode(",".join(task_ids).join(("[", "]")))  # type: ignore[arg-type]
    except (TypeError, msgspec.DecodeError):  # not all strings, or not all numbers
        return [_task_id(task_id) for task_id in task_ids]
    if len(ids) != len(task_ids):  # an id with a comma in it
        return [_task_id(task_id) for task_id in task_ids]
    return ids


def _stored(
    tasks: Iterable[Task], ids: list[int], traces: list[bytes | msgspec.Raw | None]
) -> list[bytes | msgspec.Raw | None]:
    """``traces``, the contexts of the tasks ``ids``, with those of ``tasks`` (the tasks as
    the store handed them back) instead where there are."""
    stored = {task.id: task.trace for task in tasks}
    return list(map(stored.get, ids, traces))


def _message_id(task_id: int) -> bytes:
    """The ``messaging.message.id`` attribute of one task (its id, a string)."""
    value = b"%d" % task_id
    return _MESSAGE_IDS[len(value)] + value


def _attributed(first_id: int, count: int) -> bytes:
    """A span's attribute of its tasks: the message id of one, the count of several."""
    if count == 1:
        return _message_id(first_id)
    return _BATCH_COUNTS.get(count) or _batch_count(count)


class _MessageIds(dict[int, bytes]):
    """What comes before an id of ``n`` characters in its ``messaging.message.id``
    attribute (an AnyValue's string_value in a KeyValue in the span's field 9), by ``n``:
    then the id itself."""

    def __missing__(self, n: int) -> bytes:
        any_value = b"\x0a" + _varint(n)
        key_value = _MESSAGE_ID_KEY + b"\x12" + _varint(len(any_value) + n) + any_value
        prefix = b"\x4a" + _varint(len(key_value) + n) + key_value
        if n < 100:  # any id of ours (the others: none of ours, not kept)
            self[n] = prefix
        return prefix


_MESSAGE_IDS: Final = _MessageIds()


def _batch_count(count: int) -> bytes:
    """The ``messaging.batch.message_count`` attribute."""
    value = b"\x18" + _varint(count)
    attribute = _field(0x4A, _BATCH_COUNT_KEY + b"\x12" + _varint(len(value)) + value)
    if len(_BATCH_COUNTS) < _CONTEXTS:
        _BATCH_COUNTS[count] = attribute
    return attribute


#: The messaging.batch.message_count attributes encoded so far, by count.
_BATCH_COUNTS: Final[dict[int, bytes]] = {}


def _schedule_delay() -> float:
    """OTEL_BSP_SCHEDULE_DELAY (ms) in seconds, else EXPORT_EVERY."""
    given = os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "").strip()
    try:
        delay = float(given) / 1000 if given else EXPORT_EVERY
    except ValueError:
        log.warning("OTEL_BSP_SCHEDULE_DELAY=%r is not a number of ms: ignored", given[:40])
        return EXPORT_EVERY
    return max(delay, 0.01)


def _export_headers() -> dict[str, str]:
    """The export requests' headers: the protobuf content type, and those the standard
    variables give (``OTEL_EXPORTER_OTLP_TRACES_HEADERS``, else ``OTEL_EXPORTER_OTLP_HEADERS``:
    ``name=value`` pairs, comma-separated, URL-encoded), a collector's credentials say."""
    headers = {"Content-Type": "application/x-protobuf", "User-Agent": "katar"}
    given = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    if given is None:
        given = os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    for pair in given.split(","):
        name, sep, value = pair.partition("=")
        name, value = urllib.parse.unquote(name.strip()), urllib.parse.unquote(value.strip())
        if not sep or not name:
            continue
        try:
            (name + value).encode("latin-1")
        except UnicodeEncodeError:  # HTTP/1.1 sends none such; the value is not logged
            log.warning("OTLP export header %r left out: not Latin-1 text", name[:40])
            continue
        headers[name] = value
    return headers


def _setting(name: str) -> str | None:
    """A standard exporter variable: ``OTEL_EXPORTER_OTLP_TRACES_<name>``, else
    ``OTEL_EXPORTER_OTLP_<name>`` (the traces' own one first, as the specification says)."""
    for variable in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        given = os.environ.get(variable, "").strip()
        if given:
            return given
    return None


def _no_password() -> str:
    """Asked for when the client key is encrypted: without it OpenSSL would prompt on the
    terminal, and a server starting there would wait for an answer."""
    raise ConfigError(
        "OTEL_EXPORTER_OTLP_CLIENT_KEY names an encrypted key: give the key unencrypted "
        "(e.g. openssl pkey -in key.pem -out plain.pem), readable by the server only"
    )


def tls_context() -> ssl.SSLContext:
    """The TLS settings of an https endpoint: the server's certificate verified against the
    CA bundle ``OTEL_EXPORTER_OTLP_CERTIFICATE`` names (a PEM file), else the system's CAs;
    a client certificate and key (mutual TLS) when ``OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE``
    and ``OTEL_EXPORTER_OTLP_CLIENT_KEY`` name them (the ``_TRACES_`` variables first).
    Raises ConfigError when a file is missing or not what it should be."""
    ca_file = _setting("CERTIFICATE")
    cert_file = _setting("CLIENT_CERTIFICATE")
    key_file = _setting("CLIENT_KEY")
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file, password=_no_password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"the OTLP exporter's TLS files (OTEL_EXPORTER_OTLP_CERTIFICATE {ca_file!r}, "
            f"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE {cert_file!r}, "
            f"OTEL_EXPORTER_OTLP_CLIENT_KEY {key_file!r}) could not be loaded: {exc}"
        ) from None
    if cert_file is None and key_file is not None:
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY is set without OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
        )
    return context


class _Frames(dict[int, bytes]):
    """A span's field in its ScopeSpans (tag 2, length-delimited): its tag and length, by
    the span's length, encoded once."""

    def __missing__(self, length: int) -> bytes:
        frame = b"\x12" + _varint(length)
        if len(self) < _CONTEXTS:
            self[length] = frame
        return frame


class _Exporter:
    """The export thread: posts the queued spans to the collector in batches of at most
    MAX_EXPORT, every ``every`` seconds or as soon as MAX_EXPORT are waiting."""

    def __init__(self, url: str, resource: bytes, scope: bytes, every: float) -> None:
        self.url = url
        self._every = every
        parts = urllib.parse.urlsplit(url)
        #: An https endpoint's TLS settings (tls_context), made once: loading the CAs
        #: costs more than an export.
        self._tls = tls_context() if parts.scheme == "https" else None
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._path = parts.path or "/"
        if parts.query:
            self._path += "?" + parts.query
        self._headers = _export_headers()
        self._resource = resource
        self._scope = scope
        self._frames = _Frames()
        #: deque.append and popleft are atomic: the event loop appends, the thread takes.
        self.queue: deque[bytes] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._stopping = False
        self._connection: http.client.HTTPConnection | None = None
        self._failing = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="katar-otlp", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Export now: MAX_EXPORT spans are waiting."""
        self._wake.set()

    def flush(self, timeout: float) -> None:
        self._idle.clear()
        self._wake.set()
        self._idle.wait(timeout)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(EXPORT_TIMEOUT + 5)

    def _run(self) -> None:
        queue = self.queue
        while True:
            self._wake.wait(self._every)
            self._wake.clear()
            stopping = self._stopping
            while queue:
                n = min(len(queue), MAX_EXPORT)
                self._post(list(itertools.starmap(queue.popleft, itertools.repeat((), n))))
            self._idle.set()
            if stopping:
                if self._connection is not None:
                    self._connection.close()
                return

    def _post(self, spans: list[bytes]) -> None:
        """One ExportTraceServiceRequest: one ResourceSpans of one ScopeSpans."""
        # Each span a field (2) of the ScopeSpans (its tag and length, then the span), the
        # whole request made by one join, without a step per span in Python: a copy costs
        # as much as the bytes copied, and the spans are most of what the thread does.
        frames = list(map(self._frames.__getitem__, map(len, spans)))
        scope_length = len(self._scope) + sum(map(len, spans)) + sum(map(len, frames))
        scope_spans = b"\x12" + _varint(scope_length)
        resource_length = len(self._resource) + len(scope_spans) + scope_length
        parts: list[bytes] = [b""] * (2 * len(spans) + 5)
        parts[:5] = b"\x0a", _varint(resource_length), self._resource, scope_spans, self._scope
        parts[5::2] = frames
        parts[6::2] = spans
        body = b"".join(parts)
        for attempt in range(3):
            try:
                status = self._send(body)
            except (OSError, http.client.HTTPException) as exc:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    if self._failing:
                        log.info("exporting spans to %s again", self.url)
                        self._failing = False
                    return
                failure = f"answer {status}"
                if status not in (429, 502, 503, 504):  # OTLP: only these are retried
                    break
            if attempt < 2 and not self._stopping:
                time.sleep(0.5 * 2**attempt)
        self.dropped += len(spans)
        if not self._failing:  # once per run of failures, not once per batch
            log.warning("could not export %d spans to %s (%s)", len(spans), self.url, failure)
            self._failing = True

    def _send(self, body: bytes) -> int:
        connection = self._connection
        if connection is None:
            if self._tls is not None:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=EXPORT_TIMEOUT, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=EXPORT_TIMEOUT
                )
            self._connection = connection
        connection.request("POST", self._path, body, self._headers)
        response = connection.getresponse()
        response.read()
        if response.will_close:
            connection.close()
            self._connection = None
        return response.status
