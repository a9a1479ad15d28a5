"""The row layout that the SQL stores share: the tasks table's columns, and a task from a row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import msgspec

from katar.core.model import READY as READY_STATE
from katar.core.model import RUNNING, Task, TaskFilter, decode_dead_letter, encode_dead_letter
from katar.core.rules import after_json
from katar.store._sql import READY, STATES

COLUMNS: Final = (
    "id, queue_id, state, priority, data, attempts, attempt_base, error, result, worker,"
    " created_at, updated_at, run_at, lease_until, key, cancel_requested, progress, timeout,"
    " max_attempts, expires_at, unique_key, unique_until, started_at, history, schedule,"
    " scheduled_for, parents, children, dead_letter, debounce_key, attributes, trace"
)
_NAMES: Final = [name.strip() for name in COLUMNS.split(",")]
#: The places of some columns in a row of COLUMNS (found by name: columns are added).
PARENTS_AT: Final = _NAMES.index("parents")
CHILDREN_AT: Final = _NAMES.index("children")
TRACE_AT: Final = _NAMES.index("trace")
_STATES: Final = STATES  # by value: faster than State(value) on the hot path
#: The edges' columns (the deps table) that lead from a task to its children, or to its
#: parents (Store.linked): the task's own, and the other's.
CHILDREN: Final = {"this": "parent_id", "other": "child_id"}
PARENTS: Final = {"this": "child_id", "other": "parent_id"}


def task_from_row(row: Sequence[Any], queue: str) -> Task:
    """The task a row of ``COLUMNS`` holds; ``queue`` is the name behind its queue_id."""
    return Task(
        id=row[0],
        queue=queue,
        state=_STATES[row[2]],
        priority=row[3],
        data=msgspec.Raw(row[4]),
        attempts=row[5],
        attempt_base=row[6],
        error=row[7],
        result=None if row[8] is None else msgspec.Raw(row[8]),
        worker=row[9],
        created_at=row[10],
        updated_at=row[11],
        run_at=row[12],
        lease_until=row[13],
        key=row[14],
        cancel_requested=bool(row[15]),
        progress=None if row[16] is None else msgspec.Raw(row[16]),
        timeout=row[17],
        max_attempts=row[18],
        expires_at=row[19],
        unique_key=row[20],
        unique_until=row[21],
        started_at=row[22],
        history=None if row[23] is None else msgspec.Raw(row[23]),
        schedule=row[24],
        scheduled_for=row[25],
        parents=row[26],
        children=bool(row[27]),
        dead_letter=None if row[28] is None else decode_dead_letter(row[28]),
        debounce_key=row[29],
        attributes=None if row[30] is None else msgspec.Raw(row[30]),
        trace=None if row[TRACE_AT] is None else msgspec.Raw(row[TRACE_AT]),
    )


#: One JSON value, read and not built (sound_json).
_ONE_VALUE: Final = msgspec.json.Decoder(msgspec.Raw)
#: The columns of COLUMNS that hold JSON: data, result, progress, history, attributes, trace.
_JSON_COLUMNS: Final = tuple(
    _NAMES.index(name) for name in ("data", "result", "progress", "history", "attributes", "trace")
)


def sound_json(raw: bytes) -> bytes:
    """``raw`` when it is one JSON value in UTF-8, else its text as a JSON string (what does
    not decode as UTF-8 replaced): a value that another program wrote into the table is
    never sent on as broken JSON. Katar writes only JSON it has checked; this costs a read
    of the bytes (well under a microsecond for a task of a few hundred bytes)."""
    try:
        _ONE_VALUE.decode(raw)
        bytes(raw).decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        return msgspec.json.encode(bytes(raw).decode("utf-8", "replace"))
    return raw


def checked_task_from_row(row: Sequence[Any], queue: str) -> Task:
    """:func:`task_from_row` for a table that other programs may write to (PostgreSQL's,
    which an application shares): every JSON column goes through :func:`sound_json`."""
    for column in _JSON_COLUMNS:
        value = row[column]
        if value is not None and sound_json(value) is not value:  # copied only when broken
            fixed = list(row)
            for broken in _JSON_COLUMNS:
                if fixed[broken] is not None:
                    fixed[broken] = sound_json(fixed[broken])
            return task_from_row(fixed, queue)
    return task_from_row(row, queue)


#: What a claim returns: the columns it does not set itself (see claimed_from_row), the
#: task's timeout, whether it has none of its other own options (most tasks), and its
#: trace context: the other options are read apart, in OPTIONS_COLUMNS, for the few that
#: have some (a schedule's task counts as one: its delivery names the schedule and the
#: tick). Fewer columns to return and convert on every claim. The trace context is not one
#: of those: where producers trace, every task has one, and a read apart for each would
#: cost a traced drain a third more than an untraced one.
CLAIMED_COLUMNS: Final = (
    "id, priority, data, attempts, attempt_base, error, result, created_at, key, timeout,"
    " (coalesce(max_attempts, expires_at, unique_until, unique_key, schedule, dead_letter,"
    " debounce_key, attributes) IS NULL"
    " AND parents = 0), trace"
)
OPTIONS_COLUMNS: Final = (
    "max_attempts, expires_at, unique_key, unique_until, parents, children, schedule,"
    " scheduled_for, dead_letter, debounce_key, attributes"
)


def claimed_from_row(
    row: Sequence[Any],
    queue: str,
    worker: str | None,
    now: int,
    lease_until: int,
    options: Sequence[Any] | None = None,
) -> Task:
    """The task a claim returned as a row of ``CLAIMED_COLUMNS``: the claim set the rest
    (rules.claimed), so it need not travel back from the database. ``lease_until`` is the
    queue's lease; a task with a timeout of its own has its own (rules.lease_ms). When the
    row says the task has other options of its own (``row[10]`` false), ``options`` is its
    row of ``OPTIONS_COLUMNS`` (a task with parents counts as one: its results are read
    apart too). A task claimed has no cancel requested (only a task in
    progress has one) and no progress (the claim clears it)."""
    timeout = row[9]
    trace = row[11]
    task = Task(
        id=row[0],
        queue=queue,
        state=RUNNING,
        priority=row[1],
        data=msgspec.Raw(row[2]),
        attempts=row[3],
        attempt_base=row[4],
        error=row[5],
        result=None if row[6] is None else msgspec.Raw(row[6]),
        worker=worker,
        created_at=row[7],
        updated_at=now,
        lease_until=lease_until if timeout is None else now + timeout,
        key=row[8],
        timeout=timeout,
        started_at=now,
        trace=None if trace is None else msgspec.Raw(trace),
    )
    if row[10]:
        return task
    assert options is not None
    (
        max_attempts,
        expires_at,
        unique_key,
        unique_until,
        parents,
        children,
        schedule,
        tick,
        dead_letter,
        debounce,
        attributes,
    ) = options
    return msgspec.structs.replace(
        task,
        max_attempts=max_attempts,
        expires_at=expires_at,
        unique_key=unique_key,
        unique_until=unique_until,
        parents=parents,
        children=bool(children),
        schedule=schedule,
        scheduled_for=tick,
        dead_letter=None if dead_letter is None else decode_dead_letter(dead_letter),
        debounce_key=debounce,
        attributes=None if attributes is None else msgspec.Raw(attributes),
    )


def update_values(task: Task) -> tuple[Any, ...]:
    """The parameters of an UPDATE that writes ``task`` back: the changeable columns in the
    order state, priority, attempts, attempt_base, error, result, worker, updated_at,
    run_at, lease_until, cancel_requested, progress, expires_at, started_at, history, then
    the id."""
    return (
        int(task.state),
        task.priority,
        task.attempts,
        task.attempt_base,
        task.error,
        None if task.result is None else bytes(task.result),
        task.worker,
        task.updated_at,
        task.run_at,
        task.lease_until,
        task.cancel_requested,
        None if task.progress is None else bytes(task.progress),
        task.expires_at,
        task.started_at,
        None if task.history is None else bytes(task.history),
        task.id,
    )


#: The columns a move to another queue writes (a dead letter, a redrive: rules.moved), each
#: with a placeholder, then the id: fewer than a retry's UPDATE, so that a dead letter costs
#: no more than a retry. A task that leaves something behind (rules.leaves_behind) has
#: LEFT_BEHIND_COLUMNS written too. See move_sql and move_values.
MOVE_COLUMNS: Final = "queue_id, fair_seq, attempt_base, error, updated_at, history, dead_letter"
#: What every move writes the same (rules.moved: queued, not leased, its delivery archived,
#: not delayed), written as constants: each parameter costs its binding, and a NULL one, on
#: SQLite, a failed adaptation (about 3,000 instructions).
MOVE_CONSTANTS: Final = f"state={READY}, run_at=NULL, lease_until=NULL, started_at=NULL"
LEFT_BEHIND_COLUMNS: Final = (
    "cancel_requested, progress, max_attempts, expires_at, unique_key, unique_until, debounce_key"
)


_MOVED: Final = (READY_STATE, None, None, None)


def move_sql(table: str, param: str, full: bool, queue_id: str | None = None) -> str:
    """The UPDATE that moves a task's row to another queue (parameters: move_values), with
    LEFT_BEHIND_COLUMNS when ``full``. ``queue_id``: an expression for the new queue's id
    instead of a parameter (the statement then puts move_values' first elsewhere: the
    PostgreSQL store's finds the queue by the name given there)."""
    names = MOVE_COLUMNS + (f", {LEFT_BEHIND_COLUMNS}" if full else "")
    sets = [f"{column.strip()}={param}" for column in names.split(",")]
    if queue_id is not None:
        sets[0] = f"queue_id={queue_id}"
    return f"UPDATE {table} SET {', '.join(sets)}, {MOVE_CONSTANTS} WHERE {table}.id={param}"


def move_values(task: Task, queue: int | str, fair_seq: int | None, full: bool) -> tuple[Any, ...]:
    """The parameters of move_sql for ``task`` as it is in its new queue: ``queue`` its id
    (or, for a statement that finds the queue by its name, the name), at ``fair_seq`` when
    that queue is fair."""
    # What MOVE_CONSTANTS writes, as rules.moved makes every moved task.
    assert (task.state, task.run_at, task.lease_until, task.started_at) == _MOVED
    history = None if task.history is None else bytes(task.history)
    record = encode_dead_letter(task.dead_letter)
    if not full:  # most moves: one tuple built
        return (
            queue,
            fair_seq,
            task.attempt_base,
            task.error,
            task.updated_at,
            history,
            record,
            task.id,
        )
    return (
        *(queue, fair_seq, task.attempt_base, task.error, task.updated_at, history, record),
        task.cancel_requested,
        None if task.progress is None else bytes(task.progress),
        task.max_attempts,
        task.expires_at,
        task.unique_key,
        task.unique_until,
        task.debounce_key,
        task.id,
    )


class Dialect(NamedTuple):
    """How one SQL store writes what :func:`where_sql` needs."""

    param: str  # a parameter's placeholder
    ids: str  # "id is one of the list in one parameter"
    ids_value: Callable[[Sequence[int]], Any]  # that parameter from the ids
    contains: str  # "error contains the parameter", in the store's functions


def where_sql(where: TaskFilter, dialect: Dialect) -> tuple[str, list[Any]]:
    """The conditions of a TaskFilter (TaskFilter.matches, in SQL), each after " AND ", and
    their parameters. The states are our own integers, written into the SQL."""
    p = dialect.param
    sql: list[str] = []
    params: list[Any] = []
    if where.states is not None:
        listed = ",".join(str(int(state)) for state in where.states)
        sql.append(f"state IN ({listed})" if listed else "1 = 0")  # no state: no task
    if where.ids is not None:
        sql.append(dialect.ids)
        params.append(dialect.ids_value(where.ids))
    for column, value in (("key", where.key), ("worker", where.worker)):
        if value is not None:
            sql.append(f"{column} = {p}")
            params.append(value)
    if where.error is not None:
        sql.append(dialect.contains)
        params.append(where.error)
    if where.before is not None:
        sql.append(f"created_at < {p}")
        params.append(where.before)
    if where.after is not None:
        sql.append(f"created_at >= {p}")
        params.append(where.after)
    return "".join(f" AND {condition}" for condition in sql), params


def view(task: Task, edges: Sequence[tuple[int, Any, Any, str | None]]) -> Task:
    """The task with its dependencies as its record shows them, from its rows of the edges'
    table: (parent id, done, the parent's result, the parent's queue when it is another
    than the task's), by parent id."""
    return msgspec.structs.replace(
        task,
        waiting_for=tuple(parent for parent, done, _result, _queue in edges if not done),
        after=after_json([(parent, result) for parent, done, result, _queue in edges if done]),
        foreign=tuple((parent, queue) for parent, _d, _r, queue in edges if queue is not None),
    )


def foreign_queue(parent_queue: str, child_queue: str) -> str | None:
    """What an edge keeps of its parent's queue: its name when it is not the child's (an
    edge within one queue keeps nothing)."""
    return None if parent_queue == child_queue else parent_queue
