"""Enqueue with run_at (contract section 7): an absolute time instead of a delay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest


def _iso(when: datetime) -> str:
    return when.isoformat()


async def test_run_at_holds_a_task_back_until_then(client: httpx.AsyncClient) -> None:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    response = await client.post("/v1/queue/q/tasks", json={"data": 1, "run_at": _iso(later)})
    assert response.status_code == 201, response.text
    (record,) = response.json()["tasks"]
    assert record["status"] == "queued"
    assert record["run_at"] == later.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert (await client.post("/v1/queue/q", json={})).status_code == 204


@pytest.mark.parametrize(
    "run_at",
    [
        "2001-01-01T00:00:00Z",  # a time that has passed means now
        "2001-01-01T00:00:00",  # no zone: UTC
        "2001-01-01 01:00:00+01:00",
        "2001-01-01",
    ],
)
async def test_a_past_run_at_means_now(client: httpx.AsyncClient, run_at: str) -> None:
    response = await client.post("/v1/queue/q/tasks", json={"data": 1, "run_at": run_at})
    assert response.status_code == 201, response.text
    assert response.json()["tasks"][0]["run_at"] is None
    polled = await client.post("/v1/queue/q", json={})
    assert polled.status_code == 200
    assert polled.json()["tasks"][0]["data"] == 1


async def test_run_at_in_a_naive_time_is_utc(client: httpx.AsyncClient) -> None:
    later = datetime.now(UTC).replace(microsecond=0, tzinfo=None) + timedelta(days=2)
    response = await client.post(
        "/v1/queue/q/tasks", json={"tasks": [{"data": 1, "run_at": later.isoformat()}]}
    )
    assert response.status_code == 201, response.text
    assert response.json()["tasks"][0]["run_at"] == later.isoformat() + ".000Z"


@pytest.mark.storeless
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"data": 1, "delay": 5, "run_at": "2030-01-01T00:00:00Z"}, "not both"),
        ({"data": 1, "delay": 0, "run_at": "2030-01-01T00:00:00Z"}, "not both"),
        ({"tasks": [{"data": 1, "run_at": "tomorrow"}]}, "tasks[0]: invalid run_at 'tomorrow'"),
        ({"data": 1, "run_at": 1893456000}, "$.run_at"),
        ({"data": 1, "run_at": "9999-01-01T00:00:00Z"}, "at most ten years ahead"),
    ],
)
async def test_bad_run_at_is_422_and_changes_nothing(
    client: httpx.AsyncClient, body: dict[str, object], fragment: str
) -> None:
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]
    assert (await client.get("/v1/queue/q/tasks")).json()["tasks"] == []
