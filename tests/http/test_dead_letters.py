"""Dead-letter queues and redrive over HTTP (contract section 14), on every store: the
``dead_letter`` option, a producer finding a task that moved, GET /v1/queues, the metrics,
and POST/GET/DELETE /v1/queue/{queue}/redrive."""

from __future__ import annotations

import asyncio

import httpx

from katar import Katar
from tests.http.conftest import enqueue


async def make_queues(client: httpx.AsyncClient) -> None:
    created = await client.put(
        "/v1/queue/mail",
        json={"persistent": True, "max_attempts": 1, "dead_letter": "mail.dead"},
    )
    assert created.status_code in (200, 201), created.text


async def poison(client: httpx.AsyncClient, count: int = 1) -> list[str]:
    """``count`` tasks of "mail" that fail for good ("bad address"): dead letters."""
    ids = await enqueue(client, "mail", *({"data": n, "key": f"k{n}"} for n in range(count)))
    taken = await client.post("/v1/queue/mail", json={"worker": "w1", "max": count})
    assert [t["_id"] for t in taken.json()["tasks"]] == ids
    acks = [{"_id": i, "status": "failed", "error": "bad address"} for i in ids]
    answer = await client.post("/v1/queue/mail", json={"worker": "w1", "tasks": acks, "max": 0})
    assert answer.status_code == 204, answer.text
    return ids


async def test_the_dead_letter_option_is_checked(client: httpx.AsyncClient) -> None:
    itself = await client.put("/v1/queue/a", json={"dead_letter": "a"})
    assert itself.status_code == 422
    assert "names the queue itself" in itself.json()["error"]
    assert itself.json()["option"] == "dead_letter"
    bad = await client.put("/v1/queue/a", json={"dead_letter": "no spaces"})
    assert bad.status_code == 422
    assert "queue name" in bad.json()["error"]
    assert (await client.get("/v1/queue/a/tasks")).status_code == 404  # nothing was made
    made = await client.put("/v1/queue/a", json={"dead_letter": "a.dead"})
    assert made.status_code in (200, 201)
    assert made.json()["options"]["dead_letter"] == "a.dead"
    # The target is created with default options, and knows who sends it their dead.
    queues = {q["name"]: q for q in (await client.get("/v1/queues")).json()["queues"]}
    assert queues["a.dead"]["options"]["max_attempts"] == 5
    assert queues["a.dead"]["dead_letter_sources"] == ["a"]
    assert queues["a"]["options"]["dead_letter"] == "a.dead"
    assert queues["a"]["dead_letter_sources"] == []
    patched = await client.patch("/v1/queue/q", json={"dead_letter": "a.dead"})
    assert patched.status_code == 200, patched.text
    queues = {q["name"]: q for q in (await client.get("/v1/queues")).json()["queues"]}
    assert queues["a.dead"]["dead_letter_sources"] == ["a", "q"]
    removed = await client.patch("/v1/queue/q", json={"dead_letter": None})
    assert removed.status_code == 200


async def test_a_task_that_fails_for_good_moves_and_its_producer_finds_it(
    client: httpx.AsyncClient,
) -> None:
    await make_queues(client)
    (task_id,) = await poison(client)
    gone = await client.get(f"/v1/queue/mail/tasks/{task_id}")
    assert gone.status_code == 404
    assert gone.json()["moved_to"] == "mail.dead"
    assert "mail.dead" in gone.json()["error"]
    found = await client.get(f"/v1/queue/mail.dead/tasks/{task_id}")
    assert found.status_code == 200
    record = found.json()
    assert (record["queue"], record["status"], record["key"]) == ("mail.dead", "queued", "k0")
    assert record["dead_letter"]["queue"] == "mail"
    assert record["dead_letter"]["error"] == "bad address"
    assert record["dead_letter"]["attempts"] == 1
    assert record["dead_letter"]["at"].endswith("Z")
    assert [d["outcome"] for d in record["history"]] == ["failed"]
    # Workers of the dead-letter queue get it like any task.
    taken = await client.post("/v1/queue/mail.dead", json={"worker": "w2"})
    assert [t["_id"] for t in taken.json()["tasks"]] == [task_id]
    metrics = (await client.get("/metrics")).text
    assert 'katar_dead_lettered_total{queue="mail"} 1' in metrics


async def test_a_producer_waiting_for_the_outcome_learns_where_it_went(
    client: httpx.AsyncClient,
) -> None:
    await make_queues(client)
    (task_id,) = await enqueue(client, "mail", {"data": 1})
    waiting = asyncio.ensure_future(client.get(f"/v1/queue/mail/tasks/{task_id}?wait=5"))
    await asyncio.sleep(0.1)
    taken = await client.post("/v1/queue/mail", json={"worker": "w1"})
    assert taken.status_code == 200
    ack = {"_id": task_id, "status": "failed", "error": "boom"}
    await client.post("/v1/queue/mail", json={"worker": "w1", "tasks": [ack], "max": 0})
    answer = await waiting
    assert answer.status_code == 404
    assert answer.json()["moved_to"] == "mail.dead"


async def test_a_redrive_moves_the_dead_back_to_their_origin(client: httpx.AsyncClient) -> None:
    await make_queues(client)
    ids = await poison(client, 3)
    (plain,) = await enqueue(client, "mail.dead", {"data": "enqueued here"})
    answer = await client.post("/v1/queue/mail.dead/redrive", json={"filter": {"key": "k1"}})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"matched": 1, "moved": 1, "no_origin": 0}
    back = (await client.get(f"/v1/queue/mail/tasks/{ids[1]}")).json()
    assert (back["status"], back["dead_letter"], back["attempts"]) == ("queued", None, 1)
    rest = await client.post("/v1/queue/mail.dead/redrive")
    assert rest.json() == {"matched": 3, "moved": 2, "no_origin": 1}
    listed = (await client.get("/v1/queue/mail/tasks?status=queued")).json()["tasks"]
    assert [t["_id"] for t in listed] == ids
    # The task that came from nowhere goes where it is told.
    moved = await client.post("/v1/queue/mail.dead/redrive", json={"to": "q"})
    assert moved.json() == {"matched": 1, "moved": 1, "no_origin": 0}
    assert (await client.get(f"/v1/queue/q/tasks/{plain}")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'katar_redriven_total{queue="mail.dead"} 4' in metrics


async def test_a_redrive_refuses_what_it_cannot_do(client: httpx.AsyncClient) -> None:
    await make_queues(client)
    itself = await client.post("/v1/queue/mail.dead/redrive", json={"to": "mail.dead"})
    assert itself.status_code == 422
    nowhere = await client.post("/v1/queue/mail.dead/redrive", json={"to": "nope"})
    assert nowhere.status_code == 404
    running = await client.post(
        "/v1/queue/mail.dead/redrive", json={"filter": {"status": ["in progress"]}}
    )
    assert running.status_code == 422
    assert "queued or failed" in running.json()["error"]
    rate = await client.post("/v1/queue/mail.dead/redrive", json={"rate": 0})
    assert rate.status_code == 422
    unknown = await client.post("/v1/queue/mail.dead/redrive", json={"speed": 1})
    assert unknown.status_code in (400, 422)
    none = await client.get("/v1/queue/mail.dead/redrive")
    assert none.status_code == 404


async def test_a_redrive_at_a_rate_is_a_move_job(client: httpx.AsyncClient) -> None:
    await make_queues(client)
    ids = await poison(client, 4)
    started = await client.post("/v1/queue/mail.dead/redrive", json={"rate": 1000})
    assert started.status_code == 202, started.text
    job = started.json()
    assert (job["queue"], job["to"], job["rate"], job["state"]) == (
        "mail.dead",
        None,
        1000,
        "running",
    )
    for _ in range(200):
        job = (await client.get("/v1/queue/mail.dead/redrive")).json()
        if job["state"] != "running":
            break
        await asyncio.sleep(0.02)
    assert job["state"] == "completed"
    assert (job["matched"], job["moved"], job["remaining"]) == (4, 4, 0)
    assert job["ended_at"] is not None
    listed = (await client.get("/v1/queue/mail/tasks?status=queued")).json()["tasks"]
    assert [t["_id"] for t in listed] == ids


async def test_a_slow_move_job_is_cancelled(client: httpx.AsyncClient) -> None:
    await make_queues(client)
    await poison(client, 3)
    started = await client.post("/v1/queue/mail.dead/redrive", json={"rate": 0.5})
    assert started.status_code == 202
    again = await client.post("/v1/queue/mail.dead/redrive", json={"rate": 1})
    assert again.status_code == 409
    cancelled = await client.delete("/v1/queue/mail.dead/redrive")
    assert cancelled.status_code == 200
    job = cancelled.json()
    assert job["state"] == "cancelled"
    assert job["moved"] < 3
    assert job["remaining"] == 3 - job["matched"]


async def test_a_dead_letter_queue_declared_in_the_configuration(katar: Katar) -> None:
    await katar.put_queue("orders", dead_letter="orders.dead", max_attempts=1)
    assert katar.engine.dead_letter_sources("orders.dead") == ["orders"]
