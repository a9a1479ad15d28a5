"""The engine's parts stand alone: each is built from what it is given (a store, a clock,
the outages log, a callback) and works without an engine around it."""

from __future__ import annotations

import asyncio

import msgspec

from katar.core.clock import FakeClock
from katar.core.model import DONE, NewTask, QueueOptions, Task
from katar.core.outcomes import OutcomeWaits
from katar.core.reaper import Reaper
from katar.core.schedule import parse_schedule
from katar.core.scheduler import Scheduler
from katar.core.storage import Change
from katar.core.waits import WaitList
from katar.core.workers import WorkerNames
from katar.logs import Outages
from katar.store.memory import MemoryStore


async def test_a_wake_up_before_the_park_is_counted_and_a_park_ends_at_its_time() -> None:
    clock = FakeClock()
    waits = WaitList(clock)
    seen = waits.wakes.get("q", 0)
    waits.wake("q", 1)  # nobody parked: the count is what a poll compares
    assert waits.wakes["q"] == seen + 1
    parked = asyncio.create_task(waits.park("q", clock.now_ms() + 1000, None))
    await asyncio.sleep(0)
    waits.wake("q", 1)
    assert await parked is True
    parked = asyncio.create_task(waits.park("q", clock.now_ms() + 1000, None))
    await asyncio.sleep(0)
    await clock.advance(1000)
    assert await parked is False
    parked = asyncio.create_task(waits.park("q", clock.now_ms() + 1000, None))
    await asyncio.sleep(0)
    waits.release_all()  # shutting down: the poll ends with nothing
    assert await parked is False


async def test_an_outcome_wait_answers_with_the_finished_task() -> None:
    store = MemoryStore()
    await store.open()
    try:
        await store.save_queue("q", QueueOptions())
        (task,) = await store.enqueue("q", [NewTask(data=msgspec.Raw(b"1"))], 0)
        outcomes = OutcomeWaits()

        async def read() -> Task:
            found = await store.get_task("q", task.id)
            assert found is not None
            return found

        waiting = asyncio.create_task(outcomes.wait(read, task.id, 60))
        await asyncio.sleep(0)
        assert task.id in outcomes.waiting
        finished = msgspec.structs.replace(task, state=DONE)
        outcomes.settle(finished)
        assert await waiting is finished
        assert outcomes.waiting == {}  # a wait leaves nothing behind
    finally:
        await store.close()


async def test_the_reaper_expires_a_lease_at_its_end_and_reports_the_change() -> None:
    clock = FakeClock()
    store = MemoryStore()
    await store.open()
    queues = {"q": QueueOptions(timeout=5000)}
    reported: list[list[Change]] = []
    reaper = Reaper(
        store,
        clock,
        Outages(),
        queues=lambda: queues,
        expired=reported.append,
        retry_interval=0.25,
    )
    try:
        await store.save_queue("q", queues["q"])
        await store.enqueue("q", [NewTask(data=msgspec.Raw(b"1"))], clock.now_ms())
        result = await store.poll("q", queues["q"], (), 1, "w", clock.now_ms())
        (leased,) = result.delivered
        assert leased.lease_until is not None
        await reaper.start()
        reaper.expect(leased.lease_until)
        assert reaper.due == leased.lease_until
        reaper.expect(leased.lease_until + 1)  # a later deadline does not move the timer
        assert clock.armed == [leased.lease_until]
        await clock.set(leased.lease_until)
        for _ in range(20):
            if reported:
                break
            await asyncio.sleep(0)
        ((change,),) = reported
        assert change.task.id == leased.id
        assert change.task.status == "queued"
        await reaper.stop()
        assert reaper.due is None
        assert clock.armed == []
    finally:
        await reaper.stop()
        await store.close()


async def test_the_scheduler_fires_a_due_tick_and_reports_the_task() -> None:
    clock = FakeClock()
    store = MemoryStore()
    await store.open()
    made: list[Task] = []
    scheduler = Scheduler(store, clock, Outages(), made=made.append, retry_interval=0.25)
    try:
        await store.save_queue("q", QueueOptions())
        spec = parse_schedule({"queue": "q", "cron": "* * * * *", "data": {"n": 1}})
        saved = await store.save_schedule("tick", spec, clock.now_ms())
        scheduler.saved(saved)
        scheduler.start()
        await clock.advance(60_000)
        for _ in range(20):
            if made:
                break
            await asyncio.sleep(0)
        (task,) = made
        assert task.queue == "q"
        assert scheduler.schedules["tick"].last_task == task.id
    finally:
        await scheduler.stop()
        await store.close()


def test_the_workers_of_one_queue_cannot_push_out_anothers() -> None:
    names = WorkerNames(limit=4)
    names.saw("b1", "B", 1)
    for n in range(10):
        names.saw(f"q{n}", "q", 10 + n)
    names.saw("b1", "B", 30)  # seen again: not a new name
    polled = names.since(0, lambda _queue: True)
    assert polled == {"b1": {"B": 30}, "q7": {"q": 17}, "q8": {"q": 18}, "q9": {"q": 19}}
    assert names.since(18, lambda queue: queue == "q") == {"q8": {"q": 18}, "q9": {"q": 19}}
