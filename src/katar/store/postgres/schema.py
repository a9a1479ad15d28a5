"""The PostgreSQL store's schema: its tables, indexes and functions, as the migrations that
make them, one version after another (``{s}``: the schema's name)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from katar.errors import ConfigError
from katar.protocol import (
    INVALID_TRACEPARENT,
    MAX_DELAY,
    MAX_TRACESTATE,
    TRACEPARENT_PATTERN,
    TRACESTATE_PATTERN,
)

if TYPE_CHECKING:
    from katar.store.postgres.connection import Connections

SCHEMA_VERSION: Final = 23
_MIGRATIONS: Final = {
    1: """
CREATE TABLE IF NOT EXISTS {s}.queues (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    options bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.tasks (
    id bigserial PRIMARY KEY,  -- a sequence: ids only grow, on every server
    queue_id integer NOT NULL,
    state smallint NOT NULL,
    priority integer NOT NULL,
    data bytea NOT NULL,       -- the producer's JSON, verbatim
    attempts integer NOT NULL DEFAULT 0,
    attempt_base integer NOT NULL DEFAULT 0,
    error text,
    result bytea,
    worker text,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    run_at bigint,
    lease_until bigint
);
CREATE INDEX IF NOT EXISTS tasks_ready ON {s}.tasks (queue_id, priority DESC, id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS tasks_due ON {s}.tasks (run_at) WHERE state = 2;
CREATE INDEX IF NOT EXISTS tasks_lease ON {s}.tasks (lease_until) WHERE state = 3;
CREATE INDEX IF NOT EXISTS tasks_resting ON {s}.tasks (queue_id, state, id)
    WHERE state IN (0, 4, 5, 6);
""",
    2: """
CREATE TABLE IF NOT EXISTS {s}.idempotency_keys (
    queue_id integer NOT NULL,
    key text NOT NULL,
    digest bytea NOT NULL,
    ids bytea,                 -- katar.core.idempotency.pack_ids; set by the same transaction
    created bigint NOT NULL,
    PRIMARY KEY (queue_id, key)  -- what decides between servers racing with one key
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON {s}.idempotency_keys (created);
""",
    3: """
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS key text;  -- the group key_concurrency counts
-- A task's place in a fair queue (rules.fair_seq); NULL elsewhere, so that the indexes below
-- hold only fair queues' tasks and other queues' writes never touch them.
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS fair_seq bigint;
CREATE INDEX IF NOT EXISTS tasks_fair ON {s}.tasks (queue_id, priority DESC, fair_seq, id)
    WHERE state = 1 AND fair_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_fair_key ON {s}.tasks (queue_id, key, fair_seq)
    WHERE fair_seq IS NOT NULL AND state BETWEEN 0 AND 3;
-- A rate limit's token bucket, shared by every server (rules.Bucket); NULL: full.
ALTER TABLE {s}.queues ADD COLUMN IF NOT EXISTS bucket_tokens double precision;
ALTER TABLE {s}.queues ADD COLUMN IF NOT EXISTS bucket_at bigint;
""",
    4: """
-- Long-running work: an operator's cancel of a task in progress, and the worker's progress.
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS cancel_requested boolean NOT NULL DEFAULT false;
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS progress bytea;  -- the worker's JSON, verbatim
""",
    5: """
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS timeout integer;  -- NULL: the queue's
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS max_attempts integer;  -- NULL: the queue's
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS expires_at bigint;
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS unique_key text;
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS unique_until bigint;
CREATE INDEX IF NOT EXISTS tasks_expiry ON {s}.tasks (expires_at)
    WHERE expires_at IS NOT NULL AND attempts = 0 AND state < 3;
CREATE INDEX IF NOT EXISTS tasks_unique ON {s}.tasks (queue_id, unique_key)
    WHERE unique_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_kept ON {s}.tasks (queue_id, unique_until)
    WHERE unique_until IS NOT NULL AND state BETWEEN 4 AND 5;
""",
    6: """
-- Delivery history: when the current (or last) delivery started; the earlier ones.
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS started_at bigint;
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS history bytea;  -- rules.archive's JSON
""",
    7: """
-- Transactional enqueue: an application enqueues inside its own transaction, and the task
-- exists exactly when that transaction commits. The notification, sent at the commit, wakes
-- the long polls of every server (as an enqueue over HTTP does).
CREATE OR REPLACE FUNCTION {s}.enqueue(
    queue text, data jsonb, priority integer DEFAULT 0, delay_s double precision DEFAULT 0
) RETURNS bigint LANGUAGE plpgsql AS $katar$
DECLARE
    found_queue integer;
    now_ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    due bigint;
    created bigint;
BEGIN
    SELECT id INTO found_queue FROM {s}.queues WHERE name = queue;
    IF found_queue IS NULL THEN
        RAISE EXCEPTION 'katar: no queue %; create it first (PUT /v1/queue/%)', queue, queue
            USING ERRCODE = 'no_data_found';
    END IF;
    IF data IS NULL THEN
        RAISE EXCEPTION 'katar: data must be JSON (''null''::jsonb for none), not SQL NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF delay_s IS NULL OR delay_s < 0 OR delay_s > {max_delay} THEN
        RAISE EXCEPTION 'katar: delay_s must be from 0 to {max_delay} seconds, not %', delay_s
            USING ERRCODE = 'numeric_value_out_of_range';
    END IF;
    IF delay_s > 0 THEN
        due := now_ms + ceil(delay_s * 1000);
    END IF;
    INSERT INTO {s}.tasks (queue_id, state, priority, data, created_at, updated_at, run_at)
        VALUES (found_queue, CASE WHEN due IS NULL THEN 1 ELSE 2 END, coalesce(priority, 0),
                convert_to(data::text, 'UTF8'), now_ms, now_ms, due)
        RETURNING id INTO created;
    IF due IS NULL THEN
        PERFORM pg_notify('{channel}', 'r:1:' || queue);
    END IF;
    RETURN created;
END
$katar$;
""",
    # Schedules (katar.core.schedule). The cursor is advanced by compare-and-set in the
    # transaction that inserts the tick's task: of servers firing one tick, one wins.
    8: """
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS schedule text;
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS scheduled_for bigint;
CREATE TABLE IF NOT EXISTS {s}.schedules (
    name text PRIMARY KEY,
    spec bytea NOT NULL,
    cursor bigint NOT NULL,
    last_tick bigint,
    last_task bigint
);
""",
    # Dependencies (after): the edges, and the two columns that keep them off the others.
    9: """
-- Dependencies (after): how many tasks a task waits for, and whether tasks wait for it.
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS parents integer NOT NULL DEFAULT 0;
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS children boolean NOT NULL DEFAULT false;
-- One edge per (child, parent), with the parent's result once it is done, so that the
-- results outlive the parent (a queue without history removes it at once). The partial
-- indexes hold the edges still waiting: a parent's end finds its children, and a child's
-- "is any parent not done" is one probe, however many parents it has.
CREATE TABLE IF NOT EXISTS {s}.deps (
    child_id bigint NOT NULL,
    parent_id bigint NOT NULL,
    done boolean NOT NULL DEFAULT false,
    result bytea,
    PRIMARY KEY (child_id, parent_id)
);
CREATE INDEX IF NOT EXISTS deps_parent ON {s}.deps (parent_id) WHERE NOT done;
CREATE INDEX IF NOT EXISTS deps_pending ON {s}.deps (child_id) WHERE NOT done;
-- Tasks waiting for others (state 7) rest, as paused and finished ones do.
CREATE INDEX IF NOT EXISTS tasks_waiting ON {s}.tasks (queue_id, id) WHERE state = 7;
""",
    # A task's children, listed a page at a time (Store.children).
    10: """
-- Every edge by parent, in child order: a parent's end finds its children, and a task's
-- children are listed a page at a time however many it has. It replaces the index of
-- version 9, which held only the edges still waiting.
CREATE INDEX IF NOT EXISTS deps_children ON {s}.deps (parent_id, child_id);
DROP INDEX IF EXISTS {s}.deps_parent;
""",
    # The transactional enqueue runs with the rights of Katar's role, not the caller's: a
    # role given EXECUTE on it (and USAGE on the schema) can enqueue through it, and write
    # nothing else; the search path is fixed, so that the caller's cannot change what its
    # names mean. Nobody else may call it (a function is PUBLIC's to call by default).
    11: """
ALTER FUNCTION {s}.enqueue(text, jsonb, integer, double precision)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION {s}.enqueue(text, jsonb, integer, double precision) FROM PUBLIC;
""",
    # An edge's parent queue, when it is not the child's (Task.foreign).
    12: """
ALTER TABLE {s}.deps ADD COLUMN IF NOT EXISTS parent_queue text;
""",
    # The tasks in progress by key: a key_concurrency claim looks up the keys it meets; the
    # tasks that wait for a task, counted.
    13: """
-- The tasks in progress that have a key, by key: a key_concurrency claim counts those of
-- the keys it meets, one probe a key, however many keys are in progress (tasks without a
-- key, on the hot path, are never in it).
CREATE INDEX IF NOT EXISTS tasks_running_key ON {s}.tasks (queue_id, key)
    WHERE state = 3 AND key IS NOT NULL;
-- How many tasks named the task while it was unfinished (rules.MAX_CHILDREN).
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS children_count integer NOT NULL DEFAULT 0;
""",
    # Dead letters: where a task failed for good, when it moved to a dead-letter queue.
    14: """
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS dead_letter bytea;
""",
    # Debounce (debounce_key): at most one task per (queue, key) that waits, never delivered
    # (rules.holds_debounce), whichever server enqueues it; the index finds it too.
    15: """
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS debounce_key text;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_debounce ON {s}.tasks (queue_id, debounce_key)
    WHERE debounce_key IS NOT NULL AND attempts = 0 AND state BETWEEN 0 AND 2;
""",
    # key_rate: a token bucket per task key, shared by every server.
    16: """
-- A key's bucket as the moment (ms) it is full again (rules.KeyRates); no row: full. A claim
-- of the queue, holding its row's lock, reads the buckets of the keys it meets, writes those
-- it spent and drops those that are full again (by key_buckets_full): what stays is bounded
-- by the keys taken from within one period. (Migration 21 keeps rows longer: see there.)
CREATE TABLE IF NOT EXISTS {s}.key_buckets (
    queue_id integer NOT NULL,
    key text NOT NULL,
    full_at double precision NOT NULL,
    PRIMARY KEY (queue_id, key)
);
CREATE INDEX IF NOT EXISTS key_buckets_full ON {s}.key_buckets (queue_id, full_at);
""",
    # Dependencies that survive failure (after_failure "run"): the edge says so, and its
    # result then holds the parent's outcome, {"status", "result", "error"} (rules.outcome).
    17: """
ALTER TABLE {s}.deps ADD COLUMN IF NOT EXISTS run boolean NOT NULL DEFAULT false;
""",
    # A task's message attributes (the SQS API's, katar.sqs): a JSON object; NULL for most.
    18: """
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS attributes bytea;
""",
    # Trace context (protocol section 17): the task's W3C traceparent and tracestate, as the
    # JSON object its deliveries carry; and the transactional enqueue with them. The old
    # four-parameter function stays as it was (and keeps the rights granted on it): the new
    # one's traceparent has no default, so a call names one function or the other.
    19: """
ALTER TABLE {s}.tasks ADD COLUMN IF NOT EXISTS trace bytea;
CREATE OR REPLACE FUNCTION {s}.enqueue(
    queue text, data jsonb, priority integer, delay_s double precision, traceparent text,
    tracestate text DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $katar$
DECLARE
    found_queue integer;
    now_ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    due bigint;
    created bigint;
    context bytea;
BEGIN
    SELECT id INTO found_queue FROM {s}.queues WHERE name = queue;
    IF found_queue IS NULL THEN
        RAISE EXCEPTION 'katar: no queue %; create it first (PUT /v1/queue/%)', queue, queue
            USING ERRCODE = 'no_data_found';
    END IF;
    IF data IS NULL THEN
        RAISE EXCEPTION 'katar: data must be JSON (''null''::jsonb for none), not SQL NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF delay_s IS NULL OR delay_s < 0 OR delay_s > {max_delay} THEN
        RAISE EXCEPTION 'katar: delay_s must be from 0 to {max_delay} seconds, not %', delay_s
            USING ERRCODE = 'numeric_value_out_of_range';
    END IF;
    IF delay_s > 0 THEN
        due := now_ms + ceil(delay_s * 1000);
    END IF;
    -- As the HTTP enqueue does (katar.core.model.trace_context): a traceparent that is not W3C's is
    -- ignored, as the W3C says receivers do; a tracestate goes only with a traceparent,
    -- and is left out when it is not W3C's.
    IF traceparent ~ '{traceparent}' AND traceparent !~ '{invalid}' THEN
        IF tracestate IS NOT NULL AND length(tracestate) <= {max_tracestate}
                AND tracestate ~ '{tracestate}' THEN
            context := convert_to(json_build_object('traceparent', traceparent,
                                                    'tracestate', tracestate)::text, 'UTF8');
        ELSE
            context := convert_to(json_build_object('traceparent', traceparent)::text, 'UTF8');
        END IF;
    END IF;
    INSERT INTO {s}.tasks (queue_id, state, priority, data, created_at, updated_at, run_at,
                           trace)
        VALUES (found_queue, CASE WHEN due IS NULL THEN 1 ELSE 2 END, coalesce(priority, 0),
                convert_to(data::text, 'UTF8'), now_ms, now_ms, due, context)
        RETURNING id INTO created;
    IF due IS NULL THEN
        PERFORM pg_notify('{channel}', 'r:1:' || queue);
    END IF;
    RETURN created;
END
$katar$;
REVOKE ALL ON FUNCTION {s}.enqueue(text, jsonb, integer, double precision, text, text)
    FROM PUBLIC;
""",
    # The completion webhooks' outbox (katar.push.notify): events to send, in id order per
    # task; held_until: taken by a server until then (FOR UPDATE SKIP LOCKED), or a failed
    # send's backoff.
    20: """
CREATE TABLE IF NOT EXISTS {s}.outbox (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    task_id bigint NOT NULL,
    body bytea NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    held_until bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_task ON {s}.outbox (task_id, id);
CREATE INDEX IF NOT EXISTS outbox_queue ON {s}.outbox (queue, id);
""",
    # key_rate's buckets kept while their keys are in use: a claim updates a key's row in
    # place instead of deleting and inserting it again.
    21: """
-- A bucket's row now stays until it has been full for half a period (the store prunes the
-- queue's stale rows in bounded batches, at most every half period): steady traffic updates
-- rows in place. No index on full_at, and room left on each page, so that those updates are
-- HOT (no index entry written); the pruning scans the queue's rows, bounded by its keys taken
-- from within the last two periods.
DROP INDEX IF EXISTS {s}.key_buckets_full;
ALTER TABLE {s}.key_buckets SET (fillfactor = 70);
""",
    # The move jobs (katar.core.moves): redrives at a rate, shared by the servers, their
    # counts written by each step. At most one runs per queue (the unique partial index,
    # which also serves the look for jobs whose lease passed: the running ones are few).
    22: """
CREATE TABLE IF NOT EXISTS {s}.move_jobs (
    id bigserial PRIMARY KEY,  -- a sequence: a TaskHandle never names another job
    queue text NOT NULL,
    target text,          -- NULL: each task back to the queue it came from
    filter bytea NOT NULL,  -- JSON: model.TaskFilter
    allowed bytea,        -- JSON: the queues it may move tasks to; NULL: any
    rate double precision NOT NULL,
    state text NOT NULL,  -- running, completed, cancelled, failed
    total bigint NOT NULL,
    matched bigint NOT NULL,
    moved bigint NOT NULL,
    no_origin bigint NOT NULL,
    after_id bigint NOT NULL,  -- the last task id its steps looked at
    started_at bigint NOT NULL,
    ended_at bigint,
    error text,
    runner text,          -- the server that runs it
    lease_until bigint NOT NULL  -- after it, another server may take it over
);
CREATE INDEX IF NOT EXISTS move_jobs_queue ON {s}.move_jobs (queue, id);
CREATE UNIQUE INDEX IF NOT EXISTS move_jobs_running ON {s}.move_jobs (queue)
    WHERE state = 'running';
""",
    # key_rate's rows are now dropped once full for an eighth of a period, every eighth of a
    # period, outside the claims (PostgresStore._prune_key_buckets): a key taken from last
    # at t has no row by t + 1.25 x period, so what stays is bounded by the keys taken from
    # within the last period and a quarter (no change to the table).
    # Which claim wrote a key_rate queue's buckets last, so that a server that made it knows
    # them all without reading them again (PostgresStore._KeyCache): a random number a claim
    # that writes buckets sets; NULL: unknown (a change of options, which empties them).
    23: """
ALTER TABLE {s}.queues ADD COLUMN IF NOT EXISTS key_epoch bigint;
""",
}


async def migrate(db: Connections, s: str, channel: str) -> tuple[int, int]:
    """Apply the migrations the schema ``s`` lacks, one server at a time: the versions
    before and after."""
    async with db.transaction(limit=0) as conn:  # an index on a large table takes time
        await conn.execute("SET LOCAL statement_timeout = 0")
        # Servers starting together wait here for one another.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"katar:{s}",))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL)"
        )
        row = await (await conn.execute(f"SELECT max(version) FROM {s}.schema_version")).fetchone()
        current = (row[0] if row else None) or 0
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"the PostgreSQL schema {s!r} was made by a newer Katar (schema {current},"
                f" this one knows {SCHEMA_VERSION})"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            sql = _MIGRATIONS[version].format(
                s=s,
                channel=channel,
                max_delay=MAX_DELAY,
                traceparent=TRACEPARENT_PATTERN,
                invalid=INVALID_TRACEPARENT,
                tracestate=TRACESTATE_PATTERN,
                max_tracestate=MAX_TRACESTATE,
            )
            await conn.execute(sql)
            await conn.execute(f"INSERT INTO {s}.schema_version VALUES (%s)", (version,))
    return current, SCHEMA_VERSION
