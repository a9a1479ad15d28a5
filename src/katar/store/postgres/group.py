"""Group commit on PostgreSQL: the workers' polls of one queue that arrive together share one
transaction.

A poll on the hot path (its acks all "done"s of distinct tasks, its queue claiming the first
ready tasks in order) joins the group being gathered for its queue. At most
``GROUPS_IN_FLIGHT`` groups of a queue run at once, so that while one runs the polls arriving
gather into the next: under load, 32 workers' polls cost a handful of transactions, not 32.
A group is one transaction of four round trips (``BEGIN``, one statement for every "done" of
every poll, one claim for every poll's tasks, ``COMMIT``) and one WAL flush, whatever its
size. A poll that finds the group gathering adds nothing to its own latency but the wait for
the group in flight; a poll alone runs at once, as a group of one.

When one "done" of a group does not match its task's current delivery (a stale or refused
ack, a cancel requested, a unique key held past the end, a task with dependencies), the
group's transaction is rolled back and its polls run one by one on the rules' path, so that
each poll's answer, and what it changes, is exactly what it would be alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from katar.core import rules
from katar.core.model import RUNNING, Ack, QueueOptions, Task, parse_task_id
from katar.core.storage import Change, PollResult
from katar.store._rows import CHILDREN_AT, PARENTS_AT
from katar.store._rows import checked_task_from_row as task_from_row  # apps write here too
from katar.store.postgres.connection import Connections
from katar.store.postgres.deps import Dependencies
from katar.store.postgres.queries import Queries

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from psycopg import AsyncConnection

    Connection = AsyncConnection[tuple[Any, ...]]
    #: The store's poll on the rules' path: queue, options, acks, limit, worker, now.
    PollAlone = Callable[
        [str, QueueOptions, Sequence[Ack], int, str | None, int], Awaitable[PollResult]
    ]
    #: The store's claim of a limited queue for several polls: connection, queue, its id,
    #: options, each poll's (limit, worker), now; each poll's share.
    ClaimLimited = Callable[
        [Connection, str, int, QueueOptions, Sequence[tuple[int, str | None]], int],
        Awaitable[list["Share"]],
    ]

#: Groups of one queue running at once: one gathers while another commits. More would split
#: the polls into smaller groups (more commits) without more work done in parallel.
GROUPS_IN_FLIGHT: Final = 2


class Share(NamedTuple):
    """A poll's share of a claim made for several: its tasks, and, when it got less than
    it asked, what it learns (PollResult.retry_at and held)."""

    delivered: list[Task]
    retry_at: int | None = None
    held: str | None = None


def plain_dones(acks: Sequence[Ack]) -> list[int] | None:
    """The ids the acks name when every one is a "done" of a task of ours, no task twice;
    else None (the poll takes the rules' path)."""
    ids: list[int] = []
    for ack in acks:
        task_id = parse_task_id(ack.task_id) if ack.status == "done" else None
        if task_id is None:
            return None
        ids.append(task_id)
    return ids if len(set(ids)) == len(ids) else None


@dataclass(slots=True)
class Done:
    """The "done"s of one transaction: the acks, with the worker of the poll of each."""

    acks: list[tuple[int, Ack, str | None]] = field(default_factory=list)

    def statement(
        self, sql: Queries, queue_id: int, options: QueueOptions, now: int, watching: bool
    ) -> tuple[str, tuple[Any, ...]]:
        """One statement that finishes the current deliveries the acks name, as
        rules.apply_ack would; an ack it does not match is left to the rules. It returns
        every column of the tasks finished, or only their ids when nobody watches
        (Store.watch)."""
        ids = [task_id for task_id, _ack, _worker in self.acks]
        attempts = [ack.attempt or 0 for _id, ack, _worker in self.acks]
        workers = [worker for _id, _ack, worker in self.acks]
        if options.persistent:
            results = [None if a.result is None else bytes(a.result) for _i, a, _w in self.acks]
            args: tuple[Any, ...] = (ids, attempts, results, workers, now, queue_id)
            return sql.done_keep if watching else sql.done_keep_ids, args
        args = (ids, attempts, workers, queue_id)
        return sql.done_drop if watching else sql.done_drop_ids, args

    def changes(
        self,
        rows: list[tuple[Any, ...]],
        queue: str,
        options: QueueOptions,
        now: int,
        watching: bool,
    ) -> dict[int, Change | None]:
        """What the statement's rows say: each finished task's change, or None when nobody
        watches."""
        if not watching:
            return dict.fromkeys((row[0] for row in rows), None)
        if options.persistent:  # the rows as updated
            return {row[0]: Change(task_from_row(row, queue), RUNNING) for row in rows}
        # The rows as they were before the delete: their last version is the rules' "done".
        by_id = {task_id: (ack, worker) for task_id, ack, worker in self.acks}
        finished: dict[int, Change | None] = {}
        for row in rows:
            task = task_from_row(row, queue)
            ack, worker = by_id[task.id]
            last = rules.apply_ack(task, ack, options, now, worker)
            assert last is not None
            finished[task.id] = Change(last, RUNNING)
        return finished

    def edges(
        self, rows: list[tuple[Any, ...]], watching: bool
    ) -> tuple[list[tuple[int, bytes | None]], list[int]]:
        """Of the tasks the statement finished: those with children, with their results
        (their children's edges take them); and those with parents (their edges go when the
        task goes, in a queue without history)."""
        if watching:  # every column (COLUMNS): parents and children at their places
            rows = [(row[0], row[PARENTS_AT], row[CHILDREN_AT]) for row in rows]
        results: dict[int, bytes | None] = {
            task_id: None if ack.result is None else bytes(ack.result)
            for task_id, ack, _worker in self.acks
        }
        parents = [(row[0], results[row[0]]) for row in rows if row[2]]
        return parents, [row[0] for row in rows if row[1]]


async def claim(
    conn: Connection,
    sql: Queries,
    queue: str,
    queue_id: int,
    options: QueueOptions,
    workers: list[str | None],
    now: int,
) -> list[tuple[int, Task]]:
    """Lease up to ``len(workers)`` ready tasks, the n-th to ``workers[n]``: (slot, task)
    pairs in the claim's order (priority, then id), slots counted from 0."""
    args = (queue_id, now, len(workers), workers, now, options.timeout, now, now)
    rows = await (await conn.execute(sql.claim, args)).fetchall()
    return sorted(((row[0] - 1, task_from_row(row[1:], queue)) for row in rows), key=_slot)


def _slot(taken: tuple[int, Task]) -> int:
    return taken[0]


@dataclass(slots=True)
class _Waiting:
    """A poll in a group: what it asks, and where its answer goes."""

    options: QueueOptions
    acks: Sequence[Ack]
    ids: list[int]
    limit: int
    worker: str | None
    now: int
    answer: asyncio.Future[PollResult]


class _Mismatch(Exception):
    """A group's "done" that the rules must decide: the group's polls go one by one."""


class GroupCommit:
    """The polls of the hot path, gathered per queue and run as groups, each in one
    transaction of ``db``; a group that the rules must decide goes poll by poll through
    ``poll_alone``."""

    def __init__(
        self,
        sql: Queries,
        db: Connections,
        deps: Dependencies,
        poll_alone: PollAlone,
        claim_limited: ClaimLimited,
        notify_ready: Callable[[Connection, Iterable[Task]], Awaitable[None]],
        watching: Callable[[], bool],
        lease_start: Callable[[int], int],
        keep_events: Callable[[Connection, Sequence[Change]], Awaitable[None]],
    ) -> None:
        self._sql = sql
        self._db = db
        self._deps = deps
        self._poll_alone = poll_alone
        self._claim_limited = claim_limited
        self._notify_ready = notify_ready
        #: Whether anybody watches the tasks' changes (Store.watch).
        self._watching = watching
        self._lease_start = lease_start
        #: The store's keeping of the events that changes make (Store.notify), in the
        #: group's transaction. It needs the changes: asked only while somebody watches.
        self._keep_events = keep_events
        #: The polls gathering, per queue, for the next group.
        self._gathering: dict[str, list[_Waiting]] = {}
        #: Groups running, per queue.
        self._running: dict[str, int] = {}
        self._runners: set[asyncio.Task[None]] = set()

    async def finish_edges(
        self,
        conn: Connection,
        done: Done,
        rows: list[tuple[Any, ...]],
        options: QueueOptions,
        now: int,
        watching: bool,
    ) -> list[Change]:
        """Settle the edges of the tasks that Done's statement finished: their children are
        released when they were the last to wait for (their changes returned), and the
        edges of those removed (a queue without history) go."""
        parents, children = done.edges(rows, watching)
        released: list[Change] = []
        if parents:
            await self._deps.parents_done(conn, parents, now, released)
        if children and not options.persistent:
            await self._deps.forget(conn, children)
        return released

    async def finish(self) -> None:
        """Let the groups running end (their polls get their answers) before the pool
        closes."""
        while self._runners:
            await asyncio.gather(*self._runners, return_exceptions=True)

    async def poll(
        self,
        queue: str,
        queue_id: int,
        options: QueueOptions,
        acks: Sequence[Ack],
        ids: list[int],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        answer: asyncio.Future[PollResult] = asyncio.get_running_loop().create_future()
        self._gathering.setdefault(queue, []).append(
            _Waiting(options, acks, ids, limit, worker, now, answer)
        )
        if self._running.get(queue, 0) < GROUPS_IN_FLIGHT:
            self._running[queue] = self._running.get(queue, 0) + 1
            runner = asyncio.create_task(self._run_groups(queue, queue_id))
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        return await answer

    async def _run_groups(self, queue: str, queue_id: int) -> None:
        """Run the queue's groups while polls gather."""
        try:
            while group := self._next_group(queue):
                try:
                    await self._run_group(queue, queue_id, group)
                except _Mismatch:
                    for one in group:
                        await self._run_alone(queue, one)
                except Exception as exc:  # the store's error is each poll's answer
                    for one in group:
                        if not one.answer.done():
                            one.answer.set_exception(exc)
        finally:
            self._running[queue] -= 1

    def _next_group(self, queue: str) -> list[_Waiting]:
        """The polls gathered for the queue that can share a transaction: those still
        waiting, under the same options, naming no task twice (the others wait for the
        next group)."""
        gathered = self._gathering.pop(queue, [])
        group: list[_Waiting] = []
        later: list[_Waiting] = []
        named: set[int] = set()
        for one in gathered:
            if one.answer.done():  # its request was cancelled
                continue
            if group and (one.options is not group[0].options or not named.isdisjoint(one.ids)):
                later.append(one)
                continue
            named.update(one.ids)
            group.append(one)
        if later:
            self._gathering.setdefault(queue, [])[:0] = later
        return group

    async def _run_alone(self, queue: str, one: _Waiting) -> None:
        if one.answer.done():
            return
        try:
            result = await self._poll_alone(
                queue, one.options, one.acks, one.limit, one.worker, one.now
            )
        except Exception as exc:
            if not one.answer.done():
                one.answer.set_exception(exc)
        else:
            if not one.answer.done():
                one.answer.set_result(result)

    async def _run_group(self, queue: str, queue_id: int, group: list[_Waiting]) -> None:
        options = group[0].options
        now = max(one.now for one in group)
        done = Done(
            [(i, a, one.worker) for one in group for i, a in zip(one.ids, one.acks, strict=True)]
        )
        workers = [one.worker for one in group for _ in range(one.limit)]
        finished: dict[int, Change | None] = {}
        released: list[Change] = []  # the children that the "done"s release
        taken: list[tuple[int, Task]] = []
        shares: list[Share] = []  # a limited queue's: each poll's
        async with self._db.transaction() as conn:
            if done.acks:
                watching = self._watching()
                sql, args = done.statement(self._sql, queue_id, options, now, watching)
                rows = await (await conn.execute(sql, args)).fetchall()
                if len(rows) < len(done.acks):
                    raise _Mismatch
                finished = done.changes(rows, queue, options, now, watching)
                released = await self.finish_edges(conn, done, rows, options, now, watching)
                if watching:
                    ended = [change for change in finished.values() if change is not None]
                    await self._keep_events(conn, ended + released)
            if workers:
                # Leases start now: not when the polls arrived, before the waits for the
                # connection and the locks (Store.lease_start).
                now = self._lease_start(now)
                if options.custom_claim:
                    asks = [(one.limit, one.worker) for one in group]
                    shares = await self._claim_limited(conn, queue, queue_id, options, asks, now)
                    slot = 0
                    for one, share in zip(group, shares, strict=True):
                        taken += enumerate(share.delivered, slot)
                        slot += one.limit
                else:
                    taken = await claim(conn, self._sql, queue, queue_id, options, workers, now)
                tasks = [task for _slot, task in taken]
                tasks = await self._deps.views(conn, tasks)
                taken = [(slot, task) for (slot, _t), task in zip(taken, tasks, strict=True)]
            await self._notify_ready(conn, (change.task for change in released))
        first = 0  # each poll's slots: its share of the claim, in the group's order
        by_slot = dict(taken)
        for index, one in enumerate(group):
            delivered = [by_slot[s] for s in range(first, first + one.limit) if s in by_slot]
            first += one.limit
            changes = [change for i in one.ids if (change := finished.get(i)) is not None]
            changes += released  # the engine applies them once: they go with the first poll
            released = []
            share = shares[index] if shares else Share(delivered)
            result = PollResult(delivered, changes, share.retry_at, (), share.held)
            if not one.answer.done():
                one.answer.set_result(result)
