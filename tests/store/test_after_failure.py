"""Dependencies that survive failure (``after_failure: "run"``) over every store: the child
waits until every parent has ended, whatever the outcome, and carries each parent's
``{"status", "result", "error"}``; children that keep the default ("cancel") beside it
behave as before.

Part of the conformance suite (see test_conformance): the same tests run on every store.
"""

from __future__ import annotations

import asyncio

import msgspec

from katar.core import rules
from katar.core.model import NewTask, QueueOptions, State, Task
from katar.store import Store
from tests.helpers.store import DROP, KEEP, T0, ack, child, claim, finish, new, results, setup


def runs(value: object, *after: int, refs: tuple[int, ...] = ()) -> NewTask:
    """A task that waits for ``after`` and runs whatever their outcome."""
    return msgspec.structs.replace(child(value, *after, refs=refs), after_failure="run")


async def stored(store: Store, task: Task, queue: str = "q") -> Task:
    found = await store.get_task(queue, task.id)
    assert found is not None
    return found


async def fail(store: Store, task: Task, error: str, options: QueueOptions = KEEP) -> None:
    (claimed,) = await claim(store, options=options)
    assert claimed.id == task.id
    await store.poll("q", options, [ack(claimed, "failed", error=error)], 0, "w1", T0 + 1)


async def test_the_child_runs_once_every_parent_ended_with_their_outcomes(store: Store) -> None:
    await setup(store, DROP)  # no history: the outcomes must outlive their tasks
    ok, bad, gone = await store.enqueue("q", [new(1), new(2), new(3)], T0)
    (waiting,) = await store.enqueue("q", [runs("sum", ok.id, bad.id, gone.id)], T0)
    (plain,) = await store.enqueue("q", [child("plain", bad.id)], T0)
    assert waiting.state is State.WAITING
    await finish(store, ok, {"n": 1}, DROP)
    await fail(store, bad, "boom", DROP)
    # The default child of the failed parent is cancelled; the other still waits.
    assert (await stored(store, plain)).state is State.CANCELLED
    still = await stored(store, waiting)
    assert still.state is State.WAITING
    assert still.waiting_for == (gone.id,)
    await store.set_status("q", gone.id, "cancelled", T0 + 2)
    now = await stored(store, waiting)
    assert now.state is State.READY
    (delivered,) = await claim(store, options=DROP, now=T0 + 3)
    assert delivered.id == waiting.id
    assert results(delivered) == {
        str(ok.id): {"status": "done", "result": {"n": 1}, "error": None},
        str(bad.id): {"status": "failed", "result": None, "error": "boom"},
        str(gone.id): {"status": "cancelled", "result": None, "error": None},
    }


async def test_a_deleted_parent_counts_as_cancelled(store: Store) -> None:
    await setup(store)
    (parent,) = await store.enqueue("q", [new(1)], T0)
    (waiting,) = await store.enqueue("q", [runs("after", parent.id)], T0)
    assert await store.delete_task("q", parent.id, T0 + 1)
    got = await stored(store, waiting)
    assert got.state is State.READY
    assert results(got) == {
        str(parent.id): {"status": "cancelled", "result": None, "error": rules.DELETED_ERROR}
    }


async def test_parents_finished_before_the_enqueue_count_as_ended(store: Store) -> None:
    await setup(store)
    ok, bad = await store.enqueue("q", [new(1), new(2)], T0)
    await finish(store, ok, "r")
    await fail(store, bad, "no")
    (ready,) = await store.enqueue("q", [runs("now", ok.id, bad.id)], T0 + 2)
    assert ready.state is State.READY
    assert results(ready) == {
        str(ok.id): {"status": "done", "result": "r", "error": None},
        str(bad.id): {"status": "failed", "result": None, "error": "no"},
    }
    # A default child of the same parents is cancelled at once, as before.
    (cancelled,) = await store.enqueue("q", [child("late", ok.id, bad.id)], T0 + 2)
    assert cancelled.state is State.CANCELLED


async def test_a_cancelled_cascade_reaches_the_children_that_run_anyway(store: Store) -> None:
    await setup(store)
    (root,) = await store.enqueue("q", [new("root")], T0)
    (middle,) = await store.enqueue("q", [child("m", root.id)], T0)
    (cleanup,) = await store.enqueue("q", [runs("cleanup", middle.id)], T0)
    await fail(store, root, "boom")
    assert (await stored(store, middle)).state is State.CANCELLED
    got = await stored(store, cleanup)
    assert got.state is State.READY
    outcome = results(got)[str(middle.id)]  # type: ignore[index]
    assert outcome["status"] == "cancelled"
    assert f"task {root.id} " in outcome["error"]


async def test_references_in_one_enqueue_run_anyway(store: Store) -> None:
    await setup(store)
    batch = [new("a"), new("b"), runs("ab", refs=(0, 1))]
    a, b, ab = await store.enqueue("q", batch, T0)
    assert ab.state is State.WAITING
    await fail(store, a, "x")
    assert (await stored(store, ab)).state is State.WAITING
    await finish(store, b, 2)
    (got,) = await claim(store)
    assert got.id == ab.id
    assert results(got) == {
        str(a.id): {"status": "failed", "result": None, "error": "x"},
        str(b.id): {"status": "done", "result": 2, "error": None},
    }


async def test_a_retried_parent_keeps_the_child_waiting(store: Store) -> None:
    retry = QueueOptions(persistent=True, max_attempts=2, retry_failed=True, retry_delay=0)
    await setup(store, retry)
    (parent,) = await store.enqueue("q", [new("flaky")], T0)
    (waiting,) = await store.enqueue("q", [runs("next", parent.id)], T0)
    await fail(store, parent, "try again", retry)  # attempts remain: not an end
    assert (await stored(store, waiting)).state is State.WAITING
    await fail(store, parent, "for good", retry)
    (got,) = await claim(store, options=retry, now=T0 + 2)
    assert got.id == waiting.id
    assert results(got) == {
        str(parent.id): {"status": "failed", "result": None, "error": "for good"}
    }


async def test_parents_failing_at_once_on_several_servers_release_the_child(
    shared_stores: list[Store],
) -> None:
    servers = shared_stores
    await servers[0].save_queue("q", KEEP)
    for _round in range(3):
        parents = await servers[0].enqueue("q", [new(n) for n in range(6)], T0)
        (waiting,) = await servers[0].enqueue("q", [runs("c", *(p.id for p in parents))], T0)
        claimed = (await servers[0].poll("q", KEEP, [], 6, None, T0)).delivered
        await asyncio.gather(
            *(
                servers[i % 3].poll(
                    "q", KEEP, [ack(task, "failed" if i % 2 else "done")], 0, None, T0 + 1
                )
                for i, task in enumerate(claimed)
            )
        )
        released = await stored(servers[1], waiting)
        assert released.state is State.READY
        statuses = {v["status"] for v in results(released).values()}  # type: ignore[attr-defined]
        assert statuses == {"done", "failed"}
        (got,) = (await servers[2].poll("q", KEEP, [], 1, None, T0 + 2)).delivered
        await servers[2].poll("q", KEEP, [ack(got, "done")], 0, None, T0 + 3)


async def test_cancelling_the_running_child_answers_its_record_with_the_outcomes(
    store: Store,
) -> None:
    """Found by the model (whose answer left them out): the record a cancel of a task in
    progress answers is the task's record, with its parents' outcomes in ``after``, as
    every other answer of a PATCH."""
    await setup(store)
    (parent,) = await store.enqueue("q", [new("p")], T0)
    (waiting,) = await store.enqueue("q", [runs("c", parent.id)], T0)
    await fail(store, parent, "boom")
    (running,) = await claim(store, now=T0 + 2)
    assert running.id == waiting.id
    change = await store.set_status("q", running.id, "cancelled", T0 + 3)
    assert change is not None
    assert change.task.cancel_requested
    expected = {str(parent.id): {"status": "failed", "result": None, "error": "boom"}}
    assert results(change.task) == expected
    assert results(await stored(store, waiting)) == expected
