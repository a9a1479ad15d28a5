"""Trace context on every store (protocol section 17): a task's ``trace`` is stored as given,
carried by every read of the task (its claims included, alone or in a batch, with other
options or none), kept through retries, and absent from tasks enqueued without one."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from katar.core.model import EVERY_TASK, Ack, NewTask, QueueOptions, Task, trace_context
from katar.store import Store

T0 = 1_700_000_000_000
KEEP = QueueOptions(persistent=True, timeout=1000, max_attempts=3, retry_delay=0)
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = trace_context(PARENT, "rojo=00f067aa0ba902b7")


def new(data: object = 1, **fields: Any) -> NewTask:
    return NewTask(data=msgspec.Raw(msgspec.json.encode(data)), **fields)


def shown(task: Task | None) -> Any:
    assert task is not None
    return None if task.trace is None else msgspec.json.decode(task.trace)


async def test_the_trace_is_stored_and_read_back(store: Store) -> None:
    await store.save_queue("q", KEEP)
    traced, plain = await store.enqueue("q", [new(trace=TRACE), new()], T0)
    expected = {"traceparent": PARENT, "tracestate": "rojo=00f067aa0ba902b7"}
    assert shown(traced) == expected
    assert plain.trace is None
    assert shown(await store.get_task("q", traced.id)) == expected
    assert shown(await store.get_task("q", plain.id)) is None


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_a_claim_carries_the_trace(store: Store, limit: int) -> None:
    await store.save_queue("q", KEEP)
    tasks = [new(1, trace=TRACE), new(2), new(3, trace=TRACE, timeout=500, key="k")]
    await store.enqueue("q", tasks, T0)
    delivered: list[Task] = []
    while len(delivered) < 3:
        delivered += (await store.poll("q", KEEP, [], limit, "w", T0)).delivered
    by_data = {bytes(task.data): task for task in delivered}
    assert (
        shown(by_data[b"1"])
        == shown(by_data[b"3"])
        == {
            "traceparent": PARENT,
            "tracestate": "rojo=00f067aa0ba902b7",
        }
    )
    assert by_data[b"2"].trace is None
    assert by_data[b"3"].timeout == 500


async def test_the_trace_survives_a_retry_and_a_listing(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (task,) = await store.enqueue("q", [new(trace=TRACE)], T0)
    (first,) = (await store.poll("q", KEEP, [], 1, "w", T0)).delivered
    failed = Ack(task_id=str(first.id), status="failed", error="x", retry=True)
    (again,) = (await store.poll("q", KEEP, [failed], 1, "w", T0 + 10)).delivered
    assert again.attempts == 2
    assert again.trace == TRACE
    done = Ack(task_id=str(again.id), status="done")
    await store.poll("q", KEEP, [done], 0, "w", T0 + 20)
    (listed,) = await store.list_tasks("q", EVERY_TASK, 10, 0)
    assert listed.trace == TRACE
    assert listed.id == task.id


def test_malformed_contexts_are_ignored_and_kept_as_given() -> None:
    assert trace_context(None, "a=b") is None
    assert trace_context("00-xyz", "a=b") is None
    assert trace_context(PARENT, None) == msgspec.Raw(b'{"traceparent":"%s"}' % PARENT.encode())
    # a tracestate is kept as given (its spaces too), or left out when it is not W3C's
    kept = trace_context(PARENT, "a=1, b=2")
    assert kept is not None
    assert msgspec.json.decode(kept) == {"traceparent": PARENT, "tracestate": "a=1, b=2"}
    assert trace_context(PARENT, "x" * 513) == trace_context(PARENT, None)
    assert trace_context(PARENT, "\x00") == trace_context(PARENT, None)
