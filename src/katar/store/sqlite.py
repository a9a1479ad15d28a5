"""``sqlite:///path.db``: the default store, one file on local disk.

One connection does all the writing, on the event loop's thread. Writes requested over two
turns of the loop are queued; one callback then runs them all in a single transaction,
commits once, and only then answers them all (group commit). So the requests that arrive
together share one commit, and no answer is sent before its change is committed. Each
operation refuses a bad request before it writes anything, so a refused request changes
nothing while the rest of its group commits. Running the writes on the loop's thread rather
than a thread of their own was measured faster on two cores: no hand-off between threads and
no contention for the GIL. What could block the loop for long is kept off it: reads run on
their own connection and thread (WAL lets them proceed while the writer writes), and a
checkpointer thread copies the WAL back into the database.

With ``synchronous=NORMAL`` (the default) a committed transaction survives the process being
killed; ``?synchronous=full`` in the URL makes it survive a power cut too, at the cost of a
disk flush per commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec

from katar.core import idempotency, rules
from katar.core.idempotency import Idempotency
from katar.core.model import Ack, NewTask, QueueOptions, State, Task, parse_task_id
from katar.errors import (
    ConfigError,
    KatarError,
    QueueNotFound,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
)
from katar.store._rows import (
    CLAIMED_COLUMNS,
    COLUMNS,
    claimed_from_row,
    task_from_row,
    update_values,
)
from katar.store.base import Change, Enqueued, PollResult, Store

T = TypeVar("T")
log = logging.getLogger("katar")

SCHEMA_VERSION: Final = 4  # 4: idempotency_keys
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
    lease_until INTEGER
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

_COLUMNS: Final = COLUMNS
# Parameters on the hot paths are ints and bytearrays only. Python's sqlite3 binds int, float,
# str and bytearray directly, but asks its adapter registry about anything else, None and
# bytes included: ~0.5 to 1 us a parameter, measured, which was a third of a bulk enqueue.
# So a task's data goes in as a bytearray, None is written as NULL in the SQL, and "no
# attempt named" is 0 (attempts start at 1).
_INSERT: Final = (
    "INSERT INTO tasks (id, queue_id, state, priority, data, created_at, updated_at)"
    " VALUES (?,?,?,?,?,?,?)"
)
_INSERT_LATER: Final = (
    "INSERT INTO tasks (id, queue_id, state, priority, data, created_at, updated_at, run_at)"
    " VALUES (?,?,?,?,?,?,?,?)"
)
_UPDATE: Final = (
    "UPDATE tasks SET state=?, priority=?, attempts=?, attempt_base=?, error=?, result=?,"
    " worker=?, updated_at=?, run_at=?, lease_until=? WHERE id=?"
)
# The claim in one statement. It does what rules.claimed does, in SQL, because this is the
# hot path of every worker's poll.
_CLAIM: Final = (
    "UPDATE tasks SET state=3, attempts=attempts+1, worker=?, lease_until=?, run_at=NULL,"
    " updated_at=? WHERE id IN (SELECT id FROM tasks WHERE queue_id=? AND state=1"
    f" ORDER BY priority DESC, id LIMIT ?) RETURNING {CLAIMED_COLUMNS}"
)
_CLAIM_ANONYMOUS: Final = _CLAIM.replace("worker=?", "worker=NULL")  # no worker name given
# A worker's "done" for the current delivery: update, or delete in a queue without history.
# {returning} is every column, or only the id when nobody needs the finished tasks.
_CURRENT: Final = "id=? AND queue_id=? AND state=3 AND attempts=coalesce(nullif(?, 0), attempts)"
_DONE: Final = (
    "UPDATE tasks SET state=4, result=?, error=NULL, lease_until=NULL, updated_at=?"
    f" WHERE {_CURRENT} RETURNING {{returning}}"
)
_DONE_DROP: Final = f"DELETE FROM tasks WHERE {_CURRENT} RETURNING {{returning}}"
# The same for many acks at once; {rows} is "(?,?,?)" per ack: (id, attempt, result), or
# "(?,?)" when the task is dropped (its result is not kept).
_DONE_MATCH: Final = (
    "t.id = v.column1 AND t.queue_id = ? AND t.state = 3"
    " AND t.attempts = coalesce(nullif(v.column2, 0), t.attempts)"
)
_DONE_MANY: Final = (
    "UPDATE tasks AS t SET state=4, result=v.column3, error=NULL, lease_until=NULL,"
    " updated_at=? FROM (VALUES {rows}) AS v WHERE " + _DONE_MATCH + " RETURNING {returning}"
)
_DONE_DROP_MANY: Final = (
    "DELETE FROM tasks WHERE id IN (SELECT t.id FROM tasks AS t JOIN (VALUES {rows}) AS v"
    " ON " + _DONE_MATCH + ") RETURNING {returning}"
)
# The same when no ack names its delivery, so there is nothing to match but ids: no join
# (a tenth fewer instructions per task); {ids} is "?" per ack.
_DONE_DROP_IDS: Final = (
    "DELETE FROM tasks WHERE id IN ({ids}) AND queue_id=? AND state=3 RETURNING {returning}"
)
_DONE_CHUNK: Final = 300  # acks per statement: 3 variables each, well under SQLite's limit
_RESTING: Final = frozenset({State.PAUSED, State.DONE, State.FAILED, State.CANCELLED})
# Counts by state, each query served by a partial index.
_COUNTS: Final = (
    "SELECT queue_id, 1, count(*) FROM tasks WHERE state = 1 GROUP BY queue_id",
    "SELECT queue_id, 2, count(*) FROM tasks WHERE state = 2 GROUP BY queue_id",
    "SELECT queue_id, 3, count(*) FROM tasks WHERE state = 3 GROUP BY queue_id",
    f"SELECT queue_id, state, count(*) FROM tasks WHERE {_AT_REST} GROUP BY queue_id, state",
)
_EXPIRE_BATCH: Final = 1000
# How many times the event loop goes round (reading the sockets each time) between a group's
# first write and its commit. Under load each round brings the requests that arrived during
# the last: waiting two rounds took a group from ~11 polls to more and the one-task drain from
# ~22,000 to ~26,000 tasks/s (32 connections, wrk, same sitting); the dispatch latency's p99
# did not move (0.65 ms). Idle, a round with nothing to do costs microseconds.
_GATHER_ROUNDS: Final = 2

_Op = Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class _Poll:
    """A poll whose "done" and claim are made with the group's others at the end of its
    transaction (see SQLiteStore._finish_polls)."""

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


_CHECKPOINT_INTERVAL: Final = 0.5  # seconds between checkpoints of the WAL
_options_decoder: Final = msgspec.json.Decoder(QueueOptions)


def parse_url(url: str) -> tuple[str, str]:
    """The file path and the ``synchronous`` setting of a ``sqlite://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise ConfigError(
            f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = parts.path[1:]
    if not path:
        raise ConfigError(f"invalid SQLite URL {url!r}: it names no file")
    query = parse_qs(parts.query)
    unknown = set(query) - {"synchronous"}
    if unknown:
        raise ConfigError(f"unknown SQLite URL parameter(s): {', '.join(sorted(unknown))}")
    synchronous = query.get("synchronous", ["normal"])[-1].upper()
    if synchronous not in ("NORMAL", "FULL"):
        raise ConfigError("SQLite URL parameter synchronous must be normal or full")
    return path, synchronous


def _translate(exc: sqlite3.Error) -> StoreError:
    # Never OutcomeUnknown: the database is a file of this process, so a COMMIT that
    # returns an error did not commit (SQLite's atomic commit), and one that was never
    # answered means the process died, and with it the request.
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"SQLite is unavailable: {exc}")
    return StoreError(f"SQLite failed: {exc}")


class SQLiteStore(Store):
    """Queues and tasks in one SQLite database file."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._path, self._synchronous = parse_url(url)
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._polls: list[_Poll] = []  # the running group's polls, finished together
        self._flush_scheduled = False
        self._rounds = 0  # times the loop went round since the first pending write
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._written = threading.Event()  # a commit wrote: the WAL has pages to copy back
        self._written.set()
        self._changes = 0  # the writer's total_changes when _written was last set
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="katar-sqlite-read")
        self._read_conn: sqlite3.Connection | None = None
        self._queue_ids: dict[str, int] = {}
        self._queue_names: dict[int, str] = {}
        self._last_id = 0

    # -- connections and threads ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, cached_statements=256
            )
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self._path!r}: {exc}") from exc
        return conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(self._reader, self._prepare)
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
        self._conn = conn
        self._loop = loop
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="katar-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _prepare(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the database {self._path!r} was made by a newer Katar "
                    f"(schema {version}, this one knows {SCHEMA_VERSION})"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._load_ids(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"cannot use SQLite database {self._path!r}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._read_conn = self._connect()
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            if self._pending:
                self._flush()
            conn, self._conn = self._conn, None
            conn.close()
        self._stopping.set()
        self._written.set()
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        if self._read_conn is not None:
            conn, self._read_conn = self._read_conn, None
            await asyncio.get_running_loop().run_in_executor(self._reader, conn.close)
        self._reader.shutdown(wait=True)

    def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database off the event loop, so that a commit never
        waits for a checkpoint's writes and flush."""
        try:
            conn = self._connect()
        except StoreError:
            log.exception("the SQLite checkpointer cannot open the database")
            return
        try:
            # At most every _CHECKPOINT_INTERVAL, and only after a commit that wrote: an
            # idle server's threads do not wake (each wake-up is CPU on a virtual machine).
            while True:
                self._written.wait()
                if self._stopping.is_set():
                    break
                self._written.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    log.warning("SQLite checkpoint failed; trying again", exc_info=True)
                    self._written.set()
                if self._stopping.wait(_CHECKPOINT_INTERVAL):
                    break
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            log.warning("final SQLite checkpoint failed", exc_info=True)
        finally:
            conn.close()

    def _gather(self) -> None:
        """Flush the pending writes, once the loop has gone round _GATHER_ROUNDS times."""
        if self._rounds < _GATHER_ROUNDS and self._loop is not None:
            self._rounds += 1
            self._loop.call_soon(self._gather)
            return
        self._flush()

    def _flush(self) -> None:
        """Run every pending write in one transaction, then answer them (group commit)."""
        self._flush_scheduled = False
        self._rounds = 0
        group, self._pending = self._pending, []
        conn = self._conn
        if conn is None:
            failure = StoreUnavailable("the SQLite store is closed")
            outcomes: list[tuple[bool, Any]] = [(False, failure)] * len(group)
        else:
            outcomes = self._run_group(conn, [op for op, _ in group])
            if conn.total_changes != self._changes:
                self._changes = conn.total_changes
                self._written.set()
        for (_op, future), (ok, value) in zip(group, outcomes, strict=True):
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _run_group(self, conn: sqlite3.Connection, ops: list[_Op]) -> list[tuple[bool, Any]]:
        """Run the operations in one transaction.

        Every operation raises Katar's own errors (a bad request) before it writes
        anything, so such an error needs no undoing and the others still commit. A SQLite
        error can strike after a write: it undoes the whole group, and every operation of
        it fails with StoreUnavailable.
        """
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                try:
                    outcomes.append((True, op(conn)))
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    outcomes.append((False, exc))
            if self._polls:
                self._finish_polls(conn)
                outcomes = [
                    (False, value.error)
                    if ok and isinstance(value, _Poll) and value.error is not None
                    else (ok, value)
                    for ok, value in outcomes
                ]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._polls = []
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # What an operation learned about ids or queues may be undone: reload it.
            with contextlib.suppress(sqlite3.Error):
                self._load_ids(conn)
            return [(False, _translate(exc))] * len(ops)
        return outcomes

    def _load_ids(self, conn: sqlite3.Connection) -> None:
        """Read the queues' ids and the highest task id issued."""
        rows = conn.execute("SELECT id, name FROM queues").fetchall()
        self._queue_ids = {name: qid for qid, name in rows}
        self._queue_names.update({qid: name for qid, name in rows})
        self._last_id = max(self._last_id, _last_issued(conn))

    def _write(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._conn is None or self._loop is None:
            raise StoreUnavailable("the SQLite store is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._pending.append((op, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._gather)
        return future

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._read_conn is None:
                raise StoreUnavailable("the SQLite store is not open")
            try:
                return op(self._read_conn)
            except sqlite3.Error as exc:
                raise _translate(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    # -- rows and tasks --------------------------------------------------------------------

    def _task(self, row: Sequence[Any]) -> Task:
        return task_from_row(row, self._queue_names[row[1]])

    def _queue_id(self, queue: str) -> int:
        try:
            return self._queue_ids[queue]
        except KeyError:
            raise QueueNotFound(queue=queue) from None

    def _store_change(
        self, conn: sqlite3.Connection, old: Task, new: Task | None, options: QueueOptions
    ) -> Change | None:
        if new is None:
            return None
        if rules.discard(new, options):
            conn.execute("DELETE FROM tasks WHERE id=?", (new.id,))
        else:
            conn.execute(
                _UPDATE,
                update_values(new),
            )
        return Change(new, old.state)

    # -- the contract ------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    async def load_queues(self) -> dict[str, QueueOptions]:
        rows = await self._read(
            lambda conn: conn.execute("SELECT name, options FROM queues").fetchall()
        )
        return {name: _options_decoder.decode(options) for name, options in rows}

    async def save_queue(self, name: str, options: QueueOptions) -> None:
        encoded = msgspec.json.encode(options)

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "INSERT INTO queues (name, options) VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET options = excluded.options RETURNING id",
                (name, encoded),
            ).fetchone()
            self._queue_ids[name] = row[0]
            self._queue_names[row[0]] = name

        await self._write(op)

    async def delete_queue(self, name: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            queue_id = self._queue_id(name)
            count: int = conn.execute("DELETE FROM tasks WHERE queue_id=?", (queue_id,)).rowcount
            conn.execute("DELETE FROM queues WHERE id=?", (queue_id,))
            conn.execute("DELETE FROM idempotency_keys WHERE queue_id=?", (queue_id,))
            del self._queue_ids[name]
            # The id -> name entry stays: reads of the old queue's rows may still be in flight.
            return count

        return await self._write(op)

    async def enqueue(self, queue: str, tasks: Sequence[NewTask], now: int) -> list[Task]:
        def op(conn: sqlite3.Connection) -> list[Task]:
            return self._insert(conn, self._queue_id(queue), queue, tasks, now)

        return await self._write(op)

    def _insert(
        self,
        conn: sqlite3.Connection,
        queue_id: int,
        queue: str,
        tasks: Sequence[NewTask],
        now: int,
    ) -> list[Task]:
        first = self._last_id + 1
        created = [
            rules.new_task(queue, spec, task_id, now)
            for task_id, spec in zip(itertools.count(first), tasks)
        ]

        def row(t: Task) -> tuple[Any, ...]:
            return (t.id, queue_id, int(t.state), t.priority, bytearray(t.data), now, now)

        ready = [row(t) for t in created if t.run_at is None]
        if ready:
            conn.executemany(_INSERT, ready)
        if len(ready) < len(created):
            later = [(*row(t), t.run_at) for t in created if t.run_at is not None]
            conn.executemany(_INSERT_LATER, later)
        self._last_id = first + len(created) - 1
        return created

    async def enqueue_once(
        self, queue: str, tasks: Sequence[NewTask], now: int, once: Idempotency
    ) -> Enqueued:
        def op(conn: sqlite3.Connection) -> Enqueued:
            queue_id = self._queue_id(queue)
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
                return Enqueued(first, False)
            new = self._insert(conn, queue_id, queue, tasks, now)
            conn.execute(
                "INSERT OR REPLACE INTO idempotency_keys (queue_id, key, digest, ids, created)"
                " VALUES (?,?,?,?,?)",
                (queue_id, once.key, once.digest, idempotency.pack_ids([t.id for t in new]), now),
            )
            return Enqueued(new, True)

        return await self._write(op)

    async def prune_keys(self, before: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            # In batches: one write group must not hold the event loop for long.
            cursor = conn.execute(
                "DELETE FROM idempotency_keys WHERE (queue_id, key) IN (SELECT queue_id, key"
                " FROM idempotency_keys WHERE created<=? ORDER BY created LIMIT ?)",
                (before, idempotency.PRUNE_BATCH),
            )
            return cursor.rowcount

        return await self._write(op)

    def _find(
        self, conn: sqlite3.Connection, queue: str, raw_id: str | int, index: int
    ) -> Task | None:
        task_id = parse_task_id(raw_id)
        if task_id is not None and task_id <= self._last_id:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
            if row is None:
                return None  # it existed and is gone: finished in a queue without history
            task = self._task(row)
            if task.queue == queue:
                return task
        raise TaskNotFound.named(raw_id, queue, ack=index)

    async def poll(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        def op(conn: sqlite3.Connection) -> PollResult | _Poll:
            queue_id = self._queue_id(queue)
            changes: list[Change] = []
            done = None
            if len(acks) == 1:  # the common case: one write at most, no savepoint needed
                ack = acks[0]
                task_id = parse_task_id(ack.task_id) if ack.status == "done" else None
                if task_id is not None:
                    done = (task_id, ack)  # made with the group's others
                else:
                    self._apply_ack(conn, queue, queue_id, options, ack, 0, now, changes)
            elif acks:
                # A later ack may be refused after earlier ones were written: undo them then.
                conn.execute("SAVEPOINT acks")
                try:
                    self._apply_acks(conn, queue, queue_id, options, acks, now, changes)
                except KatarError:
                    conn.execute("ROLLBACK TO acks")
                    raise
                finally:
                    conn.execute("RELEASE acks")
            if limit > 0 or done is not None:
                poll = _Poll(queue, queue_id, options, worker, limit, now, changes, done)
                self._polls.append(poll)
                return poll
            return PollResult([], changes)

        outcome = await self._write(op)
        if isinstance(outcome, _Poll):
            return PollResult(outcome.delivered, outcome.changes)
        return outcome

    def _finish_polls(self, conn: sqlite3.Connection) -> None:
        """Make the "done"s and the claims of every poll of the transaction: one statement
        for the polls of one queue together, instead of one each. The polls of a group
        commit are concurrent requests, so applying their acks, then serving them in arrival
        order from one claim, is a valid order; it saves most of two statements' fixed cost
        per poll (about 5 us each, a fifth of what one task may cost at half the ceiling)."""
        polls, self._polls = self._polls, []
        by_queue: dict[tuple[int, bool], list[tuple[_Poll, int, Ack]]] = {}
        for poll in polls:
            if poll.done is not None:
                by_queue.setdefault((poll.queue_id, poll.options.persistent), []).append(
                    (poll, *poll.done)
                )
        for (queue_id, _persistent), acking in by_queue.items():
            first: dict[int, _Poll] = {}  # a task named twice: the first poll's ack is it
            for poll, task_id, _ack in acking:
                first.setdefault(task_id, poll)
            batch = [(task_id, ack) for poll, task_id, ack in acking if first[task_id] is poll]
            now = max(poll.now for poll, _id, _ack in acking)
            finished = self._finish_done(conn, queue_id, acking[0][0].options, batch, now)
            for poll, task_id, ack in acking:
                if first[task_id] is poll and task_id in finished:
                    change = finished[task_id]
                    if change is not None:
                        poll.changes.append(change)
                    continue
                try:  # not the current delivery, or a repeat: the rules decide
                    self._apply_ack(
                        conn,
                        poll.queue,
                        queue_id,
                        poll.options,
                        ack,
                        0,
                        poll.now,
                        poll.changes,
                        fast=False,
                    )
                except KatarError as exc:
                    poll.error = exc
        claims: dict[tuple[int, str | None, int], list[_Poll]] = {}
        for poll in polls:
            if poll.limit > 0 and poll.error is None:
                claims.setdefault((poll.queue_id, poll.worker, poll.options.timeout), []).append(
                    poll
                )
        for (queue_id, worker, timeout), claiming in claims.items():
            total = sum(poll.limit for poll in claiming)
            now = max(poll.now for poll in claiming)
            if worker is None:
                claim = conn.execute(_CLAIM_ANONYMOUS, (now + timeout, now, queue_id, total))
            else:
                claim = conn.execute(_CLAIM, (worker, now + timeout, now, queue_id, total))
            rows = claim.fetchall()
            if len(rows) > 1:  # RETURNING promises no order
                rows.sort(key=lambda row: (-row[1], row[0]))
            name = self._queue_names[queue_id]
            lease_until = now + timeout
            tasks = [claimed_from_row(row, name, worker, now, lease_until) for row in rows]
            start = 0
            for poll in claiming:
                poll.delivered = tasks[start : start + poll.limit]
                start += poll.limit

    def _apply_acks(
        self,
        conn: sqlite3.Connection,
        queue: str,
        queue_id: int,
        options: QueueOptions,
        acks: Sequence[Ack],
        now: int,
        changes: list[Change],
    ) -> None:
        """Apply a batch's acks in order. The plain "done"s of the current deliveries go in
        statements of many rows at once, when no task is named twice (then the order of
        the acks cannot matter); every other ack goes through the rules one by one."""
        ids = [parse_task_id(ack.task_id) for ack in acks]
        done: dict[int, Change | None] = {}
        plain = [(i, a) for i, a in zip(ids, acks, strict=True) if a.status == "done" and i]
        if len(plain) > 1 and len(set(ids)) == len(ids):
            done = self._finish_done(conn, queue_id, options, plain, now)
        for index, (task_id, ack) in enumerate(zip(ids, acks, strict=True)):
            if task_id in done:
                change = done[task_id]
                if change is not None:
                    changes.append(change)
            else:
                self._apply_ack(conn, queue, queue_id, options, ack, index, now, changes, not done)

    def _apply_ack(
        self,
        conn: sqlite3.Connection,
        queue: str,
        queue_id: int,
        options: QueueOptions,
        ack: Ack,
        index: int,
        now: int,
        changes: list[Change],
        fast: bool = True,
    ) -> None:
        """Apply one ack; a refused ack raises before anything is written."""
        task_id = parse_task_id(ack.task_id)
        if fast and ack.status == "done" and task_id is not None:
            done = self._finish_done(conn, queue_id, options, [(task_id, ack)], now)
            if done:
                changes.extend(change for change in done.values() if change is not None)
                return
        task = self._find(conn, queue, ack.task_id, index)
        if task is None:
            return
        try:
            new = rules.apply_ack(task, ack, options, now)
        except KatarError as exc:
            exc.details.setdefault("ack", index)
            raise
        change = self._store_change(conn, task, new, options)
        if change is not None and change.task.state != change.old:
            changes.append(change)

    def _finish_done(
        self,
        conn: sqlite3.Connection,
        queue_id: int,
        options: QueueOptions,
        acks: list[tuple[int, Ack]],
        now: int,
    ) -> dict[int, Change | None]:
        """The hot path of a worker's "done": statements that finish the current deliveries
        the acks name, and leave any other ack to the rules (the ids missing from the
        answer). They write what rules.apply_ack writes, as the claim does for
        rules.claimed. Any number of acks: long batches go in chunks of _DONE_CHUNK.

        A finished task maps to its change, or to None when nobody watches (see
        Store.watch): then only the ids come back, and no task is built."""
        changes: dict[int, Change | None] = {}
        quiet = self.watch is not None and not self.watch()
        for start in range(0, len(acks), _DONE_CHUNK):
            chunk = acks[start : start + _DONE_CHUNK]
            if quiet:
                for (task_id,) in self._done_rows(conn, queue_id, options, chunk, now, "id"):
                    changes[task_id] = None
                continue
            by_id = dict(chunk)
            for row in self._done_rows(conn, queue_id, options, chunk, now, _COLUMNS):
                task = self._task(row)
                if not options.persistent:  # the row as it was: derive its last state
                    finished = rules.apply_ack(task, by_id[task.id], options, now)
                    assert finished is not None and finished.state is State.DONE
                    task = finished
                changes[task.id] = Change(task, State.RUNNING)
        return changes

    @staticmethod
    def _done_rows(
        conn: sqlite3.Connection,
        queue_id: int,
        options: QueueOptions,
        acks: list[tuple[int, Ack]],
        now: int,
        returning: str,
    ) -> list[Any]:
        """The rows one statement finished: updated (history kept) or deleted (as they were),
        with the ``returning`` columns."""
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
        elif any(ack.attempt for _id, ack in acks):
            for task_id, ack in acks:
                parameters += (task_id, ack.attempt or 0)
            sql = _DONE_DROP_MANY.format(rows=",".join(["(?,?)"] * len(acks)), returning=returning)
        else:
            parameters += (task_id for task_id, _ack in acks)
            sql = _DONE_DROP_IDS.format(ids=",".join("?" * len(acks)), returning=returning)
        parameters.append(queue_id)
        return conn.execute(sql, parameters).fetchall()

    async def get_task(self, queue: str, task_id: int) -> Task | None:
        def op(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
            if row is None or self._queue_names.get(row[1]) != queue:
                return None
            return self._task(row)

        return await self._read(op)

    async def list_tasks(
        self, queue: str, states: Sequence[State] | None, limit: int, after: int
    ) -> list[Task]:
        queue_id = self._queue_id(queue)

        def op(conn: sqlite3.Connection) -> list[Task]:
            if states is None:
                sql = f"SELECT {_COLUMNS} FROM tasks WHERE queue_id=? AND id>? ORDER BY id LIMIT ?"
                rows = conn.execute(sql, (queue_id, after, limit)).fetchall()
            else:
                # Resting tasks have their own partial index: SQLite takes it when the
                # query repeats the index's condition word for word. The other states are
                # found in id order. The states are our own integers, safe in the SQL.
                literal = ",".join(str(int(state)) for state in states)
                resting = _RESTING.issuperset(states)
                sql = (
                    f"SELECT {_COLUMNS} FROM tasks WHERE queue_id=? AND state IN ({literal})"
                    + (f" AND {_AT_REST}" if resting else "")
                    + " AND id>? ORDER BY id LIMIT ?"
                )
                rows = conn.execute(sql, (queue_id, after, limit)).fetchall()
            return [self._task(row) for row in rows]

        return await self._read(op)

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

        return await self._read(op)

    async def set_status(self, queue: str, task_id: int, status: str, now: int) -> Change | None:
        def op(conn: sqlite3.Connection) -> Change | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
            if row is None or self._queue_names.get(row[1]) != queue:
                raise TaskNotFound.named(task_id, queue)
            task = self._task(row)
            # A status change never finishes a task, so the queue's history option plays no
            # part: any options will do.
            return self._store_change(conn, task, rules.change_status(task, status, now), _KEEP)

        return await self._write(op)

    async def delete_task(self, queue: str, task_id: int) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            queue_id = self._queue_id(queue)
            cursor = conn.execute(
                "DELETE FROM tasks WHERE id=? AND queue_id=?", (task_id, queue_id)
            )
            return cursor.rowcount > 0

        return await self._write(op)

    async def expire(self, queues: Mapping[str, QueueOptions], now: int) -> list[Change]:
        def op(conn: sqlite3.Connection) -> list[Change]:
            changes: list[Change] = []
            for sql, decide in (
                (f"SELECT {_COLUMNS} FROM tasks WHERE state=3 AND lease_until<=? LIMIT ?", True),
                (f"SELECT {_COLUMNS} FROM tasks WHERE state=2 AND run_at<=? LIMIT ?", False),
            ):
                for row in conn.execute(sql, (now, _EXPIRE_BATCH)).fetchall():
                    task = self._task(row)
                    options = queues.get(task.queue)
                    if options is None:
                        continue
                    new = (
                        rules.expire_lease(task, options, now)
                        if decide
                        else rules.promote(task, now)
                    )
                    change = self._store_change(conn, task, new, options)
                    if change is not None:
                        changes.append(change)
            return changes

        return await self._write(op)


_KEEP: Final = QueueOptions(persistent=True)


def _last_issued(conn: sqlite3.Connection) -> int:
    """The highest task id ever issued, deleted tasks included."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tasks'), 0),"
        " coalesce((SELECT max(id) FROM tasks), 0))"
    ).fetchone()
    return int(row[0])
