"""Store.next_deadline: the earliest lease end or not-before time, on every store."""

from __future__ import annotations

import msgspec

from katar.core.model import Ack, NewTask, QueueOptions
from katar.store import Store

T0 = 1_700_000_000_000
OPTIONS = QueueOptions(persistent=True, timeout=1000, max_attempts=3)


def _new(delay_ms: int = 0, paused: bool = False, run_at: int | None = None) -> NewTask:
    return NewTask(data=msgspec.Raw(b"1"), delay_ms=delay_ms, paused=paused, run_at=run_at)


async def test_next_deadline_is_the_earliest_lease_end_or_run_at(store: Store) -> None:
    await store.save_queue("q", OPTIONS)
    assert await store.next_deadline() is None
    await store.enqueue("q", [_new(paused=True, delay_ms=10)], T0)  # paused: no deadline
    await store.enqueue("q", [_new()], T0)
    assert await store.next_deadline() is None
    await store.enqueue("q", [_new(delay_ms=5000)], T0)
    await store.enqueue("q", [_new(run_at=T0 + 3000)], T0)
    await store.enqueue("q", [_new(run_at=T0 - 3000)], T0)  # passed: ready now
    assert await store.next_deadline() == T0 + 3000
    claimed = (await store.poll("q", OPTIONS, [], 2, None, T0 + 100)).delivered
    assert len(claimed) == 2
    assert await store.next_deadline() == T0 + 1100  # their lease ends first
    done = [Ack(task_id=str(task.id), status="done") for task in claimed]
    await store.poll("q", OPTIONS, done, 0, None, T0 + 200)
    assert await store.next_deadline() == T0 + 3000
    await store.expire({"q": OPTIONS}, T0 + 3000)
    assert await store.next_deadline() == T0 + 5000
    await store.expire({"q": OPTIONS}, T0 + 5000)
    assert await store.next_deadline() is None
