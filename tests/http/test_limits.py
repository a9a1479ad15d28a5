"""The server's limits: each breach is a clear 4xx, and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from katar import Katar
from katar.http import App, Limits
from tests.http.conftest import app_client, opened

LIMITS = Limits(
    max_body_bytes=4096,
    max_task_bytes=100,
    max_tasks_per_enqueue=5,
    max_wait=2,
    max_long_polls=2,
    max_list=10,
    max_queue_name=12,
)


@pytest.fixture
async def katar() -> AsyncIterator[Katar]:
    instance = Katar("memory://")
    instance.queue("q", persistent=True, max_batch=3)
    async with opened(instance):
        yield instance


@pytest.fixture
def app(katar: Katar) -> App:
    return App(katar.engine, limits=LIMITS)


@pytest.fixture
async def http(app: App, via: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(app, via) as client:
        yield client


async def test_task_data_over_the_limit_is_413_and_nothing_is_enqueued(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    fits = {"data": "x" * 98}  # 100 bytes of JSON with its quotes
    assert (await http.post("/v1/queue/q/tasks", json=fits)).status_code == 201
    batch = {"tasks": [fits, {"data": "x" * 99}]}
    response = await http.post("/v1/queue/q/tasks", json=batch)
    assert response.status_code == 413
    assert response.json()["error"].startswith("tasks[1]: data is 101 bytes of JSON")
    assert (await katar.engine.stats())["q"]["queued"] == 1


async def test_bodies_and_batches_over_their_limits(http: httpx.AsyncClient) -> None:
    big = await http.post("/v1/queue/q", content=b" " * 5000)
    assert big.status_code == 413
    many = await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": 1}] * 6})
    assert many.status_code == 422
    assert "at most 5 tasks per request" in many.json()["error"]
    page = await http.get("/v1/queue/q/tasks?limit=11")
    assert page.status_code == 422


async def test_max_is_capped_by_the_queues_max_batch(http: httpx.AsyncClient) -> None:
    await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": 1}] * 5})
    polled = await http.post("/v1/queue/q", json={"max": 10**12})
    assert len(polled.json()["tasks"]) == 3  # the contract: capped, not refused


async def test_queue_names_over_the_length_limit(http: httpx.AsyncClient) -> None:
    assert (await http.put("/v1/queue/twelve-chars", json={})).status_code == 200
    response = await http.put("/v1/queue/thirteen-char", json={})
    assert response.status_code == 422
    assert "use 1 to 12 letters" in response.json()["error"]
    for bad in ("a%20b", "-dash", "%C3%A9t%C3%A9", "a%22b"):
        assert (await http.put(f"/v1/queue/{bad}", json={})).status_code == 422, bad
    # An encoded slash splits the path: no such route.
    assert (await http.put("/v1/queue/a%2Fb", json={})).status_code == 404


async def test_long_polls_beyond_the_limit_are_429_and_their_acks_untouched(
    http: httpx.AsyncClient, app: App, katar: Katar
) -> None:
    await http.post("/v1/queue/q/tasks", json={"data": 1})
    taken = (await http.post("/v1/queue/q", json={})).json()["tasks"][0]
    held = [asyncio.ensure_future(http.post("/v1/queue/q", json={"wait": 2})) for _ in range(2)]
    while app.long_polls < 2:
        await asyncio.sleep(0.01)
    ack = {"_id": taken["_id"], "status": "done"}
    refused = await http.post("/v1/queue/q", json={"wait": 1, "tasks": [ack]})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "limit of 2 long polls" in refused.json()["error"]
    assert (await katar.engine.stats())["q"]["in progress"] == 1
    # A short poll is not a long poll: it goes through.
    assert (await http.post("/v1/queue/q", json={"tasks": [ack]})).status_code == 204
    await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": 2}, {"data": 3}]})
    answers = await asyncio.gather(*held)
    assert [a.status_code for a in answers] == [200, 200]
    assert app.long_polls == 0
