"""Hypothesis on the request parsers and the routes that write: no 5xx, no hang, and a
rejected request changes nothing in the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from katar import Katar
from katar.errors import InvalidRequest
from katar.http import App, Limits, parse
from tests.conftest import STORE_KINDS, store_url
from tests.fuzz import fuzz_settings

FUZZ = fuzz_settings(300)

# Text with NUL now and then: the stores keep some fields as text, where it is refused.
texts = st.text(max_size=20) | st.sampled_from(["\u0000", "nul\u0000inside", "\u0000\u0000"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5) | st.none()
acks = st.fixed_dictionaries(
    {},
    optional={
        "_id": st.sampled_from(["1", "2", "3", "999", "", "x", "-1", 2**63, 2**64 - 1])
        | st.integers()
        | json_values,
        "status": st.sampled_from(["done", "failed", "in progress", "queued", ""]) | json_values,
        "error": texts | json_values,
        "result": json_values,
        "attempt": numbers,
        "retry": st.booleans() | json_values,
    },
)
poll_bodies = st.fixed_dictionaries(
    {},
    optional={
        "tasks": st.lists(acks, max_size=4) | json_values,
        "max": numbers,
        "wait": st.sampled_from([0, -1, 1e309, "1", None]),
        "worker": st.text(max_size=300) | texts | json_values,
    },
)
new_tasks = st.fixed_dictionaries(
    {},
    optional={
        "data": json_values,
        "priority": numbers | st.sampled_from(["high", "normal", "low", "urgent"]),
        "delay": numbers,
        "status": st.sampled_from(["queued", "paused", "done"]) | json_values,
    },
)
enqueue_bodies = new_tasks | st.fixed_dictionaries(
    {"tasks": st.lists(new_tasks, max_size=8) | json_values}, optional={"data": json_values}
)
patch_bodies = st.fixed_dictionaries(
    {},
    optional={"status": st.sampled_from(["cancelled", "paused", "queued", "done"]) | json_values},
)
queue_bodies = st.dictionaries(
    st.sampled_from(
        ["persistent", "timeout", "max_attempts", "max_batch", "retry_delay", "configuration", "x"]
    ),
    json_values | numbers,
    max_size=4,
)


# Bytes that are not UTF-8: Latin-1, a lone continuation byte, a sequence cut short, an
# encoded surrogate, an overlong encoding.
NOT_UTF8 = [b"\xe9", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff\xfe"]
# Where deep nesting goes: a task's data, a result, a configuration, the body itself.
DEEP_PLACES = [
    b'{"data":%s}',
    b'{"tasks":[{"data":1},{"data":%s}]}',
    b'{"tasks":[{"_id":"2","status":"done","result":%s}]}',
    b'{"tasks":[{"_id":"2","status":"failed","error":%s}]}',
    b'{"configuration":{"x":%s}}',
    b"%s",
]


def _not_utf8(body: bytes, bad: bytes) -> bytes:
    """``bad`` inside the body's last string (or as one)."""
    end = body.rfind(b'"')
    return body[:end] + bad + body[end:] if end > 0 else b'{"data":"%s"}' % bad


def _deep(place: bytes, levels: int, brace: bool) -> bytes:
    inner = b'{"a":' * levels + b"1" + b"}" * levels if brace else b"[" * levels + b"]" * levels
    return place % inner


def encoded(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bodies: the strategy's JSON, or raw bytes, or JSON cut short, or JSON with bytes that
    are not UTF-8 inside a string, or nested around the depth limit or far beyond it."""
    as_json = strategy.map(lambda value: json.dumps(value, ensure_ascii=False).encode())
    return (
        as_json
        | st.binary(max_size=64)
        | as_json.map(lambda body: body[: len(body) // 2])
        | st.builds(_not_utf8, as_json, st.sampled_from(NOT_UTF8))
        | st.builds(
            _deep,
            st.sampled_from(DEEP_PLACES),
            st.integers(parse.MAX_DEPTH - 2, parse.MAX_DEPTH + 2) | st.integers(1, 5000),
            st.booleans(),
        )
    )


@given(encoded(poll_bodies | enqueue_bodies | patch_bodies | queue_bodies))
@FUZZ
def test_parsers_accept_or_raise_invalid_request(body: bytes) -> None:
    for parser in (
        lambda: parse.parse_poll(body, 60),
        lambda: parse.parse_enqueue(body, 100, 1024),
        lambda: parse.parse_patch(body, 1024),
        lambda: parse.parse_object(body),
    ):
        with contextlib.suppress(InvalidRequest):
            parser()


class Harness:
    """One App on a memory store, driven from a synchronous hypothesis test."""

    def __init__(self, url: str) -> None:
        self.runner = asyncio.Runner()
        self.katar = Katar(url, reap_interval=3600)
        self.katar.queue("q", persistent=True, max_attempts=3)
        self.runner.run(self.katar.open())
        app = App(self.katar.engine, limits=Limits(max_wait=0.05, max_tasks_per_enqueue=5))
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://k")
        # Tasks in every state, so that acks and PATCHes meet real ids.
        self.request("POST", "/v1/queue/q/tasks", b'{"tasks":[{"data":1},{"data":2},{"data":3}]}')
        self.request("POST", "/v1/queue/q", b'{"max":2}')
        self.request("POST", "/v1/queue/q", b'{"tasks":[{"_id":"1","status":"done"}],"max":0}')

    def request(self, method: str, path: str, body: bytes) -> httpx.Response:
        async def send() -> httpx.Response:
            return await asyncio.wait_for(self.http.request(method, path, content=body), 10)

        return self.runner.run(send())

    def snapshot(self) -> Any:
        async def read() -> Any:
            engine = self.katar.engine
            tasks = await engine.list_tasks("q", limit=1000)
            return dict(engine.queues), [
                (t.id, t.state, t.attempts, t.data, t.error, t.result, t.priority, t.run_at)
                for t in tasks
            ]

        return self.runner.run(read())

    def close(self) -> None:
        self.runner.run(self.http.aclose())
        self.runner.run(self.katar.close())
        self.runner.close()


@pytest.fixture(params=STORE_KINDS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    instance = Harness(store_url(request.param, tmp_path))
    yield instance
    instance.close()


@pytest.mark.parametrize(
    ("method", "path", "bodies"),
    [
        ("POST", "/v1/queue/q", poll_bodies),
        ("POST", "/v1/queue/q/tasks", enqueue_bodies),
        ("PATCH", "/v1/queue/q/tasks/2", patch_bodies),
        ("PUT", "/v1/queue/q", queue_bodies),
    ],
)
def test_no_5xx_and_a_rejected_request_changes_nothing(
    harness: Harness, method: str, path: str, bodies: st.SearchStrategy[Any]
) -> None:
    @given(encoded(bodies))
    @FUZZ
    def check(body: bytes) -> None:
        before = harness.snapshot()
        response = harness.request(method, path, body)
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str)
            assert harness.snapshot() == before, (body, response.text)
        else:  # what was stored reads back as JSON (UTF-8 included)
            for _id, _state, _attempts, data, _error, result, *_ in harness.snapshot()[1]:
                msgspec.json.decode(data)
                if result is not None:
                    msgspec.json.decode(result)

    check()
