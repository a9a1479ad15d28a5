"""The OpenAPI document: valid, and in step with the application's routes."""

from __future__ import annotations

import json

import httpx
import pytest
from openapi_spec_validator import validate

from katar import Katar
from katar.http import App, Limits
from katar.protocol import ACK_STATUSES, PATCH_STATUSES, STATUSES

# The document is the application's, whatever the store.
pytestmark = pytest.mark.storeless


async def test_the_document_is_valid_openapi_31(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_the_document_and_the_routes_name_the_same_operations(katar: Katar) -> None:
    app = App(katar.engine)
    routes = {(path, method) for path, methods in app.routes for method in methods}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://k") as client:
        document = (await client.get("/openapi.json")).json()
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == routes


async def test_the_page_renders_the_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'fetch("openapi.json")' in response.text


async def test_the_document_states_each_operations_role(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    roles = {
        (path, method.upper()): operation.get("x-katar-role")
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    from tests.http.test_auth import EXPECTED

    assert roles == {
        route: None if role is None else role.name.lower() for route, role in EXPECTED.items()
    }
    assert document["paths"]["/healthz"]["get"]["security"] == [{}]
    assert "401" in document["paths"]["/v1/queue/{queue}"]["post"]["responses"]


def test_the_document_keeps_what_the_protocol_promises(katar: Katar) -> None:
    limits = Limits(max_wait=30, max_tasks_per_enqueue=500, max_list=200, max_queue_name=64)
    document = json.loads(App(katar.engine, limits=limits).openapi_json)
    schemas, paths = document["components"]["schemas"], document["paths"]
    # The schemas come from the wire model's types.
    assert schemas["TaskRecord"]["properties"]["status"]["enum"] == sorted(STATUSES)
    assert schemas["Ack"]["properties"]["status"]["enum"] == sorted(ACK_STATUSES)
    assert schemas["Patch"]["properties"]["status"]["enum"] == sorted(PATCH_STATUSES)
    assert schemas["NewTask"]["required"] == ["data"]
    assert "run_at" in schemas["NewTask"]["properties"]
    # The wire types' Python names say their side; the document keeps its names for them,
    # and shows the options the queue listing sends as the queue options they are.
    assert {"NewTask", "TaskFilter", "Delivery"} <= set(schemas)
    assert not {"NewTaskBody", "TaskFilterQuery", "DeliveredTask"} & set(schemas)
    assert schemas["Deliveries"]["properties"]["tasks"]["items"] == _ref("Delivery")
    assert schemas["QueueInfo"]["properties"]["options"] == _ref("QueueOptions")
    # The server's limits are the schema's bounds.
    assert schemas["Poll"]["properties"]["wait"]["maximum"] == 30
    assert schemas["Batch"]["properties"]["tasks"]["maxItems"] == 500
    assert schemas["QueueOptions"]["properties"]["max_batch"]["maximum"] == 10_000
    item = paths["/v1/queue/{queue}/tasks"]
    assert item["parameters"][0]["schema"]["maxLength"] == 64
    limit = next(p for p in item["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 200
    enqueue = item["post"]
    assert [p["name"] for p in enqueue["parameters"]] == [
        "Idempotency-Key",
        "traceparent",
        "tracestate",
    ]
    # The trace context (section 17): a batch task's own, and every delivery's.
    assert schemas["TraceContext"]["required"] == ["traceparent"]
    for schema in ("NewTask", "Delivery", "TaskRecord"):
        trace = schemas[schema]["properties"]["trace"]
        assert _ref("TraceContext") in trace.get("anyOf", [trace]), schema
    assert {"400", "401", "403", "404", "408", "413", "422", "503", "504"} <= set(
        enqueue["responses"]
    )
    poll = paths["/v1/queue/{queue}"]["post"]["responses"]
    assert {"200", "204", "409", "429"} <= set(poll)
    assert poll["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    configuration = paths["/v1/queue/{queue}"]["get"]["responses"]["200"]
    assert "Katar-Lease-Timeout" in configuration["headers"]
    assert "404" not in paths["/v1/queue/{queue}"]["put"]["responses"]


async def test_the_document_and_the_server_agree_on_status_and_ids(
    client: httpx.AsyncClient,
) -> None:
    import re

    document = (await client.get("/openapi.json")).json()
    listing = document["paths"]["/v1/queue/{queue}/tasks"]["get"]["parameters"]
    status = re.compile(next(p for p in listing if p["name"] == "status")["schema"]["pattern"])
    for value, answer in [("", 200), ("queued", 200), ("queued, failed", 200), ("nope", 422)]:
        response = await client.get("/v1/queue/q/tasks", params={"status": value})
        assert response.status_code == answer, value
        assert bool(status.fullmatch(value)) == (answer == 200), value
    schemas = document["components"]["schemas"]
    ids = schemas["TaskFilter"]["properties"]["ids"]
    items = next(s for s in ids["anyOf"] if s.get("type") == "array")["items"]
    pattern = re.compile(items["pattern"])
    for value, answer in [("12", 200), ("x1", 422), ("012", 422), ("", 422), ("9" * 19, 422)]:
        body = {"action": "cancel", "filter": {"ids": [value]}, "dry_run": True}
        response = await client.post("/v1/queue/q/tasks/bulk", json=body)
        assert response.status_code == answer, (value, response.text)
        assert bool(pattern.fullmatch(value)) == (answer == 200), value
    assert "task ids" in response.json()["error"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}
