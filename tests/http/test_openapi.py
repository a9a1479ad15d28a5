"""The OpenAPI document: valid, and in step with the application's routes."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate

from katar import Katar
from katar.http import App


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
