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
import fcntl
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec

from katar.core import idempotency, rules
from katar.core.idempotency import Idempotency
from katar.core.model import Ack, NewTask, QueueOptions, State, Task, parse_task_id
from katar.core.storage import Change, Enqueued, PollResult, Store
from katar.errors import (
    ConfigError,
    KatarError,
    QueueNotFound,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
)
from katar.logs import mask_credentials
from katar.store._rows import (
    CLAIMED_COLUMNS,
    COLUMNS,
    claimed_from_row,
    task_from_row,
    update_values,
)

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
# The same for an ack from a poll that names its worker (rules.owns): the delivery must be
# leased to that name or to none. A row it does not match falls through to the rules, which
# refuse it. Anonymous polls keep the statements without it.
_OWNER: Final = " AND (worker IS NULL OR worker=?)"
_DONE_OWNED: Final = _DONE.replace(" RETURNING", _OWNER + " RETURNING")
_DONE_DROP_OWNED: Final = _DONE_DROP.replace(" RETURNING", _OWNER + " RETURNING")
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
# The WAL's bound. A PASSIVE checkpoint copies pages back but never makes the WAL start
# again from its beginning while commits keep coming: the WAL then grows for ever (17 MB/s
# under a steady drain, the shared-memory index and so the RSS with it). Past this size, the
# writer holds its next group back (the event loop still runs) while the checkpointer
# makes a RESTART checkpoint, after which the next commit writes the WAL from its start.
_WAL_LIMIT: Final = 16 * 1024 * 1024
# What a restarted WAL's file is cut down to (journal_size_limit), so that it shrinks too.
_WAL_KEPT: Final = 4 * 1024 * 1024
# How long the RESTART checkpoint waits for a read in progress (ms), the writer held back.
_RESTART_WAIT_MS: Final = 1000
# The free space a disk that refused writes must have again before the store says it can
# write: a little more than one large request.
_ROOM: Final = 1024 * 1024
_LOG_EVERY: Final = 60.0  # seconds between two log lines of a checkpoint that keeps failing
# SQLite's primary result codes for a write refused by the disk: no space, or an I/O error.
_SQLITE_IOERR: Final = 10
_SQLITE_FULL: Final = 13
# The (device, inode) of every database file a store of this process holds locked. Looked
# up before opening the file: closing a descriptor of a file drops every POSIX lock the
# process holds on it, SQLite's own included.
_held_files: set[tuple[int, int]] = set()
_held_files_lock = threading.Lock()
_options_decoder: Final = msgspec.json.Decoder(QueueOptions)


def parse_url(url: str) -> tuple[str, str]:
    """The file path and the ``synchronous`` setting of a ``sqlite://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise ConfigError(
            f"invalid SQLite URL {mask_credentials(url)!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = parts.path[1:]
    if not path:
        raise ConfigError(f"invalid SQLite URL {mask_credentials(url)!r}: it names no file")
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
    if isinstance(exc, sqlite3.OperationalError) or _disk_refused(exc):
        return StoreUnavailable(f"SQLite is unavailable: {exc}")
    return StoreError(f"SQLite failed: {exc}")


def _disk_refused(exc: sqlite3.Error) -> bool:
    """Whether the error is the disk's: full, or failing to read or write."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)


class SQLiteStore(Store):
    """Queues and tasks in one SQLite database file."""

    def __init__(self, url: str) -> None:
        self.url = mask_credentials(url)
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
        self._wake = threading.Event()  # cuts the checkpointer's rest short
        self._changes = 0  # the writer's total_changes when _written was last set
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="katar-sqlite-read")
        self._read_conn: sqlite3.Connection | None = None
        self._queue_ids: dict[str, int] = {}
        self._queue_names: dict[int, str] = {}
        self._last_id = 0
        self._lock_fd: int | None = None
        self._lock_key: tuple[int, int] | None = None
        self._wal_path = self._path + "-wal"
        self._wal_limit = _WAL_LIMIT  # tests make it and _wal_kept small
        self._wal_kept = _WAL_KEPT
        # A restart of the WAL, asked by the writer (on the loop's thread) once the WAL passed
        # its bound: the checkpointer copies the WAL back without holding anything up, then
        # has the writer hold its groups back (_hold, set on the loop's thread, which then
        # sets _held) for the little that was written meanwhile, and restarts the WAL.
        # Both end on the loop's thread, in _release.
        self._restart_wanted = False
        self._hold = False
        self._held = threading.Event()
        self._restart_after = 0.0  # monotonic time before which no restart is asked again
        # The last write's failure when the disk refused it (full, I/O error), until a write
        # succeeds: the store cannot write, and ping says so.
        self._write_failure: StoreUnavailable | None = None
        self._checkpoint_refused = False  # the last checkpoint failed for the disk
        self._checkpoint_failures = 0  # checkpoints failed in a row
        self._checkpoint_logged = 0.0  # when a failing checkpoint was last logged
        self._keep_wal = False  # the WAL is left at shutdown, for the disk refused writes
        self._clock: Callable[[], float] = time.monotonic  # for the log's pace; tests set it

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
            conn.execute(f"PRAGMA journal_size_limit = {self._wal_kept}")
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

    def _lock_file(self) -> None:
        """Take the database file's lock for the store's life, or refuse to open it.

        Two servers on one file would each keep their own ids and queues in memory, and
        answer each other's conflicts with 500s. An flock is the kernel's: it ends with the
        process however it ends (kill -9 included), and it does not touch the POSIX locks
        SQLite itself takes on the file."""
        if self._path == ":memory:":
            return
        refusal = (
            f"the SQLite database {self._path!r} is in use by another Katar server"
            " (it holds the file's lock): only one server may use a SQLite file; stop the"
            " other one, or use PostgreSQL to run several servers on one store"
        )
        with _held_files_lock:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self._path)
                if (st.st_dev, st.st_ino) in _held_files:
                    raise ConfigError(refusal.replace("server", "store of this process", 1))
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot open SQLite database {self._path!r}: {exc}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if isinstance(exc, BlockingIOError):
                    raise ConfigError(refusal) from None
                raise StoreUnavailable(
                    f"cannot lock SQLite database {self._path!r}: {exc}"
                ) from exc
            st = os.fstat(fd)
            self._lock_fd, self._lock_key = fd, (st.st_dev, st.st_ino)
            _held_files.add(self._lock_key)

    def _unlock_file(self) -> None:
        """Release the file's lock, once every connection to it is closed."""
        with _held_files_lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing it releases the flock
                self._lock_fd = None
            if self._lock_key is not None:
                _held_files.discard(self._lock_key)
                self._lock_key = None

    def _prepare(self) -> sqlite3.Connection:
        self._lock_file()
        try:
            conn = self._connect()
        except BaseException:
            self._unlock_file()
            raise
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the database {self._path!r} was made by a newer Katar "
                    f"(schema {version}, this one knows {SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                # Only then: a start on an unchanged schema writes nothing, so that a server
                # can start on a full disk.
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.schema_change = (version, SCHEMA_VERSION)
            self._load_ids(conn)
            self._read_conn = self._connect()
        except sqlite3.Error as exc:
            conn.close()
            self._unlock_file()
            raise StoreUnavailable(f"cannot use SQLite database {self._path!r}: {exc}") from exc
        except BaseException:
            conn.close()
            self._unlock_file()
            raise
        return conn

    async def close(self) -> None:
        # A restart of the WAL in progress holds the writes back: let it end first.
        while (
            self._restart_wanted
            and self._checkpointer is not None
            and self._checkpointer.is_alive()
        ):
            await asyncio.sleep(0.005)
        if self._conn is not None:
            if self._pending:
                self._flush()
            conn, self._conn = self._conn, None
            conn.close()
        self._stopping.set()
        self._written.set()
        self._wake.set()
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        if self._read_conn is not None:
            conn, self._read_conn = self._read_conn, None
            await asyncio.get_running_loop().run_in_executor(self._reader, conn.close)
        self._reader.shutdown(wait=True)
        self._unlock_file()

    def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database off the event loop, so that a commit never
        waits for a checkpoint's writes and flush; restart the WAL when the writer asks."""
        try:
            conn = self._connect()
        except StoreError:
            log.exception("the SQLite checkpointer cannot open the database")
            self._loop_call(self._release)
            return
        try:
            # At most every _CHECKPOINT_INTERVAL, and only after a commit that wrote: an
            # idle server's threads do not wake (each wake-up is CPU on a virtual machine).
            while True:
                self._written.wait()
                if self._stopping.is_set():
                    break
                self._written.clear()
                restart = self._restart_wanted
                try:
                    ok = self._checkpoint_once(conn, "PASSIVE")
                    if ok and restart:
                        self._held.clear()
                        self._loop_call(self._begin_hold)
                        # The loop's thread answers within a turn; one that stopped never.
                        if self._held.wait(5):
                            ok = self._checkpoint_once(conn, "RESTART")
                    if not ok:
                        self._written.set()  # try again after the rest
                        # and ask no restart before then
                        self._restart_after = time.monotonic() + _CHECKPOINT_INTERVAL
                finally:
                    if restart:
                        self._loop_call(self._release)
                self._wake.wait(_CHECKPOINT_INTERVAL)
                self._wake.clear()
            self._final_checkpoint(conn)
        finally:
            self._no_checkpoint_on_close(conn)
            conn.close()
            if self._restart_wanted:
                self._loop_call(self._release)

    def _checkpoint_once(self, conn: Any, mode: str) -> bool:
        """One checkpoint; False when it failed. A failure is logged when it starts, then
        at most once a minute while it lasts, and its end too: a full disk makes every
        try fail, twice a second."""
        try:
            self._checkpoint(conn, mode)
        except sqlite3.Error as exc:
            self._checkpoint_refused = _disk_refused(exc)
            self._checkpoint_failures += 1
            now = self._clock()
            if self._checkpoint_failures == 1 or now - self._checkpoint_logged >= _LOG_EVERY:
                self._checkpoint_logged = now
                log.warning(
                    "SQLite checkpoint of %s failed (%d time(s) in a row): %s; retrying,"
                    " logged again at most once a minute",
                    self._path,
                    self._checkpoint_failures,
                    exc,
                )
            return False
        if self._checkpoint_failures:
            log.warning(
                "SQLite checkpoint of %s succeeds again, after %d failure(s)",
                self._path,
                self._checkpoint_failures,
            )
        self._checkpoint_failures = 0
        self._checkpoint_refused = False
        return True

    def _final_checkpoint(self, conn: Any) -> None:
        """Empty the WAL at shutdown, unless the disk refused the last writes: copying the
        WAL back may need space the disk has not got, or that an operator just freed."""
        if self._checkpoint_refused or self._write_failure is not None:
            log.warning(
                "the disk refused SQLite's last writes: the WAL of %s is left for the next"
                " start to copy back",
                self._path,
            )
            self._keep_wal = True
            return
        try:
            self._checkpoint(conn, "TRUNCATE")
        except sqlite3.Error as exc:
            log.warning("final SQLite checkpoint of %s failed: %s", self._path, exc)

    def _no_checkpoint_on_close(self, conn: sqlite3.Connection) -> None:
        """When the WAL is left (see _final_checkpoint), tell SQLite not to copy it back as
        the last connection closes, where Python lets us (3.12 and later)."""
        option = getattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", None)
        if self._keep_wal and option is not None:
            for each in (conn, self._conn, self._read_conn):
                if each is not None:
                    with contextlib.suppress(sqlite3.Error):
                        each.setconfig(option, True)  # type: ignore[attr-defined,unused-ignore]

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> None:
        """One checkpoint; a RESTART waits a bounded time for the reads in progress."""
        if mode == "RESTART":
            conn.execute(f"PRAGMA busy_timeout = {_RESTART_WAIT_MS}")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
            finally:
                conn.execute("PRAGMA busy_timeout = 5000")
            if busy:  # a read outlasted the wait: the WAL restarts at a later try
                self._restart_after = time.monotonic() + _CHECKPOINT_INTERVAL
        else:
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()

    def _loop_call(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop's thread, if the loop still runs."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(callback)

    def _release(self) -> None:
        """The WAL's restart is over (or abandoned): run the writes held back."""
        if not self._restart_wanted:
            return
        self._restart_wanted = self._hold = False
        if self._flush_scheduled:
            self._flush()

    def _begin_hold(self) -> None:
        """Hold the writes back (between two groups: on the loop's thread, no transaction
        is open, so the checkpointer will not wait for one) and tell the checkpointer."""
        if self._restart_wanted:
            self._hold = True
            self._held.set()

    def _wal_size(self) -> int:
        """The WAL file's size (one stat: a microsecond or two a group that wrote)."""
        try:
            return os.stat(self._wal_path).st_size
        except OSError:
            return 0

    def _gather(self) -> None:
        """Flush the pending writes, once the loop has gone round _GATHER_ROUNDS times."""
        if self._rounds < _GATHER_ROUNDS and self._loop is not None:
            self._rounds += 1
            self._loop.call_soon(self._gather)
            return
        if self._hold:  # the WAL restarts: _release flushes
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
                if not self._restart_wanted:
                    if (
                        self._wal_size() > self._wal_limit
                        and time.monotonic() >= self._restart_after
                    ):
                        self._ask_restart()
                elif not self._hold and self._wal_size() > 2 * self._wal_limit:
                    # Written faster than the checkpoint copies: the writes wait for it now.
                    self._hold = True
        for (_op, future), (ok, value) in zip(group, outcomes, strict=True):
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _ask_restart(self) -> None:
        """Have the checkpointer restart the WAL now."""
        if self._checkpointer is not None and self._checkpointer.is_alive():
            self._restart_wanted = True
            self._written.set()
            self._wake.set()

    def _run_group(self, conn: sqlite3.Connection, ops: list[_Op]) -> list[tuple[bool, Any]]:
        """Run the operations in one transaction.

        Every operation raises Katar's own errors (a bad request) before it writes
        anything, so such an error needs no undoing and the others still commit. Any other
        error can strike after a write: it undoes the whole group, and every operation of
        it fails, with StoreUnavailable for SQLite's errors of access or of the disk, and
        StoreError for anything else (a bug: its traceback is logged here, once).
        """
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                try:
                    outcomes.append((True, op(conn)))
                except KatarError as exc:
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
            self._undo(conn)
            error = _translate(exc)
            if _disk_refused(exc):
                if self._write_failure is None:
                    log.error(
                        "SQLite cannot write %s: %s; /healthz answers 503 until a write succeeds",
                        self._path,
                        exc,
                    )
                self._write_failure = StoreUnavailable(f"SQLite cannot write: {exc}")
            return [(False, error)] * len(ops)
        except Exception:
            log.exception(
                "a SQLite group of %d write(s) failed on an unexpected error: rolled back",
                len(ops),
            )
            self._undo(conn)
            failure = StoreError("the store failed on an unexpected error (logged)")
            return [(False, failure)] * len(ops)
        if self._write_failure is not None:
            self._write_failure = None
            log.warning("SQLite writes to %s succeed again", self._path)
        return outcomes

    def _undo(self, conn: sqlite3.Connection) -> None:
        """Roll the group back, and forget what its operations learned."""
        self._polls = []
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("SQLite could not roll a failed group back")
        # What an operation learned about ids or queues may be undone: reload it.
        with contextlib.suppress(sqlite3.Error):
            self._load_ids(conn)

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
        if self._checkpoint_refused:
            raise StoreUnavailable(
                "SQLite cannot copy its WAL back into the database: the disk refuses writes"
            )
        if self._write_failure is None:
            await self._read(lambda conn: conn.execute("SELECT 1").fetchone())
            return
        # The last write failed for the disk. A small write may well succeed where the
        # last failed (the WAL's file has room left from earlier writes), so ask the file
        # system for room first; then write, to know the disk works: this rewrites a value
        # unchanged, one page of WAL.
        folder = os.path.dirname(os.path.abspath(self._path))
        try:
            stats = os.statvfs(folder)
        except OSError as exc:
            raise StoreUnavailable(f"SQLite cannot write: {exc}") from exc
        if stats.f_bavail * stats.f_frsize < _ROOM:
            raise StoreUnavailable(self._write_failure.message)
        await self._write(lambda conn: conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}"))

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
                    self._apply_ack(conn, queue, queue_id, options, ack, 0, now, changes, worker)
            elif acks:
                # A later ack may be refused after earlier ones were written: undo them then.
                conn.execute("SAVEPOINT acks")
                try:
                    self._apply_acks(conn, queue, queue_id, options, acks, now, changes, worker)
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
        # Polls that name their worker go in statements of their own, that match the owner.
        by_queue: dict[tuple[int, bool, bool], list[tuple[_Poll, int, Ack]]] = {}
        for poll in polls:
            if poll.done is not None:
                key = (poll.queue_id, poll.options.persistent, poll.worker is not None)
                by_queue.setdefault(key, []).append((poll, *poll.done))
        for (queue_id, _persistent, named), acking in by_queue.items():
            first: dict[int, _Poll] = {}  # a task named twice: the first poll's ack is it
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
                    self._apply_ack(
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
        worker: str | None,
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
                self._apply_ack(
                    conn, queue, queue_id, options, ack, index, now, changes, worker, not done
                )

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
        worker: str | None,
        fast: bool = True,
    ) -> None:
        """Apply one ack from a poll naming ``worker`` (None: anonymous); a refused ack
        raises before anything is written."""
        task_id = parse_task_id(ack.task_id)
        if fast and ack.status == "done" and task_id is not None:
            owners = None if worker is None else [worker]
            done = self._finish_done(conn, queue_id, options, [(task_id, ack)], now, owners)
            if done:
                changes.extend(change for change in done.values() if change is not None)
                return
        task = self._find(conn, queue, ack.task_id, index)
        if task is None:
            return
        try:
            new = rules.apply_ack(task, ack, options, now, worker)
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
            for row in self._done_rows(conn, queue_id, options, chunk, now, _COLUMNS, owned):
                task = self._task(row)
                if not options.persistent:  # the row as it was: derive its last state
                    # It matched its owner (or no owner was asked): the rules need none.
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
        owners: list[str] | None,
    ) -> list[Any]:
        """The rows one statement finished: updated (history kept) or deleted (as they were),
        with the ``returning`` columns."""
        if owners is not None:
            return SQLiteStore._owned_done_rows(
                conn, queue_id, options, acks, now, returning, owners
            )
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

    async def next_deadline(self) -> int | None:
        # Each min() is one step down the partial indexes tasks_lease and tasks_due.
        row = await self._read(lambda conn: conn.execute(_NEXT_DEADLINE).fetchone())
        return None if row[0] is None else int(row[0])


_NEXT_DEADLINE: Final = (
    "SELECT min(t) FROM (SELECT min(lease_until) AS t FROM tasks WHERE state = 3"
    " UNION ALL SELECT min(run_at) FROM tasks WHERE state = 2)"
)
_KEEP: Final = QueueOptions(persistent=True)


def _last_issued(conn: sqlite3.Connection) -> int:
    """The highest task id ever issued, deleted tasks included."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tasks'), 0),"
        " coalesce((SELECT max(id) FROM tasks), 0))"
    ).fetchone()
    return int(row[0])
