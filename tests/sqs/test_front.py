"""The SQS front in-process, over every store: boto3 against the app served in this event
loop (its calls in a thread), several servers on one store sharing receipt handles, and the
native HTTP routes left as they were."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from katar import Katar
from katar.auth import AwsCredential, Role
from katar.http import App
from katar.sqs import Front
from tests.http.conftest import opened, served
from tests.sqs.test_boto3 import client

KEY = "AKIDINPROCESS0001"
SECRET = "in-process-secret"
CREDENTIALS = (
    AwsCredential(access_key_id=KEY, secret=SECRET, role=Role.ADMIN, queues=frozenset({"*"})),
)


def sqs_app(katar: Katar) -> App:
    front = Front(katar.engine, credentials=CREDENTIALS)
    return App(katar.engine, sqs=front)


async def call(function: Callable[..., Any], **kwargs: Any) -> Any:
    return await asyncio.to_thread(functools.partial(function, **kwargs))


@pytest.fixture
async def katar(make_url: Callable[[], str]) -> AsyncIterator[Katar]:
    instance = Katar(make_url(), reap_interval=0.02)
    async with opened(instance):
        yield instance


async def test_boto3_in_process(katar: Katar) -> None:
    async with served(sqs_app(katar)) as url:
        sqs = client(url, KEY, SECRET)
        queue = (await call(sqs.create_queue, QueueName="inproc"))["QueueUrl"]
        await call(sqs.send_message, QueueUrl=queue, MessageBody="hi")
        got = (await call(sqs.receive_message, QueueUrl=queue, WaitTimeSeconds=1))["Messages"]
        assert [m["Body"] for m in got] == ["hi"]
        await call(sqs.delete_message, QueueUrl=queue, ReceiptHandle=got[0]["ReceiptHandle"])
        counts = (await katar.engine.stats())["inproc"]
        assert (counts["queued"], counts["in progress"]) == (0, 0)


async def test_a_long_poll_wakes_on_a_send(katar: Katar) -> None:
    async with served(sqs_app(katar)) as url:
        sqs = client(url, KEY, SECRET)
        queue = (await call(sqs.create_queue, QueueName="waits"))["QueueUrl"]
        waiting = asyncio.create_task(call(sqs.receive_message, QueueUrl=queue, WaitTimeSeconds=20))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await call(sqs.send_message, QueueUrl=queue, MessageBody="wake")
        got = await asyncio.wait_for(waiting, 15)
        assert [m["Body"] for m in got["Messages"]] == ["wake"]


async def test_servers_on_one_store_accept_each_others_handles(
    make_url: Callable[[], str], store_kind: str
) -> None:
    if store_kind != "postgres":
        pytest.skip("only PostgreSQL is shared by servers")
    url = make_url()
    one, two = Katar(url), Katar(url)
    async with (
        opened(one),
        opened(two),
        served(sqs_app(one)) as first,
        served(sqs_app(two)) as second,
    ):
        a, b = client(first, KEY, SECRET), client(second, KEY, SECRET)
        queue = (await call(a.create_queue, QueueName="shared"))["QueueUrl"]
        await call(a.send_message, QueueUrl=queue, MessageBody="x")
        got = (await call(a.receive_message, QueueUrl=queue))["Messages"]
        await call(b.delete_message, QueueUrl=queue, ReceiptHandle=got[0]["ReceiptHandle"])
        left = await call(b.get_queue_attributes, QueueUrl=queue, AttributeNames=["All"])
        assert left["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


async def test_without_a_front_post_slash_is_a_404_and_native_routes_are_as_before(
    katar: Katar,
) -> None:
    plain = App(katar.engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=plain), base_url="http://katar"
    ) as http:
        answer = await http.post("/", headers={"x-amz-target": "AmazonSQS.ListQueues"})
        assert answer.status_code == 404
        assert (
            await http.post("/000000000000/q", data={"Action": "ListQueues"})
        ).status_code == 404
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sqs_app(katar)), base_url="http://katar"
    ) as http:
        assert (await http.get("/000000000000/q")).status_code == 404  # no GET there
        await http.put("/v1/queue/native", json={})
        assert (await http.post("/v1/queue/native/tasks", json={"data": 1})).status_code == 201
