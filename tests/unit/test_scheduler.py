"""The engine fires schedules at their ticks, on a fake clock: a task per tick, across
restarts on a durable store without firing a tick twice, catch_up both ways, and pauses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from katar import Katar
from katar.core.clock import FakeClock
from katar.core.model import Task
from katar.core.schedule import ScheduleSpec
from tests.conftest import store_url
from tests.http.conftest import eventually

START = 1_700_000_000_000  # 2023-11-14T22:13:20Z
MINUTE = 60_000
FIRST = START + 40_000  # the first whole minute after START


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, tmp_path)


def server(url: str, clock: FakeClock, **fields: object) -> Katar:
    katar = Katar(url, clock=clock)
    katar.queue("q", persistent=True)
    katar.schedule("every-minute", "* * * * *", "q", data={"n": 1}, **fields)
    return katar


async def tasks(katar: Katar) -> list[Task]:
    return await katar.engine.list_tasks("q")


def count(katar: Katar, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await tasks(katar)) >= n

    return check


async def test_a_task_at_each_tick(url: str) -> None:
    clock = FakeClock(START)
    async with server(url, clock) as katar:
        await clock.set(FIRST - 1)
        assert await tasks(katar) == []
        for n in range(1, 4):
            await clock.set(FIRST + (n - 1) * MINUTE)
            await eventually(count(katar, n))
        made = await tasks(katar)
        assert [t.scheduled_for for t in made] == [FIRST, FIRST + MINUTE, FIRST + 2 * MINUTE]
        assert {t.schedule for t in made} == {"every-minute"}
        assert {msgspec.json.decode(t.data)["n"] for t in made} == {1}
        (schedule,) = await katar.schedules()
        assert (schedule.last_tick, schedule.last_task) == (FIRST + 2 * MINUTE, made[-1].id)
        # A worker gets them.
        delivered = await katar.engine.poll("q", limit=10)
        assert [t.id for t in delivered] == [t.id for t in made]


async def test_a_long_poll_is_woken_by_a_tick(url: str) -> None:
    import asyncio

    clock = FakeClock(START)
    async with server(url, clock) as katar:
        poll = asyncio.ensure_future(katar.engine.poll("q", wait=3600))
        await clock.set(FIRST)
        await eventually(lambda: _done(poll))
        (task,) = poll.result()
        stored = await katar.engine.get_task("q", task.id)
        assert stored.scheduled_for == FIRST


async def _done(future: object) -> bool:
    import asyncio

    assert isinstance(future, asyncio.Future)
    return future.done()


async def test_a_restart_fires_no_tick_twice(tmp_path: Path) -> None:
    url = store_url("sqlite", tmp_path)
    clock = FakeClock(START)
    async with server(url, clock) as katar:
        await clock.set(FIRST)
        await eventually(count(katar, 1))
    # The same moment again, as a restarted server sees it: the tick is used up.
    async with server(url, clock) as katar:
        await clock.set(FIRST + 1000)
        await clock.set(FIRST + MINUTE - 1)
        assert len(await tasks(katar)) == 1
        await clock.set(FIRST + MINUTE)
        await eventually(count(katar, 2))
        assert [t.scheduled_for for t in await tasks(katar)] == [FIRST, FIRST + MINUTE]


@pytest.mark.parametrize("catch_up", [False, True])
async def test_ticks_missed_while_no_server_ran(tmp_path: Path, catch_up: bool) -> None:
    url = store_url("sqlite", tmp_path)
    clock = FakeClock(START)
    async with server(url, clock, catch_up=catch_up) as katar:
        await clock.set(FIRST)
        await eventually(count(katar, 1))
    # Down for an hour: 60 ticks pass, then a server starts 10 s after a tick.
    restart = FIRST + 61 * MINUTE + 10_000
    clock = FakeClock(restart)
    async with server(url, clock, catch_up=catch_up) as katar:
        # The tick 10 s ago is on time; those before it were missed.
        expected = (
            [FIRST, FIRST + 60 * MINUTE, FIRST + 61 * MINUTE]
            if catch_up
            else [
                FIRST,
                FIRST + 61 * MINUTE,
            ]
        )
        await eventually(count(katar, len(expected)))
        await clock.set(restart + 30_000)
        assert [t.scheduled_for for t in await tasks(katar)] == expected
        (schedule,) = await katar.schedules()
        assert schedule.last_tick == FIRST + 61 * MINUTE


async def test_a_paused_schedule_makes_nothing_and_resumes_without_catching_up(
    url: str,
) -> None:
    clock = FakeClock(START)
    async with server(url, clock, catch_up=True) as katar:
        await katar.pause_schedule("every-minute")
        await clock.set(FIRST + 5 * MINUTE)
        assert await tasks(katar) == []
        await katar.pause_schedule("every-minute", False)
        await clock.set(FIRST + 6 * MINUTE - 1)
        assert await tasks(katar) == []
        await clock.set(FIRST + 6 * MINUTE)
        await eventually(count(katar, 1))
        assert [t.scheduled_for for t in await tasks(katar)] == [FIRST + 6 * MINUTE]


async def test_a_pause_outlasts_a_restart_that_declares_it_running(tmp_path: Path) -> None:
    url = store_url("sqlite", tmp_path)
    clock = FakeClock(START)
    async with server(url, clock) as katar:
        await katar.pause_schedule("every-minute")
    async with server(url, clock) as katar:
        (schedule,) = await katar.schedules()
        assert schedule.spec.paused is True


async def test_a_schedule_made_at_run_time_fires_and_a_deleted_one_stops(url: str) -> None:
    clock = FakeClock(START)
    katar = Katar(url, clock=clock)
    katar.queue("q", persistent=True)
    async with katar:
        await katar.put_schedule("later", "*/2 * * * *", "q")
        await clock.set(FIRST + MINUTE)  # 22:15: odd, no tick
        assert await tasks(katar) == []
        await clock.set(FIRST + 2 * MINUTE)
        await eventually(count(katar, 1))
        await katar.delete_schedule("later")
        await clock.set(FIRST + 10 * MINUTE)
        assert len(await tasks(katar)) == 1
        assert await katar.schedules() == []


async def test_a_deleted_queue_lets_the_ticks_pass(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    async with server(url, clock) as katar:
        await katar.engine.delete_queue("q")
        await clock.set(FIRST)

        async def passed() -> bool:
            (schedule,) = await katar.schedules()
            return schedule.last_tick == FIRST

        await eventually(passed)
        assert "schedule every-minute: no queue q: its tick passes without a task" in caplog.text
        await katar.put_queue("q")
        await clock.set(FIRST + MINUTE)
        await eventually(count(katar, 1))
        assert [t.scheduled_for for t in await tasks(katar)] == [FIRST + MINUTE]


async def test_a_schedule_that_cannot_run_is_set_aside_and_the_others_fire(
    make_url: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    # Records no PUT accepts any more, as an older server stored them (or a database edit):
    # every tick in the hour skipped in spring, and an unknown time zone.
    never = ScheduleSpec(cron="30 2 * 3 7L", queue="q", timezone="Europe/Berlin")
    mars = ScheduleSpec(cron="* * * * *", queue="q", timezone="Mars/Base")
    clock = FakeClock(START)
    async with server(make_url(), clock) as katar:
        store = katar.engine.store
        await store.save_schedule("never", never, START)
        await store.save_schedule("mars", mars, START)
        katar.engine.schedules_changed()  # as another server's notification says
        for n in range(1, 4):
            await clock.set(FIRST + (n - 1) * MINUTE)
            await eventually(count(katar, n))
        assert {t.schedule for t in await tasks(katar)} == {"every-minute"}
        found = {s.name: s for s in await katar.schedules()}
        assert found["every-minute"].error is None
        assert "never fires" in (found["never"].error or "")
        assert "unknown time zone 'Mars/Base'" in (found["mars"].error or "")
        assert (found["never"].last_tick, found["mars"].last_tick) == (None, None)
    # Logged once each however often the scheduler looked; no pass failed as a whole.
    assert caplog.text.count("schedule never cannot run") == 1
    assert caplog.text.count("schedule mars cannot run") == 1
    assert "firing schedules failed" not in caplog.text
