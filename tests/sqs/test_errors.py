"""The SQS front's refusals of bad requests, call by call: each answers SQS's error code for
it (in AWS JSON 1.0, as the SDKs read it) and changes nothing. Sent as raw requests, since
the SDKs check types and required parameters before they send; against one ``katar serve``
(SQLite), the queues made once for every case."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import KatarProcess

ARN = "arn:aws:sqs:us-east-1:000000000000:{}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KatarProcess]:
    folder = tmp_path_factory.mktemp("katar")
    process = KatarProcess(folder, "--db", f"sqlite:///{folder / 'katar.db'}").start()
    yield process
    process.kill()


def sqs(server: KatarProcess, action: str, params: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        server.url + "/",
        json=params,
        headers={
            "x-amz-target": f"AmazonSQS.{action}",
            "content-type": "application/x-amz-json-1.0",
        },
        timeout=30,
    )


def ok(server: KatarProcess, action: str, **params: Any) -> Any:
    answer = sqs(server, action, params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def error_code(answer: httpx.Response) -> str:
    """The code an SDK reads: the query-compatible header's, as with SQS."""
    return answer.headers["x-amzn-query-error"].partition(";")[0]


@pytest.fixture(scope="module")
def queues(server: KatarProcess) -> dict[str, str]:
    """A standard queue with a message received (its handle), a FIFO queue, and a
    dead-letter queue."""
    url = ok(server, "CreateQueue", QueueName="errors")["QueueUrl"]
    fifo = ok(server, "CreateQueue", QueueName="errors.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    ok(server, "CreateQueue", QueueName="errors-dlq")
    ok(
        server,
        "SetQueueAttributes",
        QueueUrl=url,
        Attributes={
            "RedrivePolicy": (
                '{"deadLetterTargetArn":"' + ARN.format("errors-dlq") + '","maxReceiveCount":5}'
            )
        },
    )
    ok(server, "SendMessage", QueueUrl=url, MessageBody="held")
    (message,) = ok(server, "ReceiveMessage", QueueUrl=url, VisibilityTimeout=600)["Messages"]
    return {"url": url, "fifo": fifo, "handle": message["ReceiptHandle"]}


#: A binary attribute's value, as the JSON protocol sends it (base64).
BLOB = base64.b64encode(b"\x00\x01").decode()

#: (what the case is, action, its parameters with "{url}", "{fifo}" and "{handle}" filled in
#: from the queues fixture, the error code expected).
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    # The request itself.
    ("a body that is not JSON", "ListQueues", {"__raw__": b"{nope"}, "InvalidParameterValue"),
    ("a body that is a JSON list", "ListQueues", {"__raw__": b"[1]"}, "InvalidParameterValue"),
    ("a parameter of the wrong type", "GetQueueUrl", {"QueueName": 7}, "InvalidParameterValue"),
    (
        "a list of names that is not",
        "GetQueueAttributes",
        {"QueueUrl": "{url}", "AttributeNames": "All"},
        "InvalidParameterValue",
    ),
    (
        "a QueueUrl without a name",
        "SendMessage",
        {"QueueUrl": "http://h/", "MessageBody": "x"},
        "InvalidParameterValue",
    ),
    ("a missing QueueUrl", "PurgeQueue", {}, "MissingParameter"),
    # Queues.
    ("a queue name with a space", "CreateQueue", {"QueueName": "a b"}, "InvalidParameterValue"),
    ("a queue name too long", "CreateQueue", {"QueueName": "q" * 81}, "InvalidParameterValue"),
    (
        "a .fifo name without FifoQueue",
        "CreateQueue",
        {"QueueName": "x.fifo"},
        "InvalidParameterValue",
    ),
    (
        "Attributes that are not a map",
        "CreateQueue",
        {"QueueName": "bad-attrs", "Attributes": ["VisibilityTimeout"]},
        "InvalidParameterValue",
    ),
    (
        "an attribute value that is not a string",
        "CreateQueue",
        {"QueueName": "bad-value", "Attributes": {"DelaySeconds": 5}},
        "InvalidAttributeValue",
    ),
    (
        "a FIFO attribute on a standard queue",
        "SetQueueAttributes",
        {"QueueUrl": "{url}", "Attributes": {"ContentBasedDeduplication": "true"}},
        "InvalidAttributeName",
    ),
    (
        "FifoQueue changed after creation",
        "SetQueueAttributes",
        {"QueueUrl": "{fifo}", "Attributes": {"FifoQueue": "true"}},
        "InvalidAttributeName",
    ),
    (
        "a FIFO attribute's unknown value",
        "SetQueueAttributes",
        {"QueueUrl": "{fifo}", "Attributes": {"DeduplicationScope": "galaxy"}},
        "InvalidAttributeValue",
    ),
    (
        "a number attribute that is not one",
        "SetQueueAttributes",
        {"QueueUrl": "{url}", "Attributes": {"DelaySeconds": "soon"}},
        "InvalidAttributeValue",
    ),
    (
        "a number attribute of digits that are not ASCII",
        "SetQueueAttributes",
        {"QueueUrl": "{url}", "Attributes": {"DelaySeconds": "\u00b2"}},
        "InvalidAttributeValue",
    ),
    (
        "SqsManagedSseEnabled not a boolean",
        "SetQueueAttributes",
        {"QueueUrl": "{url}", "Attributes": {"SqsManagedSseEnabled": "yes"}},
        "InvalidAttributeValue",
    ),
    (
        "SetQueueAttributes without Attributes",
        "SetQueueAttributes",
        {"QueueUrl": "{url}"},
        "MissingParameter",
    ),
    (
        "a RedrivePolicy that is not JSON",
        "SetQueueAttributes",
        {"QueueUrl": "{url}", "Attributes": {"RedrivePolicy": "{"}},
        "InvalidParameterValue",
    ),
    (
        "a RedrivePolicy with an unknown field",
        "SetQueueAttributes",
        {
            "QueueUrl": "{url}",
            "Attributes": {
                "RedrivePolicy": '{"deadLetterTargetArn": "'
                + ARN.format("errors-dlq")
                + '", "maxReceiveCount": 2, '
                '"x": 1}'
            },
        },
        "InvalidParameterValue",
    ),
    (
        "a RedriveAllowPolicy with an unknown field",
        "SetQueueAttributes",
        {
            "QueueUrl": "{url}",
            "Attributes": {"RedriveAllowPolicy": '{"redrivePermission": "allowAll", "x": 1}'},
        },
        "InvalidParameterValue",
    ),
    ("NextToken without MaxResults", "ListQueues", {"NextToken": "a"}, "InvalidParameterValue"),
    ("MaxResults out of bounds", "ListQueues", {"MaxResults": 1001}, "InvalidParameterValue"),
    (
        "ListDeadLetterSourceQueues' NextToken alone",
        "ListDeadLetterSourceQueues",
        {"QueueUrl": "{url}", "NextToken": "a"},
        "InvalidParameterValue",
    ),
    # Tags.
    ("TagQueue without Tags", "TagQueue", {"QueueUrl": "{url}"}, "MissingParameter"),
    (
        "a tag value too long",
        "TagQueue",
        {"QueueUrl": "{url}", "Tags": {"k": "v" * 257}},
        "InvalidParameterValue",
    ),
    (
        "more than 50 tags",
        "TagQueue",
        {"QueueUrl": "{url}", "Tags": {f"k{i}": "v" for i in range(51)}},
        "InvalidParameterValue",
    ),
    ("UntagQueue without TagKeys", "UntagQueue", {"QueueUrl": "{url}"}, "MissingParameter"),
    # Messages.
    ("SendMessage without a body", "SendMessage", {"QueueUrl": "{url}"}, "MissingParameter"),
    (
        "an empty body",
        "SendMessage",
        {"QueueUrl": "{url}", "MessageBody": ""},
        "InvalidParameterValue",
    ),
    (
        "a delay too long",
        "SendMessage",
        {"QueueUrl": "{url}", "MessageBody": "x", "DelaySeconds": 901},
        "InvalidParameterValue",
    ),
    (
        "a delay that is not a number",
        "SendMessage",
        {"QueueUrl": "{url}", "MessageBody": "x", "DelaySeconds": "5"},
        "InvalidParameterValue",
    ),
    (
        "a MessageGroupId with a space",
        "SendMessage",
        {"QueueUrl": "{url}", "MessageBody": "x", "MessageGroupId": "a b"},
        "InvalidParameterValue",
    ),
    (
        "a FIFO message without deduplication",
        "SendMessage",
        {"QueueUrl": "{fifo}", "MessageBody": "x", "MessageGroupId": "g"},
        "InvalidParameterValue",
    ),
    (
        "a MessageDeduplicationId too long",
        "SendMessage",
        {
            "QueueUrl": "{fifo}",
            "MessageBody": "x",
            "MessageGroupId": "g",
            "MessageDeduplicationId": "d" * 129,
        },
        "InvalidParameterValue",
    ),
    (
        "MessageAttributes that are not a map",
        "SendMessage",
        {"QueueUrl": "{url}", "MessageBody": "x", "MessageAttributes": ["a"]},
        "InvalidParameterValue",
    ),
    (
        "more than 10 message attributes",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {
                f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)
            },
        },
        "InvalidParameterValue",
    ),
    (
        "an attribute name with '..'",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {"a..b": {"DataType": "String", "StringValue": "v"}},
        },
        "InvalidParameterValue",
    ),
    (
        "an attribute that is not an object",
        "SendMessage",
        {"QueueUrl": "{url}", "MessageBody": "x", "MessageAttributes": {"a": "v"}},
        "InvalidParameterValue",
    ),
    (
        "an attribute without a type",
        "SendMessage",
        {"QueueUrl": "{url}", "MessageBody": "x", "MessageAttributes": {"a": {"StringValue": "v"}}},
        "InvalidParameterValue",
    ),
    (
        "a binary attribute given as a string",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {"a": {"DataType": "Binary", "StringValue": "v"}},
        },
        "InvalidParameterValue",
    ),
    (
        "a binary attribute not in base64",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {"a": {"DataType": "Binary", "BinaryValue": "!!"}},
        },
        "InvalidParameterValue",
    ),
    (
        "an empty binary attribute",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {"a": {"DataType": "Binary", "BinaryValue": ""}},
        },
        "InvalidParameterValue",
    ),
    (
        "a string attribute given as binary",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {"a": {"DataType": "String", "BinaryValue": BLOB}},
        },
        "InvalidParameterValue",
    ),
    (
        "an empty string attribute",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {"a": {"DataType": "String", "StringValue": ""}},
        },
        "InvalidParameterValue",
    ),
    (
        "a number attribute that is infinite",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {"a": {"DataType": "Number", "StringValue": "inf"}},
        },
        "InvalidParameterValue",
    ),
    (
        "a string attribute with a control character",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageAttributes": {"a": {"DataType": "String", "StringValue": "\x01"}},
        },
        "InvalidMessageContents",
    ),
    (
        "a system attribute other than AWSTraceHeader",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageSystemAttributes": {"Other": {"DataType": "String", "StringValue": "v"}},
        },
        "InvalidParameterValue",
    ),
    (
        "an AWSTraceHeader that is not a String",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x",
            "MessageSystemAttributes": {
                "AWSTraceHeader": {"DataType": "Binary", "BinaryValue": BLOB}
            },
        },
        "InvalidParameterValue",
    ),
    (
        "a message larger than the queue allows",
        "SendMessage",
        {
            "QueueUrl": "{url}",
            "MessageBody": "x" * 262_140,
            "MessageAttributes": {"a": {"DataType": "String", "StringValue": "v" * 10}},
        },
        "InvalidParameterValue",
    ),
    # Batches.
    ("a batch without Entries", "SendMessageBatch", {"QueueUrl": "{url}"}, "MissingParameter"),
    (
        "Entries that are not objects",
        "SendMessageBatch",
        {"QueueUrl": "{url}", "Entries": [1]},
        "InvalidParameterValue",
    ),
    (
        "more than 10 entries",
        "DeleteMessageBatch",
        {"QueueUrl": "{url}", "Entries": [{"Id": str(i), "ReceiptHandle": "h"} for i in range(11)]},
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    ),
    (
        "an entry id with a space",
        "SendMessageBatch",
        {"QueueUrl": "{url}", "Entries": [{"Id": "a b", "MessageBody": "x"}]},
        "AWS.SimpleQueueService.InvalidBatchEntryId",
    ),
    (
        "a batch longer than 256 KiB",
        "SendMessageBatch",
        {
            "QueueUrl": "{url}",
            "Entries": [{"Id": str(i), "MessageBody": "x" * 100_000} for i in range(3)],
        },
        "AWS.SimpleQueueService.BatchRequestTooLong",
    ),
    # Receives and visibility.
    (
        "an unknown message attribute name",
        "ReceiveMessage",
        {"QueueUrl": "{url}", "MessageSystemAttributeNames": ["Nope"]},
        "InvalidAttributeName",
    ),
    (
        "a ReceiveRequestAttemptId too long",
        "ReceiveMessage",
        {"QueueUrl": "{url}", "ReceiveRequestAttemptId": "r" * 129},
        "InvalidParameterValue",
    ),
    (
        "a visibility without a value",
        "ChangeMessageVisibility",
        {"QueueUrl": "{url}", "ReceiptHandle": "{handle}"},
        "MissingParameter",
    ),
    (
        "a visibility over 12 hours",
        "ChangeMessageVisibility",
        {"QueueUrl": "{url}", "ReceiptHandle": "{handle}", "VisibilityTimeout": 43_201},
        "InvalidParameterValue",
    ),
    (
        "a receipt handle that is not a string",
        "DeleteMessage",
        {"QueueUrl": "{url}", "ReceiptHandle": 5},
        "ReceiptHandleIsInvalid",
    ),
    # Move tasks.
    (
        "a move task to its own source",
        "StartMessageMoveTask",
        {"SourceArn": ARN.format("errors-dlq"), "DestinationArn": ARN.format("errors-dlq")},
        "InvalidParameterValue",
    ),
    (
        "a move task's handle of a queue without one",
        "CancelMessageMoveTask",
        {"TaskHandle": base64.urlsafe_b64encode(b"1.errors-dlq").decode()},
        "ResourceNotFoundException",
    ),
    (
        "ListMessageMoveTasks' MaxResults 0",
        "ListMessageMoveTasks",
        {"SourceArn": ARN.format("errors-dlq"), "MaxResults": 0},
        "InvalidParameterValue",
    ),
    # Permissions.
    (
        "RemovePermission without a Label",
        "RemovePermission",
        {"QueueUrl": "{url}"},
        "MissingParameter",
    ),
    (
        "AddPermission without Actions",
        "AddPermission",
        {"QueueUrl": "{url}", "Label": "l", "AWSAccountIds": ["111122223333"]},
        "MissingParameter",
    ),
]


def filled(value: Any, queues: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, text in queues.items():
            value = value.replace("{" + name + "}", text)
        return value
    if isinstance(value, dict):
        return {k: filled(v, queues) for k, v in value.items()}
    if isinstance(value, list):
        return [filled(v, queues) for v in value]
    return value


@pytest.mark.parametrize(
    ("action", "params", "expected"),
    [pytest.param(action, params, expected, id=what) for what, action, params, expected in CASES],
)
def test_a_bad_request_is_refused_with_sqs_s_code(
    server: KatarProcess,
    queues: dict[str, str],
    action: str,
    params: dict[str, Any],
    expected: str,
) -> None:
    if "__raw__" in params:
        answer = httpx.post(
            server.url + "/",
            content=params["__raw__"],
            headers={
                "x-amz-target": f"AmazonSQS.{action}",
                "content-type": "application/x-amz-json-1.0",
            },
            timeout=30,
        )
    else:
        answer = sqs(server, action, filled(params, queues))
    assert answer.status_code == 400, answer.text
    assert error_code(answer) == expected, answer.text
    assert answer.json()["message"]  # says what to fix


def test_refusals_change_nothing(server: KatarProcess, queues: dict[str, str]) -> None:
    """After the refusals (those of this module that ran in this process before), the queue
    holds its one message, in flight, and its attributes as they were made."""
    shown = ok(
        server,
        "GetQueueAttributes",
        QueueUrl=queues["url"],
        AttributeNames=["All"],
    )["Attributes"]
    assert (
        shown["ApproximateNumberOfMessages"],
        shown["ApproximateNumberOfMessagesNotVisible"],
        shown["DelaySeconds"],
        shown.get("SqsManagedSseEnabled"),
    ) == ("0", "1", "0", "false")
    assert "RedriveAllowPolicy" not in shown
    assert ok(server, "ListQueueTags", QueueUrl=queues["url"]) == {}
    assert ok(server, "ListQueues", QueueNamePrefix="bad") == {}


def test_a_request_that_names_no_valid_action(server: KatarProcess) -> None:
    """Another service's target, a form without Action, and a form that is not UTF-8."""
    other = httpx.post(
        server.url + "/",
        content=b"{}",
        headers={"x-amz-target": "AmazonSNS.Publish", "content-type": "application/x-amz-json-1.0"},
        timeout=30,
    )
    assert (other.status_code, error_code(other)) == (400, "InvalidAction")
    for form, expected in (
        (b"Version=2012-11-05", "MissingAction"),
        (b"Action=ListQueues&QueueNamePrefix=\xff", "InvalidParameterValue"),
    ):
        answer = httpx.post(
            server.url + "/",
            content=form,
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        assert answer.status_code == 400, form
        assert f"<Code>{expected}</Code>" in answer.text, form
