"""The SQS API's server spans (katar.tracing), with the real boto3 against ``katar serve
--otlp-endpoint``: SendMessage(Batch), ReceiveMessage, ChangeMessageVisibility and
DeleteMessage(Batch) make send, receive and settle spans in the producer's trace (its
``traceparent`` message attribute, or its ``AWSTraceHeader``), decoded by a real OTLP/HTTP
receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.acceptance.conftest import KatarProcess, wait_until
from tests.conftest import store_url
from tests.helpers.otlp import Receiver, attributes, receiving
from tests.sqs.test_boto3 import client

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"
XRAY_TRACE_ID = "5759e988bd862e3fe1be46a994272793"
XRAY = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def traced(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[KatarProcess, Receiver]]:
    """``katar serve`` exporting its spans to a loopback receiver."""
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'katar.db'}"}.get(
        request.param
    ) or store_url("postgres", tmp_path)
    with receiving() as receiver:
        process = KatarProcess(tmp_path, "--db", url, "--otlp-endpoint", receiver.url).start()
        try:
            yield process, receiver
        finally:
            process.kill()


def _span(receiver: Receiver, name: str, operation: str) -> Span:
    """The span of this name and operation that covers one message."""
    (span,) = [
        span
        for span, _resource in receiver.spans
        if span.name == name
        and attributes(span)["messaging.operation.name"] == operation
        and "messaging.message.id" in attributes(span)
    ]
    return span


def test_send_receive_settle_spans_share_the_producers_trace(
    traced: tuple[KatarProcess, Receiver],
) -> None:
    server, receiver = traced
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    w3c = {"traceparent": {"DataType": "String", "StringValue": TRACEPARENT}}
    sent = sqs.send_message(QueueUrl=url, MessageBody="one", MessageAttributes=w3c)
    (message,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)["Messages"]
    assert message["MessageId"] == sent["MessageId"]
    handle = message["ReceiptHandle"]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=30)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
    # a batch: one message traced by X-Ray's header, one by the W3C attribute
    xray = {"AWSTraceHeader": {"DataType": "String", "StringValue": XRAY}}
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "two", "MessageSystemAttributes": xray},
            {"Id": "b", "MessageBody": "three", "MessageAttributes": w3c},
        ],
    )
    batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert len(batch) == 2
    sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
    )
    assert server.terminate() == 0  # the spans still queued are exported on the way out
    wait_until(lambda: len(receiver.spans) >= 7, 10)
    assert len(receiver.spans) == 7
    send = _span(receiver, "send jobs", "SendMessage")
    receive = _span(receiver, "receive jobs", "ReceiveMessage")
    extend = _span(receiver, "settle jobs", "ChangeMessageVisibility")
    delete = _span(receiver, "settle jobs", "DeleteMessage")
    for span, kind, operation in (
        (send, Span.SPAN_KIND_PRODUCER, "send"),
        (receive, Span.SPAN_KIND_CLIENT, "receive"),
        (extend, Span.SPAN_KIND_CLIENT, "settle"),
        (delete, Span.SPAN_KIND_CLIENT, "settle"),
    ):
        assert span.kind == kind
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id.hex() == PRODUCER_SPAN
        assert [(link.trace_id.hex(), link.span_id.hex()) for link in span.links] == [
            (TRACE_ID, PRODUCER_SPAN)
        ]
        shown = attributes(span)
        assert shown["messaging.system"] == "katar"
        assert shown["messaging.operation.type"] == operation
        assert shown["messaging.destination.name"] == "jobs"
        assert shown["messaging.message.id"] == sent["MessageId"]
    # the batch's spans: under the first traced message's context, linked to both
    for name, operation in (
        ("send jobs", "SendMessageBatch"),
        ("receive jobs", "ReceiveMessage"),
        ("settle jobs", "DeleteMessageBatch"),
    ):
        spans = [
            span
            for span, _resource in receiver.spans
            if span.name == name
            and attributes(span)["messaging.operation.name"] == operation
            and attributes(span).get("messaging.batch.message_count") == 2
        ]
        assert len(spans) == 1, (name, operation)
        assert sorted(link.trace_id.hex() for link in spans[0].links) == sorted(
            [TRACE_ID, XRAY_TRACE_ID]
        )
