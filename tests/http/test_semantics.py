"""Section 14's task semantics over HTTP, on every store: dependencies that survive failure
(``after_failure``), the queue option ``expires``, and edit and retry (PATCH with data)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from katar import Katar
from katar.core.clock import FakeClock
from katar.http import App, Limits
from tests.http.conftest import app_client, opened


async def enqueue(client: httpx.AsyncClient, body: dict[str, Any], queue: str = "q") -> list[str]:
    response = await client.post(f"/v1/queue/{queue}/tasks", json=body)
    assert response.status_code == 201, response.text
    return [record["_id"] for record in response.json()["tasks"]]


async def take(client: httpx.AsyncClient, acks: list[dict[str, Any]] | None = None) -> Any:
    response = await client.post("/v1/queue/q", json={"tasks": acks or []})
    return None if response.status_code == 204 else response.json()["tasks"][0]


# -- after_failure --------------------------------------------------------------------------


async def test_a_child_that_runs_anyway_gets_each_parents_outcome(
    client: httpx.AsyncClient,
) -> None:
    ok, bad, cleanup, plain = await enqueue(
        client,
        {
            "tasks": [
                {"data": "ok"},
                {"data": "bad"},
                {"data": "cleanup", "after": ["$0", "$1"], "after_failure": "run"},
                {"data": "plain", "after": ["$0", "$1"]},
            ]
        },
    )
    first = await take(client)
    second = await take(client, [{"_id": first["_id"], "status": "done", "result": {"n": 1}}])
    assert second["_id"] == bad
    delivered = await take(client, [{"_id": bad, "status": "failed", "error": "boom"}])
    assert delivered["_id"] == cleanup
    assert delivered["after"] == {
        ok: {"status": "done", "result": {"n": 1}, "error": None},
        bad: {"status": "failed", "result": None, "error": "boom"},
    }
    record = (await client.get(f"/v1/queue/q/tasks/{plain}")).json()
    assert record["status"] == "cancelled"  # the default: a failed parent cancels it


async def test_a_child_with_the_default_keeps_the_seed_wire_form(
    client: httpx.AsyncClient,
) -> None:
    (parent,) = await enqueue(client, {"data": 1})
    (child,) = await enqueue(client, {"data": 2, "after": [parent], "after_failure": "cancel"})
    first = await take(client)
    delivered = await take(client, [{"_id": first["_id"], "status": "done", "result": 7}])
    assert delivered == {"_id": child, "data": 2, "attempt": 1, "after": {parent: 7}}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"data": 1, "after_failure": "run"}, "after_failure needs after"),
        ({"data": 1, "after": ["1"], "after_failure": "always"}, "$.after_failure"),
        ({"tasks": [{"data": 1}, {"data": 2, "after_failure": "run"}]}, "tasks[1]"),
    ],
)
async def test_a_bad_after_failure_is_422_and_changes_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], fragment: str
) -> None:
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]
    assert (await client.get("/v1/queue/q/tasks")).json()["tasks"] == []


# -- the queue option expires ---------------------------------------------------------------


async def test_a_queue_expires_its_tasks_unless_they_say_otherwise(
    make_url: Callable[[], str], via: str
) -> None:
    clock = FakeClock()
    katar = Katar(make_url(), clock=clock)
    katar.queue("q", persistent=True)
    app = App(katar.engine, limits=Limits(max_wait=5))
    async with opened(katar), app_client(app, via) as client:
        put = await client.patch("/v1/queue/q", json={"expires": 2000})
        assert put.status_code == 200, put.text
        listed = (await client.get("/v1/queues")).json()["queues"]
        assert next(q for q in listed if q["name"] == "q")["options"]["expires"] == 2000
        (short,) = await enqueue(client, {"data": 1})
        (own,) = await enqueue(client, {"data": 2, "expires_in": 10})
        await clock.advance(2000)
        assert (await client.post("/v1/queue/q", json={})).json()["tasks"][0]["_id"] == own
        record = (await client.get(f"/v1/queue/q/tasks/{short}")).json()
        assert record["status"] == "cancelled"
        assert record["error"] == "expired: not delivered within 2 s"


async def test_a_bad_expires_is_422(client: httpx.AsyncClient) -> None:
    for value in (0, -1, 1.5, "soon"):
        response = await client.patch("/v1/queue/q", json={"expires": value})
        assert response.status_code == 422, response.text
        assert "expires" in response.json()["error"]


# -- edit and retry -------------------------------------------------------------------------


async def test_a_failed_task_runs_again_with_new_data(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, {"data": {"to": "typo@"}})
    first = await take(client)
    await take(client, [{"_id": first["_id"], "status": "failed", "error": "bad address"}])
    body = {"status": "queued", "data": {"to": "ok@"}, "priority": "high", "key": "c1"}
    patched = await client.patch(f"/v1/queue/q/tasks/{task_id}", json=body)
    assert patched.status_code == 200, patched.text
    record = patched.json()
    assert (record["status"], record["data"], record["priority"], record["key"]) == (
        "queued",
        {"to": "ok@"},
        10,
        "c1",
    )
    again = await take(client)
    assert again["data"] == {"to": "ok@"}
    assert again["attempt"] == 2
    await take(client, [{"_id": task_id, "status": "done"}])
    record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
    assert [(d["attempt"], d["outcome"]) for d in record["history"]] == [
        (1, "failed"),
        (2, "done"),
    ]


async def test_a_queued_or_paused_task_is_edited_in_place(client: httpx.AsyncClient) -> None:
    waiting, held = await enqueue(
        client, {"tasks": [{"data": 1, "delay": 3600}, {"data": 2, "status": "paused"}]}
    )
    edited = await client.patch(
        f"/v1/queue/q/tasks/{waiting}", json={"status": "queued", "data": 3}
    )
    assert edited.status_code == 200
    assert edited.json()["data"] == 3
    assert edited.json()["run_at"] is not None  # its delay stands
    resumed = await client.patch(f"/v1/queue/q/tasks/{held}", json={"status": "queued", "data": 4})
    assert resumed.json()["status"] == "queued"
    assert (await take(client))["data"] == 4


async def test_edit_and_retry_refuses_what_it_cannot_do(client: httpx.AsyncClient) -> None:
    running, done = await enqueue(client, {"tasks": [{"data": 1}, {"data": 2}]})
    first = await take(client)
    assert first["_id"] == running
    second = await take(client)
    await take(client, [{"_id": second["_id"], "status": "done"}])
    for task_id in (running, done):
        response = await client.patch(
            f"/v1/queue/q/tasks/{task_id}", json={"status": "queued", "data": 9}
        )
        assert response.status_code == 409, response.text
        record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
        assert record["data"] in (1, 2)
    wrong = await client.patch(
        f"/v1/queue/q/tasks/{running}", json={"status": "cancelled", "data": 9}
    )
    assert wrong.status_code == 422
    assert (await client.get(f"/v1/queue/q/tasks/{running}")).json()["status"] == "in progress"


async def test_an_edit_is_held_to_max_task_bytes(make_url: Callable[[], str], via: str) -> None:
    katar = Katar(make_url())
    katar.queue("q", persistent=True)
    app = App(katar.engine, limits=Limits(max_task_bytes=1024))
    async with opened(katar), app_client(app, via) as client:
        (task_id,) = await enqueue(client, {"data": 1, "status": "paused"})
        big = {"status": "queued", "data": "x" * 2000}
        response = await client.patch(f"/v1/queue/q/tasks/{task_id}", json=big)
        assert response.status_code == 413, response.text
        record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
        assert (record["status"], record["data"]) == ("paused", 1)


async def test_outcomes_past_the_answer_bound_are_left_out_and_named(
    katar: Katar, via: str
) -> None:
    """A child that runs anyway, of 40 parents that failed or were done with 3,000 bytes
    each: its delivery stays within max_answer_bytes, the outcomes left out named in
    after_omitted, as the results of a default child are."""
    limits = Limits(max_task_bytes=1000, max_answer_bytes=64 * 1024 + 1000)
    async with app_client(App(katar.engine, limits=limits), via) as client:
        refs = [f"${n}" for n in range(40)]
        body = {
            "tasks": [
                *({"data": n} for n in range(40)),
                {"data": "report", "after": refs, "after_failure": "run"},
            ]
        }
        *parents, child = await enqueue(client, body)
        delivered = (await client.post("/v1/queue/q", json={"max": 40})).json()["tasks"]
        acks = [
            {"_id": t["_id"], "status": "done", "result": {"rows": "r" * 3000}}
            if n % 2
            else {"_id": t["_id"], "status": "failed", "error": "e" * 900}
            for n, t in enumerate(delivered)
        ]
        assert (await client.post("/v1/queue/q", json={"tasks": acks, "max": 0})).status_code == 204
        answer = await client.post("/v1/queue/q", json={"max": 1})
        assert len(answer.content) <= limits.max_answer_bytes
        (delivery,) = answer.json()["tasks"]
        assert delivery["_id"] == child
        after, omitted = delivery["after"], delivery["after_omitted"]
        assert after
        assert omitted
        assert sorted([*after, *omitted], key=int) == parents
        assert {outcome["status"] for outcome in after.values()} == {"done", "failed"}
