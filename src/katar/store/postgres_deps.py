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
from typing import TYPE_CHECKING, Any, Final

from katar.core import rules
from katar.core.model import DONE, FINAL_STATES, NewTask, State, Task
from katar.core.storage import Change
from katar.store._rows import CHILDREN, COLUMNS, PARENTS, foreign_queue, view
from katar.store._rows import checked_task_from_row as task_from_row  # apps write here too

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    Connection = AsyncConnection[tuple[Any, ...]]

_STATES: Final = tuple(State)
#: A parent as an enqueue finds it: its state, its result, its queue.
Parent = tuple[State, bytes | None, str]


def _bytea(value: bytes | None) -> str:
    """An element of a bytea array literal: NULL, or the bytes in hex, quoted."""
    return "NULL" if value is None else f'"\\\\x{value.hex()}"'


def _text(value: str | None) -> str:
    """An element of a text array literal: NULL, or the text quoted (backslash and double
    quote escaped, though queue names have neither)."""
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class PostgresDependencies:
    """The dependencies' part of PostgresStore, which provides what is declared here."""

    _schema: str
    _sql: dict[str, str]
    _name: Callable[[Any, int], Awaitable[str]]
    _transaction: Callable[..., Any]

    def _deps_sql(self) -> dict[str, str]:
        s = self._schema
        # The page's ids first, as an array: the tasks are then read by their primary key,
        # whatever the planner makes of the table's size. A task's queue is looked up per
        # edge (a subquery, not a join the planner could turn into a scan of the tasks).
        linked = (
            f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY(ARRAY(SELECT d.{{other}} FROM"
            f" {s}.deps AS d WHERE d.{{this}} = %s AND d.{{other}} > %s AND (SELECT c.queue_id"
            f" FROM {s}.tasks AS c WHERE c.id = d.{{other}}){{queues}} ORDER BY d.{{other}}"
            " LIMIT %s)) ORDER BY id"
        )
        anywhere = " IS NOT NULL"
        within = f" = ANY(ARRAY(SELECT id FROM {s}.queues WHERE name = ANY(%s)))"
        return {
            "parents": (
                f"SELECT id, state, result, queue_id, children_count FROM {s}.tasks"
                " WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
            ),
            "edges_insert": (
                f"INSERT INTO {s}.deps (child_id, parent_id, done, result, parent_queue) SELECT *"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::boolean[], %s::bytea[], %s::text[])"
            ),
            "has_children": (
                f"UPDATE {s}.tasks AS t SET children = true, children_count = t.children_count"
                " + v.n FROM unnest(%s::bigint[], %s::int[]) AS v(id, n) WHERE t.id = v.id"
            ),
            "edges": (
                f"SELECT child_id, parent_id, done, result, parent_queue FROM {s}.deps"
                " WHERE child_id = ANY(%s) ORDER BY child_id, parent_id"
            ),
            "lock_children": (
                f"SELECT 1 FROM {s}.tasks WHERE id IN (SELECT child_id FROM {s}.deps WHERE"
                " parent_id = ANY(%s) AND NOT done) ORDER BY id FOR UPDATE"
            ),
            "parents_done": (
                f"UPDATE {s}.deps AS d SET done = true, result = v.result FROM unnest(%s::bigint[],"
                " %s::bytea[]) AS v(id, result) WHERE d.parent_id = v.id AND NOT d.done"
                " RETURNING d.child_id"
            ),
            # rules.release, in SQL: ready, or scheduled while the delay runs.
            "release": (
                f"UPDATE {s}.tasks AS t SET state = CASE WHEN run_at > %(now)s THEN 2 ELSE 1 END,"
                " run_at = CASE WHEN run_at > %(now)s THEN run_at END, updated_at = %(now)s"
                " WHERE id = ANY(%(ids)s) AND state = 7 AND NOT EXISTS (SELECT 1 FROM"
                f" {s}.deps AS d WHERE d.child_id = t.id AND NOT d.done) RETURNING {COLUMNS}"
            ),
            "orphans": (
                f"SELECT {COLUMNS} FROM {s}.tasks WHERE id IN (SELECT child_id FROM {s}.deps"
                " WHERE parent_id = %s AND NOT done) AND state IN (0, 1, 2, 7) ORDER BY id"
                " FOR UPDATE"
            ),
            "cancel": (
                f"UPDATE {s}.tasks SET state = 6, run_at = NULL, error = %s, updated_at = %s"
                " WHERE id = ANY(%s)"
            ),
            "still_waits": (
                f"SELECT 1 FROM {s}.deps AS d JOIN {s}.tasks AS p ON p.id = d.parent_id"
                " WHERE d.child_id = %s AND NOT d.done AND p.state NOT IN (4, 5, 6) LIMIT 1"
            ),
            "forget": f"DELETE FROM {s}.deps WHERE child_id = ANY(%s)",
            # A page of a task's children (Store.linked), over the edges' index by parent
            # (deps_children, in child order: no sort, however many children), or of its
            # parents, over the primary key; "_in": of some queues only. The parents
            # removed are left out (their edges stay, with their results).
            "queue_of": f"SELECT queue_id FROM {s}.tasks WHERE id = %s",
            "linked_children": linked.format(queues=anywhere, **CHILDREN),
            "linked_children_in": linked.format(queues=within, **CHILDREN),
            "linked_parents": linked.format(queues=anywhere, **PARENTS),
            "linked_parents_in": linked.format(queues=within, **PARENTS),
        }

    async def linked(
        self,
        queue: str,
        task_id: int,
        limit: int,
        after: int,
        queues: Collection[str] | None = None,
        parents: bool = False,
    ) -> list[Task] | None:
        sql = self._sql
        kind = "linked_parents" if parents else "linked_children"
        async with self._transaction(writes=False) as conn:
            found = await (await conn.execute(sql["queue_of"], (task_id,))).fetchone()
            if found is None or await self._name(conn, found[0]) != queue:
                return None
            if queues is None:
                page = await conn.execute(sql[kind], (task_id, after, limit))
            else:
                page = await conn.execute(sql[f"{kind}_in"], (task_id, after, list(queues), limit))
            rows = await page.fetchall()
            tasks = [task_from_row(row, await self._name(conn, row[1])) for row in rows]
            return await self._views(conn, sql, tasks)

    async def _parents(
        self, conn: Connection, sql: dict[str, str], tasks: Sequence[NewTask]
    ) -> dict[int, Parent]:
        """The state, result and queue of every task the batch names by id, locked until
        the enqueue commits; ValidationError for one that does not exist."""
        named = sorted({i for spec in tasks for i in spec.after})
        if not named:
            return {}
        cursor = await conn.execute(sql["parents"], (named,))
        found: dict[int, Parent] = {}
        waited: dict[int, int] = {}
        for task_id, state, result, queue_id, children in await cursor.fetchall():
            found[task_id] = (_STATES[state], result, await self._name(conn, queue_id))
            if _STATES[state] not in FINAL_STATES:
                waited[task_id] = children
        for index, spec in enumerate(tasks):
            for parent_id in spec.after:
                if parent_id not in found:
                    raise rules.unknown_parent(f"tasks[{index}]", parent_id)
        rules.check_children(tasks, waited)
        return found

    @staticmethod
    def _depend(
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

    @staticmethod
    async def _link(
        conn: Connection,
        sql: dict[str, str],
        edges: Sequence[tuple[int, int, bool, bytes | None, str | None]],
    ) -> None:
        """Write the edges (child, parent, done, result, parent queue) of new tasks, and
        mark their parents not done as having children."""
        if not edges:
            return
        # Array literals built by str.join: the driver's adaptation of a list, element by
        # element, cost more than the insert itself (as for the tasks, postgres._columns).
        children = "{" + ",".join([str(child) for child, _p, _d, _r, _q in edges]) + "}"
        parents = "{" + ",".join([str(parent) for _c, parent, _d, _r, _q in edges]) + "}"
        done = "{" + ",".join(["t" if done else "f" for _c, _p, done, _r, _q in edges]) + "}"
        results = "{" + ",".join([_bytea(result) for _c, _p, _d, result, _q in edges]) + "}"
        queues = "{" + ",".join([_text(queue) for _c, _p, _d, _r, queue in edges]) + "}"
        await conn.execute(sql["edges_insert"], (children, parents, done, results, queues))
        waited: dict[int, int] = {}
        for _c, parent, settled, _r, _q in edges:
            if not settled:
                waited[parent] = waited.get(parent, 0) + 1
        if waited:
            ids, counts = zip(*sorted(waited.items()), strict=True)
            await conn.execute(sql["has_children"], (list(ids), list(counts)))

    @staticmethod
    async def _views(conn: Connection, sql: dict[str, str], tasks: list[Task]) -> list[Task]:
        """The tasks with their dependencies as their records show them (one statement for
        those that have parents)."""
        ids = [task.id for task in tasks if task.parents]
        if not ids:
            return tasks
        edges: dict[int, list[tuple[int, bool, bytes | None, str | None]]] = {}
        for child_id, parent_id, done, result, queue in await (
            await conn.execute(sql["edges"], (ids,))
        ).fetchall():
            edges.setdefault(child_id, []).append((parent_id, done, result, queue))
        return [view(task, edges.get(task.id, [])) if task.parents else task for task in tasks]

    @staticmethod
    async def _still_waits(conn: Connection, sql: dict[str, str], task: Task) -> bool:
        if not task.parents:
            return False
        return await (await conn.execute(sql["still_waits"], (task.id,))).fetchone() is not None

    @staticmethod
    async def _forget(conn: Connection, sql: dict[str, str], child_ids: Sequence[int]) -> None:
        """Tasks removed: their edges as children go (the results they kept)."""
        if child_ids:
            await conn.execute(sql["forget"], (list(child_ids),))

    async def _parents_done(
        self,
        conn: Connection,
        sql: dict[str, str],
        parents: Sequence[tuple[int, bytes | None]],
        now: int,
        also: list[Change],
    ) -> None:
        """Parents (id, result) just done: their results go into their children's edges, and
        the children they were the last to wait for are released (``also`` receives their
        changes). A statement of each kind for all of them, however many."""
        ids = [parent_id for parent_id, _result in parents]
        await conn.execute(sql["lock_children"], (ids,))
        results = [result for _parent_id, result in parents]
        cursor = await conn.execute(sql["parents_done"], (ids, results))
        children = sorted({row[0] for row in await cursor.fetchall()})
        if children:
            cursor = await conn.execute(sql["release"], {"now": now, "ids": children})
            for row in await cursor.fetchall():
                task = task_from_row(row, await self._name(conn, row[1]))
                also.append(Change(task, State.WAITING))

    async def _settle(
        self,
        conn: Connection,
        sql: dict[str, str],
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
        how = rules.parent_end(parent.state, None if new is None else new.state)
        if how is None:
            return
        if how == "done":
            assert new is not None
            result = None if new.result is None else bytes(new.result)
            await self._parents_done(conn, sql, [(parent.id, result)], now, also)
            return
        level = [(parent.id, how)]
        while level:
            below: list[tuple[int, str]] = []
            for parent_id, ended in level:
                rows = await (await conn.execute(sql["orphans"], (parent_id,))).fetchall()
                if not rows:
                    continue
                error = rules.orphan_error(parent_id, ended)
                await conn.execute(sql["cancel"], (error, now, [row[0] for row in rows]))
                for row in rows:
                    orphan = task_from_row(row, await self._name(conn, row[1]))
                    cancelled = rules.orphaned(orphan, parent_id, ended, now)
                    assert cancelled is not None
                    also.append(Change(cancelled, orphan.state))
                    if orphan.children:
                        below.append((orphan.id, "was cancelled"))
            level = below
