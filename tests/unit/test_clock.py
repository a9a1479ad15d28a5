"""Engine time: leases and delays come due at their deadline, on a fake clock.

The engine's time comes from a Clock; here a FakeClock, whose time moves only when the test
moves it, so that leases and delays of seconds are tested without sleeping. Awaits on the
stores themselves are real (SQLite's threads, PostgreSQL's network), bounded by _BOUND.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Literal

import msgspec
import pytest

from katar import Katar
from katar.core.clock import FakeClock, settle
from katar.core.model import Ack, NewTask, QueueOptions, Task
from katar.core.reaper import HOUSEKEEPING_MS
from katar.store.base import Change

_BOUND = 10.0  # seconds: the longest a store operation may take here before the test fails


#: The timer's exact times, on the stores that only this server writes to (PostgreSQL's
#: engine also looks once a second: see test_an_idle_engine_arms_no_timer).
_ALONE = pytest.mark.parametrize("store_kind", ["memory", "sqlite"])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def katar(make_url: Callable[[], str], clock: FakeClock) -> AsyncIterator[Katar]:
    instance = Katar(make_url(), clock=clock)
    instance.queue("short", timeout=1000, max_attempts=3)
    instance.queue("long", timeout=60_000)
    async with instance:
        yield instance


def _new(data: object = None, **fields: object) -> NewTask:
    return NewTask(data=msgspec.Raw(msgspec.json.encode(data)), **fields)  # type: ignore[arg-type]


async def _poll(katar: Katar, queue: str, wait: float = 0.0) -> list[Task]:
    return await asyncio.wait_for(katar.engine.poll(queue, wait=wait), _BOUND)


async def _until(condition: Callable[[], bool]) -> None:
    """Let the event loop (and the store's threads) run until ``condition()`` holds."""
    deadline = time.monotonic() + _BOUND
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        await asyncio.sleep(0.001)


def _count_expires(katar: Katar) -> list[int]:
    """Record the time of every reap the engine makes from now on."""
    store = katar.engine.store
    expire = store.expire
    calls: list[int] = []

    async def counted(queues: Mapping[str, QueueOptions], now: int) -> list[Change]:
        calls.append(now)
        return await expire(queues, now)

    store.expire = counted  # type: ignore[method-assign]
    return calls


async def test_a_lease_that_ends_is_delivered_again_at_that_instant(
    katar: Katar, clock: FakeClock
) -> None:
    (task,) = await katar.engine.enqueue("short", [_new("x")])
    (leased,) = await _poll(katar, "short")
    assert leased.lease_until == clock.now_ms() + 1000
    await clock.set(leased.lease_until - 1)
    assert await _poll(katar, "short") == []
    await clock.set(leased.lease_until)
    (again,) = await _poll(katar, "short")
    assert (again.id, again.attempts) == (task.id, 2)
    assert again.lease_until == leased.lease_until + 1000


async def test_a_poll_takes_what_came_due_without_waiting_for_the_reaper(
    katar: Katar, clock: FakeClock
) -> None:
    await katar.engine.enqueue("short", [_new("x")])
    (leased,) = await _poll(katar, "short")
    assert leased.lease_until is not None
    reaper = katar.engine._reaper._job
    assert reaper is not None
    reaper.cancel()  # nothing but the poll itself can expire the lease now
    await asyncio.gather(reaper, return_exceptions=True)
    await clock.set(leased.lease_until)
    (again,) = await _poll(katar, "short")
    assert again.id == leased.id
    assert again.attempts == 2


async def test_a_delayed_task_becomes_deliverable_at_its_time(
    katar: Katar, clock: FakeClock
) -> None:
    start = clock.now_ms()
    (later,) = await katar.engine.enqueue("long", [_new("later", delay_ms=5000)])
    (at,) = await katar.engine.enqueue("long", [_new("at", run_at=start + 7000)])
    (past,) = await katar.engine.enqueue("long", [_new("past", run_at=start - 7000)])
    assert (later.run_at, at.run_at, past.run_at) == (start + 5000, start + 7000, None)
    assert [t.id for t in await _poll(katar, "long")] == [past.id]  # a past run_at means now
    await clock.set(start + 4999)
    assert await _poll(katar, "long") == []
    await clock.set(start + 5000)
    assert [t.id for t in await _poll(katar, "long")] == [later.id]
    await clock.set(start + 6999)
    assert await _poll(katar, "long") == []
    await clock.set(start + 7000)
    assert [t.id for t in await _poll(katar, "long")] == [at.id]


async def test_a_long_poll_is_woken_at_the_deadline(katar: Katar, clock: FakeClock) -> None:
    start = clock.now_ms()
    await katar.engine.enqueue("short", [_new("leased")])
    (leased,) = await _poll(katar, "short")
    (delayed,) = await katar.engine.enqueue("long", [_new("delayed", delay_ms=3000)])
    on_short = asyncio.ensure_future(katar.engine.poll("short", wait=30))
    on_long = asyncio.ensure_future(katar.engine.poll("long", wait=30))
    await settle()
    assert not on_short.done()
    assert not on_long.done()
    await clock.set(start + 999)
    await settle()
    assert not on_short.done()
    await clock.set(start + 1000)  # the lease ends: the reaper's timer, not a poll, wakes it
    (again,) = await asyncio.wait_for(on_short, _BOUND)
    assert again.id == leased.id
    assert again.attempts == 2
    assert again.lease_until == start + 1000 + 1000  # claimed at the deadline's instant
    assert not on_long.done()
    await clock.set(start + 3000)
    (due,) = await asyncio.wait_for(on_long, _BOUND)
    assert due.id == delayed.id
    assert due.lease_until == start + 3000 + 60_000


async def test_a_long_poll_ends_empty_when_its_wait_is_over(katar: Katar, clock: FakeClock) -> None:
    start = clock.now_ms()
    polling = asyncio.ensure_future(katar.engine.poll("long", wait=30))
    await settle()
    await clock.set(start + 29_999)
    assert not polling.done()
    await clock.set(start + 30_000)
    assert await asyncio.wait_for(polling, _BOUND) == []


async def test_an_idle_engine_arms_no_timer(katar: Katar, clock: FakeClock) -> None:
    reaps = _count_expires(katar)
    shared = katar.engine.store.shared  # PostgreSQL: other servers' deadlines (see Store)
    expected = [clock.now_ms() + HOUSEKEEPING_MS] if shared else []
    assert clock.armed == pytest.approx(expected, abs=HOUSEKEEPING_MS)
    (task,) = await katar.engine.enqueue("short", [_new("x")])
    (leased,) = await _poll(katar, "short")
    assert leased.lease_until in clock.armed
    await katar.engine.poll("short", [_ack(task, "done")], limit=0)
    # The timer still rings at the lease's end, finds nothing, and is not armed again.
    await clock.set(leased.lease_until)
    await _until(lambda: len(reaps) >= 1)
    await _until(lambda: katar.engine._reaper._timer is not None or not shared)
    if shared:
        assert len(clock.armed) == 1
        assert clock.armed[0] <= clock.now_ms() + HOUSEKEEPING_MS
        return
    await _until(lambda: not katar.engine._reaper._lock.locked())
    assert clock.armed == []
    count = len(reaps)
    await clock.advance(3_600_000)
    await settle()
    assert len(reaps) == count  # an hour with nothing due: not one wake-up


@_ALONE
async def test_an_earlier_deadline_rearms_the_timer(katar: Katar, clock: FakeClock) -> None:
    start = clock.now_ms()
    await katar.engine.enqueue("long", [_new("a")])
    await katar.engine.enqueue("short", [_new("b")])
    await _poll(katar, "long")
    assert min(clock.armed) == start + 60_000
    (short,) = await _poll(katar, "short")  # a shorter lease
    assert min(clock.armed) == start + 1000
    await katar.engine.enqueue("long", [_new("c", delay_ms=500)])  # an earlier delay
    assert min(clock.armed) == start + 500
    await clock.set(start + 500)
    await _until(lambda: bool(clock.armed) and min(clock.armed) == start + 1000)
    await clock.set(start + 1000)  # the short lease ends, with no poll to notice it
    await _until(lambda: bool(clock.armed) and min(clock.armed) == start + 60_000)
    stored = await katar.engine.get_task("short", short.id)
    assert stored.status == "queued"
    assert stored.attempts == 1


@_ALONE
async def test_a_retry_backoff_arms_the_timer(katar: Katar, clock: FakeClock) -> None:
    start = clock.now_ms()
    await katar.put_queue("retried", retry_failed=True, retry_delay=2000)
    (task,) = await katar.engine.enqueue("retried", [_new("x")])
    await _poll(katar, "retried")
    await katar.engine.poll("retried", [_ack(task, "failed")], limit=0)
    assert start + 2000 in clock.armed
    polling = asyncio.ensure_future(katar.engine.poll("retried", wait=30))
    await clock.set(start + 2000)
    (again,) = await asyncio.wait_for(polling, _BOUND)
    assert again.id == task.id
    assert again.attempts == 2


def _ack(task: Task, status: Literal["done", "failed"]) -> Ack:
    return Ack(task_id=str(task.id), status=status)


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_a_one_second_lease_returns_on_time_with_the_real_clock(
    make_url: Callable[[], str],
) -> None:
    katar = Katar(make_url())
    katar.queue("q", timeout=1000)
    async with katar:
        await katar.engine.enqueue("q", [_new("x")])
        (leased,) = await katar.engine.poll("q")
        assert leased.lease_until is not None
        (again,) = await asyncio.wait_for(katar.engine.poll("q", wait=5), _BOUND)
        late_ms = katar.engine.clock.now_ms() - leased.lease_until
        assert again.id == leased.id
        # Before deadlines drove the reaper this was up to a whole second late. Generous
        # bound: a loaded machine must not fail it.
        assert late_ms < 500
