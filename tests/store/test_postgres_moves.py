"""Move jobs across servers sharing a PostgreSQL schema, through their engines: a redrive at
a rate started on one server is listed and cancelled from another, and a job whose runner
stopped without finishing is taken over by another server once its lease has passed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import pytest

from katar.core import background
from katar.core.clock import FakeClock
from katar.core.engine import Engine
from katar.core.model import READY, MoveJob, NewTask, QueueOptions, TaskFilter
from katar.core.moves import LEASE
from katar.store import open_store
from tests.conftest import store_url

DEADLINE = 30.0


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        # ASYNC110: a job's run ends with no event to wait on from outside.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[Engine, Engine, FakeClock]]:
    """Two engines on one schema (the first made the queues, with 3 tasks in "dead"), on
    one fake clock."""
    url = store_url("postgres", tmp_path)
    clock = FakeClock()
    async with AsyncExitStack() as stack:
        first = Engine(open_store(url), clock=clock)
        await first.open({"q": QueueOptions(), "dead": QueueOptions()})
        stack.push_async_callback(first.close)
        await first.store.enqueue("dead", [NewTask(data=msgspec.Raw(b"1"))] * 3, clock.now_ms())
        second = Engine(open_store(url), clock=clock)
        await second.open()
        stack.push_async_callback(second.close)
        yield first, second, clock


async def test_a_job_started_on_one_server_is_listed_and_cancelled_on_another(
    servers: tuple[Engine, Engine, FakeClock],
) -> None:
    first, second, _ = servers
    job = await first.start_redrive("dead", 1.0, "q")
    listed = await second.move_job("dead")
    assert (listed.id, listed.state, listed.runner) == (job.id, "running", first._moves.runner)
    assert [j.id for j in await second.move_history("dead")] == [job.id]
    ended = await second.cancel_redrive("dead")
    assert (ended.id, ended.state) == (job.id, "cancelled")
    await until(lambda: not first._moves._runs)  # its run saw the cancel at its next step
    assert await first.move_job("dead") == ended
    ready = (await first.store.counts())["q"].get(READY, 0)
    assert ended.moved == ready < 3


async def test_a_job_whose_runner_stopped_is_taken_over_after_its_lease(
    servers: tuple[Engine, Engine, FakeClock],
) -> None:
    first, second, clock = servers
    job = await first.start_redrive("dead", 1.0, "q")
    await crash(first)
    assert (await second.move_job("dead")).state == "running"
    assert await second.take_over_redrives() == []  # its lease holds
    await clock.advance(int((LEASE + 2) * 1000))
    await second.take_over_redrives()  # or the background's own look did already
    async with asyncio.timeout(DEADLINE):
        # ASYNC110: the job ends on another server, with no event to wait on here.
        while (ended := await first.move_job("dead")).state == "running":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert (ended.id, ended.state, ended.runner) == (job.id, "completed", second._moves.runner)
    assert (ended.matched, ended.moved) == (3, 3)
    assert (await second.store.counts())["q"][READY] == 3


async def crash(engine: Engine) -> None:
    """Stop the engine's move jobs as a crash would: its runs and its look for jobs to take
    over end, and nothing is written (no lease released)."""
    moves = engine._moves
    await background.stop(moves._watch)
    for run in list(moves._runs.values()):
        await background.stop(run)


async def test_a_queue_deleted_on_another_server_ends_its_job_there(
    servers: tuple[Engine, Engine, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    first, second, _ = servers
    await first.start_redrive("dead", 1.0, "q")
    await second.delete_queue("dead")
    await until(lambda: not first._moves._runs)  # its next step found no job
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await second.store.move_list("dead", 10) == []


async def test_a_job_left_behind_by_a_delete_ends_once_taken_over(
    servers: tuple[Engine, Engine, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    # A start whose checks passed before another server deleted the queue writes its job
    # after the delete took the queue's jobs: the job names a queue that is gone. Its first
    # step ends it as failed, rather than each server taking it over again and again.
    first, second, clock = servers
    await second.delete_queue("dead")
    draft = MoveJob(
        queue="dead",
        to="q",
        where=TaskFilter(),
        rate=1.0,
        started_at=clock.now_ms(),
        runner="gone",
        lease_until=clock.now_ms(),
    )
    job, created = await first.store.move_start(draft, 10)
    assert created
    await clock.advance(1000)
    taken = await first.take_over_redrives()
    assert [j.id for j in taken] == [job.id]
    await until(lambda: not first._moves._runs)
    ended = await first.store.move_get(job.id)
    assert ended is not None
    assert (ended.state, ended.error) == ("failed", "queue 'dead' was deleted")
    await clock.advance(int((LEASE + 2) * 1000))
    assert await second.take_over_redrives() == []  # nothing left to take over
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
