"""Dead-letter queues over the SQS API, with boto3 against ``katar serve`` on every store:
RedrivePolicy and RedriveAllowPolicy, ListDeadLetterSourceQueues, and the message move
tasks (Start/List/CancelMessageMoveTask) over the engine's redrive."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.acceptance.conftest import KatarProcess
from tests.conftest import store_url
from tests.sqs.test_boto3 import client, code, server

__all__ = ["server"]  # the fixture, imported for these tests

ARN = "arn:aws:sqs:us-east-1:000000000000:{}"


def policy(target: str, count: int) -> str:
    return json.dumps({"deadLetterTargetArn": ARN.format(target), "maxReceiveCount": count})


def attributes(sqs: Any, url: str) -> dict[str, str]:
    shown: dict[str, str] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
        "Attributes"
    ]
    return shown


def wait_for(check: Any, seconds: float = 20.0) -> Any:
    """Poll ``check`` until it answers something true (a move task runs in the
    background); the answer."""
    deadline = time.monotonic() + seconds
    while True:
        answer = check()
        if answer or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_redrive_policy_moves_a_message_received_too_often(server: KatarProcess) -> None:
    sqs = client(server.url)
    dlq = sqs.create_queue(QueueName="jobs-dlq")["QueueUrl"]
    url = sqs.create_queue(
        QueueName="jobs",
        Attributes={"RedrivePolicy": policy("jobs-dlq", 2), "VisibilityTimeout": "30"},
    )["QueueUrl"]
    # Shown back as SQS shows it: compact JSON, the count a number.
    assert json.loads(attributes(sqs, url)["RedrivePolicy"]) == {
        "deadLetterTargetArn": ARN.format("jobs-dlq"),
        "maxReceiveCount": 2,
    }
    assert attributes(sqs, url)["RedrivePolicy"] == (
        '{"deadLetterTargetArn":"' + ARN.format("jobs-dlq") + '","maxReceiveCount":2}'
    )
    # The same policy again on CreateQueue: the same queue.
    assert (
        sqs.create_queue(QueueName="jobs", Attributes={"RedrivePolicy": policy("jobs-dlq", 2)})[
            "QueueUrl"
        ]
        == url
    )
    with pytest.raises(botocore.exceptions.ClientError) as other:
        sqs.create_queue(QueueName="jobs", Attributes={"RedrivePolicy": policy("jobs-dlq", 3)})
    assert code(other.value) == "QueueAlreadyExists"
    sqs.send_message(
        QueueUrl=url,
        MessageBody="poison",
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "bad"}},
    )
    # Received twice, given back each time (visibility 0): the second give-back spends its
    # receives, and it moves rather than be received a third time.
    for count in (1, 2):
        got = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"])
        (message,) = got["Messages"]
        assert message["Attributes"]["ApproximateReceiveCount"] == str(count)
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    moved = sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in moved] == ["poison"]
    assert moved[0]["MessageAttributes"]["kind"]["StringValue"] == "bad"
    # A visibility that runs out counts as a receive too.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy("jobs-dlq", 1)})
    sqs.send_message(QueueUrl=url, MessageBody="slow")
    assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=1)["Messages"][0]["Body"] == "slow"
    assert wait_for(lambda: attributes(sqs, dlq)["ApproximateNumberOfMessages"] == "1")
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    # Removed with an empty policy: redelivered without limit again.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": ""})
    assert "RedrivePolicy" not in attributes(sqs, url)


def test_redrive_policy_errors(server: KatarProcess) -> None:
    sqs = client(server.url)
    url = sqs.create_queue(QueueName="src")["QueueUrl"]
    sqs.create_queue(QueueName="dlq.fifo", Attributes={"FifoQueue": "true"})
    bad = [
        "not json",
        json.dumps({"deadLetterTargetArn": ARN.format("nope"), "maxReceiveCount": 2}),
        json.dumps({"deadLetterTargetArn": ARN.format("src"), "maxReceiveCount": 2}),
        json.dumps({"deadLetterTargetArn": ARN.format("dlq.fifo"), "maxReceiveCount": 2}),
        json.dumps({"deadLetterTargetArn": "dlq", "maxReceiveCount": 2}),
        json.dumps({"deadLetterTargetArn": ARN.format("src"), "maxReceiveCount": 0}),
        json.dumps({"deadLetterTargetArn": ARN.format("src"), "maxReceiveCount": 1001}),
        json.dumps({"deadLetterTargetArn": ARN.format("src")}),
    ]
    for value in bad:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": value})
        assert code(caught.value) == "InvalidParameterValue", value
        assert "RedrivePolicy" in str(caught.value)
    assert "RedrivePolicy" not in attributes(sqs, url)
    # maxReceiveCount as a string, as the console writes it, is accepted.
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": ARN.format("dlq"), "maxReceiveCount": "5"}
            )
        },
    )
    assert json.loads(attributes(sqs, url)["RedrivePolicy"])["maxReceiveCount"] == 5
    # RedriveAllowPolicy: kept, shown, and enforced on the queues that name this one.
    for value in (
        "{}",
        json.dumps({"redrivePermission": "byQueue"}),
        json.dumps({"redrivePermission": "denyAll", "sourceQueueArns": [ARN.format("src")]}),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            sqs.set_queue_attributes(QueueUrl=dlq, Attributes={"RedriveAllowPolicy": value})
        assert code(caught.value) == "InvalidParameterValue", value
    allow = json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [ARN.format("src")]})
    sqs.set_queue_attributes(QueueUrl=dlq, Attributes={"RedriveAllowPolicy": allow})
    assert json.loads(attributes(sqs, dlq)["RedriveAllowPolicy"]) == json.loads(allow)
    other = sqs.create_queue(QueueName="other")["QueueUrl"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        sqs.set_queue_attributes(QueueUrl=other, Attributes={"RedrivePolicy": policy("dlq", 3)})
    assert code(refused.value) == "InvalidParameterValue"
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy("dlq", 3)})
    sqs.set_queue_attributes(
        QueueUrl=dlq, Attributes={"RedriveAllowPolicy": '{"redrivePermission":"denyAll"}'}
    )
    with pytest.raises(botocore.exceptions.ClientError):
        sqs.set_queue_attributes(QueueUrl=other, Attributes={"RedrivePolicy": policy("dlq", 3)})


def test_list_dead_letter_source_queues(server: KatarProcess) -> None:
    sqs = client(server.url)
    dlq = sqs.create_queue(QueueName="dead")["QueueUrl"]
    assert sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == []
    for name in ("s1", "s2", "s3"):
        sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy("dead", 4)})
    every = sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"]
    assert [u.rpartition("/")[2] for u in every] == ["s1", "s2", "s3"]
    page = sqs.list_dead_letter_source_queues(QueueUrl=dlq, MaxResults=2)
    assert [u.rpartition("/")[2] for u in page["queueUrls"]] == ["s1", "s2"]
    rest = sqs.list_dead_letter_source_queues(
        QueueUrl=dlq, MaxResults=2, NextToken=page["NextToken"]
    )
    assert [u.rpartition("/")[2] for u in rest["queueUrls"]] == ["s3"]
    assert "NextToken" not in rest
    # boto3's paginator follows NextToken.
    paged = sqs.get_paginator("list_dead_letter_source_queues").paginate(
        QueueUrl=dlq, PaginationConfig={"PageSize": 1}
    )
    assert [u.rpartition("/")[2] for p in paged for u in p["queueUrls"]] == ["s1", "s2", "s3"]
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.list_dead_letter_source_queues(QueueUrl=f"{server.url}/000000000000/nope")


def dead_letters(sqs: Any, url: str, dlq: str, count: int) -> None:
    """Send ``count`` messages to ``url`` (maxReceiveCount 1) and give each back once, so
    that they move to ``dlq``."""
    for first in range(0, count, 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": f"m{i}"} for i in range(first, min(first + 10, count))
            ],
        )
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            break
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(got)
            ],
        )
    assert int(attributes(sqs, dlq)["ApproximateNumberOfMessages"]) >= count


def test_message_move_tasks(server: KatarProcess) -> None:
    sqs = client(server.url)
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    url = sqs.create_queue(QueueName="work", Attributes={"RedrivePolicy": policy("dlq", 1)})[
        "QueueUrl"
    ]
    elsewhere = sqs.create_queue(QueueName="elsewhere")["QueueUrl"]
    dead_letters(sqs, url, dlq, 3)
    source = attributes(sqs, dlq)["QueueArn"]
    assert sqs.list_message_move_tasks(SourceArn=source)["Results"] == []
    # Back where they came from (no DestinationArn), as fast as the store takes them.
    handle = sqs.start_message_move_task(SourceArn=source)["TaskHandle"]
    assert handle
    done = wait_for(
        lambda: sqs.list_message_move_tasks(SourceArn=source)["Results"][0]["Status"] == "COMPLETED"
    )
    assert done
    (entry,) = sqs.list_message_move_tasks(SourceArn=source, MaxResults=10)["Results"]
    assert entry["SourceArn"] == source
    assert entry["ApproximateNumberOfMessagesMoved"] == 3
    assert entry["ApproximateNumberOfMessagesToMove"] == 3
    assert "TaskHandle" not in entry  # only a running task has one
    assert "DestinationArn" not in entry
    assert isinstance(entry["StartedTimestamp"], int)
    back = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in back) == ["m0", "m1", "m2"]
    # A completed task cannot be cancelled.
    with pytest.raises(botocore.exceptions.ClientError) as ended:
        sqs.cancel_message_move_task(TaskHandle=handle)
    assert code(ended.value) == "ResourceNotFoundException"
    # To another queue, at a rate: cancelled while it runs.
    for message in back:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    dead_letters(sqs, url, dlq, 20)  # 3 back again, and 20 more
    handle = sqs.start_message_move_task(
        SourceArn=source,
        DestinationArn=attributes(sqs, elsewhere)["QueueArn"],
        MaxNumberOfMessagesPerSecond=1,
    )["TaskHandle"]
    (running,) = sqs.list_message_move_tasks(SourceArn=source)["Results"]
    assert running["Status"] == "RUNNING"
    assert running["TaskHandle"] == handle
    assert running["MaxNumberOfMessagesPerSecond"] == 1
    assert running["DestinationArn"].endswith(":elsewhere")
    assert running["ApproximateNumberOfMessagesToMove"] == 23
    with pytest.raises(botocore.exceptions.ClientError) as busy:
        sqs.start_message_move_task(SourceArn=source)
    assert code(busy.value) == "AWS.SimpleQueueService.UnsupportedOperation"
    moved = sqs.cancel_message_move_task(TaskHandle=handle)["ApproximateNumberOfMessagesMoved"]
    assert 0 <= moved < 23
    (cancelled,) = sqs.list_message_move_tasks(SourceArn=source)["Results"]
    assert cancelled["Status"] == "CANCELLED"
    assert int(attributes(sqs, elsewhere)["ApproximateNumberOfMessages"]) == moved
    # The most recent first, as many as MaxResults asks (one by default, as SQS).
    both = sqs.list_message_move_tasks(SourceArn=source, MaxResults=10)["Results"]
    assert [(e["Status"], e["ApproximateNumberOfMessagesToMove"]) for e in both] == [
        ("CANCELLED", 23),
        ("COMPLETED", 3),
    ]
    assert both[0]["StartedTimestamp"] >= both[1]["StartedTimestamp"]
    first = sqs.list_message_move_tasks(SourceArn=source, MaxResults=2)["Results"]
    assert [e["Status"] for e in first] == ["CANCELLED", "COMPLETED"]
    # Nine more (the first moves the rest back where they came from, the others find
    # none): the source keeps its ten most recent tasks.
    for _ in range(9):
        sqs.start_message_move_task(SourceArn=source)
        wait_for(
            lambda: (
                sqs.list_message_move_tasks(SourceArn=source)["Results"][0]["Status"] == "COMPLETED"
            )
        )
    kept = sqs.list_message_move_tasks(SourceArn=source, MaxResults=10)["Results"]
    assert len(kept) == 10
    assert [e["Status"] for e in kept[-1:]] == ["CANCELLED"]  # the first one is gone


def test_message_move_task_errors(server: KatarProcess) -> None:
    sqs = client(server.url)
    plain = sqs.create_queue(QueueName="plain")["QueueUrl"]
    sqs.create_queue(QueueName="lonely")
    arn = attributes(sqs, plain)["QueueArn"]
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("start", {"SourceArn": ARN.format("nope")}, "ResourceNotFoundException"),
        # Not a dead-letter queue: no queue names it in a RedrivePolicy.
        ("start", {"SourceArn": ARN.format("lonely")}, "InvalidParameterValue"),
        ("start", {"SourceArn": "plain"}, "InvalidParameterValue"),
        ("list", {"SourceArn": ARN.format("nope")}, "ResourceNotFoundException"),
        ("list", {"SourceArn": arn, "MaxResults": 11}, "InvalidParameterValue"),
        ("cancel", {"TaskHandle": "bm90IGEgaGFuZGxl"}, "ResourceNotFoundException"),
        ("cancel", {"TaskHandle": "!!"}, "ResourceNotFoundException"),
        # A digit that is not ASCII ("²"): no job id, and no 500.
        (
            "cancel",
            {"TaskHandle": base64.urlsafe_b64encode("².plain".encode()).decode()},
            "ResourceNotFoundException",
        ),
    ]
    sqs.create_queue(QueueName="feeds", Attributes={"RedrivePolicy": policy("plain", 2)})
    cases.append(
        (
            "start",
            {"SourceArn": arn, "DestinationArn": ARN.format("nope")},
            "ResourceNotFoundException",
        )
    )
    cases.append(
        ("start", {"SourceArn": arn, "MaxNumberOfMessagesPerSecond": 501}, "InvalidParameterValue")
    )
    calls = {
        "start": sqs.start_message_move_task,
        "list": sqs.list_message_move_tasks,
        "cancel": sqs.cancel_message_move_task,
    }
    for verb, params, expected in cases:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            calls[verb](**params)
        assert code(caught.value) == expected, (verb, params)


def test_message_move_tasks_are_shared_by_servers(tmp_path: Path) -> None:
    """Two servers on one PostgreSQL schema: a task started on one is listed, and cancelled,
    on the other, with the handle the first gave."""
    url = store_url("postgres", tmp_path)
    first = KatarProcess(tmp_path, "--db", url).start()
    try:
        second = KatarProcess(tmp_path, "--db", url).start()
        try:
            on_first, on_second = client(first.url), client(second.url)
            dlq = on_first.create_queue(QueueName="dlq")["QueueUrl"]
            work = on_first.create_queue(
                QueueName="work", Attributes={"RedrivePolicy": policy("dlq", 1)}
            )["QueueUrl"]
            dead_letters(on_first, work, dlq, 5)
            source = attributes(on_first, dlq)["QueueArn"]
            handle = on_first.start_message_move_task(
                SourceArn=source, MaxNumberOfMessagesPerSecond=1
            )["TaskHandle"]
            (running,) = on_second.list_message_move_tasks(SourceArn=source)["Results"]
            assert (running["Status"], running["TaskHandle"]) == ("RUNNING", handle)
            assert running["ApproximateNumberOfMessagesToMove"] == 5
            with pytest.raises(botocore.exceptions.ClientError) as busy:
                on_second.start_message_move_task(SourceArn=source)
            assert code(busy.value) == "AWS.SimpleQueueService.UnsupportedOperation"
            cancel = on_second.cancel_message_move_task(TaskHandle=handle)
            moved = cancel["ApproximateNumberOfMessagesMoved"]
            assert 0 <= moved < 5
            for sqs in (on_first, on_second):
                (ended,) = sqs.list_message_move_tasks(SourceArn=source)["Results"]
                assert ended["Status"] == "CANCELLED"
                assert ended["ApproximateNumberOfMessagesMoved"] == moved
            # No step after the cancel was answered: what stayed in the DLQ stays.
            time.sleep(1.5)  # longer than a step's wait at one message a second
            assert int(attributes(on_second, work)["ApproximateNumberOfMessages"]) == moved
            assert int(attributes(on_second, dlq)["ApproximateNumberOfMessages"]) == 5 - moved
        finally:
            second.kill()
    finally:
        first.kill()
