"""What the SQL stores write when the rules change a task: one plan, two dialects.

An ack applied by the rules (failed, retried, dead-lettered, a heartbeat), a status an
operator sets, an expiry, a redrive: each has a task's new version (rules.apply_ack and
the like) to write, and the end of a task settles the tasks that wait for it (``after``:
released when it was their last parent, cancelled in cascade when it did not end done).
The order of that work is the same in SQLite and in PostgreSQL; only the statements and
how they run differ (SQLite's in its writer's thread, PostgreSQL's awaited). So the order
is written once here, as generators that yield each step for the store to execute and
take back what it answers (the step's docstring says what), as _reap.py does for a reap.

The fast paths (a plain "done" and a claim, in one statement for many tasks) stay in the
dialects' own SQL: they never come here, and a task without children costs no step of
:func:`settle`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple

from katar.core import rules
from katar.core.model import Ack, QueueOptions, State, Task
from katar.core.storage import Change, changed
from katar.errors import KatarError


class Update(NamedTuple):
    """Write the task's row as it is now (_rows.update_values). Answers nothing."""

    task: Task


class Delete(NamedTuple):
    """Remove the task's row (a queue without history), and its edges as a child when it
    has parents. Answers nothing."""

    task: Task


class Move(NamedTuple):
    """Write the row of ``new``, ``old`` moved to another queue (rules.moved), creating
    that queue when there is none. Answers ``new`` as its record shows it (its parents)."""

    old: Task
    new: Task


class ParentDone(NamedTuple):
    """The parent is done: its edges not done yet take its ``result`` (``outcome`` for the
    children that run whatever the outcome). Answers the ids of the children they lead to."""

    parent_id: int
    result: bytes | None
    outcome: bytes


class ParentEnded(NamedTuple):
    """The parent failed, was cancelled or deleted: the edges of the children that run
    whatever the outcome take ``outcome``. Answers the ids of those children."""

    parent_id: int
    outcome: bytes


class Release(NamedTuple):
    """Of ``children`` (ids, maybe repeated), those that wait and have no parent left to
    wait for are released at ``now`` (rules.release, in SQL). Answers them, as released."""

    children: list[int]
    now: int


class Orphans(NamedTuple):
    """Answers the children of the parent not started yet (rules.orphaned's tasks), as
    they are before their cancellation."""

    parent_id: int


class Cancel(NamedTuple):
    """Cancel the tasks, with ``error``, at ``now`` (rules.orphaned, in SQL). Answers
    nothing."""

    ids: list[int]
    error: str
    now: int


#: What a plan yields; the store sends back each step's answer.
Step = Update | Delete | Move | ParentDone | ParentEnded | Release | Orphans | Cancel


def write(
    old: Task, new: Task | None, options: QueueOptions, also: list[Change]
) -> Generator[Step, Any, Change | None]:
    """Write a task's new version (None: nothing to write); the tasks its end settles go in
    ``also``. A new version in another queue (rules.dead_lettered, rules.redriven) moves
    the row. Returns the task's change."""
    if new is None:
        return None
    if old.children:
        yield from settle(old, new, new.updated_at, also)
    if new.queue is not old.queue:  # moved (rules.moved: never the same object)
        view = yield Move(old, new)
        return Change(view, old.state, old.queue)
    if rules.discard(new, options):
        yield Delete(new)
    else:
        yield Update(new)
    return changed((new, old.state, None))


def ack(
    task: Task,
    given: Ack,
    index: int,
    options: QueueOptions,
    now: int,
    worker: str | None,
    changes: list[Change],
    cancel: list[int] | None,
) -> Generator[Step, Any, None]:
    """An ack (number ``index`` of its poll, from a poll naming ``worker``) that the rules
    decide, of ``task`` as stored: refused (raising, with the ack's index) before anything
    is written, or written with what its end settles, each change into ``changes``. A
    heartbeat that finds its task cancelled by an operator (rules.stops) adds the task's
    id to ``cancel``."""
    try:
        new = rules.apply_ack(task, given, options, now, worker)
    except KatarError as exc:
        exc.details.setdefault("ack", index)
        raise
    also: list[Change] = []
    change = yield from write(task, new, options, also)
    if change is not None and change.task.state != change.old:
        changes.append(change)
    changes += also
    if cancel is not None and rules.stops(task if new is None else new, given, worker):
        cancel.append(task.id)


def settle(
    parent: Task, new: Task | None, now: int, also: list[Change], how: str | None = None
) -> Generator[Step, Any, None]:
    """The tasks waiting for ``parent``, now ``new`` (None: deleted): released when it is
    done and it was their last, cancelled when it failed, was cancelled or deleted (and
    theirs after them, level by level), released too when they run whatever the outcome
    (after_failure "run") and it was their last; ``also`` receives their changes. ``how``:
    how the parent ended, when another change than ``new`` ends it (rules.parent_end: a
    dead-letter move ends it as "failed")."""
    if not parent.children:
        return
    if how is None:
        ends = None if new is None else rules.dependants_see(parent, new)
        how = rules.parent_end(parent.state, ends)
    if how is None:
        return
    if how == "done":
        assert new is not None
        result = None if new.result is None else bytes(new.result)
        children = yield ParentDone(parent.id, result, rules.outcome(how, new))
        yield from _release(children, now, also)
        return
    level: list[tuple[int, str, Task | None]] = [(parent.id, how, new)]
    while level:
        below: list[tuple[int, str, Task | None]] = []
        for parent_id, ended, version in level:
            runs = yield ParentEnded(parent_id, rules.outcome(ended, version))
            yield from _release(runs, now, also)
            orphans: list[Task] = yield Orphans(parent_id)
            if not orphans:
                continue
            error = rules.orphan_error(parent_id, ended)
            yield Cancel([task.id for task in orphans], error, now)
            for orphan in orphans:
                cancelled = rules.orphaned(orphan, parent_id, ended, now)
                assert cancelled is not None
                also.append(Change(cancelled, orphan.state))
                if orphan.children:
                    below.append((orphan.id, "was cancelled", cancelled))
        level = below


def _release(children: list[int], now: int, also: list[Change]) -> Generator[Step, Any, None]:
    if children:
        released: list[Task] = yield Release(children, now)
        also += [Change(task, State.WAITING) for task in released]
