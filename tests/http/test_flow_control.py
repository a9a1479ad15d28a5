"""Flow control over HTTP: PATCH of a queue, pause, limits in GET /v1/queues, task keys,
and long polls that a limit holds back."""

from __future__ import annotations

import asyncio

import httpx

from katar import Katar


async def test_patch_changes_some_options_and_keeps_the_others(
    client: httpx.AsyncClient,
) -> None:
    put = await client.put("/v1/queue/p", json={"timeout": 5000, "configuration": {"a": 1}})
    assert put.status_code == 200
    patched = await client.patch("/v1/queue/p", json={"concurrency": 2, "paused": True})
    assert patched.status_code == 200
    options = patched.json()["options"]
    assert (options["timeout"], options["concurrency"], options["paused"]) == (5000, 2, True)
    assert patched.json()["configuration"] == {"interval": 30000, "a": 1}
    # null removes a limit
    cleared = await client.patch("/v1/queue/p", json={"concurrency": None})
    assert cleared.json()["options"]["concurrency"] is None


async def test_a_bad_patch_is_a_422_that_changes_nothing(client: httpx.AsyncClient) -> None:
    await client.put("/v1/queue/p", json={"concurrency": 2})
    for body, option in (
        ({"concurrency": 0}, "concurrency"),
        ({"rate": {"limit": 5}}, "rate"),
        ({"key_concurrency": "one"}, "key_concurrency"),
        ({"key_rate": {"limit": 0, "period": 1000}}, "key_rate"),
        ({"key_rate": {"limit": 5}}, "key_rate"),
        ({"pause": True}, "pause"),
    ):
        answer = await client.patch("/v1/queue/p", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["option"] == option
    assert (await client.patch("/v1/queue/p", json=[1])).status_code == 422
    queues = (await client.get("/v1/queues")).json()["queues"]
    (p,) = [q for q in queues if q["name"] == "p"]
    assert p["options"]["concurrency"] == 2


async def test_patch_of_an_unknown_queue_is_404(client: httpx.AsyncClient) -> None:
    answer = await client.patch("/v1/queue/nosuch", json={"paused": True})
    assert answer.status_code == 404
    assert answer.json()["error"] == "Queue not found"


async def test_the_queue_list_shows_limits_and_their_state(client: httpx.AsyncClient) -> None:
    await client.put(
        "/v1/queue/p",
        json={"concurrency": 5, "key_concurrency": 1, "rate": {"limit": 10, "period": 60000}},
    )
    tasks = [{"data": n, "key": "a" if n < 3 else f"k{n}"} for n in range(6)]
    await client.post("/v1/queue/p/tasks", json={"tasks": tasks})
    taken = (await client.post("/v1/queue/p", json={"max": 10})).json()["tasks"]
    assert [t["data"] for t in taken] == [0, 3, 4, 5]
    queues = (await client.get("/v1/queues")).json()["queues"]
    (p,) = [q for q in queues if q["name"] == "p"]
    limits = p["limits"]
    assert limits["in_progress"] == 4
    assert limits["concurrency"] == 5
    assert limits["keys_at_limit"] == 4
    assert 6 <= limits["tokens"] < 6.1
    (q,) = [q for q in queues if q["name"] == "q"]
    assert q["limits"] is None  # a queue without flow control


async def test_a_task_key_is_kept_and_checked(client: httpx.AsyncClient) -> None:
    made = await client.post("/v1/queue/q/tasks", json={"data": 1, "key": "customer-7"})
    assert made.status_code == 201
    record = made.json()["tasks"][0]
    assert record["key"] == "customer-7"
    got = await client.get(f"/v1/queue/q/tasks/{record['_id']}")
    assert got.json()["key"] == "customer-7"
    for bad in ("", "x" * 256, "a\nb", 7):
        answer = await client.post("/v1/queue/q/tasks", json={"data": 1, "key": bad})
        assert answer.status_code in (400, 422), answer.text
        assert "key" in answer.json()["error"]


async def test_a_long_poll_on_a_paused_queue_is_answered_when_it_resumes(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/v1/queue/p", json={"paused": True})
    await client.post("/v1/queue/p/tasks", json={"data": "x"})
    assert (await client.post("/v1/queue/p", json={})).status_code == 204
    poll = asyncio.ensure_future(client.post("/v1/queue/p", json={"wait": 5}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    await client.patch("/v1/queue/p", json={"paused": False})
    answer = await asyncio.wait_for(poll, 5)
    assert answer.status_code == 200
    assert answer.json()["tasks"][0]["data"] == "x"


async def test_a_long_poll_held_by_concurrency_gets_the_room_an_ack_frees(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/v1/queue/p", json={"concurrency": 1})
    await client.post("/v1/queue/p/tasks", json={"tasks": [{"data": 1}, {"data": 2}]})
    (first,) = (await client.post("/v1/queue/p", json={})).json()["tasks"]
    poll = asyncio.ensure_future(client.post("/v1/queue/p", json={"wait": 5}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    acked = await client.post(
        "/v1/queue/p", json={"tasks": [{"_id": first["_id"], "status": "done"}], "max": 0}
    )
    assert acked.status_code == 204
    answer = await asyncio.wait_for(poll, 5)
    assert answer.json()["tasks"][0]["data"] == 2


async def test_a_long_poll_held_by_a_rate_limit_gets_the_next_token(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/v1/queue/p", json={"rate": {"limit": 1, "period": 300}})
    await client.post("/v1/queue/p/tasks", json={"tasks": [{"data": 1}, {"data": 2}]})
    assert (await client.post("/v1/queue/p", json={})).status_code == 200
    answer = await client.post("/v1/queue/p", json={"wait": 5})
    assert answer.status_code == 200
    assert answer.json()["tasks"][0]["data"] == 2


async def test_a_seed_worker_works_unchanged_on_a_queue_with_every_option(
    client: httpx.AsyncClient, katar: Katar
) -> None:
    await client.put(
        "/v1/queue/p",
        json={
            "concurrency": 2,
            "key_concurrency": 1,
            "rate": {"limit": 1000, "period": 1000},
            "key_rate": {"limit": 1000, "period": 1000},
            "fair": True,
            "configuration": {"interval": 10},
        },
    )
    # Every task option too: a key, a unique key, its own lease and attempts, an expiry.
    tasks = [
        {
            "data": n,
            "key": f"k{n % 3}",
            "unique_key": f"u{n}",
            "unique_for": 60,
            "timeout": 30000,
            "max_attempts": 2,
            "expires_in": 600,
        }
        for n in range(9)
    ]
    await client.post("/v1/queue/p/tasks", json={"tasks": tasks})
    assert (await client.get("/v1/queue/p")).json() == {"configuration": {"interval": 10}}
    done: list[int] = []
    acks: list[dict[str, str]] = []
    for _ in range(50):  # the original worker: one task per poll, acks ride on the next
        answer = await client.post("/v1/queue/p", json={"tasks": acks} if acks else {})
        acks = []
        if answer.status_code == 204:
            if len(done) == 9:
                break
            continue
        (task,) = answer.json()["tasks"]
        assert set(task) >= {"_id", "data"}
        done.append(task["data"])
        acks = [{"_id": task["_id"], "status": "done"}]
    assert sorted(done) == list(range(9))


async def test_key_rate_limits_each_key_and_shows_in_the_queue_list(
    client: httpx.AsyncClient,
) -> None:
    put = await client.put("/v1/queue/p", json={"key_rate": {"limit": 2, "period": 60000}})
    assert put.json()["options"]["key_rate"] == {"limit": 2, "period": 60000}
    tasks = [{"data": n, "key": "big"} for n in range(10)]
    tasks += [{"data": 10 + n, "key": f"k{n}"} for n in range(3)] + [{"data": 99}]
    await client.post("/v1/queue/p/tasks", json={"tasks": tasks})
    taken = (await client.post("/v1/queue/p", json={"max": 20})).json()["tasks"]
    # "big" gets its bucket's 2; the other keys are not held back; no key: no key_rate.
    assert [t["data"] for t in taken] == [0, 1, 10, 11, 12, 99]
    assert (await client.post("/v1/queue/p", json={"max": 20})).status_code == 204
    queues = (await client.get("/v1/queues")).json()["queues"]
    (p,) = [q for q in queues if q["name"] == "p"]
    assert p["limits"]["keys_rate_limited"] == 1
    cleared = await client.patch("/v1/queue/p", json={"key_rate": None})
    assert cleared.json()["options"]["key_rate"] is None
    assert len((await client.post("/v1/queue/p", json={"max": 20})).json()["tasks"]) == 8


async def test_a_long_poll_held_by_key_rate_gets_the_keys_next_token(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/v1/queue/p", json={"key_rate": {"limit": 1, "period": 300}})
    tasks = [{"data": 1, "key": "a"}, {"data": 2, "key": "a"}]
    await client.post("/v1/queue/p/tasks", json={"tasks": tasks})
    assert (await client.post("/v1/queue/p", json={})).status_code == 200
    answer = await client.post("/v1/queue/p", json={"wait": 5})
    assert answer.status_code == 200
    assert answer.json()["tasks"][0]["data"] == 2
