"""What only the PostgreSQL store has: its versioned migrations."""

from __future__ import annotations

from pathlib import Path

import psycopg

from katar.core.idempotency import idempotency
from katar.store.postgres import _MIGRATIONS, SCHEMA_VERSION, PostgresStore, parse_url
from tests.conftest import store_url
from tests.store.test_conformance import T0, new


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
        assert row[0] == SCHEMA_VERSION == 4
