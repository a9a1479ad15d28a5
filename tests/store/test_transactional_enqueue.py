"""PostgreSQL's transactional enqueue (contract section 12): the SQL function
``<schema>.enqueue(queue, data, priority, delay_s)`` that an application calls inside its own
transaction. The task exists exactly when that transaction commits, and the long polls wake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from katar import Katar
from katar.core.model import State
from katar.store.postgres import parse_url
from tests.conftest import store_url
from tests.http.conftest import opened


@pytest.fixture
async def katar(tmp_path: Path) -> AsyncIterator[Katar]:
    instance = Katar(store_url("postgres", tmp_path))
    instance.queue("emails", persistent=True)
    async with opened(instance):
        yield instance


def schema_of(katar: Katar) -> tuple[str, str]:
    conninfo, _pool, schema = parse_url(katar.engine.store.url)
    return conninfo, schema


async def test_a_task_enqueued_in_a_transaction_exists_at_its_commit(katar: Katar) -> None:
    conninfo, schema = schema_of(katar)
    poll = asyncio.ensure_future(katar.engine.poll("emails", wait=30, worker="w1"))
    async with await psycopg.AsyncConnection.connect(conninfo) as app:
        async with app.transaction():
            await app.execute("CREATE TEMP TABLE orders (id int)")  # the application's work
            row = await (
                await app.execute(
                    f"SELECT {schema}.enqueue('emails', %s::jsonb, 5)", ('{"to": "a@b.c"}',)
                )
            ).fetchone()
            assert row is not None
            task_id = row[0]
            await asyncio.sleep(0.2)
            assert not poll.done()  # not before the commit
            assert await katar.engine.store.get_task("emails", task_id) is None
        (task,) = await asyncio.wait_for(poll, 30)  # the commit woke the long poll
    assert task.id == task_id
    assert task.priority == 5
    assert bytes(task.data) == b'{"to": "a@b.c"}'
    assert task.state is State.RUNNING


async def test_a_rolled_back_transaction_enqueues_nothing(katar: Katar) -> None:
    conninfo, schema = schema_of(katar)
    async with await psycopg.AsyncConnection.connect(conninfo) as app:
        await app.execute(f"SELECT {schema}.enqueue('emails', '1')")
        await app.rollback()  # the application's work failed
    assert (await katar.engine.stats())["emails"]["queued"] == 0


async def test_a_delay_schedules_the_task(katar: Katar) -> None:
    conninfo, schema = schema_of(katar)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as app:
        cursor = await app.execute(f"SELECT {schema}.enqueue('emails', '[1, 2]', 0, 3600)")
        row = await cursor.fetchone()
    assert row is not None
    task = await katar.engine.store.get_task("emails", row[0])
    assert task is not None
    assert task.state is State.SCHEDULED
    assert task.run_at is not None
    assert task.run_at - task.created_at == 3_600_000


@pytest.mark.parametrize(
    ("call", "says"),
    [
        ("enqueue('nowhere', '1')", "no queue nowhere"),
        ("enqueue('emails', NULL)", "not SQL NULL"),
        ("enqueue('emails', '1', 0, -1)", "delay_s must be from 0"),
        ("enqueue('emails', 'not json')", "invalid input syntax for type json"),
    ],
)
async def test_bad_calls_fail_the_transaction_with_a_clear_message(
    katar: Katar, call: str, says: str
) -> None:
    conninfo, schema = schema_of(katar)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as app:
        with pytest.raises(psycopg.Error, match=says):
            await app.execute(f"SELECT {schema}.{call}")
    assert (await katar.engine.stats())["emails"]["queued"] == 0
