"""A push carries its task's W3C trace context: the stored ``traceparent``/``tracestate`` as
headers when the server exports no spans, and, when it does, the context of the ``process
<queue>`` span the push runs in (the task's trace, the span exported over OTLP/HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from katar import Katar
from katar.core.model import NewTask, trace_context
from katar.push import Dispatcher
from katar.tracing import Tracing
from tests.helpers.otlp import Receiver as Collector
from tests.helpers.otlp import attributes, receiving
from tests.push.receiver import Answer, Receiver
from tests.push.test_push import finished, push_queue

pytestmark = pytest.mark.xdist_group(name="push")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
TRACESTATE = "rojo=00f067aa0ba902b7"


async def enqueue_traced(katar: Katar, queue: str, data: object) -> int:
    task = NewTask(
        data=msgspec.Raw(msgspec.json.encode(data)), trace=trace_context(TRACEPARENT, TRACESTATE)
    )
    [created] = await katar.engine.enqueue(queue, [task])
    return created.id


async def test_a_push_carries_the_tasks_traceparent(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    # a queue's own headers do not override the task's context
    await push_queue(katar, receiver, push={"headers": {"traceparent": "00-x"}})
    task_id = await enqueue_traced(katar, "hooks", {"n": 1})
    [untraced] = [(await katar.queue("hooks").enqueue(2)).id]
    assert (await finished(katar, "hooks", task_id)).status == "done"
    assert (await finished(katar, "hooks", untraced)).status == "done"
    by_id = {r.task["_id"]: r for r in receiver.received}
    traced = by_id[str(task_id)]
    assert traced.verified
    assert traced.headers["traceparent"] == TRACEPARENT
    assert traced.headers["tracestate"] == TRACESTATE
    assert traced.task["trace"] == {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    # a task without a context: the queue's header as configured, nothing more
    assert by_id[str(untraced)].headers["traceparent"] == "00-x"
    assert "tracestate" not in by_id[str(untraced)].headers


@pytest.fixture
def collector() -> Iterator[Collector]:
    with receiving() as server:
        yield server


@pytest.fixture
async def traced_dispatcher(
    dispatcher: Dispatcher, collector: Collector
) -> AsyncIterator[Dispatcher]:
    """The dispatcher with the server's spans, as katar serve sets them before any push
    queue's pusher starts."""
    tracing = Tracing(collector.url, export_every=0.2)
    dispatcher.tracing = tracing
    yield dispatcher
    dispatcher.tracing = None
    tracing.shutdown()


async def test_a_traced_push_runs_in_a_process_span_of_the_tasks_trace(
    katar: Katar, traced_dispatcher: Dispatcher, receiver: Receiver, collector: Collector
) -> None:
    receiver.script = lambda received: (
        Answer(500, b"boom") if len(receiver.received) == 1 else Answer(204)
    )
    await push_queue(katar, receiver)
    task_id = await enqueue_traced(katar, "hooks", {"n": 1})
    task = await finished(katar, "hooks", task_id)
    assert task.status == "done"
    assert task.attempts == 2
    # ASYNC110: the collector's thread appends the spans; it cannot set an asyncio event.
    async with asyncio.timeout(20):  # the batch processor exports every second
        while len(collector.spans) < 6:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # each delivery: its claim (receive), its push (process), its outcome (settle)
    names = sorted(span.name for span, _resource in collector.spans)
    assert names == ["process hooks"] * 2 + ["receive hooks"] * 2 + ["settle hooks"] * 2
    settles = [span for span, _resource in collector.spans if span.name == "settle hooks"]
    assert [attributes(span)["messaging.operation.name"] for span in settles] == [
        "failed",
        "done",
    ]
    for span, _resource in collector.spans:
        assert span.trace_id.hex() == TRACE_ID
        assert [link.span_id.hex() for link in span.links] == [PARENT_SPAN]
    spans = [span for span, _resource in collector.spans if span.name == "process hooks"]
    for span, received in zip(spans, receiver.received, strict=True):
        assert span.kind == Span.SPAN_KIND_CONSUMER
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id.hex() == PARENT_SPAN
        assert [link.span_id.hex() for link in span.links] == [PARENT_SPAN]
        # the request carries the span's own context: the endpoint's spans are its children
        assert received.headers["traceparent"] == f"00-{TRACE_ID}-{span.span_id.hex()}-01"
        assert received.headers["tracestate"] == TRACESTATE
    first, second = spans
    assert attributes(first)["messaging.operation.type"] == "process"
    assert attributes(first)["messaging.message.id"] == str(task_id)
    assert attributes(first)["http.response.status_code"] == 500
    assert first.status.code == first.status.STATUS_CODE_ERROR
    assert attributes(second)["http.response.status_code"] == 204
    assert second.status.code != second.status.STATUS_CODE_ERROR
