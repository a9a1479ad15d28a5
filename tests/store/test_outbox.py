"""The completion webhooks' outbox (Store.notify): every operation that ends a task keeps the
events its changes make in its own transaction. Each test ends a task one way, closes the
store at once (a durable one) and opens it again without any notify: the event is there,
with no step of anybody after the operation returned."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import pytest

from katar.core import rules
from katar.core.model import EVERY_TASK
from katar.core.storage import Change, Event
from katar.store import Store, open_store
from tests.conftest import STORE_KINDS, store_url
from tests.helpers.store import KEEP, T0, ack, child, claim, new

ONCE = msgspec.structs.replace(KEEP, max_attempts=1)
TO_DEAD = msgspec.structs.replace(ONCE, dead_letter="dead")


def every_end(changes: Sequence[Change]) -> list[Event]:
    """Store.notify as an engine whose every queue asks for every event gives it, each body
    naming the event."""
    events: list[Event] = []
    for task, old, origin in changes:
        ended = rules.ended(task, old, origin)
        if ended is not None:
            events.append((ended[0], task.id, ended[1].encode()))
    return events


async def done(store: Store) -> list[int]:
    (task,) = await claim(store)
    await store.poll("q", KEEP, [ack(task)], 0, "w1", T0 + 1)
    return [task.id]


async def done_together(store: Store) -> list[int]:
    tasks = await claim(store, 2)
    await store.poll("q", KEEP, [ack(task) for task in tasks], 0, "w1", T0 + 1)
    return [task.id for task in tasks]


async def failed(store: Store) -> list[int]:
    (task,) = await claim(store, options=ONCE)
    await store.poll("q", ONCE, [ack(task, "failed", error="no")], 0, "w1", T0 + 1)
    return [task.id]


async def dead_lettered(store: Store) -> list[int]:
    (task,) = await claim(store, options=TO_DEAD)
    await store.poll("q", TO_DEAD, [ack(task, "failed", error="no")], 0, "w1", T0 + 1)
    return [task.id]


async def lease_ran_out(store: Store) -> list[int]:
    (task,) = await claim(store, options=ONCE)
    await store.expire({"q": ONCE}, T0 + ONCE.timeout + 1)
    return [task.id]


async def cancelled(store: Store) -> list[int]:
    (task,) = await store.list_tasks("q", EVERY_TASK, 1, 0)
    await store.set_status("q", task.id, "cancelled", T0 + 1)
    return [task.id]


async def cancelled_in_bulk(store: Store) -> list[int]:
    tasks = await store.list_tasks("q", EVERY_TASK, 10, 0)
    await store.bulk("q", "cancel", EVERY_TASK, T0 + 1, 0, 100)
    return [task.id for task in tasks]


async def expired(store: Store) -> list[int]:
    (task,) = await store.enqueue("q", [msgspec.structs.replace(new(9), expires_in_ms=10)], T0)
    await store.expire({"q": KEEP}, T0 + 10)
    return [task.id]


async def orphaned(store: Store) -> list[int]:
    (parent, *_rest) = await store.list_tasks("q", EVERY_TASK, 1, 0)
    (waiting,) = await store.enqueue("q", [child("c", parent.id)], T0)
    await store.delete_task("q", parent.id, T0 + 1)
    return [waiting.id]


ENDS: dict[str, tuple[Callable[[Store], Awaitable[list[int]]], str, str]] = {
    # how the task ends: (the operation, the event, the queue that hears it)
    "done": (done, "done", "q"),
    "done_together": (done_together, "done", "q"),
    "failed": (failed, "failed", "q"),
    "dead_lettered": (dead_lettered, "dead_lettered", "q"),
    "lease_ran_out": (lease_ran_out, "failed", "q"),
    "cancelled": (cancelled, "cancelled", "q"),
    "cancelled_in_bulk": (cancelled_in_bulk, "cancelled", "q"),
    "expired": (expired, "cancelled", "q"),
    "orphaned": (orphaned, "cancelled", "q"),
}


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.parametrize("end", ENDS)
async def test_a_tasks_end_keeps_its_event_in_the_same_commit(
    kind: str, end: str, tmp_path: Path
) -> None:
    operation, event, queue = ENDS[end]
    url = store_url(kind, tmp_path)
    store = open_store(url)
    await store.open()
    try:
        await store.save_queue("q", KEEP)
        await store.enqueue("q", [new(1), new(2)], T0)
        store.notify = every_end
        ended = await operation(store)
        if kind != "memory":  # closed at once, opened again without notify
            await store.close()
            store = open_store(url)
            await store.open()
        taken = await store.outbox_take(100, T0 + 2, 60_000)
    finally:
        await store.close()
    kept = [(row.queue, row.task_id, row.body, row.attempts) for row in taken]
    assert kept == [(queue, task_id, event.encode(), 0) for task_id in ended]


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_without_notify_nothing_is_kept(kind: str, tmp_path: Path) -> None:
    store = open_store(store_url(kind, tmp_path))
    await store.open()
    try:
        await store.save_queue("q", KEEP)
        await store.enqueue("q", [new(1), new(2)], T0)
        await done_together(store)
        assert await store.outbox_take(100, T0 + 2, 60_000) == []
    finally:
        await store.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_the_outbox_is_trimmed_to_its_bound_and_counted_per_queue(
    kind: str, tmp_path: Path
) -> None:
    store = open_store(store_url(kind, tmp_path))
    await store.open()
    try:
        for name in ("q", "other"):
            await store.save_queue(name, KEEP)
        store.notify = every_end
        tasks = await store.enqueue("q", [new(n) for n in range(5)], T0)
        (alone,) = await store.enqueue("other", [new(9)], T0)
        await store.bulk("q", "cancel", EVERY_TASK, T0, 0, 100)
        await store.set_status("other", alone.id, "cancelled", T0)
        assert await store.outbox_pending("q") == (5, 0)
        assert await store.outbox_trim(["q", "other"], 3) == {"q": 2}
        assert await store.outbox_pending("q") == (3, 0)
        taken = await store.outbox_take(100, T0, 60_000)
        assert [row.task_id for row in taken] == [t.id for t in tasks[2:]] + [alone.id]
        await store.outbox_retry(taken[0].id, T0 + 1000)
        assert await store.outbox_pending("q") == (3, 1)
        await store.outbox_delete([taken[-1].id])
        assert await store.outbox_pending("other") == (0, 0)
    finally:
        await store.close()
