"""Schemathesis against the OpenAPI document: what the schema allows the server accepts, what
it forbids the server refuses, and every answer is as documented (status, media type,
headers, body schema), never a 5xx."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from katar import Katar
from katar.core.idempotency import check_key
from katar.errors import ValidationError
from katar.http import App
from katar.http.auth import Role, Token, digest
from katar.http.connection import HttpProtocol
from tests.fuzz import fuzz_settings

# Its tests share module-wide fixtures: pytest-xdist runs them in one process (--dist
# loadgroup), which makes those once.
pytestmark = pytest.mark.xdist_group("schemathesis")

ADMIN = "katar_fuzz-admin"
WORKER = "katar_fuzz-worker"
TOKENS = [
    Token(sha256=digest(ADMIN), role=Role.ADMIN, queues=frozenset({"*"})),
    Token(sha256=digest(WORKER), role=Role.WORKER, queues=frozenset({"q"})),
]

# The document depends only on the routes and the limits, so any App with defaults gives it.
schema = schemathesis.openapi.from_dict(json.loads(App(Katar("memory://").engine).openapi_json))
# Valid requests and invalid ones: both must be answered, never with a 5xx.
schema.config.generation.update(modes=list(GenerationMode))
#: The checks each answer passes: the server and its schema agree both ways.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]
# A task's run_at may be at most ten years ahead of now, a bound that JSON Schema cannot
# state (it moves): valid times are drawn from a century ago to nine years ahead.
_NOW = datetime.now(UTC)
schemathesis.openapi.format(
    "date-time",
    st.datetimes(
        min_value=(_NOW - timedelta(days=36500)).replace(tzinfo=None),
        max_value=(_NOW + timedelta(days=9 * 365)).replace(tzinfo=None),
        timezones=st.just(UTC),
    ).map(lambda when: when.isoformat().replace("+00:00", "Z")),
)

# A schedule's cron and time zone: what JSON Schema cannot state is drawn from valid values
# (the schema names their formats); other strings are refused with a 422 naming the field.
schemathesis.openapi.format(
    "cron", st.sampled_from(["* * * * *", "*/15 9-17 * * MON-FRI", "0 0 1 JAN,JUL *", "5 4 L * *"])
)
schemathesis.openapi.format(
    "iana-time-zone", st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"])
)


class Server:
    """An App on a memory store, served on a thread as ``katar serve`` serves it: uvicorn's
    server with Katar's HTTP protocol."""

    def __init__(self, *, tokens: list[Token]) -> None:
        self.katar = Katar("memory://")
        self.katar.queue("q", persistent=True)
        app = App(self.katar.engine, tokens=tokens, startup=self.katar.open)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", http=HttpProtocol
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.02)
            assert self.thread.is_alive()
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def open_server() -> Iterator[str]:
    with Server(tokens=[]) as url:
        yield url


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[str]:
    with Server(tokens=TOKENS) as url:
        yield url


FUZZ = fuzz_settings(40)


def fresh_key(case: schemathesis.Case[Any]) -> None:
    """A valid Idempotency-Key made unique to the case. The generator draws few distinct
    keys ("0" often), and the server answers a key reused with another body with its
    documented 422, which the schema cannot state; an invalid key is left to be refused."""
    headers = case.headers
    key = None if headers is None else headers.get("Idempotency-Key")
    if headers is None or key is None:
        return
    try:
        check_key(key)
    except ValidationError:
        return
    headers["Idempotency-Key"] = str(uuid.uuid4())


def no_parents(case: schemathesis.Case[Any]) -> None:
    """A valid task's ``after`` left out. The schema can say that ``after`` lists strings, not
    that they name tasks that exist (an id of no task is a documented 422). The sample drawn
    depends on the tests run before in the same process: alone it held no ``after``, after
    tests/http it did. Only valid cases are changed: an invalid one stays invalid."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    body = case.body
    tasks = body.get("tasks") if isinstance(body, dict) else None
    for task in tasks if isinstance(tasks, list) else [body]:
        if isinstance(task, dict):
            task.pop("after", None)


def no_endpoints(case: schemathesis.Case[Any]) -> None:
    """A valid queue's ``push`` and ``notify`` left out. The schema can say that their
    ``url`` is a string, not that it is an http(s) URL whose host resolves to an address the
    server may reach (a refused one is a documented 422; tests/push covers them). Only valid
    cases are changed: an invalid one stays invalid."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    if isinstance(case.body, dict):
        case.body.pop("push", None)
        case.body.pop("notify", None)


@schema.parametrize()
@FUZZ
def test_an_open_server(case: schemathesis.Case[Any], open_server: str) -> None:
    fresh_key(case)
    no_parents(case)
    no_endpoints(case)
    case.call_and_validate(base_url=open_server, timeout=30, checks=CHECKS)


@schema.parametrize()
@FUZZ
def test_a_server_with_tokens(case: schemathesis.Case[Any], guarded_server: str) -> None:
    fresh_key(case)
    no_parents(case)
    no_endpoints(case)
    case.call_and_validate(
        base_url=guarded_server,
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
        checks=CHECKS,
    )


@schema.parametrize()
@FUZZ
def test_a_server_with_tokens_and_a_worker_or_no_token(
    case: schemathesis.Case[Any], guarded_server: str
) -> None:
    worker = case.call(base_url=guarded_server, headers={"Authorization": f"Bearer {WORKER}"})
    assert worker.status_code < 500, worker.text
    anonymous = case.call(base_url=guarded_server)
    assert anonymous.status_code < 500, anonymous.text
    if case.path not in ("/healthz", "/openapi.json", "/docs", "/ui", "/ui/{asset}"):
        # 401, unless the request names no route (a path or method that does not exist).
        assert anonymous.status_code in (401, 404, 405), anonymous.text
