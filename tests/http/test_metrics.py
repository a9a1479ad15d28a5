"""GET /metrics and GET /v1/throughput over HTTP: the operators' figures appear and move."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from katar import Katar
from katar.core.model import NewTask
from katar.http import App, Limits
from katar.http.auth import Role, Token, digest
from tests.http.conftest import app_client


@pytest.fixture
async def app(katar: Katar) -> App:
    return App(katar.engine, limits=Limits(max_wait=5))


@pytest.fixture
async def http(app: App, via: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(app, via) as client:
        yield client


async def metrics(http: httpx.AsyncClient) -> dict[str, float]:
    """The page's samples, by name with labels as written."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def take(http: httpx.AsyncClient, queue: str, acks: list[dict[str, object]]) -> str:
    """Ack, then take one task (waiting for it up to 5 s); its id."""
    response = await http.post(f"/v1/queue/{queue}", json={"tasks": acks, "wait": 5})
    assert response.status_code == 200, response.text
    task_id: str = response.json()["tasks"][0]["_id"]
    return task_id


async def test_the_task_counters_and_histograms_move(http: httpx.AsyncClient) -> None:
    before = await metrics(http)
    assert before['katar_oldest_queued_seconds{queue="q"}'] == 0
    response = await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": n} for n in range(4)]})
    assert response.status_code == 201
    queued = await metrics(http)
    assert queued['katar_tasks_enqueued_total{queue="q"}'] == 4
    assert queued['katar_oldest_queued_seconds{queue="q"}'] >= 0
    first = await take(http, "q", [])
    second = await take(http, "q", [{"_id": first, "status": "done"}])
    third = await take(http, "q", [{"_id": second, "status": "failed", "error": "boom"}])
    response = await http.post(
        "/v1/queue/q", json={"tasks": [{"_id": third, "status": "done"}], "max": 0}
    )
    assert response.status_code in (200, 204)
    assert (await http.patch(f"/v1/queue/q/tasks/{second}", json={"status": "queued"})).is_success
    page = await http.get("/v1/queue/q/tasks", params={"status": "queued"})
    last = page.json()["tasks"][-1]["_id"]
    assert (await http.patch(f"/v1/queue/q/tasks/{last}", json={"status": "cancelled"})).is_success
    after = await metrics(http)
    assert after['katar_tasks_delivered_total{queue="q"}'] == 3
    assert after['katar_tasks_done_total{queue="q"}'] == 2
    assert after['katar_tasks_failed_total{queue="q"}'] == 1
    assert after['katar_retries_total{queue="q"}'] == 1  # the operator's
    assert after['katar_cancellations_total{queue="q"}'] == 1
    assert after['katar_wait_seconds_count{queue="q"}'] == 3
    assert after['katar_wait_seconds_bucket{queue="q",le="+Inf"}'] == 3
    assert after['katar_run_seconds_count{queue="q"}'] == 3
    assert after['katar_run_seconds_sum{queue="q"}'] >= 0
    buckets = [v for k, v in after.items() if k.startswith('katar_run_seconds_bucket{queue="q"')]
    assert buckets == sorted(buckets)  # cumulative


async def test_a_run_is_timed_whether_the_ack_names_its_task_as_a_string_or_a_number(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": n} for n in range(3)]})
    assert response.status_code == 201
    first = await take(http, "q", [])
    second = await take(http, "q", [{"_id": int(first), "status": "done"}])  # a JSON number
    await take(http, "q", [{"_id": second, "status": "done"}])
    # Not an id as the server writes it: no such task, and no run to time.
    response = await http.post("/v1/queue/q", json={"tasks": [{"_id": "01", "status": "done"}]})
    assert response.status_code == 404
    after = await metrics(http)
    assert after['katar_run_seconds_count{queue="q"}'] == 2
    assert after['katar_wait_seconds_count{queue="q"}'] == 3


async def test_an_expired_lease_is_counted(http: httpx.AsyncClient) -> None:
    # "history": a lease of 200 ms, two attempts.
    assert (await http.post("/v1/queue/history/tasks", json={"data": 1})).status_code == 201
    first = await take(http, "history", [])
    again = await take(http, "history", [])  # delivered again once the lease ran out
    assert again == first
    after = await metrics(http)
    assert after['katar_lease_expiries_total{queue="history"}'] == 1
    assert after['katar_retries_total{queue="history"}'] == 1
    assert 'katar_tasks_failed_total{queue="history"}' not in after  # no failed ack


async def test_polls_held_back_by_a_limit_are_counted_with_the_reason(
    http: httpx.AsyncClient,
) -> None:
    tasks = {"tasks": [{"data": n} for n in range(3)]}
    options = {"persistent": True, "concurrency": 1}
    assert (await http.put("/v1/queue/limited", json=options)).is_success
    assert (await http.post("/v1/queue/limited/tasks", json=tasks)).status_code == 201
    response = await http.post("/v1/queue/limited", json={"max": 3})
    assert len(response.json()["tasks"]) == 1
    rated = {"persistent": True, "rate": {"limit": 1, "period": 60000}}
    assert (await http.put("/v1/queue/rated", json=rated)).is_success
    assert (await http.post("/v1/queue/rated/tasks", json=tasks)).status_code == 201
    response = await http.post("/v1/queue/rated", json={"max": 2})
    assert len(response.json()["tasks"]) == 1
    assert (await http.post("/v1/queue/q/tasks", json=tasks)).status_code == 201
    assert (await http.patch("/v1/queue/q", json={"paused": True})).is_success
    assert (await http.post("/v1/queue/q", json={})).status_code == 204
    after = await metrics(http)
    assert after['katar_limited_polls_total{queue="limited",reason="concurrency"}'] == 1
    assert after['katar_limited_polls_total{queue="rated",reason="rate"}'] == 1
    assert after['katar_limited_polls_total{queue="q",reason="paused"}'] == 1


async def test_a_poll_that_finds_too_few_tasks_is_not_limited(http: httpx.AsyncClient) -> None:
    options = {"persistent": True, "concurrency": 5}
    assert (await http.put("/v1/queue/roomy", json=options)).is_success
    assert (await http.post("/v1/queue/roomy/tasks", json={"data": 1})).status_code == 201
    response = await http.post("/v1/queue/roomy", json={"max": 3})
    assert len(response.json()["tasks"]) == 1
    assert not any(name.startswith("katar_limited_polls") for name in await metrics(http))


async def test_the_throughput_history(app: App, http: httpx.AsyncClient) -> None:
    app.throughput.sample()
    response = await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": n} for n in range(6)]})
    assert response.status_code == 201
    await take(http, "q", [])
    app.throughput.sample()
    response = await http.get("/v1/throughput")
    assert response.status_code == 200, response.text
    history = response.json()
    assert history["interval"] == 2
    last = history["samples"][-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", last["at"])
    rates = last["queues"]["q"]
    assert rates["enqueued"] > 0
    assert rates["done"] == 0
    assert rates["failed"] == 0
    recent = (await http.get("/v1/throughput", params={"seconds": 2})).json()
    assert len(recent["samples"]) <= len(history["samples"])
    refused = await http.get("/v1/throughput", params={"seconds": "soon"})
    assert refused.status_code == 422
    assert "seconds must be a number" in refused.json()["error"]
    assert (await http.get("/v1/throughput", params={"seconds": 1e6})).status_code == 422


async def test_a_producer_sees_the_throughput_of_its_queues_only(katar: Katar, via: str) -> None:
    secret = "katar_producer-of-q"
    token = Token(sha256=digest(secret), role=Role.PRODUCER, queues=frozenset({"q"}))
    app = App(katar.engine, tokens=[token])
    async with app_client(app, via) as http:
        app.throughput.sample()
        for queue in ("q", "plain"):
            await katar.engine.enqueue(queue, [NewTask(data=msgspec.Raw(b"1"))])
        app.throughput.sample()
        headers = {"authorization": f"Bearer {secret}"}
        response = await http.get("/v1/throughput", headers=headers)
        assert response.status_code == 200, response.text
        assert set(response.json()["samples"][-1]["queues"]) == {"q"}
