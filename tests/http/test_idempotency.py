"""``Idempotency-Key`` on ``POST /v1/queue/{queue}/tasks``, and the answer when PostgreSQL's
outcome is unknown."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import httpx
import msgspec
import psycopg
import pytest

from katar import Katar
from katar.http import App
from tests.http.conftest import app_client

TASKS = "/v1/queue/q/tasks"
ENQUEUING: contextvars.ContextVar[bool] = contextvars.ContextVar("enqueuing", default=False)
BODY = {"tasks": [{"data": {"n": 1}}, {"data": "two", "priority": "high"}, {"data": 3, "delay": 5}]}


def key(value: str | bytes) -> dict[str, Any]:
    return {"Idempotency-Key": value}


async def count(client: httpx.AsyncClient, queue: str = "q") -> int:
    response = await client.get(f"/v1/queue/{queue}/tasks", params={"limit": 1000})
    return len(response.json()["tasks"])


async def test_a_repeat_answers_what_the_first_answered(client: httpx.AsyncClient) -> None:
    first = await client.post(TASKS, json=BODY, headers=key("order-17"))
    assert first.status_code == 201
    again = await client.post(TASKS, json=BODY, headers=key("order-17"))
    assert again.status_code == 201
    assert again.content == first.content  # same ids, same records
    assert await count(client) == 3


async def test_same_key_with_another_body_is_422_and_creates_nothing(
    client: httpx.AsyncClient,
) -> None:
    await client.post(TASKS, json={"data": 1}, headers=key("k"))
    response = await client.post(TASKS, json={"data": 2}, headers=key("k"))
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]
    assert response.json()["key"] == "k"
    assert await count(client) == 1


async def test_keys_are_per_queue_and_optional(client: httpx.AsyncClient) -> None:
    in_q = await client.post(TASKS, json={"data": 1}, headers=key("k"))
    in_plain = await client.post("/v1/queue/plain/tasks", json={"data": 1}, headers=key("k"))
    assert in_plain.status_code == 201
    assert in_plain.json()["tasks"][0]["_id"] != in_q.json()["tasks"][0]["_id"]
    for _ in range(2):  # no key: each request creates
        assert (await client.post(TASKS, json={"data": 1})).status_code == 201
    assert await count(client) == 3


@pytest.mark.storeless
@pytest.mark.parametrize(
    "value", ["x" * 256, b"caf\xc3\xa9", b"tab\there", ""], ids=["long", "utf8", "tab", "empty"]
)
async def test_an_invalid_key_is_422_and_creates_nothing(
    client: httpx.AsyncClient, value: str | bytes
) -> None:
    response = await client.post(TASKS, json={"data": 1}, headers=key(value))
    assert response.status_code == 422, response.text
    assert response.json()["header"] == "Idempotency-Key"
    assert await count(client) == 0


@pytest.mark.storeless
async def test_two_keys_are_422(client: httpx.AsyncClient) -> None:
    headers = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    response = await client.post(TASKS, json={"data": 1}, headers=headers)
    assert response.status_code == 422
    assert await count(client) == 0


async def test_a_commit_whose_outcome_is_unknown_answers_504_and_a_retry_the_first_ids(
    katar: Katar, store_kind: str, via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store_kind != "postgres":
        pytest.skip("only a PostgreSQL connection can be lost during COMMIT")
    real_exit = psycopg.AsyncTransaction.__aexit__
    real_enqueue = katar.engine.store.enqueue_once
    lost: list[bool] = []

    async def commit_then_lose_the_answer(
        self: psycopg.AsyncTransaction, kind: Any, exc: Any, tb: Any
    ) -> Any:
        outcome = await real_exit(self, kind, exc, tb)  # the real COMMIT: it is done
        if kind is None and ENQUEUING.get() and not lost:
            lost.append(True)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return outcome

    async def enqueue_once(*args: Any) -> Any:
        ENQUEUING.set(True)  # only this request's task: not the engine's housekeeping
        return await real_enqueue(*args)

    async with app_client(App(katar.engine), via) as client:
        monkeypatch.setattr(psycopg.AsyncTransaction, "__aexit__", commit_then_lose_the_answer)
        monkeypatch.setattr(katar.engine.store, "enqueue_once", enqueue_once)
        response = await client.post(TASKS, json=BODY, headers=key("lost-answer"))
        monkeypatch.undo()
        assert response.status_code == 504
        answer = response.json()
        assert answer["outcome"] == "unknown"
        assert "Idempotency-Key" in answer["error"]
        stored = (await client.get(TASKS)).json()["tasks"]
        assert len(stored) == 3  # it did commit
        retry = await client.post(TASKS, json=BODY, headers=key("lost-answer"))
        assert retry.status_code == 201
        assert [t["_id"] for t in retry.json()["tasks"]] == [t["_id"] for t in stored]
        assert await count(client) == 3


async def test_a_connection_lost_before_commit_is_503_and_nothing_happened(
    katar: Katar, store_kind: str, via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store_kind != "postgres":
        pytest.skip("a PostgreSQL connection lost mid-transaction")
    real_execute = psycopg.AsyncConnection.execute

    async def lose_on_insert(self: psycopg.AsyncConnection[Any], query: Any, *args: Any) -> Any:
        if str(query).startswith("INSERT INTO") and ".tasks (" in str(query):
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return await real_execute(self, query, *args)

    async with app_client(App(katar.engine), via) as client:
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", lose_on_insert)
        response = await client.post(TASKS, json=BODY, headers=key("k"))
        monkeypatch.undo()
        assert response.status_code == 503
        assert "outcome" not in response.json()
        assert await count(client) == 0
        retry = await client.post(TASKS, json=BODY, headers=key("k"))  # the key is free
        assert retry.status_code == 201
        assert await count(client) == 3


def test_the_error_body_is_json() -> None:
    from katar.errors import OutcomeUnknown
    from katar.http.responses import error_response

    response = error_response(OutcomeUnknown(cause="PostgreSQL: gone"))
    assert response.status == 504
    body = msgspec.json.decode(response.body)
    assert body["outcome"] == "unknown"
    assert body["cause"] == "PostgreSQL: gone"
    assert "retrying" in body["error"].lower() or "retry" in body["error"].lower()


async def test_a_connection_lost_during_a_one_statement_enqueue_is_504_outcome_unknown(
    katar: Katar, store_kind: str, via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plain tasks without a key go to PostgreSQL as one statement that commits as it ends:
    # a connection lost while it runs leaves the outcome unknown (here it did commit).
    if store_kind != "postgres":
        pytest.skip("a PostgreSQL connection lost while its statement commits")
    real_execute = psycopg.AsyncConnection.execute

    async def commit_then_lose_the_connection(
        self: psycopg.AsyncConnection[Any], query: Any, *args: Any
    ) -> Any:
        cursor = await real_execute(self, query, *args)
        if str(query).startswith("WITH ins AS (INSERT INTO"):
            self.pgconn.finish()  # gone, with the answer
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return cursor

    async with app_client(App(katar.engine), via) as client:
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", commit_then_lose_the_connection)
        response = await client.post(TASKS, json={"data": "once"})
        monkeypatch.undo()
        assert response.status_code == 504
        assert response.json()["outcome"] == "unknown"
        # A lost connection makes the store probe PostgreSQL before it is used again.
        for _ in range(100):
            if (await client.get(TASKS)).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert await count(client) == 1  # it did commit
        response = await client.post(TASKS, json={"data": "twice"})
        assert response.status_code == 201
        assert await count(client) == 2
