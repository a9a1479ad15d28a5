"""The PostgreSQL store's dependencies (``after``): the edges of a new task, a parent's end
settling its children (released, or cancelled in cascade), and a task's view of its parents.

The edges live in the ``deps`` table (migrations 9 and 11). Tasks without parents or children never
read it: the ``parents`` and ``children`` columns say which tasks need to. Every statement
takes a parent's children, or a batch's parents, as one array: a parent with 10,000
children costs a few statements, not one round trip per edge.

Between servers: an enqueue locks the parents it names (FOR UPDATE, in id order) before it
reads their states, and a parent's end locks its waiting children (in id order) before it
marks its edges done and looks for their other parents. So a parent cannot end unseen while
a child naming it is being created, and of two parents of one child ending at once on two
servers, the second to take the child's lock sees the first's edge done and releases it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from katar.core import rules
from katar.core.model import FINAL_STATES, NewTask, QueueOptions, State, Task
from katar.core.storage import Change
from katar.store import _settle
from katar.store._rows import checked_task_from_row as task_from_row  # apps write here too
from katar.store._rows import foreign_queue, update_values, view
from katar.store._sql import STATES
from katar.store.postgres.literals import bools, byteas, ints, texts
from katar.store.postgres.queries import Queries

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    Connection = AsyncConnection[tuple[Any, ...]]

R = TypeVar("R")

#: A parent as an enqueue finds it: its state, its result, its queue, its error.
Parent = tuple[State, bytes | None, str, str | None]
#: A new task's edge: child, parent, done, the parent's result (its outcome, rules.outcome,
#: for a child that runs whatever the outcome), the parent's queue if not the child's, and
#: whether the child runs whatever the outcome (after_failure "run").
Edge = tuple[int, int, bool, bytes | None, str | None, bool]


class Dependencies:
    """The statements of the dependencies, for the store's operations and its group commit,
    each in the transaction of its caller (``conn``)."""

    def __init__(
        self,
        sql: Queries,
        name: Callable[[Connection, int], Awaitable[str]],
        move: Callable[[Connection, Task, Task], Awaitable[None]],
    ) -> None:
        self._sql = sql
        #: The name of a queue by its id (the store's cache of names).
        self._name = name
        #: Write a task's row into another queue (the store's: a queue to create, and tell
        #: the other servers of, a place in a fair queue).
        self._move = move

    async def write(
        self,
        conn: Connection,
        old: Task,
        new: Task | None,
        options: QueueOptions,
        also: list[Change],
    ) -> Change | None:
        """Write a task's new version; the tasks its end settles go in ``also``
        (_settle.write)."""
        return await self.run(conn, _settle.write(old, new, options, also))

    async def run(self, conn: Connection, plan: Generator[_settle.Step, Any, R]) -> R:
        """Execute a plan of _settle's steps in ``conn``; what it returns."""
        try:
            step = next(plan)
            while True:
                step = plan.send(await self._step(conn, step))
        except StopIteration as finished:
            answer: R = finished.value
            return answer

    async def _step(self, conn: Connection, step: _settle.Step) -> Any:
        """One step of a _settle plan, in PostgreSQL; its answer. A parent's end locks its
        waiting children (in id order) before it marks its edges (see the module's
        docstring)."""
        sql = self._sql
        if isinstance(step, _settle.Update):
            await conn.execute(sql.update, update_values(step.task))
        elif isinstance(step, _settle.Delete):
            await conn.execute(sql.delete, (step.task.id,))
            if step.task.parents:
                await self.forget(conn, [step.task.id])
        elif isinstance(step, _settle.Move):
            await self._move(conn, step.old, step.new)
            return (await self.views(conn, [step.new]))[0]
        elif isinstance(step, _settle.ParentDone):
            await conn.execute(sql.lock_children, ([step.parent_id],))
            done = ([step.parent_id], [step.result], [step.outcome])
            cursor = await conn.execute(sql.parents_done, done)
            return [row[0] for row in await cursor.fetchall()]
        elif isinstance(step, _settle.ParentEnded):
            await conn.execute(sql.lock_children, ([step.parent_id],))
            ended = (step.outcome, step.parent_id)
            return [
                row[0] for row in await (await conn.execute(sql.parent_ended, ended)).fetchall()
            ]
        elif isinstance(step, _settle.Release):
            return await self._released(conn, step.children, step.now)
        elif isinstance(step, _settle.Orphans):
            rows = await (await conn.execute(sql.orphans, (step.parent_id,))).fetchall()
            return [task_from_row(row, await self._name(conn, row[1])) for row in rows]
        else:
            await conn.execute(sql.cancel, (step.error, step.now, step.ids))
        return None

    async def linked(
        self,
        conn: Connection,
        queue: str,
        task_id: int,
        limit: int,
        after: int,
        queues: Collection[str] | None = None,
        parents: bool = False,
    ) -> list[Task] | None:
        """Store.linked, in the transaction ``conn``."""
        sql = self._sql
        found = await (await conn.execute(sql.queue_of, (task_id,))).fetchone()
        if found is None or await self._name(conn, found[0]) != queue:
            return None
        if queues is None:
            statement = sql.linked_parents if parents else sql.linked_children
            page = await conn.execute(statement, (task_id, after, limit))
        else:
            statement = sql.linked_parents_in if parents else sql.linked_children_in
            page = await conn.execute(statement, (task_id, after, list(queues), limit))
        rows = await page.fetchall()
        tasks = [task_from_row(row, await self._name(conn, row[1])) for row in rows]
        return await self.views(conn, tasks)

    async def parents(self, conn: Connection, tasks: Sequence[NewTask]) -> dict[int, Parent]:
        """The state, result and queue of every task the batch names by id, locked until
        the enqueue commits; ValidationError for one that does not exist."""
        named = sorted({i for spec in tasks for i in spec.after})
        if not named:
            return {}
        cursor = await conn.execute(self._sql.parents, (named,))
        found: dict[int, Parent] = {}
        waited: dict[int, int] = {}
        for task_id, state, result, queue_id, children, error in await cursor.fetchall():
            found[task_id] = (STATES[state], result, await self._name(conn, queue_id), error)
            if STATES[state] not in FINAL_STATES:
                waited[task_id] = children
        rules.check_parents(tasks, found, waited)
        return found

    @staticmethod
    def depend(
        task: Task, parents: dict[int, Parent], run: bool = False
    ) -> tuple[Task, list[tuple[int, bool, bytes | None, str | None, bool]]]:
        """A new task with its parents (id -> state, result, queue and error; rules.depend),
        and its edges as (parent, done, result, parent queue if not the task's, run), without
        its id (not known before the insert). ``run``: it runs whatever their outcome
        (after_failure "run"); an edge to a parent already finished then holds its outcome."""
        ordered = sorted(parents.items())
        task = rules.depend(task, [(parent_id, parent[0]) for parent_id, parent in ordered], run)
        edges = []
        for parent_id, (state, result, queue, error) in ordered:
            settled = rules.first_edge(state, result, error, run)
            edges.append((parent_id, *settled, foreign_queue(queue, task.queue), run))
        return task, edges

    async def link(
        self,
        conn: Connection,
        edges: Sequence[Edge],
    ) -> None:
        """Write the edges (child, parent, done, result, parent queue, run) of new tasks,
        and mark their parents not done as having children."""
        if not edges:
            return
        # As array literals, as the tasks are (katar.store.postgres.literals).
        children, parents, done, results, queues, run = zip(*edges, strict=True)
        columns = (
            ints(children),
            ints(parents),
            bools(done),
            byteas(results),
            texts(queues),
            bools(run),
        )
        await conn.execute(self._sql.edges_insert, columns)
        waited: dict[int, int] = {}
        for _c, parent, settled, _r, _q, _run in edges:
            if not settled:
                waited[parent] = waited.get(parent, 0) + 1
        if waited:
            ids, counts = zip(*sorted(waited.items()), strict=True)
            await conn.execute(self._sql.has_children, (list(ids), list(counts)))

    async def views(self, conn: Connection, tasks: list[Task]) -> list[Task]:
        """The tasks with their dependencies as their records show them (one statement for
        those that have parents)."""
        ids = [task.id for task in tasks if task.parents]
        if not ids:
            return tasks
        edges: dict[int, list[tuple[int, bool, bytes | None, str | None]]] = {}
        for child_id, parent_id, done, result, queue in await (
            await conn.execute(self._sql.edges, (ids,))
        ).fetchall():
            edges.setdefault(child_id, []).append((parent_id, done, result, queue))
        return [view(task, edges.get(task.id, [])) if task.parents else task for task in tasks]

    async def still_waits(self, conn: Connection, task: Task) -> bool:
        if not task.parents:
            return False
        return await (await conn.execute(self._sql.still_waits, (task.id,))).fetchone() is not None

    async def forget(self, conn: Connection, child_ids: Sequence[int]) -> None:
        """Tasks removed: their edges as children go (the results they kept)."""
        if child_ids:
            await conn.execute(self._sql.forget, (list(child_ids),))

    async def parents_done(
        self,
        conn: Connection,
        parents: Sequence[tuple[int, bytes | None]],
        now: int,
        also: list[Change],
    ) -> None:
        """Parents (id, result) just done: their results go into their children's edges (their
        outcomes, rules.outcome_json, into those of children that run whatever the outcome),
        and the children they were the last to wait for are released (``also`` receives
        their changes). A statement of each kind for all of them, however many."""
        ids = [parent_id for parent_id, _result in parents]
        await conn.execute(self._sql.lock_children, (ids,))
        results = [result for _parent_id, result in parents]
        outcomes = [rules.outcome_json("done", result, None) for result in results]
        cursor = await conn.execute(self._sql.parents_done, (ids, results, outcomes))
        await self._release(conn, [row[0] for row in await cursor.fetchall()], now, also)

    async def _release(
        self, conn: Connection, released: list[int], now: int, also: list[Change]
    ) -> None:
        """Children whose edge to a parent just ended: those it was the last to wait for
        are released (rules.release, in SQL)."""
        also += [Change(task, State.WAITING) for task in await self._released(conn, released, now)]

    async def _released(self, conn: Connection, released: list[int], now: int) -> list[Task]:
        children = sorted(set(released))
        if not children:
            return []
        cursor = await conn.execute(self._sql.release, {"now": now, "ids": children})
        return [
            task_from_row(row, await self._name(conn, row[1])) for row in await cursor.fetchall()
        ]

    async def settle(
        self,
        conn: Connection,
        parent: Task,
        new: Task | None,
        now: int,
        also: list[Change],
        how: str | None = None,
    ) -> None:
        """The tasks waiting for ``parent``, now ``new`` (None: deleted), settled as
        _settle.settle says; ``also`` receives their changes."""
        if parent.children:
            await self.run(conn, _settle.settle(parent, new, now, also, how))
