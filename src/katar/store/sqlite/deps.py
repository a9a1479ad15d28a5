"""The SQLite store's dependencies (``after``): the edges of a new task, a parent's end
settling its children (released, or cancelled in cascade), and a task's view of its parents.

The edges live in the ``deps`` table (schema.py). Tasks without parents or children never
read it: the ``parents`` and ``children`` columns say which tasks need to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Generator, Sequence
from typing import Any, Final, TypeVar

import msgspec

from katar.core import rules
from katar.core.model import FINAL_STATES, NewTask, QueueOptions, State, Task
from katar.core.storage import Change
from katar.store import _settle
from katar.store import _sql as sql
from katar.store._rows import CHILDREN, COLUMNS, PARENTS, foreign_queue, update_values, view
from katar.store.sqlite.queues import Queues

_PARENTS: Final = (
    "SELECT id, state, result, queue_id, children, error FROM tasks"
    " WHERE id IN (SELECT value FROM json_each(?))"
)
_EDGE: Final = (
    "INSERT INTO deps (child_id, parent_id, done, result, parent_queue, run) VALUES (?,?,?,?,?,?)"
)
# ``children`` counts the tasks that named the task while it was not done (rules.MAX_CHILDREN);
# not 0 is what the fast paths look at.
_HAS_CHILDREN: Final = "UPDATE tasks SET children=children+? WHERE id=?"
_EDGES: Final = (
    "SELECT parent_id, done, result, parent_queue FROM deps WHERE child_id=? ORDER BY parent_id"
)
# A parent done: its edges take its result (its outcome, rules.outcome, those of children
# that run whatever the outcome: ``run``), and answer the children they lead to.
_PARENT_DONE: Final = (
    "UPDATE deps SET done=1, result=CASE WHEN run THEN ?2 ELSE ?1 END"
    " WHERE parent_id=?3 AND done=0 RETURNING child_id"
)
# A parent failed, cancelled or deleted: the edges of the children that run whatever the
# outcome take it (rules.outcome), and answer those children.
_PARENT_ENDED: Final = (
    "UPDATE deps SET done=1, result=? WHERE parent_id=? AND done=0 AND run=1 RETURNING child_id"
)
# Those children that wait (WAITING) and have no other parent left: ready, or scheduled while
# their delay runs (rules.release, in SQL). One statement for all of them. The partial index
# of pending edges, named: by the primary key, a child with 10,000 parents would have its
# edges scanned at each parent's end.
_RELEASE: Final = (
    f"UPDATE tasks SET state = CASE WHEN run_at > ?1 THEN {sql.SCHEDULED} ELSE {sql.READY} END,"
    " run_at = CASE WHEN run_at > ?1 THEN run_at END, updated_at = ?1"
    f" WHERE id IN (SELECT value FROM json_each(?2)) AND state = {sql.WAITING}"
    " AND NOT EXISTS (SELECT 1 FROM deps INDEXED BY deps_pending"
    " WHERE child_id = tasks.id AND done = 0)"
    f" RETURNING {COLUMNS}"
)
# The children a failed, cancelled or deleted parent leaves that are not running or finished
# (rules.orphaned), and their cancellation.
_ORPHANS: Final = (
    f"SELECT {COLUMNS} FROM tasks WHERE id IN (SELECT child_id FROM deps WHERE parent_id=?"
    f" AND done=0) AND state IN {sql.NOT_STARTED}"
)
_CANCEL: Final = (
    f"UPDATE tasks SET state={sql.CANCELLED}, run_at=NULL, error=?, updated_at=?"
    " WHERE id IN (SELECT value FROM json_each(?))"
)
# Whether a task names a parent that is not finished (rules.change_status's ``waiting``).
_STILL_WAITS: Final = (
    "SELECT 1 FROM deps JOIN tasks ON tasks.id = deps.parent_id WHERE deps.child_id=?"
    f" AND deps.done=0 AND tasks.state NOT IN {sql.ENDED} LIMIT 1"
)
_FORGET: Final = "DELETE FROM deps WHERE child_id IN (SELECT value FROM json_each(?))"
# A page of a task's children (Store.linked), over the edges' index by parent
# (deps_children, in child order: no sort, however many children), or of its parents, over
# the primary key; {queues} keeps those of some queues only. The join leaves out the parents
# removed (their edges stay, with their results).
_LINKED: Final = (
    f"SELECT {COLUMNS} FROM tasks WHERE id IN (SELECT d.{{other}} FROM deps AS d"
    " JOIN tasks AS c ON c.id = d.{other} WHERE d.{this} = ? AND d.{other} > ?{queues}"
    " ORDER BY d.{other} LIMIT ?) ORDER BY id"
)
_IN_QUEUES: Final = " AND c.queue_id IN (SELECT value FROM json_each(?))"
_QUEUE_OF: Final = "SELECT queue_id FROM tasks WHERE id=?"
_UPDATE: Final = (
    "UPDATE tasks SET state=?, priority=?, attempts=?, attempt_base=?, error=?, result=?,"
    " worker=?, updated_at=?, run_at=?, lease_until=?, cancel_requested=?, progress=?,"
    " expires_at=?, started_at=?, history=? WHERE id=?"
)


R = TypeVar("R")

#: An edge as the deps table holds it: child, parent, done, the parent's result (its
#: outcome, rules.outcome, for a child that runs whatever the outcome), the parent's queue
#: when it is not the child's (_rows.foreign_queue), and whether the child runs whatever
#: the outcome (after_failure "run").
Edge = tuple[int, int, int, bytes | None, str | None, int]
#: A parent as an enqueue finds it: its state, its result, its queue, its error.
Parent = tuple[State, bytes | None, str, str | None]


class Dependencies:
    """The SQLite store's dependencies, over the store's queues (their names, and the tasks
    built from rows); every operation is given the connection it runs on."""

    def __init__(
        self, queues: Queues, move: Callable[[sqlite3.Connection, Task, Task], None]
    ) -> None:
        self._queues = queues
        self._task = queues.task
        #: Write a task's row into another queue (the store's: a queue to create, a place
        #: in a fair queue).
        self._move = move

    def write(
        self,
        conn: sqlite3.Connection,
        old: Task,
        new: Task | None,
        options: QueueOptions,
        also: list[Change],
    ) -> Change | None:
        """Write a task's new version; the tasks its end settles go in ``also``
        (_settle.write)."""
        return self.run(conn, _settle.write(old, new, options, also))

    def run(self, conn: sqlite3.Connection, plan: Generator[_settle.Step, Any, R]) -> R:
        """Execute a plan of _settle's steps in ``conn``; what it returns."""
        try:
            step = next(plan)
            while True:
                step = plan.send(self._step(conn, step))
        except StopIteration as finished:
            answer: R = finished.value
            return answer

    def _step(self, conn: sqlite3.Connection, step: _settle.Step) -> Any:
        """One step of a _settle plan, in SQLite; its answer."""
        if isinstance(step, _settle.Update):
            conn.execute(_UPDATE, update_values(step.task))
        elif isinstance(step, _settle.Delete):
            conn.execute("DELETE FROM tasks WHERE id=?", (step.task.id,))
            if step.task.parents:
                self.forget(conn, [step.task.id])
        elif isinstance(step, _settle.Move):
            self._move(conn, step.old, step.new)
            return self.view_of(conn, step.new)
        elif isinstance(step, _settle.ParentDone):
            done = (step.result, step.outcome, step.parent_id)
            return [row[0] for row in conn.execute(_PARENT_DONE, done)]
        elif isinstance(step, _settle.ParentEnded):
            ended = (step.outcome, step.parent_id)
            return [row[0] for row in conn.execute(_PARENT_ENDED, ended)]
        elif isinstance(step, _settle.Release):
            rows = conn.execute(_RELEASE, (step.now, msgspec.json.encode(step.children)))
            return [self._task(row) for row in rows.fetchall()]
        elif isinstance(step, _settle.Orphans):
            return [self._task(row) for row in conn.execute(_ORPHANS, (step.parent_id,))]
        else:
            conn.execute(_CANCEL, (step.error, step.now, msgspec.json.encode(step.ids)))
        return None

    def linked(
        self,
        conn: sqlite3.Connection,
        queue: str,
        task_id: int,
        page: tuple[int, int],
        queue_ids: Sequence[int] | None,
        parents: bool,
    ) -> list[Task] | None:
        """Store.linked, in one read: ``page`` is (limit, after), ``queue_ids`` the queues to
        keep (None: all)."""
        found = conn.execute(_QUEUE_OF, (task_id,)).fetchone()
        if found is None or self._queues.names.get(found[0]) != queue:
            return None
        limit, after = page
        columns = PARENTS if parents else CHILDREN
        args: tuple[Any, ...] = (task_id, after, limit)
        sql = _LINKED.format(queues="", **columns)
        if queue_ids is not None:
            sql = _LINKED.format(queues=_IN_QUEUES, **columns)
            args = (task_id, after, msgspec.json.encode(list(queue_ids)), limit)
        return [self.view_of(conn, self._task(row)) for row in conn.execute(sql, args)]

    def parents(self, conn: sqlite3.Connection, tasks: Sequence[NewTask]) -> dict[int, Parent]:
        """The state, result and queue of every task the batch names by id; ValidationError
        for one that does not exist."""
        named = sorted({i for spec in tasks for i in spec.after})
        if not named:
            return {}
        found: dict[int, Parent] = {}
        waited: dict[int, int] = {}
        for task_id, state, result, queue_id, children, error in conn.execute(
            _PARENTS, (msgspec.json.encode(named),)
        ):
            found[task_id] = (sql.STATES[state], result, self._queues.names[queue_id], error)
            if sql.STATES[state] not in FINAL_STATES:
                waited[task_id] = children
        rules.check_parents(tasks, found, waited)
        return found

    @staticmethod
    def depend(
        task: Task,
        spec: NewTask,
        parents: dict[int, Parent],
        answered: Sequence[Task],
        edges: list[Edge],
    ) -> Task:
        """A new task with its parents (rules.depend), its edges added to ``edges``."""
        mine: dict[int, Parent] = {}
        for parent_id in spec.after:
            mine[parent_id] = parents[parent_id]
        for ref in spec.refs:
            earlier = answered[ref]
            result = None if earlier.result is None else bytes(earlier.result)
            # New, or a unique_key's holder: of this queue.
            mine[earlier.id] = (earlier.state, result, earlier.queue, earlier.error)
        ordered = sorted(mine.items())
        run = spec.after_failure == "run"
        task = rules.depend(task, [(parent_id, parent[0]) for parent_id, parent in ordered], run)
        mine_edges = [_edge(task, parent_id, parent, run) for parent_id, parent in ordered]
        edges += mine_edges
        return view(task, [edge[1:5] for edge in mine_edges])

    @staticmethod
    def link(conn: sqlite3.Connection, edges: list[Edge]) -> None:
        """Write the edges of new tasks, and mark their parents not done as having children."""
        if not edges:
            return
        conn.executemany(_EDGE, edges)
        waited: dict[int, int] = {}
        for _c, parent, done, _r, _q, _run in edges:
            if not done:
                waited[parent] = waited.get(parent, 0) + 1
        if waited:
            conn.executemany(_HAS_CHILDREN, [(n, parent) for parent, n in sorted(waited.items())])

    @staticmethod
    def view_of(conn: sqlite3.Connection, task: Task) -> Task:
        """The task with its dependencies as its record shows them."""
        if not task.parents:
            return task
        return view(task, conn.execute(_EDGES, (task.id,)).fetchall())

    @staticmethod
    def still_waits(conn: sqlite3.Connection, task: Task) -> bool:
        return bool(task.parents) and conn.execute(_STILL_WAITS, (task.id,)).fetchone() is not None

    @staticmethod
    def forget(conn: sqlite3.Connection, child_ids: Sequence[int]) -> None:
        """Tasks removed: their edges as children go (the results they kept)."""
        if child_ids:
            conn.execute(_FORGET, (msgspec.json.encode(list(child_ids)),))

    def settle(
        self,
        conn: sqlite3.Connection,
        parent: Task,
        new: Task | None,
        now: int,
        also: list[Change],
        how: str | None = None,
    ) -> None:
        """The tasks waiting for ``parent``, now ``new`` (None: deleted), settled as
        _settle.settle says; ``also`` receives their changes."""
        if parent.children:
            self.run(conn, _settle.settle(parent, new, now, also, how))


def _edge(task: Task, parent_id: int, parent: Parent, run: bool) -> Edge:
    """The edge of a new task to a parent as it is when the task is enqueued: done (with
    its result) when the parent is; for a task that runs whatever the outcome, ended (with
    the outcome) when the parent has finished in any way."""
    state, result, queue, error = parent
    done, kept = rules.first_edge(state, result, error, run)
    return (task.id, parent_id, int(done), kept, foreign_queue(queue, task.queue), int(run))
