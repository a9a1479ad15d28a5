"""Per-task options and unique keys from the Python clients, the embedded API and the CLI;
the worker's heartbeats follow a task's own timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from katar import Katar, cli
from katar.client import AsyncProducer, AsyncWorker, Job
from katar.errors import ValidationError
from katar.http import App
from katar.protocol import EnqueueOptions
from tests.http.conftest import served

URL = "http://katar"


#: The queues of this module's Katar (see conftest.py): the default lease, 60 s.
QUEUES = {"q": {"persistent": True}}


@pytest.fixture
async def producer(katar: Katar) -> AsyncIterator[AsyncProducer]:
    transport = httpx.ASGITransport(app=App(katar.engine))
    async with AsyncProducer(URL, transport=transport) as client:
        yield client


async def test_the_producer_sends_task_options(producer: AsyncProducer) -> None:
    task = await producer.enqueue(
        "q", 1, timeout=300, max_attempts=2, expires_in=60, unique_key="k", unique_for=30
    )
    assert task.timeout == 300
    assert task.max_attempts == 2
    assert task.expires_at is not None
    assert task.unique_key == "k"
    assert task.unique_until is not None
    assert not task.duplicate
    again = await producer.enqueue("q", 2, unique_key="k")
    assert again.duplicate
    assert again.id == task.id
    many = await producer.enqueue_many("q", [3, 4, 5], unique_keys=["a", None, "a"])
    assert [t.duplicate for t in many] == [False, False, True]
    same = await producer.enqueue_many("q", [6, 7], unique_keys="b")
    assert [t.duplicate for t in same] == [False, True]
    with pytest.raises(ValidationError, match="one key"):
        await producer.enqueue_many("q", [8, 9], unique_keys=["c"])


async def test_the_embedded_api_takes_and_checks_task_options(katar: Katar) -> None:
    queue = katar.queue("q")
    task = await queue.enqueue(1, timeout=300, max_attempts=0, expires_in=1.5, unique_key="k")
    assert task.timeout == 300
    assert task.max_attempts == 0
    assert task.expires_at == task.created_at + 1500
    assert (await queue.enqueue(2, unique_key="k")).duplicate
    for bad in ({"timeout": 0}, {"expires_in": -1}, {"unique_for": 5}, {"max_attempts": -1}):
        with pytest.raises(ValidationError):
            await queue.enqueue(3, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await queue.enqueue(3, unique_key="a\nb")


async def test_the_worker_heartbeats_by_the_task_timeout(
    katar: Katar, producer: AsyncProducer
) -> None:
    task = await producer.enqueue("q", "slow", timeout=300)

    async def slow(job: Job) -> str:
        assert job.timeout == 300
        await asyncio.sleep(1.0)  # more than three leases of 300 ms (the queue's is 60 s)
        return "finally"

    transport = httpx.ASGITransport(app=App(katar.engine))
    worker = AsyncWorker(URL, "q", slow, transport=transport, wait=0.5)
    running = asyncio.create_task(worker.run())
    try:
        record = await producer.wait("q", task.id, timeout=20)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    assert record.status == "done"
    assert record.attempts == 1


async def test_the_cli_enqueues_with_task_options(
    katar: Katar, capsys: pytest.CaptureFixture[str]
) -> None:
    async with served(App(katar.engine)) as url:
        args = ["enqueue", "--url", url, "--queue", "q", "--timeout", "500", "--max-attempts", "0"]
        args += ["--expires-in", "30", "--unique-key", "k", "--unique-for", "60", '"x"']
        assert await asyncio.to_thread(cli.main, args) == 0
        first = capsys.readouterr().out.strip()
        assert await asyncio.to_thread(cli.main, args) == 0
        assert capsys.readouterr().out.strip() == first  # a duplicate: the holder's id
        bad = ["enqueue", "--url", url, "--queue", "q", "--unique-for", "5", "1"]
        assert await asyncio.to_thread(cli.main, bad) != 0
    record = await katar.queue("q").get(first)
    assert record.timeout == 500
    assert record.max_attempts == 0
    assert record.unique_key == "k"
    assert record.expires_at is not None
    assert record.unique_until == record.created_at + 60_000


async def test_a_task_key_from_the_producer_the_api_and_the_cli(
    katar: Katar, producer: AsyncProducer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await producer.enqueue("q", 1, key="customer-1")).key == "customer-1"
    many = await producer.enqueue_many("q", [2, 3], key="customer-2")
    assert [t.key for t in many] == ["customer-2", "customer-2"]
    queue = katar.queue("q")
    assert (await queue.enqueue(4, key="customer-3")).key == "customer-3"
    for bad in ("", "x" * 256, "a\tb"):
        with pytest.raises(ValidationError):
            await queue.enqueue(5, key=bad)
    async with served(App(katar.engine)) as url:
        args = ["enqueue", "--url", url, "--queue", "q", "--key", "customer-4", "6"]
        assert await asyncio.to_thread(cli.main, args) == 0
    record = await queue.get(capsys.readouterr().out.strip())
    assert record.key == "customer-4"


async def test_the_enqueue_calls_take_one_options_structure(
    katar: Katar, producer: AsyncProducer
) -> None:
    # The same EnqueueOptions go to the client and to the embedded API, as keywords; a
    # keyword neither takes is refused as a signature would refuse it.
    options: EnqueueOptions = {"priority": "high", "timeout": 300, "key": "k", "delay": 0}
    sent = await producer.enqueue("q", 1, **options)
    made = await katar.queue("q").enqueue(2, **options)
    assert (sent.priority, sent.timeout, sent.key) == (10, 300, "k")
    assert (made.priority, made.timeout, made.key) == (10, 300, "k")
    typo: Any = {"max_attempt": 3}
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_attempt'"):
        await producer.enqueue("q", 3, **typo)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_attempt'"):
        await katar.queue("q").enqueue_many([3], **typo)
    assert [task.data for task in await producer.tasks("q")] == [1, 2]
