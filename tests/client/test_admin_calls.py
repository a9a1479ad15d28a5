"""The producers' operator calls (queues, pause, resume, bulk, workers) against the app."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import msgspec
import pytest

from katar import Katar
from katar.client import AsyncProducer, RequestRejected
from katar.core.clock import FakeClock
from katar.core.model import Ack
from katar.errors import ValidationError
from katar.http import App

URL = "http://katar"


#: The queues of this module's Katar (see conftest.py).
QUEUES = {"q": {"persistent": True}}


async def test_queues_pause_and_resume(producer: AsyncProducer) -> None:
    await producer.enqueue_many("q", [1, 2])
    (queue,) = await producer.queues()
    assert (queue.name, queue.paused, queue.counts["queued"]) == ("q", False, 2)
    await producer.pause("q")
    assert (await producer.queues())[0].paused
    await producer.resume("q")
    assert not (await producer.queues())[0].paused
    with pytest.raises(RequestRejected, match="404 Queue not found"):
        await producer.pause("nope")


async def test_listing_filters_reach_the_server(producer: AsyncProducer) -> None:
    await producer.enqueue_many("q", [1, 2], key="acme")
    await producer.enqueue("q", 3, key="other")
    listed = await producer.tasks("q", "queued", key="acme")
    assert [task.key for task in listed] == ["acme", "acme"]


async def test_bulk_needs_aware_times(producer: AsyncProducer) -> None:
    with pytest.raises(ValidationError, match="before needs a time zone"):
        await producer.bulk("q", "retry", before=datetime(2030, 1, 1))


async def test_bulk_and_workers(producer: AsyncProducer) -> None:
    (task,) = await producer.enqueue_many("q", [1])
    await producer.cancel("q", task.id)
    done = await producer.bulk("q", "retry", status="cancelled")
    assert (done.matched, done.changed) == (1, 1)
    assert await producer.workers() == []


async def test_the_client_reads_every_field_the_queue_listing_sends() -> None:
    # One record on both sides: what the client decodes is all the server sent, limits and
    # the head's age included.
    clock = FakeClock()  # the head's age stays the same between the two reads
    katar = Katar("memory://", clock=clock)
    katar.queue("q", concurrency=2, rate={"limit": 5, "period": 1000})
    async with katar:
        transport = httpx.ASGITransport(app=App(katar.engine))
        async with (
            AsyncProducer(URL, transport=transport) as client,
            httpx.AsyncClient(transport=transport, base_url=URL) as raw,
        ):
            await client.enqueue("q", 1)
            await clock.advance(1500)
            sent = (await raw.get("/v1/queues")).json()["queues"]
            read = await client.queues()
    assert sent[0]["limits"] is not None
    assert sent[0]["oldest_queued_age"] == 1.5
    assert [msgspec.to_builtins(queue) for queue in read] == sent


async def test_redrive_calls() -> None:
    katar = Katar("memory://")
    katar.queue("mail", persistent=True, max_attempts=1, dead_letter="mail.dead")
    async with katar:
        transport = httpx.ASGITransport(app=App(katar.engine))
        async with AsyncProducer(URL, transport=transport) as producer:
            first, second = await producer.enqueue_many("mail", [1, 2], key="acme")
            taken = await katar.engine.poll("mail", limit=2)
            acks = [
                msgspec.convert({"_id": str(t.id), "status": "failed", "error": "x"}, Ack)
                for t in taken
            ]
            await katar.engine.poll("mail", acks, limit=0)
            dead = await producer.get("mail.dead", first.id)
            assert dead.dead_letter is not None
            assert (dead.dead_letter.queue, dead.dead_letter.error) == ("mail", "x")
            done = await producer.redrive("mail.dead", ids=[first.id])
            assert (done.matched, done.moved, done.no_origin) == (1, 1, 0)
            job = await producer.start_redrive("mail.dead", 1000, status="queued")
            assert (job.state, job.rate, job.to) == ("running", 1000, None)
            for _ in range(100):
                job = await producer.redrive_job("mail.dead")
                if job.state != "running":
                    break
                await asyncio.sleep(0.01)
            assert (job.state, job.moved) == ("completed", 1)
            assert (await producer.cancel_redrive("mail.dead")).state == "completed"
            assert (await producer.get("mail", second.id)).status == "queued"
