"""The producer's retries: one Idempotency-Key per enqueue call, the same on every try, so
that an answer lost on the way back never makes a duplicate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from katar import Katar
from katar.client import AsyncProducer, Producer, RequestRejected
from katar.errors import ServerUnavailable, TransportError
from katar.http import App
from tests.http.conftest import served

URL = "http://katar"
TASKS = "/v1/queue/q/tasks"


@pytest.fixture
async def katar() -> AsyncIterator[Katar]:
    instance = Katar("memory://", reap_interval=0.02)
    instance.queue("q", persistent=True)
    async with instance:
        yield instance


def lose(request: httpx.Request, how: str) -> httpx.Response:
    """What the producer sees of an enqueue the server did: no answer, or a 504."""
    if how == "reset":
        raise httpx.ReadError("connection reset (simulated)", request=request)
    body = {"error": "the outcome is unknown", "outcome": "unknown"}
    return httpx.Response(504, json=body, request=request)


class LosesAnswers(httpx.AsyncBaseTransport):
    """Passes every request on; loses the answers of the first ``lost`` enqueues."""

    def __init__(self, inner: httpx.AsyncBaseTransport, lost: int, how: str) -> None:
        self.inner, self.lost, self.how = inner, lost, how
        self.keys: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == TASKS:
            self.keys.append(request.headers.get("idempotency-key"))
            await response.aread()
            if len(self.keys) <= self.lost:
                await response.aclose()
                return lose(request, self.how)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class LosesAnswersSync(httpx.BaseTransport):
    """The same for the blocking producer, over a real socket."""

    def __init__(self, lost: int, how: str) -> None:
        self.inner, self.lost, self.how = httpx.HTTPTransport(), lost, how
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == TASKS:
            self.keys.append(request.headers.get("idempotency-key"))
            response.read()
            if len(self.keys) <= self.lost:
                response.close()
                return lose(request, self.how)
        return response

    def close(self) -> None:
        self.inner.close()


async def stored(katar: Katar) -> list[str]:
    return [str(task.id) for task in await katar.engine.list_tasks("q")]


@pytest.mark.parametrize("how", ["reset", "504"])
async def test_a_retry_after_a_lost_answer_creates_one_task(katar: Katar, how: str) -> None:
    flaky = LosesAnswers(httpx.ASGITransport(app=App(katar.engine)), 2, how)
    async with AsyncProducer(URL, transport=flaky) as producer:
        task = await producer.enqueue("q", {"n": 1})
        many = await producer.enqueue_many("q", [1, 2, 3])
    assert await stored(katar) == [task.id, *(t.id for t in many)]
    first, second = flaky.keys[:3], flaky.keys[3:]
    assert len(first) == 3
    assert len(set(first)) == 1
    assert first[0]
    assert len(second) == 1
    assert second[0] not in first


@pytest.mark.parametrize("how", ["reset", "504"])
async def test_the_blocking_producer_retries_the_same_way(katar: Katar, how: str) -> None:
    flaky = LosesAnswersSync(1, how)
    async with served(App(katar.engine)) as url:

        def enqueue() -> list[str]:
            with Producer(url, transport=flaky) as producer:
                return [t.id for t in producer.enqueue_many("q", [1, 2])]

        ids = await asyncio.to_thread(enqueue)
    assert await stored(katar) == ids
    assert len(flaky.keys) == 2
    assert flaky.keys[0] == flaky.keys[1]


async def test_a_key_of_ones_own_makes_a_later_call_create_nothing(katar: Katar) -> None:
    async with AsyncProducer(URL, transport=httpx.ASGITransport(app=App(katar.engine))) as p:
        first = await p.enqueue("q", 1, idempotency_key="order-17")
        again = await p.enqueue("q", 1, idempotency_key="order-17")
        assert again == first
        with pytest.raises(RequestRejected) as refused:  # 4xx: never retried
            await p.enqueue("q", 2, idempotency_key="order-17")
        assert refused.value.status == 422
    assert await stored(katar) == [first.id]


async def test_retries_end(katar: Katar) -> None:
    for how, error in (("reset", TransportError), ("504", ServerUnavailable)):
        flaky = LosesAnswers(httpx.ASGITransport(app=App(katar.engine)), 100, how)
        async with AsyncProducer(URL, transport=flaky, retries=2) as producer:
            with pytest.raises(error):
                await producer.enqueue("q", 1)
        assert len(flaky.keys) == 3
        assert len(set(flaky.keys)) == 1
    assert len(await stored(katar)) == 2  # one per call, never one per try
