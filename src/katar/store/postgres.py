"""``postgresql://user@host:port/dbname``: a store that several Katar servers can share.

Needs the optional driver: ``pip install 'katar[postgres]'`` (psycopg 3 and its pool).
Every operation is one transaction on a pooled connection. Claims take rows with
``FOR UPDATE SKIP LOCKED``, so servers never hand out the same task and never wait on one
another; an ack locks the row it changes. Task ids come from one sequence, so they only grow
across all servers, and a finished task of a queue without history is known by its id being
at or below the sequence's last value.

URL parameters: ``pool_size`` (connections per server, default 10), ``schema`` (the
PostgreSQL schema that holds Katar's tables, default ``katar``), ``query_timeout`` (seconds a
transaction may take, default 10; 0: none) and ``health_timeout`` (seconds for /healthz's
check, default 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import socket
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from katar.core import idempotency, rules
from katar.core.idempotency import Idempotency
from katar.core.model import (
    READY,
    UNFINISHED,
    Ack,
    NewTask,
    QueueOptions,
    State,
    Task,
    TaskFilter,
    now_ms,
    parse_task_id,
)
from katar.core.schedule import Schedule, ScheduleSpec
from katar.core.schedule import stored as stored_schedule
from katar.core.storage import (
    BulkStep,
    Change,
    Enqueued,
    Fired,
    LimitState,
    Observer,
    PollResult,
    Store,
)
from katar.errors import (
    ConfigError,
    Conflict,
    KatarError,
    OutcomeUnknown,
    QueueNotFound,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
)
from katar.logs import mask_credentials
from katar.protocol import HISTORY_LENGTH, MAX_DELAY
from katar.store._rows import COLUMNS, Dialect, update_values, view, where_sql
from katar.store._rows import checked_task_from_row as task_from_row  # apps write here too
from katar.store.postgres_group import Done, PostgresGroups, claim, group_sql, plain_dones

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("katar")

SCHEMA_VERSION: Final = 13
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
}


def _columns(queue_id: int, tasks: Sequence[Task], now: int) -> tuple[int | str, ...]:
    """An insert's parameters for the columns that every new task has: queue_id,
    created_at and updated_at (one value each), then the arrays of state, priority, data,
    run_at and key (the statements unnest them) as array literals: built by str.join, they
    cost a fraction of the driver's adaptation of a list element by element, which was
    most of a large enqueue's time (docs/benchmarks.md)."""
    return (
        queue_id,
        now,
        now,
        _ints([int(t.state) for t in tasks]),
        _ints([t.priority for t in tasks]),
        "{" + ",".join([f'"\\\\x{bytes(t.data).hex()}"' for t in tasks]) + "}",
        _ints([t.run_at for t in tasks]),
        _texts([t.key for t in tasks]),
    )


def _ints(values: Sequence[int | None]) -> str:
    """A PostgreSQL array literal of integers (NULL for None)."""
    return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"


def _texts(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of strings (NULL for None), each quoted."""
    return "{" + ",".join(["NULL" if v is None else _quoted(v) for v in values]) + "}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ready_payload(queue: str, count: int) -> str:
    """The notification that ``count`` tasks of ``queue`` became ready: a server that hears
    it wakes that many of its long polls on the queue (see _listen)."""
    return f"r:{count}:{queue}"


def _ready_payloads(tasks: Iterable[Task]) -> list[str]:
    """The notifications for the ready ones among ``tasks``: one per queue."""
    ready = Counter(task.queue for task in tasks if task.state is READY)
    return [_ready_payload(queue, count) for queue, count in ready.items()]


def _options_digest(rows: Iterable[tuple[str, bytes]]) -> str:
    """A digest of the queues' (name, stored options) in id order, as the statement
    "options_digest" computes it in SQL: names hold no NUL, the options' JSON no control
    character, so the separators cannot occur in what they separate."""
    joined = b"\x01".join(name.encode() + b"\x00" + options for name, options in rows)
    return hashlib.md5(joined, usedforsecurity=False).hexdigest()


def _created(drafts: Sequence[Task], ids: list[int]) -> list[Task]:
    """The tasks an insert created: the drafts with the ids it returned (RETURNING promises
    no order; unnest keeps the order of its arrays, and a sequence hands out growing ids)."""
    ids.sort()
    return [msgspec.structs.replace(t, id=i) for t, i in zip(drafts, ids, strict=True)]


_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_EXPIRE_BATCH: Final = 1000
_options_decoder: Final = msgspec.json.Decoder(QueueOptions)
_spec_decoder: Final = msgspec.json.Decoder(ScheduleSpec)
_STATE_OF: Final = tuple(State)


def parse_url(url: str) -> tuple[str, int, str]:
    """The connection string, the pool size and the schema of a ``postgresql://`` URL."""
    conninfo, pool_size, schema, _timeouts = parse_url_timeouts(url)
    return conninfo, pool_size, schema


def _seconds(params: dict[str, str], name: str, default: float, least: float) -> float:
    """The URL parameter ``name`` in seconds, from ``least`` to a day."""
    raw = params.pop(name, None)
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        value = math.nan
    if not least <= value <= 86_400:
        raise ConfigError(
            f"the PostgreSQL URL's {name} must be a number of seconds from {least:g} to 86400,"
            f" not {raw!r}"
        )
    return value


def parse_url_timeouts(url: str) -> tuple[str, int, str, tuple[float, float]]:
    """:func:`parse_url`, and the URL's (query_timeout, health_timeout) in seconds."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    try:
        pool_size = int(params.pop("pool_size", "10"))
    except ValueError:
        raise ConfigError("the PostgreSQL URL's pool_size must be a whole number") from None
    if not 1 <= pool_size <= 1000:
        raise ConfigError("the PostgreSQL URL's pool_size must be from 1 to 1000")
    query_timeout = _seconds(params, "query_timeout", QUERY_TIMEOUT, 0)
    health_timeout = _seconds(params, "health_timeout", HEALTH_TIMEOUT, 0.1)
    schema = params.pop("schema", "katar")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"invalid schema {schema!r} in the PostgreSQL URL: lower-case letters, digits, '_'"
        )
    # An address that does not answer is an outage, not load: give up on it soon.
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(params), ""))
    return conninfo, pool_size, schema, (query_timeout, health_timeout)


def _translate(exc: Exception, url: str) -> StoreError:
    import psycopg

    if isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown):
        return StoreUnavailable(mask_credentials(f"PostgreSQL is unavailable: {exc}", url))
    return StoreError(mask_credentials(f"PostgreSQL failed: {exc}", url))


class PostgresStore(PostgresGroups, Store):
    """Queues and tasks in PostgreSQL, shared by any number of Katar servers."""

    shared = True  # other servers' leases and delays: see Store.shared

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "the PostgreSQL store needs its driver: pip install 'katar[postgres]'"
            ) from exc
        self._conninfo, self._pool_size, self._schema, timeouts = parse_url_timeouts(url)
        #: Seconds a transaction may take (0: no bound), and /healthz's check.
        self._query_timeout, self._health_timeout = timeouts
        self.url = mask_credentials(url)
        self._raw_url = url  # to mask its password in the driver's messages too
        self._pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] | None = None
        self._queue_ids: dict[str, int] = {}
        self._queue_names: dict[int, str] = {}
        self._fair: set[int] = set()  # the ids of the fair queues, as last loaded or saved
        self._channel = f"katar_{self._schema}"
        self._listener: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None  # _check_options
        #: The digest of the queue options last loaded (_options_digest).
        self._options_digest: str | None = None
        self._malformed_said: float | None = None  # when an odd notification was last said
        #: Set while PostgreSQL is known to be unreachable: requests fail at once instead of
        #: each waiting for the pool's time-out, and this task probes until it answers.
        self._probe: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        s = self._schema
        # The queue and the time are the same for every task: one value each, not arrays of
        # equal values (docs/benchmarks.md, the enqueue of 1,000 on PostgreSQL).
        insert = (
            f"INSERT INTO {s}.tasks (queue_id, created_at, updated_at, state, priority, data,"
            f" run_at, key) SELECT %s::int, %s::bigint, %s::bigint, * FROM unnest(%s::smallint[],"
            f" %s::int[], %s::bytea[], %s::bigint[], %s::text[]) RETURNING id"
        )
        self._sql = {
            "task": f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = %s",
            "tasks": f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY(%s)",
            "lock": f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = %s FOR UPDATE",
            "lock_many": f"SELECT 1 FROM {s}.tasks WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            "update": (
                f"UPDATE {s}.tasks SET state=%s, priority=%s, attempts=%s, attempt_base=%s,"
                " error=%s, result=%s, worker=%s, updated_at=%s, run_at=%s, lease_until=%s,"
                " cancel_requested=%s, progress=%s, expires_at=%s, started_at=%s, history=%s"
                " WHERE id=%s"
            ),
            "delete": f"DELETE FROM {s}.tasks WHERE id = %s",
            "insert": insert,
            # The same with the notification that wakes the long polls of every server, in
            # one statement (_insert_alone): the one-time filter calls pg_notify once.
            "insert_notify": (
                f"WITH ins AS ({insert}) SELECT id FROM ins"
                " WHERE (SELECT true FROM pg_notify(%s, %s))"
            ),
            # With the per-task options and unique keys (see _insert_special).
            "insert_full": (
                f"INSERT INTO {s}.tasks (queue_id, created_at, updated_at, state, priority,"
                f" data, run_at, key, fair_seq, timeout, max_attempts, expires_at, unique_key,"
                f" unique_until, parents, id, error) SELECT %s::int, %s::bigint, %s::bigint, *"
                f" FROM unnest(%s::smallint[], %s::int[], %s::bytea[], %s::bigint[], %s::text[],"
                f" %s::bigint[], %s::int[], %s::int[], %s::bigint[], %s::text[], %s::bigint[],"
                f" %s::int[], %s::bigint[], %s::text[]) RETURNING id"
            ),
            # One transaction at a time per (queue, unique_key), in one order: no deadlock.
            "lock_keys": (
                "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended(k, 0) AS h"
                " FROM unnest(%s::text[]) AS k ORDER BY 1) AS keys"
            ),
            # The tasks that hold unique_keys (rules.holds_key), by the index tasks_unique.
            "holders": (
                f"SELECT DISTINCT ON (unique_key) {COLUMNS} FROM {s}.tasks WHERE queue_id = %s"
                " AND unique_key = ANY(%s) AND unique_key IS NOT NULL"
                " AND (state < 4 OR state = 7 OR unique_until > %s) ORDER BY unique_key, id"
            ),
            "issued": f"SELECT last_value, is_called FROM {s}.tasks_id_seq",
            # A limited queue's claim (QueueOptions.limited). The queue's row is locked
            # first: the claims of that queue, on every server, count one after another, so
            # that a concurrency limit is never exceeded, not even for a moment.
            "lock_queue": (
                f"SELECT bucket_tokens, bucket_at FROM {s}.queues WHERE id = %s FOR UPDATE"
            ),
            "running": f"SELECT count(*) FROM {s}.tasks WHERE queue_id = %s AND state = 3",
            # The tasks in progress of the keys a claim meets (never every key in progress,
            # whose number has no bound), and the keys at their limit (GET /v1/queues); both
            # over tasks_running_key.
            "running_of_keys": (
                f"SELECT key, count(*) FROM {s}.tasks WHERE queue_id = %s AND state = 3"
                " AND key IS NOT NULL AND key = ANY(%s::text[]) GROUP BY key"
            ),
            "keys_at_limit": (
                f"SELECT count(*) FROM (SELECT 1 FROM {s}.tasks WHERE queue_id = %s AND"
                " state = 3 AND key IS NOT NULL GROUP BY key HAVING count(*) >= %s) AS k"
            ),
            # Each passes over the tasks whose expiry has come (rules.expired), and the keys
            # at their limit by a hashed subplan (NOT IN): "<> ALL(array)" compares each row
            # with every key, as slow as rows times keys.
            "candidates": (
                f"SELECT id, key FROM {s}.tasks WHERE queue_id = %s AND state = 1 AND"
                " (expires_at IS NULL OR attempts > 0 OR expires_at > %s) AND"
                " (key IS NULL OR key NOT IN (SELECT unnest(%s::text[])))"
                " ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED"
            ),
            "candidates_fair": (
                f"SELECT id, key FROM {s}.tasks WHERE queue_id = %s AND state = 1 AND"
                " (expires_at IS NULL OR attempts > 0 OR expires_at > %s) AND"
                " fair_seq IS NOT NULL AND (key IS NULL OR key NOT IN (SELECT unnest(%s::text[])))"
                " ORDER BY priority DESC, fair_seq, id LIMIT %s FOR UPDATE SKIP LOCKED"
            ),
            # Tasks without a place (enqueued as the queue was made fair) come after.
            "candidates_unplaced": (
                f"SELECT id, key FROM {s}.tasks WHERE queue_id = %s AND state = 1 AND"
                " (expires_at IS NULL OR attempts > 0 OR expires_at > %s) AND"
                " fair_seq IS NULL AND (key IS NULL OR key NOT IN (SELECT unnest(%s::text[])))"
                " ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED"
            ),
            "fair_front": (
                f"SELECT fair_seq FROM {s}.tasks WHERE queue_id = %s AND state = 1 AND"
                " fair_seq IS NOT NULL ORDER BY priority DESC, fair_seq, id LIMIT 1"
            ),
            "fair_lasts": (
                f"SELECT k, (SELECT max(fair_seq) FROM {s}.tasks WHERE queue_id = %s AND"
                " key = k AND fair_seq IS NOT NULL AND state BETWEEN 0 AND 3)"
                " FROM unnest(%s::text[]) AS k"
            ),
            "fair_last": (
                f"SELECT max(fair_seq) FROM {s}.tasks WHERE queue_id = %s AND"
                " key IS NOT DISTINCT FROM %s AND fair_seq IS NOT NULL AND state BETWEEN 0 AND 3"
            ),
            "insert_fair": (
                f"INSERT INTO {s}.tasks (queue_id, created_at, updated_at, state, priority,"
                f" data, run_at, key, fair_seq) SELECT %s::int, %s::bigint, %s::bigint, * FROM"
                f" unnest(%s::smallint[], %s::int[], %s::bytea[], %s::bigint[], %s::text[],"
                f" %s::bigint[]) RETURNING id"
            ),
            "place_waiting": (
                f"UPDATE {s}.tasks AS t SET fair_seq = r.place FROM (SELECT id, row_number()"
                " OVER (PARTITION BY key ORDER BY priority DESC, id) - 1 AS place FROM"
                f" {s}.tasks WHERE queue_id = %s AND (state BETWEEN 0 AND 3 OR state = 7)"
                " AND fair_seq IS NULL)"
                " AS r WHERE t.id = r.id"
            ),
            "take": (
                f"UPDATE {s}.tasks SET state=3, attempts=attempts+1, worker=%s,"
                f" lease_until=%s + coalesce(timeout, %s), run_at=NULL, progress=NULL,"
                f" updated_at=%s, started_at=%s WHERE id = ANY(%s) RETURNING {COLUMNS}"
            ),
            # A bulk action's step in SQL (Store.bulk): what rules.bulk_change does. A retry
            # moves the task's last delivery into its history (rules.archive: the old row's
            # attempts, worker, started_at, updated_at as its end, its outcome, its error).
            "bulk_delete": f"DELETE FROM {s}.tasks WHERE id = ANY(%s)",
            "bulk_cancel": f"UPDATE {s}.tasks SET state = 6, updated_at = %s WHERE id = ANY(%s)",
            "bulk_retry": (
                f"UPDATE {s}.tasks AS t SET state = 1, run_at = NULL, expires_at = NULL,"
                " attempt_base = t.attempts, error = CASE WHEN t.state = 6 THEN NULL ELSE"
                " t.error END, cancel_requested = false, updated_at = %s, history = CASE WHEN"
                " t.started_at IS NULL THEN t.history ELSE convert_to((CASE WHEN"
                f" jsonb_array_length(x.h) >= {HISTORY_LENGTH} THEN x.h - 0 ELSE x.h END ||"
                " jsonb_build_array(jsonb_build_array(t.attempts, t.worker, t.started_at,"
                " t.updated_at, CASE t.state WHEN 5 THEN 'failed' ELSE 'cancelled' END,"
                " t.error)))::text, 'UTF8') END, started_at = NULL FROM (SELECT id,"
                " coalesce(convert_from(history, 'UTF8')::jsonb, '[]'::jsonb) AS h"
                f" FROM {s}.tasks WHERE id = ANY(%s)) AS x WHERE t.id = x.id"
            ),
            # Retention (rules.prune_before, holds_key: in SQL), the oldest first.
            "prune": (
                f"DELETE FROM {s}.tasks WHERE id IN (SELECT id FROM {s}.tasks WHERE"
                " queue_id = %s AND state = %s AND updated_at <= %s AND (unique_until IS NULL"
                " OR unique_until <= %s) ORDER BY id LIMIT %s) RETURNING id, parents"
            ),
            "save_bucket": (
                f"UPDATE {s}.queues SET bucket_tokens = %s, bucket_at = %s WHERE id = %s"
            ),
            # Ids taken ahead for a batch whose tasks name one another ("$n" in after).
            "next_ids": f"SELECT nextval('{s}.tasks_id_seq') FROM generate_series(1, %s)",
            # What _options_digest computes, in SQL: the periodic check (_check_options).
            "options_digest": (
                "SELECT md5(coalesce(string_agg(convert_to(name, 'UTF8') || '\\x00'::bytea"
                f" || options, '\\x01'::bytea ORDER BY id), ''::bytea)) FROM {s}.queues"
            ),
            **self._deps_sql(),
            **group_sql(s),
        }
        self._groups_init()

    # -- connections -------------------------------------------------------------------------

    async def open(self) -> None:
        import psycopg

        try:
            # One connection first: a mistake in the URL (no such database or role, a wrong
            # port or host, a password refused) is said at once with its cause, where the
            # pool would try again silently until its wait ran out, and say only that.
            first = await psycopg.AsyncConnection.connect(self._conninfo)
            await first.close()
            self._pool = await self._new_pool(10.0)
        except Exception as exc:
            cause = " ".join(str(exc).split())  # the driver's hint comes on lines of its own
            raise StoreUnavailable(
                self._masked(f"cannot connect to PostgreSQL at {self.url}: {cause}")
            ) from exc
        try:
            await self._migrate()
            await self._load_queue_ids()
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        """Apply the migrations this database lacks, one server at a time."""
        s = self._schema
        async with self._transaction(limit=0) as conn:  # an index on a large table takes time
            await conn.execute("SET LOCAL statement_timeout = 0")
            # Servers starting together wait here for one another.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"katar:{s}",))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL)"
            )
            row = await (
                await conn.execute(f"SELECT max(version) FROM {s}.schema_version")
            ).fetchone()
            current = (row[0] if row else None) or 0
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"the PostgreSQL schema {s!r} was made by a newer Katar (schema {current},"
                    f" this one knows {SCHEMA_VERSION})"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                sql = _MIGRATIONS[version].format(s=s, channel=self._channel, max_delay=MAX_DELAY)
                await conn.execute(sql)
                await conn.execute(f"INSERT INTO {s}.schema_version VALUES (%s)", (version,))
        self.schema_change = (current, SCHEMA_VERSION)

    async def _new_pool(self, wait: float) -> AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]]:
        """An open pool with one connection made, within ``wait`` seconds."""
        from psycopg_pool import AsyncConnectionPool

        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            # Waiting for a connection when all are busy (load, not an outage: an outage
            # fails at once, see _down).
            timeout=self._query_timeout or 10.0,
            kwargs={"autocommit": True},
            configure=self._configure,
        )
        try:
            await pool.open(wait=True, timeout=wait)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _configure(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        """Each new connection: PostgreSQL cancels a statement that outlives query_timeout
        (a lock waited for, a slow plan), leaving the connection usable; the watchdog of
        _Transaction, a second later, is for a server that does not answer at all."""
        milliseconds = round(self._query_timeout * 1000)
        await conn.execute(f"SET statement_timeout = {milliseconds}")

    def _down(self) -> None:
        """PostgreSQL could not be reached: fail fast until a probe reaches it again."""
        if self._probe is None and self._pool is not None:
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Try every PROBE_INTERVAL; once PostgreSQL answers, serve from a fresh pool. The
        old pool's connections are dead, and it would only try again after its own backoff
        (doubling up to minutes), so it is retired rather than waited for."""
        import psycopg

        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                # One connection first: it fails at once while nothing listens, where a
                # pool would retry on its own backoff until its wait ran out.
                probe = await psycopg.AsyncConnection.connect(self._conninfo)
                await probe.close()
                pool = await self._new_pool(10.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                continue
            old, self._pool = self._pool, pool
            self._probe = None
            if old is not None:
                # Closed once the requests still holding its connections are done.
                retiring = asyncio.get_running_loop().create_task(old.close(timeout=30.0))
                self._retired.add(retiring)
                retiring.add_done_callback(self._retired.discard)
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        for retiring in list(self._retired):
            with contextlib.suppress(Exception):
                await retiring
        for job in (self._listener, self._checker):
            if job is not None:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        self._listener = self._checker = None
        await self._groups_finish()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _transaction(
        self, writes: bool = True, alone: bool = False, limit: float | None = None
    ) -> Any:
        # writes=False: a transaction that only reads, whose lost COMMIT loses nothing.
        # alone=True: no transaction block, for one statement that commits as it ends.
        # limit: seconds it may take, instead of query_timeout (0: no bound).
        if limit is None:  # PostgreSQL's statement_timeout first (see _configure)
            limit = self._query_timeout and self._query_timeout + WATCHDOG_GRACE
        return _Transaction(self, writes, alone, limit)

    def _masked(self, message: str) -> str:
        return mask_credentials(message, self._raw_url)

    # -- what the other servers do -----------------------------------------------------------

    async def _notify(self, conn: AsyncConnection[tuple[Any, ...]], payload: str) -> None:
        # Delivered to every listening server when the transaction commits, and not at all
        # if it rolls back.
        await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))

    async def _notify_ready(
        self, conn: AsyncConnection[tuple[Any, ...]], tasks: Iterable[Task]
    ) -> None:
        for payload in _ready_payloads(tasks):
            await self._notify(conn, payload)

    async def listen(self, observer: Observer) -> None:
        listening = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(observer, listening))
        self._checker = asyncio.create_task(self._check_options(observer))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listening.wait(), 10)

    async def _listen(self, observer: Observer, listening: asyncio.Event) -> None:
        """LISTEN on a connection of its own, for as long as the store is open; after a
        lost connection, connect again (with backoff) and say that events were missed."""
        import psycopg

        delay = 0.1
        loop = asyncio.get_running_loop()
        lost: float | None = None  # since when the connection is lost
        said = False  # said once per loss, not at every attempt to reconnect
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {self._channel}")
                    if listening.is_set():
                        observer.resync()
                    if said:
                        log.warning("PostgreSQL notifications are back")
                    lost, said = None, False
                    listening.set()
                    delay = 0.1
                    async for event in conn.notifies():
                        self._heard(observer, event.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A restart of PostgreSQL is an outage, said once by the engine: the loss is
                # worth a line of its own only when it lasts (a proxy that drops LISTEN, a
                # role that may not connect any more), and long polls wake late meanwhile.
                lost = loop.time() if lost is None else lost
                if not said and loop.time() - lost >= LISTEN_LOST_SAID:
                    log.warning(
                        "PostgreSQL notifications lost for %.0fs (%s): long polls here do not"
                        " hear of tasks made on other servers; reconnecting until it answers",
                        loop.time() - lost,
                        self._masked(str(exc)),
                    )
                    said = True
                await asyncio.sleep(delay)
                # Events missed while away: long polls must hear of ready tasks soon after
                # PostgreSQL is back.
                delay = min(delay * 2, 1.0)

    def _heard(self, observer: Observer, payload: str) -> None:
        """Pass a notification on to the observer. Anyone who may connect can NOTIFY on the
        channel: a payload that Katar does not send is ignored (and said at most once every
        MALFORMED_EVERY seconds), never a reason to drop the connection."""
        kind, _, rest = payload.partition(":")
        if kind == "r":
            count, _, queue = rest.partition(":")
            if count.isdigit() and 0 < len(count) <= 9 and queue:
                observer.tasks_ready(queue, int(count))
                return
        elif kind == "q" and rest:
            observer.queue_changed(rest)
            return
        elif kind == "s" and not rest:
            observer.schedules_changed()
            return
        clock = asyncio.get_running_loop().time()
        if self._malformed_said is None or clock - self._malformed_said >= MALFORMED_EVERY:
            self._malformed_said = clock
            log.warning(
                "ignored a notification on %s that Katar did not send: %r",
                self._channel,
                payload[:100],
            )

    async def _check_options(self, observer: Observer) -> None:
        """Every OPTIONS_CHECK seconds, compare a digest of the stored queue options with
        that of the options last loaded: a change this server heard nothing of (a
        notification lost with a connection, or missed otherwise) is reloaded within
        seconds, whatever happened to the notifications."""
        while True:
            await asyncio.sleep(OPTIONS_CHECK)
            if self._probe is not None:
                continue  # down: the reload that follows the outage does it
            try:
                async with self._transaction(writes=False) as conn:
                    row = await (await conn.execute(self._sql["options_digest"])).fetchone()
            except StoreError:
                continue  # an outage: said by the requests that meet it
            if row is not None and row[0] != self._options_digest:
                observer.queue_changed("")

    async def ping(self) -> None:
        # Bounded by health_timeout, to wait for a connection and for the answer: /healthz
        # says 503 soon when PostgreSQL does not answer (stopped, or cut off by the network).
        async with self._transaction(writes=False, limit=self._health_timeout) as conn:
            await conn.execute("SELECT 1")

    # -- queues ------------------------------------------------------------------------------

    async def _load_queue_ids(self) -> None:
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(f"SELECT id, name FROM {self._schema}.queues")
            ).fetchall()
        self._queue_ids = {name: qid for qid, name in rows}
        self._queue_names.update({qid: name for qid, name in rows})

    async def _queue_id(self, queue: str) -> int:
        if queue not in self._queue_ids:  # another server may have made it
            await self._load_queue_ids()
        try:
            return self._queue_ids[queue]
        except KeyError:
            raise QueueNotFound(queue=queue) from None

    async def _name(self, conn: AsyncConnection[tuple[Any, ...]], queue_id: int) -> str:
        if queue_id not in self._queue_names:
            cursor = await conn.execute(
                f"SELECT name FROM {self._schema}.queues WHERE id = %s", (queue_id,)
            )
            row = await cursor.fetchone()
            self._queue_names[queue_id] = row[0] if row else f"#{queue_id}"
        return self._queue_names[queue_id]

    async def _tasks(
        self, conn: AsyncConnection[tuple[Any, ...]], rows: Sequence[Sequence[Any]]
    ) -> list[Task]:
        return [task_from_row(row, await self._name(conn, row[1])) for row in rows]

    async def load_queues(self) -> dict[str, QueueOptions]:
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(
                    f"SELECT id, name, options FROM {self._schema}.queues ORDER BY id"
                )
            ).fetchall()
        self._queue_ids = {name: qid for qid, name, _ in rows}
        self._queue_names.update({qid: name for qid, name, _ in rows})
        queues = {name: _options_decoder.decode(options) for _, name, options in rows}
        self._fair = {self._queue_ids[name] for name, options in queues.items() if options.fair}
        self._options_digest = _options_digest((name, bytes(opts)) for _, name, opts in rows)
        return queues

    async def load_queue(self, name: str) -> QueueOptions | None:
        async with self._transaction(writes=False) as conn:
            row = await (
                await conn.execute(
                    f"SELECT id, options FROM {self._schema}.queues WHERE name = %s", (name,)
                )
            ).fetchone()
        if row is None:
            return None
        queue_id, encoded = row
        options = _options_decoder.decode(encoded)
        self._queue_ids[name] = queue_id
        self._queue_names[queue_id] = name
        if options.fair:
            self._fair.add(queue_id)
        else:
            self._fair.discard(queue_id)
        return options

    async def save_queue(self, name: str, options: QueueOptions) -> None:
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"INSERT INTO {self._schema}.queues (name, options) VALUES (%s, %s)"
                # New options: a rate limit starts with a full bucket (NULL: full).
                " ON CONFLICT (name) DO UPDATE SET options = excluded.options,"
                " bucket_tokens = NULL, bucket_at = NULL RETURNING id",
                (name, msgspec.json.encode(options)),
            )
            row = await cursor.fetchone()
            assert row is not None
            if options.fair and row[0] not in self._fair:
                await conn.execute(self._sql["place_waiting"], (row[0],))
            await self._notify(conn, f"q:{name}")
        self._queue_ids[name] = row[0]
        self._queue_names[row[0]] = name
        if options.fair:
            self._fair.add(row[0])
        else:
            self._fair.discard(row[0])

    async def delete_queue(self, name: str, now: int | None = None) -> int:
        queue_id = await self._queue_id(name)
        when = now_ms() if now is None else now
        settled: list[Change] = []
        # No bound: a queue of millions of tasks takes its time to delete.
        async with self._transaction(limit=0) as conn:
            await conn.execute("SET LOCAL statement_timeout = 0")
            # The tasks of other queues that wait for this one's are cancelled.
            cursor = await conn.execute(
                f"SELECT {COLUMNS} FROM {self._schema}.tasks WHERE queue_id = %s AND children"
                " ORDER BY id FOR UPDATE",
                (queue_id,),
            )
            also: list[Change] = []
            for row in await cursor.fetchall():
                await self._settle(conn, self._sql, task_from_row(row, name), None, when, also)
            settled = [change for change in also if change.task.queue != name]
            await self._notify_ready(conn, (change.task for change in settled))
            await conn.execute(
                f"DELETE FROM {self._schema}.deps WHERE child_id IN (SELECT id FROM"
                f" {self._schema}.tasks WHERE queue_id = %s AND parents > 0)",
                (queue_id,),
            )
            cursor = await conn.execute(
                f"DELETE FROM {self._schema}.tasks WHERE queue_id = %s", (queue_id,)
            )
            count: int = cursor.rowcount
            await conn.execute(f"DELETE FROM {self._schema}.queues WHERE id = %s", (queue_id,))
            await conn.execute(
                f"DELETE FROM {self._schema}.idempotency_keys WHERE queue_id = %s", (queue_id,)
            )
            await self._notify(conn, f"q:{name}")
        self._queue_ids.pop(name, None)
        self.report(settled)
        return count

    # -- tasks -------------------------------------------------------------------------------

    async def enqueue(self, queue: str, tasks: Sequence[NewTask], now: int) -> list[Task]:
        queue_id = await self._queue_id(queue)
        if queue_id not in self._fair and not any(map(rules.special, tasks)):
            return await self._insert_alone(queue_id, queue, tasks, now)
        async with self._transaction() as conn:
            return await self._insert(conn, queue_id, queue, tasks, now)

    async def _insert_alone(
        self, queue_id: int, queue: str, tasks: Sequence[NewTask], now: int
    ) -> list[Task]:
        """:meth:`_insert` of plain tasks as one statement outside a transaction block: the
        rows and their notification, committed as the statement ends. One round trip where
        a transaction takes four (BEGIN, the insert, the notification, COMMIT), which is
        most of what one task enqueued at a time costs."""
        drafts = [rules.new_task(queue, spec, 0, now) for spec in tasks]
        columns = _columns(queue_id, drafts, now)
        ready = _ready_payloads(drafts)  # one queue: one notification at most
        async with self._transaction(alone=True) as conn:
            if ready:
                payload = (*columns, self._channel, *ready)
                cursor = await conn.execute(self._sql["insert_notify"], payload)
            else:
                cursor = await conn.execute(self._sql["insert"], columns)
            ids = [row[0] for row in await cursor.fetchall()]
        return _created(drafts, ids)

    async def _insert(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        queue: str,
        tasks: Sequence[NewTask],
        now: int,
    ) -> list[Task]:
        if any(map(rules.special, tasks)):
            return await self._insert_special(conn, queue_id, queue, tasks, now)
        drafts = [rules.new_task(queue, spec, 0, now) for spec in tasks]
        columns = _columns(queue_id, drafts, now)
        if queue_id in self._fair:
            places = await self._fair_places(conn, queue_id, drafts)
            cursor = await conn.execute(self._sql["insert_fair"], (*columns, places))
        else:
            cursor = await conn.execute(self._sql["insert"], columns)
        ids = [row[0] for row in await cursor.fetchall()]
        await self._notify_ready(conn, drafts)
        return _created(drafts, ids)

    async def _insert_special(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        queue: str,
        tasks: Sequence[NewTask],
        now: int,
    ) -> list[Task]:
        """:meth:`_insert` for tasks with per-task options or unique keys: a unique_key held
        by a task of the queue (one of this batch's included) creates nothing, and answers
        that task. Servers enqueueing one key at once take turns: each transaction first
        takes an advisory lock on each of its (queue, key) pairs, in one order (no
        deadlock), held until it commits; then looks, then inserts. The next one to get the
        lock sees the committed row (READ COMMITTED reads anew at each statement)."""
        keys = sorted({spec.unique_key for spec in tasks if spec.unique_key is not None})
        holders: dict[str, Task] = {}
        if keys:
            lock_names = [f"katar:{self._schema}:unique:{queue_id}:{key}" for key in keys]
            await conn.execute(self._sql["lock_keys"], (lock_names,))
            cursor = await conn.execute(self._sql["holders"], (queue_id, keys, now))
            for row in await cursor.fetchall():
                holder = task_from_row(row, queue)
                assert holder.unique_key is not None
                holders[holder.unique_key] = rules.duplicate(holder)
        answered: list[Task | int] = []  # a duplicate, or the index of a task to create
        drafts: list[Task] = []
        taken: dict[str, int] = {}  # a key this batch takes: the index of its draft
        sql = self._sql
        parents = await self._parents(conn, sql, tasks)
        # Ids are taken first: a task's edges, and the errors of those cancelled at once,
        # name the ids of the batch's earlier tasks. As many as there are tasks to create:
        # an id taken and not used would count as a task that existed (see _issued).
        fresh, seen = 0, set()
        for spec in tasks:
            key = spec.unique_key
            if key is None or (key not in holders and key not in seen):
                fresh += 1
                seen.add(key)
        free: list[int] = []
        if fresh:
            cursor = await conn.execute(sql["next_ids"], (fresh,))
            free = sorted(row[0] for row in await cursor.fetchall())
        edges: list[tuple[int, int, bool, bytes | None, str | None]] = []
        made: list[Task] = []  # each answered task, as far as this batch knows it
        for spec in tasks:
            key = spec.unique_key
            if key is not None and key in holders:
                answered.append(holders[key])
                made.append(holders[key])
            elif key is not None and key in taken:
                answered.append(-1 - taken[key])  # a duplicate of this batch's draft
                made.append(drafts[taken[key]])
            else:
                answered.append(len(drafts))
                if len(drafts) == len(free):
                    # A key whose first task of the batch was cancelled at once (a parent had
                    # failed): it holds nothing, and the next task of the key is new too.
                    cursor = await conn.execute(sql["next_ids"], (1,))
                    free += [row[0] for row in await cursor.fetchall()]
                draft = rules.new_task(queue, spec, free[len(drafts)], now)
                if spec.after or spec.refs:
                    mine = {parent_id: parents[parent_id] for parent_id in spec.after}
                    for ref in spec.refs:  # new in this request, or a unique_key's holder
                        earlier = made[ref]
                        result = None if earlier.result is None else bytes(earlier.result)
                        mine[earlier.id] = (earlier.state, result, earlier.queue)
                    draft, mine_edges = self._depend(draft, mine)
                    edges += [(draft.id, *edge) for edge in mine_edges]
                    draft = view(draft, mine_edges)
                if key is not None and rules.holds_key(draft, now):
                    taken[key] = len(drafts)
                drafts.append(draft)
                made.append(draft)
        ids: list[int] = []
        if drafts:
            places: Sequence[int | None] = [None] * len(drafts)
            if queue_id in self._fair:
                places = await self._fair_places(conn, queue_id, drafts)
            cursor = await conn.execute(
                self._sql["insert_full"],
                (
                    *_columns(queue_id, drafts, now),
                    list(places),
                    [t.timeout for t in drafts],
                    [t.max_attempts for t in drafts],
                    [t.expires_at for t in drafts],
                    [t.unique_key for t in drafts],
                    [t.unique_until for t in drafts],
                    [t.parents for t in drafts],
                    [t.id for t in drafts],
                    [t.error for t in drafts],  # a task cancelled at once: its parent failed
                ),
            )
            ids = sorted(row[0] for row in await cursor.fetchall())
            await self._link(conn, sql, edges)
            await self._notify_ready(conn, drafts)
        created = [msgspec.structs.replace(t, id=i) for t, i in zip(drafts, ids, strict=True)]
        return [
            entry
            if isinstance(entry, Task)
            else created[entry]
            if entry >= 0
            else rules.duplicate(created[-1 - entry])
            for entry in answered
        ]

    async def _fair_places(
        self, conn: AsyncConnection[tuple[Any, ...]], queue_id: int, tasks: Sequence[Task]
    ) -> list[int]:
        """Each new task's place in a fair queue (rules.fair_seq): the batch's keys' last
        places in one statement."""
        head = await (await conn.execute(self._sql["fair_front"], (queue_id,))).fetchone()
        front = 0 if head is None else int(head[0])
        keys = {task.key for task in tasks}
        named = sorted(k for k in keys if k is not None)
        cursor = await conn.execute(self._sql["fair_lasts"], (queue_id, named))
        last: dict[str | None, int | None] = {
            key: None if seq is None else int(seq) for key, seq in await cursor.fetchall()
        }
        if None in keys:
            cursor = await conn.execute(self._sql["fair_last"], (queue_id, None))
            found = await cursor.fetchone()
            last[None] = None if found is None or found[0] is None else int(found[0])
        return rules.fair_places([task.key for task in tasks], last, front)

    async def enqueue_once(
        self, queue: str, tasks: Sequence[NewTask], now: int, once: Idempotency
    ) -> Enqueued:
        queue_id = await self._queue_id(queue)
        s = self._schema
        async with self._transaction() as conn:
            # The key's row first: a server enqueueing with the same key at the same moment
            # waits here for this transaction, then finds the key taken (the primary key
            # decides; a row that has expired is taken over).
            cursor = await conn.execute(
                f"INSERT INTO {s}.idempotency_keys AS k (queue_id, key, digest, created)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (queue_id, key) DO UPDATE SET"
                " digest = excluded.digest, ids = NULL, created = excluded.created"
                " WHERE k.created <= %s RETURNING 1",
                (queue_id, once.key, once.digest, now, idempotency.fresh_since(now)),
            )
            if await cursor.fetchone() is None:
                cursor = await conn.execute(
                    f"SELECT digest, ids, created FROM {s}.idempotency_keys"
                    " WHERE queue_id = %s AND key = %s",
                    (queue_id, once.key),
                )
                row = await cursor.fetchone()
                assert row is not None
                assert row[1] is not None
                digest, ids, created = row
                first = idempotency.replay(
                    queue, tasks, digest, idempotency.unpack_ids(ids), created, once
                )
                answer = []
                for task in first:
                    found = None
                    if idempotency.read_back(task):  # as it is now (idempotency.current)
                        cursor = await conn.execute(self._sql["task"], (task.id,))
                        row = await cursor.fetchone()
                        if row is not None and row[1] == queue_id:
                            (found,) = await self._views(
                                conn, self._sql, [task_from_row(row, queue)]
                            )
                    answer.append(idempotency.current(task, found))
                return Enqueued(answer, False)
            new = await self._insert(conn, queue_id, queue, tasks, now)
            await conn.execute(
                f"UPDATE {s}.idempotency_keys SET ids = %s WHERE queue_id = %s AND key = %s",
                (idempotency.pack(new), queue_id, once.key),
            )
            return Enqueued(new, True)

    async def prune_keys(self, before: int) -> int:
        s = self._schema
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"DELETE FROM {s}.idempotency_keys WHERE (queue_id, key) IN (SELECT queue_id,"
                f" key FROM {s}.idempotency_keys WHERE created <= %s ORDER BY created LIMIT %s"
                " FOR UPDATE SKIP LOCKED)",
                (before, idempotency.PRUNE_BATCH),
            )
            pruned: int = cursor.rowcount
            return pruned

    async def _write(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        old: Task,
        new: Task | None,
        options: QueueOptions,
        also: list[Change],
    ) -> Change | None:
        """Write a task's new version; the tasks its end settles go in ``also``."""
        if new is None:
            return None
        await self._settle(conn, self._sql, old, new, new.updated_at, also)
        if rules.discard(new, options):
            await conn.execute(self._sql["delete"], (new.id,))
            if new.parents:
                await self._forget(conn, self._sql, [new.id])
        else:
            await conn.execute(
                self._sql["update"],
                update_values(new),
            )
        return Change(new, old.state)

    async def _issued(self, conn: AsyncConnection[tuple[Any, ...]], task_id: int) -> bool:
        row = await (await conn.execute(self._sql["issued"])).fetchone()
        return row is not None and bool(row[1]) and task_id <= row[0]

    async def poll(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        queue_id = await self._queue_id(queue)
        if not options.custom_claim and (ids := plain_dones(acks)) is not None:
            # The hot path: with the polls that arrive with it (katar.store.postgres_group).
            return await self._grouped(queue, queue_id, options, acks, ids, limit, worker, now)
        return await self._poll_alone(queue, options, acks, limit, worker, now)

    async def _poll_alone(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        """A poll in a transaction of its own, every ack by the rules but its plain "done"s."""
        queue_id = await self._queue_id(queue)
        changes: list[Change] = []
        cancel: list[int] = []
        async with self._transaction() as conn:
            ids = [parse_task_id(ack.task_id) for ack in acks]
            finished: dict[int, Change | None] = {}
            # No task named twice: the order of the acks cannot matter, and the plain "done"s
            # of current deliveries go in one statement (the rest by the rules).
            if len(set(ids)) == len(ids):
                pairs = zip(ids, acks, strict=True)
                done = Done([(i, a, worker) for i, a in pairs if a.status == "done" and i])
                if done.acks:
                    watching = self.watch is None or self.watch()
                    sql, args = done.statement(self._sql, queue_id, options, now, watching)
                    rows = await (await conn.execute(sql, args)).fetchall()
                    finished = done.changes(rows, queue, options, now, watching)
                    changes += await self._finish_edges(conn, done, rows, options, now, watching)
            rest = [i for i in ids if i not in finished]
            if len(rest) > 1:
                # Lock the acked tasks in id order first: two polls acking the same tasks in
                # different orders would otherwise each hold one and wait for the other (a
                # deadlock, which PostgreSQL breaks by failing one of them).
                await conn.execute(self._sql["lock_many"], (sorted({i for i in rest if i}),))
            for index, ack in enumerate(acks):
                task_id = ids[index]
                if task_id in finished:
                    change = finished[task_id]
                    if change is not None:
                        changes.append(change)
                    continue
                row = None
                if task_id is not None:
                    row = await (await conn.execute(self._sql["lock"], (task_id,))).fetchone()
                if row is None:
                    if task_id is not None and await self._issued(conn, task_id):
                        continue  # finished and gone: a queue without history
                    raise TaskNotFound.named(ack.task_id, queue, ack=index)
                if row[1] != queue_id:
                    continue  # another queue's: ignored, as a gone one (rules.apply_ack)
                task = task_from_row(row, queue)
                try:
                    new = rules.apply_ack(task, ack, options, now, worker)
                except KatarError as exc:
                    exc.details.setdefault("ack", index)
                    raise
                also: list[Change] = []
                change = await self._write(conn, task, new, options, also)
                if change is not None and change.task.state != change.old:
                    changes.append(change)
                changes += also
                if rules.stops(task if new is None else new, ack, worker):
                    cancel.append(task.id)
            retry_at = held = None
            delivered: list[Task] = []
            now = self.lease_start(now)  # after the waits for the connection and the locks
            if limit > 0 and options.custom_claim:
                delivered, retry_at, held = await self._claim_limited(
                    conn, queue, queue_id, options, limit, worker, now
                )
            elif limit > 0:
                workers = [worker] * limit
                taken = await claim(conn, self._sql, queue, queue_id, options, workers, now)
                delivered = [task for _slot, task in taken]
            delivered = await self._views(conn, self._sql, delivered)
            await self._notify_ready(conn, (change.task for change in changes))
        return PollResult(delivered, changes, retry_at, cancel, held)

    async def _claim_limited(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue: str,
        queue_id: int,
        options: QueueOptions,
        limit: int,
        worker: str | None,
        now: int,
    ) -> tuple[list[Task], int | None, str | None]:
        sql = self._sql
        stored = None
        if options.limited:  # a fair queue alone has nothing to count
            stored = await (await conn.execute(sql["lock_queue"], (queue_id,))).fetchone()
            now = self.lease_start(now)  # the lock may have been waited for
        bucket = None
        if options.rate is not None:
            tokens, at = (None, None) if stored is None else stored
            bucket = rules.Bucket.stored(options.rate, now, tokens, at)
        running = 0
        if options.concurrency is not None:
            row = await (await conn.execute(sql["running"], (queue_id,))).fetchone()
            running = row[0] if row else 0
        allowed = rules.claim_allowance(options, limit, running, bucket)
        held, allowance = rules.held_by(options, limit, running, bucket), allowed
        per_key: dict[str, int] = {}  # in progress, for the keys met so far
        taken: dict[str, int] = {}
        lease = (now, options.timeout)  # rules.lease_ms: the task's own timeout, else this
        delivered: list[Task] = []
        if allowed > 0 and options.key_concurrency is None and queue_id not in self._fair:
            # Nothing to pick by key: the plain claim, cut to what the limits allow.
            claimed = await claim(conn, sql, queue, queue_id, options, [worker] * allowed, now)
            delivered = [task for _slot, task in claimed]
            allowed = 0
        extra = 0 if options.key_concurrency is None else rules.CLAIM_EXTRA
        while len(delivered) < allowed:
            want = allowed - len(delivered)
            blocked = rules.blocked_keys(per_key, taken, options.key_concurrency)
            # More than wanted: some may belong to keys at their limit, or that fill up on
            # the way (the next look passes over those keys, and looks further).
            chunk = want + extra
            candidates = await self._candidates(conn, queue_id, blocked, chunk, now)
            met = rules.unseen_keys(candidates, per_key) if extra else []
            if met:
                per_key.update(dict.fromkeys(met, 0))
                cursor = await conn.execute(sql["running_of_keys"], (queue_id, met))
                per_key.update(await cursor.fetchall())
            ids = rules.pick_by_key(candidates, want, per_key, options.key_concurrency, taken)
            if ids:
                cursor = await conn.execute(sql["take"], (worker, *lease, now, now, ids))
                took = {row[0]: row for row in await cursor.fetchall()}
                delivered += [task_from_row(took[i], queue) for i in ids]  # the claim order
            if len(candidates) < chunk:
                break  # no more ready tasks that a free key could take
            extra *= 2
        retry_at = None
        if bucket is not None and options.rate is not None:
            bucket.take(len(delivered))
            await conn.execute(sql["save_bucket"], (bucket.tokens, bucket.at, queue_id))
            if len(delivered) < limit:
                retry_at = bucket.next_token(options.rate, now)
        if len(delivered) < allowance:  # fewer ready tasks than allowed: no limit held it
            held = None
        return delivered, retry_at, held

    async def _candidates(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        blocked: list[str],
        chunk: int,
        now: int,
    ) -> list[tuple[int, str | None]]:
        fair = queue_id in self._fair
        cursor = await conn.execute(
            self._sql["candidates_fair" if fair else "candidates"],
            (queue_id, now, blocked, chunk),
        )
        rows = [(task_id, key) for task_id, key in await cursor.fetchall()]
        if fair and len(rows) < chunk:
            cursor = await conn.execute(
                self._sql["candidates_unplaced"], (queue_id, now, blocked, chunk - len(rows))
            )
            rows += [(task_id, key) for task_id, key in await cursor.fetchall()]
        return rows

    async def limit_state(self, queue: str, options: QueueOptions, now: int) -> LimitState:
        queue_id = await self._queue_id(queue)
        async with self._transaction(writes=False) as conn:
            keys = None
            if options.key_concurrency is not None:
                limit = options.key_concurrency
                cursor = await conn.execute(self._sql["keys_at_limit"], (queue_id, limit))
                row = await cursor.fetchone()
                keys = row[0] if row else 0
            tokens = None
            if options.rate is not None:
                row = await (
                    await conn.execute(
                        f"SELECT bucket_tokens, bucket_at FROM {self._schema}.queues WHERE id = %s",
                        (queue_id,),
                    )
                ).fetchone()
                stored_tokens, at = (None, None) if row is None else row
                tokens = rules.Bucket.stored(options.rate, now, stored_tokens, at).tokens
        return LimitState(tokens, keys)

    async def get_task(self, queue: str, task_id: int) -> Task | None:
        async with self._transaction(writes=False) as conn:
            row = await (await conn.execute(self._sql["task"], (task_id,))).fetchone()
            if row is None or await self._name(conn, row[1]) != queue:
                return None
            (task,) = await self._views(conn, self._sql, [task_from_row(row, queue)])
            return task

    async def queues_of(self, ids: Sequence[int]) -> dict[int, str]:
        async with self._transaction(writes=False) as conn:
            cursor = await conn.execute(
                f"SELECT id, queue_id FROM {self._schema}.tasks WHERE id = ANY(%s)", (list(ids),)
            )
            return {
                task_id: await self._name(conn, queue_id)
                for task_id, queue_id in await cursor.fetchall()
            }

    async def list_tasks(
        self, queue: str, where: TaskFilter, limit: int, after: int, newest_first: bool = False
    ) -> list[Task]:
        queue_id = await self._queue_id(queue)
        conditions, params = where_sql(where, _DIALECT)
        if newest_first:
            page, order = (" AND id < %s" if after else ""), " ORDER BY id DESC"
        else:
            page, order = " AND id > %s", " ORDER BY id"
        sql = (
            f"SELECT {COLUMNS} FROM {self._schema}.tasks WHERE queue_id = %s{conditions}{page}"
            f"{order} LIMIT %s"
        )
        args = (queue_id, *params, *((after,) if page else ()), limit)
        async with self._transaction(writes=False) as conn:
            rows = await (await conn.execute(sql, args)).fetchall()
            tasks = [task_from_row(row, queue) for row in rows]
            return await self._views(conn, self._sql, tasks)

    async def count_tasks(self, queue: str, where: TaskFilter) -> int:
        queue_id = await self._queue_id(queue)
        conditions, params = where_sql(where, _DIALECT)
        sql = f"SELECT count(*) FROM {self._schema}.tasks WHERE queue_id = %s{conditions}"
        async with self._transaction(writes=False) as conn:
            row = await (await conn.execute(sql, (queue_id, *params))).fetchone()
        assert row is not None
        count: int = row[0]
        return count

    async def bulk(
        self,
        queue: str,
        action: str,
        where: TaskFilter,
        now: int,
        after: int,
        limit: int,
        report: bool = True,
    ) -> BulkStep:
        queue_id = await self._queue_id(queue)
        conditions, params = where_sql(where, _DIALECT)
        s = self._schema
        select = (
            f"FROM {s}.tasks WHERE queue_id = %s{conditions} AND id > %s"
            " ORDER BY id LIMIT %s FOR UPDATE"
        )
        args = (queue_id, *params, after, limit)
        states = rules.BULK_STATES[action]
        # In SQL, without building the tasks: a delete; a cancel or a retry that nobody
        # watches, except a retry that must take a unique_key back or a place in a fair
        # queue (the rules do those).
        in_sql = action == "delete" or (
            not report and (action == "cancel" or queue_id not in self._fair)
        )
        async with self._transaction() as conn:
            if not in_sql:
                rows = await (await conn.execute(f"SELECT {COLUMNS} {select}", args)).fetchall()
                return await self._bulk_by_rules(conn, queue_id, queue, action, rows, now, after)
            settled: list[Change] = []
            found = await conn.execute(
                f"SELECT id, state, unique_key, parents > 0 OR children {select}", args
            )
            rows = await found.fetchall()
            if not rows:
                return BulkStep(0, 0, after, [])
            # Tasks with dependencies settle others when they end, or wait again when
            # retried: by the rules, as retries that take their unique_key back.
            applies = [(r[0], r[2], r[3]) for r in rows if _STATE_OF[r[1]] in states]
            linked = [i for i, _key, deps in applies if deps]
            keyed = [i for i, key, deps in applies if key is not None and not deps]
            keyed = keyed if action == "retry" else []
            apart = set(linked) | set(keyed)
            ids = [i for i, _key, _deps in applies if i not in apart]
            times = () if action == "delete" else (now,)
            await conn.execute(self._sql[f"bulk_{action}"], (*times, ids))
            step = BulkStep(len(rows), len(ids), rows[-1][0], [])
            if apart:
                full = await conn.execute(
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY(%s) ORDER BY id",
                    (sorted(apart),),
                )
                if action == "delete":
                    deleted = [task_from_row(row, queue) for row in await full.fetchall()]
                    also: list[Change] = []
                    await self._delete(conn, deleted, now, also)
                    gone = {task.id for task in deleted} | set(ids)
                    settled = [change for change in also if change.task.id not in gone]
                    await self._notify_ready(conn, (change.task for change in settled))
                    step = step._replace(changed=step.changed + len(deleted))
                else:
                    more = await self._bulk_by_rules(
                        conn, queue_id, queue, action, await full.fetchall(), now, after
                    )
                    step = step._replace(changed=step.changed + more.changed, changes=more.changes)
            if action == "retry" and ids:
                await self._notify(conn, _ready_payload(queue, len(ids)))
        self.report(settled)
        return step

    async def _delete(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        tasks: Sequence[Task],
        now: int,
        also: list[Change],
    ) -> None:
        """Remove tasks: those that waited for them are cancelled (``also``)."""
        for task in tasks:
            await self._settle(conn, self._sql, task, None, now, also)
        ids = [task.id for task in tasks]
        await conn.execute(f"DELETE FROM {self._schema}.tasks WHERE id = ANY(%s)", (ids,))
        await self._forget(conn, self._sql, [task.id for task in tasks if task.parents])

    async def _bulk_by_rules(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        queue: str,
        action: str,
        rows: list[tuple[Any, ...]],
        now: int,
        after: int,
    ) -> BulkStep:
        """A step of a retry or a cancel, task by task, as rules.bulk_change says."""
        if not rows:
            return BulkStep(0, 0, after, [])
        changes: list[Change] = []
        also: list[Change] = []  # the tasks that waited for those cancelled
        for row in rows:
            task = task_from_row(row, queue)
            if also:  # a cascade of this step may have changed it
                found = await (await conn.execute(self._sql["task"], (task.id,))).fetchone()
                assert found is not None
                task = task_from_row(found, queue)
            waits = await self._still_waits(conn, self._sql, task)
            new = rules.bulk_change(task, action, now, waits)
            if new is None:
                continue
            try:
                async with conn.transaction():  # a savepoint: a refused retry undoes itself
                    change = await self._change(conn, queue_id, task, new, now, also)
            except Conflict:
                continue  # a retry whose unique_key another task holds now
            if change is not None:
                changes.append(change)
        await self._notify_ready(conn, (change.task for change in [*changes, *also]))
        return BulkStep(len(rows), len(changes), rows[-1][0], changes + also)

    async def prune(self, queue: str, state: State, before: int, now: int, limit: int) -> int:
        queue_id = await self._queue_id(queue)
        async with self._transaction() as conn:
            cursor = await conn.execute(
                self._sql["prune"], (queue_id, int(state), before, now, limit)
            )
            rows = await cursor.fetchall()
            await self._forget(conn, self._sql, [task_id for task_id, parents in rows if parents])
            return len(rows)

    async def heads(self) -> dict[str, int]:
        s = self._schema
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(
                    f"SELECT q.name, (SELECT updated_at FROM {s}.tasks WHERE queue_id = q.id"
                    f" AND state = 1 ORDER BY priority DESC, id LIMIT 1) FROM {s}.queues AS q"
                )
            ).fetchall()
        return {name: at for name, at in rows if at is not None}

    async def running_by_worker(self) -> dict[tuple[str, str | None], int]:
        s = self._schema
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(
                    f"SELECT q.name, t.worker, count(*) FROM {s}.tasks AS t JOIN {s}.queues AS q"
                    " ON q.id = t.queue_id WHERE t.state = 3 GROUP BY q.name, t.worker"
                )
            ).fetchall()
        return {(name, worker): count for name, worker, count in rows}

    async def counts(self) -> dict[str, dict[State, int]]:
        async with self._transaction(writes=False) as conn:
            names = dict(
                await (await conn.execute(f"SELECT id, name FROM {self._schema}.queues")).fetchall()
            )
            rows = await (
                await conn.execute(
                    f"SELECT queue_id, state, count(*) FROM {self._schema}.tasks"
                    " GROUP BY queue_id, state"
                )
            ).fetchall()
        result: dict[str, dict[State, int]] = {name: {} for name in names.values()}
        for queue_id, state, count in rows:
            if queue_id in names:
                result[names[queue_id]][_STATE_OF[state]] = count
        return result

    async def set_status(self, queue: str, task_id: int, status: str, now: int) -> Change | None:
        queue_id = await self._queue_id(queue)
        async with self._transaction() as conn:
            row = await (await conn.execute(self._sql["lock"], (task_id,))).fetchone()
            if row is None or row[1] != queue_id:
                raise TaskNotFound.named(task_id, queue)
            task = task_from_row(row, queue)
            waits = await self._still_waits(conn, self._sql, task)
            also: list[Change] = []
            change = await self._change(
                conn, queue_id, task, rules.change_status(task, status, now, waits), now, also
            )
            if change is not None:
                await self._notify_ready(conn, [change.task, *(c.task for c in also)])
                (viewed,) = await self._views(conn, self._sql, [change.task])
                change = change._replace(task=viewed)
        self.report(also)
        return change

    async def _change(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        task: Task,
        new: Task | None,
        now: int,
        also: list[Change],
    ) -> Change | None:
        """Write an operator's change to a task (a PATCH's, a bulk action's)."""
        if rules.retakes_key(task, new, now):
            # As an enqueue of the key would: its lock, then a look for another holder.
            key = task.unique_key
            lock_name = f"katar:{self._schema}:unique:{queue_id}:{key}"
            await conn.execute(self._sql["lock_keys"], ([lock_name],))
            cursor = await conn.execute(self._sql["holders"], (queue_id, [key], now))
            for found in await cursor.fetchall():
                holder = task_from_row(found, task.queue)
                if holder.id != task.id:
                    raise rules.key_taken(task, holder)
        # A status change never finishes a task: the history option plays no part.
        change = await self._write(conn, task, new, _KEEP, also)
        if change is not None and queue_id in self._fair and change.task.state in UNFINISHED:
            # A retry of a task finished before the queue became fair: it needs a place.
            (place,) = await self._fair_places(conn, queue_id, [change.task])
            await conn.execute(
                f"UPDATE {self._schema}.tasks SET fair_seq = %s WHERE id = %s AND fair_seq IS NULL",
                (place, task.id),
            )
        return change

    async def delete_task(self, queue: str, task_id: int, now: int | None = None) -> bool:
        queue_id = await self._queue_id(queue)
        also: list[Change] = []
        async with self._transaction() as conn:
            row = await (await conn.execute(self._sql["lock"], (task_id,))).fetchone()
            if row is None or row[1] != queue_id:
                return False
            when = now_ms() if now is None else now
            await self._delete(conn, [task_from_row(row, queue)], when, also)
            await self._notify_ready(conn, (change.task for change in also))
        self.report(also)
        return True

    async def expire(self, queues: Mapping[str, QueueOptions], now: int) -> list[Change]:
        s = self._schema
        changes: list[Change] = []
        async with self._transaction() as conn:
            # SKIP LOCKED: each expired delivery is handled by exactly one server.
            for sql, lease in (
                (
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE state = 3 AND lease_until <= %s"
                    " ORDER BY lease_until LIMIT %s FOR UPDATE SKIP LOCKED",
                    True,
                ),
                (
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE {_EXPIRY} AND expires_at <= %s"
                    " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
                    None,
                ),
                (
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE state = 2 AND run_at <= %s"
                    " ORDER BY run_at LIMIT %s FOR UPDATE SKIP LOCKED",
                    False,
                ),
            ):
                rows = await (await conn.execute(sql, (now, _EXPIRE_BATCH))).fetchall()
                for task in await self._tasks(conn, rows):
                    options = queues.get(task.queue)
                    if options is None:
                        continue
                    new = (
                        rules.expire(task, now)
                        if lease is None
                        else rules.expire_lease(task, options, now)
                        if lease
                        else rules.promote(task, now)
                    )
                    change = await self._write(conn, task, new, options, changes)
                    if change is not None:
                        changes.append(change)
            # Finished tasks kept only while they held their unique_key (rules.discard):
            # removed at the first reap after that.
            # Only queues without history keep tasks so.
            dropping = [
                queue_id
                for name, options in queues.items()
                if not options.persistent and (queue_id := self._queue_ids.get(name)) is not None
            ]
            rows = []
            if dropping:
                cursor = await conn.execute(
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE unique_until IS NOT NULL"
                    " AND state BETWEEN 4 AND 5 AND queue_id = ANY(%s) AND unique_until <= %s"
                    " LIMIT %s FOR UPDATE SKIP LOCKED",
                    (dropping, now, _EXPIRE_BATCH),
                )
                rows = await cursor.fetchall()
            for task in await self._tasks(conn, rows):
                options = queues.get(task.queue)
                if options is not None and rules.sweepable(task, options, now):
                    await conn.execute(self._sql["delete"], (task.id,))
                    await self._forget(conn, self._sql, [task.id] if task.parents else [])
            await self._notify_ready(conn, (change.task for change in changes))
        return changes

    async def next_deadline(self) -> int | None:
        s = self._schema
        # LEAST ignores NULLs; each min() is one step down the partial index it names.
        async with self._transaction() as conn:
            row = await (
                await conn.execute(
                    f"SELECT LEAST((SELECT min(lease_until) FROM {s}.tasks WHERE state = 3),"
                    f" (SELECT min(run_at) FROM {s}.tasks WHERE state = 2),"
                    f" (SELECT min(expires_at) FROM {s}.tasks WHERE {_EXPIRY}))"
                )
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- schedules ---------------------------------------------------------------------------

    async def load_schedules(self) -> dict[str, Schedule]:
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(
                    f"SELECT name, spec, cursor, last_tick, last_task FROM {self._schema}.schedules"
                )
            ).fetchall()
        return {row[0]: _schedule(row) for row in rows}

    async def save_schedule(self, name: str, spec: ScheduleSpec, cursor: int | None) -> Schedule:
        async with self._transaction() as conn:
            row = await (
                await conn.execute(
                    f"INSERT INTO {self._schema}.schedules (name, spec, cursor)"
                    " VALUES (%s, %s, coalesce(%s, 0)) ON CONFLICT (name)"
                    " DO UPDATE SET spec = excluded.spec,"
                    f" cursor = GREATEST(%s, {self._schema}.schedules.cursor)"
                    " RETURNING name, spec, cursor, last_tick, last_task",
                    (name, msgspec.json.encode(spec), cursor, cursor),
                )
            ).fetchone()
            await self._notify(conn, "s:")
        assert row is not None
        return _schedule(row)

    async def delete_schedule(self, name: str) -> bool:
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"DELETE FROM {self._schema}.schedules WHERE name = %s", (name,)
            )
            await self._notify(conn, "s:")
            return bool(cursor.rowcount)

    async def fire_schedule(
        self, name: str, cursor: int, tick: int, task: NewTask | None, now: int
    ) -> Fired:
        s = self._schema
        async with self._transaction() as conn:
            # The compare-and-set: of servers firing one tick at once, the first locks the
            # row; the others wait for its commit, then find the cursor moved and match none.
            row = await (
                await conn.execute(
                    f"UPDATE {s}.schedules SET cursor = %s, last_tick = %s"
                    " WHERE name = %s AND cursor = %s RETURNING spec, last_task",
                    (tick, tick, name, cursor),
                )
            ).fetchone()
            if row is None:
                return Fired(False)
            spec, last_task = _spec_decoder.decode(row[0]), row[1]
            if task is None:
                return Fired(True)
            if spec.overlap == "skip" and last_task is not None:
                found = await (
                    await conn.execute(f"SELECT state FROM {s}.tasks WHERE id = %s", (last_task,))
                ).fetchone()
                if found is not None and State(found[0]) in UNFINISHED:
                    return Fired(True)
            queue_id = await self._queue_id(spec.queue)
            (created,) = await self._insert(conn, queue_id, spec.queue, [task], now)
            await conn.execute(
                f"UPDATE {s}.tasks SET schedule = %s, scheduled_for = %s WHERE id = %s",
                (name, tick, created.id),
            )
            await conn.execute(
                f"UPDATE {s}.schedules SET last_task = %s WHERE name = %s", (created.id, name)
            )
        return Fired(True, msgspec.structs.replace(created, schedule=name, scheduled_for=tick))


def _schedule(row: Sequence[Any]) -> Schedule:
    name, spec, cursor, last_tick, last_task = row
    return stored_schedule(name, spec, cursor, last_tick, last_task)


_KEEP: Final = QueueOptions(persistent=True)
_DIALECT: Final = Dialect(
    param="%s", ids="id = ANY(%s)", ids_value=list, contains="strpos(error, %s) > 0"
)
# Tasks never delivered that expire (rules.expiry), by the partial index tasks_expiry.
_EXPIRY: Final = "expires_at IS NOT NULL AND attempts = 0 AND state < 3"


#: Seconds to open a connection, unless the URL's ``connect_timeout`` says otherwise.
CONNECT_TIMEOUT: Final = 3
#: Seconds a transaction may take, unless the URL's ``query_timeout`` says otherwise.
QUERY_TIMEOUT: Final = 10.0
#: Seconds /healthz waits for PostgreSQL, unless the URL's ``health_timeout`` says otherwise.
HEALTH_TIMEOUT: Final = 2.0
#: Seconds after query_timeout before a transaction's connection is cut: PostgreSQL cancels
#: a slow statement itself first, when it answers at all.
WATCHDOG_GRACE: Final = 1.0
#: Seconds between attempts to reach PostgreSQL while it is known to be down.
PROBE_INTERVAL: Final = 0.25
#: Seconds between two checks that the queue options loaded are those stored.
OPTIONS_CHECK: Final = 2.0
#: Seconds the notifications' connection may stay lost before the log says so.
LISTEN_LOST_SAID: Final = 10.0
#: The fewest seconds between two warnings of a notification that Katar did not send.
MALFORMED_EVERY: Final = 60.0


class _Transaction:
    """``async with``: a pooled connection inside a transaction; driver errors become
    Katar's (StoreUnavailable when the database cannot be reached, OutcomeUnknown when the
    connection is lost while a transaction that writes commits). ``alone``: no transaction
    block, for one statement that PostgreSQL commits as it ends (the pool's connections
    are in autocommit); a connection lost during that statement is OutcomeUnknown when it
    writes, as it may have been committed.

    ``limit`` (seconds, 0: none) bounds the wait for a connection, and the transaction from
    then to its end: past it, a watchdog cuts the connection (PostgreSQL stopped, or cut off
    by the network, answers nothing; a statement would wait for ever), the statement
    waiting on it fails at once as on a lost connection, and the store fails fast until a
    probe reaches PostgreSQL again."""

    def __init__(
        self, store: PostgresStore, writes: bool, alone: bool = False, limit: float = 0
    ) -> None:
        self.store = store
        self._writes = writes
        self._alone = alone
        self._limit = limit
        self._watchdog: asyncio.TimerHandle | None = None
        self._cut = False
        self._connection: Any = None
        self._conn: Any = None
        self._transaction: Any = None

    async def __aenter__(self) -> AsyncConnection[tuple[Any, ...]]:
        import psycopg

        store = self.store
        if store._pool is None:
            raise StoreUnavailable("the PostgreSQL store is not open")
        if store._probe is not None:
            raise StoreUnavailable("PostgreSQL is unavailable (reconnecting)")
        try:
            self._connection = store._pool.connection(timeout=self._limit or None)
            self._conn = conn = await self._connection.__aenter__()
            if self._limit:
                loop = asyncio.get_running_loop()
                self._watchdog = loop.call_later(self._limit, self._cut_off)
            if not self._alone:
                self._transaction = conn.transaction()
                await self._transaction.__aenter__()
        except (psycopg.Error, OSError) as exc:
            self._stop_watchdog()
            raise self._lost(_translate(exc, store._raw_url)) from exc
        except Exception as exc:
            self._stop_watchdog()
            # The pool's own time-out: every connection busy (load), or none could be made.
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
        return conn  # type: ignore[no-any-return]

    def _cut_off(self) -> None:
        """The transaction outlived its limit: shut its connection's socket down. The
        statement waiting for an answer reads the end of the connection at once (closing
        the descriptor instead would leave it waiting on a file the loop no longer
        watches)."""
        self._watchdog = None
        self._cut = True
        with contextlib.suppress(OSError, ValueError):
            fd = os.dup(self._conn.pgconn.socket)
            with socket.socket(fileno=fd) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _said(self, error: BaseException) -> str:
        """What the driver's ``error`` means, for the message."""
        if self._cut:
            return f"PostgreSQL did not answer within {self._limit:g}s"
        return mask_credentials(f"PostgreSQL is unavailable: {error}", self.store._raw_url)

    def _lost(self, error: StoreError) -> StoreError:
        """``error``, after noting an outage when the connection is gone (a deadlock or a
        cancelled statement leaves it usable: no outage)."""
        self._stop_watchdog()
        if self._cut and type(error) is StoreUnavailable:
            error = StoreUnavailable(self._said(error))
        if isinstance(error, StoreUnavailable) and (self._conn is None or self._conn.broken):
            self.store._down()
        return error

    def _unknown(self, error: BaseException) -> StoreError:
        """OutcomeUnknown for ``error``, lost while a write committed, the URL's secrets
        masked in its cause."""
        cause = self._said(error) if self._cut else f"PostgreSQL: {error}"
        return self._lost(OutcomeUnknown(cause=mask_credentials(cause, self.store._raw_url)))

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            await self._exit(kind, exc, tb)
        finally:
            self._stop_watchdog()

    async def _exit(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        import psycopg

        if self._alone:
            await self._connection.__aexit__(kind, exc, tb)
            if not isinstance(exc, psycopg.Error):
                return
            if self._writes and self._conn.broken:
                raise self._unknown(exc) from exc
            raise self._lost(_translate(exc, self.store._raw_url)) from exc
        if exc is None and self._conn.broken:
            # Lost since the last statement: COMMIT cannot be sent (psycopg does not even
            # try, nor say so), and PostgreSQL rolls the transaction back. Nothing happened.
            error = psycopg.OperationalError("the connection was lost before COMMIT")
            await self._connection.__aexit__(type(error), error, None)
            raise self._lost(_translate(error, self.store._raw_url))
        try:
            await self._transaction.__aexit__(kind, exc, tb)
        except psycopg.Error as error:
            await self._connection.__aexit__(type(error), error, None)
            if exc is None and self._writes and isinstance(error, psycopg.OperationalError):
                # Lost during or after COMMIT: PostgreSQL may have committed or not.
                raise self._unknown(error) from error
            raise self._lost(_translate(error, self.store._raw_url)) from error
        await self._connection.__aexit__(kind, exc, tb)
        if isinstance(exc, psycopg.Error):
            raise self._lost(_translate(exc, self.store._raw_url)) from exc
