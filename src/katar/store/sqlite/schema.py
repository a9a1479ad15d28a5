"""The SQLite store's schema: its tables and indexes, and the version a database records."""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 5  # 4: idempotency_keys; 5: per-task options and uniqueness
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
    timeout INTEGER,       -- the task's own lease (ms); NULL: the queue's
    max_attempts INTEGER,  -- the task's own max_attempts; NULL: the queue's
    expires_at INTEGER,    -- a task never delivered is cancelled then
    unique_key TEXT,
    unique_until INTEGER   -- the key is held until then, whatever the state
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
-- The expiry of tasks never delivered (rules.expiry), and the unique keys held
-- (rules.holds_key): partial indexes, so that tasks without either cost nothing.
CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires_at)
    WHERE expires_at IS NOT NULL AND attempts = 0 AND state < 3;
CREATE INDEX IF NOT EXISTS tasks_unique ON tasks (queue_id, unique_key)
    WHERE unique_key IS NOT NULL;
-- Finished tasks that a queue without history keeps while they hold their key.
CREATE INDEX IF NOT EXISTS tasks_kept ON tasks (queue_id, unique_until)
    WHERE unique_until IS NOT NULL AND state BETWEEN 4 AND 5;
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

#: Schema 5's columns, added to the tasks table of an older schema before _SCHEMA runs.
ADDED_IN_5: Final = {
    column: f"ALTER TABLE tasks ADD COLUMN {column} {kind}"
    for column, kind in (
        ("timeout", "INTEGER"),
        ("max_attempts", "INTEGER"),
        ("expires_at", "INTEGER"),
        ("unique_key", "TEXT"),
        ("unique_until", "INTEGER"),
    )
}
