"""The worker protocol (contract sections 1 and 2) over HTTP, on every store.

The first tests port the original katar-worker-http test cases; where the original answered
500 to a client's mistake (an unknown id, an invalid status), Katar answers 4xx.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from katar import Katar, WorkerServer
from katar.core.clock import FakeClock
from katar.http import App, Limits
from tests.http.conftest import app_client, enqueue, eventually, opened

# -- the original katar-worker-http cases ------------------------------------------------


async def test_default_configuration(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/queue/q")
    assert response.status_code == 200
    assert response.json() == {"configuration": {"interval": 30000}}
    assert response.headers["katar-lease-timeout"] == "60000"


async def test_custom_configuration() -> None:
    katar = Katar("memory://")
    queue = katar.queue("emails", persistent=False)
    server = WorkerServer(katar=katar, port=3000, host="127.0.0.1")
    server.config(queue, {"interval": 1000, "custom": "config"})
    assert server.config("emails") == {"interval": 1000, "custom": "config"}
    transport = httpx.ASGITransport(app=server.app)  # without tokens: a loopback Host
    base = "http://127.0.0.1:3000"
    async with katar, httpx.AsyncClient(transport=transport, base_url=base) as client:
        response = await client.get("/v1/queue/emails")
    assert response.json() == {"configuration": {"interval": 1000, "custom": "config"}}


async def test_unknown_queue_is_404_on_get_and_post(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/v1/queue/nope"),
        await client.post("/v1/queue/nope", json={}),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "Queue not found"


async def test_empty_queue_is_204(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queue/q", json={})
    assert response.status_code == 204
    assert response.content == b""


async def test_queue_with_only_paused_tasks_is_204(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": 1, "status": "paused"}, {"data": 2, "status": "paused"})
    assert (await client.post("/v1/queue/q", json={})).status_code == 204


async def test_eligible_task_is_200(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": "data"})
    response = await client.post("/v1/queue/q", json={})
    assert response.status_code == 200
    assert response.json() == {"tasks": [{"_id": task_id, "data": "data", "attempt": 1}]}


async def test_ack_and_next_in_one_call_then_204_after_the_last(client: httpx.AsyncClient) -> None:
    first, second = await enqueue(client, "plain", {"data": "a"}, {"data": "b"})
    delivered = (await client.post("/v1/queue/plain", json={})).json()["tasks"]
    assert [t["_id"] for t in delivered] == [first]
    response = await client.post(
        "/v1/queue/plain", json={"tasks": [{"_id": first, "status": "done"}]}
    )
    assert response.status_code == 200
    assert [t["_id"] for t in response.json()["tasks"]] == [second]
    acks = {"tasks": [{"_id": second, "status": "failed", "error": "some error"}]}
    response = await client.post("/v1/queue/plain", json=acks)
    assert response.status_code == 204


async def test_an_unknown_task_id_is_404_not_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/queue/q", json={"tasks": [{"_id": "424242", "status": "done"}]}
    )
    assert response.status_code == 404
    assert response.json() == {"error": "no task '424242' in queue 'q'", "_id": "424242", "ack": 0}


@pytest.mark.storeless
async def test_an_invalid_ack_status_is_422_not_500(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    await client.post("/v1/queue/q", json={})
    response = await client.post("/v1/queue/q", json={"tasks": [{"_id": task_id, "status": "ok"}]})
    assert response.status_code == 422
    message = response.json()["error"]
    assert "$.tasks[0].status" in message
    assert "done, failed, in progress" in message


# -- order, history, transitions -------------------------------------------------------------


async def test_priority_then_fifo(client: httpx.AsyncClient) -> None:
    ids = await enqueue(
        client,
        "q",
        {"data": "n1"},
        {"data": "low", "priority": "low"},
        {"data": "high", "priority": "high"},
        {"data": "n2", "priority": "normal"},
        {"data": "p3", "priority": 3},
    )
    response = await client.post("/v1/queue/q", json={"max": 10})
    assert [t["data"] for t in response.json()["tasks"]] == ["high", "p3", "n1", "n2", "low"]
    assert len(ids) == 5


async def test_persistent_queue_keeps_history_and_result(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": {"n": 1}})
    await client.post("/v1/queue/q", json={})
    ack = {"_id": task_id, "status": "done", "result": {"sent": ["x"]}}
    await client.post("/v1/queue/q", json={"tasks": [ack]})
    record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
    assert record["status"] == "done"
    assert record["result"] == {"sent": ["x"]}
    assert record["data"] == {"n": 1}
    assert record["attempts"] == 1


async def test_queue_without_history_deletes_finished_tasks(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "plain", {"data": 1})
    await client.post("/v1/queue/plain", json={})
    await client.post("/v1/queue/plain", json={"tasks": [{"_id": task_id, "status": "done"}]})
    assert (await client.get(f"/v1/queue/plain/tasks/{task_id}")).status_code == 404
    # Repeating the ack after the task is gone is still fine: acks are idempotent.
    repeat = await client.post(
        "/v1/queue/plain", json={"tasks": [{"_id": task_id, "status": "done"}]}
    )
    assert repeat.status_code == 204


async def test_repeated_acks_change_nothing(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    await client.post("/v1/queue/q", json={})
    for _ in range(3):
        response = await client.post(
            "/v1/queue/q", json={"tasks": [{"_id": task_id, "status": "done"}]}
        )
        assert response.status_code == 204
    late = {"tasks": [{"_id": task_id, "status": "failed", "error": "late"}]}
    assert (await client.post("/v1/queue/q", json=late)).status_code == 204
    assert (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()["status"] == "done"


async def test_one_bad_ack_changes_nothing(client: httpx.AsyncClient) -> None:
    first, second = await enqueue(client, "q", {"data": 1}, {"data": 2})
    await client.post("/v1/queue/q", json={"max": 2})
    acks = [{"_id": first, "status": "done"}, {"_id": "999999", "status": "done"}]
    response = await client.post("/v1/queue/q", json={"tasks": acks})
    assert response.status_code == 404
    assert response.json()["ack"] == 1
    for task_id in (first, second):
        assert (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()["status"] == "in progress"


async def test_status_transitions_over_patch(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    url = f"/v1/queue/q/tasks/{task_id}"

    async def patch(status: str) -> httpx.Response:
        return await client.patch(url, json={"status": status})

    assert (await patch("paused")).json()["status"] == "paused"
    assert (await client.post("/v1/queue/q", json={})).status_code == 204
    assert (await patch("queued")).json()["status"] == "queued"
    assert (await patch("cancelled")).json()["status"] == "cancelled"
    conflict = await patch("paused")
    assert conflict.status_code == 409
    assert conflict.json()["status"] == "cancelled"
    assert (await patch("queued")).json()["status"] == "queued"
    await client.post("/v1/queue/q", json={})
    in_progress = await patch("paused")  # a cancel is 202: see test_long_running
    assert in_progress.status_code == 409
    assert "in progress" in in_progress.json()["error"]
    assert (await patch("done")).status_code == 422
    await client.post("/v1/queue/q", json={"tasks": [{"_id": task_id, "status": "failed"}]})
    retried = await patch("queued")
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    # A retry keeps the delivery count and the last error (docs/protocol.md, PATCH).
    assert retried.json()["attempts"] == 1
    assert retried.json()["error"] == "failed"
    (delivery,) = (await client.post("/v1/queue/q", json={})).json()["tasks"]
    assert delivery["attempt"] == 2
    assert (
        await client.patch("/v1/queue/q/tasks/999999", json={"status": "paused"})
    ).status_code == 404


async def test_an_ack_for_a_task_never_delivered_is_409(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    response = await client.post(
        "/v1/queue/q", json={"tasks": [{"_id": task_id, "status": "done"}]}
    )
    assert response.status_code == 409
    assert "not been delivered" in response.json()["error"]


# -- leases, fencing, heartbeats ------------------------------------------------------------


async def test_expired_lease_redelivers_with_the_attempt_count(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "history", {"data": 1})
    first = (await client.post("/v1/queue/history", json={})).json()["tasks"][0]
    assert first["attempt"] == 1
    redelivered: list[dict[str, object]] = []

    async def again() -> bool:
        response = await client.post("/v1/queue/history", json={})
        if response.status_code == 200:
            redelivered.extend(response.json()["tasks"])
        return bool(redelivered)

    await eventually(again)
    assert redelivered[0] == {"_id": task_id, "data": 1, "attempt": 2}
    # The first worker's late ack is fenced off; the second worker's counts.
    stale = {"tasks": [{"_id": task_id, "status": "failed", "attempt": 1}]}
    assert (await client.post("/v1/queue/history", json=stale)).status_code == 204
    record = (await client.get(f"/v1/queue/history/tasks/{task_id}")).json()
    assert record["status"] == "in progress"
    assert record["attempts"] == 2
    done = {"tasks": [{"_id": task_id, "status": "done", "attempt": 2}]}
    assert (await client.post("/v1/queue/history", json=done)).status_code == 204
    assert (await client.get(f"/v1/queue/history/tasks/{task_id}")).json()["status"] == "done"


async def test_lease_expiry_fails_the_task_when_attempts_are_spent(
    client: httpx.AsyncClient,
) -> None:
    (task_id,) = await enqueue(client, "history", {"data": 1})

    async def failed() -> bool:
        await client.post("/v1/queue/history", json={})
        record = (await client.get(f"/v1/queue/history/tasks/{task_id}")).json()
        return bool(record["status"] == "failed")

    await eventually(failed)
    record = (await client.get(f"/v1/queue/history/tasks/{task_id}")).json()
    assert record["attempts"] == 2
    assert "lease expired" in record["error"]


async def test_heartbeats_keep_the_lease(make_url: Callable[[], str], via: str) -> None:
    # On a fake clock: real sleeps stretch under load past the lease, and fail the test.
    clock = FakeClock()
    katar = Katar(make_url(), clock=clock)
    katar.queue("history", persistent=True, timeout=200, max_attempts=2)
    app = App(katar.engine, limits=Limits(max_wait=5))
    async with opened(katar), app_client(app, via) as client:
        (task_id,) = await enqueue(client, "history", {"data": 1})
        await client.post("/v1/queue/history", json={"worker": "w-1"})
        beat = {"tasks": [{"_id": task_id, "status": "in progress", "attempt": 1}]}
        for _ in range(8):  # 8 x 150 ms: six times the 200 ms lease
            assert (await client.post("/v1/queue/history", json=beat)).status_code == 204
            await clock.advance(150)
        record = (await client.get(f"/v1/queue/history/tasks/{task_id}")).json()
        assert record["status"] == "in progress"
        assert record["attempts"] == 1
        assert record["worker"] == "w-1"
        await clock.advance(50)  # 200 ms after the last heartbeat: the lease ends
        again = (await client.post("/v1/queue/history", json={})).json()
        assert again["tasks"][0]["attempt"] == 2


async def test_attempt_never_delivered_is_409(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    await client.post("/v1/queue/q", json={})
    ack = {"tasks": [{"_id": task_id, "status": "done", "attempt": 2}]}
    assert (await client.post("/v1/queue/q", json=ack)).status_code == 409


async def test_failed_with_retry(client: httpx.AsyncClient) -> None:
    await client.put("/v1/queue/retrying", json={"retry_delay": 0, "max_attempts": 3})
    (task_id,) = await enqueue(client, "retrying", {"data": 1})
    await client.post("/v1/queue/retrying", json={})
    ack = {"tasks": [{"_id": task_id, "status": "failed", "error": "flaky", "retry": True}]}
    response = await client.post("/v1/queue/retrying", json=ack)
    assert response.json()["tasks"] == [{"_id": task_id, "data": 1, "attempt": 2}]


# -- batches and long polls -------------------------------------------------------------------


async def test_max_takes_a_batch_capped_by_the_queue(client: httpx.AsyncClient) -> None:
    await client.put("/v1/queue/small", json={"max_batch": 3})
    await enqueue(client, "small", *({"data": i} for i in range(5)))
    response = await client.post("/v1/queue/small", json={"max": 100})
    assert [t["data"] for t in response.json()["tasks"]] == [0, 1, 2]
    assert (await client.post("/v1/queue/small", json={"max": -1})).status_code == 422


async def test_max_0_applies_acks_and_takes_nothing(client: httpx.AsyncClient) -> None:
    first, _second = await enqueue(client, "q", {"data": 1}, {"data": 2})
    await client.post("/v1/queue/q", json={})
    acks = {"tasks": [{"_id": first, "status": "done"}], "max": 0, "wait": 2}
    response = await client.post("/v1/queue/q", json=acks)
    assert response.status_code == 204
    assert (await client.get(f"/v1/queue/q/tasks/{first}")).json()["status"] == "done"
    queued = (await client.get("/v1/queue/q/tasks", params={"status": "queued"})).json()
    assert len(queued["tasks"]) == 1


async def test_long_poll_wakes_on_enqueue(client: httpx.AsyncClient) -> None:
    poll = asyncio.create_task(client.post("/v1/queue/q", json={"wait": 5}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    (task_id,) = await enqueue(client, "q", {"data": "wake"})
    response = await asyncio.wait_for(poll, 4)
    assert response.status_code == 200
    assert response.json()["tasks"][0]["_id"] == task_id


async def test_long_poll_times_out_with_204(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queue/q", json={"wait": 0.2})
    assert response.status_code == 204


async def test_long_poll_wait_is_bounded(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queue/q", json={"wait": 6})
    assert response.status_code == 422
    assert "at most 5" in response.json()["error"]


async def test_many_long_polls_share_the_tasks(client: httpx.AsyncClient) -> None:
    polls = [asyncio.create_task(client.post("/v1/queue/q", json={"wait": 3})) for _ in range(10)]
    await asyncio.sleep(0.2)
    await enqueue(client, "q", *({"data": i} for i in range(4)))
    responses = await asyncio.gather(*polls)
    got = [t["data"] for r in responses if r.status_code == 200 for t in r.json()["tasks"]]
    assert sorted(got) == [0, 1, 2, 3]
    assert Counter(r.status_code for r in responses) == {200: 4, 204: 6}


async def test_concurrent_workers_never_share_a_leased_task(client: httpx.AsyncClient) -> None:
    ids = await enqueue(client, "q", *({"data": i} for i in range(300)))
    seen: list[str] = []

    async def worker() -> None:
        acks: list[dict[str, str]] = []
        while True:
            response = await client.post("/v1/queue/q", json={"tasks": acks, "max": 3})
            if response.status_code == 204:
                return
            tasks = response.json()["tasks"]
            seen.extend(t["_id"] for t in tasks)
            acks = [{"_id": t["_id"], "status": "done"} for t in tasks]

    await asyncio.gather(*(worker() for _ in range(12)))
    assert sorted(seen, key=int) == ids
    listing = (
        await client.get("/v1/queue/q/tasks", params={"status": "done", "limit": 1000})
    ).json()
    assert len(listing["tasks"]) == 300


async def test_nul_in_stored_text_is_422_on_every_store(client: httpx.AsyncClient) -> None:
    # PostgreSQL's text cannot hold NUL: every store refuses it alike, naming the field.
    first, second = await enqueue(client, "q", {"data": "a\u0000b"}, {"data": 2})
    refused = await client.post("/v1/queue/q", json={"worker": "w\u00001"})
    assert refused.status_code == 422
    assert "worker" in refused.json()["error"]
    polled = await client.post("/v1/queue/q", json={"max": 2})
    assert polled.json()["tasks"][0]["data"] == "a\u0000b"  # in data: kept faithfully
    acks: list[dict[str, Any]] = [
        {"_id": first, "status": "done", "result": {"r": "\u0000"}},
        {"_id": second, "status": "failed", "error": "bad\u0000byte"},
    ]
    refused = await client.post("/v1/queue/q", json={"tasks": acks})
    assert refused.status_code == 422
    assert refused.json()["ack"] == 1
    assert "tasks[1].error" in refused.json()["error"]
    for task_id in (first, second):  # nothing changed
        assert (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()["status"] == "in progress"
    acks[1]["error"] = "bad byte"
    assert (await client.post("/v1/queue/q", json={"tasks": acks})).status_code == 204
    done = (await client.get(f"/v1/queue/q/tasks/{first}")).json()
    assert done["result"] == {"r": "\u0000"}


async def test_a_result_that_is_not_utf8_or_too_deep_is_refused(
    client: httpx.AsyncClient,
) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    await client.post("/v1/queue/q", json={})
    ack = b'{"tasks":[{"_id":"%s","status":"done","result":%s}]}'
    bad = await client.post("/v1/queue/q", content=ack % (task_id.encode(), b'"\xff"'))
    assert bad.status_code == 400
    assert "UTF-8" in bad.json()["error"]
    deep = b"[" * 65 + b"]" * 65
    bad = await client.post("/v1/queue/q", content=ack % (task_id.encode(), deep))
    assert bad.status_code == 400
    assert "tasks[0].result" in bad.json()["error"]
    assert (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()["status"] == "in progress"


async def test_a_named_worker_cannot_ack_another_workers_task(client: httpx.AsyncClient) -> None:
    for queue in ("q", "plain"):  # with history and without: two different "done" paths
        alices, bobs, spare = await enqueue(client, queue, {"data": 1}, {"data": 2}, {"data": 3})
        await client.post(f"/v1/queue/{queue}", json={"worker": "alice"})
        await client.post(f"/v1/queue/{queue}", json={"worker": "bob"})
        records = [f"/v1/queue/{queue}/tasks/{i}" for i in (alices, bobs)]
        before = [(await client.get(record)).content for record in records]
        for acks, index in (
            ([{"_id": alices, "status": "done"}], 0),
            ([{"_id": bobs, "status": "done"}, {"_id": alices, "status": "failed"}], 1),
            ([{"_id": alices, "status": "in progress"}], 0),
        ):
            # A refused batch changes nothing: neither the acks nor the claim it asked for.
            body = {"worker": "bob", "max": 1, "tasks": acks}
            response = await client.post(f"/v1/queue/{queue}", json=body)
            assert response.status_code == 409, response.text
            assert response.json()["_id"] == alices
            assert response.json()["ack"] == index
            assert "another worker" in response.json()["error"]
            assert [(await client.get(record)).content for record in records] == before
        left = await client.get(f"/v1/queue/{queue}/tasks", params={"status": "queued"})
        assert [t["_id"] for t in left.json()["tasks"]] == [spare]
        # The owner acks its own; a poll with no name (the original protocol) any task.
        own = {"worker": "bob", "tasks": [{"_id": bobs, "status": "done"}], "max": 0}
        assert (await client.post(f"/v1/queue/{queue}", json=own)).status_code == 204
        anyone = {"tasks": [{"_id": alices, "status": "done"}], "max": 0}
        assert (await client.post(f"/v1/queue/{queue}", json=anyone)).status_code == 204
