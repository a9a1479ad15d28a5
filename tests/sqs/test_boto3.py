"""The SQS API with the real AWS SDK for Python (boto3), unmodified, against ``katar serve``
on every store (memory, SQLite, PostgreSQL): queues, messages, visibility, batches, attributes, errors, and
the same queue used natively and over SQS."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import httpx
import pytest

from katar.sqs.digest import md5_of_attributes
from tests.acceptance.conftest import KatarProcess
from tests.conftest import store_url


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KatarProcess]:
    """``katar serve`` on a store of this test's own (PostgreSQL skips without one)."""
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'katar.db'}"
    else:
        url = store_url("postgres", tmp_path)
    process = KatarProcess(tmp_path, "--db", url).start()
    yield process
    process.kill()


def client(url: str, key: str = "AKIDEXAMPLE000000", secret: str = "any") -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def test_queues(server: KatarProcess) -> None:
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "10"})["QueueUrl"]
    assert url == f"{server.url}/000000000000/jobs"
    # The same attributes again: the same queue; others: QueueAlreadyExists.
    assert (
        sqs.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "10"})["QueueUrl"]
        == url
    )
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        sqs.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "11"})
    assert code(caught.value) == "QueueAlreadyExists"
    assert sqs.get_queue_url(QueueName="jobs")["QueueUrl"] == url
    with pytest.raises(sqs.exceptions.QueueDoesNotExist) as missing:
        sqs.get_queue_url(QueueName="nope")
    assert code(missing.value) == "AWS.SimpleQueueService.NonExistentQueue"
    for name in ("a1", "a2", "a3"):
        sqs.create_queue(QueueName=name)
    page = sqs.list_queues(QueueNamePrefix="a", MaxResults=2)
    assert [u.rpartition("/")[2] for u in page["QueueUrls"]] == ["a1", "a2"]
    rest = sqs.list_queues(QueueNamePrefix="a", MaxResults=2, NextToken=page["NextToken"])
    assert [u.rpartition("/")[2] for u in rest["QueueUrls"]] == ["a3"]
    assert "NextToken" not in rest
    sqs.set_queue_attributes(
        QueueUrl=url, Attributes={"DelaySeconds": "0", "VisibilityTimeout": "20"}
    )
    shown = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert shown["VisibilityTimeout"] == "20"
    assert shown["QueueArn"].endswith(":000000000000:jobs")
    with pytest.raises(botocore.exceptions.ClientError) as bad:
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Nope"])
    assert code(bad.value) == "InvalidAttributeName"
    with pytest.raises(botocore.exceptions.ClientError) as bad:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "50000"})
    assert code(bad.value) == "InvalidAttributeValue"
    sqs.tag_queue(QueueUrl=url, Tags={"team": "a", "env": "test"})
    sqs.untag_queue(QueueUrl=url, TagKeys=["env"])
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "a"}
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.send_message(QueueUrl=url, MessageBody="x")


def test_messages(server: KatarProcess) -> None:
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    sent = sqs.send_message(QueueUrl=url, MessageBody="héllo")
    assert sent["MD5OfMessageBody"] == hashlib.md5("héllo".encode()).hexdigest()
    batch = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "one"},
            {"Id": "b", "MessageBody": "two"},
            {"Id": "late", "MessageBody": "later", "DelaySeconds": 600},
            {"Id": "bad", "MessageBody": "\x00"},
        ],
    )
    assert [e["Id"] for e in batch["Successful"]] == ["a", "b", "late"]
    assert [(e["Id"], e["Code"], e["SenderFault"]) for e in batch["Failed"]] == [
        ("bad", "InvalidMessageContents", True)
    ]
    counts = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    assert counts == {
        "ApproximateNumberOfMessages": "3",
        "ApproximateNumberOfMessagesNotVisible": "0",
        "ApproximateNumberOfMessagesDelayed": "1",
    }
    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], VisibilityTimeout=300
    )["Messages"]
    assert [m["Body"] for m in got] == ["héllo", "one", "two"]
    assert got[0]["MessageId"] == sent["MessageId"]
    assert got[0]["Attributes"]["ApproximateReceiveCount"] == "1"
    assert int(got[0]["Attributes"]["SentTimestamp"]) > 0
    # Nothing else visible: the three are leased for 300 s, the fourth delayed.
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    # Visibility 0: back at once, received again with its count up (not a failure).
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    again = sqs.receive_message(
        QueueUrl=url, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert [(m["Body"], m["Attributes"]) for m in again] == [
        ("héllo", {"ApproximateReceiveCount": "2"})
    ]
    # The first handle is stale now: deleting with it succeeds and changes nothing.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    with pytest.raises(botocore.exceptions.ClientError) as stale:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=10
        )
    assert code(stale.value) == "InvalidParameterValue"
    changed = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "x", "ReceiptHandle": got[1]["ReceiptHandle"], "VisibilityTimeout": 100},
            {"Id": "y", "ReceiptHandle": "forged", "VisibilityTimeout": 100},
        ],
    )
    assert [e["Id"] for e in changed["Successful"]] == ["x"]
    assert [(e["Id"], e["Code"]) for e in changed["Failed"]] == [("y", "ReceiptHandleIsInvalid")]
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "0", "ReceiptHandle": again[0]["ReceiptHandle"]},
            {"Id": "1", "ReceiptHandle": got[1]["ReceiptHandle"]},
            {"Id": "2", "ReceiptHandle": got[2]["ReceiptHandle"]},
        ],
    )
    assert sorted(e["Id"] for e in deleted["Successful"]) == ["0", "1", "2"]
    with pytest.raises(botocore.exceptions.ClientError) as invalid:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
    assert code(invalid.value) == "ReceiptHandleIsInvalid"
    # A handle of another queue is not one of this queue's.
    other = sqs.create_queue(QueueName="other")["QueueUrl"]
    with pytest.raises(botocore.exceptions.ClientError) as foreign:
        sqs.delete_message(QueueUrl=other, ReceiptHandle=again[0]["ReceiptHandle"])
    assert code(foreign.value) == "ReceiptHandleIsInvalid"
    with pytest.raises(botocore.exceptions.ClientError) as dupes:
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "1"}, {"Id": "a", "MessageBody": "2"}]
        )
    assert code(dupes.value) == "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    with pytest.raises(botocore.exceptions.ClientError) as large:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 262_145)
    assert code(large.value) == "InvalidParameterValue"
    sqs.purge_queue(QueueUrl=url)
    left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert left["ApproximateNumberOfMessages"] == "0"
    assert left["ApproximateNumberOfMessagesDelayed"] == "0"


def test_native_and_sqs_on_one_queue(server: KatarProcess) -> None:
    sqs = client(server.url)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        http.put("/v1/queue/mixed", json={}).raise_for_status()
        http.post("/v1/queue/mixed/tasks", json={"data": {"n": 1}}).raise_for_status()
        http.post("/v1/queue/mixed/tasks", json={"data": "plain text"}).raise_for_status()
        url = sqs.get_queue_url(QueueName="mixed")["QueueUrl"]
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        # A native task's data: its compact JSON, or the string itself.
        assert [m["Body"] for m in got] == ['{"n":1}', "plain text"]
        for message in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        done = http.get("/v1/queue/mixed/tasks", params={"status": "done"}).json()
        assert done["tasks"] == [] or all(t["status"] == "done" for t in done["tasks"])
        sent = sqs.send_message(QueueUrl=url, MessageBody='{"from": "sqs"}')
        polled = http.post("/v1/queue/mixed", json={}).json()["tasks"]
        assert [(t["_id"], t["data"]) for t in polled] == [(sent["MessageId"], '{"from": "sqs"}')]


def test_message_attributes(server: KatarProcess) -> None:
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="attrs")["QueueUrl"]
    attributes = {
        "SellerName": {"DataType": "String", "StringValue": "Example Store"},
        "price.cents": {"DataType": "Number", "StringValue": "1250"},
        "price.raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    }
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody="order",
        MessageAttributes=attributes,
        MessageSystemAttributes={
            "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3fe"}
        },
    )
    assert sent["MD5OfMessageAttributes"] == md5_of_attributes(
        {
            "SellerName": {"DataType": "String", "StringValue": "Example Store"},
            "price.cents": {"DataType": "Number", "StringValue": "1250"},
            "price.raw": {"DataType": "Binary", "BinaryValue": "AAH/"},
        }
    )
    assert "MD5OfMessageSystemAttributes" in sent
    got = sqs.receive_message(
        QueueUrl=url,
        MessageAttributeNames=["price.*"],
        MessageSystemAttributeNames=["AWSTraceHeader"],
        VisibilityTimeout=0,
    )["Messages"][0]
    assert got["MessageAttributes"] == {
        "price.cents": {"DataType": "Number", "StringValue": "1250"},
        "price.raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    }
    assert got["Attributes"] == {"AWSTraceHeader": "Root=1-5759e988-bd862e3fe"}
    every = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"][0]
    assert every["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    only = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["SellerName"])
    assert "Messages" not in only  # leased by the receive before
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=every["ReceiptHandle"], VisibilityTimeout=0
    )
    seller = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["SellerName"])
    # The digest of Amazon's own example (the SQS developer guide's SellerName).
    assert seller["Messages"][0]["MD5OfMessageAttributes"] == "cd28f3b68aeee4b2eac9c66f2f694b58"
    for bad in (
        {"AWS.reserved": {"DataType": "String", "StringValue": "x"}},
        {"n": {"DataType": "Number", "StringValue": "ten"}},
        {"s": {"DataType": "Blob", "StringValue": "x"}},
    ):
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            sqs.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=bad)
        assert code(refused.value) == "InvalidParameterValue", bad


def test_fifo_queues(server: KatarProcess) -> None:
    sqs = client(server.url)
    with pytest.raises(botocore.exceptions.ClientError) as unnamed:
        sqs.create_queue(QueueName="orders", Attributes={"FifoQueue": "true"})
    assert code(unnamed.value) == "InvalidParameterValue"
    url = sqs.create_queue(
        QueueName="orders.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    shown = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (shown["FifoQueue"], shown["DeduplicationScope"]) == ("true", "queue")
    first = sqs.send_message(QueueUrl=url, MessageBody="a1", MessageGroupId="a")
    # The same body within 5 minutes: deduplicated (content-based), the first one's answer.
    again = sqs.send_message(QueueUrl=url, MessageBody="a1", MessageGroupId="a")
    assert again["MessageId"] == first["MessageId"]
    assert again["SequenceNumber"] == first["SequenceNumber"]
    batch = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "1", "MessageBody": "a2", "MessageGroupId": "a"},
            {"Id": "2", "MessageBody": "b1", "MessageGroupId": "b", "MessageDeduplicationId": "x"},
            {"Id": "3", "MessageBody": "b2", "MessageGroupId": "b", "MessageDeduplicationId": "x"},
            {"Id": "4", "MessageBody": "c1"},
        ],
    )
    assert [e["Id"] for e in batch["Successful"]] == ["1", "2", "3"]
    ok = batch["Successful"]
    assert ok[2]["MessageId"] == ok[1]["MessageId"]  # the same deduplication id
    assert int(ok[0]["SequenceNumber"]) > int(first["SequenceNumber"])
    assert [(e["Id"], e["Code"]) for e in batch["Failed"]] == [("4", "MissingParameter")]
    # One message of a group in flight at a time, in order.
    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], VisibilityTimeout=60
    )["Messages"]
    assert sorted(m["Body"] for m in got) == ["a1", "b1"]
    by_body = {m["Body"]: m for m in got}
    assert by_body["b1"]["Attributes"]["MessageDeduplicationId"] == "x"
    assert by_body["a1"]["Attributes"]["MessageGroupId"] == "a"
    assert by_body["a1"]["Attributes"]["SequenceNumber"] == first["SequenceNumber"]
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=by_body["a1"]["ReceiptHandle"])
    after = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in after] == ["a2"]
    with pytest.raises(botocore.exceptions.ClientError) as delayed:
        sqs.send_message(QueueUrl=url, MessageBody="z", MessageGroupId="z", DelaySeconds=5)
    assert code(delayed.value) == "InvalidParameterValue"
    plain = sqs.create_queue(QueueName="plain")["QueueUrl"]
    with pytest.raises(botocore.exceptions.ClientError) as standard:
        sqs.send_message(QueueUrl=plain, MessageBody="x", MessageDeduplicationId="d")
    assert code(standard.value) == "InvalidParameterValue"


def test_attributes_native_and_sqs(server: KatarProcess) -> None:
    """A task enqueued natively is received over SQS with its body and attributes; a message
    sent over SQS with attributes shows them in its native record, listings and poll."""
    sqs = client(server.url)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with httpx.Client(base_url=server.url, timeout=30) as http:
        http.put("/v1/queue/both", json={"persistent": True}).raise_for_status()
        native = http.post(
            "/v1/queue/both/tasks",
            json={"data": {"order": 7}},
            headers={"traceparent": traceparent},
        ).json()["tasks"][0]
        assert native["attributes"] is None
        url = sqs.get_queue_url(QueueName="both")["QueueUrl"]
        (got,) = sqs.receive_message(
            QueueUrl=url, MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"]
        )["Messages"]
        assert (got["MessageId"], got["Body"]) == (native["_id"], '{"order":7}')
        assert got["MD5OfBody"] == hashlib.md5(b'{"order":7}').hexdigest()
        # Its trace context is its message attribute, as OpenTelemetry's instrumentations
        # read it; its system attributes are the task's.
        assert got["MessageAttributes"] == {
            "traceparent": {"DataType": "String", "StringValue": traceparent}
        }
        assert got["MD5OfMessageAttributes"] == md5_of_attributes(got["MessageAttributes"])
        assert got["Attributes"]["ApproximateReceiveCount"] == "1"
        assert got["Attributes"]["AWSTraceHeader"] == (
            "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
        )
        sqs.delete_message(QueueUrl=url, ReceiptHandle=got["ReceiptHandle"])
        assert http.get(f"/v1/queue/both/tasks/{native['_id']}").json()["status"] == "done"

        sent = sqs.send_message(
            QueueUrl=url,
            MessageBody="from sqs",
            MessageAttributes={
                "lang": {"DataType": "String", "StringValue": "en"},
                "cents": {"DataType": "Number.int", "StringValue": "1250"},
                "raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
            },
            MessageSystemAttributes={
                "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3f"}
            },
        )
        kept = {
            "MessageAttributes": {
                "lang": {"DataType": "String", "StringValue": "en"},
                "cents": {"DataType": "Number.int", "StringValue": "1250"},
                "raw": {"DataType": "Binary", "BinaryValue": "AAH/"},
            },
            "MessageSystemAttributes": {
                "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3f"}
            },
        }
        record = http.get(f"/v1/queue/both/tasks/{sent['MessageId']}").json()
        assert (record["data"], record["attributes"]) == ("from sqs", kept)
        listed = http.get("/v1/queue/both/tasks", params={"status": "queued"}).json()["tasks"]
        assert [(t["_id"], t["attributes"]) for t in listed] == [(sent["MessageId"], kept)]
        polled = http.post("/v1/queue/both", json={}).json()["tasks"]
        assert [(t["_id"], t["data"], t["attributes"]) for t in polled] == [
            (sent["MessageId"], "from sqs", kept)
        ]
        # A FIFO queue's message keeps its deduplication id too.
        fifo = sqs.create_queue(
            QueueName="both.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
        )["QueueUrl"]
        ordered = sqs.send_message(QueueUrl=fifo, MessageBody="first", MessageGroupId="g")
        record = http.get(f"/v1/queue/both.fifo/tasks/{ordered['MessageId']}").json()
        assert record["attributes"] == {
            "MessageDeduplicationId": hashlib.sha256(b"first").hexdigest()
        }


def test_native_attributes_received_over_sqs(server: KatarProcess) -> None:
    """A task enqueued natively with attributes is received over SQS with them, and with
    the MD5OfMessageAttributes a SendMessage of the same attributes answers."""
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="tagged")["QueueUrl"]
    given = {
        "lang": {"DataType": "String", "StringValue": "en"},
        "cents": {"DataType": "Number.int", "StringValue": "1250"},
        "raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    }
    sent = sqs.send_message(QueueUrl=url, MessageBody="over sqs", MessageAttributes=given)
    xray = "Root=1-5759e988-bd862e3f1be46a994272793a;Parent=53995c3f42cd8ad8;Sampled=1"
    native = {
        "MessageAttributes": {
            "lang": {"DataType": "String", "StringValue": "en"},
            "cents": {"DataType": "Number.int", "StringValue": "1250"},
            "raw": {"DataType": "Binary", "BinaryValue": "AAH/"},
        },
        "MessageSystemAttributes": {"AWSTraceHeader": {"DataType": "String", "StringValue": xray}},
    }
    with httpx.Client(base_url=server.url, timeout=30) as http:
        created = http.post("/v1/queue/tagged/tasks", json={"data": "native", "attributes": native})
        assert created.status_code == 201, created.text
        bad = http.post(
            "/v1/queue/tagged/tasks",
            json={"data": 1, "attributes": {"MessageAttributes": {"AWS.x": given["lang"]}}},
        )
        assert bad.status_code == 422
    got = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["AWSTraceHeader"],
    )["Messages"]
    assert [m["Body"] for m in got] == ["over sqs", "native"]
    for message in got:
        assert message["MessageAttributes"] == given
        assert message["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
        assert message["MD5OfBody"] == hashlib.md5(message["Body"].encode()).hexdigest()
    assert got[1]["Attributes"] == {"AWSTraceHeader": xray}


def test_permissions(server: KatarProcess) -> None:
    """AddPermission and RemovePermission write the queue's Policy as SQS does (Katar keeps
    it, and does not enforce it)."""
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="shared")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sqs.add_permission(
        QueueUrl=url, Label="AliceSend", AWSAccountIds=["111122223333"], Actions=["SendMessage"]
    )
    sqs.add_permission(
        QueueUrl=url,
        Label="Workers",
        AWSAccountIds=["111122223333", "444455556666"],
        Actions=["ReceiveMessage", "DeleteMessage"],
    )

    def policy() -> Any:
        shown = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
        text = shown.get("Attributes", {}).get("Policy")
        return None if text is None else json.loads(text)

    assert policy() == {
        "Version": "2012-10-17",
        "Id": f"{arn}/SQSDefaultPolicy",
        "Statement": [
            {
                "Sid": "AliceSend",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                "Action": "SQS:SendMessage",
                "Resource": arn,
            },
            {
                "Sid": "Workers",
                "Effect": "Allow",
                "Principal": {
                    "AWS": ["arn:aws:iam::111122223333:root", "arn:aws:iam::444455556666:root"]
                },
                "Action": ["SQS:ReceiveMessage", "SQS:DeleteMessage"],
                "Resource": arn,
            },
        ],
    }
    refusals: list[tuple[dict[str, Any], str, str]] = [
        ({"Label": "AliceSend"}, "InvalidParameterValue", "Already exists"),
        ({"Label": "bad label!"}, "InvalidParameterValue", "parameter Label"),
        ({"Label": "x" * 81}, "InvalidParameterValue", "parameter Label"),
        ({"Actions": ["CreateQueue"]}, "InvalidParameterValue", "Only the queue owner"),
        ({"Actions": ["Juggle"]}, "InvalidParameterValue", "SQS:Juggle"),
        ({"Actions": []}, "MissingParameter", "Actions"),
        ({"Actions": ["SendMessage"] * 8}, "OverLimit", "8 Actions were found"),
        ({"AWSAccountIds": []}, "InvalidParameterValue", "PrincipalId"),
        ({"AWSAccountIds": ["alice"]}, "InvalidParameterValue", "PrincipalId"),
    ]
    for change, expected, said in refusals:
        call = {
            "QueueUrl": url,
            "Label": "Other",
            "AWSAccountIds": ["111122223333"],
            "Actions": ["*"],
            **change,
        }
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            sqs.add_permission(**call)
        assert (code(refused.value), said in refused.value.response["Error"]["Message"]) == (
            expected,
            True,
        ), change
    # 20 statements at most in a queue's policy.
    for n in range(18):
        sqs.add_permission(
            QueueUrl=url, Label=f"p{n}", AWSAccountIds=["111122223333"], Actions=["*"]
        )
    with pytest.raises(botocore.exceptions.ClientError) as full:
        sqs.add_permission(QueueUrl=url, Label="p18", AWSAccountIds=["111122223333"], Actions=["*"])
    assert code(full.value) == "OverLimit"
    for n in range(18):
        sqs.remove_permission(QueueUrl=url, Label=f"p{n}")
    sqs.remove_permission(QueueUrl=url, Label="AliceSend")
    assert [s["Sid"] for s in policy()["Statement"]] == ["Workers"]
    with pytest.raises(botocore.exceptions.ClientError) as unknown:
        sqs.remove_permission(QueueUrl=url, Label="AliceSend")
    assert code(unknown.value) == "InvalidParameterValue"
    assert "can't find label" in unknown.value.response["Error"]["Message"]
    sqs.remove_permission(QueueUrl=url, Label="Workers")
    assert policy() is None  # the last statement gone: no policy
    # A policy set as a whole is kept as given, and AddPermission adds to it.
    own = {"Version": "2012-10-17", "Statement": [{"Sid": "Mine", "Effect": "Deny"}]}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(own)})
    sqs.add_permission(QueueUrl=url, Label="Mine2", AWSAccountIds=["111122223333"], Actions=["*"])
    assert [s["Sid"] for s in policy()["Statement"]] == ["Mine", "Mine2"]
    with pytest.raises(botocore.exceptions.ClientError) as taken:
        sqs.add_permission(
            QueueUrl=url, Label="Mine", AWSAccountIds=["111122223333"], Actions=["*"]
        )
    assert code(taken.value) == "InvalidParameterValue"
    for bad in ("not json", "[1]", '{"Statement": 3}'):
        with pytest.raises(botocore.exceptions.ClientError) as refused_policy:
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": bad})
        assert code(refused_policy.value) == "InvalidAttributeValue", bad
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": ""})
    assert policy() is None
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.remove_permission(QueueUrl=url + "-nope", Label="Mine")
    # A Policy kept unchecked (written natively, or by an older version): said, not lost.
    with httpx.Client(base_url=server.url, timeout=30) as http:
        http.patch(
            "/v1/queue/shared", json={"configuration": {"sqs": {"Policy": "not json"}}}
        ).raise_for_status()
    with pytest.raises(botocore.exceptions.ClientError) as unreadable:
        sqs.add_permission(QueueUrl=url, Label="New", AWSAccountIds=["111122223333"], Actions=["*"])
    assert code(unreadable.value) == "InvalidParameterValue"
    shown = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]
    assert shown == {"Policy": "not json"}
