"""Debounce (debounce_key) over HTTP: the field and its 422s, 200 against 201, the record,
batches, Idempotency-Key, and the OpenAPI document's agreement with the server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import pytest

from katar import Katar
from katar.http import App


@pytest.mark.storeless
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"data": 1, "debounce_key": "k"}, "debounce_key needs a delay"),
        ({"data": 1, "debounce_key": "k", "delay": 0}, "debounce_key needs a delay"),
        (
            {"tasks": [{"data": 1}, {"data": 2, "debounce_key": "k"}]},
            "tasks[1]: debounce_key needs a delay",
        ),
        (
            {"data": 1, "delay": 5, "debounce_key": "k", "unique_key": "k"},
            "give debounce_key or unique_key, not both",
        ),
        (
            {"data": 1, "delay": 5, "debounce_key": "k", "after": ["1"]},
            "cannot wait for others (after)",
        ),
        ({"data": 1, "delay": 5, "debounce_key": ""}, "$.debounce_key"),
        ({"data": 1, "delay": 5, "debounce_key": "x" * 256}, "$.debounce_key"),
        ({"data": 1, "delay": 5, "debounce_key": "a\nb"}, "printable"),
        ({"data": 1, "delay": 5, "debounce_key": 5}, "$.debounce_key"),
    ],
)
async def test_bad_debounce_keys_are_422_and_change_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], fragment: str
) -> None:
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]
    assert (await client.get("/v1/queue/q/tasks")).json()["tasks"] == []


async def test_an_enqueue_of_a_waiting_key_answers_200_with_the_task(
    client: httpx.AsyncClient,
) -> None:
    first = await client.post(
        "/v1/queue/q/tasks", json={"data": {"v": 1}, "delay": 60, "debounce_key": "doc-1"}
    )
    assert first.status_code == 201, first.text
    (created,) = first.json()["tasks"]
    assert (created["debounce_key"], created["debounced"]) == ("doc-1", False)
    second = await client.post(
        "/v1/queue/q/tasks",
        json={"data": {"v": 2}, "run_at": "2030-01-01T00:00:00Z", "debounce_key": "doc-1"},
    )
    assert second.status_code == 200, second.text
    (debounced,) = second.json()["tasks"]
    assert debounced["_id"] == created["_id"]
    assert debounced["debounced"] is True
    assert debounced["data"] == {"v": 2}
    assert debounced["run_at"] == "2030-01-01T00:00:00.000Z"
    assert debounced["status"] == "queued"
    record = (await client.get(f"/v1/queue/q/tasks/{created['_id']}")).json()
    assert (record["data"], record["debounce_key"], record["debounced"]) == (
        {"v": 2},
        "doc-1",
        False,
    )
    assert len((await client.get("/v1/queue/q/tasks")).json()["tasks"]) == 1
    # A plain task's record says it has no debounce_key.
    plain = (await client.post("/v1/queue/q/tasks", json={"data": 3})).json()["tasks"][0]
    assert (plain["debounce_key"], plain["debounced"]) == (None, False)


async def test_once_delivered_the_key_is_free(client: httpx.AsyncClient) -> None:
    body = {"data": 1, "run_at": "2000-01-01T00:00:00Z", "debounce_key": "k"}
    first = (await client.post("/v1/queue/q/tasks", json=body)).json()["tasks"][0]
    polled = await client.post("/v1/queue/q", json={"max": 1})
    assert [t["_id"] for t in polled.json()["tasks"]] == [first["_id"]]
    again = await client.post("/v1/queue/q/tasks", json={**body, "data": 2})
    assert again.status_code == 201
    assert again.json()["tasks"][0]["_id"] != first["_id"]


async def test_a_batch_with_one_key_ends_with_the_last(client: httpx.AsyncClient) -> None:
    tasks = [{"data": n, "delay": 10 * n, "debounce_key": "k"} for n in (1, 2, 3)]
    response = await client.post("/v1/queue/q/tasks", json={"tasks": [*tasks, {"data": "x"}]})
    assert response.status_code == 201
    answered = response.json()["tasks"]
    assert [(t["data"], t["debounced"]) for t in answered] == [
        (1, False),
        (2, True),
        (3, True),
        ("x", False),
    ]
    assert answered[0]["_id"] == answered[1]["_id"] == answered[2]["_id"]
    stored = (await client.get(f"/v1/queue/q/tasks/{answered[0]['_id']}")).json()
    assert stored["data"] == 3
    # Every task of a batch debounced: nothing created, 200.
    again = await client.post("/v1/queue/q/tasks", json={"tasks": tasks[:2]})
    assert again.status_code == 200
    assert {t["_id"] for t in again.json()["tasks"]} == {answered[0]["_id"]}


async def test_an_idempotent_repeat_answers_the_debounce_again(client: httpx.AsyncClient) -> None:
    body = {"data": 1, "delay": 60, "debounce_key": "k"}
    first = (await client.post("/v1/queue/q/tasks", json=body)).json()["tasks"][0]
    headers = {"Idempotency-Key": "edit-2"}
    debounce = {**body, "data": 2}
    made = await client.post("/v1/queue/q/tasks", json=debounce, headers=headers)
    repeat = await client.post("/v1/queue/q/tasks", json=debounce, headers=headers)
    assert made.status_code == repeat.status_code == 200
    assert made.json()["tasks"][0]["_id"] == repeat.json()["tasks"][0]["_id"] == first["_id"]
    assert repeat.json()["tasks"][0]["debounced"] is True
    assert repeat.json()["tasks"][0]["updated_at"] == made.json()["tasks"][0]["updated_at"]


@pytest.mark.storeless
async def test_the_document_and_the_server_agree_on_debounce_keys(
    katar: Katar, client: httpx.AsyncClient
) -> None:
    document = json.loads(App(katar.engine).openapi_json)
    schema = {**document["components"]["schemas"]["NewTask"], "components": document["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    bodies = [
        {"data": 1, "debounce_key": "k", "delay": 5},
        {"data": 1, "debounce_key": "k", "run_at": "2030-01-01T00:00:00Z"},
        {"data": 1, "debounce_key": "k", "delay": 5, "after": []},
        {"data": 1, "debounce_key": "k"},
        {"data": 1, "debounce_key": "k", "delay": 0},
        {"data": 1, "debounce_key": "k", "delay": 5, "unique_key": "u"},
        {"data": 1, "debounce_key": "k", "delay": 5, "after": ["1"]},
        {"data": 1, "debounce_key": None},
    ]
    for body in bodies:
        response = await client.post("/v1/queue/plain/tasks", json=body)
        valid = validator.is_valid(body)
        assert valid == (response.status_code < 400), (body, response.text)
