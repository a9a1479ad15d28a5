"""Dependencies from the Python client: ``after`` and ``afters`` at enqueue, ``Job.after``
in the worker (a fan-in), the record's ``waiting_for``, and a task's children on both
producers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from katar import Katar
from katar.client import AsyncProducer, AsyncWorker, Job, Producer
from katar.errors import ValidationError
from katar.http import App, Limits
from tests.client.conftest import URL, drain
from tests.http.conftest import served


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


async def test_a_worker_reads_the_results_left_out_of_its_delivery(katar: Katar) -> None:
    """Results past the server's answer bound: ``Job.after`` holds those that fit, and
    ``Job.after_omitted`` names the others, which the worker reads from their records."""
    limits = Limits(max_task_bytes=1000, max_answer_bytes=64 * 1024 + 1000)
    transport = httpx.ASGITransport(app=App(katar.engine, limits=limits))
    async with AsyncProducer(URL, transport=transport) as producer:
        tasks = await producer.enqueue_many(
            "q", [*range(30), "merge"], afters=[*[None] * 30, [f"${n}" for n in range(30)]]
        )
        merged: dict[str, object] = {}

        async def handler(job: Job) -> object:
            if job.after is None:
                return {"n": job.data, "pad": "p" * 3000}
            assert job.after_omitted, "30 results of 3 KB do not fit in 65 KB"
            merged.update(job.after)
            for parent in job.after_omitted:
                merged[parent] = (await producer.get("q", parent)).result
            return len(merged)

        worker = AsyncWorker(URL, "q", handler, transport=transport, wait=0.2, concurrency=8)
        running = asyncio.create_task(worker.run())
        try:  # (drain's listing would page: these records are large)
            for _ in range(1000):
                if (await producer.get("q", tasks[30].id)).status == "done":
                    break
                await asyncio.sleep(0.02)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)
        assert merged == {task.id: {"n": n, "pad": "p" * 3000} for n, task in enumerate(tasks[:30])}
        assert (await producer.get("q", tasks[30].id)).result == 30


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


async def test_a_tasks_children_and_parents_on_both_producers(
    katar: Katar, producer: AsyncProducer
) -> None:
    parent = await producer.enqueue("q", "parent")
    made = [await producer.enqueue(queue, n, after=[parent.id]) for n, queue in enumerate("qq")]
    made.append(await producer.enqueue("short", "other queue", after=[parent.id]))
    ids = [task.id for task in made]
    assert [task.id for task in await producer.children("q", parent.id)] == ids
    first = await producer.children("q", parent.id, limit=2)
    assert [task.id for task in first] == ids[:2]
    rest = await producer.children("q", parent.id, after=first[-1].id)
    assert [(task.id, task.queue, task.waiting_for) for task in rest] == [
        (ids[2], "short", [parent.id])
    ]
    assert await producer.children("q", ids[0]) == []
    assert [task.id for task in await producer.parents("short", ids[2])] == [parent.id]
    async with served(App(katar.engine)) as url:

        def blocking() -> list[str]:
            with Producer(url) as blocking_producer:
                page = blocking_producer.children("q", parent.id, limit=1, after=ids[0])
                above = blocking_producer.parents("q", ids[0])
                return [task.id for task in [*page, *above]]

        assert await asyncio.to_thread(blocking) == [ids[1], parent.id]
