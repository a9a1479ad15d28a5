"""The store tests' vocabulary: the time they start at, two queues' options, and short ways
to make, claim and acknowledge tasks. Time is passed in explicitly (``now``), so leases and
delays are tested without sleeping."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from katar.core.model import Ack, NewTask, QueueOptions, Task
from katar.core.storage import Change
from katar.store import Store

T0 = 1_700_000_000_000
KEEP = QueueOptions(persistent=True, timeout=1000, max_attempts=3)
DROP = QueueOptions(persistent=False, timeout=1000, max_attempts=3)


def new(data: object, priority: int = 0, delay_ms: int = 0, paused: bool = False) -> NewTask:
    return NewTask(
        data=msgspec.Raw(msgspec.json.encode(data)),
        priority=priority,
        delay_ms=delay_ms,
        paused=paused,
    )


def ack(task: Task | int, status: str = "done", **fields: object) -> Ack:
    task_id = task.id if isinstance(task, Task) else task
    return Ack(task_id=str(task_id), status=status, **fields)  # type: ignore[arg-type]


def data(task: Task) -> object:
    return msgspec.json.decode(task.data)


async def setup(store: Store, options: QueueOptions = KEEP, name: str = "q") -> None:
    await store.save_queue(name, options)


async def claim(
    store: Store, limit: int = 1, options: QueueOptions = KEEP, now: int = T0, queue: str = "q"
) -> list[Task]:
    return (await store.poll(queue, options, [], limit, "w1", now)).delivered


# -- dependencies (after) ----------------------------------------------------------------------


def child(value: object, *after: int, refs: Sequence[int] = (), delay_ms: int = 0) -> NewTask:
    """A task that waits for the tasks ``after`` (and reads the results of ``refs``)."""
    return msgspec.structs.replace(
        new(value, delay_ms=delay_ms), after=tuple(after), refs=tuple(refs)
    )


def results(task: Task) -> object:
    """The parents' results that a delivered child carries."""
    assert task.after is not None
    return msgspec.json.decode(task.after)


async def finish(
    store: Store, task: Task, result: object, options: QueueOptions = KEEP, queue: str = "q"
) -> list[Change]:
    """Claim ``task`` (it must be the next one) and ack it done with ``result``."""
    (claimed,) = await claim(store, options=options, queue=queue)
    assert claimed.id == task.id
    done = ack(claimed, "done", result=msgspec.Raw(msgspec.json.encode(result)))
    return (await store.poll(queue, options, [done], 0, "w1", T0 + 1)).changes
