"""The SQLite store's schema: its tables and indexes, and the version a database records."""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 5  # 4: idempotency_keys; 5: tasks.cancel_requested, tasks.progress
# The tasks at rest: paused (0), done (4), failed (5), cancelled (6). Not "state IN (0, 4, 5,
# 6)": SQLite evaluates a partial index's condition for every row a statement writes, and an
# IN list builds a temporary b-tree each time (a 4 KiB page zeroed): 56,000 instructions per
# task claimed and finished, more than the two statements' own work (callgrind).
_AT_REST: Final = "state NOT BETWEEN 1 AND 3"
_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS queues (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    options BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused
    queue_id INTEGER NOT NULL,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    data BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    attempt_base INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result BLOB,
    worker TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    run_at INTEGER,
    lease_until INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress BLOB
);
-- The claim's order, over READY tasks only: scheduled, running and finished tasks never
-- slow it down however many there are.
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (queue_id, priority DESC, id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (run_at) WHERE state = 2;
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE state = 3;
-- Listing and counting the tasks that rest: paused, done, failed, cancelled. The tasks on
-- the hot path (ready, running) stay out of it, so a claim and a "done" maintain one index
-- entry fewer each; their counts come from the partial indexes above.
CREATE INDEX IF NOT EXISTS tasks_at_rest ON tasks (queue_id, state, id) WHERE {_AT_REST};
-- An enqueue's Idempotency-Key: the ids it created (katar.core.idempotency.pack_ids).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    queue_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    digest BLOB NOT NULL,
    ids BLOB NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (queue_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created);
-- Schema 1 had the index above over every state; schema 2 had it with an IN list.
DROP INDEX IF EXISTS tasks_queue_state;
DROP INDEX IF EXISTS tasks_resting;
"""

#: Columns added to the tasks table since schema 1, in order: a database made before them
#: gets them with ALTER TABLE (see added_columns).
ADDED_COLUMNS: Final = (
    ("cancel_requested", "INTEGER NOT NULL DEFAULT 0"),  # schema 5
    ("progress", "BLOB"),  # schema 5: the worker's JSON, verbatim
)


def added_columns(present: set[str]) -> list[str]:
    """The statements that add the columns of ADDED_COLUMNS missing from a tasks table that
    has the ``present`` ones."""
    return [
        f"ALTER TABLE tasks ADD COLUMN {name} {kind}"
        for name, kind in ADDED_COLUMNS
        if name not in present
    ]
