"""What only the SQLite store has: its file, its schema versions, its URL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from katar.core.model import EVERY_TASK, Ack, NewTask, QueueOptions
from katar.errors import ConfigError
from katar.store._rows import CHILDREN, PARENTS
from katar.store.sqlite import SCHEMA_VERSION, SQLiteStore, parse_url
from katar.store.sqlite.deps import _IN_QUEUES, _LINKED

OLD_INDEXES = {
    # Schema 1: one index over every state.
    1: "CREATE INDEX tasks_queue_state ON tasks (queue_id, state, id);",
    # Schema 2: the tasks at rest, with an IN list that cost every write a temporary b-tree.
    2: "CREATE INDEX tasks_resting ON tasks (queue_id, state, id) WHERE state IN (0, 4, 5, 6);",
    # Schema 3: the index of today, without the idempotency keys' table.
    3: "CREATE INDEX tasks_at_rest ON tasks (queue_id, state, id) WHERE state NOT BETWEEN 1 AND 3;",
    # Schema 4: the idempotency keys' table, without the tasks' key column.
    4: "CREATE INDEX tasks_at_rest ON tasks (queue_id, state, id) WHERE state NOT BETWEEN 1 AND 3;"
    " CREATE TABLE idempotency_keys (queue_id INTEGER NOT NULL, key TEXT NOT NULL,"
    " digest BLOB NOT NULL, ids BLOB NOT NULL, created INTEGER NOT NULL,"
    " PRIMARY KEY (queue_id, key)) WITHOUT ROWID;",
}
# Schema 5: the tasks' key and fair_seq columns, without cancel_requested and progress.
OLD_INDEXES[5] = (
    OLD_INDEXES[4]
    + " ALTER TABLE tasks ADD COLUMN key TEXT; ALTER TABLE tasks ADD COLUMN fair_seq INTEGER;"
)
# Schema 6: with cancel_requested and progress, without the tasks' own options.
OLD_INDEXES[6] = (
    OLD_INDEXES[5] + " ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;"
    " ALTER TABLE tasks ADD COLUMN progress BLOB;"
)


@pytest.mark.parametrize("version", sorted(OLD_INDEXES))
async def test_an_older_schema_is_upgraded(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE queues (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                             options BLOB NOT NULL);
        CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, queue_id INTEGER NOT NULL,
            state INTEGER NOT NULL, priority INTEGER NOT NULL, data BLOB NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, attempt_base INTEGER NOT NULL DEFAULT 0,
            error TEXT, result BLOB, worker TEXT, created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL, run_at INTEGER, lease_until INTEGER);
        INSERT INTO queues (id, name, options) VALUES (1, 'q', '{}');
        INSERT INTO tasks (queue_id, state, priority, data, created_at, updated_at)
            VALUES (1, 4, 0, '1', 1, 1);
        """
        + OLD_INDEXES[version]
        + f"PRAGMA user_version = {version};"
    )
    conn.close()
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    try:
        assert (await store.counts())["q"] == {4: 1}
        (old,) = await store.list_tasks("q", EVERY_TASK, 10, 0)
        assert not old.cancel_requested
        assert old.progress is None
        # The columns added since are there: a task with a key goes in and comes back.
        (task,) = await store.enqueue("q", [NewTask(data=msgspec.Raw(b"2"), key="k")], 2)
        assert (await store.get_task("q", task.id)) == task
        assert task.key == "k"
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    assert {"cancel_requested", "progress"} <= columns
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert indexes & {"tasks_queue_state", "tasks_resting"} == set()
    assert "tasks_at_rest" in indexes
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "idempotency_keys" in tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_schema_10_gets_every_edge_indexed_by_parent(tmp_path: Path) -> None:
    path = tmp_path / "deps.db"
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    try:
        await store.save_queue("q", QueueOptions())
        (parent,) = await store.enqueue("q", [NewTask(data=msgspec.Raw(b"1"))], 1)
        child = NewTask(data=msgspec.Raw(b"2"), after=(parent.id,))
        (made,) = await store.enqueue("q", [child], 1)
    finally:
        await store.close()
    # Schema 10: the edges by parent, those still waiting only.
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP INDEX deps_children; CREATE INDEX deps_parent ON deps (parent_id) WHERE done = 0;"
        " PRAGMA user_version = 10;"
    )
    conn.close()
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    try:
        assert store.schema_change == (10, SCHEMA_VERSION)
        found = await store.linked("q", parent.id, 10, 0)
        assert found is not None
        assert [task.id for task in found] == [made.id]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "deps_children" in indexes
    assert "deps_parent" not in indexes
    # A page of children walks that index in order, a page of parents the primary key: no
    # sort of every child or parent, however many.
    for columns, index in ((CHILDREN, "deps_children"), (PARENTS, "PRIMARY KEY")):
        for queues in ("", _IN_QUEUES):
            args = (parent.id, 0, "[1]", 100) if queues else (parent.id, 0, 100)
            sql = "EXPLAIN QUERY PLAN " + _LINKED.format(queues=queues, **columns)
            plan = " ".join(row[3] for row in conn.execute(sql, args))
            assert index in plan
            assert "TEMP B-TREE" not in plan
    conn.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SQLiteStore(f"sqlite:///{path}")
    with pytest.raises(ConfigError, match="made by a newer Katar"):
        await store.open()
    await store.close()


def test_urls() -> None:
    assert parse_url("sqlite:///katar.db") == ("katar.db", "NORMAL")
    assert parse_url("sqlite:////var/lib/k.db?synchronous=full") == ("/var/lib/k.db", "FULL")
    for bad in (
        "sqlite://katar.db",
        "sqlite:///",
        "sqlite:///k.db?mode=x",
        "sqlite:///k?synchronous=off",
    ):
        with pytest.raises(ConfigError):
            parse_url(bad)


@pytest.mark.parametrize("watched", [True, False], ids=["watched", "unwatched"])
async def test_store_watch_reaches_the_batched_done(tmp_path: Path, watched: bool) -> None:
    """Store.watch, however it is set, is what the batched "done" asks: unwatched, it builds
    no finished task (the quiet path the model test and the benchmarks rely on)."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'katar.db'}")
    store.watch = lambda: watched
    await store.open()
    try:
        options = QueueOptions(persistent=True)
        await store.save_queue("q", options)
        await store.enqueue("q", [NewTask(data=msgspec.Raw(b"1"))], 1)
        (task,) = (await store.poll("q", options, [], 1, "w", 2)).delivered
        done = Ack(task_id=task.id, status="done", attempt=1)
        polled = await store.poll("q", options, [done], 0, "w", 3)
        assert [change.task.id for change in polled.changes] == ([task.id] if watched else [])
    finally:
        await store.close()
