"""The SQLite store's writer: one connection, its group commit, and the threads beside it.

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
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

from katar.errors import (
    ConfigError,
    KatarError,
    StoreError,
    StoreUnavailable,
)
from katar.logs import mask_credentials
from katar.store.sqlite.schema import SCHEMA_VERSION, upgrade

T = TypeVar("T")
log = logging.getLogger("katar")

# How many times the event loop goes round (reading the sockets each time) between a group's
# first write and its commit. Under load each round brings the requests that arrived during
# the last: waiting two rounds took a group from ~11 polls to more and the one-task drain from
# ~22,000 to ~26,000 tasks/s (32 connections, wrk, same sitting); the dispatch latency's p99
# did not move (0.65 ms). Idle, a round with nothing to do costs microseconds.
_GATHER_ROUNDS: Final = 2

_Op = Callable[[sqlite3.Connection], Any]


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
_MB: Final = 1024 * 1024
# The free space kept on the database's file system for copying the WAL back: below it, new
# tasks are refused until the WAL is copied back and twice as much is free (see
# _low_space). A copy needs room for the pages it adds to the database; a disk filled to the
# last byte leaves none, and the store stuck until an operator frees space. A quarter of a
# file system smaller than 64 MB, at least 1 MB (a little more than one large request).
_RESERVE: Final = 16 * _MB
_LOG_EVERY: Final = 60.0  # seconds between two log lines of a checkpoint that keeps failing
# SQLite's primary result codes for a write refused by the disk: no space, or an I/O error.
_SQLITE_IOERR: Final = 10
_SQLITE_FULL: Final = 13
# The (device, inode) of every database file a store of this process holds locked. Looked
# up before opening the file: closing a descriptor of a file drops every POSIX lock the
# process holds on it, SQLite's own included.
_held_files: set[tuple[int, int]] = set()
_held_files_lock = threading.Lock()


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


def _reserve_for(path: str) -> int:
    """The free space kept for copying the WAL back on the file system of ``path``: _RESERVE,
    a quarter of a smaller file system's size, at least one MB."""
    try:
        stats = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return _RESERVE
    return min(_RESERVE, max(_MB, stats.f_blocks * stats.f_frsize // 4))


def _megabytes(size: int) -> str:
    return f"{size / _MB:.1f} MB"


def _disk_refused(exc: sqlite3.Error) -> bool:
    """Whether the error is the disk's: full, or failing to read or write."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)


_Hook = Callable[[sqlite3.Connection], None]


class Writer:
    """The database file, its connections and threads, and the writes' group commit.

    Operations are submitted to it (:meth:`write`, :meth:`read`): functions of a connection,
    run on the event loop's thread (writes, a group in one transaction) or on the reading
    thread. What the store keeps beside the database is the store's: the writer only calls
    the three hooks it is given, each with the writing connection: ``opened`` once the
    schema is ready (on the opening thread, before any write), ``finish`` at the end of
    every group's transaction, before its commit (the batched polls), and ``undone`` after
    a group was rolled back (to forget what its operations learned).
    """

    def __init__(self, url: str, *, opened: _Hook, finish: _Hook, undone: _Hook) -> None:
        self.url = mask_credentials(url)
        self._path, self._synchronous = parse_url(url)
        self._opened = opened
        self._finish = finish
        self._undone = undone
        #: What open did to the schema (see Store.schema_change).
        self.schema_change: tuple[int, int] | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[_Op, asyncio.Future[Any]]] = []
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
        # Why the disk refused a write or a checkpoint (full, I/O error), or has less than
        # _reserve free, until the checkpointer has copied the whole WAL back with the writes
        # held and twice _reserve is free (_recover): meanwhile new tasks are refused and ping
        # fails. Set on either thread, under _disk_lock; cleared by the checkpointer while
        # the writes are held.
        self._disk_failure: StoreUnavailable | None = None
        self._reserve = _reserve_for(self._path)
        self._space_seen = 0  # the WAL's size when the writer last looked at the free space
        self._disk_since = 0.0  # when it began (monotonic)
        self._disk_lock = threading.Lock()
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
                upgrade(conn, version)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.schema_change = (version, SCHEMA_VERSION)
            self._opened(conn)
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
        # ASYNC110: a flag the checkpointer thread sets; a thread cannot set an asyncio event.
        while (  # noqa: ASYNC110
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
                if self._disk_failure is not None:
                    if not self._recover(conn):
                        self._written.set()  # try again after the rest
                    self._wake.wait(_CHECKPOINT_INTERVAL)
                    self._wake.clear()
                    continue
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
                    self._low_space()  # a statvfs after writes, twice a second at most
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
        """One checkpoint; False when it failed. A failure for the disk is the disk's
        outage (_refused_by_disk), logged once; another as _checkpoint_failed says, and
        its end too."""
        try:
            self._checkpoint(conn, mode)
        except sqlite3.Error as exc:
            self._checkpoint_failures += 1
            if _disk_refused(exc):
                self._refused_by_disk(exc, "copy its WAL back into")
            else:
                self._checkpoint_failed(exc)
            return False
        if self._checkpoint_failures:
            log.warning(
                "SQLite checkpoint of %s succeeds again, after %d failure(s)",
                self._path,
                self._checkpoint_failures,
            )
        self._checkpoint_failures = 0
        return True

    def _checkpoint_failed(self, exc: sqlite3.Error) -> None:
        """Log a checkpoint's failure (not the disk's): when they start, then at most once
        a minute while they last (every try, twice a second, fails the same way)."""
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

    def _refused_by_disk(self, exc: sqlite3.Error, doing: str) -> None:
        """The disk refused a write or a checkpoint."""
        self._disk_outage(f"cannot {doing} {self._path}: {exc}")

    def _disk_outage(self, cause: str) -> None:
        """From now on, until _recover ends it, new tasks are refused and ping fails.
        Logged once, however many writes fail meanwhile."""
        wanted = _megabytes(2 * self._reserve)
        with self._disk_lock:
            if self._disk_failure is not None:
                return
            self._disk_since = time.monotonic()
            self._disk_failure = StoreUnavailable(
                f"SQLite {cause}; it takes no new tasks until its WAL is copied back into the"
                f" database and {wanted} are free"
            )
        log.error(
            "SQLite %s; new tasks are refused (503) until its WAL is copied back into the"
            " database and %s are free; acks are applied meanwhile, as far as the disk takes"
            " them",
            cause,
            wanted,
        )
        self._written.set()  # the checkpointer tries to recover from now on
        self._wake.set()

    def _low_space(self) -> None:
        """Start the disk's outage before the disk is full, while a copy of the WAL back
        still has room: when less than _reserve is free."""
        free = self._free()
        if free is not None and free < self._reserve:
            self._disk_outage(
                f"has {_megabytes(free)} free for {self._path}, less than the"
                f" {_megabytes(self._reserve)} it keeps to copy its WAL back"
            )

    def _recover(self, conn: sqlite3.Connection) -> bool:
        """After the disk refused a write: copy the whole WAL back and cut its file to
        nothing, the writes held meanwhile, so that no write spends the space the copy needs
        (freed space taken by new writes first would leave the WAL uncopyable, and the store
        stuck). True once that is done and twice _reserve is free: new tasks are taken
        again."""
        self._restart_wanted = True  # _begin_hold holds the writes, _release lets them go
        self._held.clear()
        self._loop_call(self._begin_hold)
        try:
            # The loop's thread answers within a turn; one that stopped never.
            if not self._held.wait(5):
                return False
            try:
                copied = self._checkpoint(conn, "TRUNCATE")
            except sqlite3.Error as exc:
                self._checkpoint_failures += 1
                if not _disk_refused(exc):  # the disk's failures are the outage's
                    self._checkpoint_failed(exc)
                return False
            free = self._free()
            if not copied or free is None or free < 2 * self._reserve:
                return False
            with self._disk_lock:
                self._disk_failure = None
                lasted = time.monotonic() - self._disk_since
            self._checkpoint_failures = 0
        finally:
            self._loop_call(self._release)
        log.warning(
            "SQLite writes to %s again after %.1fs: its WAL is copied back and there is free"
            " space; new tasks are taken again",
            self._path,
            lasted,
        )
        return True

    def _free(self) -> int | None:
        """The bytes free on the database's file system (for this process's user), None if
        the file system does not say (or the database is in memory)."""
        try:
            stats = os.statvfs(os.path.dirname(os.path.abspath(self._path)))
        except OSError:
            return None
        return stats.f_bavail * stats.f_frsize

    def refuse_new_tasks(self) -> None:
        """Raise StoreUnavailable while the disk's outage lasts (see _disk_outage): new
        tasks would take the space that copying the WAL back needs, whereas acks and the
        other changes to existing tasks take little, and finish work."""
        failure = self._disk_failure
        if failure is not None:
            raise failure

    def _final_checkpoint(self, conn: Any) -> None:
        """Empty the WAL at shutdown, unless the disk refused the last writes: copying the
        WAL back may need space the disk has not got, or that an operator just freed."""
        if self._disk_failure is not None:
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

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> bool:
        """One checkpoint; a RESTART or TRUNCATE waits a bounded time for the reads in
        progress, and returns False if one outlasted it (the WAL was not started again)."""
        if mode in ("RESTART", "TRUNCATE"):
            conn.execute(f"PRAGMA busy_timeout = {_RESTART_WAIT_MS}")
            try:
                busy = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
            finally:
                conn.execute("PRAGMA busy_timeout = 5000")
            if busy and mode == "RESTART":  # the WAL restarts at a later try
                self._restart_after = time.monotonic() + _CHECKPOINT_INTERVAL
            return not busy
        conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return True

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
                wal = self._wal_size()
                if not self._restart_wanted:
                    if wal > self._wal_limit and time.monotonic() >= self._restart_after:
                        self._ask_restart()
                elif not self._hold and wal > 2 * self._wal_limit:
                    # Written faster than the checkpoint copies: the writes wait for it now.
                    self._hold = True
                if not self._space_seen <= wal < self._space_seen + self._reserve // 4:
                    # The WAL grew by a quarter of the reserve since the free space was last
                    # looked at (or restarted): a burst of writes, between the checkpointer's
                    # looks, must not take the whole reserve.
                    self._space_seen = wal
                    self._low_space()
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
            self._finish(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._undo(conn)
            error = _translate(exc)
            if _disk_refused(exc):
                self._refused_by_disk(exc, "write")
            return [(False, error)] * len(ops)
        except Exception:
            log.exception(
                "a SQLite group of %d write(s) failed on an unexpected error: rolled back",
                len(ops),
            )
            self._undo(conn)
            failure = StoreError("the store failed on an unexpected error (logged)")
            return [(False, failure)] * len(ops)
        return outcomes

    def _undo(self, conn: sqlite3.Connection) -> None:
        """Roll the group back, and have the store forget what its operations learned."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("SQLite could not roll a failed group back")
        with contextlib.suppress(sqlite3.Error):
            self._undone(conn)

    def write(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._conn is None or self._loop is None:
            raise StoreUnavailable("the SQLite store is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._pending.append((op, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._gather)
        return future

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._read_conn is None:
                raise StoreUnavailable("the SQLite store is not open")
            try:
                return op(self._read_conn)
            except sqlite3.Error as exc:
                raise _translate(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    def failing(self) -> str | None:
        """Why the disk refuses new tasks (see _disk_outage), None while it takes them."""
        failure = self._disk_failure
        return None if failure is None else failure.message
