"""Move jobs (redrives at a rate) kept by every store: started, listed, advanced by each
redrive step in its own transaction, cancelled, taken over when their lease passed.

Part of the conformance suite (see test_conformance): the same tests run on every store.
"""

from __future__ import annotations

import asyncio

from katar.core import rules
from katar.core.model import READY, MoveJob, QueueOptions, TaskFilter
from katar.core.storage import MoveLease
from katar.store import Store
from tests.helpers.store import T0, new

MOVABLE = TaskFilter(states=tuple(sorted(rules.REDRIVE_STATES)))
LEASE = 5_000


def draft(queue: str = "dead", runner: str = "a", to: str | None = "q") -> MoveJob:
    return MoveJob(
        queue=queue,
        to=to,
        where=MOVABLE,
        rate=2.0,
        total=5,
        started_at=T0,
        runner=runner,
        lease_until=T0 + LEASE,
    )


async def setup(store: Store, tasks: int = 5) -> None:
    await store.save_queue("q", QueueOptions())
    await store.save_queue("dead", QueueOptions())
    await store.enqueue("dead", [new(i) for i in range(tasks)], T0)


async def step(store: Store, job: MoveJob, runner: str, now: int, limit: int = 2) -> MoveJob:
    """One step of ``job`` as its runner takes it: where it stood, its filter and target."""
    done = await store.redrive(
        job.queue,
        job.to,
        job.where,
        now,
        job.after,
        limit,
        job.allowed,
        MoveLease(job.id, runner, now + LEASE),
    )
    assert done.job is not None
    return done.job


async def test_a_job_is_kept_listed_and_one_runs_per_queue(store: Store) -> None:
    await setup(store)
    job, created = await store.move_start(draft(), 10)
    assert created
    assert job.id > 0
    assert job == MoveJob(
        id=job.id,
        queue="dead",
        to="q",
        where=MOVABLE,
        rate=2.0,
        total=5,
        started_at=T0,
        runner="a",
        lease_until=T0 + LEASE,
    )
    again, created = await store.move_start(draft(runner="b"), 10)
    assert (again, created) == (job, False)
    assert await store.move_list("dead", 10) == [job]
    assert await store.move_list("q", 10) == []
    assert await store.move_get(job.id) == job
    assert await store.move_get(job.id + 1000) is None


async def test_each_step_writes_the_job_counts_and_the_last_completes_it(store: Store) -> None:
    await setup(store)
    job, _ = await store.move_start(draft(), 10)
    job = await step(store, job, "a", T0 + 1)
    assert (job.state, job.matched, job.moved, job.lease_until) == ("running", 2, 2, T0 + 1 + LEASE)
    assert await store.move_get(job.id) == job
    job = await step(store, job, "a", T0 + 2)
    job = await step(store, job, "a", T0 + 3)  # one task left: fewer than the step's limit
    assert (job.state, job.matched, job.moved, job.remaining, job.ended_at) == (
        "completed",
        5,
        5,
        0,
        T0 + 3,
    )
    assert await store.move_get(job.id) == job
    assert (await store.counts())["q"][READY] == 5


async def test_a_task_without_a_target_is_counted_once(store: Store) -> None:
    """The next step starts after the last task the job looked at: a task left behind (no
    origin to go back to) is not matched again."""
    await setup(store, tasks=3)
    job, _ = await store.move_start(draft(to=None), 10)
    job = await step(store, job, "a", T0 + 1)
    job = await step(store, job, "a", T0 + 2)
    assert (job.state, job.matched, job.moved, job.no_origin) == ("completed", 3, 0, 3)


async def test_a_cancelled_job_moves_nothing_more(store: Store) -> None:
    await setup(store)
    job, _ = await store.move_start(draft(), 10)
    job = await step(store, job, "a", T0 + 1)
    ended = await store.move_end(job.id, "cancelled", T0 + 2)
    assert ended is not None
    assert (ended.state, ended.moved, ended.ended_at) == ("cancelled", 2, T0 + 2)
    after = await step(store, job, "a", T0 + 3)
    assert after == ended
    assert (await store.counts())["dead"][READY] == 3
    # Ended already: answered as it is.
    assert await store.move_end(job.id, "failed", T0 + 4, "late") == ended
    assert await store.move_end(job.id + 1000, "cancelled", T0 + 4) is None
    # The queue may start another.
    _, created = await store.move_start(draft(), 10)
    assert created


async def test_a_failure_is_written_by_its_runner_only(store: Store) -> None:
    await setup(store)
    job, _ = await store.move_start(draft(), 10)
    kept = await store.move_end(job.id, "failed", T0 + 1, "boom", runner="b")
    assert kept == job
    failed = await store.move_end(job.id, "failed", T0 + 1, "boom", runner="a")
    assert failed is not None
    assert (failed.state, failed.error, failed.ended_at) == ("failed", "boom", T0 + 1)


async def test_a_job_whose_lease_passed_is_taken_over(store: Store) -> None:
    await setup(store)
    job, _ = await store.move_start(draft(), 10)
    job = await step(store, job, "a", T0 + 1)
    assert await store.move_take("b", T0 + 1 + LEASE, T0 + 3 * LEASE) is None  # not yet
    taken = await store.move_take("b", T0 + 2 + LEASE, T0 + 3 * LEASE)
    assert taken is not None
    assert (taken.id, taken.runner, taken.lease_until, taken.moved) == (
        job.id,
        "b",
        T0 + 3 * LEASE,
        2,
    )
    assert await store.move_take("c", T0 + 2 + LEASE, T0 + 3 * LEASE) is None
    # The old runner, back, finds its job taken: its step moves nothing.
    assert await step(store, job, "a", T0 + 3 + LEASE) == taken
    # The new runner goes on from where the job stood.
    taken = await step(store, taken, "b", T0 + 4 + LEASE)
    taken = await step(store, taken, "b", T0 + 5 + LEASE)
    assert (taken.state, taken.matched, taken.moved) == ("completed", 5, 5)


async def test_a_released_job_is_taken_at_once(store: Store) -> None:
    await setup(store)
    job, _ = await store.move_start(draft(), 10)
    await store.move_release(job.id, "other")  # not its runner: nothing
    assert await store.move_take("b", T0 + 1, T0 + LEASE) is None
    await store.move_release(job.id, "a")
    taken = await store.move_take("b", T0 + 1, T0 + LEASE)
    assert taken is not None
    assert taken.runner == "b"


async def test_the_last_jobs_of_a_queue_are_kept(store: Store) -> None:
    await setup(store)
    ids = []
    for i in range(5):
        job, _ = await store.move_start(draft(), 3)
        ids.append(job.id)
        await store.move_end(job.id, "cancelled", T0 + i)
    listed = await store.move_list("dead", 10)
    assert [j.id for j in listed] == ids[::-1][:3]
    assert [j.id for j in await store.move_list("dead", 2)] == ids[::-1][:2]
    assert await store.move_get(ids[0]) is None


async def test_a_deleted_queue_forgets_its_jobs(store: Store) -> None:
    await setup(store)
    job, _ = await store.move_start(draft(), 10)
    await store.delete_queue("dead")
    assert await store.move_get(job.id) is None
    assert await store.move_take("b", T0 + 10 * LEASE, T0 + 11 * LEASE) is None


# -- servers sharing a PostgreSQL schema -------------------------------------------------------


async def test_servers_see_cancel_and_take_over_each_others_jobs(
    shared_stores: list[Store],
) -> None:
    first, second, third = shared_stores
    await setup(first)
    job, _ = await first.move_start(draft(), 10)
    assert await second.move_list("dead", 10) == [job]
    job = await step(first, job, "a", T0 + 1)
    # The lease passed: of two servers taking over at once, one gets the job.
    took = await asyncio.gather(
        second.move_take("b", T0 + 2 + LEASE, T0 + 3 * LEASE),
        third.move_take("c", T0 + 2 + LEASE, T0 + 3 * LEASE),
    )
    (taken,) = [t for t in took if t is not None]
    runner = taken.runner
    assert runner in ("b", "c")
    taken = await step(second if runner == "b" else third, taken, runner, T0 + 3 + LEASE)
    ended = await first.move_end(job.id, "cancelled", T0 + 4 + LEASE)
    assert ended is not None
    assert (ended.state, ended.moved) == ("cancelled", 4)
    assert await step(third, taken, runner, T0 + 5 + LEASE) == ended


async def test_servers_starting_one_queue_s_job_at_once_start_one(
    shared_stores: list[Store],
) -> None:
    await setup(shared_stores[0])
    started = await asyncio.gather(
        *(store.move_start(draft(runner=f"r{i}"), 10) for i, store in enumerate(shared_stores))
    )
    assert sorted(created for _, created in started) == [False, False, True]
    assert len({job.id for job, _ in started}) == 1


async def test_a_cancel_waits_for_a_step_under_way(shared_stores: list[Store]) -> None:
    """A step and a cancel at once, from two servers: the cancel answers the job with that
    step's counts when the step won, and the step moves nothing when the cancel did."""
    first, second, _ = shared_stores
    await setup(first, tasks=40)
    job, _ = await first.move_start(draft(), 10)
    done, ended = await asyncio.gather(
        first.redrive(
            "dead", "q", MOVABLE, T0 + 1, 0, 20, None, MoveLease(job.id, "a", T0 + LEASE)
        ),
        second.move_end(job.id, "cancelled", T0 + 1),
    )
    assert ended is not None
    assert ended.state == "cancelled"
    assert ended.moved == done.moved
    assert (await first.counts())["q"].get(READY, 0) == ended.moved


async def test_a_job_keeps_its_filter_and_allowed_queues(store: Store) -> None:
    await setup(store, tasks=1)
    where = TaskFilter(states=MOVABLE.states, key="k", error="x")
    job, _ = await store.move_start(
        MoveJob(
            queue="dead",
            to=None,
            where=where,
            allowed=("a", "b"),
            rate=0.5,
            started_at=T0,
            runner="a",
            lease_until=T0,
        ),
        10,
    )
    kept = await store.move_get(job.id)
    assert kept is not None
    assert (kept.where, kept.allowed, kept.rate, kept.to) == (where, ("a", "b"), 0.5, None)
