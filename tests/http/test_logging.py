"""What the server logs: every 5xx once with its traceback, a store outage once and its end
once, the access log (no token, no query, no body), queues created and deleted."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest

from katar import Katar
from katar.errors import StoreError, StoreUnavailable
from katar.http import App
from katar.http.auth import Token, digest
from katar.logs import JsonFormatter
from tests.http.conftest import app_client


@pytest.fixture
def store_kind() -> str:
    """What is logged does not depend on the store: one is enough."""
    return "memory"


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "katar" and r.levelno >= logging.ERROR]


def broken(exc: Exception) -> Any:
    async def fail(*args: object, **kwargs: object) -> Any:
        raise exc

    return fail


@pytest.mark.parametrize(
    "exc", [RuntimeError("a bug"), StoreError("PostgreSQL failed: disk on fire")], ids=repr
)
async def test_every_500_is_logged_once_with_its_traceback(
    katar: Katar,
    via: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    exc: Exception,
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(katar.engine, "list_tasks", broken(exc))
    async with app_client(App(katar.engine), via) as http:
        response = await http.get("/v1/queue/q/tasks", params={"status": "queued"})
    assert response.status_code == 500
    (record,) = errors(caplog)
    assert record.exc_info is not None
    assert record.exc_info[1] is exc
    assert "GET /v1/queue/q/tasks" in record.getMessage()
    assert "status=queued" not in record.getMessage()  # the query may hold secrets


async def test_a_store_outage_is_said_once_and_its_end_once(
    katar: Katar, via: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    down = StoreUnavailable("PostgreSQL is unavailable: connection refused")
    async with app_client(App(katar.engine), via) as http:
        with monkeypatch.context() as patched:
            patched.setattr(katar.engine.store, "ping", broken(down))
            patched.setattr(katar.engine.store, "expire", broken(down))  # the reaper's work
            patched.setattr(katar.engine, "enqueue", broken(down))
            for _ in range(5):
                assert (await http.get("/healthz")).status_code == 503
                assert (await http.post("/v1/queue/q/tasks", json={"data": 1})).status_code == 503
            assert (await http.get("/v1/queue/q")).status_code == 200  # needs no store
        for _ in range(3):
            assert (await http.post("/v1/queue/q/tasks", json={"data": 1})).status_code == 201
    lines = [r.getMessage() for r in caplog.records if r.name == "katar"]
    assert [m for m in lines if "store unavailable" in m] == [
        "store unavailable: PostgreSQL is unavailable: connection refused; "
        "answering 503 until it is back"
    ]
    (back,) = [m for m in lines if "available again" in m]
    assert re.search(r"\((\d+) operation\(s\) failed meanwhile\)", back)
    assert int(back.split("(")[1].split()[0]) >= 10  # the reaper's failures count too
    assert not errors(caplog)  # a 503 of an outage is no bug: no traceback per request


async def test_the_access_log_has_a_line_per_request_and_no_secret(
    katar: Katar, via: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="katar.access")
    secret = "s3cret-token-value"
    tokens = [Token.declare(sha256=digest(secret).hex(), role="admin", queues=["*"])]
    app = App(katar.engine, tokens=tokens, access_log=True)
    auth = {"Authorization": f"Bearer {secret}"}
    async with app_client(app, via) as http:
        await http.post("/v1/queue/q/tasks", json={"data": "body-secret"}, headers=auth)
        await http.get(
            "/v1/queue/q/tasks", params={"status": "queued", "x": "q-secret"}, headers=auth
        )
        await http.get("/v1/queue/q/tasks/987654321", headers=auth)  # no such task: 404
        await http.get("/v1/queues")  # no token: 401
    lines = [r for r in caplog.records if r.name == "katar.access"]
    fields = [
        (r.method, r.route, r.status)  # type: ignore[attr-defined]
        for r in lines
    ]
    assert fields == [
        ("POST", "/v1/queue/{queue}/tasks", 201),
        ("GET", "/v1/queue/{queue}/tasks", 200),
        ("GET", "/v1/queue/{queue}/tasks/{id}", 404),
        ("GET", "/v1/queues", 401),
    ]
    for record in lines:
        assert record.bytes > 0  # type: ignore[attr-defined]
        assert record.duration_ms >= 0  # type: ignore[attr-defined]
    text = caplog.text
    for secret_part in (secret, "body-secret", "q-secret", "987654321"):
        assert secret_part not in text


async def test_an_access_line_carries_the_requests_trace_id(
    katar: Katar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="katar.access")
    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    async with app_client(App(katar.engine, access_log=True), "asgi") as http:
        await http.post("/v1/queue/q/tasks", json={"data": 1}, headers=traced)
        await http.post("/v1/queue/q/tasks", json={"data": 2})
        await http.post("/v1/queue/q/tasks", json={"data": 3}, headers={"traceparent": "bad"})
    lines = [r for r in caplog.records if r.name == "katar.access"]
    assert [getattr(r, "trace_id", None) for r in lines] == [
        "0af7651916cd43dd8448eb211c80319c",
        None,
        None,
    ]
    # and the JSON format writes it as a field
    assert '"trace_id": "0af7651916cd43dd8448eb211c80319c"' in JsonFormatter().format(lines[0])


async def test_no_access_log_by_default(katar: Katar, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with app_client(App(katar.engine), "asgi") as http:
        await http.get("/v1/queue/q")
    assert not [r for r in caplog.records if r.name == "katar.access"]


async def test_queues_created_and_deleted_are_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await client.put("/v1/queue/fresh", json={})
    await client.put("/v1/queue/fresh", json={"timeout": 5000})  # a change: no line
    await client.post("/v1/queue/fresh/tasks", json={"data": 1})
    await client.delete("/v1/queue/fresh")
    lines = [r.getMessage() for r in caplog.records if r.name == "katar"]
    assert lines == ["queue fresh created", "queue fresh deleted with its 1 task(s)"]
