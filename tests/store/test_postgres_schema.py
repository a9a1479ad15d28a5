"""What only the PostgreSQL store has: its versioned migrations."""

from __future__ import annotations

from pathlib import Path

import msgspec
import psycopg

from katar.core.idempotency import idempotency
from katar.core.model import EVERY_TASK, Ack, NewTask, QueueOptions
from katar.store.postgres import _MIGRATIONS, SCHEMA_VERSION, PostgresStore, parse_url
from tests.conftest import store_url
from tests.helpers.store import T0, new


async def test_schema_1_is_upgraded_with_its_tasks_kept(tmp_path: Path) -> None:
    url = store_url("postgres", tmp_path)
    conninfo, _pool_size, schema = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.schema_version (version integer NOT NULL)")
        conn.execute(_MIGRATIONS[1].format(s=schema))
        conn.execute(f"INSERT INTO {schema}.schema_version VALUES (1)")
        conn.execute(f"INSERT INTO {schema}.queues (name, options) VALUES ('q', '{{}}')")
        conn.execute(
            f"INSERT INTO {schema}.tasks (queue_id, state, priority, data, created_at,"
            " updated_at) SELECT id, 1, 0, '1', 1, 1 FROM " + schema + ".queues"
        )
    store = PostgresStore(url)
    await store.open()
    try:
        assert (await store.counts())["q"] == {1: 1}
        tasks = [new(1)]
        made = await store.enqueue_once("q", tasks, T0, idempotency("k", tasks))
        again = await store.enqueue_once("q", tasks, T0, idempotency("k", tasks))
        assert made.created
        assert not again.created
        assert again.tasks == made.tasks
    finally:
        await store.close()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(f"SELECT max(version) FROM {schema}.schema_version").fetchone()
        assert row is not None
        assert row[0] == SCHEMA_VERSION == 23
        # 14: a dead-lettered task's record of where it failed for good.
        column = conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = 'tasks' AND column_name = 'dead_letter'",
            (schema,),
        ).fetchone()
        assert column == ("bytea",)


async def test_schema_3_gets_the_columns_of_long_running_work(tmp_path: Path) -> None:
    url = store_url("postgres", tmp_path)
    conninfo, _pool_size, schema = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.schema_version (version integer NOT NULL)")
        for version in (1, 2, 3):
            conn.execute(_MIGRATIONS[version].format(s=schema))
            conn.execute(f"INSERT INTO {schema}.schema_version VALUES (%s)", (version,))
        conn.execute(f"INSERT INTO {schema}.queues (name, options) VALUES ('q', '{{}}')")
        conn.execute(
            f"INSERT INTO {schema}.tasks (queue_id, state, priority, data, attempts, worker,"
            " created_at, updated_at, lease_until) SELECT id, 3, 0, '1', 1, 'w1', 1, 1,"
            f" {T0 + 1000} FROM " + schema + ".queues"
        )
    store = PostgresStore(url)
    await store.open()
    try:
        assert store.schema_change == (3, SCHEMA_VERSION)
        (task,) = await store.list_tasks("q", EVERY_TASK, 10, 0)
        assert not task.cancel_requested
        assert task.progress is None
        change = await store.set_status("q", task.id, "cancelled", T0)
        assert change is not None
        assert change.task.cancel_requested
        options = QueueOptions(persistent=True)
        beat = Ack(task_id=str(task.id), status="in progress", progress=msgspec.Raw(b"[1]"))
        polled = await store.poll("q", options, [beat], 0, "w1", T0 + 1)
        assert list(polled.cancel) == [task.id]
    finally:
        await store.close()


async def test_schema_13_gets_debounce_keys(tmp_path: Path) -> None:
    url = store_url("postgres", tmp_path)
    conninfo, _pool_size, schema = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.schema_version (version integer NOT NULL)")
        for version in range(1, 14):
            sql = _MIGRATIONS[version].format(s=schema, channel="katar", max_delay=1)
            conn.execute(sql)
            conn.execute(f"INSERT INTO {schema}.schema_version VALUES (%s)", (version,))
        conn.execute(f"INSERT INTO {schema}.queues (name, options) VALUES ('q', '{{}}')")
        conn.execute(
            f"INSERT INTO {schema}.tasks (queue_id, state, priority, data, created_at,"
            " updated_at, run_at) SELECT id, 2, 0, '1', 1, 1, 5 FROM " + schema + ".queues"
        )
    store = PostgresStore(url)
    await store.open()
    try:
        assert store.schema_change == (13, SCHEMA_VERSION)
        (old,) = await store.list_tasks("q", EVERY_TASK, 10, 0)
        assert old.debounce_key is None
        spec = NewTask(data=msgspec.Raw(b"2"), delay_ms=1000, debounce_key="k")
        (first,) = await store.enqueue("q", [spec], T0)
        (second,) = await store.enqueue("q", [spec], T0 + 1)
        assert (first.debounced, second.debounced, second.id) == (False, True, first.id)
        assert len(await store.list_tasks("q", EVERY_TASK, 10, 0)) == 2
    finally:
        await store.close()
