"""The SQLite store under strain: a WAL that must stay bounded, a second server on the same
file, a disk that refuses writes, a group of writes that fails on a bug, a quiet restart."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from katar import cli
from katar.core.model import EVERY_TASK, Ack, NewTask, QueueOptions, State
from katar.errors import ConfigError, StoreError, StoreUnavailable
from katar.store import open_store
from katar.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.conftest import store_url, tmpfs

QUEUE = "q"
KIB = 1024


def _task(size: int = 10) -> NewTask:
    return NewTask(data=msgspec.Raw(b'"' + b"x" * size + b'"'))


async def _opened(path: Path, **private: Any) -> SQLiteStore:
    """A store opened on ``path``, its writer's private settings (``private``) set first."""
    store = SQLiteStore(f"sqlite:///{path}")
    for name, value in private.items():
        setattr(store._writer, name, value)
    await store.open()
    return store


async def test_the_wal_stays_bounded_under_continuous_writes(tmp_path: Path) -> None:
    """Writes that never pause, reads among them, a reader connection always open: the
    WAL restarts each time it passes its bound, and its file is cut back."""
    path = tmp_path / "katar.db"
    limit = 256 * KIB
    store = await _opened(path, _wal_limit=limit, _wal_kept=64 * KIB)
    reader = sqlite3.connect(path)
    try:
        await store.save_queue(QUEUE, QueueOptions(persistent=True))
        written = 0
        sizes: list[int] = []
        for _ in range(150):
            enqueued, polled, _listed = await asyncio.gather(
                store.enqueue(QUEUE, [_task(2000) for _ in range(8)], 1),
                store.poll(QUEUE, QueueOptions(persistent=True), [], 8, "w", 1),
                store.list_tasks(QUEUE, EVERY_TASK, 20, 0),
            )
            acks = [Ack(task_id=task.id, status="done") for task in polled.delivered]
            await store.poll(QUEUE, QueueOptions(persistent=True), acks, 0, "w", 1)
            written += len(enqueued)
            reader.execute("SELECT count(*) FROM tasks").fetchone()
            # ASYNC240: a local stat, rare (once at start or after a disk failure); not worth a thread hop.
            sizes.append(os.path.getsize(f"{path}-wal"))  # noqa: ASYNC240
        # About 16 KiB of data per round, 2.4 MiB in all, each task written three times.
        assert written == 1200
        # Past the bound, the checkpoint copies the WAL back while writes go on; past twice
        # the bound they wait for it. So: twice the bound, and what one group adds.
        assert max(sizes) <= 2 * limit + 128 * KIB
        # and the file was cut back after a restart, again and again
        assert sum(after < before for before, after in itertools.pairwise(sizes)) >= 3
        counts = (await store.counts())[QUEUE]
        assert sum(counts.values()) == 1200
    finally:
        reader.close()
        await store.close()


async def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "katar.db"
    first = await _opened(path)
    try:
        second = SQLiteStore(f"sqlite:///{path}")
        with pytest.raises(ConfigError, match=r"katar\.db.*in use") as refused:
            await second.open()
        assert str(path) in str(refused.value)
        await second.close()
        # Another process sees the lock too (what two ``katar serve`` run into).
        probe = (
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try:\n"
            "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n"
            "    sys.exit(3)\n"
        )
        # ASYNC221: a test helper process that ends at once.
        run = subprocess.run([sys.executable, "-c", probe, str(path)], timeout=30, check=False)  # noqa: ASYNC221
        assert run.returncode == 3
        await first.save_queue(QUEUE, QueueOptions())  # the first one still works
    finally:
        await first.close()
    third = await _opened(path)  # the lock ended with the first store
    try:
        assert QUEUE in await third.load_queues()
    finally:
        await third.close()


async def test_memory_stores_take_no_lock() -> None:
    stores = [open_store("memory://"), open_store("memory://")]
    for store in stores:
        await store.open()
    for store in stores:
        await store.close()


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


async def test_a_start_on_an_unchanged_schema_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "katar.db"
    store = await _opened(path)
    assert store.schema_change == (0, SCHEMA_VERSION)
    await store.save_queue(QUEUE, QueueOptions())
    await store.close()
    before = _digest(path)
    store = await _opened(path)
    try:
        assert store.schema_change == (SCHEMA_VERSION, SCHEMA_VERSION)
        wal = Path(f"{path}-wal")
        # ASYNC240: a local stat, rare (once at start or after a disk failure); not worth a thread hop.
        assert not wal.exists() or wal.stat().st_size == 0  # noqa: ASYNC240
        assert QUEUE in await store.load_queues()
    finally:
        await store.close()
    assert _digest(path) == before


def _full(message: str = "database or disk is full") -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = 13  # SQLITE_FULL
    return error


async def _recovered(store: SQLiteStore) -> None:
    """Wait (10 s at most) for the checkpointer to end the disk's outage."""
    for _ in range(200):
        if store.failing() is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the store did not recover: {store.failing()}")


async def test_after_the_disk_refused_a_write_new_tasks_wait_for_the_wal_copied_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="katar")
    store = await _opened(tmp_path / "katar.db")
    options = QueueOptions(persistent=True)
    try:
        await store.save_queue(QUEUE, options)
        (leased,) = await store.enqueue(QUEUE, [_task()], 1)
        assert (await store.poll(QUEUE, options, [], 1, "w", 2)).delivered
        await store.ping()
        assert store._writer._conn is not None
        pages = store._writer._conn.execute("PRAGMA page_count").fetchone()[0]
        # SQLite's own "database or disk is full": no page beyond those there are.
        store._writer._conn.execute(f"PRAGMA max_page_count = {pages}")
        # Exactly the reserve free: not low (the checkpointer, which looks at the free
        # space after each commit, starts no outage of its own before the write fails),
        # yet too little to end the outage, which lasts through the checks below.
        free = [store._writer._reserve]
        store._writer._free = lambda: free[0]  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable, match="full"):
            await store.enqueue(QUEUE, [_task(20000)], 1)
        assert store.failing() is not None
        # New tasks are refused before anything is written, however small; ping fails.
        with pytest.raises(StoreUnavailable, match="no new tasks"):
            await store.enqueue(QUEUE, [_task(1)], 3)
        with pytest.raises(StoreUnavailable, match="no new tasks"):
            await store.ping()
        store._writer._conn.execute("PRAGMA max_page_count = 1073741823")
        # An ack is applied whenever the disk takes it: it finishes work. That it was
        # written does not end the outage.
        ack = Ack(task_id=leased.id, status="done", attempt=1)
        await store.poll(QUEUE, options, [ack], 0, "w", 4)
        with pytest.raises(StoreUnavailable, match="no new tasks"):
            await store.enqueue(QUEUE, [_task(1)], 4)
        free[0] = 2 * store._writer._reserve
        await _recovered(store)
        await store.ping()
        await store.enqueue(QUEUE, [_task(20000)], 5)
        counts = (await store.counts())[QUEUE]
        assert (counts[State.DONE], counts[State.READY]) == (1, 1)
    finally:
        await store.close()
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "SQLite cannot write" in m]) == 1
    assert len([m for m in said if "new tasks are taken again" in m]) == 1


async def test_a_nearly_full_disk_refuses_new_tasks_before_it_is_full(tmp_path: Path) -> None:
    """Below the reserve kept for copying the WAL back, new tasks are refused though the
    disk would take them; taken again once the WAL is copied back and twice the reserve is
    free."""
    reserve = 64 * KIB
    store = await _opened(tmp_path / "katar.db", _reserve=reserve)
    free = [10 * reserve]
    store._writer._free = lambda: free[0]  # type: ignore[method-assign]
    try:
        await store.save_queue(QUEUE, QueueOptions())
        await store.enqueue(QUEUE, [_task(20 * KIB)], 1)
        free[0] = reserve - 1
        # The writer looks at the free space each time the WAL grew by a quarter of it; the
        # checkpointer, after the last commit, may have looked first and refused this one.
        taken = 3
        try:
            await store.enqueue(QUEUE, [_task(20 * KIB)], 2)
        except StoreUnavailable:
            taken = 2
        assert store.failing() is not None
        assert "less than the 0.1 MB it keeps" in (store.failing() or "")
        with pytest.raises(StoreUnavailable, match="no new tasks"):
            await store.enqueue(QUEUE, [_task(1)], 3)
        free[0] = 2 * reserve - 1  # not yet: twice the reserve
        await asyncio.sleep(1.2)  # two rounds of the checkpointer
        assert store.failing() is not None
        free[0] = 2 * reserve
        await _recovered(store)
        await store.enqueue(QUEUE, [_task(1)], 4)
        assert sum((await store.counts())[QUEUE].values()) == taken
    finally:
        await store.close()


def _locked() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = 5  # SQLITE_BUSY: not the disk's
    return error


class _Failing:
    """A connection whose every statement fails with ``error``, until told not to."""

    def __init__(self, error: sqlite3.Error) -> None:
        self.error = error
        self.fail = True
        self.statements: list[str] = []

    def execute(self, sql: str) -> Any:
        self.statements.append(sql)
        if self.fail:
            raise self.error
        return self

    def fetchone(self) -> tuple[int, int, int]:
        return (0, 0, 0)


async def test_a_failing_checkpoint_is_logged_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The store's own checkpointer stays out of it: the store is not opened.
    store = SQLiteStore(f"sqlite:///{tmp_path / 'katar.db'}")
    try:
        now = [1000.0]
        store._writer._clock = lambda: now[0]
        conn = _Failing(_locked())
        caplog.set_level(logging.WARNING, logger="katar")
        for _ in range(20):  # ten seconds of tries
            assert not store._writer._checkpoint_once(conn, "PASSIVE")
            now[0] += 0.5
        assert len([r for r in caplog.records if "checkpoint" in r.message]) == 1
        assert caplog.records[-1].exc_info is None  # a line, not a traceback
        now[0] += 60
        assert not store._writer._checkpoint_once(conn, "PASSIVE")
        assert len([r for r in caplog.records if "checkpoint" in r.message]) == 2
        assert "21 time(s)" in caplog.records[-1].message
        conn.fail = False
        assert store._writer._checkpoint_once(conn, "PASSIVE")
        assert "succeeds again" in caplog.records[-1].message
        assert store.failing() is None  # not the disk's: new tasks were never refused
    finally:
        await store.close()


async def test_a_checkpoint_the_disk_refuses_is_the_disk_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'katar.db'}")  # not opened, as above
    try:
        conn = _Failing(_full())
        caplog.set_level(logging.WARNING, logger="katar")
        for _ in range(20):
            assert not store._writer._checkpoint_once(conn, "PASSIVE")
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith("SQLite cannot copy its WAL back into")
        assert store.failing() is not None
        with pytest.raises(StoreUnavailable, match="disk is full"):
            await store.ping()
        # At shutdown, a disk that refused writes gets no TRUNCATE checkpoint.
        conn.fail = False
        store._writer._final_checkpoint(conn)
        assert not any("TRUNCATE" in sql for sql in conn.statements)
        store._writer._disk_failure = None
        store._writer._final_checkpoint(conn)
        assert "PRAGMA wal_checkpoint(TRUNCATE)" in conn.statements
    finally:
        await store.close()


async def test_an_unexpected_error_in_a_group_fails_it_whole_and_the_next_one_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = await _opened(tmp_path / "katar.db")
    options = QueueOptions()
    try:
        await store.save_queue(QUEUE, options)
        (queued,) = await store.enqueue(QUEUE, [_task()], 1)
        finish = store._writer._finish  # the writer's hook before each commit

        def broken(conn: sqlite3.Connection) -> None:
            finish(conn)  # it wrote: the claims are made
            raise RuntimeError("injected")

        monkeypatch.setattr(store._writer, "_finish", broken)
        group = [
            store.poll(QUEUE, options, [], 1, "a", 2),
            store.poll(QUEUE, options, [], 1, "b", 2),
            store.enqueue(QUEUE, [_task()], 2),
        ]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*group, return_exceptions=True), timeout=10
        )
        assert all(type(outcome) is StoreError for outcome in outcomes), outcomes
        tracebacks = [r for r in caplog.records if r.exc_info and "injected" in str(r.exc_info[1])]
        assert len(tracebacks) == 1
        monkeypatch.setattr(store._writer, "_finish", finish)
        # Rolled back: the claim and the enqueue are undone, and the next group works.
        assert store._writer._conn is not None
        assert not store._writer._conn.in_transaction
        polled = await asyncio.wait_for(store.poll(QUEUE, options, [], 5, "a", 3), timeout=10)
        assert [task.id for task in polled.delivered] == [queued.id]
        (later,) = await store.enqueue(QUEUE, [_task()], 3)
        assert later.id > queued.id
        assert sum((await store.counts())[QUEUE].values()) == 2
    finally:
        await store.close()


def test_migrate_says_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'katar.db'}"
    assert cli.main(["migrate", "--db", url]) == 0
    assert f"created the schema (version {SCHEMA_VERSION})" in capsys.readouterr().err
    assert cli.main(["migrate", "--db", url]) == 0
    assert "already up to date" in capsys.readouterr().err
    conn = sqlite3.connect(tmp_path / "katar.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    conn.close()
    assert cli.main(["migrate", "--db", url]) == 0
    err = capsys.readouterr().err
    assert f"upgraded the store {url} from schema {SCHEMA_VERSION - 1} to {SCHEMA_VERSION}" in err
    assert cli.main(["migrate", "--db", "memory://"]) == 0
    assert "nothing to migrate" in capsys.readouterr().err


def test_migrate_says_what_it_did_on_postgres(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_url("postgres", tmp_path)
    assert cli.main(["migrate", "--db", url]) == 0
    assert "created the schema (version " in capsys.readouterr().err
    assert cli.main(["migrate", "--db", url]) == 0
    assert "already up to date" in capsys.readouterr().err


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, where this process may mount one (root, no sandbox forbidding it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    with tmpfs(mount, "3m", pytest.skip) as disk:
        yield disk


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass  # no space left
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_fails_ping_and_a_restart_on_it_works(tiny_disk: Path) -> None:
    path = tiny_disk / "katar.db"
    store = await _opened(path)
    try:
        await store.save_queue(QUEUE, QueueOptions())
        filler = _fill(tiny_disk)
        # The WAL's file may have room left from earlier writes: 100 tasks outgrow the disk.
        # PT012: the error comes from the second statement; the first sets it up inside the same context.
        with pytest.raises(StoreUnavailable, match="full"):  # noqa: PT012
            for _ in range(100):
                await store.enqueue(QUEUE, [_task(30000)], 1)
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
    store = await _opened(path)  # on the full disk: the start writes nothing
    try:
        assert store.schema_change == (SCHEMA_VERSION, SCHEMA_VERSION)
        assert QUEUE in await store.load_queues()
        filler.unlink()
        for _ in range(200):  # the checkpointer retries every half second
            try:
                await store.ping()
                break
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        await store.ping()
        await store.enqueue(QUEUE, [_task(30000)], 1)
    finally:
        await store.close()
