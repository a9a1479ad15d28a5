"""Tokens and roles (contract section 4): every role x every route x own and foreign queue."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from katar import Katar, QueueOptions
from katar.core.model import Ack, NewTask
from katar.core.schedule import parse_schedule
from katar.http import App
from katar.http.auth import Access, Role
from tests.helpers.tokens import SECRETS, TOKENS, bearer
from tests.http.conftest import app_client, opened

# The access rule each route must have. A route added to the application without a line here
# fails test_every_route_has_an_explicit_rule: a new route cannot slip in unprotected.
EXPECTED: dict[tuple[str, str], Role | None] = {
    # The SQS API: open to the bearer-token check, since it authenticates its requests
    # itself with AWS Signature Version 4 (tests/sqs/test_sigv4.py).
    ("/", "POST"): None,
    ("/healthz", "GET"): None,
    ("/openapi.json", "GET"): None,
    ("/docs", "GET"): None,
    ("/ui", "GET"): None,
    ("/ui/{asset}", "GET"): None,
    ("/v1/token", "GET"): Role.WORKER,
    ("/metrics", "GET"): Role.ADMIN,
    ("/v1/queues", "GET"): Role.PRODUCER,
    ("/v1/throughput", "GET"): Role.PRODUCER,
    ("/v1/queue/{queue}", "GET"): Role.WORKER,
    ("/v1/queue/{queue}", "POST"): Role.WORKER,
    ("/v1/queue/{queue}", "PUT"): Role.ADMIN,
    ("/v1/queue/{queue}", "PATCH"): Role.ADMIN,
    ("/v1/queue/{queue}", "DELETE"): Role.ADMIN,
    ("/v1/queue/{queue}/push", "GET"): Role.PRODUCER,
    ("/v1/queue/{queue}/push/secret", "GET"): Role.ADMIN,
    ("/v1/queue/{queue}/push/rotate", "POST"): Role.ADMIN,
    ("/v1/queue/{queue}/notify", "GET"): Role.PRODUCER,
    ("/v1/queue/{queue}/notify/secret", "GET"): Role.ADMIN,
    ("/v1/queue/{queue}/notify/rotate", "POST"): Role.ADMIN,
    ("/v1/queue/{queue}/tasks", "POST"): Role.PRODUCER,
    ("/v1/queue/{queue}/tasks", "GET"): Role.PRODUCER,
    ("/v1/queue/{queue}/tasks/{id}", "GET"): Role.PRODUCER,
    ("/v1/queue/{queue}/tasks/{id}", "PATCH"): Role.ADMIN,
    ("/v1/queue/{queue}/tasks/{id}", "DELETE"): Role.ADMIN,
    ("/v1/queue/{queue}/tasks/{id}/children", "GET"): Role.PRODUCER,
    ("/v1/queue/{queue}/tasks/{id}/parents", "GET"): Role.PRODUCER,
    ("/v1/queue/{queue}/tasks/bulk", "POST"): Role.ADMIN,
    ("/v1/queue/{queue}/redrive", "POST"): Role.ADMIN,
    ("/v1/queue/{queue}/redrive", "GET"): Role.ADMIN,
    ("/v1/queue/{queue}/redrive", "DELETE"): Role.ADMIN,
    ("/v1/workers", "GET"): Role.PRODUCER,
    ("/v1/schedules", "GET"): Role.ADMIN,
    ("/v1/schedules/{schedule}", "GET"): Role.ADMIN,
    ("/v1/schedules/{schedule}", "PUT"): Role.ADMIN,
    ("/v1/schedules/{schedule}", "PATCH"): Role.ADMIN,
    ("/v1/schedules/{schedule}", "DELETE"): Role.ADMIN,
}

# A body that the handler accepts, so that an allowed request reaches its normal answer.
BODIES: dict[tuple[str, str], Any] = {
    ("/v1/queue/{queue}", "POST"): {},
    ("/v1/queue/{queue}", "PUT"): {"timeout": 30000},
    ("/v1/queue/{queue}", "PATCH"): {"paused": False},
    ("/v1/queue/{queue}/tasks", "POST"): {"data": {"n": 1}},
    ("/v1/queue/{queue}/tasks/{id}", "PATCH"): {"status": "cancelled"},
    ("/v1/queue/{queue}/tasks/bulk", "POST"): {"action": "retry"},
    ("/v1/schedules/{schedule}", "PATCH"): {"paused": True},
}

ROLE_OF = {"worker": Role.WORKER, "producer": Role.PRODUCER, "admin": Role.ADMIN}


@pytest.fixture
async def katar() -> AsyncIterator[Katar]:
    instance = Katar("memory://")
    instance.queue("own", persistent=True)
    instance.queue("foreign", persistent=True)
    async with opened(instance):
        yield instance


@pytest.fixture
async def http(katar: Katar, via: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(App(katar.engine, tokens=TOKENS), via) as client:
        yield client


async def task_in(katar: Katar, queue: str) -> str:
    [task] = await katar.engine.enqueue(queue, [_new()])
    return str(task.id)


def _new() -> NewTask:
    return NewTask(data=msgspec.Raw(b"1"), priority=0, delay_ms=0, paused=False)


async def call(
    http: httpx.AsyncClient,
    katar: Katar,
    path: str,
    method: str,
    queue: str,
    headers: dict[str, str],
) -> httpx.Response:
    url = path.replace("{queue}", queue)
    if "{id}" in url:
        url = url.replace("{id}", await task_in(katar, queue))
    body = BODIES.get((path, method))
    if "{schedule}" in url:  # a schedule of the queue: its queue is the one a token must allow
        url = url.replace("{schedule}", f"s-{queue}")
        spec = parse_schedule({"cron": "0 * * * *", "queue": queue})
        if method == "PUT":
            body = {"cron": "0 * * * *", "queue": queue}
        else:
            await katar.engine.put_schedule(f"s-{queue}", spec)
    return await http.request(method, url, json=body, headers=headers)


def test_every_route_has_an_explicit_rule(katar: Katar) -> None:
    app = App(katar.engine, tokens=TOKENS)
    rules = {
        (path, method): route.access
        for path, methods in app.routes
        for method, route in methods.items()
    }
    assert set(rules) == set(EXPECTED), "a route was added or removed: update EXPECTED"
    for route, access in rules.items():
        wanted = Access.OPEN if EXPECTED[route] is None else Access(EXPECTED[route])
        assert access is wanted, route


@pytest.mark.parametrize(("path", "method"), sorted(EXPECTED))
@pytest.mark.parametrize("who", ["nobody", "stranger", "worker", "producer", "admin", "root"])
@pytest.mark.parametrize("queue", ["own", "foreign"])
async def test_the_access_matrix(
    http: httpx.AsyncClient, katar: Katar, path: str, method: str, who: str, queue: str
) -> None:
    needed = EXPECTED[(path, method)]
    if who == "nobody":
        headers = {}
    elif who == "stranger":
        headers = {"authorization": "Bearer katar_not-a-known-token"}
    else:
        headers = bearer(who)
    before = await katar.engine.stats()
    response = await call(http, katar, path, method, queue, headers)
    assert response.status_code < 500, response.text
    role = Role.ADMIN if who == "root" else ROLE_OF.get(who)
    if needed is None:
        assert response.status_code not in (401, 403), response.text
    elif role is None:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == 'Bearer realm="katar"'
    elif role < needed:
        assert response.status_code == 403, response.text
        assert response.json()["needs"] == needed.name.lower()
    elif "{schedule}" in path and method != "PUT" and queue == "foreign" and who != "root":
        # Another scope's schedule is answered as one that does not exist.
        assert response.status_code == 404, response.text
        assert response.json() == {"error": "no schedule 's-foreign'", "schedule": "s-foreign"}
    elif ("{queue}" in path or "{schedule}" in path) and queue == "foreign" and who != "root":
        assert response.status_code == 403, response.text
        assert response.json() == {
            "error": "this token may not use the queue 'foreign'",
            "queue": "foreign",
        }
    elif path == "/metrics" and who != "root":
        assert response.status_code == 403, response.text  # metrics cover every queue
    else:
        assert response.status_code not in (401, 403), response.text
        return
    # A refused request changes nothing (the route's own task, made above, aside).
    after = await katar.engine.stats()
    if "{id}" in path:
        after[queue]["queued"] -= 1
    assert after == before


async def test_401_bodies_say_what_to_send_and_nothing_about_the_tokens(
    http: httpx.AsyncClient, via: str
) -> None:
    missing = await http.post("/v1/queue/own", json={})
    assert missing.status_code == 401
    assert "Authorization: Bearer <token>" in missing.json()["error"]
    basic = await http.post("/v1/queue/own", json={}, headers={"authorization": "Basic eDp5"})
    assert basic.status_code == 401
    assert "must be 'Bearer <token>'" in basic.json()["error"]
    secrets = ["katar_worker-secre", "katar_worker-secretx", "x" * 5000]
    if via == "asgi":  # on the wire a value cannot end in a space: clients refuse to send it
        secrets.append("")
    for secret in secrets:
        wrong = await http.post(
            "/v1/queue/own", json={}, headers={"authorization": f"Bearer {secret}"}
        )
        assert wrong.status_code == 401, secret
        assert set(wrong.json()) == {"error"}
        assert "ops" not in wrong.text
        assert "worker" not in wrong.text


async def test_the_scheme_is_case_insensitive_and_spaces_are_forgiven(
    http: httpx.AsyncClient, via: str
) -> None:
    headers = [f"bearer {SECRETS['worker']}", f"BEARER  {SECRETS['worker']}"]
    if via == "asgi":  # on the wire a value cannot end in a space: clients refuse to send it
        headers.append(f"Bearer {SECRETS['worker']} ")
    for header in headers:
        response = await http.post("/v1/queue/own", json={}, headers={"authorization": header})
        assert response.status_code == 204, header


async def test_a_scoped_admin_lists_only_its_queues(http: httpx.AsyncClient) -> None:
    scoped = await http.get("/v1/queues", headers=bearer("admin"))
    assert [q["name"] for q in scoped.json()["queues"]] == ["own"]
    everything = await http.get("/v1/queues", headers=bearer("root"))
    assert sorted(q["name"] for q in everything.json()["queues"]) == ["foreign", "own"]


async def test_another_scopes_schedule_is_unknown_to_every_verb(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    theirs = {"cron": "0 * * * *", "queue": "foreign", "data": "theirs"}
    await katar.engine.put_schedule("sb3", parse_schedule(theirs))
    before = msgspec.to_builtins((await katar.engine.get_schedule("sb3")).spec)
    admin = bearer("admin")  # an admin of the queue "own" only
    unknown = await http.get("/v1/schedules/nope", headers=admin)
    assert unknown.status_code == 404
    for method, body in [("GET", None), ("PATCH", {"paused": True}), ("DELETE", None)]:
        answer = await http.request(method, "/v1/schedules/sb3", json=body, headers=admin)
        assert answer.status_code == 404, (method, answer.text)
        assert answer.json() == {"error": "no schedule 'sb3'", "schedule": "sb3"}
        assert "foreign" not in answer.text
    # A PUT naming a queue of its own may not take over (or move) the other scope's schedule.
    ours = {"cron": "* * * * *", "queue": "own", "data": "ours"}
    taken = await http.put("/v1/schedules/sb3", json=ours, headers=admin)
    assert taken.status_code == 404, taken.text
    assert "choose another name" in taken.json()["error"]
    assert "foreign" not in taken.text
    assert "last_tick" not in taken.text
    listed = await http.get("/v1/schedules", headers=admin)
    assert listed.json() == {"schedules": []}
    kept = await katar.engine.get_schedule("sb3")
    assert msgspec.to_builtins(kept.spec) == before
    # Its own schedules it manages; an unscoped admin sees them all.
    assert (await http.put("/v1/schedules/mine", json=ours, headers=admin)).status_code == 200
    listed = await http.get("/v1/schedules", headers=admin)
    assert [s["name"] for s in listed.json()["schedules"]] == ["mine"]
    everything = await http.get("/v1/schedules", headers=bearer("root"))
    assert [s["name"] for s in everything.json()["schedules"]] == ["mine", "sb3"]
    assert (await http.delete("/v1/schedules/sb3", headers=bearer("root"))).status_code == 200


async def test_a_worker_drains_its_queue_with_its_token(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    task = await task_in(katar, "own")
    polled = await http.post("/v1/queue/own", json={}, headers=bearer("worker"))
    assert polled.json()["tasks"][0]["_id"] == task
    acked = await http.post(
        "/v1/queue/own",
        json={"tasks": [{"_id": task, "status": "done"}]},
        headers=bearer("worker"),
    )
    assert acked.status_code == 204
    record = await http.get(f"/v1/queue/own/tasks/{task}", headers=bearer("producer"))
    assert record.json()["status"] == "done"


async def test_a_forbidden_ack_changes_nothing(http: httpx.AsyncClient, katar: Katar) -> None:
    task = await task_in(katar, "foreign")
    polled = await http.post("/v1/queue/foreign", json={}, headers=bearer("root"))
    assert polled.status_code == 200
    refused = await http.post(
        "/v1/queue/foreign",
        json={"tasks": [{"_id": task, "status": "done"}]},
        headers=bearer("worker"),
    )
    assert refused.status_code == 403
    record = await http.get(f"/v1/queue/foreign/tasks/{task}", headers=bearer("root"))
    assert record.json()["status"] == "in progress"


async def test_acks_of_another_queues_tasks_answer_alike_whatever_their_state(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    # A worker of "own" acks ids of "foreign": queued, in progress, done, failed, and of a
    # queue without history, deleted. Each
    # answer is the one for a task that is gone (ignored), so it tells which of foreign's
    # tasks finished no more than it changes them.
    root = bearer("root")
    await katar.engine.put_queue("gone", QueueOptions())  # no history: done is deleted
    failed, running, done = [await task_in(katar, "foreign") for _ in range(3)]
    gone = await task_in(katar, "gone")
    taken = await http.post("/v1/queue/foreign", json={"max": 3}, headers=root)
    assert [t["_id"] for t in taken.json()["tasks"]] == [failed, running, done]
    finish = [{"_id": i, "status": s} for i, s in ((done, "done"), (failed, "failed"))]
    await http.post("/v1/queue/foreign", json={"tasks": finish, "max": 0}, headers=root)
    await http.post("/v1/queue/foreign/tasks", json={"data": 1}, headers=root)  # queued
    await http.post("/v1/queue/gone", json={}, headers=root)
    ack = {"_id": gone, "status": "done"}
    await http.post("/v1/queue/gone", json={"tasks": [ack], "max": 0}, headers=root)
    waiting = (await http.get("/v1/queue/foreign/tasks", headers=root)).json()["tasks"][-1]
    before = (await http.get("/v1/queue/foreign/tasks", headers=root)).json()
    answers = set()
    for task_id in (waiting["_id"], running, done, failed, gone):
        for status in ("done", "failed", "in progress"):
            answer = await http.post(
                "/v1/queue/own",
                json={"tasks": [{"_id": task_id, "status": status}]},
                headers=bearer("worker"),
            )
            answers.add((answer.status_code, answer.text))
    assert answers == {(204, "")}
    assert (await http.get("/v1/queue/foreign/tasks", headers=root)).json() == before
    never = await http.post(
        "/v1/queue/own",
        json={"tasks": [{"_id": "999999", "status": "done"}]},
        headers=bearer("worker"),
    )
    assert never.status_code == 404  # an id never issued, of any queue


async def test_tokens_never_reach_the_log(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for who in SECRETS:
        await http.post("/v1/queue/own", json={"max": "x"}, headers=bearer(who))
        await http.delete("/v1/queue/foreign", headers=bearer(who))
    await http.get("/v1/queues", headers={"authorization": "Bearer katar_guess"})
    text = caplog.text
    assert not any(secret in text for secret in SECRETS.values())
    assert "katar_guess" not in text


async def test_an_open_server_needs_no_token(katar: Katar, via: str) -> None:
    async with app_client(App(katar.engine), via) as client:
        assert (await client.delete("/v1/queue/foreign")).status_code == 200
        # A token sent to an open server is not checked: there is nothing to check it against.
        response = await client.post("/v1/queue/own", json={}, headers=bearer("worker"))
        assert response.status_code == 204


async def test_a_scoped_admin_redrives_to_its_own_queues_only(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    """An admin of "own" only cannot move tasks into "foreign" by a redrive of "own": not
    with ``to`` (an unknown queue to it), nor back to their origin (they stay)."""
    await katar.put_queue("foreign", persistent=True, max_attempts=1, dead_letter="own")
    (task,) = await katar.engine.enqueue("foreign", [_new()])
    (taken,) = await katar.engine.poll("foreign", limit=1)
    await katar.engine.poll("foreign", [Ack(task_id=str(taken.id), status="failed")], limit=0)
    assert (await katar.engine.get_task("own", task.id)).dead_letter is not None
    told = await http.post("/v1/queue/own/redrive", json={"to": "foreign"}, headers=bearer("admin"))
    assert told.status_code == 404
    back = await http.post("/v1/queue/own/redrive", headers=bearer("admin"))
    assert back.json() == {"matched": 1, "moved": 0, "no_origin": 1}
    root = await http.post("/v1/queue/own/redrive", headers=bearer("root"))
    assert root.json() == {"matched": 1, "moved": 1, "no_origin": 0}
