"""Store conformance for schedules, over every store: saved, replaced, deleted, and fired by
compare-and-set, once per tick however many servers fire it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable

import msgspec
import pytest

from katar.core.model import EVERY_TASK, NewTask, QueueOptions, State
from katar.core.schedule import ScheduleSpec, parse_schedule
from katar.errors import QueueNotFound
from katar.store import Store, open_store
from tests.helpers.store import KEEP, T0, ack, claim

HOURLY = parse_schedule({"cron": "0 * * * *", "queue": "q", "data": {"report": 1}})
TICK = T0 + 3_600_000


def task_of(spec: ScheduleSpec) -> NewTask:
    return NewTask(data=msgspec.Raw(msgspec.json.encode(spec.data)), priority=int(spec.priority))


async def test_schedules_are_saved_replaced_and_deleted(store: Store) -> None:
    await store.save_queue("q", KEEP)
    saved = await store.save_schedule("s", HOURLY, T0)
    assert (saved.name, saved.spec, saved.cursor, saved.last_tick, saved.last_task) == (
        "s",
        HOURLY,
        T0,
        None,
        None,
    )
    other = msgspec.structs.replace(HOURLY, cron="*/5 * * * *", paused=True)
    replaced = await store.save_schedule("s", other, None)  # keeps where its ticks stand
    assert (replaced.spec, replaced.cursor) == (other, T0)
    moved = await store.save_schedule("s", HOURLY, T0 + 5)  # resumed: the cursor moves
    assert moved.cursor == T0 + 5
    kept = await store.save_schedule("s", HOURLY, T0 + 1)  # never back
    assert kept.cursor == T0 + 5
    assert await store.load_schedules() == {"s": moved}
    assert await store.delete_schedule("s") is True
    assert await store.delete_schedule("s") is False
    assert await store.load_schedules() == {}


async def test_a_tick_is_fired_once_with_its_task(store: Store) -> None:
    await store.save_queue("q", KEEP)
    await store.save_schedule("s", HOURLY, T0)
    fired = await store.fire_schedule("s", T0, TICK, task_of(HOURLY), TICK)
    assert fired.won
    assert fired.task is not None
    task = fired.task
    assert (task.schedule, task.scheduled_for, task.state) == ("s", TICK, State.READY)
    assert msgspec.json.decode(task.data) == {"report": 1}
    assert await store.get_task("q", task.id) == task
    # The same tick again (a second server with the old cursor): nothing.
    again = await store.fire_schedule("s", T0, TICK, task_of(HOURLY), TICK)
    assert again == (False, None)
    (schedule,) = (await store.load_schedules()).values()
    assert (schedule.cursor, schedule.last_tick, schedule.last_task) == (TICK, TICK, task.id)
    assert [t.id for t in await store.list_tasks("q", EVERY_TASK, 10, 0)] == [task.id]
    # A claimed task keeps its schedule fields in its record.
    (claimed,) = await claim(store, now=TICK)
    stored = await store.get_task("q", claimed.id)
    assert stored is not None
    assert stored.scheduled_for == TICK


@pytest.mark.parametrize(
    "options",
    [
        KEEP,
        msgspec.structs.replace(KEEP, concurrency=5),  # the limited queues' claim
        msgspec.structs.replace(KEEP, fair=True),  # the fair queues' claim
    ],
    ids=["plain", "limited", "fair"],
)
async def test_a_scheduled_task_is_delivered_with_its_schedule_and_tick(
    store: Store, options: QueueOptions
) -> None:
    await store.save_queue("q", options)
    await store.save_schedule("s", HOURLY, T0)
    (plain,) = await store.enqueue("q", [task_of(HOURLY)], T0)
    fired = await store.fire_schedule("s", T0, TICK, task_of(HOURLY), TICK)
    assert fired.task is not None
    first, second = await claim(store, 2, options=options, now=TICK)
    assert (first.id, second.id) == (plain.id, fired.task.id)
    assert (first.schedule, first.scheduled_for) == (None, None)
    assert (second.schedule, second.scheduled_for) == ("s", TICK)


async def test_a_tick_without_a_task_moves_the_cursor_only(store: Store) -> None:
    await store.save_queue("q", KEEP)
    await store.save_schedule("s", HOURLY, T0)
    assert await store.fire_schedule("s", T0, TICK, None, TICK) == (True, None)
    (schedule,) = (await store.load_schedules()).values()
    assert (schedule.cursor, schedule.last_tick, schedule.last_task) == (TICK, TICK, None)
    assert await store.list_tasks("q", EVERY_TASK, 10, 0) == []


async def test_an_unknown_schedule_fires_nothing(store: Store) -> None:
    await store.save_queue("q", KEEP)
    assert await store.fire_schedule("nope", T0, TICK, task_of(HOURLY), TICK) == (False, None)


async def test_a_missing_queue_changes_nothing(store: Store) -> None:
    await store.save_queue("q", KEEP)
    await store.save_schedule("s", HOURLY, T0)
    await store.delete_queue("q")
    with pytest.raises(QueueNotFound):
        await store.fire_schedule("s", T0, TICK, task_of(HOURLY), TICK)
    (schedule,) = (await store.load_schedules()).values()
    assert schedule.cursor == T0


async def test_overlap_skip_holds_back_while_the_last_task_is_unfinished(store: Store) -> None:
    skip = msgspec.structs.replace(HOURLY, overlap="skip")
    await store.save_queue("q", KEEP)
    await store.save_schedule("s", skip, T0)
    first = await store.fire_schedule("s", T0, TICK, task_of(skip), TICK)
    assert first.task is not None
    # Unfinished (queued, then in progress): the next ticks are used up without a task.
    second = await store.fire_schedule("s", TICK, TICK + 1, task_of(skip), TICK + 1)
    assert second == (True, None)
    (running,) = await claim(store, now=TICK + 1)
    third = await store.fire_schedule("s", TICK + 1, TICK + 2, task_of(skip), TICK + 2)
    assert third == (True, None)
    await store.poll("q", KEEP, [ack(running)], 0, "w1", TICK + 3)
    fourth = await store.fire_schedule("s", TICK + 2, TICK + 3, task_of(skip), TICK + 3)
    assert fourth.won
    assert fourth.task is not None
    (schedule,) = (await store.load_schedules()).values()
    assert (schedule.cursor, schedule.last_task) == (TICK + 3, fourth.task.id)
    # "allow": a task at every tick, finished or not.
    await store.save_schedule("s", HOURLY, None)
    fifth = await store.fire_schedule("s", TICK + 3, TICK + 4, task_of(HOURLY), TICK + 4)
    assert fifth.task is not None


async def test_overlap_skip_after_the_last_task_is_gone(store: Store) -> None:
    skip = msgspec.structs.replace(HOURLY, overlap="skip")
    await store.save_queue("q", KEEP)
    await store.save_schedule("s", skip, T0)
    first = await store.fire_schedule("s", T0, TICK, task_of(skip), TICK)
    assert first.task is not None
    assert await store.delete_task("q", first.task.id)
    second = await store.fire_schedule("s", TICK, TICK + 1, task_of(skip), TICK + 1)
    assert second.task is not None


async def test_schedules_outlive_a_restart(store_kind: str, make_url: object) -> None:
    if store_kind == "memory":
        pytest.skip("the memory store keeps nothing")
    assert callable(make_url)
    url = make_url()
    first = open_store(url)
    await first.open()
    try:
        await first.save_queue("q", KEEP)
        await first.save_schedule("s", HOURLY, T0)
        await first.fire_schedule("s", T0, TICK, task_of(HOURLY), TICK)
    finally:
        await first.close()
    second = open_store(url)
    await second.open()
    try:
        (schedule,) = (await second.load_schedules()).values()
        assert (schedule.spec, schedule.cursor, schedule.last_tick) == (HOURLY, TICK, TICK)
        assert await second.fire_schedule("s", T0, TICK, task_of(HOURLY), TICK) == (False, None)
    finally:
        await second.close()


async def test_servers_firing_one_tick_make_one_task(shared_stores: list[Store]) -> None:
    a, b, c = shared_stores
    await a.save_queue("q", KEEP)
    await a.save_schedule("s", HOURLY, T0)
    for store in (b, c):
        await store.load_queues()
    for n in range(5):
        cursor, tick = (T0, TICK) if n == 0 else (TICK + n - 1, TICK + n)
        outcomes = await asyncio.gather(
            *(s.fire_schedule("s", cursor, tick, task_of(HOURLY), tick) for s in shared_stores)
        )
        assert sorted(o.won for o in outcomes) == [False, False, True]
        assert sum(o.task is not None for o in outcomes) == 1
    tasks = await a.list_tasks("q", EVERY_TASK, 100, 0)
    assert [t.scheduled_for for t in tasks] == [TICK, TICK + 1, TICK + 2, TICK + 3, TICK + 4]


def _edit_spec(url: str, name: str, spec: bytes) -> None:
    """Set a schedule's stored spec behind the store's back, as an edit of the database."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
            db.execute("UPDATE schedules SET spec = ? WHERE name = ?", (spec, name))
        return
    import psycopg

    from katar.store.postgres import parse_url

    conninfo, _pool_size, schema = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"UPDATE {schema}.schedules SET spec = %s WHERE name = %s", (spec, name))


@pytest.mark.parametrize(
    "spec", [b"not json {{{", b'{"cron": 5, "queue": "q"}', b'{"queue": "q", "when": 1}', b"[]"]
)
async def test_a_record_that_no_longer_decodes_is_loaded_with_its_error(
    store_kind: str, make_url: Callable[[], str], spec: bytes
) -> None:
    if store_kind == "memory":
        pytest.skip("the memory store's records are no bytes to edit")
    url = make_url()
    store = open_store(url)
    await store.open()
    try:
        await store.save_queue("q", KEEP)
        good = await store.save_schedule("good", HOURLY, T0)
        await store.save_schedule("bad", HOURLY, T0)
    finally:
        await store.close()
    _edit_spec(url, "bad", spec)
    store = open_store(url)
    await store.open()
    try:
        loaded = await store.load_schedules()
        assert loaded["good"] == good  # the other records read as ever
        bad = loaded["bad"]
        assert (bad.name, bad.cursor) == ("bad", T0)
        assert bad.error is not None
        assert "its stored record is not a valid schedule" in bad.error
        if spec.startswith(b"{"):
            assert bad.spec.queue == "q"  # what can be read of it, for the token scopes
    finally:
        await store.close()
