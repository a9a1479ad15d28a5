"""The Python client against the ASGI app, in process (httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from katar.client import AsyncProducer, AsyncWorker, Fail, Job, RequestRejected, Retry, Worker
from katar.client._base import backoff, server_url
from katar.errors import TransportError
from tests.client.conftest import URL, drain


async def test_producer_round_trip(producer: AsyncProducer) -> None:
    task = await producer.enqueue("q", {"to": "a@b"}, priority="high")
    assert task.status == "queued"
    assert task.priority == 10
    assert task.data == {"to": "a@b"}
    many = await producer.enqueue_many("q", [1, 2, 3], delay=60)
    assert [t.data for t in many] == [1, 2, 3]
    assert all(t.run_at for t in many)
    assert (await producer.get("q", task.id)).id == task.id
    page = await producer.tasks("q", limit=2)
    assert [t.id for t in page] == [task.id, many[0].id]
    rest = await producer.tasks("q", after=page[-1].id)
    assert [t.id for t in rest] == [many[1].id, many[2].id]
    waited = await producer.wait("q", task.id, timeout=0.1)
    assert not waited.finished
    with pytest.raises(RequestRejected) as caught:
        await producer.get("q", "999999")
    assert caught.value.status == 404
    assert "no task" in caught.value.message
    with pytest.raises(RequestRejected):
        await producer.enqueue("nope", 1)


async def test_worker_drains_with_sync_and_async_handlers(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    await producer.enqueue_many("q", list(range(40)))
    threads: set[str] = set()

    def double(task: Job) -> dict[str, int]:
        threads.add(threading.current_thread().name)
        time.sleep(0.005)
        return {"double": task.data * 2}

    worker = AsyncWorker(URL, "q", double, concurrency=4, transport=transport, wait=1)
    await drain(worker, producer, "q", 40)
    done = await producer.tasks("q", "done", limit=100)
    assert sorted(t.result["double"] for t in done) == [n * 2 for n in range(40)]
    assert all(t.worker == worker.name for t in done)
    assert len(threads) > 1  # sync handlers ran in threads, several at once
    assert worker.processed == 40

    async def triple(task: Job) -> int:
        await asyncio.sleep(0.005)
        return int(task.data) * 3

    await producer.enqueue_many("q", [100, 200])
    async_worker = AsyncWorker(URL, "q", triple, concurrency=2, transport=transport, wait=1)
    await drain(async_worker, producer, "q", 42)
    results = {t.data: t.result for t in await producer.tasks("q", "done", limit=100)}
    assert results[100] == 300
    assert results[200] == 600


async def test_handler_exceptions_fail_or_retry(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    tasks = await producer.enqueue_many("q", ["retry", "fail", "boom", "ok"])
    seen: Counter[str] = Counter()

    def handler(task: Job) -> str:
        seen[task.data] += 1
        if task.data == "retry":
            raise Retry("not yet")
        if task.data == "fail":
            raise Fail("never")
        if task.data == "boom":
            raise ValueError("bad input")
        return "fine"

    worker = AsyncWorker(URL, "q", handler, transport=transport, wait=0.5)
    await drain(worker, producer, "q", 4)
    by_data = {t.data: t for t in [await producer.get("q", t.id) for t in tasks]}
    assert by_data["retry"].status == "failed"
    assert by_data["retry"].attempts == 3
    assert by_data["retry"].error == "Retry: not yet"
    assert by_data["fail"].status == "failed"
    assert by_data["fail"].error == "Fail: never"
    assert by_data["boom"].status == "failed"
    assert by_data["boom"].error == "ValueError: bad input"
    assert by_data["ok"].result == "fine"
    assert seen == {"retry": 3, "fail": 1, "boom": 1, "ok": 1}


async def test_heartbeats_keep_a_long_task(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    task = await producer.enqueue("short", "slow")

    async def slow(job: Job) -> str:
        await asyncio.sleep(1.0)  # more than three leases of 300 ms
        return "finally"

    worker = AsyncWorker(URL, "short", slow, transport=transport, wait=0.5)
    await drain(worker, producer, "short", 1)
    record = await producer.get("short", task.id)
    assert record.status == "done"
    assert record.attempts == 1
    assert record.result == "finally"


async def test_a_4xx_stops_the_worker_with_a_clear_error(transport: httpx.ASGITransport) -> None:
    worker = AsyncWorker(URL, "missing", lambda job: None, transport=transport)
    with pytest.raises(RequestRejected, match="404 Queue not found"):
        await asyncio.wait_for(worker.run(), 10)


async def test_stop_finishes_running_tasks_then_returns(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    await producer.enqueue_many("q", [1, 2, 3, 4])
    started = asyncio.Event()

    async def handler(job: Job) -> int:
        started.set()
        await asyncio.sleep(0.3)
        return int(job.data)

    worker = AsyncWorker(URL, "q", handler, concurrency=2, transport=transport, wait=1)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    await asyncio.wait_for(running, 5)
    statuses = Counter(t.status for t in await producer.tasks("q"))
    assert statuses == {"done": 2, "queued": 2}


class Flaky(httpx.AsyncBaseTransport):
    """Loses some answers: every third poll reaches the server, then the client sees a
    dropped connection (the worst case: the server applied the acks and maybe claimed)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.polls = 0
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/queue/short":
            self.polls += 1
            if self.polls % 3 == 0:
                self.lost += 1
                raise httpx.ReadError("connection reset (simulated)", request=request)
        return response


async def test_lost_answers_lose_no_ack_and_never_claim_twice(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    await producer.enqueue_many("short", list(range(30)))
    flaky = Flaky(transport)
    runs: Counter[int] = Counter()

    def handler(job: Job) -> int:
        runs[job.data] += 1
        return int(job.data)

    worker = AsyncWorker(URL, "short", handler, concurrency=3, transport=flaky, wait=0.5)
    await drain(worker, producer, "short", 30)
    assert flaky.lost > 3
    done = await producer.tasks("short", "done", limit=100)
    assert sorted(t.data for t in done) == list(range(30))
    # Every ack reached the server in the end: no task ran twice. The deliveries that rode
    # on lost answers came back when their lease ran out (attempts above 1).
    assert set(runs.values()) == {1}
    assert any(t.attempts > 1 for t in done)


async def test_producer_waits_for_an_outcome(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    task = await producer.enqueue("q", 21)

    async def handler(job: Job) -> Any:
        await asyncio.sleep(0.1)
        return int(job.data) * 2

    worker = AsyncWorker(URL, "q", handler, transport=transport, wait=1)
    running = asyncio.create_task(worker.run())
    try:
        outcome = await producer.wait("q", task.id, timeout=10)
    finally:
        worker.stop()
        await running
    assert outcome.finished
    assert outcome.status == "done"
    assert outcome.result == 42


async def test_an_exception_message_with_nul_still_fails_its_task(
    transport: httpx.ASGITransport, producer: AsyncProducer
) -> None:
    # The server refuses NUL in an error: the worker escapes it, so the ack goes through.
    (task,) = await producer.enqueue_many("q", ["odd"])

    def handler(job: Job) -> None:
        raise Fail("bad\x00byte")

    await drain(AsyncWorker(URL, "q", handler, transport=transport, wait=0.5), producer, "q", 1)
    finished = await producer.get("q", task.id)
    assert finished.status == "failed"
    assert finished.error == "Fail: bad\\x00byte"


class Down(httpx.AsyncBaseTransport):
    """The queue's configuration answers; then every poll finds the server gone."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            raise httpx.ConnectError("All connection attempts failed", request=request)
        return await self.inner.handle_async_request(request)


async def backoffs(
    transport: httpx.AsyncBaseTransport, monkeypatch: pytest.MonkeyPatch, wait: float, count: int
) -> list[int]:
    """Run a worker over ``transport`` until it has paused ``count`` times after failed polls
    (with no pause at all); the attempt numbers its backoffs were asked for."""
    attempts: list[int] = []

    def no_wait(attempt: int) -> float:
        attempts.append(attempt)
        return 0.0

    monkeypatch.setattr("katar.client.worker.backoff", no_wait)
    worker = AsyncWorker(URL, "q", lambda job: None, transport=transport, wait=wait)
    running = asyncio.create_task(worker.run())
    try:
        while len(attempts) < count:  # noqa: ASYNC110 - counting calls made by the worker's own loop
            await asyncio.sleep(0.01)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    return attempts


async def test_the_backoff_grows_while_the_server_stays_down(
    transport: httpx.ASGITransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = await backoffs(Down(transport), monkeypatch, wait=1, count=6)
    # Each failed poll in a row counts: a dead server is tried less and less often
    # (it once retried every 0.1 s for ever, because each failure started at attempt 1).
    assert attempts[:6] == [1, 2, 3, 4, 5, 6]


class Restart(httpx.AsyncBaseTransport):
    """The configuration answers; polls fail ``down`` times, answer once, then fail again."""

    def __init__(self, inner: httpx.AsyncBaseTransport, down: int) -> None:
        self.inner = inner
        self.down = down
        self.polls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.polls += 1
            if self.polls != self.down + 1:
                raise httpx.ConnectError("All connection attempts failed", request=request)
        return await self.inner.handle_async_request(request)


async def test_the_backoff_starts_again_after_an_answer(
    transport: httpx.ASGITransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a short restart the pauses grew on and on (11-25 s), keeping the worker away from
    # a server that was back: the first answer resets them.
    attempts = await backoffs(Restart(transport, 3), monkeypatch, wait=0.01, count=5)
    assert attempts[:5] == [1, 2, 3, 1, 2]


def test_the_backoff_is_capped() -> None:
    # A worker waits at most 5 s between tries, however long the server was away.
    assert all(0 <= backoff(attempt) <= 5.0 for attempt in range(1, 200) for _ in range(20))
    assert backoff(3, cap=1.0) <= 0.8


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("127.0.0.1:3951", "http://127.0.0.1:3951"),
        ("localhost:3951", "http://localhost:3951"),
        ("https://queue.example:443/", "https://queue.example:443"),
        ("http://[::1]:3000", "http://[::1]:3000"),
    ],
)
def test_a_server_url_without_a_scheme_is_http(given: str, used: str) -> None:
    assert server_url(given) == used
    assert AsyncWorker(given, "q", lambda job: None).url == used


@pytest.mark.parametrize("given", ["ftp://x:21", "http://", "localhost:port", "https://:443"])
def test_a_server_url_that_cannot_be_one_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="must be http://HOST:PORT or https://HOST:PORT"):
        server_url(given)


async def test_no_answer_names_the_server(transport: httpx.ASGITransport) -> None:
    # "POST /v1/queue/q: ConnectError" did not say which server could not be reached.
    async with AsyncProducer(URL, transport=Restart(transport, 100), retries=0) as client:
        with pytest.raises(TransportError, match="POST http://katar/v1/queue/q/tasks: no answer"):
            await client.enqueue("q", 1)


def test_a_stop_before_the_worker_runs_is_not_lost() -> None:
    # Nothing listens there: a worker that ignored the early stop would retry for ever.
    worker = Worker("http://127.0.0.1:9", "q", lambda job: None)
    worker.stop()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
