"""Server spans over OTLP/HTTP (katar.tracing): a real OTLP/HTTP receiver on loopback decodes
what the server exports (ExportTraceServiceRequest, with opentelemetry-proto) and the spans of
enqueue -> receive -> settle share the producer's trace id; a server without an endpoint
loads no OpenTelemetry module at all."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import msgspec
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from katar import Katar
from katar.core.model import State, Task
from katar.errors import ConfigError
from katar.http import App
from katar.protocol import Ack
from katar.server import WorkerServer
from katar.tracing import MAX_LINKS, MESSAGE_ID, Tracing, otlp_traces_url
from tests.helpers.otlp import Receiver, attributes, receiving, wait_for_spans
from tests.http.conftest import app_client, opened

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"
PARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as server:
        yield server


@pytest.fixture
async def traced(katar: Katar, receiver: Receiver, via: str) -> AsyncIterator[httpx.AsyncClient]:
    tracing = Tracing(receiver.url, export_every=0.2)
    async with opened(katar):
        app = App(katar.engine, tracing=tracing)
        async with app_client(app, via) as client:
            yield client
    tracing.shutdown()


async def test_enqueue_receive_settle_share_the_producers_trace(
    traced: httpx.AsyncClient, receiver: Receiver
) -> None:
    response = await traced.post(
        "/v1/queue/q/tasks", json={"data": 1}, headers={"traceparent": PARENT}
    )
    assert response.status_code == 201
    task_id = response.json()["tasks"][0]["_id"]
    await traced.post("/v1/queue/q/tasks", json={"data": "untraced"})
    delivered = (await traced.post("/v1/queue/q", json={"max": 1})).json()["tasks"]
    assert delivered[0]["trace"] == {"traceparent": PARENT}
    acks = [{"_id": task_id, "status": "done"}]
    assert (await traced.post("/v1/queue/q", json={"tasks": acks, "max": 0})).status_code == 204
    # the untraced task: delivered and settled, and no span for it
    (other,) = (await traced.post("/v1/queue/q", json={"max": 1})).json()["tasks"]
    await traced.post("/v1/queue/q", json={"tasks": [{"_id": other["_id"], "status": "done"}]})
    await wait_for_spans(receiver, names=3)
    spans = {span.name: span for span, _resource in receiver.spans}
    assert sorted(spans) == ["receive q", "send q", "settle q"]
    assert receiver.paths == ["/v1/traces"] * len(receiver.paths)
    assert {resource["service.name"] for _span, resource in receiver.spans} == {"katar"}
    for span in spans.values():
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id.hex() == PRODUCER_SPAN
    send, receive, settle = spans["send q"], spans["receive q"], spans["settle q"]
    assert send.kind == Span.SPAN_KIND_PRODUCER
    assert receive.kind == Span.SPAN_KIND_CLIENT
    assert settle.kind == Span.SPAN_KIND_CLIENT
    for span, operation, name in (
        (send, "send", "enqueue"),
        (receive, "receive", "poll"),
        (settle, "settle", "done"),
    ):
        assert attributes(span) == {
            "messaging.system": "katar",
            "messaging.operation.type": operation,
            "messaging.operation.name": name,
            "messaging.destination.name": "q",
            "messaging.message.id": task_id,
        }
        # linked to the task's creation context
        assert [(link.trace_id.hex(), link.span_id.hex()) for link in span.links] == [
            (TRACE_ID, PRODUCER_SPAN)
        ]


async def test_an_ack_to_another_server_settles_in_the_tasks_trace(
    katar: Katar, receiver: Receiver, via: str
) -> None:
    """Two servers on one store: one delivers, the other takes the ack (no traceparent of
    its own); the settle span finds the task's context in the task's row."""
    delivering, settling = (
        Tracing(receiver.url, export_every=0.2),
        Tracing(receiver.url, export_every=0.2),
    )
    async with opened(katar):
        katar.engine.trace_settles = True  # as katar serve sets it on a shared store
        async with (
            app_client(App(katar.engine, tracing=delivering), via) as first,
            app_client(App(katar.engine, tracing=settling), via) as second,
        ):
            body = {"tasks": [{"data": 1}, {"data": 2}]}
            created = await first.post(
                "/v1/queue/q/tasks", json=body, headers={"traceparent": PARENT}
            )
            ids = [task["_id"] for task in created.json()["tasks"]]
            delivered = (await first.post("/v1/queue/q", json={"max": 2})).json()["tasks"]
            acks = [
                {"_id": delivered[0]["_id"], "status": "done"},
                {"_id": delivered[1]["_id"], "status": "failed", "error": "no"},
            ]
            answer = await second.post("/v1/queue/q", json={"tasks": acks, "max": 0})
            assert answer.status_code == 204
    delivering.shutdown()
    settling.shutdown()
    await wait_for_spans(receiver, names=3)
    (settle,) = [span for span, _resource in receiver.spans if span.name == "settle q"]
    assert settle.trace_id.hex() == TRACE_ID
    assert settle.parent_span_id.hex() == PRODUCER_SPAN
    assert attributes(settle)["messaging.operation.name"] == "ack"  # done and failed
    assert attributes(settle)["messaging.batch.message_count"] == len(ids)
    assert [link.span_id.hex() for link in settle.links] == [PRODUCER_SPAN] * len(ids)


async def test_a_batch_span_counts_its_tasks(traced: httpx.AsyncClient, receiver: Receiver) -> None:
    other = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    body = {"tasks": [{"data": 1}, {"data": 2, "trace": {"traceparent": other}}]}
    response = await traced.post("/v1/queue/q/tasks", json=body, headers={"traceparent": PARENT})
    assert response.status_code == 201
    await traced.post("/v1/queue/q", json={"max": 2})
    await wait_for_spans(receiver, names=2)
    spans = {span.name: span for span, _resource in receiver.spans}
    receive = spans["receive q"]
    assert attributes(receive)["messaging.batch.message_count"] == 2
    assert receive.trace_id.hex() == TRACE_ID  # the first task's context is the parent
    assert {link.trace_id.hex() for link in receive.links} == {TRACE_ID, other[3:35]}


async def test_a_batch_span_links_at_most_max_links_tasks(
    traced: httpx.AsyncClient, receiver: Receiver
) -> None:
    count = MAX_LINKS + 8
    await traced.put("/v1/queue/q", json={"max_batch": count})
    body = {"tasks": [{"data": n} for n in range(count)]}
    await traced.post("/v1/queue/q/tasks", json=body, headers={"traceparent": PARENT})
    assert len((await traced.post("/v1/queue/q", json={"max": count})).json()["tasks"]) == count
    await wait_for_spans(receiver, names=2)
    spans = {span.name: span for span, _resource in receiver.spans}
    for span in (spans["send q"], spans["receive q"]):
        assert attributes(span)["messaging.batch.message_count"] == count
        assert len(span.links) == MAX_LINKS
        assert span.dropped_links_count == 8


async def test_an_unsampled_parent_exports_nothing(
    traced: httpx.AsyncClient, receiver: Receiver
) -> None:
    unsampled = PARENT[:-2] + "00"
    await traced.post("/v1/queue/q/tasks", json={"data": 1}, headers={"traceparent": unsampled})
    await traced.post("/v1/queue/q", json={"max": 1})
    await wait_for_spans(receiver, seconds=2)
    assert receiver.spans == []


@pytest.mark.storeless
@pytest.mark.parametrize("endpoint", [False, True])
def test_a_server_imports_no_opentelemetry(endpoint: bool) -> None:
    """Neither a server without an endpoint nor one that exports spans: the spans are
    encoded and exported by katar.tracing alone."""
    code = """
import asyncio, sys
import httpx
from katar import Katar
from katar.cli import main
from katar.http import App
from katar.server import WorkerServer
from katar.client import Producer, Worker
from katar.tracing import Tracing

async def run():
    katar = Katar("memory://")
    await katar.open()
    tracing = Tracing(sys.argv[1]) if len(sys.argv) > 1 else None
    app = App(katar.engine, tracing=tracing)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://katar") as client:
        assert (await client.put("/v1/queue/q", json={})).status_code in (200, 201)
        headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        r = await client.post("/v1/queue/q/tasks", json={"data": 1}, headers=headers)
        assert r.status_code == 201, r.text
        r = await client.post("/v1/queue/q", json={"max": 1})
        assert r.json()["tasks"][0]["trace"], r.text
    await katar.close()
    if tracing is not None:
        tracing.shutdown()

WorkerServer(katar=Katar("memory://"))
asyncio.run(run())
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
assert not loaded, loaded
print("ok")
"""
    with receiving() as receiver:
        argv = [sys.executable, "-c", code, *([receiver.url] if endpoint else [])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    # with an endpoint, the enqueue's and the poll's spans were exported on the way out
    names = sorted(span.name for span, _resource in receiver.spans)
    assert names == (["receive q", "send q"] if endpoint else [])


@pytest.mark.storeless
def test_an_endpoint_is_checked_when_the_server_is_made() -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        WorkerServer(katar=Katar("memory://"), otlp_endpoint="collector:4318")


@pytest.mark.storeless
def test_the_traces_url_of_an_endpoint() -> None:
    assert otlp_traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c/otlp/v1/traces") == "http://c/otlp/v1/traces"


@pytest.mark.storeless
def test_one_task_polls_of_two_traces_and_two_queues_keep_each_spans_apart(
    receiver: Receiver,
) -> None:
    # The one-task poll's spans are made of parts kept for the last trace and queue: polls
    # that alternate between traces and queues must each get their own.
    other_trace = "1af7651916cd43dd8448eb211c80319d"
    contexts = {
        "a": f'{{"traceparent":"{PARENT}"}}',
        "b": f'{{"traceparent":"00-{other_trace}-c7ad6b7169203332-01","tracestate":"k=v"}}',
    }
    tracing = Tracing(receiver.url, export_every=60)
    try:
        previous: dict[str, int] = {}
        for task_id, (queue, key) in enumerate(
            [("q1", "a"), ("q2", "b"), ("q1", "b"), ("q2", "a"), ("q1", "a")], start=1
        ):
            task = Task(
                id=task_id, queue=queue, state=State.RUNNING, priority=0,
                data=msgspec.Raw(b"1"), created_at=1, updated_at=1,
                trace=msgspec.Raw(contexts[key].encode()),
            )  # fmt: skip
            acks = []
            if queue in previous:  # the ack of this queue's last task, on the same poll
                acks = [Ack(task_id=str(previous[queue]), status="done")]
            tracing.poll(queue, acks, [task], time.time_ns())
            previous[queue] = task_id
        tracing.flush(10)
    finally:
        tracing.shutdown()
    made = {
        (span.name, attributes(span)[MESSAGE_ID]): (
            span.trace_id.hex(), span.parent_span_id.hex(), span.trace_state,
            [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        )
        for span, _resource in receiver.spans
    }  # fmt: skip
    a = (TRACE_ID, PRODUCER_SPAN, "", [(TRACE_ID, PRODUCER_SPAN)])
    b = (other_trace, "c7ad6b7169203332", "k=v", [(other_trace, "c7ad6b7169203332")])
    assert made == {
        ("receive q1", "1"): a,
        ("receive q2", "2"): b,
        ("receive q1", "3"): b,
        ("settle q1", "1"): a,
        ("receive q2", "4"): a,
        ("settle q2", "2"): b,
        ("receive q1", "5"): a,
        ("settle q1", "3"): b,
    }
    assert len({span.span_id for span, _resource in receiver.spans}) == 8
    assert {span.kind for span, _resource in receiver.spans} == {Span.SPAN_KIND_CLIENT}
