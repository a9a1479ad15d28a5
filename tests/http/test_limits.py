"""The server's limits: each breach is a clear 4xx, and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import httpx
import pytest

from katar import Katar, QueueOptions
from katar.core.model import TaskFilter, states_of
from katar.errors import ConfigError
from katar.http import App, Limits
from katar.http.auth import Role, Token, digest
from tests.http.conftest import app_client, opened

ADMIN_TOKEN = Token(sha256=digest("admin"), role=Role.ADMIN, queues=frozenset({"*"}))

LIMITS = Limits(
    max_body_bytes=4096,
    max_task_bytes=100,
    max_tasks_per_enqueue=5,
    max_wait=2,
    max_long_polls=2,
    max_list=10,
    max_queue_name=12,
)


@pytest.fixture
async def katar() -> AsyncIterator[Katar]:
    instance = Katar("memory://")
    instance.queue("q", persistent=True, max_batch=3)
    async with opened(instance):
        yield instance


@pytest.fixture
def app(katar: Katar) -> App:
    return App(katar.engine, limits=LIMITS)


@pytest.fixture
async def http(app: App, via: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(app, via) as client:
        yield client


async def test_task_data_over_the_limit_is_413_and_nothing_is_enqueued(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    fits = {"data": "x" * 98}  # 100 bytes of JSON with its quotes
    assert (await http.post("/v1/queue/q/tasks", json=fits)).status_code == 201
    batch = {"tasks": [fits, {"data": "x" * 99}]}
    response = await http.post("/v1/queue/q/tasks", json=batch)
    assert response.status_code == 413
    assert response.json()["error"].startswith("tasks[1]: data is 101 bytes of JSON")
    assert (await katar.engine.stats())["q"]["queued"] == 1


async def test_bodies_and_batches_over_their_limits(http: httpx.AsyncClient) -> None:
    big = await http.post("/v1/queue/q", content=b" " * 5000)
    assert big.status_code == 413
    many = await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": 1}] * 6})
    assert many.status_code == 422
    assert "at most 5 tasks per request" in many.json()["error"]
    page = await http.get("/v1/queue/q/tasks?limit=11")
    assert page.status_code == 422


async def test_max_is_capped_by_the_queues_max_batch(http: httpx.AsyncClient) -> None:
    await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": 1}] * 5})
    polled = await http.post("/v1/queue/q", json={"max": 10**12})
    assert len(polled.json()["tasks"]) == 3  # the contract: capped, not refused


async def test_queue_names_over_the_length_limit(http: httpx.AsyncClient) -> None:
    assert (await http.put("/v1/queue/twelve-chars", json={})).status_code == 200
    response = await http.put("/v1/queue/thirteen-char", json={})
    assert response.status_code == 422
    assert "use 1 to 12 letters" in response.json()["error"]
    for bad in ("a%20b", "-dash", "%C3%A9t%C3%A9", "a%22b"):
        assert (await http.put(f"/v1/queue/{bad}", json={})).status_code == 422, bad
    # An encoded slash is a character of the name (an invalid one), not a separator.
    assert (await http.put("/v1/queue/a%2Fb", json={})).status_code == 422


async def test_long_polls_beyond_the_limit_are_429_and_their_acks_untouched(
    http: httpx.AsyncClient, app: App, katar: Katar
) -> None:
    await http.post("/v1/queue/q/tasks", json={"data": 1})
    taken = (await http.post("/v1/queue/q", json={})).json()["tasks"][0]
    held = [asyncio.ensure_future(http.post("/v1/queue/q", json={"wait": 2})) for _ in range(2)]
    # ASYNC110: polling a flag set by another thread or process, which cannot set an asyncio event.
    while app.long_polls < 2:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    ack = {"_id": taken["_id"], "status": "done"}
    refused = await http.post("/v1/queue/q", json={"wait": 1, "tasks": [ack]})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "limit of 2 long polls" in refused.json()["error"]
    assert (await katar.engine.stats())["q"]["in progress"] == 1
    # A short poll is not a long poll: it goes through.
    assert (await http.post("/v1/queue/q", json={"tasks": [ack]})).status_code == 204
    await http.post("/v1/queue/q/tasks", json={"tasks": [{"data": 2}, {"data": 3}]})
    answers = await asyncio.gather(*held)
    assert [a.status_code for a in answers] == [200, 200]
    assert app.long_polls == 0


# Answers are bounded: tasks of up to 1000 bytes, answers of at most 64 KiB + 1000 bytes.
SMALL_ANSWERS = Limits(max_task_bytes=1000, max_answer_bytes=64 * 1024 + 1000, max_list=1000)


@pytest.fixture
async def bounded(katar: Katar, via: str) -> AsyncIterator[httpx.AsyncClient]:
    katar.engine.queues["big"] = QueueOptions(persistent=True, max_batch=1000)
    await katar.engine.store.save_queue("big", katar.engine.queues["big"])
    async with app_client(App(katar.engine, limits=SMALL_ANSWERS), via) as client:
        yield client


async def test_a_page_of_tasks_is_cut_to_fit_and_next_goes_on(
    bounded: httpx.AsyncClient,
) -> None:
    data = "x" * 900
    for _ in range(2):
        sent = await bounded.post("/v1/queue/big/tasks", json={"tasks": [{"data": data}] * 60})
        assert sent.status_code == 201
    seen: list[str] = []
    after = "0"
    pages = 0
    while after is not None:
        response = await bounded.get(f"/v1/queue/big/tasks?limit=1000&after={after}")
        assert response.status_code == 200
        assert len(response.content) <= SMALL_ANSWERS.max_answer_bytes
        page = response.json()
        seen += [record["_id"] for record in page["tasks"]]
        after = page["next"]
        pages += 1
    assert len(seen) == len(set(seen)) == 120  # every task once, over several pages
    assert pages >= 2


async def test_a_poll_takes_fewer_tasks_so_that_its_answer_fits(
    bounded: httpx.AsyncClient, katar: Katar
) -> None:
    data = "x" * 998  # 1000 bytes of JSON: the most a task may hold
    await bounded.post("/v1/queue/big/tasks", json={"tasks": [{"data": data}] * 100})
    response = await bounded.post("/v1/queue/big", json={"max": 100})
    assert response.status_code == 200
    assert len(response.content) <= SMALL_ANSWERS.max_answer_bytes
    taken = len(response.json()["tasks"])
    assert taken == SMALL_ANSWERS.max_poll < 100
    # The tasks left out were not leased: no attempt counted.
    counts = await katar.engine.stats()
    assert counts["big"]["in progress"] == taken
    assert counts["big"]["queued"] == 100 - taken
    queued = await katar.engine.list_tasks("big", TaskFilter(states=states_of(["queued"])), 1000)
    assert all(task.attempts == 0 for task in queued)


def test_an_answer_bound_too_small_for_one_task_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_answer_bytes must hold one task"):
        Limits(max_task_bytes=1024 * 1024, max_answer_bytes=1024 * 1024)
    assert Limits().max_poll >= QueueOptions().max_batch  # the defaults cut no default poll


def worker_token(secret: str, *queues: str) -> Token:
    return Token(sha256=digest(secret), role=Role.WORKER, queues=frozenset(queues))


async def test_one_queue_or_one_token_cannot_take_every_long_poll(katar: Katar, via: str) -> None:
    for name in ("A", "B", "C"):
        await katar.engine.put_queue(name, QueueOptions())
    tokens = [worker_token("a", "A"), worker_token("b", "B"), worker_token("ac", "A", "C")]
    limits = Limits(
        max_wait=5, max_long_polls=10, max_long_polls_per_queue=3, max_long_polls_per_token=4
    )
    app = App(katar.engine, limits=limits, tokens=[*tokens, ADMIN_TOKEN])
    async with app_client(app, via) as http:

        def poll(secret: str, queue: str) -> Awaitable[httpx.Response]:
            headers = {"Authorization": f"Bearer {secret}"}
            return http.post(f"/v1/queue/{queue}", json={"wait": 5}, headers=headers)

        admin = {"Authorization": "Bearer admin"}
        held = [asyncio.ensure_future(poll("a", "A")) for _ in range(3)]
        while app.long_polls < 3:  # noqa: ASYNC110  (the app's counter, no event to wait on)
            await asyncio.sleep(0.01)
        refused = await poll("a", "A")  # the queue's share is taken: by A's own token
        assert refused.status_code == 429
        assert "the queue 'A' holds its limit of 3" in refused.json()["error"]
        assert "max_long_polls_per_queue" in refused.json()["error"]
        # An outcome wait on A counts as a long poll of A.
        paused = {"data": 0, "status": "paused"}  # not delivered to the polls held
        made = await http.post("/v1/queue/A/tasks", json=paused, headers=admin)
        task = made.json()["tasks"][0]
        wait = await http.get(f"/v1/queue/A/tasks/{task['_id']}?wait=1", headers=admin)
        assert wait.status_code == 429
        # B's worker is not concerned: its long poll is held, and gets B's task.
        b = asyncio.ensure_future(poll("b", "B"))
        while app.long_polls < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        # A token of two queues: its share of the server's long polls is its own.
        held.append(asyncio.ensure_future(poll("ac", "C")))
        while app.long_polls < 5:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await http.post("/v1/queue/B/tasks", json={"data": 1}, headers=admin)
        assert (await b).status_code == 200
        await http.post(
            "/v1/queue/A/tasks", json={"tasks": [{"data": n} for n in range(3)]}, headers=admin
        )
        await http.post("/v1/queue/C/tasks", json={"data": 9}, headers=admin)
        answers = await asyncio.gather(*held)
        assert [a.status_code for a in answers] == [200, 200, 200, 200]
        assert app.long_polls == 0
        # The token of A and C: three long polls of C and one of A make its four.
        held = [asyncio.ensure_future(poll("ac", "C")) for _ in range(3)]
        held.append(asyncio.ensure_future(poll("ac", "A")))
        while app.long_polls < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        refused = await poll("ac", "A")
        assert refused.status_code == 429
        assert "this token holds its limit of 4" in refused.json()["error"]
        await http.post(
            "/v1/queue/C/tasks", json={"tasks": [{"data": n} for n in range(3)]}, headers=admin
        )
        await http.post("/v1/queue/A/tasks", json={"data": 4}, headers=admin)
        assert [a.status_code for a in await asyncio.gather(*held)] == [200] * 4
    assert app.long_polls == 0


async def test_the_workers_of_one_queue_cannot_push_out_anothers(
    http: httpx.AsyncClient, katar: Katar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(katar.engine._workers, "limit", 20)
    await katar.engine.put_queue("B", QueueOptions())
    for name in ("b1", "b2"):
        assert (await http.post("/v1/queue/B", json={"worker": name})).status_code == 204
    for n in range(200):  # names from queue q, as many as its clients care to make up
        assert (await http.post("/v1/queue/q", json={"worker": f"q{n}"})).status_code == 204
    workers = (await http.get("/v1/workers")).json()["workers"]
    names = {w["name"]: w["queues"] for w in workers}
    assert names["b1"] == names["b2"] == ["B"]
    assert len(names) == 20
    assert {n for n in names if n.startswith("q")} == {f"q{n}" for n in range(182, 200)}
    # A new name of B takes the place of q's longest unseen, q having the most.
    assert (await http.post("/v1/queue/B", json={"worker": "b3"})).status_code == 204
    workers = (await http.get("/v1/workers")).json()["workers"]
    names = {w["name"]: w["queues"] for w in workers}
    assert {"b1", "b2", "b3", "q199"} <= set(names)
    assert "q182" not in names
    assert len(names) == 20
