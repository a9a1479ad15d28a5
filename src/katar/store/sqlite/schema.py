"""The SQLite store's schema: its tables and indexes, and the version a database records."""

from __future__ import annotations

import sqlite3
from typing import Final

from katar.store._sql import AT_REST, ENDED_KEPT, HAS_EXPIRY, READY, RUNNING, SCHEDULED, UNDERWAY

# 4: idempotency keys; 5: key, fair_seq; 6: cancel, progress; 7: options; 8: delivery history;
# 9: schedules; 10: dependencies; 11: the edges by parent, all of them (a task's children);
# 12: an edge's parent queue, when not the child's; 13: the tasks in progress by key;
# 14: dead letters (a task's dead_letter record); 15: debounce_key;
# 16: an edge that runs whatever the parent's outcome (after_failure "run");
# 17: a task's message attributes (the SQS API's);
# 18: a task's W3C trace context; 19: the completion webhooks' outbox;
# 20: the move jobs (redrives at a rate)
SCHEMA_VERSION: Final = 20
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
    key TEXT,  -- the task's group, for key_concurrency and fair
    fair_seq INTEGER,  -- its place in a fair queue (rules.fair_seq); NULL elsewhere
    cancel_requested INTEGER NOT NULL DEFAULT 0,  -- an operator's cancel of a task in progress
    progress BLOB,  -- the worker's JSON, verbatim, from its last heartbeat
    timeout INTEGER,       -- the task's own lease (ms); NULL: the queue's
    max_attempts INTEGER,  -- the task's own max_attempts; NULL: the queue's
    expires_at INTEGER,    -- a task never delivered is cancelled then
    unique_key TEXT,
    unique_until INTEGER,  -- the key is held until then, whatever the state
    started_at INTEGER,    -- when the current (or last) delivery started
    history BLOB,          -- the earlier deliveries (rules.archive)
    schedule TEXT,         -- the schedule that made the task
    scheduled_for INTEGER, -- and the tick it was made for
    parents INTEGER NOT NULL DEFAULT 0,   -- how many tasks it waits for (after)
    children INTEGER NOT NULL DEFAULT 0,  -- tasks that named it unfinished (its end settles them)
    dead_letter BLOB,  -- where it failed for good, when it moved here (JSON: model.DeadLetter)
    debounce_key TEXT,  -- while it waits, never delivered, an enqueue of the key replaces it
    attributes BLOB,       -- message attributes (katar.sqs), a JSON object; NULL for most
    trace BLOB  -- the W3C trace context it was enqueued with, as delivered (a JSON object)
);
-- The claim's order, over READY tasks only: scheduled, running and finished tasks never
-- slow it down however many there are.
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (queue_id, priority DESC, id) WHERE state = {READY};
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (run_at) WHERE state = {SCHEDULED};
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE state = {RUNNING};
-- Listing and counting the tasks that rest: paused, done, failed, cancelled. The tasks on
-- the hot path (ready, running) stay out of it, so a claim and a "done" maintain one index
-- entry fewer each; their counts come from the partial indexes above.
CREATE INDEX IF NOT EXISTS tasks_at_rest ON tasks (queue_id, state, id) WHERE {AT_REST};
-- A fair queue's claim order, and each key's last place: only tasks of fair queues have a
-- place, so that other queues' writes never touch these indexes.
CREATE INDEX IF NOT EXISTS tasks_fair ON tasks (queue_id, priority DESC, fair_seq, id)
    WHERE state = {READY} AND fair_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_fair_key ON tasks (queue_id, key, fair_seq)
    WHERE fair_seq IS NOT NULL AND {UNDERWAY};
-- The tasks in progress that have a key, by key: a key_concurrency claim looks up how many
-- tasks of each key it meets are in progress, one probe a key, however many keys are in
-- progress (tasks without a key, on the hot path, are never in it).
CREATE INDEX IF NOT EXISTS tasks_running_key ON tasks (queue_id, key)
    WHERE state = {RUNNING} AND key IS NOT NULL;
-- The expiry of tasks never delivered (rules.expiry), and the unique keys held
-- (rules.holds_key): partial indexes, so that tasks without either cost nothing.
CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires_at)
    WHERE {HAS_EXPIRY};
CREATE INDEX IF NOT EXISTS tasks_unique ON tasks (queue_id, unique_key)
    WHERE unique_key IS NOT NULL;
-- The debounce keys (rules.holds_debounce): the tasks that have one, whatever their state,
-- so that a claim or an ack (which change the state) never touches this index; the one
-- writer makes "look, then replace or insert" atomic.
CREATE INDEX IF NOT EXISTS tasks_debounce ON tasks (queue_id, debounce_key)
    WHERE debounce_key IS NOT NULL;
-- Finished tasks that a queue without history keeps while they hold their key.
CREATE INDEX IF NOT EXISTS tasks_kept ON tasks (queue_id, unique_until)
    WHERE unique_until IS NOT NULL AND {ENDED_KEPT};
-- Dependencies: one edge per (child, parent), with the parent's result once it is done, so
-- that the results outlive the parent (a queue without history removes it at once). The
-- edges by parent, every one of them in child order, serve a parent's end (it finds its
-- children) and the listing of a task's children, a page at a time; the partial index of the
-- edges still waiting makes a child's "is any parent not done" one probe, however many
-- parents it has.
CREATE TABLE IF NOT EXISTS deps (
    child_id INTEGER NOT NULL,
    parent_id INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    parent_queue TEXT,  -- the parent's queue, when it is not the child's (Task.foreign)
    -- 1: the child runs whatever the parent's outcome (after_failure "run"); ``result`` then
    -- holds that outcome, {"status", "result", "error"} (rules.outcome), once it ended.
    run INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (child_id, parent_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deps_children ON deps (parent_id, child_id);
CREATE INDEX IF NOT EXISTS deps_pending ON deps (child_id) WHERE done = 0;
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
-- Schedules (katar.core.schedule): the spec as JSON, and where its ticks stand. The cursor
-- is advanced by compare-and-set when a tick is fired, in the transaction that inserts the
-- tick's task (Store.fire_schedule).
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    cursor INTEGER NOT NULL,
    last_tick INTEGER,
    last_task INTEGER
);
-- The completion webhooks' outbox (katar.push.notify): events to send, in id order per task;
-- held_until: taken by a sender until then, or a failed send's backoff.
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an event's id is never reused
    queue TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    held_until INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_task ON outbox (task_id, id);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (queue, id);
-- The move jobs (katar.core.moves): redrives at a rate, their counts written by each step.
-- At most one runs per queue (the unique partial index, which also serves the look for
-- jobs to take over: the running ones are few).
CREATE TABLE IF NOT EXISTS move_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a TaskHandle never names another
    queue TEXT NOT NULL,
    target TEXT,         -- NULL: each task back to the queue it came from
    filter BLOB NOT NULL,  -- JSON: model.TaskFilter
    allowed BLOB,        -- JSON: the queues it may move tasks to; NULL: any
    rate REAL NOT NULL,
    state TEXT NOT NULL,  -- running, completed, cancelled, failed
    total INTEGER NOT NULL,
    matched INTEGER NOT NULL,
    moved INTEGER NOT NULL,
    no_origin INTEGER NOT NULL,
    after_id INTEGER NOT NULL,  -- the last task id its steps looked at
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    error TEXT,
    runner TEXT,
    lease_until INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS move_jobs_queue ON move_jobs (queue, id);
CREATE UNIQUE INDEX IF NOT EXISTS move_jobs_running ON move_jobs (queue)
    WHERE state = 'running';
-- Schema 1 had the index above over every state; schema 2 had it with an IN list. Schema 10
-- had the edges by parent for those still waiting only (deps_children replaces it).
DROP INDEX IF EXISTS tasks_queue_state;
DROP INDEX IF EXISTS tasks_resting;
DROP INDEX IF EXISTS deps_parent;
"""

#: The columns each version added to a table that an older database already has (CREATE
#: TABLE IF NOT EXISTS leaves it as it is): version -> (table, column, declaration).
_ADDED: Final = {
    5: (("tasks", "key", "TEXT"), ("tasks", "fair_seq", "INTEGER")),
    6: (
        ("tasks", "cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
        ("tasks", "progress", "BLOB"),
    ),
    7: (
        ("tasks", "timeout", "INTEGER"),
        ("tasks", "max_attempts", "INTEGER"),
        ("tasks", "expires_at", "INTEGER"),
        ("tasks", "unique_key", "TEXT"),
        ("tasks", "unique_until", "INTEGER"),
    ),
    8: (("tasks", "started_at", "INTEGER"), ("tasks", "history", "BLOB")),
    # Schedules: the schedules table is created by _SCHEMA.
    9: (("tasks", "schedule", "TEXT"), ("tasks", "scheduled_for", "INTEGER")),
    10: (
        ("tasks", "parents", "INTEGER NOT NULL DEFAULT 0"),
        ("tasks", "children", "INTEGER NOT NULL DEFAULT 0"),
    ),
    12: (("deps", "parent_queue", "TEXT"),),
    14: (("tasks", "dead_letter", "BLOB"),),
    15: (("tasks", "debounce_key", "TEXT"),),
    16: (("deps", "run", "INTEGER NOT NULL DEFAULT 0"),),
    17: (("tasks", "attributes", "BLOB"),),
    18: (("tasks", "trace", "BLOB"),),
}


def upgrade(conn: sqlite3.Connection, version: int) -> None:
    """Bring a database from schema ``version`` (0: a new one) to SCHEMA_VERSION. Each step
    looks before it alters, so that an upgrade cut short can run again."""
    for added in range(version + 1, SCHEMA_VERSION + 1):
        for table, column, declaration in _ADDED.get(added, ()):
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if have and column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    conn.executescript(_SCHEMA)
