"""The PostgreSQL store's group commit (katar.store.postgres.group): polls that arrive
together share one transaction, and each gets what it would get alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from katar.core.model import State
from katar.errors import Conflict
from katar.store.postgres import PostgresStore, parse_url
from katar.store.postgres import store as store_module
from katar.store.postgres.group import claim as group_claim
from tests.conftest import store_url
from tests.helpers.store import DROP, KEEP, T0, ack, claim, data, new, setup


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(store_url("postgres", tmp_path))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def spy_groups(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each group the store runs, in order."""
    sizes: list[int] = []
    run = store._group._run_group

    async def counted(queue: str, queue_id: int, group: list[Any]) -> None:
        sizes.append(len(group))
        await run(queue, queue_id, group)

    monkeypatch.setattr(store._group, "_run_group", counted)
    return sizes


async def test_polls_sent_together_share_a_group_each_with_its_own_tasks(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup(pg, DROP)
    await pg.enqueue("q", [new(n, priority=n % 3) for n in range(30)], T0)
    held = (await pg.poll("q", DROP, [], 10, None, T0)).delivered  # leased without a name
    sizes = spy_groups(pg, monkeypatch)
    polls = [
        pg.poll("q", DROP, [ack(held[2 * n]), ack(held[2 * n + 1])], n + 1, f"w{n}", T0 + 1)
        for n in range(5)
    ]
    results = await asyncio.gather(*polls)
    assert sizes == [5]  # one transaction for the five
    assert [len(result.delivered) for result in results] == [1, 2, 3, 4, 5]
    delivered = [task for result in results for task in result.delivered]
    assert len({task.id for task in delivered}) == 15
    # The group's claim is in the queue's order: the first poll has the first task, and so on.
    ready = sorted((task for task in delivered), key=lambda task: (-task.priority, task.id))
    assert [task.id for task in delivered] == [task.id for task in ready]
    for n, result in enumerate(results):  # each task leased to its own poll's worker
        for task in result.delivered:
            assert task.worker == f"w{n}"
            stored = await pg.get_task("q", task.id)
            assert stored is not None
            assert stored.worker == f"w{n}"
            assert stored.state is State.RUNNING
    for task in held:  # a queue without history: done and gone
        assert await pg.get_task("q", task.id) is None


async def test_a_refused_ack_in_a_group_fails_its_poll_alone(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup(pg, KEEP)
    await pg.enqueue("q", [new(n) for n in range(6)], T0)
    mine = await pg.poll("q", KEEP, [], 2, "w1", T0)
    theirs = await pg.poll("q", KEEP, [], 2, "w2", T0)
    sizes = spy_groups(pg, monkeypatch)
    results = await asyncio.gather(
        pg.poll("q", KEEP, [ack(mine.delivered[0])], 1, "w1", T0 + 1),
        # w1 acks a delivery of w2's along with its own: refused, and nothing of it changes
        pg.poll("q", KEEP, [ack(mine.delivered[1]), ack(theirs.delivered[0])], 1, "w1", T0 + 1),
        pg.poll(
            "q", KEEP, [ack(theirs.delivered[1], result=msgspec.Raw(b'{"ok":1}'))], 0, "w2", T0 + 1
        ),
        return_exceptions=True,
    )
    assert sizes == [3]  # tried together, then one by one
    assert isinstance(results[1], Conflict)
    first, third = results[0], results[2]
    assert not isinstance(first, BaseException)
    assert not isinstance(third, BaseException)
    assert len(first.delivered) == 1
    assert third.delivered == []
    states = {}
    for task in (*mine.delivered, *theirs.delivered):
        stored = await pg.get_task("q", task.id)
        assert stored is not None
        states[data(stored)] = stored.state
    done = [mine.delivered[0], theirs.delivered[1]]
    assert states == {
        data(task): State.DONE if task in done else State.RUNNING
        for task in (*mine.delivered, *theirs.delivered)
    }
    result = await pg.get_task("q", theirs.delivered[1].id)
    assert result is not None
    assert result.result is not None
    assert bytes(result.result) == b'{"ok":1}'


async def test_polls_naming_one_task_go_in_different_groups(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup(pg, KEEP)
    await pg.enqueue("q", [new(1)], T0)
    (task,) = await claim(pg)
    sizes = spy_groups(pg, monkeypatch)
    first, second = await asyncio.gather(
        pg.poll("q", KEEP, [ack(task)], 0, "w1", T0 + 1),
        pg.poll("q", KEEP, [ack(task)], 0, "w1", T0 + 1),
    )
    assert sizes == [1, 1]
    assert [len(result.changes) for result in (first, second)] == [1, 0]  # once, then silent


async def test_an_ack_that_changes_nothing_leaves_its_task_unlocked(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the model test: an ack of a queued task (a stale delivery's, or one refused)
    locked the task until its poll's transaction ended, so that the claim of a concurrent
    poll (SKIP LOCKED) passed over it and delivered a task that comes after it. The ack
    leaves the task as it is: it takes no lock, as another server sees while the poll runs."""
    retry = msgspec.structs.replace(KEEP, retry_failed=True, retry_delay=0)
    await setup(pg, retry)
    first, _second = await pg.enqueue("q", [new(1, priority=5), new(2)], T0)
    (delivered,) = (await pg.poll("q", retry, [], 1, "w1", T0)).delivered
    await pg.poll("q", retry, [ack(delivered, "failed", error="again")], 0, "w1", T0 + 1)
    conninfo, _pool, schema = parse_url(pg.url)
    locked: list[bool] = []

    async def seen_from_elsewhere(*args: Any) -> Any:
        """Whether another connection finds the task locked, while the poll's acks hold
        what they lock, before its claim."""
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as other:
            cursor = await other.execute(
                f"SELECT id FROM {schema}.tasks WHERE id = %s FOR UPDATE SKIP LOCKED",
                (first.id,),
            )
            locked.append(await cursor.fetchone() is None)
        return await group_claim(*args)

    monkeypatch.setattr(store_module, "claim", seen_from_elsewhere)
    stale = ack(delivered, "in progress", attempt=1)  # delivery 1 ended: changes nothing
    result = await pg.poll("q", retry, [stale], 1, "w1", T0 + 2)
    assert locked == [False]
    assert [task.id for task in result.delivered] == [first.id]
    assert result.delivered[0].attempts == 2
