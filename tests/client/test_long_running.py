"""Long-running work in the Python client: progress from handlers, and cancels of tasks in
progress reaching them (an async handler's task cancelled, a sync handler's flag set)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import httpx
import pytest

from katar.client import AsyncProducer, AsyncWorker, Job, RequestRejected

URL = "http://katar"
BOUND = 20  # seconds: what no step of these tests may take


#: The queues of this module's Katar (see conftest.py). A lease of 300 ms: workers
#: heartbeat every 100 ms.
QUEUES = {"long": {"persistent": True, "timeout": 300}}


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async def loop() -> None:
        # ASYNC110: the state is the server's, seen through HTTP: no event to wait on.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), BOUND)


def worker(transport: httpx.ASGITransport, handler: Callable[[Job], object]) -> AsyncWorker:
    return AsyncWorker(URL, "long", handler, transport=transport, wait=1, name="w1")


async def test_an_async_handler_is_cancelled(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def handler(job: Job) -> str:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            assert job.cancelled
            stopped.set()
            raise
        return "never"

    running = worker(transport, handler)
    work = asyncio.create_task(running.run())
    try:
        task = await producer.enqueue("long", 1)
        await asyncio.wait_for(started.wait(), BOUND)
        requested = await producer.cancel("long", task.id)
        assert requested.status == "in progress"
        assert requested.cancel_requested
        await asyncio.wait_for(stopped.wait(), BOUND)
        final = await producer.wait("long", task.id, timeout=BOUND)
        assert final.status == "cancelled"
        assert final.error is not None
        assert "operator" in final.error
        assert running.cancelled == 1
        assert running.processed == 0  # no ack was sent for it
    finally:
        running.stop()
        await asyncio.wait_for(work, BOUND)
    paused = await producer.enqueue("long", 2, paused=True)
    assert (await producer.cancel("long", paused.id)).status == "cancelled"  # at once
    assert (await producer.cancel("long", paused.id)).status == "cancelled"  # no change


async def test_a_sync_handler_reports_progress_and_sees_the_flag(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    steps = threading.Event()
    seen: list[bool] = []

    def handler(job: Job) -> str:
        step = 0
        while not job.cancelled:
            step += 1
            job.progress({"step": step})
            if step == 3:
                steps.set()
            job.cancel_event.wait(0.02)
        seen.append(job.cancelled)
        return "stopped early"  # not sent: the server has ended the task

    running = worker(transport, handler)
    work = asyncio.create_task(running.run())
    try:
        task = await producer.enqueue("long", 1)

        async def progressed() -> bool:
            record = await producer.get("long", task.id)
            return isinstance(record.progress, dict) and record.progress["step"] >= 3

        await until(progressed)
        await producer.cancel("long", task.id)
        final = await producer.wait("long", task.id, timeout=BOUND)
        assert final.status == "cancelled"
        assert final.result is None
        assert isinstance(final.progress, dict)

        async def flag_seen() -> bool:
            return seen == [True]

        await until(flag_seen)
        assert running.done == 0
        assert running.failed == 0
    finally:
        running.stop()
        await asyncio.wait_for(work, BOUND)
    assert (await producer.get("long", task.id)).status == "cancelled"


async def test_progress_is_kept_when_the_task_is_done(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    async def handler(job: Job) -> int:
        for value in ("half", {"done": 2, "of": 2}):
            job.progress(value)

            async def shown(value: object = value) -> bool:  # a heartbeat carried it
                progress: object = (await producer.get("long", job.id)).progress
                return progress == value

            await until(shown)
        return 7

    running = worker(transport, handler)
    work = asyncio.create_task(running.run())
    try:
        task = await producer.enqueue("long", 1)
        final = await producer.wait("long", task.id, timeout=BOUND)
    finally:
        running.stop()
        await asyncio.wait_for(work, BOUND)
    assert final.status == "done"
    assert final.result == 7
    assert final.progress == {"done": 2, "of": 2}
    assert not final.cancel_requested
    with pytest.raises(RequestRejected) as caught:  # a finished task cannot be cancelled
        await producer.cancel("long", task.id)
    assert caught.value.status == 409
    assert caught.value.details["status"] == "done"  # the task's, beside the HTTP status


def test_progress_must_be_json() -> None:
    job = Job("1", None, 1)
    with pytest.raises(TypeError, match="JSON"):
        job.progress(object())
    job.progress([1, {"a": "b"}])
    assert job._heartbeat() == {
        "_id": "1",
        "status": "in progress",
        "attempt": 1,
        "progress": [1, {"a": "b"}],
    }
    assert not job.cancelled
