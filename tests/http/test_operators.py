"""Operators over HTTP (contract section 10), on every store: bulk actions, delivery
history, listing filters, workers seen, retention and the queues' oldest queued age."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from katar import Katar
from tests.http.conftest import enqueue


async def fail_some(client: httpx.AsyncClient, queue: str = "q") -> list[str]:
    """Five tasks with keys: the first two failed by w1 (errors 'smtp timeout', 'bad
    address'), the third done by w1, the last two queued."""
    ids = await enqueue(client, queue, *({"data": n, "key": f"k{n % 2}"} for n in range(5)))
    taken = await client.post(f"/v1/queue/{queue}", json={"worker": "w1", "max": 3})
    assert [t["_id"] for t in taken.json()["tasks"]] == ids[:3]
    acks = [
        {"_id": ids[0], "status": "failed", "error": "smtp timeout"},
        {"_id": ids[1], "status": "failed", "error": "bad address"},
        {"_id": ids[2], "status": "done"},
    ]
    answer = await client.post(f"/v1/queue/{queue}", json={"worker": "w1", "tasks": acks, "max": 0})
    assert answer.status_code == 204, answer.text
    return ids


async def bulk(client: httpx.AsyncClient, body: Any, queue: str = "q") -> httpx.Response:
    return await client.post(f"/v1/queue/{queue}/tasks/bulk", json=body)


async def listed(client: httpx.AsyncClient, query: str, queue: str = "q") -> list[str]:
    response = await client.get(f"/v1/queue/{queue}/tasks?{query}")
    assert response.status_code == 200, response.text
    return [t["_id"] for t in response.json()["tasks"]]


async def test_a_bulk_retry_of_failed_tasks(client: httpx.AsyncClient) -> None:
    ids = await fail_some(client)
    dry = await bulk(client, {"action": "retry", "filter": {"status": ["failed"]}, "dry_run": True})
    assert dry.json() == {"matched": 2, "changed": 2}
    assert await listed(client, "status=failed") == ids[:2]  # the dry run changed nothing
    done = await bulk(client, {"action": "retry", "filter": {"status": ["failed"]}})
    assert done.status_code == 200
    assert done.json() == {"matched": 2, "changed": 2}
    assert await listed(client, "status=failed") == []
    assert await listed(client, "status=queued") == [ids[0], ids[1], ids[3], ids[4]]
    # Retried tasks are delivered again, first (lowest ids).
    taken = await client.post("/v1/queue/q", json={"worker": "w2", "max": 2})
    assert [t["_id"] for t in taken.json()["tasks"]] == ids[:2]


async def test_bulk_matches_all_the_filter_and_changes_what_the_action_applies_to(
    client: httpx.AsyncClient,
) -> None:
    ids = await fail_some(client)
    answer = await bulk(client, {"action": "cancel"})
    assert answer.json() == {"matched": 5, "changed": 2}  # only the queued ones
    assert await listed(client, "status=cancelled") == ids[3:]
    by_error = await bulk(client, {"action": "delete", "filter": {"error": "smtp"}})
    assert by_error.json() == {"matched": 1, "changed": 1}
    by_ids = await bulk(client, {"action": "retry", "filter": {"ids": [ids[1], ids[2]]}})
    assert by_ids.json() == {"matched": 2, "changed": 1}  # a done task is not retried
    by_key = await bulk(client, {"action": "delete", "filter": {"key": "k0", "status": ["done"]}})
    assert by_key.json() == {"matched": 1, "changed": 1}


async def test_bulk_filters_by_creation_time(client: httpx.AsyncClient) -> None:
    ids = await fail_some(client)
    past = {"before": "2001-01-01T00:00:00Z"}
    assert (await bulk(client, {"action": "cancel", "filter": past})).json() == {
        "matched": 0,
        "changed": 0,
    }
    since = {"after": "2001-01-01T00:00:00Z", "status": ["queued"]}
    assert (await bulk(client, {"action": "cancel", "filter": since})).json()["changed"] == 2
    assert await listed(client, "status=cancelled") == ids[3:]


@pytest.mark.storeless
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"action": "explode"}, "action"),
        ({}, "action"),
        ({"action": "retry", "filter": {"status": ["lost"]}}, "status"),
        ({"action": "retry", "filter": {"ids": ["x1"]}}, "a list of task ids"),
        ({"action": "retry", "filter": {"before": "yesterday"}}, "ISO 8601"),
        ({"action": "retry", "filter": {"colour": "red"}}, "colour"),
        ({"action": "retry", "filter": {"error": ""}}, "error"),
        # No task holds NUL in these (they are refused when stored): alike on every store.
        ({"action": "retry", "filter": {"key": "a\u0000"}}, "filter.key"),
        ({"action": "delete", "filter": {"worker": "\u0000"}}, "filter.worker"),
        ({"action": "cancel", "filter": {"error": "x\u0000y"}}, "filter.error"),
        ([1, 2], "object"),
    ],
)
async def test_a_bad_bulk_body_is_a_422_that_changes_nothing(
    client: httpx.AsyncClient, body: Any, says: str
) -> None:
    ids = await fail_some(client)
    answer = await bulk(client, body)
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["error"]
    assert await listed(client, "status=failed") == ids[:2]


@pytest.mark.parametrize("query", ["key=%00", "worker=w%00", "error=%00x", "key=a&error=%00"])
async def test_a_listing_filter_with_nul_is_a_422_on_every_store(
    client: httpx.AsyncClient, query: str
) -> None:
    answer = await client.get(f"/v1/queue/q/tasks?{query}")
    assert answer.status_code == 422, answer.text
    assert "NUL" in answer.json()["error"]


async def test_bulk_on_an_unknown_queue_is_a_404(client: httpx.AsyncClient) -> None:
    answer = await bulk(client, {"action": "retry"}, queue="nowhere")
    assert answer.status_code == 404


async def test_history_in_the_record(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    fresh = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
    assert fresh["history"] == []
    await client.post("/v1/queue/q", json={"worker": "w1"})
    failed = {"_id": task_id, "status": "failed", "error": "no disk"}
    await client.post("/v1/queue/q", json={"worker": "w1", "tasks": [failed], "max": 0})
    retried = await client.patch(f"/v1/queue/q/tasks/{task_id}", json={"status": "queued"})
    assert retried.status_code == 200
    await client.post("/v1/queue/q", json={"worker": "w2"})
    record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
    history = record["history"]
    assert [(h["attempt"], h["worker"], h["outcome"]) for h in history] == [
        (1, "w1", "failed"),
        (2, "w2", None),
    ]
    assert history[0]["error"] == "no disk"
    assert history[0]["ended_at"] is not None
    assert history[1]["ended_at"] is None
    assert history[1]["started_at"].endswith("Z")


async def test_listing_filters_and_newest_first(client: httpx.AsyncClient) -> None:
    ids = await fail_some(client)
    assert await listed(client, "key=k1") == [ids[1], ids[3]]
    assert await listed(client, "worker=w1&status=failed") == ids[:2]
    assert await listed(client, "error=address") == [ids[1]]
    assert await listed(client, "order=desc&limit=2") == [ids[4], ids[3]]
    page = await client.get("/v1/queue/q/tasks?order=desc&limit=2")
    cursor = page.json()["next"]
    assert await listed(client, f"order=desc&limit=2&after={cursor}") == [ids[2], ids[1]]
    assert await listed(client, "created_before=2001-01-01T00:00:00Z") == []
    assert await listed(client, "created_after=2001-01-01T00:00:00Z") == ids
    for query, says in [
        ("order=sideways", "order"),
        ("created_after=soon", "ISO 8601"),
        ("status=lost", "status"),
        ("error=" + "x" * 1001, "error"),
    ]:
        answer = await client.get(f"/v1/queue/q/tasks?{query}")
        assert answer.status_code == 422, query
        assert says in answer.json()["error"]


async def test_workers_seen_with_their_tasks_in_progress(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/workers")).json() == {"workers": []}
    await enqueue(client, "q", {"data": 1}, {"data": 2})
    await client.post("/v1/queue/q", json={"worker": "w1", "max": 2})
    await client.post("/v1/queue/history", json={"worker": "w1"})
    await client.post("/v1/queue/plain", json={"worker": "w2"})
    await client.post("/v1/queue/plain", json={})  # anonymous: not listed
    workers = (await client.get("/v1/workers")).json()["workers"]
    assert [(w["name"], w["queues"], w["in_progress"]) for w in workers] == [
        ("w1", ["history", "q"], 2),
        ("w2", ["plain"], 0),
    ]
    assert workers[0]["last_poll"].endswith("Z")


async def test_the_queues_show_their_oldest_queued_age(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": 1})
    queues = {q["name"]: q for q in (await client.get("/v1/queues")).json()["queues"]}
    age = queues["q"]["oldest_queued_age"]
    assert age is not None
    assert age >= 0
    assert queues["plain"]["oldest_queued_age"] is None


async def test_retention_is_a_queue_option_and_the_pruner_applies_it(
    katar: Katar, client: httpx.AsyncClient
) -> None:
    put = await client.put("/v1/queue/brief", json={"persistent": True, "keep": {"done": 0}})
    assert put.status_code == 200, put.text
    assert put.json()["options"]["keep"] == {"done": 0, "failed": 604800000, "cancelled": 604800000}
    ids = await enqueue(client, "brief", {"data": 1}, {"data": 2})
    await client.post("/v1/queue/brief", json={"max": 1})
    await client.post("/v1/queue/brief", json={"tasks": [{"_id": ids[0], "status": "done"}]})
    await client.patch(f"/v1/queue/brief/tasks/{ids[1]}", json={"status": "cancelled"})
    assert await katar.engine.prune_finished() == 1  # the done one; cancelled stay a week
    assert await listed(client, "", queue="brief") == [ids[1]]
    bad = await client.patch("/v1/queue/brief", json={"keep": {"done": -1}})
    assert bad.status_code == 422
    assert "keep.done" in bad.json()["error"]
    forever = await client.patch("/v1/queue/brief", json={"keep": {"cancelled": None}})
    assert forever.json()["options"]["keep"]["cancelled"] is None
