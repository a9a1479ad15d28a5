"""A group commit's polls finished together: their "done"s and their claims, batched.

This is the hot path of every worker's poll: the statements do in SQL what the rules
(katar.core.rules) decide, and fall back to the rules for anything else.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from katar.core import rules
from katar.core.model import DONE, RUNNING, Ack, QueueOptions, Task, parse_task_id
from katar.core.storage import Change, Event, changed
from katar.errors import (
    KatarError,
)
from katar.store import _settle
from katar.store import _sql as sql
from katar.store._rows import (
    CLAIMED_COLUMNS,
    COLUMNS,
    OPTIONS_COLUMNS,
    claimed_from_row,
)
from katar.store.sqlite.deps import Dependencies
from katar.store.sqlite.queues import Queues

# The claim in one statement. It does what rules.claimed does, in SQL, because this is the
# hot path of every worker's poll.
# A task's own timeout makes its own lease (rules.lease_ms); a task never delivered whose
# expiry has come (rules.expired) is left for the reaper to cancel.
# Every claim below takes (now, queue timeout) for its lease and now for the expiry.
_LEASE: Final = "lease_until=?+coalesce(timeout, ?)"
_NOT_EXPIRED: Final = sql.not_expired("?")
_CLAIM: Final = (
    f"UPDATE tasks SET state={sql.RUNNING}, attempts=attempts+1, worker=?, {_LEASE}, run_at=NULL,"
    " progress=NULL, updated_at=?, started_at=? WHERE id IN (SELECT id FROM tasks WHERE"
    f" queue_id=? AND state={sql.READY} AND {_NOT_EXPIRED} ORDER BY priority DESC, id LIMIT ?)"
    f" RETURNING {CLAIMED_COLUMNS}"
)
# The other options of a claimed task that has some (see CLAIMED_COLUMNS).
_OPTIONS: Final = f"SELECT {OPTIONS_COLUMNS} FROM tasks WHERE id=?"
_CLAIM_ANONYMOUS: Final = _CLAIM.replace("worker=?", "worker=NULL")  # no worker name given
# A worker's "done" for the current delivery: update, or delete in a queue without history.
# {returning} is every column, or only the id when nobody needs the finished tasks.
# A delivery whose cancel an operator asked for is left to the rules (it ends cancelled).
# A task with dependencies (parents, or children waiting for it) is left to the rules too:
# its end settles the edges (katar.store.sqlite.deps).
_CURRENT: Final = (
    f"id=? AND queue_id=? AND state={sql.RUNNING} AND attempts=coalesce(nullif(?, 0), attempts)"
    " AND cancel_requested=0 AND children=0 AND parents=0"
)
_DONE: Final = (
    f"UPDATE tasks SET state={sql.DONE}, result=?, error=NULL, lease_until=NULL, updated_at=?"
    f" WHERE {_CURRENT} RETURNING {{returning}}"
)
# A task that holds its unique_key past its end (unique_for) is kept: left to the rules.
_DONE_DROP: Final = (
    f"DELETE FROM tasks WHERE {_CURRENT} AND unique_until IS NULL RETURNING {{returning}}"
)
# The same for an ack from a poll that names its worker (rules.owns): the delivery must be
# leased to that name or to none. A row it does not match falls through to the rules, which
# refuse it. Anonymous polls keep the statements without it.
_OWNER: Final = " AND (worker IS NULL OR worker=?)"
_DONE_OWNED: Final = _DONE.replace(" RETURNING", _OWNER + " RETURNING")
_DONE_DROP_OWNED: Final = _DONE_DROP.replace(" RETURNING", _OWNER + " RETURNING")
# The same for many acks at once; {rows} is "(?,?,?)" per ack: (id, attempt, result), or
# "(?,?)" when the task is dropped (its result is not kept).
_DONE_MATCH: Final = (
    f"t.id = v.column1 AND t.queue_id = ? AND t.state = {sql.RUNNING}"
    " AND t.attempts = coalesce(nullif(v.column2, 0), t.attempts) AND t.cancel_requested = 0"
    " AND t.children = 0 AND t.parents = 0"
)
_DONE_MANY: Final = (
    f"UPDATE tasks AS t SET state={sql.DONE}, result=v.column3, error=NULL, lease_until=NULL,"
    " updated_at=? FROM (VALUES {rows}) AS v WHERE " + _DONE_MATCH + " RETURNING {returning}"
)
_DONE_DROP_MANY: Final = (
    "DELETE FROM tasks WHERE id IN (SELECT t.id FROM tasks AS t JOIN (VALUES {rows}) AS v"
    " ON " + _DONE_MATCH + " AND t.unique_until IS NULL) RETURNING {returning}"
)
# With the acking worker's name as the rows' last column: (id, attempt, result, worker),
# or (id, attempt, worker) when the task is dropped.
_DONE_MANY_OWNED: Final = _DONE_MANY.replace(
    " RETURNING", " AND (t.worker IS NULL OR t.worker = v.column4) RETURNING"
)
_DONE_DROP_MANY_OWNED: Final = _DONE_DROP_MANY.replace(
    ") RETURNING", " AND (t.worker IS NULL OR t.worker = v.column3)) RETURNING"
)
# The same when no ack names its delivery, so there is nothing to match but ids: no join
# (a tenth fewer instructions per task); {ids} is "?" per ack.
_DONE_DROP_IDS: Final = (
    "DELETE FROM tasks WHERE id IN ({ids}) AND queue_id=?"
    f" AND state={sql.RUNNING} AND cancel_requested=0"
    " AND unique_until IS NULL AND children=0 AND parents=0"
    " RETURNING {returning}"
)
_DONE_CHUNK: Final = 300  # acks per statement: 3 variables each, well under SQLite's limit

# A limited queue's claim (QueueOptions.limited): count, pick, then take by id.
_RUNNING: Final = f"SELECT count(*) FROM tasks WHERE queue_id=? AND state={sql.RUNNING}"
# A key_concurrency claim counts the tasks in progress of the keys it meets only, over
# tasks_running_key (one probe a key, named: a range over every key in progress is the
# other plan): never every key in progress, whose number has no bound.
_RUNNING_OF_KEYS: Final = (
    "SELECT key, count(*) FROM tasks INDEXED BY tasks_running_key WHERE queue_id=?"
    f" AND state={sql.RUNNING}"
    " AND key IN (SELECT value FROM json_each(?)) GROUP BY key"
)
# The keys at their key_concurrency (GET /v1/queues), over the same index in key order.
_KEYS_AT_LIMIT: Final = (
    f"SELECT count(*) FROM (SELECT 1 FROM tasks WHERE queue_id=? AND state={sql.RUNNING}"
    " AND key IS NOT NULL GROUP BY key HAVING count(*) >= ?)"
)
_CANDIDATES: Final = (
    f"SELECT id, key FROM tasks WHERE queue_id=? AND state={sql.READY} AND {_NOT_EXPIRED} AND"
    " (key IS NULL OR key NOT IN (SELECT value FROM json_each(?)))"
    " ORDER BY priority DESC, id LIMIT ?"
)
# A fair queue's order (rules.fair_seq), over its partial index.
_CANDIDATES_FAIR: Final = _CANDIDATES.replace(
    f"state={sql.READY} AND", f"state={sql.READY} AND fair_seq IS NOT NULL AND"
).replace("priority DESC, id", "priority DESC, fair_seq, id")
_TAKE: Final = (
    f"UPDATE tasks SET state={sql.RUNNING}, attempts=attempts+1, worker=NULL, {_LEASE},"
    " run_at=NULL,"
    " progress=NULL, updated_at=?, started_at=? WHERE id IN (SELECT value FROM json_each(?))"
    f" RETURNING {CLAIMED_COLUMNS}"
)
_NAME_WORKER: Final = "UPDATE tasks SET worker=? WHERE id IN (SELECT value FROM json_each(?))"
# A fair queue's claim, with no key to count: the plain claim in the fair order (its workers
# named after, by _NAME_WORKER). Every waiting task of a fair queue has a place: one server
# serves a SQLite file, and it places the waiting tasks as it makes a queue fair.
_CLAIM_FAIR: Final = (
    f"UPDATE tasks SET state={sql.RUNNING}, attempts=attempts+1, worker=NULL, {_LEASE},"
    " run_at=NULL,"
    " progress=NULL, updated_at=?, started_at=? WHERE id IN (SELECT id FROM tasks WHERE"
    f" queue_id=? AND state={sql.READY} AND fair_seq IS NOT NULL AND {_NOT_EXPIRED}"
    f" ORDER BY priority DESC, fair_seq, id LIMIT ?) RETURNING {CLAIMED_COLUMNS}, fair_seq"
)


# A claimed row's id, priority and (a fair claim's) place: the keys of its order.
_ID: Final = operator.itemgetter(0)
_PRIORITY: Final = operator.itemgetter(1)
_LAST: Final = operator.itemgetter(-1)

_KEEP_EVENT: Final = "INSERT INTO outbox (queue, task_id, body) VALUES (?, ?, ?)"


def keep_events(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """Add completion-webhook events to the outbox (Store.notify), in the transaction that
    ends their tasks."""
    if events:
        conn.executemany(_KEEP_EVENT, events)


@dataclass(slots=True)
class Poll:
    """A poll whose "done" and claim are made with the group's others at the end of its
    transaction (see Batches.finish)."""

    queue: str
    queue_id: int
    options: QueueOptions
    worker: str | None
    limit: int
    now: int
    changes: list[Change]  # what the poll's acks changed
    done: tuple[int, Ack] | None  # its one "done" ack, when that is all it acks: (id, ack)
    error: KatarError | None = None  # the refusal of that ack, if refused
    delivered: list[Task] = field(default_factory=list)
    retry_at: int | None = None  # see PollResult.retry_at
    take: int = 0  # what its claim takes: limit, or less where a limit cuts it
    cancel: list[int] = field(default_factory=list)  # see PollResult.cancel
    held: str | None = None  # the limit that cut its take (rules.held_by), if one did


class Batches:
    """The SQLite store's acks and claims: a worker's acks applied, and the polls of a group
    commit finished together (:meth:`finish`, the writer's hook before each commit). Given
    the store's queues, its dependencies and its clock for leases (Store.lease_start);
    every operation is given the connection it runs on."""

    def __init__(
        self, queues: Queues, deps: Dependencies, lease_start: Callable[[int], int]
    ) -> None:
        self._queues = queues
        self._deps = deps
        self._task = queues.task
        self.lease_start = lease_start
        #: Store.watch, kept bound here (the store's attach sets it): asked on the hot path.
        self.watch: Callable[[], bool] | None = None
        #: Store.notify, kept here too: the polls' events are kept as they are finished.
        self.notify: Callable[[Sequence[Change]], list[Event]] | None = None
        self.polls: list[Poll] = []  # the running group's polls, finished together
        # The rate limits' buckets, per queue id: kept in memory (one server per file), and
        # refilled and spent on the loop's thread only.
        self.buckets: dict[int, rules.Bucket] = {}
        # key_rate's buckets, per queue id, kept the same way (and pruned by the claims).
        self.key_buckets: dict[int, rules.KeyBuckets] = {}

    def forget(self) -> None:
        """The group was rolled back: its polls are not finished."""
        self.polls = []

    def finish(self, conn: sqlite3.Connection) -> None:
        """Make the "done"s and the claims of every poll of the transaction: one statement
        for the polls of one queue together, instead of one each. The polls of a group
        commit are concurrent requests, none answered before the commit: their acks are
        applied first, each poll's together, then their claims are served in arrival order
        from one claim, so no claim of the group comes before an ack of the group (the
        guarantee docs/architecture.md states). It saves most of two statements' fixed cost
        per poll (about 5 us each, a fifth of what one task may cost at half the ceiling)."""
        polls = self.polls
        if not polls:
            return
        self.polls = []
        # Polls that name their worker go in statements of their own, that match the owner.
        by_queue: dict[tuple[int, bool, bool], list[tuple[Poll, int, Ack]]] = {}
        for poll in polls:
            if poll.done is not None:
                key = (poll.queue_id, poll.options.persistent, poll.worker is not None)
                by_queue.setdefault(key, []).append((poll, *poll.done))
        for (queue_id, _persistent, named), acking in by_queue.items():
            first: dict[int, Poll] = {}  # a task named twice: the first poll's ack is it
            for poll, task_id, _ack in acking:
                first.setdefault(task_id, poll)
            batch = [(task_id, ack) for poll, task_id, ack in acking if first[task_id] is poll]
            now = max(poll.now for poll, _id, _ack in acking)
            owners = None
            if named:
                owners = [p.worker or "" for p, task_id, _ack in acking if first[task_id] is p]
            options = acking[0][0].options
            finished = self._finish_done(conn, queue_id, options, batch, now, owners)
            for poll, task_id, ack in acking:
                if first[task_id] is poll and task_id in finished:
                    change = finished[task_id]
                    if change is not None:
                        poll.changes.append(change)
                    continue
                try:  # not the current delivery, or a repeat: the rules decide
                    self.apply_ack(
                        conn,
                        poll.queue,
                        queue_id,
                        poll.options,
                        ack,
                        0,
                        poll.now,
                        poll.changes,
                        poll.worker,
                        fast=False,
                    )
                except KatarError as exc:
                    poll.error = exc
        notify = self.notify
        if notify is not None:  # every change of the polls' acks is known now
            for poll in polls:
                if poll.changes:
                    keep_events(conn, notify(poll.changes))
        for poll in polls:  # the claims start their leases now (Store.lease_start)
            poll.now = self.lease_start(poll.now)
        # (queue, worker, timeout, fair order) -> the polls that one claim statement serves
        claims: dict[tuple[int, str | None, int, bool], list[Poll]] = {}
        custom: dict[int, list[Poll]] = {}
        for poll in polls:
            if poll.limit > 0 and poll.error is None:
                poll.take = poll.limit
                if poll.options.custom_claim:
                    custom.setdefault(poll.queue_id, []).append(poll)
                else:
                    claims.setdefault(
                        (poll.queue_id, poll.worker, poll.options.timeout, False), []
                    ).append(poll)
        charged: list[tuple[rules.ClaimPlan, list[Poll]]] = []
        for queue_id, group in custom.items():
            options = group[0].options
            if options.key_concurrency is not None or options.key_rate is not None:
                self._claim_by_key(conn, group)
                continue
            # No key to count: the limits cut what the polls take, in arrival order, and
            # the claim is the plain one (in the fair order for a fair queue).
            plan = self._allowance(conn, group)
            allowed = plan.allowed
            for poll in group:
                poll.take = min(poll.limit, allowed)
                allowed -= poll.take
                if poll.take < poll.limit:
                    poll.held = plan.held
                if poll.take:
                    fair = queue_id in self._queues.fair
                    statement = (queue_id, poll.worker, options.timeout, fair)
                    claims.setdefault(statement, []).append(poll)
            if plan.bucket is not None:
                charged.append((plan, group))
        for (queue_id, worker, timeout, fair), claiming in claims.items():
            total = sum(poll.take for poll in claiming)
            now = max(poll.now for poll in claiming)
            lease = (now, timeout, now, now, queue_id, now, total)
            if fair:
                rows = conn.execute(_CLAIM_FAIR, lease).fetchall()
            elif worker is None:
                rows = conn.execute(_CLAIM_ANONYMOUS, lease).fetchall()
            else:
                rows = conn.execute(_CLAIM, (worker, *lease)).fetchall()
            if len(rows) > 1:  # RETURNING promises no order
                # Priority first (highest), then the place (fair) and the id: sorts from the
                # last key to the first, each stable (reverse too), keyed in C.
                rows.sort(key=_ID)
                if fair:
                    rows.sort(key=_LAST)
                rows.sort(key=_PRIORITY, reverse=True)
            name = self._queues.names[queue_id]
            lease_until = now + timeout
            # A task with no option of its own (row[10]) is the row alone.
            tasks = [
                claimed_from_row(row, name, worker, now, lease_until)
                if row[10]
                else self._claimed(conn, row, name, worker, now, lease_until)
                for row in rows
            ]
            start = 0
            for poll in claiming:
                poll.delivered = tasks[start : start + poll.take]
                start += poll.take
            if fair and worker is not None and rows:
                conn.execute(_NAME_WORKER, (worker, msgspec.json.encode([r[0] for r in rows])))
        for plan, group in charged:  # what was taken, not what was allowed
            self._charge(plan, group)

    @staticmethod
    def _claimed(
        conn: sqlite3.Connection,
        row: Any,
        queue: str,
        worker: str | None,
        now: int,
        lease_until: int,
    ) -> Task:
        """The task a claim returned (see CLAIMED_COLUMNS) that has other options of its
        own (row[10] false): they are read apart, for the few tasks that have some."""
        options = conn.execute(_OPTIONS, (row[0],)).fetchone()
        task = claimed_from_row(row, queue, worker, now, lease_until, options)
        return Dependencies.view_of(conn, task)

    def _allowance(self, conn: sqlite3.Connection, polls: list[Poll]) -> rules.ClaimPlan:
        """The claim of a group's polls of one queue together, under its limits: the tasks
        in progress counted, the queue's rate bucket refilled to now."""
        first = polls[0]
        options, queue_id = first.options, first.queue_id
        now = max(poll.now for poll in polls)
        bucket = self._bucket(queue_id, options, now)
        running = 0
        if options.concurrency is not None:
            running = conn.execute(_RUNNING, (queue_id,)).fetchone()[0]
        asked = sum(poll.limit for poll in polls)
        return rules.ClaimPlan(options, asked, running, bucket)

    @staticmethod
    def _charge(plan: rules.ClaimPlan, polls: list[Poll]) -> None:
        """Spend the tokens of what the polls took; a poll that got less than it asked
        learns when the next token comes (PollResult.retry_at)."""
        plan.settle(sum(len(poll.delivered) for poll in polls))
        now = max(poll.now for poll in polls)
        for poll in polls:
            retry_at = plan.retry_at(poll.limit, len(poll.delivered), now)
            if retry_at is not None:
                poll.retry_at = retry_at

    def _claim_by_key(self, conn: sqlite3.Connection, polls: list[Poll]) -> None:
        """The claims of a group's polls of one queue with key_concurrency or key_rate: one
        count and one selection for them all, served in arrival order, so that the limits
        hold inside the group as between groups (and a group costs what one poll does). It
        counts the tasks in progress of the keys it meets only, so that its cost follows
        what it takes (and the tasks it passes over), not the number of keys in progress."""
        first = polls[0]
        options, queue_id = first.options, first.queue_id
        now = max(poll.now for poll in polls)
        plan = self._allowance(conn, polls)
        allowed = plan.allowed
        per_key: dict[str, int] = {}  # in progress, for the keys met so far
        taken: dict[str, int] = {}
        lease_until = now + options.timeout
        rows: dict[int, Any] = {}
        order: list[int] = []
        rates = key_buckets = None
        if options.key_rate is not None:
            key_buckets = self.key_buckets.get(queue_id)
            if key_buckets is None:
                key_buckets = self.key_buckets[queue_id] = rules.KeyBuckets()
            key_buckets.prune(now)
            rates = rules.KeyRates(options.key_rate, now, key_buckets.full_at)
        counts = options.key_concurrency is not None
        extra = rules.CLAIM_EXTRA
        while len(order) < allowed:
            want = allowed - len(order)
            blocked = rules.blocked_keys(per_key, taken, options.key_concurrency)
            if rates is not None:
                blocked = sorted(rates.blocked().union(blocked))
            # More than wanted: some may belong to keys at their limit, or that fill up on
            # the way (the next look passes over those keys, and looks further).
            chunk = want + extra
            candidates = self._candidates(conn, queue_id, blocked, chunk, now)
            met = rules.unseen_keys(candidates, per_key) if counts else []
            if met:
                per_key.update(dict.fromkeys(met, 0))
                keys = msgspec.json.encode(met)
                per_key.update(conn.execute(_RUNNING_OF_KEYS, (queue_id, keys)).fetchall())
            ids = rules.pick_by_key(
                candidates, want, per_key, options.key_concurrency, taken, rates
            )
            if ids:  # taken now, so that the next look passes them; workers named below
                lease = (now, options.timeout, now, now, msgspec.json.encode(ids))
                took = conn.execute(_TAKE, lease)
                rows.update((row[0], row) for row in took)
                order += ids
            if len(candidates) < chunk:
                break  # no more ready tasks that a free key could take
            extra *= 2
        name = self._queues.names[queue_id]
        start = 0
        named: dict[str, list[int]] = {}
        for poll in polls:
            mine = order[start : start + poll.limit]
            start += len(mine)
            if len(mine) < poll.limit and len(order) >= allowed:  # the limit cut its share
                poll.take, poll.held = len(mine), plan.held
            elif len(mine) < poll.limit and rates is not None and rates.skipped:
                poll.take, poll.held = len(mine), "key_rate"  # keys out of tokens passed over
            poll.delivered = [
                self._claimed(conn, rows[i], name, poll.worker, now, lease_until) for i in mine
            ]
            if poll.worker is not None and mine:
                named.setdefault(poll.worker, []).extend(mine)
        for worker, ids in named.items():
            conn.execute(_NAME_WORKER, (worker, msgspec.json.encode(ids)))
        if plan.bucket is not None:
            self._charge(plan, polls)
        if rates is not None and key_buckets is not None:
            key_buckets.keep(rates.spent())
            asked = sum(poll.limit for poll in polls)
            retry_at = rules.claim_retry_at(plan, asked, len(order), now, rates)
            if retry_at is not None:
                for poll in polls:
                    if len(poll.delivered) < poll.limit:
                        poll.retry_at = retry_at

    def _candidates(
        self, conn: sqlite3.Connection, queue_id: int, blocked: list[str], chunk: int, now: int
    ) -> list[tuple[int, str | None]]:
        """Ready tasks in claim order, up to ``chunk``, passing over the ``blocked`` keys
        (and the tasks whose expiry has come)."""
        keys = msgspec.json.encode(blocked)
        fair = queue_id in self._queues.fair
        candidates = _CANDIDATES_FAIR if fair else _CANDIDATES
        rows: list[tuple[int, str | None]] = conn.execute(
            candidates, (queue_id, now, keys, chunk)
        ).fetchall()
        return rows

    def _bucket(self, queue_id: int, options: QueueOptions, now: int) -> rules.Bucket | None:
        if options.rate is None:
            return None
        return rules.Bucket.kept_in(self.buckets, queue_id, options.rate, now)

    def apply_acks(
        self,
        conn: sqlite3.Connection,
        queue: str,
        queue_id: int,
        options: QueueOptions,
        acks: Sequence[Ack],
        now: int,
        changes: list[Change],
        worker: str | None,
        cancel: list[int] | None = None,
    ) -> None:
        """Apply a batch's acks in order. The plain "done"s of the current deliveries go in
        statements of many rows at once, when no task is named twice (then the order of
        the acks cannot matter); every other ack goes through the rules one by one."""
        ids = [parse_task_id(ack.task_id) for ack in acks]
        done: dict[int, Change | None] = {}
        plain = [(i, a) for i, a in zip(ids, acks, strict=True) if a.status == "done" and i]
        if len(plain) > 1 and len(set(ids)) == len(ids):
            owners = None if worker is None else [worker] * len(plain)
            done = self._finish_done(conn, queue_id, options, plain, now, owners)
        for index, (task_id, ack) in enumerate(zip(ids, acks, strict=True)):
            if task_id in done:
                change = done[task_id]
                if change is not None:
                    changes.append(change)
            else:
                self.apply_ack(
                    conn,
                    queue,
                    queue_id,
                    options,
                    ack,
                    index,
                    now,
                    changes,
                    worker,
                    not done,
                    cancel,
                )

    def apply_ack(
        self,
        conn: sqlite3.Connection,
        queue: str,
        queue_id: int,
        options: QueueOptions,
        ack: Ack,
        index: int,
        now: int,
        changes: list[Change],
        worker: str | None,
        fast: bool = True,
        cancel: list[int] | None = None,
    ) -> None:
        """Apply one ack from a poll naming ``worker`` (None: anonymous); a refused ack
        raises before anything is written. A heartbeat that finds its task cancelled by an
        operator (rules.stops) adds the task's id to ``cancel``."""
        task_id = parse_task_id(ack.task_id)
        if fast and ack.status == "done" and task_id is not None:
            owners = None if worker is None else [worker]
            done = self._finish_done(conn, queue_id, options, [(task_id, ack)], now, owners)
            if done:
                changes.extend(change for change in done.values() if change is not None)
                return
        task = self._queues.find(conn, queue, ack.task_id, index)
        if task is not None:
            plan = _settle.ack(task, ack, index, options, now, worker, changes, cancel)
            self._deps.run(conn, plan)

    def _finish_done(
        self,
        conn: sqlite3.Connection,
        queue_id: int,
        options: QueueOptions,
        acks: list[tuple[int, Ack]],
        now: int,
        owners: list[str] | None = None,
    ) -> dict[int, Change | None]:
        """The hot path of a worker's "done": statements that finish the current deliveries
        the acks name, and leave any other ack to the rules (the ids missing from the
        answer). They write what rules.apply_ack writes, as the claim does for
        rules.claimed. Any number of acks: long batches go in chunks of _DONE_CHUNK.

        A finished task maps to its change, or to None when nobody watches (see
        Store.watch): then only the ids come back, and no task is built. ``owners``, for
        acks from polls that name their worker, holds each ack's worker: a delivery leased
        to another name is left to the rules (which refuse it)."""
        changes: dict[int, Change | None] = {}
        quiet = self.watch is not None and not self.watch()
        for start in range(0, len(acks), _DONE_CHUNK):
            chunk = acks[start : start + _DONE_CHUNK]
            owned = None if owners is None else owners[start : start + _DONE_CHUNK]
            if quiet:
                rows = self._done_rows(conn, queue_id, options, chunk, now, "id", owned)
                for (task_id,) in rows:
                    changes[task_id] = None
                continue
            by_id = dict(chunk)
            for row in self._done_rows(conn, queue_id, options, chunk, now, COLUMNS, owned):
                task = self._task(row)
                if not options.persistent:  # the row as it was: derive its last state
                    # It matched its owner (or no owner was asked): the rules need none.
                    finished = rules.apply_ack(task, by_id[task.id], options, now)
                    assert finished is not None
                    assert finished.state is DONE
                    task = finished
                changes[task.id] = changed((task, RUNNING, None))
        return changes

    @staticmethod
    def _done_rows(
        conn: sqlite3.Connection,
        queue_id: int,
        options: QueueOptions,
        acks: list[tuple[int, Ack]],
        now: int,
        returning: str,
        owners: list[str] | None,
    ) -> list[Any]:
        """The rows one statement finished: updated (history kept) or deleted (as they were),
        with the ``returning`` columns."""
        if owners is not None:
            return Batches._owned_done_rows(conn, queue_id, options, acks, now, returning, owners)
        if len(acks) == 1:
            ((task_id, ack),) = acks
            if options.persistent:
                sql = _DONE.format(returning=returning)
                one = (bytearray(ack.result), now, task_id, queue_id, ack.attempt or 0)
                return conn.execute(sql, one).fetchall()
            sql = _DONE_DROP.format(returning=returning)
            return conn.execute(sql, (task_id, queue_id, ack.attempt or 0)).fetchall()
        parameters: list[Any] = []
        if options.persistent:
            parameters.append(now)
            for task_id, ack in acks:
                parameters += (task_id, ack.attempt or 0, bytearray(ack.result))
            sql = _DONE_MANY.format(rows=",".join(["(?,?,?)"] * len(acks)), returning=returning)
        elif any([ack.attempt for _id, ack in acks]):
            for task_id, ack in acks:
                parameters += (task_id, ack.attempt or 0)
            sql = _DONE_DROP_MANY.format(rows=",".join(["(?,?)"] * len(acks)), returning=returning)
        else:
            parameters += [task_id for task_id, _ack in acks]
            sql = _DONE_DROP_IDS.format(ids=",".join("?" * len(acks)), returning=returning)
        parameters.append(queue_id)
        return conn.execute(sql, parameters).fetchall()

    @staticmethod
    def _owned_done_rows(
        conn: sqlite3.Connection,
        queue_id: int,
        options: QueueOptions,
        acks: list[tuple[int, Ack]],
        now: int,
        returning: str,
        owners: list[str],
    ) -> list[Any]:
        """:meth:`_done_rows` for acks from polls that name their worker: each row also
        matches its delivery's owner."""
        if len(acks) == 1:
            ((task_id, ack),) = acks
            if options.persistent:
                sql = _DONE_OWNED.format(returning=returning)
                one = (bytearray(ack.result), now, task_id, queue_id, ack.attempt or 0, owners[0])
                return conn.execute(sql, one).fetchall()
            sql = _DONE_DROP_OWNED.format(returning=returning)
            return conn.execute(sql, (task_id, queue_id, ack.attempt or 0, owners[0])).fetchall()
        parameters: list[Any] = []
        if options.persistent:
            parameters.append(now)
            for (task_id, ack), owner in zip(acks, owners, strict=True):
                parameters += (task_id, ack.attempt or 0, bytearray(ack.result), owner)
            rows = ",".join(["(?,?,?,?)"] * len(acks))
            sql = _DONE_MANY_OWNED.format(rows=rows, returning=returning)
        else:
            for (task_id, ack), owner in zip(acks, owners, strict=True):
                parameters += (task_id, ack.attempt or 0, owner)
            rows = ",".join(["(?,?,?)"] * len(acks))
            sql = _DONE_DROP_MANY_OWNED.format(rows=rows, returning=returning)
        parameters.append(queue_id)
        return conn.execute(sql, parameters).fetchall()
