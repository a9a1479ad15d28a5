"""A native enqueue's ``attributes``: SQS message attributes kept with the task, checked by
the rule a SendMessage is checked by (katar.attributes), counted towards the task's size as
SQS counts them, each mistake a 422 (a 413 over the size) and nothing enqueued."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from katar import Katar
from katar.errors import ValidationError
from katar.http import App, Limits
from tests.http.conftest import app_client

ATTRIBUTES = {
    "MessageAttributes": {
        "lang": {"DataType": "String", "StringValue": "en"},
        "cents": {"DataType": "Number.int", "StringValue": "1250"},
        "raw": {"DataType": "Binary", "BinaryValue": "AAH/"},
    },
    "MessageSystemAttributes": {
        "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3f"}
    },
}


async def test_a_task_keeps_its_attributes(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queue/q/tasks", json={"data": 1, "attributes": ATTRIBUTES})
    assert response.status_code == 201, response.text
    (created,) = response.json()["tasks"]
    assert created["attributes"] == ATTRIBUTES
    record = (await client.get(f"/v1/queue/q/tasks/{created['_id']}")).json()
    assert record["attributes"] == ATTRIBUTES
    (delivered,) = (await client.post("/v1/queue/q", json={})).json()["tasks"]
    assert (delivered["_id"], delivered["attributes"]) == (created["_id"], ATTRIBUTES)


async def test_a_batch_gives_each_task_its_own(client: httpx.AsyncClient) -> None:
    only = {"MessageAttributes": {"a": {"DataType": "String", "StringValue": "x"}}}
    body = {"tasks": [{"data": 1, "attributes": only}, {"data": 2}, {"data": 3, "attributes": {}}]}
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 201, response.text
    # Attributes that hold none are none, as a send without any.
    assert [t["attributes"] for t in response.json()["tasks"]] == [only, None, None]


def _attribute(**value: Any) -> dict[str, Any]:
    return {"MessageAttributes": {"name": value}}


STRING = {"DataType": "String", "StringValue": "v"}

#: Each mistake a SendMessage refuses, and the words of the 422 that says so.
MISTAKES: list[tuple[Any, str]] = [
    ("text", 'Expected `object | null`, got `str` - at `$.tasks[1].attributes` (attributes is {"'),
    ({"MessageDeduplicationId": "d"}, "unknown field `MessageDeduplicationId`"),
    ({"MessageAttributes": []}, "Expected `object`"),
    (_attribute(StringValue="v"), "missing required field `DataType`"),
    (_attribute(DataType="", StringValue="v"), "non-empty attribute type"),
    (_attribute(DataType="Text", StringValue="v"), "supported type prefixes"),
    (_attribute(DataType="String." + "x" * 256, StringValue="v"), "supported type prefixes"),
    (_attribute(DataType="String"), "must use field 'String'"),
    (_attribute(DataType="String", StringValue=""), "non-empty value"),
    (_attribute(DataType="String", StringValue="a\x00b"), "outside the allowed set"),
    (_attribute(DataType="String", StringValue="v", BinaryValue="AA=="), "field 'String'"),
    (_attribute(DataType="Number", StringValue="ten"), "to a number"),
    (_attribute(DataType="Number", StringValue="NaN"), "not a valid number"),
    (_attribute(DataType="Number", StringValue="1" * 41), "not a valid number"),
    (_attribute(DataType="Binary", StringValue="v"), "must use field 'Binary'"),
    (_attribute(DataType="Binary", BinaryValue="not base64!"), "not base64"),
    (_attribute(DataType="Binary", BinaryValue=""), "non-empty value"),
    ({"MessageAttributes": {"AWS.x": STRING}}, "Message attribute name 'AWS.x' is invalid"),
    ({"MessageAttributes": {"amazon.x": STRING}}, "is invalid"),
    ({"MessageAttributes": {".x": STRING}}, "is invalid"),
    ({"MessageAttributes": {"x.": STRING}}, "is invalid"),
    ({"MessageAttributes": {"a..b": STRING}}, "is invalid"),
    ({"MessageAttributes": {"a b": STRING}}, "is invalid"),
    ({"MessageAttributes": {"x" * 257: STRING}}, "is invalid"),
    ({"MessageAttributes": {f"a{i}": STRING for i in range(11)}}, "[11] exceeds"),
    ({"MessageSystemAttributes": {"Other": STRING}}, "name 'Other' is invalid"),
    (
        {"MessageSystemAttributes": {"AWSTraceHeader": {"DataType": "Number", "StringValue": "1"}}},
        "must be of type String",
    ),
]


@pytest.mark.parametrize(("attributes", "words"), MISTAKES)
async def test_each_mistake_is_422_and_nothing_is_enqueued(
    client: httpx.AsyncClient, katar: Katar, attributes: Any, words: str
) -> None:
    body = {"tasks": [{"data": 1}, {"data": 2, "attributes": attributes}]}
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert words in error
    assert "tasks[1]" in error
    assert (await katar.engine.stats())["q"]["queued"] == 0


async def test_ten_attributes_and_names_sqs_allows_are_kept(client: httpx.AsyncClient) -> None:
    names = ["a", "A-b_c.d", "x" * 256, *(f"n{i}" for i in range(7))]
    given = {"MessageAttributes": {name: STRING for name in names}}
    response = await client.post("/v1/queue/q/tasks", json={"data": 1, "attributes": given})
    assert response.status_code == 201, response.text
    assert response.json()["tasks"][0]["attributes"] == given


@pytest.fixture
async def small(katar: Katar, via: str) -> AsyncIterator[httpx.AsyncClient]:
    app = App(katar.engine, limits=Limits(max_task_bytes=100))
    async with app_client(app, via) as http:
        yield http


async def test_attributes_count_towards_the_size_as_sqs_counts_them(
    small: httpx.AsyncClient, katar: Katar
) -> None:
    # The name (4 bytes), the type (6) and the value's decoded bytes (7), as SQS counts.
    attributes = {
        "MessageAttributes": {"blob": {"DataType": "Binary", "BinaryValue": "AAECAwQFBg=="}}
    }  # 4 + 6 + 7 = 17 bytes
    fits = {"data": "x" * 81, "attributes": attributes}  # 83 + 17 = 100
    assert (await small.post("/v1/queue/q/tasks", json=fits)).status_code == 201
    over = {"data": "x" * 82, "attributes": attributes}  # 84 + 17 = 101
    response = await small.post("/v1/queue/q/tasks", json={"tasks": [fits, over]})
    assert response.status_code == 413, response.text
    assert response.json()["error"].startswith(
        "tasks[1]: data (84 bytes of JSON) and attributes (17 bytes: names, types and values)"
        " are 101 bytes, over the limit of 100"
    )
    # The system attributes do not count, as in SQS.
    xray = {
        "MessageSystemAttributes": {"AWSTraceHeader": {"DataType": "String", "StringValue": "R"}}
    }
    assert (
        await small.post("/v1/queue/q/tasks", json={"data": "x" * 98, "attributes": xray})
    ).status_code == 201
    assert (await katar.engine.stats())["q"]["queued"] == 2


async def test_the_embedded_api_takes_them_too(katar: Katar) -> None:
    queue = katar.queue("q")
    task = await queue.enqueue({"n": 1}, attributes=ATTRIBUTES)
    assert task.attributes is not None
    assert bytes(task.attributes) == (
        b'{"MessageAttributes":{"lang":{"DataType":"String","StringValue":"en"},'
        b'"cents":{"DataType":"Number.int","StringValue":"1250"},'
        b'"raw":{"DataType":"Binary","BinaryValue":"AAH/"}},'
        b'"MessageSystemAttributes":{"AWSTraceHeader":{"DataType":"String",'
        b'"StringValue":"Root=1-5759e988-bd862e3f"}}}'
    )
    with pytest.raises(ValidationError, match="MessageDeduplicationId"):
        await queue.enqueue(1, attributes={"MessageDeduplicationId": "d"})
    with pytest.raises(ValidationError, match="to a number"):
        await queue.enqueue(
            1, attributes={"MessageAttributes": {"n": {"DataType": "Number", "StringValue": "x"}}}
        )
    assert (await katar.engine.stats())["q"]["queued"] == 1
