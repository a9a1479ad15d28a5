"""Long-running work over HTTP (contract section 9), on every store: progress in heartbeats,
and cancelling a task in progress (202, the poll's ``cancel`` list)."""

from __future__ import annotations

import asyncio

import httpx

from tests.http.conftest import enqueue


async def take(client: httpx.AsyncClient, queue: str = "q", worker: str = "w1") -> str:
    response = await client.post(f"/v1/queue/{queue}", json={"worker": worker})
    assert response.status_code == 200, response.text
    task_id: str = response.json()["tasks"][0]["_id"]
    return task_id


async def record(client: httpx.AsyncClient, task_id: str, queue: str = "q") -> dict[str, object]:
    response = await client.get(f"/v1/queue/{queue}/tasks/{task_id}")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


async def heartbeat(
    client: httpx.AsyncClient, task_id: str, queue: str = "q", **fields: object
) -> httpx.Response:
    ack = {"_id": task_id, "status": "in progress", **fields}
    return await client.post(f"/v1/queue/{queue}", json={"tasks": [ack], "max": 0, "worker": "w1"})


async def test_heartbeat_progress_is_in_the_record(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": 1})
    task_id = await take(client)
    fresh = await record(client, task_id)
    assert fresh["progress"] is None
    assert fresh["cancel_requested"] is False
    answer = await heartbeat(client, task_id, progress={"done": 40, "of": 100})
    assert answer.status_code == 204  # nothing to take, nothing to stop
    assert (await record(client, task_id))["progress"] == {"done": 40, "of": 100}
    await heartbeat(client, task_id, progress="nearly")
    await heartbeat(client, task_id)  # no progress: the last one stays
    assert (await record(client, task_id))["progress"] == "nearly"
    done = {"_id": task_id, "status": "done", "result": 1}
    assert (await client.post("/v1/queue/q", json={"tasks": [done], "worker": "w1"})).status_code
    final = await record(client, task_id)
    assert final["status"] == "done"
    assert final["progress"] == "nearly"


async def test_progress_nested_too_deep_is_refused(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": 1})
    task_id = await take(client)
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    answer = await heartbeat(client, task_id, progress=deep)
    assert answer.status_code == 400
    assert "progress" in answer.json()["error"]
    assert (await record(client, task_id))["progress"] is None


async def test_cancel_of_a_task_in_progress_is_accepted_then_told_to_its_worker(
    client: httpx.AsyncClient,
) -> None:
    await enqueue(client, "q", {"data": 1}, {"data": 2})
    task_id = await take(client)
    patched = await client.patch(f"/v1/queue/q/tasks/{task_id}", json={"status": "cancelled"})
    assert patched.status_code == 202
    assert patched.json()["status"] == "in progress"
    assert patched.json()["cancel_requested"] is True
    again = await client.patch(f"/v1/queue/q/tasks/{task_id}", json={"status": "cancelled"})
    assert again.status_code == 202
    assert again.json()["updated_at"] == patched.json()["updated_at"]  # no change
    # The heartbeat's answer: 200 with the task to stop, even with no task to take.
    answer = await heartbeat(client, task_id, progress=[1])
    assert answer.status_code == 200
    assert answer.json() == {"tasks": [], "cancel": [task_id]}
    cancelled = await record(client, task_id)
    assert cancelled["status"] == "cancelled"
    assert "operator" in str(cancelled["error"])
    # The worker's late "done" is a silent no-op.
    late = {"_id": task_id, "status": "done", "result": 9, "attempt": 1}
    answer = await client.post("/v1/queue/q", json={"tasks": [late], "max": 0, "worker": "w1"})
    assert answer.status_code == 204
    assert (await record(client, task_id))["status"] == "cancelled"
    # Once cancelled, a cancel is the plain 200 of a task that already has that status.
    final = await client.patch(f"/v1/queue/q/tasks/{task_id}", json={"status": "cancelled"})
    assert final.status_code == 200


async def test_a_heartbeat_that_also_takes_gets_tasks_and_cancel(
    client: httpx.AsyncClient,
) -> None:
    ids = await enqueue(client, "q", {"data": 1}, {"data": 2})
    task_id = await take(client)
    await client.patch(f"/v1/queue/q/tasks/{task_id}", json={"status": "cancelled"})
    ack = {"_id": task_id, "status": "in progress", "attempt": 1}
    answer = await client.post("/v1/queue/q", json={"tasks": [ack], "max": 1, "worker": "w1"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["cancel"] == [task_id]
    assert [t["_id"] for t in body["tasks"]] == [ids[1]]


async def test_a_long_poll_with_a_cancelled_heartbeat_answers_at_once(
    client: httpx.AsyncClient,
) -> None:
    await enqueue(client, "q", {"data": 1})
    task_id = await take(client)
    await client.patch(f"/v1/queue/q/tasks/{task_id}", json={"status": "cancelled"})
    ack = {"_id": task_id, "status": "in progress"}
    body = {"tasks": [ack], "max": 1, "wait": 5, "worker": "w1"}
    answer = await asyncio.wait_for(client.post("/v1/queue/q", json=body), 4)
    assert answer.status_code == 200
    assert answer.json() == {"tasks": [], "cancel": [task_id]}


async def test_an_ack_without_heartbeat_ends_the_task_cancelled(client: httpx.AsyncClient) -> None:
    await enqueue(client, "plain", {"data": 1})
    task_id = await take(client, "plain")
    assert (
        await client.patch(f"/v1/queue/plain/tasks/{task_id}", json={"status": "cancelled"})
    ).status_code == 202
    done = {"_id": task_id, "status": "done", "result": 1}
    answer = await client.post("/v1/queue/plain", json={"tasks": [done], "worker": "w1"})
    assert answer.status_code == 204
    final = await record(client, task_id, "plain")  # kept: a cancelled task is not dropped
    assert final["status"] == "cancelled"
    assert final["result"] is None


async def test_a_lease_that_ends_after_a_cancel_cancels_and_wakes_the_waiters(
    client: httpx.AsyncClient,
) -> None:
    # "history": a lease of 200 ms. A producer waits for the outcome over HTTP.
    await enqueue(client, "history", {"data": 1})
    task_id = await take(client, "history")
    patched = await client.patch(f"/v1/queue/history/tasks/{task_id}", json={"status": "cancelled"})
    assert patched.status_code == 202
    waited = await client.get(f"/v1/queue/history/tasks/{task_id}?wait=4")
    assert waited.status_code == 200
    assert waited.json()["status"] == "cancelled"
    assert (await client.post("/v1/queue/history", json={})).status_code == 204


async def test_a_wait_on_the_outcome_sees_the_heartbeat_cancel(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": 1})
    task_id = await take(client)
    await client.patch(f"/v1/queue/q/tasks/{task_id}", json={"status": "cancelled"})
    waiting = asyncio.create_task(client.get(f"/v1/queue/q/tasks/{task_id}?wait=4"))
    await asyncio.sleep(0.05)
    assert (await heartbeat(client, task_id)).json()["cancel"] == [task_id]
    waited = await asyncio.wait_for(waiting, 4)
    assert waited.json()["status"] == "cancelled"


async def test_pause_of_a_task_in_progress_stays_refused(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": 1})
    task_id = await take(client)
    answer = await client.patch(f"/v1/queue/q/tasks/{task_id}", json={"status": "paused"})
    assert answer.status_code == 409
    assert (await record(client, task_id))["cancel_requested"] is False
