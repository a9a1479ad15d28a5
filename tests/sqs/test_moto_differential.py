"""A differential test: one scenario of SQS calls, errors included, against Katar and
against moto's SQS server (run as its own process on loopback), comparing the answers'
shapes (their keys) and the errors' codes. Where they differ and SQS's documentation
decides for Katar, the difference is listed in KNOWN with its reason (docs/sqs.md says it
too), and the test checks that it is still that difference."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import httpx
import pytest

from tests.acceptance.conftest import KatarProcess

BIN = Path(sys.executable).parent

#: Steps where moto answers otherwise than SQS documents, and Katar as SQS documents:
#: step -> (Katar's outcome, moto's outcome, why Katar is right).
KNOWN: dict[str, tuple[Any, Any, str]] = {
    "set invalid attribute": (
        ("error", "InvalidAttributeName"),
        {},
        "SetQueueAttributes lists InvalidAttributeName: 'The specified attribute doesn't "
        "exist'; moto ignores an unknown attribute and answers success",
    ),
    "message too large": (
        ("error", "InvalidParameterValue"),
        {"MD5OfMessageBody": "str", "MessageId": "str"},
        "a message is at most 262,144 bytes (SendMessage's MessageBody, and the queue's "
        "MaximumMessageSize); moto accepts one byte more",
    ),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[str]:
    """moto's SQS server on a loopback port of its own; stopped by its PID."""
    port = free_port()
    log = (tmp_path / "moto.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError((tmp_path / "moto.log").read_text()) from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def katar(tmp_path: Path) -> Iterator[str]:
    process = KatarProcess(tmp_path, "--db", f"sqlite:///{tmp_path / 'katar.db'}").start()
    yield process.url
    process.kill()


def shape(value: Any) -> Any:
    """An answer's shape: its keys, nested, with the values' types (not the values)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def outcome(call: Callable[[], Any]) -> Any:
    """What a call answered: its shape, or ("error", its code)."""
    try:
        return shape(call())
    except botocore.exceptions.ClientError as exc:
        return ("error", exc.response["Error"]["Code"])


def scenario(url: str) -> dict[str, Any]:
    sqs = boto3.client(
        "sqs",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE000000",
        aws_secret_access_key="any",
    )
    queue = sqs.create_queue(QueueName="diff")["QueueUrl"]
    attributes = {"lang": {"DataType": "String", "StringValue": "en"}}
    steps: dict[str, Callable[[], Any]] = {
        "get unknown queue": lambda: sqs.get_queue_url(QueueName="nope"),
        "send to unknown queue": lambda: sqs.send_message(
            QueueUrl=queue.rpartition("/")[0] + "/nope", MessageBody="x"
        ),
        "send": lambda: sqs.send_message(
            QueueUrl=queue, MessageBody="hello", MessageAttributes=attributes
        ),
        "receive": lambda: sqs.receive_message(
            QueueUrl=queue, MessageAttributeNames=["All"], AttributeNames=["All"]
        ),
        "receive too many": lambda: sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=11),
        "delete with a bad handle": lambda: sqs.delete_message(
            QueueUrl=queue, ReceiptHandle="garbage"
        ),
        "visibility with a bad handle": lambda: sqs.change_message_visibility(
            QueueUrl=queue, ReceiptHandle="garbage", VisibilityTimeout=10
        ),
        "invalid attribute name": lambda: sqs.get_queue_attributes(
            QueueUrl=queue, AttributeNames=["Nope"]
        ),
        "set invalid attribute": lambda: sqs.set_queue_attributes(
            QueueUrl=queue, Attributes={"Nope": "1"}
        ),
        "duplicate batch ids": lambda: sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[{"Id": "a", "MessageBody": "1"}, {"Id": "a", "MessageBody": "2"}],
        ),
        "empty batch": lambda: sqs.send_message_batch(QueueUrl=queue, Entries=[]),
        "batch": lambda: sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[{"Id": "a", "MessageBody": "1"}, {"Id": "b", "MessageBody": "2"}],
        ),
        "message too large": lambda: sqs.send_message(
            QueueUrl=queue, MessageBody="x" * (262_144 + 1)
        ),
        "attributes": lambda: sqs.get_queue_attributes(
            QueueUrl=queue, AttributeNames=["VisibilityTimeout", "DelaySeconds"]
        ),
        "add permission": lambda: sqs.add_permission(
            QueueUrl=queue, Label="share", AWSAccountIds=["111122223333"], Actions=["SendMessage"]
        ),
        "add permission again": lambda: sqs.add_permission(
            QueueUrl=queue, Label="share", AWSAccountIds=["111122223333"], Actions=["SendMessage"]
        ),
        "add an owner's permission": lambda: sqs.add_permission(
            QueueUrl=queue, Label="own", AWSAccountIds=["111122223333"], Actions=["CreateQueue"]
        ),
        "add too many actions": lambda: sqs.add_permission(
            QueueUrl=queue, Label="many", AWSAccountIds=["111122223333"], Actions=["*"] * 8
        ),
        "add permission for nobody": lambda: sqs.add_permission(
            QueueUrl=queue, Label="none", AWSAccountIds=[], Actions=["*"]
        ),
        "policy": lambda: sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["Policy"]),
        "remove permission": lambda: sqs.remove_permission(QueueUrl=queue, Label="share"),
        "remove unknown permission": lambda: sqs.remove_permission(QueueUrl=queue, Label="share"),
        "list": lambda: sqs.list_queues(QueueNamePrefix="di"),
        "delete queue": lambda: sqs.delete_queue(QueueUrl=queue),
    }
    return {name: outcome(step) for name, step in steps.items()}


def test_katar_answers_as_moto(katar: str, moto: str) -> None:
    ours = scenario(katar)
    theirs = scenario(moto)
    differences = {name: (ours[name], theirs[name]) for name in ours if ours[name] != theirs[name]}
    unexplained = {
        name: found
        for name, found in differences.items()
        if name not in KNOWN or KNOWN[name][:2] != found
    }
    assert not unexplained, unexplained
    assert set(differences) == set(KNOWN)  # each known difference is still there


def policy_of(url: str) -> Any:
    """The Policy that two AddPermission calls write, the queue's ARN (its region and
    account are the server's) written ``<arn>``."""
    sqs = boto3.client(
        "sqs",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE000000",
        aws_secret_access_key="any",
    )
    queue = sqs.create_queue(QueueName="shared")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sqs.add_permission(
        QueueUrl=queue, Label="one", AWSAccountIds=["111122223333"], Actions=["SendMessage"]
    )
    sqs.add_permission(
        QueueUrl=queue,
        Label="two",
        AWSAccountIds=["111122223333", "444455556666"],
        Actions=["ReceiveMessage", "DeleteMessage"],
    )
    text = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["Policy"])["Attributes"][
        "Policy"
    ]
    return json.loads(text.replace(arn, "<arn>"))


def test_permissions_write_the_policy_as_moto(katar: str, moto: str) -> None:
    assert policy_of(katar) == policy_of(moto)
