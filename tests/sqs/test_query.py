"""The SQS query protocol (``Action=...`` forms, XML answers), as older SDKs send it: to the
endpoint, or to a queue's URL."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import KatarProcess

NS = "{http://queue.amazonaws.com/doc/2012-11-05/}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KatarProcess]:
    process = KatarProcess(tmp_path, "--db", f"sqlite:///{tmp_path / 'katar.db'}").start()
    yield process
    process.kill()


def call(url: str, **params: str) -> tuple[int, ET.Element]:
    answer = httpx.post(url, data={"Version": "2012-11-05", **params}, timeout=30)
    assert answer.headers["content-type"] == "text/xml"
    return answer.status_code, ET.fromstring(answer.content)


def texts(root: ET.Element, path: str) -> list[str]:
    return [e.text or "" for e in root.iter(NS + path)]


def test_the_query_protocol(server: KatarProcess) -> None:
    status, made = call(
        server.url + "/",
        Action="CreateQueue",
        QueueName="old",
        **{"Attribute.1.Name": "VisibilityTimeout", "Attribute.1.Value": "40"},
    )
    assert status == 200
    (url,) = texts(made, "QueueUrl")
    assert url == f"{server.url}/000000000000/old"
    assert texts(made, "RequestId")
    # Sent to the queue's URL, as the query protocol does.
    status, sent = call(
        url,
        Action="SendMessage",
        MessageBody="hello",
        **{
            "MessageAttribute.1.Name": "kind",
            "MessageAttribute.1.Value.DataType": "String",
            "MessageAttribute.1.Value.StringValue": "greeting",
        },
    )
    assert status == 200
    assert texts(sent, "MD5OfMessageBody") == [hashlib.md5(b"hello").hexdigest()]
    status, batch = call(
        url,
        Action="SendMessageBatch",
        **{
            "SendMessageBatchRequestEntry.1.Id": "a",
            "SendMessageBatchRequestEntry.1.MessageBody": "one",
            "SendMessageBatchRequestEntry.2.Id": "b",
            "SendMessageBatchRequestEntry.2.MessageBody": "\x00",
        },
    )
    assert texts(batch, "Id") == ["a", "b"]
    assert [e.tag for e in batch.iter() if e.tag.endswith("Entry")] == [
        NS + "SendMessageBatchResultEntry",
        NS + "BatchResultErrorEntry",
    ]
    status, got = call(
        url,
        Action="ReceiveMessage",
        MaxNumberOfMessages="10",
        **{"AttributeName.1": "All", "MessageAttributeName.1": "All"},
    )
    assert texts(got, "Body") == ["hello", "one"]
    assert "ApproximateReceiveCount" in texts(got, "Name")
    assert "greeting" in texts(got, "StringValue")
    handles = texts(got, "ReceiptHandle")
    status, deleted = call(
        server.url + "/",
        Action="DeleteMessageBatch",
        QueueUrl=url,
        **{
            f"DeleteMessageBatchRequestEntry.{n}.{k}": v
            for n, handle in enumerate(handles, 1)
            for k, v in (("Id", f"e{n}"), ("ReceiptHandle", handle))
        },
    )
    assert texts(deleted, "Id") == ["e1", "e2"]
    status, attributes = call(url, Action="GetQueueAttributes", **{"AttributeName.1": "All"})
    shown = dict(zip(texts(attributes, "Name"), texts(attributes, "Value"), strict=True))
    assert shown["VisibilityTimeout"] == "40"
    assert shown["ApproximateNumberOfMessages"] == "0"
    status, error = call(server.url + "/", Action="GetQueueUrl", QueueName="missing")
    assert status == 400
    assert texts(error, "Code") == ["AWS.SimpleQueueService.NonExistentQueue"]
    assert texts(error, "Type") == ["Sender"]
    status, error = call(server.url + "/", Action="Nope")
    assert (status, texts(error, "Code")) == (400, ["InvalidAction"])


def test_dead_letters_over_the_query_protocol(server: KatarProcess) -> None:
    base = server.url + "/"
    call(base, Action="CreateQueue", QueueName="dead")
    policy = '{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:dead","maxReceiveCount":1}'
    status, _ = call(
        base,
        Action="CreateQueue",
        QueueName="src",
        **{"Attribute.1.Name": "RedrivePolicy", "Attribute.1.Value": policy},
    )
    assert status == 200
    dead = f"{server.url}/000000000000/dead"
    status, sources = call(dead, Action="ListDeadLetterSourceQueues")
    assert status == 200
    assert texts(sources, "QueueUrl") == [f"{server.url}/000000000000/src"]
    arn = "arn:aws:sqs:us-east-1:000000000000:dead"
    status, started = call(
        base, Action="StartMessageMoveTask", SourceArn=arn, MaxNumberOfMessagesPerSecond="5"
    )
    assert status == 200
    assert texts(started, "TaskHandle")
    status, listed = call(base, Action="ListMessageMoveTasks", SourceArn=arn)
    assert status == 200
    (entry,) = list(listed.iter(NS + "ListMessageMoveTasksResultEntry"))
    assert texts(entry, "SourceArn") == [arn]
    assert texts(entry, "MaxNumberOfMessagesPerSecond") == ["5"]
    status, missing = call(
        base, Action="ListMessageMoveTasks", SourceArn="arn:aws:sqs:us-east-1:000000000000:no"
    )
    assert status == 400
    assert texts(missing, "Code") == ["ResourceNotFoundException"]


def test_permissions_over_the_query_protocol(server: KatarProcess) -> None:
    """AddPermission's lists as the query protocol flattens them: AWSAccountId.n, ActionName.n."""
    status, made = call(server.url + "/", Action="CreateQueue", QueueName="shared")
    (url,) = texts(made, "QueueUrl")
    status, _ = call(
        url,
        Action="AddPermission",
        Label="Both",
        **{
            "AWSAccountId.1": "111122223333",
            "AWSAccountId.2": "444455556666",
            "ActionName.1": "SendMessage",
            "ActionName.2": "ReceiveMessage",
        },
    )
    assert status == 200
    status, shown = call(url, Action="GetQueueAttributes", **{"AttributeName.1": "Policy"})
    (policy,) = [json.loads(v) for v in texts(shown, "Value")]
    (statement,) = policy["Statement"]
    assert statement["Principal"]["AWS"] == [
        "arn:aws:iam::111122223333:root",
        "arn:aws:iam::444455556666:root",
    ]
    assert statement["Action"] == ["SQS:SendMessage", "SQS:ReceiveMessage"]
    status, refused = call(url, Action="RemovePermission", Label="Nope")
    assert status == 400
    assert texts(refused, "Code") == ["InvalidParameterValue"]
    status, _ = call(url, Action="RemovePermission", Label="Both")
    assert status == 200
