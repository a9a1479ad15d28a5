"""What the SQLite store keeps in memory beside its database file: the queues' ids and names,
which queues are fair, and the highest task id issued.

One server serves a SQLite file (its writer holds the file's lock), so these are read once at
open, changed by the writes that change them, and read again after a group was rolled back.
Every change to them happens on the event loop's thread, in the writer's group.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from katar.core.model import Task, parse_task_id
from katar.errors import QueueNotFound, TaskNotFound
from katar.store._rows import COLUMNS, task_from_row


class _Fair(msgspec.Struct):
    fair: bool = False


_fair_decoder: Final = msgspec.json.Decoder(_Fair)  # a queue's options: is it fair?
_BY_ID: Final = f"SELECT {COLUMNS} FROM tasks WHERE id=?"


class Queues:
    """The queues' ids, names and fairness, the highest task id issued, and the tasks built
    from rows with their queue's name."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        # An id's name stays after its queue is deleted: reads of its rows may be in flight.
        self.names: dict[int, str] = {}
        self.fair: set[int] = set()  # the ids of the fair queues
        self.last_id = 0

    def load(self, conn: sqlite3.Connection) -> None:
        """Read the queues' ids and the highest task id issued (at open, and after a
        rollback: what an operation learned may have been undone)."""
        rows = conn.execute("SELECT id, name, options FROM queues").fetchall()
        self.ids = {name: qid for qid, name, _options in rows}
        self.names.update({qid: name for qid, name, _options in rows})
        self.fair = {qid for qid, _name, options in rows if _fair_decoder.decode(options).fair}
        self.last_id = max(self.last_id, _last_issued(conn))

    def added(self, name: str, queue_id: int) -> None:
        """A queue was created (or its options saved)."""
        self.ids[name] = queue_id
        self.names[queue_id] = name

    def id_of(self, queue: str) -> int:
        """The queue's id; QueueNotFound if there is no such queue."""
        try:
            return self.ids[queue]
        except KeyError:
            raise QueueNotFound(queue=queue) from None

    def task(self, row: Sequence[Any]) -> Task:
        """The task of a row of ``COLUMNS``."""
        return task_from_row(row, self.names[row[1]])

    def find(
        self, conn: sqlite3.Connection, queue: str, raw_id: str | int, index: int
    ) -> Task | None:
        """The task an ack names: None if it existed and is gone or is another queue's,
        TaskNotFound (for ack ``index``) if it never existed."""
        task_id = parse_task_id(raw_id)
        if task_id is not None and task_id <= self.last_id:
            row = conn.execute(_BY_ID, (task_id,)).fetchone()
            if row is None:
                return None  # it existed and is gone: finished in a queue without history
            task = self.task(row)
            # Another queue's task is ignored as a gone one is (see rules.apply_ack).
            return task if task.queue == queue else None
        raise TaskNotFound.named(raw_id, queue, ack=index)


def _last_issued(conn: sqlite3.Connection) -> int:
    """The highest task id ever issued, deleted tasks included."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tasks'), 0),"
        " coalesce((SELECT max(id) FROM tasks), 0))"
    ).fetchone()
    return int(row[0])
