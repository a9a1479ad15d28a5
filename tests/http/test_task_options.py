"""Per-task options and unique keys over HTTP: the fields, their 422s, 200 against 201, the
delivered task's timeout, and expiry on time (on a fake clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from katar import Katar
from katar.core.clock import FakeClock
from katar.http import App, Limits
from tests.http.conftest import app_client, opened


@pytest.mark.storeless
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"data": 1, "unique_for": 10}, "unique_for needs a unique_key"),
        ({"tasks": [{"data": 1}, {"data": 2, "unique_for": 1}]}, "tasks[1]: unique_for needs"),
        ({"data": 1, "unique_key": ""}, "$.unique_key"),
        ({"data": 1, "unique_key": "x" * 256}, "$.unique_key"),
        ({"data": 1, "unique_key": "a\nb"}, "printable"),
        ({"data": 1, "unique_key": 5}, "$.unique_key"),
        ({"data": 1, "unique_key": "k", "unique_for": 0}, "$.unique_for"),
        ({"data": 1, "unique_key": "k", "unique_for": "soon"}, "$.unique_for"),
        ({"data": 1, "timeout": 0}, "$.timeout"),
        ({"data": 1, "timeout": 2**31}, "$.timeout"),
        ({"data": 1, "timeout": 1.5}, "$.timeout"),
        ({"data": 1, "timeout": "fast"}, "$.timeout"),
        ({"data": 1, "max_attempts": -1}, "$.max_attempts"),
        ({"data": 1, "max_attempts": True}, "$.max_attempts"),
        ({"data": 1, "expires_in": 0}, "$.expires_in"),
        ({"data": 1, "expires_in": -3}, "$.expires_in"),
        ({"data": 1, "expires_in": [1]}, "$.expires_in"),
    ],
)
async def test_bad_task_options_are_422_and_change_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], fragment: str
) -> None:
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]
    assert (await client.get("/v1/queue/q/tasks")).json()["tasks"] == []


async def test_records_show_the_task_options(client: httpx.AsyncClient) -> None:
    body = {
        "data": 1,
        "timeout": 5000,
        "max_attempts": 0,
        "expires_in": 60,
        "unique_key": "order-7",
        "unique_for": 3600,
    }
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 201
    (record,) = response.json()["tasks"]
    assert record["timeout"] == 5000
    assert record["max_attempts"] == 0
    assert record["expires_at"].endswith("Z")
    assert record["unique_key"] == "order-7"
    assert record["unique_until"].endswith("Z")
    assert record["duplicate"] is False
    plain = (await client.post("/v1/queue/q/tasks", json={"data": 2})).json()["tasks"][0]
    for field in ("timeout", "max_attempts", "expires_at", "unique_key", "unique_until"):
        assert plain[field] is None
    assert plain["duplicate"] is False
    got = (await client.get(f"/v1/queue/q/tasks/{record['_id']}")).json()
    assert got["timeout"] == 5000
    assert got["unique_key"] == "order-7"


async def test_a_duplicate_is_200_with_the_existing_task(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/queue/q/tasks", json={"data": 1, "unique_key": "k"})
    assert first.status_code == 201
    again = await client.post("/v1/queue/q/tasks", json={"data": 2, "unique_key": "k"})
    assert again.status_code == 200
    (record,) = again.json()["tasks"]
    assert record["duplicate"] is True
    assert record["_id"] == first.json()["tasks"][0]["_id"]
    assert record["data"] == 1
    mixed = await client.post(
        "/v1/queue/q/tasks",
        json={"tasks": [{"data": 3, "unique_key": "k"}, {"data": 4, "unique_key": "j"}]},
    )
    assert mixed.status_code == 201  # something was created
    assert [r["duplicate"] for r in mixed.json()["tasks"]] == [True, False]
    # With an Idempotency-Key, a repeat answers the same status again.
    headers = {"Idempotency-Key": "once"}
    body = {"data": 5, "unique_key": "k"}
    assert (await client.post("/v1/queue/q/tasks", json=body, headers=headers)).status_code == 200
    repeat = await client.post("/v1/queue/q/tasks", json=body, headers=headers)
    assert repeat.status_code == 200
    assert repeat.json()["tasks"][0]["duplicate"] is True
    listed = (await client.get("/v1/queue/q/tasks")).json()["tasks"]
    assert len(listed) == 2


async def test_a_delivery_carries_the_task_timeout(client: httpx.AsyncClient) -> None:
    await client.post(
        "/v1/queue/q/tasks", json={"tasks": [{"data": 1, "timeout": 1234}, {"data": 2}]}
    )
    delivered = (await client.post("/v1/queue/q", json={"max": 2})).json()["tasks"]
    assert delivered[0]["timeout"] == 1234
    assert "timeout" not in delivered[1]


async def test_expiry_happens_on_time(make_url: Callable[[], str], via: str) -> None:
    clock = FakeClock()
    katar = Katar(make_url(), clock=clock)
    katar.queue("q", persistent=True)
    app = App(katar.engine, limits=Limits(max_wait=5))
    async with opened(katar), app_client(app, via) as client:
        created = await client.post("/v1/queue/q/tasks", json={"data": 1, "expires_in": 2.5})
        task_id = created.json()["tasks"][0]["_id"]
        await clock.advance(2499)
        record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
        assert record["status"] == "queued"
        await clock.advance(1)
        # A poll reaps what is due first (or waits for the reap under way): it finds no task.
        assert (await client.post("/v1/queue/q", json={})).status_code == 204
        record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
        assert record["status"] == "cancelled"
        assert record["error"] == "expired: not delivered within 2.5 s"


async def test_a_task_timeout_ends_its_lease_on_time(make_url: Callable[[], str], via: str) -> None:
    clock = FakeClock()
    katar = Katar(make_url(), clock=clock)
    katar.queue("q", persistent=True, timeout=60000)
    app = App(katar.engine, limits=Limits(max_wait=5))
    async with opened(katar), app_client(app, via) as client:
        created = await client.post("/v1/queue/q/tasks", json={"data": 1, "timeout": 300})
        task_id = created.json()["tasks"][0]["_id"]
        assert (await client.post("/v1/queue/q", json={})).status_code == 200
        await clock.advance(300)
        again = (await client.post("/v1/queue/q", json={})).json()["tasks"][0]
        assert again["attempt"] == 2
        assert again["timeout"] == 300
        record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
        assert record["status"] == "in progress"
        assert record["error"] == "lease expired: no ack within 300 ms of delivery 1"
