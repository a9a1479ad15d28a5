"""The order in which a reap of the SQL stores expires the tasks never delivered in time.

A reap reads the tasks whose expiry has come in one query, then cancels them one by one
(rules.expire). Each cancellation settles the tasks that wait for it, which may change the
rows read: a task that waited for it is cancelled (its row, read before, is stale), or one
that runs whatever the outcome (after_failure "run") is released, and its own expiry may
have come meanwhile (a task that waits does not expire: rules.expiry). Each task expires at
its moment (contract section 8), as the memory store's heap of expiries has it: the
earliest first, and a task released past its expiry at once, before any later one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from katar.core import rules
from katar.core.model import Task
from katar.core.storage import Change


def expiries(tasks: Sequence[Task], changes: list[Change], now: int) -> Iterator[Task]:
    """The tasks to expire, in order: ``tasks`` (those the query read, by expires_at then
    id), each as the reap's earlier changes left it, and after each one the tasks its
    cancellation released whose expiry has come. The caller expires each task it is given
    and appends the changes that makes to ``changes`` before it asks for the next one."""
    pending = deque(tasks)
    latest: dict[int, Task] = {}  # the tasks the reap changed, as it left them
    seen = len(changes)
    while pending:
        task = pending.popleft()
        yield latest.get(task.id, task)
        released = []
        for change in changes[seen:]:
            latest[change.task.id] = change.task
            if rules.expired(change.task, now):
                released.append(change.task)
        seen = len(changes)
        released.sort(key=lambda t: (t.expires_at, t.id), reverse=True)
        pending.extendleft(released)  # the earliest first, before the tasks read
