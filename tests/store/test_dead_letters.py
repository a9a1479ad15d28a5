"""Dead-letter queues and redrive over every store: a task that fails for good in a queue
with a ``dead_letter`` option moves, in the transaction that fails it, to that queue; a
redrive moves waiting tasks back.

Part of the conformance suite (see test_conformance): the same tests run on every store.
"""

from __future__ import annotations

import asyncio

import msgspec

from katar.core import rules
from katar.core.model import (
    CANCELLED,
    FAILED,
    READY,
    RUNNING,
    Ack,
    DeadLetter,
    NewTask,
    QueueOptions,
    Task,
    TaskFilter,
)
from katar.store import Store
from tests.helpers.store import T0, ack, child, claim, data, new

ORIGIN = QueueOptions(persistent=True, timeout=1000, max_attempts=2, dead_letter="dead")
DEAD = QueueOptions(persistent=True, timeout=1000, max_attempts=4)
MOVABLE = TaskFilter(states=tuple(sorted(rules.REDRIVE_STATES)))


async def setup(store: Store, origin: QueueOptions = ORIGIN, dead: bool = True) -> None:
    if dead:
        await store.save_queue("dead", DEAD)
    await store.save_queue("q", origin)


async def keyed(store: Store, value: object, key: str = "k", priority: int = 5) -> Task:
    spec = msgspec.structs.replace(new(value), key=key, priority=priority)
    (task,) = await store.enqueue("q", [spec], T0)
    return task


async def fail(store: Store, task: Task, now: int, error: str = "boom", **fields: object) -> Task:
    """Claim the task in "q" and ack it failed; the task as the ack's change has it."""
    (claimed,) = await claim(store, options=ORIGIN, now=now)
    assert claimed.id == task.id
    failed = ack(claimed, "failed", error=error, **fields)
    result = await store.poll("q", ORIGIN, [failed], 0, "w1", now + 1)
    (change,) = [c for c in result.changes if c.task.id == task.id]
    return change.task


async def test_a_failed_ack_not_retried_moves_the_task_to_its_dead_letter_queue(
    store: Store,
) -> None:
    await setup(store)
    task = await keyed(store, {"n": 1})
    (claimed,) = await claim(store, options=ORIGIN, now=T0 + 10)
    result = await store.poll("q", ORIGIN, [ack(claimed, "failed", error="boom")], 0, "w1", T0 + 11)
    (change,) = result.changes
    assert change.origin == "q"
    assert change.old is RUNNING
    moved = change.task
    assert (moved.queue, moved.state, moved.id) == ("dead", READY, task.id)
    assert moved.dead_letter == DeadLetter(queue="q", error="boom", attempts=1, at=T0 + 11)
    assert await store.get_task("q", task.id) is None
    assert await store.queues_of([task.id]) == {task.id: "dead"}
    found = await store.get_task("dead", task.id)
    assert found is not None
    assert (found.key, found.priority, data(found)) == ("k", 5, {"n": 1})
    assert found.dead_letter == moved.dead_letter
    # Its delivery in the origin stays in its history; attempts start afresh (fencing goes on).
    assert [(d.attempt, d.outcome, d.error) for d in rules.deliveries(found)] == [
        (1, "failed", "boom")
    ]
    assert (found.attempts, found.attempt_base, found.max_attempts) == (1, 1, None)
    counts = await store.counts()
    assert counts["dead"].get(READY) == 1
    assert not counts["q"].get(RUNNING)


async def test_a_task_in_the_dead_letter_queue_is_delivered_with_fresh_attempts(
    store: Store,
) -> None:
    await setup(store)
    task = await keyed(store, "x")
    await fail(store, task, T0)
    (again,) = await claim(store, options=DEAD, now=T0 + 5, queue="dead")
    assert (again.id, again.attempts) == (task.id, 2)
    # A late ack of the delivery in the origin changes nothing.
    late = await store.poll("q", ORIGIN, [ack(task.id, "done", attempt=1)], 0, "w1", T0 + 6)
    assert late.changes == []
    done = await store.poll("dead", DEAD, [ack(again, "done")], 0, "w1", T0 + 7)
    assert [c.task.state.name for c in done.changes if c.task.id == task.id] in ([], ["DONE"])
    found = await store.get_task("dead", task.id)
    assert found is not None
    assert found.status == "done"
    assert found.dead_letter is not None
    assert found.dead_letter.queue == "q"


async def test_a_retried_failure_stays_and_the_last_attempt_moves(store: Store) -> None:
    await setup(store)
    task = await keyed(store, "x")
    retried = await fail(store, task, T0, retry=True)
    assert (retried.queue, retried.dead_letter) == ("q", None)
    await store.expire({"q": ORIGIN, "dead": DEAD}, T0 + 10_000)  # past the retry's delay
    moved = await fail(store, task, T0 + 20_000, error="again", retry=True)  # attempts spent
    assert moved.queue == "dead"
    assert moved.dead_letter == DeadLetter(queue="q", error="again", attempts=2, at=T0 + 20_001)


async def test_attempts_spent_by_a_lease_running_out_move_the_task(store: Store) -> None:
    origin = msgspec.structs.replace(ORIGIN, max_attempts=1)
    await setup(store, origin)
    task = await keyed(store, "x")
    await claim(store, options=origin, now=T0)
    changes = await store.expire({"q": origin, "dead": DEAD}, T0 + 1000)
    (change,) = [c for c in changes if c.task.id == task.id]
    assert (change.origin, change.task.queue, change.task.state) == ("q", "dead", READY)
    record = change.task.dead_letter
    assert record is not None
    assert record.attempts == 1
    assert record.at == T0 + 1000
    assert record.error is not None
    assert "all attempts are spent" in record.error
    found = await store.get_task("dead", task.id)
    assert found is not None
    assert [d.outcome for d in rules.deliveries(found)] == ["expired"]
    assert await store.next_deadline() is None  # no lease left to watch


async def test_a_missing_dead_letter_queue_is_created_with_default_options(store: Store) -> None:
    await setup(store, dead=False)
    task = await keyed(store, "x")
    moved = await fail(store, task, T0)
    assert moved.queue == "dead"
    assert await store.load_queue("dead") == QueueOptions()
    assert "dead" in await store.load_queues()
    assert (await store.get_task("dead", task.id)) is not None


async def test_the_tasks_waiting_for_a_dead_lettered_task_are_cancelled(store: Store) -> None:
    await setup(store)
    parent = await keyed(store, "parent")
    (waiting,) = await store.enqueue("q", [child("child", parent.id)], T0)
    (claimed,) = await claim(store, options=ORIGIN, now=T0 + 1)
    assert claimed.id == parent.id
    result = await store.poll("q", ORIGIN, [ack(claimed, "failed")], 0, "w1", T0 + 2)
    by_id = {c.task.id: c for c in result.changes}
    assert by_id[parent.id].task.queue == "dead"
    assert by_id[waiting.id].task.state is CANCELLED
    assert by_id[waiting.id].task.error == rules.orphan_error(parent.id, "failed")
    # Its later success in the dead-letter queue releases nothing: it failed for them.
    (again,) = await claim(store, options=DEAD, now=T0 + 3, queue="dead")
    await store.poll("dead", DEAD, [ack(again, "done")], 0, "w1", T0 + 4)
    found = await store.get_task("q", waiting.id)
    assert found is not None
    assert found.state is CANCELLED


async def test_a_redrive_moves_tasks_back_to_their_origin(store: Store) -> None:
    await setup(store)
    tasks = [await keyed(store, i, key=f"k{i}") for i in range(3)]
    for task in tasks:
        await fail(store, task, T0)
    step = await store.redrive("dead", None, MOVABLE, T0 + 100, 0, 10)
    assert (step.matched, step.moved, step.last) == (3, 3, tasks[-1].id)
    assert {c.origin for c in step.changes} == {"dead"}
    for task in tasks:
        back = await store.get_task("q", task.id)
        assert back is not None
        assert (back.state, back.dead_letter, back.attempt_base) == (READY, None, back.attempts)
    # Fresh attempts: it fails for good only after the origin's max_attempts again.
    again = await fail(store, tasks[0], T0 + 200, retry=True)
    assert again.queue == "q"


async def test_a_redrive_by_filter_in_steps_moves_what_the_filter_selects(store: Store) -> None:
    await setup(store)
    tasks = [await keyed(store, i, key="a" if i % 2 else "b") for i in range(5)]
    for task in tasks:
        await fail(store, task, T0)
    where = msgspec.structs.replace(MOVABLE, key="a")
    first = await store.redrive("dead", None, where, T0 + 100, 0, 1)
    assert (first.matched, first.moved) == (1, 1)
    rest = await store.redrive("dead", None, where, T0 + 100, first.last, 10)
    assert (rest.matched, rest.moved) == (1, 1)
    assert {t.id for t in await store.list_tasks("q", TaskFilter(), 10, 0)} == {
        tasks[1].id,
        tasks[3].id,
    }


async def test_a_redrive_to_a_named_queue_and_tasks_without_an_origin(store: Store) -> None:
    await setup(store)
    await store.save_queue("other", DEAD)
    (plain,) = await store.enqueue("dead", [new("enqueued here")], T0)
    task = await keyed(store, "x")
    await fail(store, task, T0)
    step = await store.redrive("dead", None, MOVABLE, T0 + 100, 0, 10)
    assert (step.matched, step.moved) == (2, 1)  # the task enqueued there has no origin
    assert (await store.get_task("dead", plain.id)) is not None
    step = await store.redrive("dead", "other", MOVABLE, T0 + 200, 0, 10)
    assert (step.matched, step.moved) == (1, 1)
    found = await store.get_task("other", plain.id)
    assert found is not None
    assert found.state is READY


async def test_a_redrive_takes_failed_tasks_and_leaves_the_others(store: Store) -> None:
    await setup(store)
    await store.save_queue("other", DEAD)
    specs = [new("ready"), new("paused", paused=True), NewTask(data=msgspec.Raw(b"1"))]
    ready, paused, failing = await store.enqueue("dead", specs, T0)
    await store.set_status("dead", failing.id, "cancelled", T0)
    await store.set_status("dead", failing.id, "queued", T0)
    (claimed,) = (await store.poll("dead", DEAD, [], 1, "w1", T0)).delivered
    assert claimed.id == ready.id
    await store.poll("dead", DEAD, [ack(claimed, "failed")], 0, "w1", T0 + 1)
    failed = await store.get_task("dead", ready.id)
    assert failed is not None
    assert failed.state is FAILED
    step = await store.redrive("dead", "other", MOVABLE, T0 + 2, 0, 10)
    assert step.moved == 2  # the failed one and the queued one; the paused one stays
    assert {t.id for t in await store.list_tasks("other", TaskFilter(), 10, 0)} == {
        ready.id,
        failing.id,
    }
    assert (await store.get_task("dead", paused.id)) is not None


async def test_listings_stay_in_id_order_after_a_move(store: Store) -> None:
    await setup(store)
    task = await keyed(store, "old")
    later = await store.enqueue("dead", [new(i) for i in range(3)], T0)
    await fail(store, task, T0)
    listed = [t.id for t in await store.list_tasks("dead", TaskFilter(), 10, 0)]
    assert listed == sorted([task.id, *(t.id for t in later)])
    newest = [t.id for t in await store.list_tasks("dead", TaskFilter(), 10, 0, True)]
    assert newest == sorted(listed, reverse=True)


# -- servers sharing a PostgreSQL schema -------------------------------------------------------


async def test_a_dead_letter_move_racing_a_retry_happens_once(shared_stores: list[Store]) -> None:
    """Three servers at once on tasks on their last attempt but one: the first acks each
    "failed" without a retry (a dead letter), the others' reapers find its lease over
    (a retry). Each task ends either moved once (the ack won) or queued again in its
    queue (the reaper won; the ack, of an earlier delivery, then changes nothing)."""
    first, second, third = shared_stores
    origin = msgspec.structs.replace(ORIGIN, max_attempts=3)
    await first.save_queue("q", origin)  # the dead-letter queue does not exist yet
    tasks = await first.enqueue("q", [new(i) for i in range(20)], T0)
    claimed = (await first.poll("q", origin, [], 20, "w1", T0)).delivered
    assert len(claimed) == 20
    queues = {"q": origin, "dead": QueueOptions()}
    acks = [ack(task, "failed", error="poison") for task in claimed]
    later = T0 + origin.timeout
    results = await asyncio.gather(
        first.poll("q", origin, acks, 0, "w1", later),
        second.expire(queues, later),
        third.expire(queues, later),
    )
    moved_by_ack = {c.task.id for c in results[0].changes if c.origin == "q"}
    retried = {c.task.id for r in results[1:] for c in r if c.task.queue == "q"}
    assert not moved_by_ack & retried
    assert moved_by_ack | retried == {task.id for task in tasks}
    where = await first.queues_of([task.id for task in tasks])
    for task in tasks:
        found = await second.get_task(where[task.id], task.id)
        assert found is not None
        assert found.state is READY
        assert (where[task.id] == "dead") == (task.id in moved_by_ack)
        assert (found.dead_letter is not None) == (task.id in moved_by_ack)
    counts = await third.counts()
    assert counts["q"].get(READY, 0) + counts.get("dead", {}).get(READY, 0) == 20
    if moved_by_ack:  # the first move made the dead-letter queue
        assert await third.load_queue("dead") == QueueOptions()


async def test_servers_moving_to_a_missing_queue_at_once_create_it_once(
    shared_stores: list[Store],
) -> None:
    origin = msgspec.structs.replace(ORIGIN, max_attempts=1)
    await shared_stores[0].save_queue("q", origin)
    await shared_stores[0].enqueue("q", [new(i) for i in range(9)], T0)
    polls = [store.poll("q", origin, [], 3, f"w{i}", T0) for i, store in enumerate(shared_stores)]
    delivered = [r.delivered for r in await asyncio.gather(*polls)]
    fails = [
        store.poll("q", origin, [ack(t, "failed") for t in mine], 0, f"w{i}", T0 + 1)
        for i, (store, mine) in enumerate(zip(shared_stores, delivered, strict=True))
    ]
    await asyncio.gather(*fails)
    assert (await shared_stores[1].counts())["dead"].get(READY) == 9
    assert list(await shared_stores[2].load_queues()) == ["q", "dead"]


async def test_a_task_redriven_while_ready_is_claimed_in_its_new_queue_only(
    store: Store,
) -> None:
    """Found by the model test on the memory store: a ready task moved out of a queue was
    still claimed by the polls of the queue it left."""
    await setup(store)
    (task,) = await store.enqueue("dead", [new("ready")], T0)
    step = await store.redrive("dead", "q", MOVABLE, T0 + 1, 0, 10)
    assert step.moved == 1
    assert await claim(store, options=DEAD, now=T0 + 2, queue="dead") == []
    assert "dead" not in await store.heads()
    (claimed,) = await claim(store, options=ORIGIN, now=T0 + 3)
    assert (claimed.id, claimed.queue) == (task.id, "q")


async def test_a_dead_lettered_task_is_delivered_with_its_record(store: Store) -> None:
    """Found by the model test on SQLite: a claim's task lacked its dead_letter."""
    await setup(store)
    task = await keyed(store, "x")
    moved = await fail(store, task, T0)
    (claimed,) = await claim(store, options=DEAD, now=T0 + 5, queue="dead")
    assert claimed.dead_letter == moved.dead_letter
    assert claimed.dead_letter is not None


async def test_a_task_paused_and_resumed_then_dead_lettered_is_not_claimed_where_it_was(
    store: Store,
) -> None:
    await setup(store)
    task = await keyed(store, "x")
    await store.set_status("q", task.id, "paused", T0)
    await store.set_status("q", task.id, "queued", T0)
    await fail(store, task, T0)
    assert await claim(store, options=ORIGIN, now=T0 + 5) == []
    (claimed,) = await claim(store, options=DEAD, now=T0 + 5, queue="dead")
    assert claimed.id == task.id


async def test_a_task_leaves_its_own_options_behind(store: Store) -> None:
    await setup(store)
    spec = msgspec.structs.replace(
        new("own"), max_attempts=1, unique_key="u", expires_in_ms=60_000, timeout=500
    )
    (task,) = await store.enqueue("q", [spec], T0)
    moved = await fail(store, task, T0)
    found = await store.get_task("dead", task.id)
    assert found is not None
    assert found == moved
    assert (found.max_attempts, found.unique_key, found.expires_at) == (None, None, None)
    assert found.timeout == 500  # the work's own lease goes with it
    (again,) = await store.enqueue("q", [spec], T0 + 2)  # the key is free in the origin
    assert again.id != task.id


async def test_a_redrive_moves_tasks_to_the_allowed_queues_only(store: Store) -> None:
    """A token limited to some queues redrives to those only: the others' tasks stay."""
    await setup(store)
    task = await keyed(store, "x")
    await fail(store, task, T0)
    step = await store.redrive("dead", None, MOVABLE, T0 + 1, 0, 10, frozenset({"dead"}))
    assert (step.matched, step.moved) == (1, 0)
    assert await store.get_task("dead", task.id) is not None
    step = await store.redrive("dead", None, MOVABLE, T0 + 2, 0, 10, frozenset({"q"}))
    assert (step.matched, step.moved) == (1, 1)


async def test_a_moved_task_leaves_its_debounce_key_behind(store: Store) -> None:
    """Found by the model test (whose moves kept the key): keys are per queue, so a task
    redriven or dead-lettered takes no debounce_key where it goes, and an enqueue of that
    key there creates a task instead of replacing the moved one."""
    await setup(store)
    debounced = msgspec.structs.replace(new("first"), delay_ms=1000, debounce_key="d")
    (waiting,) = await store.enqueue("q", [debounced], T0)
    step = await store.redrive("q", "dead", MOVABLE, T0 + 1, 0, 10)
    assert step.moved == 1
    moved = await store.get_task("dead", waiting.id)
    assert moved is not None
    assert moved.debounce_key is None
    (fresh,) = await store.enqueue("dead", [debounced], T0 + 2)
    assert (fresh.id != waiting.id, fresh.debounced) == (True, False)
    # A dead-lettered task, delivered in its queue, leaves it behind the same way.
    (failing,) = await store.enqueue("q", [debounced], T0 + 3)
    assert failing.id not in (waiting.id, fresh.id)
    await store.expire({"q": ORIGIN, "dead": DEAD}, T0 + 1003)  # due: queued
    dead = await fail(store, failing, T0 + 1004, retry=False)
    assert (dead.queue, dead.debounce_key) == ("dead", None)


async def test_a_heartbeat_of_a_task_that_moved_away_changes_nothing(store: Store) -> None:
    """An ack naming a task of another queue is answered as a gone task's is (contract
    section 2; docs/protocol.md): a heartbeat that comes after, with, or at the same time as
    the failed ack that moved its task to the dead-letter queue is no error, and leaves the
    task as the move left it."""
    await setup(store, msgspec.structs.replace(ORIGIN, max_attempts=1))
    one, two, three = await store.enqueue("q", [new(1), new(2), new(3)], T0)
    claimed = (await store.poll("q", ORIGIN, [], 3, "w1", T0)).delivered
    assert [task.id for task in claimed] == [one.id, two.id, three.id]
    options = msgspec.structs.replace(ORIGIN, max_attempts=1)

    def failed(task: Task) -> list[Ack]:
        return [ack(task, "failed", error="boom", retry=False, attempt=1)]

    def beat(task: Task, lease: int | None) -> list[Ack]:
        return [ack(task, "in progress", lease=lease, attempt=1)]

    # After the move, in the same poll as the move, and at the same time.
    await store.poll("q", options, failed(claimed[0]), 0, "w1", T0 + 1)
    later = await store.poll("q", options, beat(claimed[0], 50), 0, "w1", T0 + 2)
    same = await store.poll(
        "q", options, [*failed(claimed[1]), *beat(claimed[1], 5000)], 0, "w1", T0 + 2
    )
    together = await asyncio.gather(
        store.poll("q", options, failed(claimed[2]), 0, "w1", T0 + 3),
        store.poll("q", options, beat(claimed[2], 0), 0, "w1", T0 + 3),
    )
    assert later.changes == []
    assert [change.task.id for change in same.changes] == [two.id]
    assert sorted(c.task.id for result in together for c in result.changes) == [three.id]
    for task in (one, two, three):
        moved = await store.get_task("dead", task.id)
        assert moved is not None
        assert (moved.state, moved.lease_until, moved.error) == (READY, None, "boom")
        assert await store.get_task("q", task.id) is None
