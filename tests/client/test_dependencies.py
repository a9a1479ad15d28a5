"""Dependencies from the Python client: ``after`` and ``afters`` at enqueue, ``Job.after``
in the worker (a fan-in), and the record's ``waiting_for``."""

from __future__ import annotations

import httpx
import pytest

from katar import Katar
from katar.client import AsyncProducer, AsyncWorker, Job
from katar.errors import ValidationError
from tests.client.test_client import URL, drain, katar, producer, transport

__all__ = ["katar", "producer", "transport"]  # the fixtures, shared


async def test_a_fan_in_from_the_python_client(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    a, b, total = await producer.enqueue_many("q", [2, 3, "sum"], afters=[None, None, ["$0", "$1"]])
    assert total.status == "queued"
    assert total.waiting_for == [a.id, b.id]
    seen: dict[str, object] = {}

    def handler(job: Job) -> object:
        if job.after is None:
            return job.data * 10
        seen[job.id] = job.after
        return sum(job.after.values())

    worker = AsyncWorker(URL, "q", handler, transport=transport, wait=0.2)
    await drain(worker, producer, "q", 3)
    assert seen == {total.id: {a.id: 20, b.id: 30}}
    finished = await producer.get("q", total.id)
    assert finished.result == 50
    assert finished.after == {a.id: 20, b.id: 30}
    later = await producer.enqueue("q", "after all", after=[total.id])
    assert later.status == "queued"
    assert later.waiting_for == []  # its parent was done already


async def test_after_in_the_embedded_api(katar: Katar) -> None:
    queue = katar.queue("q")
    first = await queue.enqueue("first")
    waiting = await queue.enqueue("second", after=[first.id])
    assert waiting.status == "queued"
    assert waiting.waiting_for == (first.id,)
    a, b = await queue.enqueue_many(["a", "b"], afters=[None, ["$0", str(first.id)]])
    assert b.waiting_for == (first.id, a.id)
    with pytest.raises(ValidationError, match="999999"):
        await queue.enqueue("nope", after=["999999"])
    with pytest.raises(ValidationError, match="earlier task"):
        await queue.enqueue_many(["x"], afters=[["$0"]])
