"""The Python client's instrumentation (katar[otel]): the producer sends the current trace
context with its enqueues, the server's spans (to a loopback OTLP/HTTP receiver) and the
worker's ``process <queue>`` span share the producer's trace id, and the handler runs with its
span current and the task's context in ``job.trace``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from katar import Katar, _context
from katar.client import AsyncProducer, AsyncWorker, Job, Producer, _otel
from katar.http import App
from katar.tracing import Tracing
from tests.client.conftest import URL, drain
from tests.helpers.otlp import Receiver, attributes, receiving, wait_for_spans

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    """The application's tracer provider, as an application with OpenTelemetry sets it
    (once per process: the API keeps the first)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        sdk = TracerProvider()
        sdk.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(sdk)
    else:  # pragma: no cover - another module of the run set one
        current.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _EXPORTER.clear()
    return _EXPORTER


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as server:
        yield server


async def test_one_trace_from_the_producer_through_the_server_to_the_handler(
    katar: Katar, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    tracing = Tracing(receiver.url, export_every=0.2)
    transport = httpx.ASGITransport(app=App(katar.engine, tracing=tracing))
    seen: list[tuple[Any, Any]] = []

    async def handler(job: Job) -> str:
        seen.append((job.trace, trace.get_current_span().get_span_context()))
        if job.data == "boom":
            raise ValueError("bad input")
        return "ok"

    tracer = trace.get_tracer("app")
    async with AsyncProducer(URL, transport=transport) as producer:
        with tracer.start_as_current_span("checkout") as checkout:
            await producer.enqueue("q", "fine")
            await producer.enqueue("q", "boom", max_attempts=1)
        await producer.enqueue("q", "outside any span")
        worker = AsyncWorker(URL, "q", handler, transport=transport, wait=0.2)
        await drain(worker, producer, "q", 3)
    await wait_for_spans(receiver, names=3)
    tracing.shutdown()

    trace_id = checkout.get_span_context().trace_id
    parent = f"00-{trace_id:032x}-{checkout.get_span_context().span_id:016x}-"  # then flags
    # The handler saw the task's context, and ran in a span of the producer's trace.
    traced = [(job_trace, context) for job_trace, context in seen if job_trace is not None]
    assert len(traced) == 2
    for job_trace, context in traced:
        assert job_trace.traceparent.startswith(parent)
        assert context.trace_id == trace_id
    untraced = [context for job_trace, context in seen if job_trace is None]
    assert len(untraced) == 1
    assert untraced[0].trace_id != trace_id
    # The worker's spans: process q, CONSUMER, linked to the creation context.
    processed = [s for s in spans.get_finished_spans() if s.name == "process q"]
    mine = [s for s in processed if s.context.trace_id == trace_id]
    assert len(mine) == 2
    for span in mine:
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None
        assert span.parent.span_id == checkout.get_span_context().span_id
        assert [link.context.span_id for link in span.links] == [
            checkout.get_span_context().span_id
        ]
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "katar"
        assert span.attributes["messaging.destination.name"] == "q"
    failed = [s for s in mine if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    assert [event.name for event in failed[0].events] == ["exception"]
    # The server's spans, over OTLP/HTTP: in the same trace, under the producer's span.
    server = [
        span for span, _resource in receiver.spans if span.trace_id.hex() == f"{trace_id:032x}"
    ]
    names = sorted(span.name for span in server)
    assert names == ["receive q", "receive q", "send q", "send q", "settle q", "settle q"] or (
        # a poll may deliver both tasks, and settle both acks, at once
        set(names) == {"receive q", "send q", "settle q"}
    )
    for span in server:
        assert span.parent_span_id.hex() == f"{checkout.get_span_context().span_id:016x}"
        assert attributes(span)["messaging.system"] == "katar"


def test_the_blocking_producer_injects_the_context(
    katar: Katar, spans: InMemorySpanExporter
) -> None:
    sent: list[httpx.Headers] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers)
        return httpx.Response(
            201,
            json={
                "tasks": [
                    {
                        "_id": "1",
                        "queue": "q",
                        "status": "queued",
                        "priority": 0,
                        "data": 1,
                        "attempts": 0,
                    }
                ]
            },
        )

    tracer = trace.get_tracer("app")
    with Producer(URL, transport=httpx.MockTransport(record)) as producer:
        with tracer.start_as_current_span("request") as span:
            producer.enqueue("q", 1)
        producer.enqueue("q", 2)
    context = span.get_span_context()
    assert sent[0]["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert "traceparent" not in sent[1]


def test_without_opentelemetry_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_otel, "installed", lambda: False)
    monkeypatch.setattr(_context, "installed", lambda: False)
    with trace.get_tracer("app").start_as_current_span("request"):
        assert _otel.context_headers() == {}
        with _otel.processing("q", "1", None) as span:
            assert span is None
