"""The producer's calls without I/O (katar.client._calls): each is driven here by hand, as
the blocking and the asyncio producer drive it, with answers made up on the spot."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from katar.client import _calls as calls
from katar.errors import RequestRejected, ServerUnavailable, TransportError, ValidationError
from katar.protocol import IDEMPOTENCY_KEY_HEADER

RECORD = {
    "_id": "1",
    "queue": "q",
    "status": "queued",
    "data": 1,
    "priority": 0,
    "attempts": 0,
}


def answer(request: calls.Request, status: int, body: Any) -> httpx.Response:
    """The server's response to ``request``, as httpx would hand it to the plan."""
    sent = httpx.Request(request.method, f"http://katar{request.path}")
    return httpx.Response(status, json=body, request=sent)


def result(plan: calls.Plan[Any], response: httpx.Response) -> Any:
    """What the plan returns once sent its last response."""
    with pytest.raises(StopIteration) as done:
        plan.send(response)
    return done.value.value


def test_an_enqueue_is_sent_again_under_its_key_after_a_transient_failure() -> None:
    plan = calls.enqueue("q", 1, {}, None, None, None, retries=2)
    first = next(plan)
    assert (first.method, first.path, first.pause) == ("POST", "/v1/queue/q/tasks", 0.0)
    assert first.json == {"tasks": [{"data": 1}]}
    key = (first.headers or {})[IDEMPOTENCY_KEY_HEADER]
    second = plan.send(answer(first, 503, {"error": "busy"}))
    assert second.headers == first.headers  # the same key on every try
    assert second.json == first.json
    third = plan.throw(TransportError("no answer"))
    assert (third.headers or {})[IDEMPOTENCY_KEY_HEADER] == key
    task = result(plan, answer(third, 201, {"tasks": [RECORD]}))
    assert task.id == "1"


def test_an_enqueue_sends_the_attributes_with_each_task() -> None:
    given = {"MessageAttributes": {"lang": {"DataType": "String", "StringValue": "en"}}}
    plan = calls.enqueue_many("q", [1, 2], {"attributes": given}, None, None, None, retries=0)
    request = next(plan)
    assert request.json == {
        "tasks": [{"data": 1, "attributes": given}, {"data": 2, "attributes": given}]
    }


def test_retries_end_and_a_4xx_is_never_retried() -> None:
    plan = calls.enqueue_many("q", [1], {}, None, None, None, retries=1)
    request = next(plan)
    request = plan.send(answer(request, 504, {"error": "unknown"}))
    with pytest.raises(ServerUnavailable):
        plan.send(answer(request, 504, {"error": "unknown"}))
    plan = calls.enqueue_many("q", [1], {"idempotency_key": "k"}, None, None, None, retries=5)
    request = next(plan)
    assert request.headers == {IDEMPOTENCY_KEY_HEADER: "k"}
    with pytest.raises(RequestRejected) as refused:
        plan.send(answer(request, 422, {"error": "no"}))
    assert refused.value.status == 422


def test_bad_arguments_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValidationError, match="at least one task"):
        next(calls.enqueue_many("q", [], {}, None, None, None, retries=5))
    with pytest.raises(ValidationError, match="time zone"):
        next(calls.enqueue("q", 1, {}, datetime(2030, 1, 1), None, None, retries=5))
    with pytest.raises(ValidationError, match="time zone"):
        calls.bulk("q", "retry", None, None, None, None, None, datetime(2030, 1, 1), None)


def test_an_outcome_wait_is_long_polls_until_the_task_finishes() -> None:
    plan = calls.wait("q", "1", timeout=600)
    request = next(plan)
    assert request.params == {"wait": calls.LONGEST_WAIT}  # at most the server's longest
    assert request.timeout == calls.LONGEST_WAIT + 30  # longer than the poll it makes
    request = plan.send(answer(request, 200, RECORD))  # not finished: poll again
    assert request.path == "/v1/queue/q/tasks/1"
    task = result(plan, answer(request, 200, {**RECORD, "status": "done"}))
    assert task.finished
