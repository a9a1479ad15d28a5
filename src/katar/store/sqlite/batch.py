"""A group commit's polls finished together: their "done"s and their claims, batched.

This is the hot path of every worker's poll: the statements do in SQL what the rules
(katar.core.rules) decide, and fall back to the rules for anything else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from katar.core import rules
from katar.core.model import Ack, QueueOptions, State, Task, parse_task_id
from katar.core.storage import Change
from katar.errors import (
    KatarError,
)
from katar.store._rows import (
    CLAIMED_COLUMNS,
    COLUMNS,
    OPTIONS_COLUMNS,
    claimed_from_row,
)

# The claim in one statement. It does what rules.claimed does, in SQL, because this is the
# hot path of every worker's poll.
# A task's own timeout makes its own lease (rules.lease_ms); a task never delivered whose
# expiry has come (rules.expired) is left for the reaper to cancel.
_CLAIM: Final = (
    "UPDATE tasks SET state=3, attempts=attempts+1, worker=?,"
    " lease_until=?+coalesce(timeout, ?), run_at=NULL, updated_at=? WHERE id IN"
    " (SELECT id FROM tasks WHERE queue_id=? AND state=1"
    " AND (expires_at IS NULL OR attempts > 0 OR expires_at > ?)"
    f" ORDER BY priority DESC, id LIMIT ?) RETURNING {CLAIMED_COLUMNS}"
)
# The other options of a claimed task that has some (see CLAIMED_COLUMNS).
_OPTIONS: Final = f"SELECT {OPTIONS_COLUMNS} FROM tasks WHERE id=?"
_CLAIM_ANONYMOUS: Final = _CLAIM.replace("worker=?", "worker=NULL")  # no worker name given
# A worker's "done" for the current delivery: update, or delete in a queue without history.
# {returning} is every column, or only the id when nobody needs the finished tasks.
_CURRENT: Final = "id=? AND queue_id=? AND state=3 AND attempts=coalesce(nullif(?, 0), attempts)"
_DONE: Final = (
    "UPDATE tasks SET state=4, result=?, error=NULL, lease_until=NULL, updated_at=?"
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
    "t.id = v.column1 AND t.queue_id = ? AND t.state = 3"
    " AND t.attempts = coalesce(nullif(v.column2, 0), t.attempts)"
)
_DONE_MANY: Final = (
    "UPDATE tasks AS t SET state=4, result=v.column3, error=NULL, lease_until=NULL,"
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
    "DELETE FROM tasks WHERE id IN ({ids}) AND queue_id=? AND state=3 AND unique_until IS NULL"
    " RETURNING {returning}"
)
_DONE_CHUNK: Final = 300  # acks per statement: 3 variables each, well under SQLite's limit


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


class Batches:
    """The batched "done" and claim of SQLiteStore, which provides what is declared here."""

    watch: Callable[[], bool] | None
    _polls: list[_Poll]
    _queue_names: dict[int, str]
    _task: Callable[[Sequence[Any]], Task]
    _store_change: Callable[..., Change | None]
    _find: Callable[..., Any]

    def _finish_polls(self, conn: sqlite3.Connection) -> None:
        """Make the "done"s and the claims of every poll of the transaction: one statement
        for the polls of one queue together, instead of one each. The polls of a group
        commit are concurrent requests, none answered before the commit: their acks are
        applied first, each poll's together, then their claims are served in arrival order
        from one claim, so no claim of the group comes before an ack of the group (the
        guarantee docs/architecture.md states). It saves most of two statements' fixed cost
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
            lease = (now, timeout, now, queue_id, now, total)
            if worker is None:
                claim = conn.execute(_CLAIM_ANONYMOUS, lease)
            else:
                claim = conn.execute(_CLAIM, (worker, *lease))
            rows = claim.fetchall()
            if len(rows) > 1:  # RETURNING promises no order
                rows.sort(key=lambda row: (-row[1], row[0]))
            name = self._queue_names[queue_id]
            lease_until = now + timeout
            tasks = [
                claimed_from_row(
                    row,
                    name,
                    worker,
                    now,
                    lease_until,
                    None if row[9] else conn.execute(_OPTIONS, (row[0],)).fetchone(),
                )
                for row in rows
            ]
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
            for row in self._done_rows(conn, queue_id, options, chunk, now, COLUMNS, owned):
                task = self._task(row)
                if not options.persistent:  # the row as it was: derive its last state
                    # It matched its owner (or no owner was asked): the rules need none.
                    finished = rules.apply_ack(task, by_id[task.id], options, now)
                    assert finished is not None
                    assert finished.state is State.DONE
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
