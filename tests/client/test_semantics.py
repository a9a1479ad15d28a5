"""Section 14's task semantics from the Python client and the Python API: a child that runs
whatever its parents' outcome (``after_failure``), and edit and retry (``retry`` with data)."""

from __future__ import annotations

import httpx
import pytest

from katar import Katar
from katar.client import AsyncProducer, AsyncWorker, Job
from katar.errors import IllegalTransition, RequestRejected, ValidationError
from tests.client.conftest import URL, drain


async def test_a_summary_runs_after_a_failure_with_each_outcome(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    ok, bad, summary = await producer.enqueue_many(
        "q", ["ok", "bad", "summary"], afters=[None, None, ["$0", "$1"]], after_failure="run"
    )
    seen: dict[str, object] = {}

    def handler(job: Job) -> object:
        if job.data == "bad":
            raise RuntimeError("boom")
        if job.after is not None:
            seen.update(job.after)
        return job.data

    worker = AsyncWorker(URL, "q", handler, transport=transport, wait=0.2)
    await drain(worker, producer, "q", 3)
    assert seen[ok.id] == {"status": "done", "result": "ok", "error": None}
    failed = seen[bad.id]
    assert isinstance(failed, dict)
    assert failed["status"] == "failed"
    assert "boom" in failed["error"]
    assert (await producer.get("q", summary.id)).status == "done"


async def test_after_failure_needs_afters(producer: AsyncProducer) -> None:
    with pytest.raises(ValidationError, match="after_failure needs after"):
        await producer.enqueue_many("q", [1], after_failure="run")


async def test_retry_with_new_data_from_the_client(producer: AsyncProducer) -> None:
    task = await producer.enqueue("q", {"to": "typo"}, paused=True)
    again = await producer.retry("q", task.id, data={"to": "fixed"}, priority="high")
    assert (again.status, again.data, again.priority) == ("queued", {"to": "fixed"}, 10)
    kept = await producer.retry("q", task.id, key="c1")
    assert (kept.data, kept.key) == ({"to": "fixed"}, "c1")
    await producer.cancel("q", task.id)
    plain = await producer.retry("q", task.id)
    assert (plain.status, plain.data) == ("queued", {"to": "fixed"})


async def test_retry_of_a_task_in_progress_is_refused(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    task = await producer.enqueue("q", 1)
    response = await transport.handle_async_request(
        httpx.Request("POST", f"{URL}/v1/queue/q", json={})
    )
    assert response.status_code == 200
    with pytest.raises(RequestRejected):
        await producer.retry("q", task.id, data=2)
    assert (await producer.get("q", task.id)).data == 1


async def test_retry_with_new_data_from_the_python_api(katar: Katar) -> None:
    queue = katar.queue("q")
    (task,) = await queue.enqueue_many([None], paused=True)
    edited = await queue.retry(task.id, data=None, priority=3)
    assert (bytes(edited.data), edited.priority, edited.status) == (b"null", 3, "queued")
    (claimed,) = await katar.engine.poll("q", [], 1)
    with pytest.raises(IllegalTransition):
        await queue.retry(claimed.id, data={"x": 1})
