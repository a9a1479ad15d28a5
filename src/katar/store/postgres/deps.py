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

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from katar.core import rules
from katar.core.model import DONE, FINAL_STATES, NewTask, State, Task
from katar.core.storage import Change
from katar.store._rows import checked_task_from_row as task_from_row  # apps write here too
from katar.store._rows import foreign_queue, view
from katar.store._sql import STATES
from katar.store.postgres.literals import bools, byteas, ints, texts
from katar.store.postgres.queries import Queries

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    Connection = AsyncConnection[tuple[Any, ...]]

#: A parent as an enqueue finds it: its state, its result, its queue.
Parent = tuple[State, bytes | None, str]


class Dependencies:
    """The statements of the dependencies, for the store's operations and its group commit,
    each in the transaction of its caller (``conn``)."""

    def __init__(self, sql: Queries, name: Callable[[Connection, int], Awaitable[str]]) -> None:
        self._sql = sql
        #: The name of a queue by its id (the store's cache of names).
        self._name = name

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
        for task_id, state, result, queue_id, children in await cursor.fetchall():
            found[task_id] = (STATES[state], result, await self._name(conn, queue_id))
            if STATES[state] not in FINAL_STATES:
                waited[task_id] = children
        for index, spec in enumerate(tasks):
            for parent_id in spec.after:
                if parent_id not in found:
                    raise rules.unknown_parent(f"tasks[{index}]", parent_id)
        rules.check_children(tasks, waited)
        return found

    @staticmethod
    def depend(
        task: Task, parents: dict[int, Parent]
    ) -> tuple[Task, list[tuple[int, bool, bytes | None, str | None]]]:
        """A new task with its parents (id -> state, result and queue; rules.depend), and its
        edges as (parent, done, result, parent queue if not the task's), without its id (not
        known before the insert)."""
        ordered = sorted(parents.items())
        task = rules.depend(task, [(parent_id, state) for parent_id, (state, _r, _q) in ordered])
        edges = [
            (
                parent_id,
                state is DONE,
                result if state is DONE else None,
                foreign_queue(queue, task.queue),
            )
            for parent_id, (state, result, queue) in ordered
        ]
        return task, edges

    async def link(
        self,
        conn: Connection,
        edges: Sequence[tuple[int, int, bool, bytes | None, str | None]],
    ) -> None:
        """Write the edges (child, parent, done, result, parent queue) of new tasks, and
        mark their parents not done as having children."""
        if not edges:
            return
        # As array literals, as the tasks are (katar.store.postgres.literals).
        children, parents, done, results, queues = zip(*edges, strict=True)
        columns = (ints(children), ints(parents), bools(done), byteas(results), texts(queues))
        await conn.execute(self._sql.edges_insert, columns)
        waited: dict[int, int] = {}
        for _c, parent, settled, _r, _q in edges:
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
        """Parents (id, result) just done: their results go into their children's edges, and
        the children they were the last to wait for are released (``also`` receives their
        changes). A statement of each kind for all of them, however many."""
        ids = [parent_id for parent_id, _result in parents]
        await conn.execute(self._sql.lock_children, (ids,))
        results = [result for _parent_id, result in parents]
        cursor = await conn.execute(self._sql.parents_done, (ids, results))
        children = sorted({row[0] for row in await cursor.fetchall()})
        if children:
            cursor = await conn.execute(self._sql.release, {"now": now, "ids": children})
            for row in await cursor.fetchall():
                task = task_from_row(row, await self._name(conn, row[1]))
                also.append(Change(task, State.WAITING))

    async def settle(
        self,
        conn: Connection,
        parent: Task,
        new: Task | None,
        now: int,
        also: list[Change],
    ) -> None:
        """The tasks waiting for ``parent``, now ``new`` (None: deleted): released when it
        is done and it was their last, cancelled when it failed, was cancelled or deleted
        (and theirs after them, level by level); ``also`` receives their changes."""
        if not parent.children:
            return
        ends = None if new is None else rules.dependants_see(parent, new)
        how = rules.parent_end(parent.state, ends)
        if how is None:
            return
        if how == "done":
            assert new is not None
            result = None if new.result is None else bytes(new.result)
            await self.parents_done(conn, [(parent.id, result)], now, also)
            return
        level = [(parent.id, how)]
        while level:
            below: list[tuple[int, str]] = []
            for parent_id, ended in level:
                rows = await (await conn.execute(self._sql.orphans, (parent_id,))).fetchall()
                if not rows:
                    continue
                error = rules.orphan_error(parent_id, ended)
                await conn.execute(self._sql.cancel, (error, now, [row[0] for row in rows]))
                for row in rows:
                    orphan = task_from_row(row, await self._name(conn, row[1]))
                    cancelled = rules.orphaned(orphan, parent_id, ended, now)
                    assert cancelled is not None
                    also.append(Change(cancelled, orphan.state))
                    if orphan.children:
                        below.append((orphan.id, "was cancelled"))
            level = below
