"""The route table (katar.http.routes): each route names a handler of the app, and says once
whether it uses the store, which both the document and the end of an outage follow."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import pytest

from katar import Katar
from katar.http import App
from katar.http.routes import ROUTES
from tests.http.conftest import app_client, opened


def storeless() -> set[tuple[str, str]]:
    """The (path, method) of the routes that answer without the store."""
    return {
        (path, method)
        for path, methods in ROUTES
        for method, route in methods.items()
        if not route.store
    }


@pytest.fixture
async def memory() -> AsyncIterator[Katar]:
    """A server's engine over the memory store: these cases never depend on the store."""
    instance = Katar("memory://")
    instance.queue("q")
    async with opened(instance):
        yield instance


def test_every_route_names_a_handler_of_the_app() -> None:
    for path, methods in ROUTES:
        for method, route in methods.items():
            name = route.handler.__name__
            # Named as an attribute of the Handlers protocol, bound by name to the app's own.
            assert route.handler.__qualname__ == f"Handlers.{name}", (path, method)
            handler = vars(App).get(name)
            assert inspect.iscoroutinefunction(handler), (path, method, name)


def test_the_routes_that_answer_without_the_store() -> None:
    assert storeless() == {
        ("/openapi.json", "GET"),
        ("/docs", "GET"),
        ("/ui", "GET"),
        ("/ui/{asset}", "GET"),
        ("/v1/token", "GET"),
        ("/v1/throughput", "GET"),
        ("/v1/queue/{queue}", "GET"),
        # A redrive's move job lives in the server's process.
        ("/v1/queue/{queue}/redrive", "GET"),
        ("/v1/queue/{queue}/redrive", "DELETE"),
        ("/v1/queue/{queue}/push", "GET"),
        ("/v1/queue/{queue}/push/secret", "GET"),
        ("/v1/queue/{queue}/notify/secret", "GET"),
    }


async def test_the_document_gives_503_to_the_routes_that_use_the_store(memory: Katar) -> None:
    async with app_client(App(memory.engine), "asgi") as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
    for path, methods in ROUTES:
        for method in methods:
            answers = paths[path][method.lower()]["responses"]
            assert ("503" in answers) == ((path, method) not in storeless()), (path, method)


@pytest.mark.parametrize("via", ["asgi", "http"])
async def test_only_a_route_that_uses_the_store_ends_an_outage(memory: Katar, via: str) -> None:
    app = App(memory.engine)
    async with app_client(app, via) as http:
        app.outages.down("the store is unavailable")
        for path in ("/openapi.json", "/docs", "/v1/token", "/v1/queue/q", "/v1/throughput"):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert app.outages.since is not None, f"{path} answered without the store"
        response = await http.get("/v1/queues")
        assert response.status_code == 200
        assert app.outages.since is None


async def test_a_request_through_asgi_is_answered_as_through_katar_serve(memory: Katar) -> None:
    """The ASGI adapter (katar.http.asgi) and katar serve's protocol give the same answers."""
    app = App(memory.engine)
    answers = []
    for via in ("asgi", "http"):
        async with app_client(app, via) as http:
            got: list[tuple[int, bytes, str | None]] = []
            for method, path, body in (
                ("POST", "/v1/queue/q/tasks", b'{"data": 1}'),
                ("GET", "/v1/queue/nope", None),
                ("DELETE", "/v1/queues", None),
                ("POST", "/v1/queue/q/tasks", b"{"),
            ):
                response = await http.request(method, path, content=body)
                got.append((response.status_code, response.content, response.headers.get("allow")))
            answers.append(got)
    asgi, served = answers
    assert [status for status, _, _ in asgi] == [201, 404, 405, 400]
    # The ids differ (one task each way); the rest of each answer is the same.
    assert asgi[1:] == served[1:]
    assert asgi[0][0] == served[0][0]
