"""Trace context over HTTP (protocol section 17): the enqueue's traceparent and tracestate
headers, a batch's per-task ``trace``, malformed values ignored as the W3C says, and every
delivery and record carrying what was stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OTHER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


async def _poll(client: httpx.AsyncClient, max_tasks: int = 10) -> list[dict[str, Any]]:
    response = await client.post("/v1/queue/q", json={"max": max_tasks})
    assert response.status_code == 200, response.text
    tasks: list[dict[str, Any]] = response.json()["tasks"]
    return tasks


async def test_headers_are_stored_on_every_task_and_delivered(client: httpx.AsyncClient) -> None:
    headers = {"traceparent": PARENT, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"}
    response = await client.post(
        "/v1/queue/q/tasks", json={"tasks": [{"data": 1}, {"data": 2}]}, headers=headers
    )
    assert response.status_code == 201, response.text
    trace = {"traceparent": PARENT, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"}
    assert [task["trace"] for task in response.json()["tasks"]] == [trace, trace]
    delivered = await _poll(client)
    assert [(task["data"], task["trace"]) for task in delivered] == [(1, trace), (2, trace)]
    record = (await client.get(f"/v1/queue/q/tasks/{delivered[0]['_id']}")).json()
    assert record["trace"] == trace


async def test_a_batch_task_carries_its_own_trace(client: httpx.AsyncClient) -> None:
    body = {"tasks": [{"data": 1}, {"data": 2, "trace": {"traceparent": OTHER}}, {"data": 3}]}
    response = await client.post("/v1/queue/q/tasks", json=body, headers={"traceparent": PARENT})
    assert response.status_code == 201, response.text
    delivered = await _poll(client)
    assert [task.get("trace") for task in delivered] == [
        {"traceparent": PARENT},
        {"traceparent": OTHER},
        {"traceparent": PARENT},
    ]


async def test_tasks_without_context_carry_no_trace(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queue/q/tasks", json={"data": 1})
    assert response.json()["tasks"][0]["trace"] is None
    (delivered,) = await _poll(client)
    assert "trace" not in delivered  # the seed protocol's delivery, unchanged


@pytest.mark.parametrize(
    "traceparent",
    [
        "not a traceparent",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero parent id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "",
    ],
)
async def test_a_malformed_traceparent_is_ignored(
    client: httpx.AsyncClient, traceparent: str
) -> None:
    # W3C Trace Context: a receiver that cannot parse the traceparent ignores it (and its
    # tracestate); the request is not refused.
    headers = {"traceparent": traceparent, "tracestate": "a=b"}
    response = await client.post("/v1/queue/q/tasks", json={"data": 1}, headers=headers)
    assert response.status_code == 201, response.text
    (delivered,) = await _poll(client)
    assert "trace" not in delivered
    body = {"tasks": [{"data": 2, "trace": {"traceparent": traceparent}}]}
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["tasks"][0]["trace"] is None


async def test_a_malformed_tracestate_is_left_out(client: httpx.AsyncClient) -> None:
    for tracestate in ("x" * 513, "caf\u00e9=1"):
        headers = {"traceparent": PARENT, "tracestate": tracestate}
        response = (
            await client.post("/v1/queue/q/tasks", content=b'{"data":1}', headers=headers)
            if tracestate.isascii()
            else await client.post(
                "/v1/queue/q/tasks",
                json={"data": 1, "trace": {"traceparent": PARENT, "tracestate": tracestate}},
            )
        )
        assert response.status_code == 201, response.text
        assert response.json()["tasks"][0]["trace"] == {"traceparent": PARENT}


async def test_two_traceparent_headers_are_ignored(client: httpx.AsyncClient) -> None:
    headers = [("traceparent", PARENT), ("traceparent", OTHER)]
    response = await client.post("/v1/queue/q/tasks", json={"data": 1}, headers=headers)
    assert response.status_code == 201
    assert response.json()["tasks"][0]["trace"] is None


async def test_a_trace_object_of_the_wrong_shape_is_422(client: httpx.AsyncClient) -> None:
    for trace in ("00-x", {"tracestate": "a=b"}, {"traceparent": 5}):
        response = await client.post("/v1/queue/q/tasks", json={"data": 1, "trace": trace})
        assert response.status_code == 422, response.text
        assert "$.trace" in response.json()["error"]
    assert (await client.get("/v1/queue/q/tasks")).json()["tasks"] == []


async def test_the_trace_survives_a_retry(client: httpx.AsyncClient) -> None:
    await client.put("/v1/queue/q", json={"retry_failed": True, "retry_delay": 0})
    response = await client.post(
        "/v1/queue/q/tasks", json={"data": 1}, headers={"traceparent": PARENT}
    )
    assert response.status_code == 201
    (first,) = await _poll(client)
    ack = {"tasks": [{"_id": first["_id"], "status": "failed", "error": "x"}], "max": 1}
    response = await client.post("/v1/queue/q", json=ack)
    (again,) = response.json()["tasks"]
    assert again["attempt"] == 2
    assert again["trace"] == {"traceparent": PARENT}
