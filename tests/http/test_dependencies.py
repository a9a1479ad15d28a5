"""Dependencies over HTTP (contract section 11), on every store: ``after`` with ids and
"$n", ``waiting_for`` in the record, the parents' results in the delivery (fan-in), the
"waiting" count, a long poll woken by the release, and the refusals (422)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from katar import Katar
from katar.http import App, Limits
from katar.http.auth import Role, Token, digest
from katar.protocol import MAX_AFTER, MAX_AFTER_PER_REQUEST
from tests.http.conftest import app_client, enqueue


async def take(client: httpx.AsyncClient, queue: str = "q", **body: Any) -> list[dict[str, Any]]:
    answer = await client.post(f"/v1/queue/{queue}", json={"worker": "w", **body})
    if answer.status_code == 204:
        return []
    assert answer.status_code == 200, answer.text
    tasks: list[dict[str, Any]] = answer.json()["tasks"]
    return tasks


async def done(client: httpx.AsyncClient, task_id: str, result: Any, queue: str = "q") -> None:
    ack = {"_id": task_id, "status": "done", "result": result}
    answer = await client.post(f"/v1/queue/{queue}", json={"worker": "w", "tasks": [ack], "max": 0})
    assert answer.status_code == 204, answer.text


async def record(client: httpx.AsyncClient, task_id: str, queue: str = "q") -> dict[str, Any]:
    answer = await client.get(f"/v1/queue/{queue}/tasks/{task_id}")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def test_a_fan_in_over_http(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/v1/queue/q/tasks",
        json={"tasks": [{"data": "a"}, {"data": "b"}, {"data": "sum", "after": ["$0", "$1"]}]},
    )
    assert answer.status_code == 201, answer.text
    a, b, total = answer.json()["tasks"]
    assert total["status"] == "queued"
    assert total["waiting_for"] == [a["_id"], b["_id"]]
    assert total["after"] == {}
    assert a["waiting_for"] == []
    assert a["after"] is None
    counts = (await client.get("/v1/queues")).json()["queues"]
    (q,) = [queue for queue in counts if queue["name"] == "q"]
    assert q["counts"]["queued"] == 2
    assert q["counts"]["waiting"] == 1
    first, second = await take(client, max=5)
    assert "after" not in first
    await done(client, first["_id"], {"n": 1})
    assert (await record(client, total["_id"]))["waiting_for"] == [b["_id"]]
    await done(client, second["_id"], [2])
    (delivered,) = await take(client)
    assert delivered["_id"] == total["_id"]
    assert delivered["after"] == {a["_id"]: {"n": 1}, b["_id"]: [2]}
    final = await record(client, total["_id"])
    assert final["waiting_for"] == []
    assert final["after"] == {a["_id"]: {"n": 1}, b["_id"]: [2]}


async def test_a_long_poll_wakes_when_the_last_parent_is_done(client: httpx.AsyncClient) -> None:
    (parent,) = await enqueue(client, "q", {"data": "p"})
    (child,) = await enqueue(client, "plain", {"data": "c", "after": [parent]})
    waiting = asyncio.create_task(take(client, "plain", wait=5))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    (got,) = await take(client)
    await done(client, got["_id"], "ok")
    (delivered,) = await asyncio.wait_for(waiting, 5)
    assert delivered["_id"] == child
    assert delivered["after"] == {parent: "ok"}


async def test_a_failed_parent_cancels_the_child(client: httpx.AsyncClient) -> None:
    parent, child = await enqueue(client, "q", {"data": "p"}, {"data": "c", "after": ["$0"]})
    (got,) = await take(client)
    ack = {"_id": got["_id"], "status": "failed", "error": "boom"}
    answer = await client.post("/v1/queue/q", json={"tasks": [ack], "max": 0})
    assert answer.status_code == 204
    found = await record(client, child)
    assert found["status"] == "cancelled"
    assert f"task {parent} " in found["error"]
    assert "failed" in found["error"]


async def test_after_must_name_tasks_that_exist(client: httpx.AsyncClient) -> None:
    (one,) = await enqueue(client, "q", {"data": 1})
    for after, named in (([one, "999999"], "999999"), (["x"], "x"), (["$1"], "$1")):
        answer = await client.post("/v1/queue/q/tasks", json={"data": 2, "after": after})
        assert answer.status_code == 422, answer.text
        assert named in answer.json()["error"]
    late = {"tasks": [{"data": 1, "after": ["$1"]}, {"data": 2}]}
    answer = await client.post("/v1/queue/q/tasks", json=late)
    assert answer.status_code == 422
    assert "earlier task" in answer.json()["error"]
    listed = (await client.get("/v1/queue/q/tasks")).json()["tasks"]
    assert [task["_id"] for task in listed] == [one]  # nothing else was created


async def test_the_edges_of_one_request_are_bounded(client: httpx.AsyncClient) -> None:
    """At most MAX_AFTER parents per task and MAX_AFTER_PER_REQUEST over one request: the
    fullest request of each kind is taken, one more is a 422 that creates nothing."""
    parents = await enqueue(client, "q", *({"data": i} for i in range(MAX_AFTER)))
    before = (await client.get("/v1/queues")).json()["queues"][0]["counts"]
    # ids and "$n" alike: one id too many, one "$n" too many
    refused = [
        {"data": "x", "after": [*parents, parents[0]]},
        {"tasks": [{"data": 0}, {"data": "x", "after": [*parents[1:], "$0", "$0"]}]},
    ]
    per_request = MAX_AFTER_PER_REQUEST // MAX_AFTER
    whole = [{"data": i, "after": parents} for i in range(per_request)]
    refused.append({"tasks": [*whole, {"data": "x", "after": [parents[0]]}]})
    fan_out = [{"data": i, "after": ["$0"]} for i in range(MAX_AFTER_PER_REQUEST + 1)]
    refused.append({"tasks": [{"data": "root"}, *fan_out]})
    bounds = (f"length <= {MAX_AFTER}", f"at most {MAX_AFTER_PER_REQUEST:,} in one request")
    for body, bound in zip(refused, (bounds[0], bounds[0], bounds[1], bounds[1]), strict=True):
        answer = await client.post("/v1/queue/q/tasks", json=body)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert "after" in error, error
        assert bound in error, error
    assert (await client.get("/v1/queues")).json()["queues"][0]["counts"] == before
    made = await enqueue(client, "q", *whole)
    assert len(made) == per_request
    (child,) = await enqueue(client, "q", {"data": "y", "after": parents})
    assert len((await record(client, child))["waiting_for"]) == MAX_AFTER


async def test_a_token_names_only_tasks_of_its_queues(katar: Katar, via: str) -> None:
    await katar.engine.put_queue("own", katar.engine.options("q"))
    await katar.engine.put_queue("foreign", katar.engine.options("q"))
    admin = Token(sha256=digest("root-secret"), role=Role.ADMIN, queues=frozenset({"*"}))
    producer = Token(sha256=digest("own-secret"), role=Role.PRODUCER, queues=frozenset({"own"}))
    app = App(katar.engine, tokens=[admin, producer])
    async with app_client(app, via) as client:
        root = {"authorization": "Bearer root-secret"}
        own = {"authorization": "Bearer own-secret"}
        answer = await client.post("/v1/queue/foreign/tasks", json={"data": 1}, headers=root)
        hidden = answer.json()["tasks"][0]["_id"]
        answer = await client.post("/v1/queue/own/tasks", json={"data": 1}, headers=own)
        mine = answer.json()["tasks"][0]["_id"]
        refused = await client.post(
            "/v1/queue/own/tasks", json={"data": 2, "after": [hidden]}, headers=own
        )
        assert refused.status_code == 422
        unknown = await client.post(
            "/v1/queue/own/tasks", json={"data": 2, "after": ["999999"]}, headers=own
        )
        # The same words as for an id that does not exist: nothing is told.
        assert refused.json()["error"] == unknown.json()["error"].replace("999999", hidden)
        allowed = await client.post(
            "/v1/queue/own/tasks", json={"data": 2, "after": [mine]}, headers=own
        )
        assert allowed.status_code == 201
        across = await client.post(
            "/v1/queue/own/tasks", json={"data": 3, "after": [hidden]}, headers=root
        )
        assert across.status_code == 201


async def children(
    client: httpx.AsyncClient, task_id: str, queue: str = "q", kind: str = "children", **query: Any
) -> dict[str, Any]:
    answer = await client.get(f"/v1/queue/{queue}/tasks/{task_id}/{kind}", params=query)
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


async def test_a_task_lists_its_children_a_page_at_a_time(client: httpx.AsyncClient) -> None:
    (parent, other) = await enqueue(client, "q", {"data": "p"}, {"data": "o"})
    first, second = await enqueue(
        client, "q", {"data": 1, "after": [parent]}, {"data": 2, "after": [other, parent]}
    )
    (third,) = await enqueue(client, "plain", {"data": 3, "after": [parent]})
    page = await children(client, parent)
    assert [(task["_id"], task["queue"]) for task in page["tasks"]] == [
        (first, "q"),
        (second, "q"),
        (third, "plain"),
    ]
    assert page["next"] is None
    # Records, as a task's own: a child waits, for its parents.
    assert page["tasks"][1]["status"] == "queued"
    assert page["tasks"][1]["waiting_for"] == [parent, other]
    # The cursor, as the task listing's.
    page = await children(client, parent, limit=2)
    assert [task["_id"] for task in page["tasks"]] == [first, second]
    assert page["next"] == second
    page = await children(client, parent, limit=2, after=page["next"])
    assert [task["_id"] for task in page["tasks"]] == [third]
    assert page["next"] is None
    assert (await children(client, other))["tasks"][0]["_id"] == second
    # And the other way: a task's parents, of any queue, paged the same way.
    page = await children(client, second, kind="parents", limit=1)
    assert [(task["_id"], task["queue"]) for task in page["tasks"]] == [(parent, "q")]
    assert page["next"] == parent
    page = await children(client, second, kind="parents", after=page["next"])
    assert [task["_id"] for task in page["tasks"]] == [other]
    assert page["next"] is None
    assert (await children(client, third, "plain", "parents"))["tasks"][0]["_id"] == parent
    assert (await children(client, third, queue="plain"))["tasks"] == []
    # Once the parent is done, its children stay listed, with its result.
    (taken, _other) = await take(client, max=2)
    assert taken["_id"] == parent
    await done(client, parent, "r")
    listed = (await children(client, parent))["tasks"]
    assert [task["after"] for task in listed] == [{parent: "r"}, {parent: "r"}, {parent: "r"}]
    assert [task["status"] for task in listed] == ["queued", "queued", "queued"]
    assert listed[0]["waiting_for"] == []


async def test_children_and_parents_of_a_task_that_is_not_there(client: httpx.AsyncClient) -> None:
    (parent,) = await enqueue(client, "q", {"data": "p"})
    for kind in ("children", "parents"):
        for path in (
            f"/v1/queue/q/tasks/999999/{kind}",
            f"/v1/queue/plain/tasks/{parent}/{kind}",  # a task of another queue
            f"/v1/queue/q/tasks/x1/{kind}",
            f"/v1/queue/nowhere/tasks/{parent}/{kind}",
        ):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert "error" in answer.json()
        # The bounds as a user would write them, not in floating-point notation.
        for query, error in (
            ({"limit": "0"}, "limit must be from 1 to 1000"),
            ({"limit": "x"}, "limit must be a number, not 'x'"),
            ({"after": "-1"}, f"after must be from 0 to {2**62}"),
        ):
            answer = await client.get(f"/v1/queue/q/tasks/{parent}/{kind}", params=query)
            assert answer.status_code == 422, query
            assert answer.json()["error"] == error


async def test_a_token_sees_the_children_and_parents_of_its_queues_only(
    katar: Katar, via: str
) -> None:
    for name in ("own", "foreign"):
        await katar.engine.put_queue(name, katar.engine.options("q"))
    admin = Token(sha256=digest("root-secret"), role=Role.ADMIN, queues=frozenset({"*"}))
    producer = Token(sha256=digest("own-secret"), role=Role.PRODUCER, queues=frozenset({"own"}))
    worker = Token(sha256=digest("work-secret"), role=Role.WORKER, queues=frozenset({"*"}))
    app = App(katar.engine, tokens=[admin, producer, worker])
    async with app_client(app, via) as client:
        root = {"authorization": "Bearer root-secret"}
        own = {"authorization": "Bearer own-secret"}
        (parent,) = [
            task["_id"]
            for task in (
                await client.post("/v1/queue/own/tasks", json={"data": 0}, headers=root)
            ).json()["tasks"]
        ]
        made = {}
        for name in ("own", "foreign"):
            answer = await client.post(
                f"/v1/queue/{name}/tasks", json={"data": name, "after": [parent]}, headers=root
            )
            made[name] = answer.json()["tasks"][0]["_id"]
        path = f"/v1/queue/own/tasks/{parent}/children"
        everyone = (await client.get(path, headers=root)).json()["tasks"]
        assert [task["_id"] for task in everyone] == [made["own"], made["foreign"]]
        mine = (await client.get(path, headers=own)).json()
        assert [task["_id"] for task in mine["tasks"]] == [made["own"]]
        assert mine["next"] is None
        # And a parent in a foreign queue is left out of its child's parents.
        (hidden,) = [
            task["_id"]
            for task in (
                await client.post("/v1/queue/foreign/tasks", json={"data": 1}, headers=root)
            ).json()["tasks"]
        ]
        answer = await client.post(
            "/v1/queue/own/tasks", json={"data": 2, "after": [parent, hidden]}, headers=root
        )
        both = answer.json()["tasks"][0]["_id"]
        parents = f"/v1/queue/own/tasks/{both}/parents"
        assert len((await client.get(parents, headers=root)).json()["tasks"]) == 2
        seen = (await client.get(parents, headers=own)).json()["tasks"]
        assert [task["_id"] for task in seen] == [parent]
        # A child of a foreign queue is no door into it: its own children are not listed.
        refused = await client.get(
            f"/v1/queue/foreign/tasks/{made['foreign']}/children", headers=own
        )
        assert refused.status_code == 403
        working = await client.get(path, headers={"authorization": "Bearer work-secret"})
        assert working.status_code == 403


async def test_a_token_sees_no_id_nor_result_of_another_scopes_parents(
    katar: Katar, via: str
) -> None:
    # An admin of both queues makes a task of "own" wait for one of "own" and two of
    # "foreign" (one done, in a queue without history: gone); a producer and a worker of
    # "own" see only the parent of "own", in the record (GET, listing, enqueue, PATCH) and in
    # the delivery. The admin sees them all.
    await katar.engine.put_queue("own", katar.engine.options("q"))
    await katar.engine.put_queue("foreign", katar.engine.options("plain"))
    tokens = [
        Token(sha256=digest("root-secret"), role=Role.ADMIN, queues=frozenset({"*"})),
        Token(sha256=digest("own-secret"), role=Role.PRODUCER, queues=frozenset({"own"})),
        Token(sha256=digest("work-secret"), role=Role.WORKER, queues=frozenset({"own"})),
        Token(sha256=digest("both-secret"), role=Role.ADMIN, queues=frozenset({"own", "foreign"})),
    ]
    app = App(katar.engine, tokens=tokens)
    root = {"authorization": "Bearer root-secret"}
    own = {"authorization": "Bearer own-secret"}
    work = {"authorization": "Bearer work-secret"}
    both = {"authorization": "Bearer both-secret"}
    async with app_client(app, via) as client:

        async def make(queue: str, body: dict[str, Any], headers: dict[str, str]) -> str:
            answer = await client.post(f"/v1/queue/{queue}/tasks", json=body, headers=headers)
            assert answer.status_code == 201, answer.text
            task_id: str = answer.json()["tasks"][0]["_id"]
            return task_id

        mine = await make("own", {"data": "mine"}, root)
        done_away = await make("foreign", {"data": "away"}, root)
        waits_away = await make("foreign", {"data": "waits", "priority": -1}, root)
        kid = await make("own", {"data": "kid", "after": [mine, done_away, waits_away]}, both)
        (away,) = (await client.post("/v1/queue/foreign", json={}, headers=root)).json()["tasks"]
        assert away["_id"] == done_away
        ack = {"_id": done_away, "status": "done", "result": {"secret": 42}}
        answer = await client.post(
            "/v1/queue/foreign", json={"tasks": [ack], "max": 0}, headers=root
        )
        assert answer.status_code == 204
        gone = await client.get(f"/v1/queue/foreign/tasks/{done_away}", headers=root)
        assert gone.status_code == 404  # a queue without history: its edge keeps the rest

        url = f"/v1/queue/own/tasks/{kid}"
        full = (await client.get(url, headers=root)).json()
        assert full["waiting_for"] == [mine, waits_away]
        assert full["after"] == {done_away: {"secret": 42}}
        for headers in (own, both):
            seen = (await client.get(url, headers=headers)).json()
            expected = full if headers is both else {**full, "waiting_for": [mine], "after": {}}
            assert seen == expected
        listed = (await client.get("/v1/queue/own/tasks", headers=own)).json()["tasks"]
        (listed_kid,) = [t for t in listed if t["_id"] == kid]
        assert listed_kid["waiting_for"] == [mine]
        assert listed_kid["after"] == {}
        assert "secret" not in (await client.get("/v1/queue/own/tasks", headers=own)).text
        # Its parents end: the delivery to a worker of "own" carries only its own's result.
        (task,) = (await client.post("/v1/queue/own", json={}, headers=work)).json()["tasks"]
        assert task["_id"] == mine
        ack = {"_id": mine, "status": "done", "result": "ok"}
        await client.post("/v1/queue/own", json={"tasks": [ack], "max": 0}, headers=work)
        (task,) = (await client.post("/v1/queue/foreign", json={}, headers=root)).json()["tasks"]
        ack = {"_id": waits_away, "status": "done", "result": {"secret": 7}}
        await client.post("/v1/queue/foreign", json={"tasks": [ack], "max": 0}, headers=root)
        answer = await client.post("/v1/queue/own", json={}, headers=work)
        (delivery,) = answer.json()["tasks"]
        assert delivery["_id"] == kid
        assert delivery["after"] == {mine: "ok"}
        assert "secret" not in answer.text
        cancelled = await client.patch(url, json={"status": "cancelled"}, headers=both)
        assert cancelled.json()["after"] == {
            mine: "ok",
            done_away: {"secret": 42},
            waits_away: {"secret": 7},
        }


# Answers of at most 64 KiB + 1000 bytes; results are bounded only by a request's body.
SMALL_ANSWERS = Limits(max_task_bytes=1000, max_answer_bytes=64 * 1024 + 1000)


def _results_of(parents: list[str]) -> dict[str, Any]:
    """A result of 3,000 bytes each: 40 of them are more than an answer may hold."""
    return {parent: {"parent": parent, "rows": "r" * 3000} for parent in parents}


def _check_cut(carrier: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """The results an answer carries are exact; with those it leaves out, they are all the
    parents' (the first by id carried); the ids left out."""
    after, omitted = carrier["after"], carrier.get("after_omitted", [])
    assert omitted, "some results are left out"
    assert after, "as many results as fit are carried"
    assert sorted([*after, *omitted], key=int) == sorted(results, key=int)
    assert max(map(int, after)) < min(map(int, omitted))
    assert all(after[parent] == results[parent] for parent in after)
    return list(omitted)


async def test_a_fan_in_past_the_answer_bound_leaves_results_out(katar: Katar, via: str) -> None:
    """A child of 40 parents each done with a 3,000-byte result: a GET of it, its delivery,
    a page that lists it and the enqueue of another such child all stay within
    max_answer_bytes; the results left out are named, and read from the parents."""
    async with app_client(App(katar.engine, limits=SMALL_ANSWERS), via) as client:
        specs = [{"data": n} for n in range(40)]
        ids = await enqueue(
            client, "q", *specs, {"data": "merge", "after": [f"${n}" for n in range(40)]}
        )
        parents, child = ids[:40], ids[40]
        results = _results_of(parents)
        acks = [
            {"_id": task["_id"], "status": "done", "result": results[task["_id"]]}
            for task in await take(client, max=40)
        ]
        assert len(acks) == 40
        answer = await client.post("/v1/queue/q", json={"worker": "w", "tasks": acks, "max": 0})
        assert answer.status_code == 204, answer.text
        bound = SMALL_ANSWERS.max_answer_bytes

        got = await client.get(f"/v1/queue/q/tasks/{child}")
        assert got.status_code == 200
        assert len(got.content) <= bound
        _check_cut(got.json(), results)

        page = await client.get(f"/v1/queue/q/tasks?after={parents[-1]}&limit=10")
        assert page.status_code == 200
        assert len(page.content) <= bound
        assert page.json()["tasks"][0]["_id"] == child
        _check_cut(page.json()["tasks"][0], results)

        delivered = await client.post("/v1/queue/q", json={"worker": "w", "max": 10})
        assert delivered.status_code == 200
        assert len(delivered.content) <= bound
        (delivery,) = delivered.json()["tasks"]
        assert delivery["_id"] == child
        for parent in _check_cut(delivery, results):  # each from its parent's own record
            assert (await record(client, parent))["result"] == results[parent]

        # A child enqueued once its parents are done takes their results at once.
        answer = await client.post(
            "/v1/queue/q/tasks", json={"tasks": [{"data": "again", "after": parents}] * 2}
        )
        assert answer.status_code == 201
        assert len(answer.content) <= bound
        first, second = answer.json()["tasks"]
        _check_cut(first, results)
        assert second["after"] == {}
        assert second["after_omitted"] == parents


async def test_a_fan_in_within_the_bound_carries_every_result(client: httpx.AsyncClient) -> None:
    parent, child = await enqueue(client, "q", {"data": 1}, {"data": 2, "after": ["$0"]})
    (task,) = await take(client)
    await done(client, task["_id"], {"ok": True})
    assert (await record(client, child))["after_omitted"] == []
    (delivery,) = await take(client)
    assert delivery["after"] == {parent: {"ok": True}}
    assert "after_omitted" not in delivery
