"""What the Python worker logs: each task's failure, and a summary of its work."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from katar.client import AsyncProducer, AsyncWorker, Fail, Job
from tests.client.conftest import URL, drain


async def test_the_worker_logs_each_failure_and_a_summary(
    transport: httpx.ASGITransport, producer: AsyncProducer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="katar.client")
    await producer.enqueue_many("q", ["fail", "boom", "ok", "ok"])

    async def handler(task: Job) -> str:
        await asyncio.sleep(0.05)  # so that the work spans summaries
        if task.data == "fail":
            raise Fail("never")
        if task.data == "boom":
            raise ValueError("bad input")
        return "fine"

    worker = AsyncWorker(URL, "q", handler, transport=transport, wait=0.5, summary_interval=0.05)
    await drain(worker, producer, "q", 4)

    failures = {r.getMessage(): r for r in caplog.records if "failed (attempt" in r.getMessage()}
    assert set(failures) == {
        f"task {task_id} failed (attempt 1): {error}"
        for task_id, error in zip(
            [t.id for t in await producer.tasks("q", "failed")],
            ["Fail: never", "ValueError: bad input"],
            strict=True,
        )
    }
    # The unexpected exception comes with its traceback; the handler's own verdict without.
    assert {m.split(": ", 1)[1]: r.exc_info is not None for m, r in failures.items()} == {
        "Fail: never": False,
        "ValueError: bad input": True,
    }
    summaries = [r.getMessage() for r in caplog.records if " done, " in r.getMessage()]
    assert summaries, "no summary line"
    assert "tasks/s" in summaries[0]
    assert summaries[-1].endswith("2 done, 2 failed since it started")
    assert (worker.done, worker.failed) == (2, 2)
