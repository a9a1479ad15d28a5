"""The W3C trace context over SQS, with the real boto3 against ``katar serve``: a send takes
it from a ``traceparent`` message attribute (as OpenTelemetry's botocore instrumentation
injects it), from ``AWSTraceHeader`` (X-Ray's format) or from the request's header, and
stores it as the task's; a receive shows a task's context as those attributes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from katar.sqs.digest import md5_of_attributes
from katar.sqs.trace import from_xray, sent_trace, to_xray
from tests.acceptance.conftest import KatarProcess
from tests.sqs.test_boto3 import client, server

__all__ = ["server"]  # the fixture, used by name

TRACE_ID = "5759e988bd862e3fe1be46a994272793"
XRAY = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
FROM_XRAY = f"00-{TRACE_ID}-53995c3f42cd8ad8-01"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "rojo=00f067aa0ba902b7"


def test_xray_and_w3c_headers_convert_both_ways() -> None:
    assert from_xray(XRAY) == FROM_XRAY
    assert to_xray(FROM_XRAY) == XRAY
    # fields in any order, others ignored; Sampled=0 or ? (undecided) is not sampled
    assert from_xray("Parent=53995c3f42cd8ad8;Lineage=a:1;Root=1-5759e988-bd862e3fe1be46a994272793")
    assert from_xray(XRAY.replace("Sampled=1", "Sampled=?")) == FROM_XRAY[:-2] + "00"
    assert to_xray(FROM_XRAY[:-2] + "00").endswith(";Sampled=0")
    for bad in ("Root=1-5759e988-bd862e3fe", "Root=1-5759e988-bd862e3fe1be46a994272793", ""):
        assert from_xray(bad) is None
    string = "String"
    # the traceparent attribute first; one that is not W3C's is ignored and the next tried
    both = {"traceparent": {"DataType": string, "StringValue": TRACEPARENT}}
    system = {"AWSTraceHeader": {"DataType": string, "StringValue": XRAY}}
    assert bytes(sent_trace(both, system, None) or b"") == b'{"traceparent":"%s"}' % (
        TRACEPARENT.encode()
    )
    junk = {"traceparent": {"DataType": string, "StringValue": "00-zz"}}
    assert FROM_XRAY.encode() in bytes(sent_trace(junk, system, None) or b"")
    assert sent_trace(junk, {}, None) is None


def record(http: httpx.Client, queue: str, message_id: str) -> Any:
    return http.get(f"/v1/queue/{queue}/tasks/{message_id}").json()["trace"]


def test_a_sends_context_is_the_tasks_and_a_receive_shows_it(server: KatarProcess) -> None:
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="traced")["QueueUrl"]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # 1. AWSTraceHeader (X-Ray): converted
        xray = sqs.send_message(
            QueueUrl=url,
            MessageBody="x-ray",
            MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String", "StringValue": XRAY}},
        )
        assert record(http, "traced", xray["MessageId"]) == {"traceparent": FROM_XRAY}
        # 2. traceparent and tracestate message attributes (OpenTelemetry's propagators)
        w3c_attributes = {
            "traceparent": {"DataType": "String", "StringValue": TRACEPARENT},
            "tracestate": {"DataType": "String", "StringValue": TRACESTATE},
        }
        w3c = sqs.send_message(QueueUrl=url, MessageBody="w3c", MessageAttributes=w3c_attributes)
        assert record(http, "traced", w3c["MessageId"]) == {
            "traceparent": TRACEPARENT,
            "tracestate": TRACESTATE,
        }

        # 3. the request's traceparent header, for a batch's messages that carry none
        def header(request: Any, **_: Any) -> None:
            request.headers["traceparent"] = TRACEPARENT

        sqs.meta.events.register("before-sign.sqs.SendMessageBatch", header)
        batch = sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": "a", "MessageBody": "by header"},
                {
                    "Id": "b",
                    "MessageBody": "own x-ray",
                    "MessageSystemAttributes": {
                        "AWSTraceHeader": {"DataType": "String", "StringValue": XRAY}
                    },
                },
            ],
        )
        sqs.meta.events.unregister("before-sign.sqs.SendMessageBatch", header)
        ids = {entry["Id"]: entry["MessageId"] for entry in batch["Successful"]}
        assert record(http, "traced", ids["a"]) == {"traceparent": TRACEPARENT}
        assert record(http, "traced", ids["b"]) == {"traceparent": FROM_XRAY}
        # 4. none: none
        plain = sqs.send_message(QueueUrl=url, MessageBody="plain")
        assert record(http, "traced", plain["MessageId"]) is None
        # 5. a native task's context, over SQS
        native = http.post(
            "/v1/queue/traced/tasks",
            json={"data": "native"},
            headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
        ).json()["tasks"][0]["_id"]

        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["AWSTraceHeader"],
            VisibilityTimeout=0,
        )["Messages"]
        by_id = {message["MessageId"]: message for message in got}
        assert len(by_id) == 6
        # boto3 checks every MD5OfMessageAttributes itself; and so does this
        for message in got:
            if "MessageAttributes" in message:
                assert message["MD5OfMessageAttributes"] == md5_of_attributes(
                    message["MessageAttributes"]
                )
        assert by_id[xray["MessageId"]]["Attributes"] == {"AWSTraceHeader": XRAY}  # as sent
        assert by_id[xray["MessageId"]]["MessageAttributes"] == {
            "traceparent": {"DataType": "String", "StringValue": FROM_XRAY}
        }
        assert by_id[w3c["MessageId"]]["MessageAttributes"] == w3c_attributes
        assert by_id[w3c["MessageId"]]["Attributes"] == {
            "AWSTraceHeader": (
                "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
            )
        }
        assert by_id[ids["a"]]["MessageAttributes"] == {
            "traceparent": {"DataType": "String", "StringValue": TRACEPARENT}
        }
        assert "MessageAttributes" not in by_id[plain["MessageId"]]
        assert "AWSTraceHeader" not in by_id[plain["MessageId"]].get("Attributes", {})
        assert by_id[native]["MessageAttributes"] == w3c_attributes
        assert by_id[native]["Attributes"]["AWSTraceHeader"].startswith("Root=1-0af76519-")
        # by name, and only when asked
        named = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["traceparent"]
        )["Messages"]
        assert {m["MessageId"]: m.get("MessageAttributes") for m in named}[native] == {
            "traceparent": {"DataType": "String", "StringValue": TRACEPARENT}
        }
        for message in named:
            assert "Attributes" not in message
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        bare = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert all("MessageAttributes" not in m and "Attributes" not in m for m in bare)


@pytest.mark.parametrize("server", ["memory"], indirect=True)
def test_an_invalid_aws_trace_header_is_ignored(server: KatarProcess) -> None:
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody="x",
        MessageSystemAttributes={
            "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3fe"}
        },
    )
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert record(http, "q", sent["MessageId"]) is None
