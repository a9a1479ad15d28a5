"""The SQLite store's writer on its own: operations submitted to it as functions of a
connection, run in one group commit, with the three hooks the store gives it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from katar.errors import QueueNotFound, StoreUnavailable
from katar.store.sqlite.writer import Writer


class Hooks:
    """What the writer called, in order: (hook, whether a transaction was open)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def opened(self, conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "tasks" in tables  # the schema is ready before the store reads it
        self.calls.append(("opened", conn.in_transaction))

    def finish(self, conn: sqlite3.Connection) -> None:
        self.calls.append(("finish", conn.in_transaction))

    def undone(self, conn: sqlite3.Connection) -> None:
        self.calls.append(("undone", conn.in_transaction))


def _add(name: str) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "INSERT INTO queues (name, options) VALUES (?, '{}') RETURNING id", (name,)
        ).fetchone()
        return int(row[0])

    return op


def _names(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM queues ORDER BY id")]


async def test_operations_submitted_together_share_one_transaction_and_its_hooks(
    tmp_path: Path,
) -> None:
    hooks = Hooks()
    writer = Writer(
        f"sqlite:///{tmp_path / 'katar.db'}",
        opened=hooks.opened,
        finish=hooks.finish,
        undone=hooks.undone,
    )
    await writer.open()
    try:
        assert hooks.calls == [("opened", False)]
        assert writer.schema_change is not None

        def refused(conn: sqlite3.Connection) -> None:
            raise QueueNotFound(queue="nowhere")  # a bad request: refused before any write

        outcomes = await asyncio.gather(
            writer.write(_add("a")),
            writer.write(refused),
            writer.write(_add("b")),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], int)
        assert isinstance(outcomes[2], int)
        assert isinstance(outcomes[1], QueueNotFound)
        # One group: finished once, inside its transaction; nothing undone.
        assert hooks.calls[1:] == [("finish", True)]
        assert await writer.read(_names) == ["a", "b"]

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        failed = await asyncio.gather(
            writer.write(_add("c")), writer.write(broken), return_exceptions=True
        )
        # SQLite's error undoes the whole group: each operation of it fails, the store
        # is told to forget what the group learned, with no transaction left open.
        assert all(isinstance(outcome, StoreUnavailable) for outcome in failed), failed
        assert hooks.calls[2:] == [("undone", False)]
        assert await writer.read(_names) == ["a", "b"]
        assert writer.failing() is None  # not the disk's: new tasks are still taken
    finally:
        await writer.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        writer.write(_add("d"))
