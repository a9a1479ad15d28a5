"""The SQLite store's operations (the storage contract, katar.core.storage), submitted to its
writer (katar.store.sqlite.writer), over its queues, its dependencies and its batched acks and
claims (katar.store.sqlite.queues, .deps, .batch): objects it makes and gives what they need.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

import msgspec

from katar.core import idempotency, rules
from katar.core.idempotency import Idempotency
from katar.core.model import (
    UNFINISHED,
    Ack,
    Edit,
    MoveJob,
    NewTask,
    OutboxRow,
    QueueOptions,
    State,
    Task,
    TaskFilter,
    advanced,
    move_end_state,
    now_ms,
    parse_task_id,
    runs_on,
)
from katar.core.schedule import Schedule, ScheduleSpec
from katar.core.schedule import stored as stored_schedule
from katar.core.storage import (
    BulkStep,
    Change,
    Enqueued,
    Event,
    Fired,
    LimitState,
    MoveLease,
    PollResult,
    RedriveStep,
    Store,
)
from katar.errors import (
    Conflict,
    KatarError,
    TaskNotFound,
)
from katar.protocol import HISTORY_LENGTH
from katar.store import _sql
from katar.store._moves import advance_values, insert_values, job_from_row, move_statements
from katar.store._reap import expiries
from katar.store._rows import (
    COLUMNS,
    Dialect,
    move_sql,
    move_values,
    where_sql,
)
from katar.store.sqlite.batch import _KEYS_AT_LIMIT, Batches, Poll, keep_events
from katar.store.sqlite.deps import Dependencies, Edge
from katar.store.sqlite.queues import Queues
from katar.store.sqlite.writer import Writer

_COLUMNS: Final = COLUMNS
_MOVES: Final = move_statements("move_jobs", "?")
_LEASE_PASSED: Final = "SELECT 1 FROM move_jobs WHERE state = 'running' AND lease_until < ? LIMIT 1"
# Parameters on the hot paths are ints and bytearrays only. Python's sqlite3 binds int, float,
# str and bytearray directly, but asks its adapter registry about anything else, None and
# bytes included: ~0.5 to 1 us a parameter, measured, which was a third of a bulk enqueue.
# So a task's data goes in as a bytearray, None is written as NULL in the SQL, and "no
# attempt named" is 0 (attempts start at 1).
_INSERT: Final = (
    "INSERT INTO tasks (id, queue_id, state, priority, data, created_at, updated_at)"
    " VALUES (?,?,?,?,?,?,?)"
)
# Any task with a key: every column an enqueue may set.
_INSERT_ALL: Final = (
    "INSERT INTO tasks (id, queue_id, state, priority, data, created_at, updated_at, run_at,"
    " key) VALUES (?,?,?,?,?,?,?,?,?)"
)
_INSERT_LATER: Final = (
    "INSERT INTO tasks (id, queue_id, state, priority, data, created_at, updated_at, run_at)"
    " VALUES (?,?,?,?,?,?,?,?)"
)
_INSERT_FAIR: Final = (
    "INSERT INTO tasks (id, queue_id, state, priority, data, created_at, updated_at, run_at,"
    " key, fair_seq) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
# A fair queue's front (the place of the task a claim takes first), and a key's last place.
_FAIR_FRONT: Final = (
    f"SELECT fair_seq FROM tasks WHERE queue_id=? AND state={_sql.READY}"
    " AND fair_seq IS NOT NULL ORDER BY priority DESC, fair_seq, id LIMIT 1"
)
# The same for every key of a batch, in one statement (each key one probe of tasks_fair_key).
_FAIR_LASTS: Final = (
    "SELECT k.value, (SELECT max(fair_seq) FROM tasks WHERE queue_id=?1 AND key=k.value"
    f" AND fair_seq IS NOT NULL AND {_sql.UNDERWAY}) FROM json_each(?2) AS k"
)
_FAIR_LAST: Final = (
    "SELECT max(fair_seq) FROM tasks WHERE queue_id=? AND key IS ? AND fair_seq IS NOT NULL"
    f" AND {_sql.UNDERWAY}"
)
# A queue made fair: its waiting tasks get places, each key's in its own order.
_PLACE_WAITING: Final = (
    "UPDATE tasks SET fair_seq = r.place FROM (SELECT id, row_number() OVER (PARTITION BY key"
    " ORDER BY priority DESC, id) - 1 AS place FROM tasks WHERE queue_id=?"
    f" AND ({_sql.UNDERWAY} OR state = {_sql.WAITING}) AND fair_seq IS NULL) AS r"
    " WHERE tasks.id = r.id"
)
_PLACE_ONE: Final = "UPDATE tasks SET fair_seq=? WHERE id=? AND fair_seq IS NULL"
# An edit and retry (rules.edit_task): what the UPDATE of a status change does not write,
# and a fair queue's place of a task whose key it changed (placed again, as a new task).
_EDIT: Final = "UPDATE tasks SET data=?, key=? WHERE id=?"
_UNPLACE: Final = "UPDATE tasks SET fair_seq=NULL WHERE id=?"
# A task with per-task options or a unique_key (rare): every column, in one statement.
_INSERT_FULL: Final = (
    "INSERT INTO tasks (id, queue_id, state, priority, data, created_at, updated_at, run_at,"
    " key, fair_seq, timeout, max_attempts, expires_at, unique_key, unique_until, parents,"
    " error, debounce_key, attributes, trace) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
# The task that holds a unique_key (rules.holds_key), if any: by the partial index tasks_unique.
# The tasks that hold the unique_keys of a batch, by the partial index tasks_unique: one
# statement for the batch (a statement costs microseconds, an index probe far less).
_HOLDERS: Final = (
    f"SELECT {COLUMNS} FROM tasks WHERE id IN (SELECT (SELECT id FROM tasks WHERE queue_id=?"
    " AND unique_key=k.value AND unique_key IS NOT NULL"
    f" AND {_sql.holds_key('?')}"
    " ORDER BY id LIMIT 1) FROM json_each(?) AS k)"
)
# The tasks that hold the debounce keys of a batch (rules.holds_debounce), by the partial
# index tasks_debounce.
_DEBOUNCING: Final = (
    f"SELECT {COLUMNS} FROM tasks WHERE queue_id=? AND debounce_key IN"
    " (SELECT value FROM json_each(?)) AND debounce_key IS NOT NULL"
    f" AND {_sql.HOLDS_DEBOUNCE}"
)
# A task debounced (rules.debounce): what an enqueue of its key replaces. A fair queue's
# task keeps its place.
_DEBOUNCE: Final = (
    "UPDATE tasks SET state=?, priority=?, data=?, run_at=?, key=?, timeout=?,"
    " max_attempts=?, expires_at=?, updated_at=? WHERE id=?"
)
# An operator's retry takes a task out of its debounce (rules.change_status).
_UNDEBOUNCE: Final = "UPDATE tasks SET debounce_key=NULL WHERE id=?"
_RESTING: Final = frozenset({State.PAUSED, State.DONE, State.FAILED, State.CANCELLED})
# Counts by state, each query served by a partial index.
_COUNTS: Final = (
    *(
        f"SELECT queue_id, {state}, count(*) FROM tasks WHERE state = {state} GROUP BY queue_id"
        for state in (_sql.READY, _sql.SCHEDULED, _sql.RUNNING)
    ),
    f"SELECT queue_id, state, count(*) FROM tasks WHERE {_sql.AT_REST} GROUP BY queue_id, state",
)
_EXPIRE_BATCH: Final = 1000
# A queue a task moves to that does not exist (a dead letter's target, a redrive's origin
# deleted meanwhile): made with default options, as PUT with {} makes one.
_CREATE_QUEUE: Final = "INSERT INTO queues (name, options) VALUES (?, ?) RETURNING id"
_DEFAULT_OPTIONS: Final = msgspec.json.encode(QueueOptions())
_MOVE: Final = move_sql("tasks", "?", False)
_MOVE_FULL: Final = move_sql("tasks", "?", True)
_options_decoder: Final = msgspec.json.Decoder(QueueOptions)
_spec_decoder: Final = msgspec.json.Decoder(ScheduleSpec)


class SQLiteStore(Store):
    """Queues and tasks in one SQLite database file.

    Composed of its writer (the file, its connections, the group commit, the checkpointer),
    its queues (what it keeps in memory beside the file), its dependencies and its batched
    acks and claims; each given what it needs. The operations below are submitted to the
    writer as functions of a connection.
    """

    def __init__(self, url: str) -> None:
        self._queues = queues = Queues()
        self._deps = Dependencies(queues, self._move)
        self._batches = Batches(queues, self._deps, self.lease_start)
        self._writer = Writer(
            url, opened=queues.load, finish=self._batches.finish, undone=self._undone
        )
        self.url = self._writer.url
        self._task = queues.task

    def _undone(self, conn: sqlite3.Connection) -> None:
        """A group was rolled back: its polls are not finished, and what its operations
        learned about ids or queues may be undone (read again)."""
        self._batches.forget()
        self._queues.load(conn)

    # Store.watch lives on the batches, which ask it on the hot path: set here (by attach, or
    # by a test), it is theirs.
    @property
    def watch(self) -> Callable[[], bool] | None:
        return self._batches.watch

    @watch.setter
    def watch(self, watch: Callable[[], bool] | None) -> None:
        self._batches.watch = watch

    # Store.notify too: the batches keep the events of the polls they finish.
    @property
    def notify(self) -> Callable[[Sequence[Change]], list[Event]] | None:
        return self._batches.notify

    @notify.setter
    def notify(self, notify: Callable[[Sequence[Change]], list[Event]] | None) -> None:
        self._batches.notify = notify

    def _keep_events(self, conn: sqlite3.Connection, changes: Sequence[Change]) -> None:
        """Keep the events the changes make (Store.notify) in the operation's transaction."""
        notify = self._batches.notify
        if notify is not None and changes:
            keep_events(conn, notify(changes))

    async def open(self) -> None:
        await self._writer.open()
        self.schema_change = self._writer.schema_change

    async def close(self) -> None:
        await self._writer.close()

    # -- the contract ------------------------------------------------------------------------

    async def ping(self) -> None:
        # After the disk refused a write, the store is not well until its checkpointer has
        # copied the WAL back with room to spare (Writer._recover): a small write may
        # well succeed meanwhile (the WAL's file has room left from earlier writes).
        self._writer.refuse_new_tasks()
        await self._writer.read(lambda conn: conn.execute("SELECT 1").fetchone())

    def failing(self) -> str | None:
        return self._writer.failing()

    async def load_queues(self) -> dict[str, QueueOptions]:
        rows = await self._writer.read(
            lambda conn: conn.execute("SELECT name, options FROM queues").fetchall()
        )
        return {name: _options_decoder.decode(options) for name, options in rows}

    async def load_queue(self, name: str) -> QueueOptions | None:
        row = await self._writer.read(
            lambda conn: conn.execute("SELECT options FROM queues WHERE name=?", (name,)).fetchone()
        )
        return None if row is None else _options_decoder.decode(row[0])

    async def save_queue(self, name: str, options: QueueOptions) -> None:
        encoded = msgspec.json.encode(options)

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "INSERT INTO queues (name, options) VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET options = excluded.options RETURNING id",
                (name, encoded),
            ).fetchone()
            queue_id = row[0]
            self._queues.added(name, queue_id)
            self._batches.buckets.pop(queue_id, None)  # new options: a rate limit starts full
            self._batches.key_buckets.pop(queue_id, None)  # and key_rate's buckets
            if not options.fair:
                self._queues.fair.discard(queue_id)
            elif queue_id not in self._queues.fair:
                self._queues.fair.add(queue_id)
                conn.execute(_PLACE_WAITING, (queue_id,))

        await self._writer.write(op)

    async def delete_queue(self, name: str, now: int | None = None) -> int:
        when = now_ms() if now is None else now

        def op(conn: sqlite3.Connection) -> int:
            queue_id = self._queues.id_of(name)
            # The tasks of other queues that wait for this one's are cancelled.
            also: list[Change] = []
            for row in conn.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE queue_id=? AND children>0", (queue_id,)
            ).fetchall():
                self._deps.settle(conn, self._task(row), None, when, also)
            settled.extend(change for change in also if change.task.queue != name)
            self._keep_events(conn, settled)
            conn.execute(
                "DELETE FROM deps WHERE child_id IN (SELECT id FROM tasks WHERE queue_id=?"
                " AND parents>0)",
                (queue_id,),
            )
            count: int = conn.execute("DELETE FROM tasks WHERE queue_id=?", (queue_id,)).rowcount
            conn.execute("DELETE FROM queues WHERE id=?", (queue_id,))
            conn.execute("DELETE FROM idempotency_keys WHERE queue_id=?", (queue_id,))
            conn.execute(_MOVES.forget, (name,))
            del self._queues.ids[name]
            self._batches.key_buckets.pop(queue_id, None)
            # The id -> name entry stays: reads of the old queue's rows may still be in flight.
            return count

        settled: list[Change] = []
        count = await self._writer.write(op)
        self.report(settled)
        return count

    async def enqueue(self, queue: str, tasks: Sequence[NewTask], now: int) -> list[Task]:
        def op(conn: sqlite3.Connection) -> list[Task]:
            return self._insert(conn, self._queues.id_of(queue), queue, tasks, now)

        return await self._writer.write(op)

    def _insert(
        self,
        conn: sqlite3.Connection,
        queue_id: int,
        queue: str,
        tasks: Sequence[NewTask],
        now: int,
    ) -> list[Task]:
        # Every new task comes through here (an enqueue, a schedule's tick); refused after
        # the disk refused a write, before anything is written (the group goes on).
        self._writer.refuse_new_tasks()
        if any(map(rules.special, tasks)):
            return self._insert_special(conn, queue_id, queue, tasks, now)
        first = self._queues.last_id + 1
        created = [
            rules.new_task(queue, spec, task_id, now)
            for task_id, spec in zip(itertools.count(first), tasks)
        ]

        def row(t: Task) -> tuple[Any, ...]:
            return (t.id, queue_id, int(t.state), t.priority, bytearray(t.data), now, now)

        if queue_id in self._queues.fair:
            places = self._fair_places(conn, queue_id, created)
            conn.executemany(
                _INSERT_FAIR,
                [(*row(t), t.run_at, t.key, p) for t, p in zip(created, places, strict=True)],
            )
            self._queues.last_id = first + len(created) - 1
            return created
        plain = [t for t in created if t.key is None]
        if len(plain) < len(created):
            keyed = [(*row(t), t.run_at, t.key) for t in created if t.key is not None]
            conn.executemany(_INSERT_ALL, keyed)
        ready = [row(t) for t in plain if t.run_at is None]
        if ready:
            conn.executemany(_INSERT, ready)
        if len(ready) < len(plain):
            later = [(*row(t), t.run_at) for t in plain if t.run_at is not None]
            conn.executemany(_INSERT_LATER, later)
        self._queues.last_id = first + len(created) - 1
        return created

    def _insert_special(
        self,
        conn: sqlite3.Connection,
        queue_id: int,
        queue: str,
        tasks: Sequence[NewTask],
        now: int,
    ) -> list[Task]:
        """:meth:`_insert` for tasks with per-task options or unique keys: a unique_key
        held by a task of the queue (one of this batch's included) creates nothing, and
        answers that task; a debounce_key held (rules.holds_debounce) replaces that task
        (rules.debounce), the batch's later tasks of one key replacing its earlier. The
        single writer makes the look and the insert atomic: the
        operations of a group run one after the other, each seeing the rows the earlier
        ones wrote."""
        answered: list[Task] = []
        created: list[Task] = []
        taken: dict[str, Task] = {}  # the keys this batch takes
        parents = self._deps.parents(conn, tasks)
        edges: list[Edge] = []
        wanted = {spec.unique_key for spec in tasks if spec.unique_key is not None}
        holders: dict[str | None, Task] = {}
        if wanted:
            keys = msgspec.json.encode(sorted(wanted))
            for row in conn.execute(_HOLDERS, (queue_id, now, keys)):
                holder = self._task(row)
                holders[holder.unique_key] = holder
        debouncing = self._debouncing(conn, queue_id, tasks)
        replaced: dict[int, Task] = {}  # existing tasks debounced, by id: their new version
        fresh: dict[int, int] = {}  # the tasks this batch creates: their places in created
        for spec in tasks:
            debounce_key = spec.debounce_key
            if debounce_key is not None:
                held = debouncing.get(debounce_key)
                if held is not None:
                    new = rules.debounce(held, spec, now)
                    if held.id in fresh:  # created by this batch: written once, as it ends
                        created[fresh[held.id]] = new
                    else:
                        replaced[held.id] = new
                    debouncing[debounce_key] = new
                    answered.append(rules.debounced(new))
                    continue
            key = spec.unique_key
            if key is not None:
                if key in taken:
                    answered.append(rules.duplicate(taken[key]))
                    continue
                found = holders.get(key)
                if found is not None:
                    answered.append(rules.duplicate(found))
                    continue
            self._queues.last_id += 1
            task = rules.new_task(queue, spec, self._queues.last_id, now)
            if spec.after or spec.refs:
                task = self._deps.depend(task, spec, parents, answered, edges)
            if key is not None and rules.holds_key(task, now):  # not one cancelled at once
                taken[key] = task
            if debounce_key is not None:
                debouncing[debounce_key] = task
                fresh[task.id] = len(created)
            created.append(task)
            answered.append(task)
        places: Sequence[int | None] = [None] * len(created)
        if queue_id in self._queues.fair:
            places = self._fair_places(conn, queue_id, created)
        if replaced:
            conn.executemany(
                _DEBOUNCE,
                [
                    (
                        int(t.state),
                        t.priority,
                        bytearray(t.data),
                        t.run_at,
                        t.key,
                        t.timeout,
                        t.max_attempts,
                        t.expires_at,
                        now,
                        t.id,
                    )
                    for t in replaced.values()
                ],
            )
        conn.executemany(
            _INSERT_FULL,
            [
                (
                    t.id,
                    queue_id,
                    int(t.state),
                    t.priority,
                    bytearray(t.data),
                    now,
                    now,
                    t.run_at,
                    t.key,
                    place,
                    t.timeout,
                    t.max_attempts,
                    t.expires_at,
                    t.unique_key,
                    t.unique_until,
                    t.parents,
                    t.error,  # a task cancelled at once: its parent had failed
                    t.debounce_key,
                    None if t.attributes is None else bytes(t.attributes),
                    None if t.trace is None else bytearray(t.trace),
                )
                for t, place in zip(created, places, strict=True)
            ],
        )
        self._deps.link(conn, edges)
        return answered

    def _debouncing(
        self, conn: sqlite3.Connection, queue_id: int, tasks: Sequence[NewTask]
    ) -> dict[str, Task]:
        """The tasks of the queue that hold the debounce keys ``tasks`` name, by key."""
        keys = {spec.debounce_key for spec in tasks if spec.debounce_key is not None}
        if not keys:
            return {}
        rows = conn.execute(_DEBOUNCING, (queue_id, msgspec.json.encode(sorted(keys))))
        found = [self._task(row) for row in rows]
        return {task.debounce_key: task for task in found if task.debounce_key is not None}

    def _fair_places(
        self, conn: sqlite3.Connection, queue_id: int, tasks: Sequence[Task]
    ) -> list[int]:
        """Each new task's place in a fair queue (rules.fair_seq)."""
        head = conn.execute(_FAIR_FRONT, (queue_id,)).fetchone()
        front = 0 if head is None else head[0]
        keys = {task.key for task in tasks}
        named = msgspec.json.encode(sorted(k for k in keys if k is not None))
        last: dict[str | None, int | None] = dict(
            conn.execute(_FAIR_LASTS, (queue_id, named)).fetchall()
        )
        if None in keys:
            last[None] = conn.execute(_FAIR_LAST, (queue_id, None)).fetchone()[0]
        return rules.fair_places([task.key for task in tasks], last, front)

    async def enqueue_once(
        self, queue: str, tasks: Sequence[NewTask], now: int, once: Idempotency
    ) -> Enqueued:
        def op(conn: sqlite3.Connection) -> Enqueued:
            queue_id = self._queues.id_of(queue)
            # One writer: nothing can come between this look and the insert below.
            found = conn.execute(
                "SELECT digest, ids, created FROM idempotency_keys"
                " WHERE queue_id=? AND key=? AND created>?",
                (queue_id, once.key, idempotency.fresh_since(now)),
            ).fetchone()
            if found is not None:
                digest, ids, created = found
                first = idempotency.replay(
                    queue, tasks, digest, idempotency.unpack_ids(ids), created, once
                )
                return Enqueued([self._current(conn, queue_id, t) for t in first], False)
            new = self._insert(conn, queue_id, queue, tasks, now)
            conn.execute(
                "INSERT OR REPLACE INTO idempotency_keys (queue_id, key, digest, ids, created)"
                " VALUES (?,?,?,?,?)",
                (queue_id, once.key, once.digest, idempotency.pack(new), now),
            )
            return Enqueued(new, True)

        return await self._writer.write(op)

    def _current(self, conn: sqlite3.Connection, queue_id: int, first: Task) -> Task:
        """A repeat's answer for a task of the first (see idempotency.current)."""
        if not idempotency.read_back(first):
            return first
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE id=? AND queue_id=?", (first.id, queue_id)
        ).fetchone()
        return idempotency.current(
            first, None if row is None else self._deps.view_of(conn, self._task(row))
        )

    async def prune_keys(self, before: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            # In batches: one write group must not hold the event loop for long.
            cursor = conn.execute(
                "DELETE FROM idempotency_keys WHERE (queue_id, key) IN (SELECT queue_id, key"
                " FROM idempotency_keys WHERE created<=? ORDER BY created LIMIT ?)",
                (before, idempotency.PRUNE_BATCH),
            )
            return cursor.rowcount

        return await self._writer.write(op)

    async def poll(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        def op(conn: sqlite3.Connection) -> PollResult | Poll:
            queue_id = self._queues.id_of(queue)
            changes: list[Change] = []
            cancel: list[int] = []
            done = None
            if len(acks) == 1:  # the common case: one write at most, no savepoint needed
                ack = acks[0]
                task_id = parse_task_id(ack.task_id) if ack.status == "done" else None
                if task_id is not None:
                    done = (task_id, ack)  # made with the group's others
                else:
                    self._batches.apply_ack(
                        conn, queue, queue_id, options, ack, 0, now, changes, worker, True, cancel
                    )
            elif acks:
                # A later ack may be refused after earlier ones were written: undo them then.
                conn.execute("SAVEPOINT acks")
                try:
                    self._batches.apply_acks(
                        conn, queue, queue_id, options, acks, now, changes, worker, cancel
                    )
                except KatarError:
                    conn.execute("ROLLBACK TO acks")
                    raise
                finally:
                    conn.execute("RELEASE acks")
            if limit > 0 or done is not None:
                poll = Poll(queue, queue_id, options, worker, limit, now, changes, done)
                poll.cancel = cancel
                self._batches.polls.append(poll)
                return poll  # its events are kept as the group finishes it
            if changes and self._batches.notify is not None:
                keep_events(conn, self._batches.notify(changes))
            return PollResult([], changes, cancel=cancel)

        outcome = await self._writer.write(op)
        if isinstance(outcome, Poll):
            if outcome.error is not None:  # its "done", refused as the group finished it
                raise outcome.error
            # A limit held the poll back when it cut the take and the claim filled what remained.
            held = outcome.held if len(outcome.delivered) >= outcome.take else None
            return PollResult(
                outcome.delivered, outcome.changes, outcome.retry_at, outcome.cancel, held
            )
        return outcome

    async def get_task(self, queue: str, task_id: int) -> Task | None:
        def op(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
            if row is None or self._queues.names.get(row[1]) != queue:
                return None
            return self._deps.view_of(conn, self._task(row))

        return await self._writer.read(op)

    async def linked(
        self,
        queue: str,
        task_id: int,
        limit: int,
        after: int,
        queues: Collection[str] | None = None,
        parents: bool = False,
    ) -> list[Task] | None:
        known = self._queues.ids
        queue_ids = None if queues is None else [known[q] for q in queues if q in known]
        return await self._writer.read(
            lambda conn: self._deps.linked(conn, queue, task_id, (limit, after), queue_ids, parents)
        )

    async def queues_of(self, ids: Sequence[int]) -> dict[int, str]:
        def op(conn: sqlite3.Connection) -> dict[int, str]:
            rows = conn.execute(
                "SELECT id, queue_id FROM tasks WHERE id IN (SELECT value FROM json_each(?))",
                (msgspec.json.encode(list(ids)),),
            )
            names = self._queues.names
            return {task_id: names[queue_id] for task_id, queue_id in rows if queue_id in names}

        return await self._writer.read(op)

    async def list_tasks(
        self, queue: str, where: TaskFilter, limit: int, after: int, newest_first: bool = False
    ) -> list[Task]:
        queue_id = self._queues.id_of(queue)
        conditions, params = self._where(where)
        if newest_first:
            page, order = (" AND id<?" if after else ""), " ORDER BY id DESC"
        else:
            page, order = " AND id>?", " ORDER BY id"
        sql = f"SELECT {_COLUMNS} FROM tasks WHERE queue_id=?{conditions}{page}{order} LIMIT ?"
        args = (queue_id, *params, *((after,) if page else ()), limit)

        def op(conn: sqlite3.Connection) -> list[Task]:
            return [
                self._deps.view_of(conn, self._task(row))
                for row in conn.execute(sql, args).fetchall()
            ]

        return await self._writer.read(op)

    async def count_tasks(self, queue: str, where: TaskFilter) -> int:
        queue_id = self._queues.id_of(queue)
        conditions, params = self._where(where)
        sql = f"SELECT count(*) FROM tasks WHERE queue_id=?{conditions}"

        def op(conn: sqlite3.Connection) -> int:
            count: int = conn.execute(sql, (queue_id, *params)).fetchone()[0]
            return count

        return await self._writer.read(op)

    @staticmethod
    def _where(where: TaskFilter) -> tuple[str, list[Any]]:
        conditions, params = where_sql(where, _DIALECT)
        if where.states is not None and _RESTING.issuperset(where.states):
            # Resting tasks have their own partial index: SQLite takes it when the query
            # repeats the index's condition word for word.
            conditions += f" AND {_sql.AT_REST}"
        return conditions, params

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
        queue_id = self._queues.id_of(queue)
        conditions, params = self._where(where)
        select = f"FROM tasks WHERE queue_id=?{conditions} AND id>? ORDER BY id LIMIT ?"
        in_sql = rules.bulk_in_sql(action, report, queue_id in self._queues.fair)
        args = (queue_id, *params, after, limit)

        def op(conn: sqlite3.Connection) -> BulkStep:
            if not in_sql:
                rows = conn.execute(f"SELECT {_COLUMNS} {select}", args).fetchall()
                step = self._bulk_by_rules(conn, queue_id, action, rows, now, after)
                self._keep_events(conn, step.changes)
                return step
            rows = conn.execute(
                # A retry of a task with a unique_key or a debounce_key goes by the rules.
                f"SELECT id, state, coalesce(unique_key, debounce_key), parents + children"
                f" {select}",
                args,
            ).fetchall()
            if not rows:
                return BulkStep(0, 0, after, [])
            ids, apart = rules.bulk_split(
                action, ((r[0], _sql.STATES[r[1]], r[2], bool(r[3])) for r in rows)
            )
            times = () if action == "delete" else (now,)
            conn.execute(_BULK_SQL[action], (*times, _json(ids)))
            step = BulkStep(len(rows), len(ids), rows[-1][0], [])
            if not apart:
                return step
            sql = f"SELECT {_COLUMNS} FROM tasks WHERE id IN ({_JSON_IDS})"
            full = conn.execute(sql, (_json(sorted(apart)),)).fetchall()
            if action == "delete":
                deleted = [self._task(row) for row in full]
                also: list[Change] = []
                self._delete(conn, deleted, now, also)
                gone = {task.id for task in deleted} | set(ids)
                settled.extend(change for change in also if change.task.id not in gone)
                self._keep_events(conn, settled)
                return step._replace(changed=step.changed + len(deleted))
            more = self._bulk_by_rules(conn, queue_id, action, full, now, after)
            self._keep_events(conn, more.changes)
            return step._replace(changed=step.changed + more.changed, changes=more.changes)

        settled: list[Change] = []
        step = await self._writer.write(op)
        self.report(settled)
        return step

    def _delete(
        self, conn: sqlite3.Connection, tasks: Sequence[Task], now: int, also: list[Change]
    ) -> None:
        """Remove tasks: those that waited for them are cancelled (``also``)."""
        for task in tasks:
            self._deps.settle(conn, task, None, now, also)
        conn.execute(_BULK_SQL["delete"], (_json([task.id for task in tasks]),))
        self._deps.forget(conn, [task.id for task in tasks if task.parents])

    def _bulk_by_rules(
        self,
        conn: sqlite3.Connection,
        queue_id: int,
        action: str,
        rows: list[Any],
        now: int,
        after: int,
    ) -> BulkStep:
        """A step of a retry or a cancel, task by task, as rules.bulk_change says."""
        if not rows:
            return BulkStep(0, 0, after, [])
        changes: list[Change] = []
        also: list[Change] = []  # the tasks that waited for those cancelled
        for row in rows:
            task = self._task(row)
            if also:  # a cascade of this step may have changed it
                again = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id=?", (task.id,))
                task = self._task(again.fetchone())
            new = rules.bulk_change(task, action, now, self._deps.still_waits(conn, task))
            if new is None:
                continue
            try:
                change = self._change(conn, queue_id, task, new, now, also)
            except Conflict:
                continue  # a retry whose unique_key another task holds now
            if change is not None:
                changes.append(change)
        return BulkStep(len(rows), len(changes), rows[-1][0], changes + also)

    def _move(self, conn: sqlite3.Connection, old: Task, task: Task) -> None:
        """Write the row of a task moved to another queue (a _settle.Move step),
        ``old`` before, creating that queue with default options when there is none."""
        queue_id = self._queues.ids.get(task.queue)
        if queue_id is None:
            queue_id = conn.execute(_CREATE_QUEUE, (task.queue, _DEFAULT_OPTIONS)).fetchone()[0]
            self._queues.added(task.queue, queue_id)
        place = None
        if queue_id in self._queues.fair:
            (place,) = self._fair_places(conn, queue_id, [task])
        full = rules.leaves_behind(old)
        conn.execute(_MOVE_FULL if full else _MOVE, move_values(task, queue_id, place, full))

    async def redrive(
        self,
        queue: str,
        to: str | None,
        where: TaskFilter,
        now: int,
        after: int,
        limit: int,
        allowed: Collection[str] | None = None,
        job: MoveLease | None = None,
    ) -> RedriveStep:
        queue_id = self._queues.id_of(queue)
        conditions, params = self._where(where)
        select = f"SELECT {_COLUMNS} FROM tasks WHERE queue_id=?{conditions} AND id>?"
        args = (queue_id, *params, after, limit)

        def op(conn: sqlite3.Connection) -> RedriveStep:
            held = None
            if job is not None:  # one writer: nothing comes between this read and the step
                found = conn.execute(_MOVES.get, (job.job,)).fetchone()
                held = None if found is None else job_from_row(found)
                if held is None or not runs_on(held, job.runner):
                    return RedriveStep(0, 0, after, [], job=held)
            rows = conn.execute(f"{select} ORDER BY id LIMIT ?", args).fetchall()
            changes: list[Change] = []
            also: list[Change] = []  # none: a redrive moves tasks that do not end
            created: list[str] = []
            for row in rows:
                task = self._task(row)
                target = rules.redrive_target(task, to, allowed)
                if target is None or task.state not in rules.REDRIVE_STATES:
                    continue
                if target not in self._queues.ids:
                    created.append(target)
                new = rules.redriven(task, target, now)
                change = self._deps.write(conn, task, new, _KEEP, also)
                assert change is not None
                changes.append(change)
            moved = len(changes)
            if changes:
                self._keep_events(conn, changes + also)
            last = rows[-1][0] if rows else after
            if held is not None and job is not None:
                held = advanced(held, len(rows), moved, last, limit, now, job.until)
                conn.execute(_MOVES.advance, advance_values(held))
            return RedriveStep(len(rows), moved, last, changes + also, tuple(created), held)

        return await self._writer.write(op)

    async def move_start(self, job: MoveJob, keep: int) -> tuple[MoveJob, bool]:
        def op(conn: sqlite3.Connection) -> tuple[MoveJob, bool]:
            row = conn.execute(_MOVES.insert, insert_values(job)).fetchone()
            if row is None:
                return job_from_row(conn.execute(_MOVES.running, (job.queue,)).fetchone()), False
            conn.execute(_MOVES.prune, (job.queue, job.queue, keep))
            return job_from_row(row), True

        return await self._writer.write(op)

    async def move_list(self, queue: str, limit: int) -> list[MoveJob]:
        rows = await self._writer.read(
            lambda conn: conn.execute(_MOVES.list, (queue, limit)).fetchall()
        )
        return [job_from_row(row) for row in rows]

    async def move_get(self, job_id: int) -> MoveJob | None:
        row = await self._writer.read(lambda conn: conn.execute(_MOVES.get, (job_id,)).fetchone())
        return None if row is None else job_from_row(row)

    async def move_end(
        self,
        job_id: int,
        state: str,
        now: int,
        error: str | None = None,
        runner: str | None = None,
    ) -> MoveJob | None:
        def op(conn: sqlite3.Connection) -> MoveJob | None:
            conn.execute(_MOVES.end, (move_end_state(state), now, error, job_id, runner))
            row = conn.execute(_MOVES.get, (job_id,)).fetchone()
            return None if row is None else job_from_row(row)

        return await self._writer.write(op)

    async def move_take(self, runner: str, now: int, until: int) -> MoveJob | None:
        # A read first: the look every few seconds writes only when there is a job to take.
        if (
            await self._writer.read(lambda conn: conn.execute(_LEASE_PASSED, (now,)).fetchone())
            is None
        ):
            return None

        def op(conn: sqlite3.Connection) -> MoveJob | None:
            row = conn.execute(_MOVES.take, (runner, until, now, now)).fetchone()
            return None if row is None else job_from_row(row)

        return await self._writer.write(op)

    async def move_release(self, job_id: int, runner: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_MOVES.release, (job_id, runner))

        await self._writer.write(op)

    async def prune(self, queue: str, state: State, before: int, now: int, limit: int) -> int:
        queue_id = self._queues.id_of(queue)

        def op(conn: sqlite3.Connection) -> int:
            rows = conn.execute(_PRUNE, (queue_id, int(state), before, now, limit)).fetchall()
            self._deps.forget(conn, [task_id for task_id, parents in rows if parents])
            return len(rows)

        return await self._writer.write(op)

    async def heads(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            names = self._queues.names
            return {
                names[queue_id]: at
                for queue_id, at in conn.execute(_HEADS)
                if at is not None and queue_id in names
            }

        return await self._writer.read(op)

    async def running_by_worker(self) -> dict[tuple[str, str | None], int]:
        def op(conn: sqlite3.Connection) -> dict[tuple[str, str | None], int]:
            names = self._queues.names
            return {
                (names[queue_id], worker): count
                for queue_id, worker, count in conn.execute(_RUNNING_BY_WORKER)
                if queue_id in names
            }

        return await self._writer.read(op)

    async def limit_state(self, queue: str, options: QueueOptions, now: int) -> LimitState:
        queue_id = self._queues.id_of(queue)

        def op(conn: sqlite3.Connection) -> LimitState:
            keys = None
            if options.key_concurrency is not None:
                limit = options.key_concurrency
                keys = conn.execute(_KEYS_AT_LIMIT, (queue_id, limit)).fetchone()[0]
            return LimitState(None, keys)

        state = await self._writer.read(op)
        if options.key_rate is not None:
            found_keys = self._batches.key_buckets.get(queue_id)
            known = {} if found_keys is None else dict(found_keys.full_at)  # a copy: see below
            limited = rules.KeyRates(options.key_rate, now, known).limited_keys()
            state = state._replace(keys_rate_limited=limited)
        if options.rate is None:
            return state
        # The writer's thread refills and spends the bucket: look at a copy of it.
        found = self._batches.buckets.get(queue_id)
        tokens, at = (None, None) if found is None else (found.tokens, found.at)
        return state._replace(tokens=rules.Bucket.stored(options.rate, now, tokens, at).tokens)

    async def counts(self) -> dict[str, dict[State, int]]:
        def op(conn: sqlite3.Connection) -> dict[str, dict[State, int]]:
            result: dict[str, dict[State, int]] = {}
            names = dict(conn.execute("SELECT id, name FROM queues").fetchall())
            for name in names.values():
                result[name] = {}
            for sql in _COUNTS:
                for queue_id, state, count in conn.execute(sql):
                    if queue_id in names:
                        result[names[queue_id]][State(state)] = count
            return result

        return await self._writer.read(op)

    async def set_status(
        self, queue: str, task_id: int, status: str, now: int, edit: Edit | None = None
    ) -> Change | None:
        def op(conn: sqlite3.Connection) -> Change | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
            if row is None or self._queues.names.get(row[1]) != queue:
                raise TaskNotFound.named(task_id, queue)
            task = self._task(row)
            waits = self._deps.still_waits(conn, task)
            new = rules.change_status(task, status, now, waits, edit)
            if edit is not None and new is not None:
                # What the UPDATE of a status change leaves: an edit's data and key.
                conn.execute(_EDIT, (bytes(new.data), new.key, task.id))
            change = self._change(conn, row[1], task, new, now, settled)
            self._keep_events(conn, settled if change is None else [change, *settled])
            return (
                None
                if change is None
                else change._replace(task=self._deps.view_of(conn, change.task))
            )

        settled: list[Change] = []
        change = await self._writer.write(op)
        self.report(settled)
        return change

    def _change(
        self,
        conn: sqlite3.Connection,
        queue_id: int,
        task: Task,
        new: Task | None,
        now: int,
        also: list[Change],
    ) -> Change | None:
        """Write an operator's change to a task (a PATCH's, a bulk action's)."""
        if rules.retakes_key(task, new, now):
            keys = msgspec.json.encode([task.unique_key])
            for found in conn.execute(_HOLDERS, (queue_id, now, keys)):
                holder = self._task(found)
                if holder.id != task.id:
                    raise rules.key_taken(task, holder)
        if new is not None and new.debounce_key is None and task.debounce_key is not None:
            conn.execute(_UNDEBOUNCE, (task.id,))  # a retry: out of its debounce
        # A status change never finishes a task, so the queue's history option plays no
        # part: any options will do.
        change = self._deps.write(conn, task, new, _KEEP, also)
        if new is not None and new.key != task.key and queue_id in self._queues.fair:
            conn.execute(_UNPLACE, (task.id,))  # an edit's new key: placed as that key's task
        if change is not None and queue_id in self._queues.fair and change.task.state in UNFINISHED:
            # A retry of a task finished before the queue became fair: it needs a place.
            (place,) = self._fair_places(conn, queue_id, [change.task])
            conn.execute(_PLACE_ONE, (place, task.id))
        return change

    async def delete_task(self, queue: str, task_id: int, now: int | None = None) -> bool:
        when = now_ms() if now is None else now

        def op(conn: sqlite3.Connection) -> bool:
            queue_id = self._queues.id_of(queue)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE id=? AND queue_id=?", (task_id, queue_id)
            ).fetchone()
            if row is None:
                return False
            self._delete(conn, [self._task(row)], when, settled)
            self._keep_events(conn, settled)
            return True

        settled: list[Change] = []
        deleted = await self._writer.write(op)
        self.report(settled)
        return deleted

    async def expire(self, queues: Mapping[str, QueueOptions], now: int) -> list[Change]:
        def op(conn: sqlite3.Connection) -> list[Change]:
            changes: list[Change] = []
            for sql, decide in (
                (
                    _LEASES_OVER,
                    True,
                ),
                (f"SELECT {_COLUMNS} FROM tasks WHERE {_EXPIRED}", None),
                (
                    _DUE,
                    False,
                ),
            ):
                tasks = [self._task(row) for row in conn.execute(sql, (now, _EXPIRE_BATCH))]
                # Expiries settle the tasks that wait for them: see _reap.
                for task in expiries(tasks, changes, now) if decide is None else tasks:
                    options = queues.get(task.queue)
                    if options is None:
                        continue
                    new = (
                        rules.expire(task, now)
                        if decide is None
                        else rules.expire_lease(task, options, now)
                        if decide
                        else rules.promote(task, now)
                    )
                    change = self._deps.write(conn, task, new, options, changes)
                    if change is not None:
                        changes.append(change)
            # Finished tasks kept only while they held their unique_key (rules.discard):
            # removed at the first reap after that.
            # Only queues without history keep tasks so: their ids are ours, safe in the SQL.
            dropping = [
                queue_id
                for name, options in queues.items()
                if not options.persistent and (queue_id := self._queues.ids.get(name)) is not None
            ]
            kept = _KEPT.format(ids=",".join(map(str, dropping)))
            rows = conn.execute(kept, (now, _EXPIRE_BATCH)).fetchall() if dropping else []
            for row in rows:
                task = self._task(row)
                options = queues.get(task.queue)
                if options is not None and rules.sweepable(task, options, now):
                    conn.execute("DELETE FROM tasks WHERE id=?", (task.id,))
                    if task.parents:
                        self._deps.forget(conn, [task.id])
            self._keep_events(conn, changes)
            return changes

        return await self._writer.write(op)

    async def next_deadline(self) -> int | None:
        # Each min() is one step down the partial indexes tasks_lease and tasks_due.
        row = await self._writer.read(lambda conn: conn.execute(_NEXT_DEADLINE).fetchone())
        return None if row[0] is None else int(row[0])

    # -- schedules ---------------------------------------------------------------------------

    async def load_schedules(self) -> dict[str, Schedule]:
        rows = await self._writer.read(lambda conn: conn.execute(_SCHEDULES).fetchall())
        return {row[0]: _schedule(row) for row in rows}

    async def save_schedule(self, name: str, spec: ScheduleSpec, cursor: int | None) -> Schedule:
        encoded = msgspec.json.encode(spec)

        def op(conn: sqlite3.Connection) -> Schedule:
            row = conn.execute(
                "INSERT INTO schedules (name, spec, cursor) VALUES (?, ?, coalesce(?, 0))"
                " ON CONFLICT (name)"
                " DO UPDATE SET spec = excluded.spec, cursor = max(coalesce(?, cursor), cursor)"
                " RETURNING name, spec, cursor, last_tick, last_task",
                (name, encoded, cursor, cursor),
            ).fetchone()
            return _schedule(row)

        return await self._writer.write(op)

    async def outbox_trim(self, queues: Collection[str], keep: int) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            dropped: dict[str, int] = {}
            for queue in queues:
                count = conn.execute(
                    "DELETE FROM outbox WHERE queue = ?1 AND id <= (SELECT id FROM outbox"
                    " WHERE queue = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    (queue, keep),
                ).rowcount
                if count > 0:
                    dropped[queue] = count
            return dropped

        return await self._writer.write(op)

    async def outbox_pending(self, queue: str) -> tuple[int, int]:
        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            pending, failing = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE attempts > 0) FROM outbox WHERE queue = ?",
                (queue,),
            ).fetchone()
            return pending, failing

        return await self._writer.read(op)

    async def outbox_take(self, limit: int, now: int, lease_ms: int) -> list[OutboxRow]:
        def op(conn: sqlite3.Connection) -> list[OutboxRow]:
            # The first event of each task, unless held; one writer: none taken twice.
            rows = conn.execute(
                "UPDATE outbox SET held_until = ? WHERE id IN (SELECT o.id FROM outbox o"
                " WHERE o.held_until <= ? AND NOT EXISTS (SELECT 1 FROM outbox p"
                " WHERE p.task_id = o.task_id AND p.id < o.id) ORDER BY o.id LIMIT ?)"
                " RETURNING id, queue, task_id, body, attempts",
                (now + lease_ms, now, limit),
            ).fetchall()
            return sorted(OutboxRow(*row) for row in rows)

        return await self._writer.write(op)

    async def outbox_delete(self, ids: Sequence[int]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

        await self._writer.write(op)

    async def outbox_retry(self, event_id: int, until: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET held_until = ?, attempts = attempts + 1 WHERE id = ?",
                (until, event_id),
            )

        await self._writer.write(op)

    async def delete_schedule(self, name: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM schedules WHERE name=?", (name,)).rowcount > 0

        return await self._writer.write(op)

    async def fire_schedule(
        self, name: str, cursor: int, tick: int, task: NewTask | None, now: int
    ) -> Fired:
        def op(conn: sqlite3.Connection) -> Fired:
            # One writer: nothing comes between this compare and the set below.
            row = conn.execute(
                "SELECT spec, last_task FROM schedules WHERE name=? AND cursor=?", (name, cursor)
            ).fetchone()
            if row is None:
                return Fired(False)
            spec, last_task = _spec_decoder.decode(row[0]), row[1]
            made = None
            if task is not None and not (spec.overlap == "skip" and _unfinished(conn, last_task)):
                queue_id = self._queues.id_of(spec.queue)
                (created,) = self._insert(conn, queue_id, spec.queue, [task], now)
                conn.execute(
                    "UPDATE tasks SET schedule=?, scheduled_for=? WHERE id=?",
                    (name, tick, created.id),
                )
                made = msgspec.structs.replace(created, schedule=name, scheduled_for=tick)
                last_task = made.id
            conn.execute(
                "UPDATE schedules SET cursor=?, last_tick=?, last_task=? WHERE name=?",
                (tick, tick, last_task, name),
            )
            return Fired(True, made)

        return await self._writer.write(op)


_SCHEDULES: Final = "SELECT name, spec, cursor, last_tick, last_task FROM schedules"


def _schedule(row: Sequence[Any]) -> Schedule:
    name, spec, cursor, last_tick, last_task = row
    return stored_schedule(name, spec, cursor, last_tick, last_task)


def _unfinished(conn: sqlite3.Connection, task_id: int | None) -> bool:
    """Whether the task exists and is paused, queued or in progress (overlap "skip")."""
    if task_id is None:
        return False
    row = conn.execute("SELECT state FROM tasks WHERE id=?", (task_id,)).fetchone()
    return row is not None and State(row[0]) in UNFINISHED


# Tasks never delivered whose expiry has come (rules.expiry), by the partial index
# tasks_expiry, in its order: the earliest first (see _reap).
_EXPIRED: Final = f"{_sql.HAS_EXPIRY} AND expires_at<=? ORDER BY expires_at, id LIMIT ?"
_KEPT: Final = (
    f"SELECT {COLUMNS} FROM tasks WHERE unique_until IS NOT NULL AND {_sql.ENDED_KEPT}"
    " AND queue_id IN ({ids}) AND unique_until<=? LIMIT ?"
)
_NEXT_DEADLINE: Final = (
    f"SELECT min(t) FROM (SELECT min(lease_until) AS t FROM tasks WHERE state = {_sql.RUNNING}"
    f" UNION ALL SELECT min(run_at) FROM tasks WHERE state = {_sql.SCHEDULED}"
    f" UNION ALL SELECT min(expires_at) FROM tasks WHERE {_sql.HAS_EXPIRY})"
)
# The leases run out and the delays over, by the partial indexes tasks_lease and tasks_due.
_LEASES_OVER: Final = (
    f"SELECT {COLUMNS} FROM tasks WHERE state={_sql.RUNNING} AND lease_until<=? LIMIT ?"
)
_DUE: Final = f"SELECT {COLUMNS} FROM tasks WHERE state={_sql.SCHEDULED} AND run_at<=? LIMIT ?"

_KEEP: Final = QueueOptions(persistent=True)
_DIALECT: Final = Dialect(
    param="?",
    ids="id IN (SELECT value FROM json_each(?))",
    ids_value=lambda ids: msgspec.json.encode(list(ids)),
    contains="instr(error, ?) > 0",
)
_JSON_IDS: Final = "SELECT value FROM json_each(?)"
# A bulk action's step in SQL (Store.bulk): what rules.bulk_change does, for the tasks given.
# A retry moves the task's last delivery into its history (rules.archive: the old row's
# attempts, worker, started_at, updated_at as its end, its outcome, its error).
_BULK_SQL: Final = {
    "delete": f"DELETE FROM tasks WHERE id IN ({_JSON_IDS})",
    "cancel": f"UPDATE tasks SET state={_sql.CANCELLED}, updated_at=? WHERE id IN ({_JSON_IDS})",
    "retry": (
        f"UPDATE tasks SET state={_sql.READY}, run_at=NULL, expires_at=NULL,"
        f" attempt_base=attempts, error=CASE WHEN state={_sql.CANCELLED} THEN NULL ELSE error"
        " END, cancel_requested=0, updated_at=?,"
        " history=CASE WHEN started_at IS NULL THEN history ELSE json_insert(CASE WHEN"
        f" json_array_length(coalesce(history, '[]')) >= {HISTORY_LENGTH} THEN"
        " json_remove(history, '$[0]') ELSE coalesce(history, '[]') END, '$[#]',"
        " json_array(attempts, worker, started_at, updated_at,"
        f" CASE state WHEN {_sql.FAILED} THEN 'failed' ELSE 'cancelled' END, error)) END,"
        " started_at=NULL"
        f" WHERE id IN ({_JSON_IDS})"
    ),
}


def _json(ids: list[int]) -> bytes:
    return msgspec.json.encode(ids)


# Retention (rules.prune_before, holds_key: in SQL): finished at or before the time given,
# and holding no unique_key, by the partial index tasks_at_rest in id order (the oldest first).
_PRUNE: Final = (
    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE queue_id=? AND state=?"
    f" AND {_sql.AT_REST} AND updated_at<=? AND (unique_until IS NULL OR unique_until<=?)"
    " ORDER BY id LIMIT ?) RETURNING id, parents"
)
# Each queue's head, one step down the index tasks_ready.
_HEADS: Final = (
    f"SELECT id, (SELECT updated_at FROM tasks WHERE queue_id=queues.id AND state={_sql.READY}"
    " ORDER BY priority DESC, id LIMIT 1) FROM queues"
)
_RUNNING_BY_WORKER: Final = (
    f"SELECT queue_id, worker, count(*) FROM tasks WHERE state={_sql.RUNNING}"
    " GROUP BY queue_id, worker"
)
