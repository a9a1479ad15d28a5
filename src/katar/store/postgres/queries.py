"""The PostgreSQL store's statements in a schema, one attribute each: a statement named
wrong fails the type check, not a request at run time. Their text is prepared by the driver
and tuned against the planner (see the comments): change it only with a measure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from katar.protocol import HISTORY_LENGTH
from katar.store._rows import CHILDREN, COLUMNS, PARENTS, move_sql
from katar.store._sql import (
    CANCELLED,
    DONE,
    ENDED,
    FAILED,
    HOLDS_DEBOUNCE,
    NOT_STARTED,
    READY,
    RUNNING,
    SCHEDULED,
    UNDERWAY,
    WAITING,
    holds_key,
    not_expired,
)

# A "done" for the current delivery (rules.apply_ack): its attempt if named, no cancel
# requested (the rules end such a delivery cancelled), and the worker's own (rules.owns).
# The edges of the tasks with dependencies are settled after it, all at once (Done.edges).
# "t.state + 0": so that the planner cannot read the tasks by the index of leases (whose
# condition is "state = 3"): with statistics taken before a drain it judged that index,
# which holds every task in progress, cheaper than the primary key, and its generic plan
# then read every leased task at each poll.
_DONE_MATCH: Final = (
    f"t.queue_id = %s AND t.state + 0 = {RUNNING}"
    " AND t.attempts = coalesce(nullif(v.attempt, 0), t.attempts) AND NOT t.cancel_requested"
    " AND (v.worker IS NULL OR t.worker IS NULL OR t.worker = v.worker)"
)
_NOT_EXPIRED: Final = not_expired("%s")
# A task in progress, read by its id: "+ 0" again, so that the primary key finds it.
_RUNNING: Final = f"state + 0 = {RUNNING}"
T_COLUMNS: Final = ", ".join(f"t.{column.strip()}" for column in COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class Queries:
    """The statements of the store, of its dependencies and of its group commit."""

    task: str
    tasks: str
    lock: str
    lock_running: str
    lock_many: str
    update: str
    delete: str
    insert: str
    insert_notify: str
    insert_full: str
    debouncing: str
    debounce: str
    undebounce: str
    lock_keys: str
    holders: str
    issued: str
    lock_queue: str
    running: str
    running_of_keys: str
    keys_at_limit: str
    candidates: str
    candidates_fair: str
    candidates_unplaced: str
    candidates_rated: str
    candidates_fair_rated: str
    candidates_unplaced_rated: str
    fair_front: str
    fair_lasts: str
    fair_last: str
    insert_fair: str
    place_waiting: str
    take: str
    take_rated: str
    prune_key_buckets: str
    bulk_delete: str
    bulk_cancel: str
    bulk_retry: str
    prune: str
    save_bucket: str
    key_buckets_empty: str
    key_buckets_kept: str
    next_ids: str
    options_digest: str
    parents: str
    edges_insert: str
    has_children: str
    edges: str
    lock_children: str
    parents_done: str
    parent_ended: str
    release: str
    orphans: str
    cancel: str
    still_waits: str
    forget: str
    queue_of: str
    linked_children: str
    linked_children_in: str
    linked_parents: str
    linked_parents_in: str
    done_keep: str
    done_drop: str
    claim: str
    done_keep_ids: str
    done_drop_ids: str
    move: str
    move_full: str
    create_queue: str
    queue_id: str


def _move(s: str, full: bool) -> str:
    """A task moved to another queue (a dead letter, a redrive), named: the queue's row is
    locked (FOR SHARE) so that no server deletes it meanwhile; no row moves when there is no
    such queue (the store creates it, and moves again). It returns nothing (its row count
    says whether it moved): a result's columns cost the driver their loaders, each time."""
    update = move_sql(f"{s}.tasks", "%s", full, queue_id="q.id")
    update = update.replace(" WHERE ", " FROM q WHERE ", 1)
    return f"WITH q AS (SELECT id FROM {s}.queues WHERE name = %s FOR SHARE) {update}"


def _rated(candidates: str, s: str) -> str:
    """A claim's candidates with, on each, its key's key_rate bucket (its full_at), if
    kept: read by the primary key of key_buckets, for the rows the claim returns."""
    bucket = (
        f"(SELECT b.full_at FROM {s}.key_buckets AS b"
        f" WHERE b.queue_id = {s}.tasks.queue_id AND b.key = {s}.tasks.key)"
    )
    return candidates.replace("SELECT id, key FROM", f"SELECT id, key, {bucket} FROM", 1)


def queries(s: str) -> Queries:
    """Every statement, in schema ``s``."""
    # The queue and the time are the same for every task: one value each, not arrays of
    # equal values (docs/benchmarks.md, the enqueue of 1,000 on PostgreSQL).
    insert = (
        f"INSERT INTO {s}.tasks (queue_id, created_at, updated_at, state, priority, data,"
        f" run_at, key) SELECT %s::int, %s::bigint, %s::bigint, * FROM unnest(%s::smallint[],"
        f" %s::int[], %s::bytea[], %s::bigint[], %s::text[]) RETURNING id"
    )
    # The page's ids first, as an array: the tasks are then read by their primary key,
    # whatever the planner makes of the table's size. A task's queue is looked up per
    # edge (a subquery, not a join the planner could turn into a scan of the tasks).
    linked = (
        f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY(ARRAY(SELECT d.{{other}} FROM"
        f" {s}.deps AS d WHERE d.{{this}} = %s AND d.{{other}} > %s AND (SELECT c.queue_id"
        f" FROM {s}.tasks AS c WHERE c.id = d.{{other}}){{queues}} ORDER BY d.{{other}}"
        " LIMIT %s)) ORDER BY id"
    )
    # Each passes over the tasks whose expiry has come (rules.expired), and the keys
    # at their limit by a hashed subplan (NOT IN): "<> ALL(array)" compares each row
    # with every key, as slow as rows times keys.
    candidates = (
        f"SELECT id, key FROM {s}.tasks WHERE queue_id = %s AND state = {READY} AND"
        f" {_NOT_EXPIRED} AND"
        " (key IS NULL OR key NOT IN (SELECT unnest(%s::text[])))"
        " ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED"
    )
    candidates_fair = (
        f"SELECT id, key FROM {s}.tasks WHERE queue_id = %s AND state = {READY} AND"
        f" {_NOT_EXPIRED} AND"
        " fair_seq IS NOT NULL AND (key IS NULL OR key NOT IN (SELECT unnest(%s::text[])))"
        " ORDER BY priority DESC, fair_seq, id LIMIT %s FOR UPDATE SKIP LOCKED"
    )
    # Tasks without a place (enqueued as the queue was made fair) come after.
    candidates_unplaced = (
        f"SELECT id, key FROM {s}.tasks WHERE queue_id = %s AND state = {READY} AND"
        f" {_NOT_EXPIRED} AND"
        " fair_seq IS NULL AND (key IS NULL OR key NOT IN (SELECT unnest(%s::text[])))"
        " ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED"
    )
    # A limited claim's candidates (rules.pick_by_key) leased, each to its poll's worker.
    # The tasks are read by the primary key ("id = ANY(ARRAY(...))", as the "done"s): joined
    # to the pairs alone, the planner hashed a scan of the whole table (20 ms at 20,000).
    pairs = "w AS (SELECT * FROM unnest(%s::bigint[], %s::text[]) AS w(id, worker))"
    lease = (
        f"UPDATE {s}.tasks AS t SET state = {RUNNING}, attempts = t.attempts + 1,"
        " worker = w.worker, lease_until = %s + coalesce(t.timeout, %s), run_at = NULL,"
        " progress = NULL, updated_at = %s, started_at = %s FROM w"
        f" WHERE t.id = ANY(ARRAY(SELECT id FROM w)) AND t.id = w.id RETURNING {T_COLUMNS}"
    )
    anywhere = " IS NOT NULL"
    within = f" = ANY(ARRAY(SELECT id FROM {s}.queues WHERE name = ANY(%s)))"
    # Workers' "done"s (rules.apply_ack, in SQL), many at once: the rows are locked in id
    # order first, so that two transactions cannot deadlock.
    # The tasks are found by "id = ANY(ARRAY(SELECT ...))": an array the planner cannot
    # see into, which it takes for a few ids, so that it reads them by the primary key.
    # Given the array itself it may scan the table instead, as it did on a table not
    # yet analyzed (140 ms a poll at 20,000 tasks, against 2).
    done_keep = (
        "WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::int[], %s::bytea[], %s::text[])"
        f" AS v(id, attempt, result, worker)), locked AS (SELECT id FROM {s}.tasks WHERE"
        " id = ANY(ARRAY(SELECT id FROM v)) ORDER BY id FOR UPDATE)"
        f" UPDATE {s}.tasks AS t SET state = {DONE}, result = v.result, error = NULL,"
        " lease_until = NULL, updated_at = %s FROM v WHERE t.id = ANY(ARRAY(SELECT id FROM"
        f" locked)) AND t.id = v.id AND {_DONE_MATCH} RETURNING {T_COLUMNS}"
    )
    done_drop = (
        "WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::int[], %s::text[])"
        f" AS v(id, attempt, worker)), locked AS (SELECT id FROM {s}.tasks WHERE"
        " id = ANY(ARRAY(SELECT id FROM v)) ORDER BY id FOR UPDATE) DELETE FROM"
        f" {s}.tasks AS t USING v WHERE t.id = ANY(ARRAY(SELECT id FROM locked))"
        f" AND t.id = v.id AND {_DONE_MATCH} AND t.unique_until IS NULL"
        f" RETURNING {T_COLUMNS}"
    )
    return Queries(
        # A task moved to another queue (a dead letter, a redrive), named: the queue's row
        # is locked (FOR SHARE) so that no server deletes it meanwhile; no row moved when
        # there is no such queue (the store creates it, and moves again).
        move=_move(s, full=False),
        move_full=_move(s, full=True),
        create_queue=(
            f"INSERT INTO {s}.queues (name, options) VALUES (%s, %s)"
            " ON CONFLICT (name) DO NOTHING RETURNING id"
        ),
        queue_id=f"SELECT id FROM {s}.queues WHERE name = %s",
        task=f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = %s",
        tasks=f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY(%s)",
        lock=f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = %s FOR UPDATE",
        # An ack changes a task in progress only (rules.apply_ack): the acks lock those, and
        # read any other without a lock, which would make a concurrent claim (SKIP LOCKED)
        # pass over a queued task that the ack leaves as it is.
        lock_running=f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = %s AND {_RUNNING} FOR UPDATE",
        lock_many=(
            f"SELECT 1 FROM {s}.tasks WHERE id = ANY(%s) AND {_RUNNING} ORDER BY id FOR UPDATE"
        ),
        update=(
            f"UPDATE {s}.tasks SET state=%s, priority=%s, attempts=%s, attempt_base=%s,"
            " error=%s, result=%s, worker=%s, updated_at=%s, run_at=%s, lease_until=%s,"
            " cancel_requested=%s, progress=%s, expires_at=%s, started_at=%s, history=%s"
            " WHERE id=%s"
        ),
        delete=f"DELETE FROM {s}.tasks WHERE id = %s",
        insert=insert,
        # The same with the notification that wakes the long polls of every server, in
        # one statement (_insert_alone): the one-time filter calls pg_notify once.
        insert_notify=(
            f"WITH ins AS ({insert}) SELECT id FROM ins WHERE (SELECT true FROM pg_notify(%s, %s))"
        ),
        # With the per-task options and unique keys (see _insert_special).
        insert_full=(
            f"INSERT INTO {s}.tasks (queue_id, created_at, updated_at, state, priority,"
            f" data, run_at, key, fair_seq, timeout, max_attempts, expires_at, unique_key,"
            f" unique_until, parents, id, error, debounce_key, attributes, trace) SELECT"
            f" %s::int, %s::bigint, %s::bigint, * FROM unnest(%s::smallint[], %s::int[],"
            f" %s::bytea[], %s::bigint[], %s::text[], %s::bigint[], %s::int[], %s::int[],"
            f" %s::bigint[], %s::text[], %s::bigint[], %s::int[], %s::bigint[], %s::text[],"
            f" %s::text[], %s::bytea[], %s::bytea[]) RETURNING id"
        ),
        # The tasks that hold debounce keys (rules.holds_debounce), by the unique index
        # tasks_debounce, locked: a claim (SKIP LOCKED) passes over them until the enqueue
        # that debounces them commits; one a claim holds is read again once it commits, and
        # no longer holds its key.
        debouncing=(
            f"SELECT {COLUMNS} FROM {s}.tasks WHERE queue_id = %s AND debounce_key = ANY(%s)"
            f" AND debounce_key IS NOT NULL AND {HOLDS_DEBOUNCE} ORDER BY id FOR UPDATE"
        ),
        # A task debounced (rules.debounce); a fair queue's keeps its place.
        debounce=(
            f"UPDATE {s}.tasks AS t SET state = v.state, priority = v.priority, data = v.data,"
            " run_at = v.run_at, key = v.key, timeout = v.timeout, max_attempts = v.max_attempts,"
            " expires_at = v.expires_at, updated_at = %s"
            " FROM unnest(%s::bigint[], %s::smallint[], %s::int[], %s::bytea[], %s::bigint[],"
            " %s::text[], %s::int[], %s::int[], %s::bigint[])"
            " AS v(id, state, priority, data, run_at, key, timeout, max_attempts, expires_at)"
            " WHERE t.id = v.id"
        ),
        # An operator's retry takes a task out of its debounce (rules.change_status).
        undebounce=f"UPDATE {s}.tasks SET debounce_key = NULL WHERE id = %s",
        # One transaction at a time per (queue, unique_key), in one order: no deadlock.
        lock_keys=(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended(k, 0) AS h"
            " FROM unnest(%s::text[]) AS k ORDER BY 1) AS keys"
        ),
        # The tasks that hold unique_keys (rules.holds_key), by the index tasks_unique.
        holders=(
            f"SELECT DISTINCT ON (unique_key) {COLUMNS} FROM {s}.tasks WHERE queue_id = %s"
            " AND unique_key = ANY(%s) AND unique_key IS NOT NULL"
            f" AND {holds_key('%s')} ORDER BY unique_key, id"
        ),
        issued=f"SELECT last_value, is_called FROM {s}.tasks_id_seq",
        # A limited queue's claim (QueueOptions.limited). The queue's row is locked
        # first: the claims of that queue, on every server, count one after another, so
        # that a concurrency limit is never exceeded, not even for a moment.
        # With the queue's key_epoch: who wrote its key_rate buckets last (_KeyCache).
        lock_queue=(
            f"SELECT bucket_tokens, bucket_at, key_epoch FROM {s}.queues WHERE id = %s FOR UPDATE"
        ),
        running=f"SELECT count(*) FROM {s}.tasks WHERE queue_id = %s AND state = {RUNNING}",
        # The tasks in progress of the keys a claim meets (never every key in progress,
        # whose number has no bound), and the keys at their limit (GET /v1/queues); both
        # over tasks_running_key.
        running_of_keys=(
            f"SELECT key, count(*) FROM {s}.tasks WHERE queue_id = %s AND state = {RUNNING}"
            " AND key IS NOT NULL AND key = ANY(%s::text[]) GROUP BY key"
        ),
        keys_at_limit=(
            f"SELECT count(*) FROM (SELECT 1 FROM {s}.tasks WHERE queue_id = %s AND"
            f" state = {RUNNING} AND key IS NOT NULL GROUP BY key HAVING count(*) >= %s) AS k"
        ),
        candidates=candidates,
        candidates_fair=candidates_fair,
        candidates_unplaced=candidates_unplaced,
        # key_rate's: each with its key's bucket, if kept (rules.KeyRates), read under the
        # queue's lock by the primary key of key_buckets.
        candidates_rated=_rated(candidates, s),
        candidates_fair_rated=_rated(candidates_fair, s),
        candidates_unplaced_rated=_rated(candidates_unplaced, s),
        fair_front=(
            f"SELECT fair_seq FROM {s}.tasks WHERE queue_id = %s AND state = {READY} AND"
            " fair_seq IS NOT NULL ORDER BY priority DESC, fair_seq, id LIMIT 1"
        ),
        fair_lasts=(
            f"SELECT k, (SELECT max(fair_seq) FROM {s}.tasks WHERE queue_id = %s AND"
            f" key = k AND fair_seq IS NOT NULL AND {UNDERWAY})"
            " FROM unnest(%s::text[]) AS k"
        ),
        fair_last=(
            f"SELECT max(fair_seq) FROM {s}.tasks WHERE queue_id = %s AND"
            f" key IS NOT DISTINCT FROM %s AND fair_seq IS NOT NULL AND {UNDERWAY}"
        ),
        insert_fair=(
            f"INSERT INTO {s}.tasks (queue_id, created_at, updated_at, state, priority,"
            f" data, run_at, key, fair_seq) SELECT %s::int, %s::bigint, %s::bigint, * FROM"
            f" unnest(%s::smallint[], %s::int[], %s::bytea[], %s::bigint[], %s::text[],"
            f" %s::bigint[]) RETURNING id"
        ),
        place_waiting=(
            f"UPDATE {s}.tasks AS t SET fair_seq = r.place FROM (SELECT id, row_number()"
            " OVER (PARTITION BY key ORDER BY priority DESC, id) - 1 AS place FROM"
            f" {s}.tasks WHERE queue_id = %s AND ({UNDERWAY} OR state = {WAITING})"
            " AND fair_seq IS NULL)"
            " AS r WHERE t.id = r.id"
        ),
        take=f"WITH {pairs} {lease}",
        # The same, with key_rate's buckets (rules.KeyRates) under the queue's lock: those
        # the claim spent written, in the same statement. A key taken again finds its row
        # kept (prune_key_buckets drops only rows full for a while) and updates it in place:
        # full_at is in no index, so that the update is HOT (migration 21).
        # The queue's key_epoch set to the claim's own (_KeyCache): the row is locked already.
        take_rated=(
            f"WITH {pairs}, took AS ({lease}),"
            f" saved AS (INSERT INTO {s}.key_buckets (queue_id, key, full_at)"
            " SELECT %s, * FROM unnest(%s::text[], %s::float8[])"
            " ON CONFLICT (queue_id, key) DO UPDATE SET full_at = excluded.full_at),"
            f" epoch AS (UPDATE {s}.queues SET key_epoch = %s WHERE id = %s)"
            " SELECT * FROM took"
        ),
        # The buckets of a queue not full at %s: all that its rows say (_KeyCache), up to %s.
        key_buckets_kept=(
            f"SELECT key, full_at FROM {s}.key_buckets WHERE queue_id = %s AND full_at > %s"
            " LIMIT %s"
        ),
        # A queue's key_rate buckets full since %s, up to %s of them
        # (PostgresStore._prune_key_buckets): a full bucket is no row. In a transaction of
        # its own, not under the queue's lock: SKIP LOCKED, so that it never waits for a
        # claim that writes a bucket (nor a claim, holding the queue's lock, for it and then
        # it for that claim); the outer condition is checked again on a row a claim wrote
        # meanwhile, which then stays.
        prune_key_buckets=(
            f"DELETE FROM {s}.key_buckets WHERE queue_id = %s AND full_at <= %s AND key ="
            f" ANY(ARRAY(SELECT key FROM {s}.key_buckets WHERE queue_id = %s AND full_at <= %s"
            " LIMIT %s FOR UPDATE SKIP LOCKED))"
        ),
        # A bulk action's step in SQL (Store.bulk): what rules.bulk_change does. A retry
        # moves the task's last delivery into its history (rules.archive: the old row's
        # attempts, worker, started_at, updated_at as its end, its outcome, its error).
        bulk_delete=f"DELETE FROM {s}.tasks WHERE id = ANY(%s)",
        bulk_cancel=f"UPDATE {s}.tasks SET state = {CANCELLED}, updated_at = %s WHERE id = ANY(%s)",
        bulk_retry=(
            f"UPDATE {s}.tasks AS t SET state = {READY}, run_at = NULL, expires_at = NULL,"
            f" attempt_base = t.attempts, error = CASE WHEN t.state = {CANCELLED} THEN NULL ELSE"
            " t.error END, cancel_requested = false, updated_at = %s, history = CASE WHEN"
            " t.started_at IS NULL THEN t.history ELSE convert_to((CASE WHEN"
            f" jsonb_array_length(x.h) >= {HISTORY_LENGTH} THEN x.h - 0 ELSE x.h END ||"
            " jsonb_build_array(jsonb_build_array(t.attempts, t.worker, t.started_at,"
            f" t.updated_at, CASE t.state WHEN {FAILED} THEN 'failed' ELSE 'cancelled' END,"
            " t.error)))::text, 'UTF8') END, started_at = NULL FROM (SELECT id,"
            " coalesce(convert_from(history, 'UTF8')::jsonb, '[]'::jsonb) AS h"
            f" FROM {s}.tasks WHERE id = ANY(%s)) AS x WHERE t.id = x.id"
        ),
        # Retention (rules.prune_before, holds_key: in SQL), the oldest first.
        prune=(
            f"DELETE FROM {s}.tasks WHERE id IN (SELECT id FROM {s}.tasks WHERE"
            " queue_id = %s AND state = %s AND updated_at <= %s AND (unique_until IS NULL"
            " OR unique_until <= %s) ORDER BY id LIMIT %s) RETURNING id, parents"
        ),
        save_bucket=(f"UPDATE {s}.queues SET bucket_tokens = %s, bucket_at = %s WHERE id = %s"),
        # The keys whose bucket holds no whole token at %s (GET /v1/queues): full_at later
        # than now + (limit - 1) x period / limit. A scan of the queue's kept buckets (no
        # index on full_at, for HOT updates): as many as its keys taken from within the last
        # period and a quarter (PostgresStore._prune_key_buckets).
        key_buckets_empty=(
            f"SELECT count(*) FROM {s}.key_buckets WHERE queue_id = %s AND full_at > %s"
        ),
        # Ids taken ahead for a batch whose tasks name one another ("$n" in after).
        next_ids=f"SELECT nextval('{s}.tasks_id_seq') FROM generate_series(1, %s)",
        # What _options_digest computes, in SQL: the periodic check (_check_options).
        options_digest=(
            "SELECT md5(coalesce(string_agg(convert_to(name, 'UTF8') || '\\x00'::bytea"
            f" || options, '\\x01'::bytea ORDER BY id), ''::bytea)) FROM {s}.queues"
        ),
        parents=(
            f"SELECT id, state, result, queue_id, children_count, error FROM {s}.tasks"
            " WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
        ),
        edges_insert=(
            f"INSERT INTO {s}.deps (child_id, parent_id, done, result, parent_queue, run)"
            " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::boolean[], %s::bytea[],"
            " %s::text[], %s::boolean[])"
        ),
        has_children=(
            f"UPDATE {s}.tasks AS t SET children = true, children_count = t.children_count"
            " + v.n FROM unnest(%s::bigint[], %s::int[]) AS v(id, n) WHERE t.id = v.id"
        ),
        edges=(
            f"SELECT child_id, parent_id, done, result, parent_queue FROM {s}.deps"
            " WHERE child_id = ANY(%s) ORDER BY child_id, parent_id"
        ),
        lock_children=(
            f"SELECT 1 FROM {s}.tasks WHERE id IN (SELECT child_id FROM {s}.deps WHERE"
            " parent_id = ANY(%s) AND NOT done) ORDER BY id FOR UPDATE"
        ),
        parents_done=(
            f"UPDATE {s}.deps AS d SET done = true, result = CASE WHEN d.run THEN v.outcome"
            " ELSE v.result END FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[])"
            " AS v(id, result, outcome) WHERE d.parent_id = v.id AND NOT d.done"
            " RETURNING d.child_id"
        ),
        # A parent failed, cancelled or deleted: the edges of the children that run whatever
        # the outcome take it (rules.outcome).
        parent_ended=(
            f"UPDATE {s}.deps SET done = true, result = %s WHERE parent_id = %s AND run"
            " AND NOT done RETURNING child_id"
        ),
        # rules.release, in SQL: ready, or scheduled while the delay runs.
        release=(
            f"UPDATE {s}.tasks AS t SET state = CASE WHEN run_at > %(now)s THEN {SCHEDULED}"
            f" ELSE {READY} END,"
            " run_at = CASE WHEN run_at > %(now)s THEN run_at END, updated_at = %(now)s"
            f" WHERE id = ANY(%(ids)s) AND state = {WAITING} AND NOT EXISTS (SELECT 1 FROM"
            f" {s}.deps AS d WHERE d.child_id = t.id AND NOT d.done) RETURNING {COLUMNS}"
        ),
        orphans=(
            f"SELECT {COLUMNS} FROM {s}.tasks WHERE id IN (SELECT child_id FROM {s}.deps"
            f" WHERE parent_id = %s AND NOT done) AND state IN {NOT_STARTED} ORDER BY id"
            " FOR UPDATE"
        ),
        cancel=(
            f"UPDATE {s}.tasks SET state = {CANCELLED}, run_at = NULL, error = %s, updated_at = %s"
            " WHERE id = ANY(%s)"
        ),
        still_waits=(
            f"SELECT 1 FROM {s}.deps AS d JOIN {s}.tasks AS p ON p.id = d.parent_id"
            f" WHERE d.child_id = %s AND NOT d.done AND p.state NOT IN {ENDED} LIMIT 1"
        ),
        forget=f"DELETE FROM {s}.deps WHERE child_id = ANY(%s)",
        # A page of a task's children (Store.linked), over the edges' index by parent
        # (deps_children, in child order: no sort, however many children), or of its
        # parents, over the primary key; "_in": of some queues only. The parents
        # removed are left out (their edges stay, with their results).
        queue_of=f"SELECT queue_id FROM {s}.tasks WHERE id = %s",
        linked_children=linked.format(queues=anywhere, **CHILDREN),
        linked_children_in=linked.format(queues=within, **CHILDREN),
        linked_parents=linked.format(queues=anywhere, **PARENTS),
        linked_parents_in=linked.format(queues=within, **PARENTS),
        # What the edges need, when nobody watches.
        done_keep=done_keep,
        done_keep_ids=done_keep.replace(
            f"RETURNING {T_COLUMNS}", "RETURNING t.id, t.parents, t.children"
        ),
        done_drop=done_drop,
        done_drop_ids=done_drop.replace(
            f"RETURNING {T_COLUMNS}", "RETURNING t.id, t.parents, t.children"
        ),
        # The claim: the first ready tasks in order, each leased to the worker of its slot
        # (the n-th task taken to the n-th name given). A task's own timeout makes its own
        # lease (rules.lease_ms); a task never delivered whose expiry has come
        # (rules.expired) is left for the reaper.
        claim=(
            f"WITH locked AS (SELECT id, priority FROM {s}.tasks WHERE queue_id = %s AND"
            f" state = {READY} AND {_NOT_EXPIRED}"
            " ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED), slots AS (SELECT id,"
            " row_number() OVER (ORDER BY priority DESC, id) AS slot FROM locked)"
            f" UPDATE {s}.tasks AS t SET state = {RUNNING}, attempts = t.attempts + 1,"
            " worker = (%s::text[])[slots.slot], lease_until = %s + coalesce(t.timeout, %s),"
            " run_at = NULL, progress = NULL, updated_at = %s, started_at = %s FROM slots"
            f" WHERE t.id = slots.id RETURNING slots.slot, {T_COLUMNS}"
        ),
    )
