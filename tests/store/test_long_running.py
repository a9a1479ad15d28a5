"""Long-running work over every store: heartbeat progress, and cancelling a task in progress.

Part of the conformance suite (see test_conformance): the same tests run on every store.
"""

from __future__ import annotations

import msgspec
import pytest

from katar.core.model import Ack, QueueOptions, State, Task
from katar.errors import Conflict
from katar.store import Store
from tests.helpers.store import DROP, KEEP, T0, ack, claim, new, setup


def beat(task: Task, progress: bytes | None = None, **fields: object) -> Ack:
    if progress is not None:
        fields["progress"] = msgspec.Raw(progress)
    return ack(task, "in progress", **fields)


async def stored(store: Store, task: Task) -> Task:
    found = await store.get_task("q", task.id)
    assert found is not None
    return found


async def cancel_running(store: Store, options: QueueOptions = KEEP) -> Task:
    """A task claimed by w1 whose cancel an operator asked for."""
    await setup(store, options)
    await store.enqueue("q", [new("long")], T0)
    (task,) = await claim(store, options=options)
    change = await store.set_status("q", task.id, "cancelled", T0 + 1)
    assert change is not None
    assert change.task.state is State.RUNNING
    assert change.task.cancel_requested
    assert change.old is State.RUNNING
    return task


async def test_progress_is_stored_replaced_and_kept_when_done(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store)
    assert (await stored(store, task)).progress is None
    polled = await store.poll("q", KEEP, [beat(task, b'{"done": 40, "of": 100}')], 0, "w1", T0 + 1)
    assert polled.cancel == []
    got = await stored(store, task)
    assert bytes(got.progress or b"") == b'{"done": 40, "of": 100}'
    assert got.lease_until == T0 + 1 + KEEP.timeout
    await store.poll("q", KEEP, [beat(task, b'"almost"')], 0, "w1", T0 + 2)
    await store.poll("q", KEEP, [beat(task)], 0, "w1", T0 + 3)
    assert bytes((await stored(store, task)).progress or b"") == b'"almost"'
    await store.poll("q", KEEP, [ack(task, "done", result=msgspec.Raw(b"7"))], 0, "w1", T0 + 4)
    done = await stored(store, task)
    assert done.state is State.DONE
    assert bytes(done.progress or b"") == b'"almost"'


async def test_progress_is_cleared_by_a_new_delivery(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store)
    await store.poll("q", KEEP, [beat(task, b"[1]")], 0, "w1", T0)
    await store.expire({"q": KEEP}, T0 + KEEP.timeout)
    (again,) = await claim(store, now=T0 + KEEP.timeout + 1)
    assert again.progress is None
    assert (await stored(store, again)).progress is None


async def test_a_repeated_cancel_of_a_task_in_progress_changes_nothing(store: Store) -> None:
    task = await cancel_running(store)
    assert await store.set_status("q", task.id, "cancelled", T0 + 2) is None
    got = await stored(store, task)
    assert got.state is State.RUNNING
    assert got.cancel_requested


async def test_the_heartbeat_after_a_cancel_is_told_to_stop(store: Store) -> None:
    task = await cancel_running(store)
    polled = await store.poll("q", KEEP, [beat(task, b"[5]", attempt=1)], 0, "w1", T0 + 2)
    assert list(polled.cancel) == [task.id]
    assert [(c.task.id, c.task.state, c.old) for c in polled.changes] == [
        (task.id, State.CANCELLED, State.RUNNING)
    ]
    got = await stored(store, task)
    assert got.state is State.CANCELLED
    assert got.lease_until is None
    assert got.error is not None
    assert "operator" in got.error
    # The worker's late done changes nothing; a repeat of the heartbeat is told again.
    late = await store.poll("q", KEEP, [ack(task, "done", attempt=1)], 0, "w1", T0 + 3)
    assert late.changes == []
    assert (await stored(store, task)).state is State.CANCELLED
    again = await store.poll("q", KEEP, [beat(task, attempt=1)], 0, "w1", T0 + 4)
    assert list(again.cancel) == [task.id]
    assert again.changes == []


async def test_a_heartbeat_and_a_claim_in_one_poll(store: Store) -> None:
    task = await cancel_running(store)
    await store.enqueue("q", [new("next")], T0)
    polled = await store.poll("q", KEEP, [beat(task)], 1, "w1", T0 + 2)
    assert list(polled.cancel) == [task.id]
    assert len(polled.delivered) == 1


@pytest.mark.parametrize("options", [KEEP, DROP], ids=["history", "no-history"])
@pytest.mark.parametrize("status", ["done", "failed"])
async def test_an_ack_without_heartbeat_ends_the_task_cancelled(
    store: Store, options: QueueOptions, status: str
) -> None:
    task = await cancel_running(store, options)
    fields: dict[str, object] = {"error": "boom", "retry": True} if status == "failed" else {}
    polled = await store.poll("q", options, [ack(task, status, **fields)], 0, "w1", T0 + 2)
    assert polled.cancel == []  # not a heartbeat: nothing to tell
    got = await stored(store, task)  # cancelled tasks stay, with or without history
    assert got.state is State.CANCELLED
    assert got.result is None


async def test_an_ack_in_a_batch_without_heartbeat_ends_the_task_cancelled(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1), new(2), new(3)], T0)
    a, b, c = await claim(store, 3)
    await store.set_status("q", b.id, "cancelled", T0 + 1)
    polled = await store.poll("q", KEEP, [ack(a), ack(b), ack(c)], 0, "w1", T0 + 2)
    states = {c.task.id: c.task.state for c in polled.changes}
    assert states == {a.id: State.DONE, b.id: State.CANCELLED, c.id: State.DONE}
    assert (await stored(store, b)).state is State.CANCELLED


async def test_a_lease_that_ends_after_a_cancel_cancels_the_task(store: Store) -> None:
    task = await cancel_running(store)
    changes = await store.expire({"q": KEEP}, T0 + KEEP.timeout)
    assert [(c.task.id, c.task.state) for c in changes] == [(task.id, State.CANCELLED)]
    assert await claim(store, now=T0 + KEEP.timeout + 1) == []
    # An operator's retry runs it again, without the old request.
    change = await store.set_status("q", task.id, "queued", T0 + KEEP.timeout + 2)
    assert change is not None
    assert not change.task.cancel_requested
    (again,) = await claim(store, now=T0 + KEEP.timeout + 3)
    assert again.attempts == 2
    polled = await store.poll("q", KEEP, [ack(again)], 0, "w1", T0 + KEEP.timeout + 4)
    assert [c.task.state for c in polled.changes] == [State.DONE]


async def test_a_heartbeat_of_another_worker_is_refused_and_not_told(store: Store) -> None:
    task = await cancel_running(store)
    with pytest.raises(Conflict):
        await store.poll("q", KEEP, [beat(task)], 0, "w2", T0 + 2)
    assert (await stored(store, task)).state is State.RUNNING
