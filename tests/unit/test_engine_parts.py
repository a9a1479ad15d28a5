"""The engine's parts stand alone: each is built from what it is given (a store, a clock,
the outages log, a callback) and works without an engine around it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from katar.core.clock import FakeClock
from katar.core.listeners import Listeners
from katar.core.model import DONE, Keep, NewTask, QueueOptions, State, Task, TaskFilter
from katar.core.moves import MoveJobs
from katar.core.outcomes import OutcomeWaits
from katar.core.pruner import Pruner
from katar.core.reaper import Reaper
from katar.core.reloader import Reloader
from katar.core.schedule import parse_schedule
from katar.core.scheduler import Scheduler
from katar.core.storage import Change, RedriveStep
from katar.core.waits import WaitList
from katar.core.workers import WorkerNames
from katar.errors import ValidationError
from katar.logs import Outages
from katar.store.memory import MemoryStore
from tests.helpers.flaky import Flaky


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


async def test_listeners_hear_their_queue_and_status_and_a_failing_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    await store.open()
    try:
        await store.save_queue("q", QueueOptions())
        (task,) = await store.enqueue("q", [NewTask(data=msgspec.Raw(b"1"))], 0)
    finally:
        await store.close()
    listeners = Listeners()
    heard: list[str] = []

    async def every_queue(task: Task) -> None:
        heard.append(f"*.{task.status}")

    listeners.on("q.queued", lambda task: heard.append(f"q.{task.status}"))
    assert not listeners.watching_done()
    listeners.on("*.done", every_queue)

    def broken(task: Task) -> None:
        raise RuntimeError(f"a bug in the listener of task {task.id}")

    listeners.on("q.done", broken)
    assert listeners.watching_done()  # the stores then report each task finished "done"
    with pytest.raises(ValidationError, match="invalid event"):
        listeners.on("q.finished", print)
    listeners.emit(task)
    listeners.emit(msgspec.structs.replace(task, state=DONE))
    await asyncio.sleep(0)  # the coroutine listener runs as a task of its own
    assert heard == ["q.queued", "*.done"]
    assert "listener for q.done failed" in caplog.text


async def test_the_reloader_reads_the_options_until_the_store_answers_once_per_ask() -> None:
    store = Flaky()
    await store.open()
    read: list[tuple[dict[str, QueueOptions], bool]] = []
    reloader = Reloader(store, Outages(), reloaded=lambda queues, wake: read.append((queues, wake)))
    try:
        await store.save_queue("q", QueueOptions(max_batch=7))
        store.failures = 1
        reloader.ask(wake_all=False)
        reloader.ask(wake_all=True)  # asked again before it ran: one reload does for both
        async with asyncio.timeout(30):
            while not read:  # noqa: ASYNC110 (the reload runs as a task of its own)
                await asyncio.sleep(0.01)
        assert read == [({"q": QueueOptions(max_batch=7)}, True)]
        assert store.failures == 0
    finally:
        await reloader.stop()
        await store.close()


async def test_the_pruner_removes_finished_tasks_past_their_queue_s_retention() -> None:
    clock = FakeClock()
    store = MemoryStore()
    await store.open()
    queues = {"q": QueueOptions(keep=Keep(cancelled=0)), "kept": QueueOptions()}
    pruner = Pruner(store, clock, Outages(), queues=lambda: queues)
    try:
        ids = []
        for name, options in queues.items():
            await store.save_queue(name, options)
            (task,) = await store.enqueue(name, [NewTask(data=msgspec.Raw(b"1"))], clock.now_ms())
            await store.set_status(name, task.id, "cancelled", clock.now_ms())
            ids.append(task.id)
        await clock.advance(1)
        assert await pruner.prune() == 1
        assert await store.get_task("q", ids[0]) is None
        assert await store.get_task("kept", ids[1]) is not None  # kept a week by default
    finally:
        await pruner.stop()
        await store.close()


async def test_a_cancelled_move_job_counts_every_step_the_store_committed() -> None:
    """Cancelled while it tells the engine of a step's moves: that step is counted (the
    store has moved those tasks, and written the job's counts with them), and no step
    follows."""
    telling = asyncio.Event()
    release = asyncio.Event()
    steps = 0

    async def moved(queue: str, step: RedriveStep) -> None:
        nonlocal steps
        steps += 1
        telling.set()
        await release.wait()

    store = MemoryStore()
    await store.open()
    for name in ("dlq", "q"):
        await store.save_queue(name, QueueOptions())
    await store.enqueue("dlq", [NewTask(data=msgspec.Raw(b"1"))] * 50, 1)
    jobs = MoveJobs(store, FakeClock(), moved, 100)
    job = await jobs.start("dlq", "q", TaskFilter(), rate=5.0, total=50)
    async with asyncio.timeout(30):
        await telling.wait()
        ended = await jobs.cancel("dlq")
        runs = list(jobs._runs.values())
        release.set()
        await asyncio.gather(*runs)  # the run ends at its wait, without another step
    assert ended.id == job.id
    assert (ended.state, ended.moved, ended.matched, steps) == ("cancelled", 5, 5, 1)
    assert [j.state for j in await jobs.history("dlq")] == ["cancelled"]
    assert (await store.counts())["q"][State.READY] == 5
    await jobs.close()


async def test_a_server_does_not_take_over_the_job_it_runs() -> None:
    """Its own job, late for a step (the store was out longer than the lease): the lease
    taken is its own, and the run it has goes on alone."""

    async def moved(queue: str, step: RedriveStep) -> None:
        return None

    store = MemoryStore()
    await store.open()
    for name in ("dlq", "q"):
        await store.save_queue(name, QueueOptions())
    await store.enqueue("dlq", [NewTask(data=msgspec.Raw(b"1"))] * 5, 1)
    clock = FakeClock()
    jobs = MoveJobs(store, clock, moved, 100)
    job = await jobs.start("dlq", "q", TaskFilter(), rate=0.01, total=5)
    await clock.advance(3_600_000)
    assert await jobs.take_over() == []
    assert list(jobs._runs) == [job.id]
    kept = await store.move_get(job.id)
    assert kept is not None
    assert (kept.runner, kept.state) == (jobs.runner, "running")
    assert kept.lease_until > clock.now_ms()
    await jobs.close()
    released = await store.move_get(job.id)
    assert released is not None
    assert (released.state, released.lease_until) == ("running", 0)
