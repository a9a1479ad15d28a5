"""Operators' reads and actions over every store: delivery history, filters, bulk actions,
retention, queue heads and the tasks in progress per worker.

Part of the conformance suite (see test_conformance): the same tests run on every store.
"""

from __future__ import annotations

import msgspec

from katar.core import rules
from katar.core.model import (
    EVERY_TASK,
    Delivery,
    Keep,
    NewTask,
    QueueOptions,
    State,
    Task,
    TaskFilter,
)
from katar.protocol import HISTORY_LENGTH
from katar.store import Store
from tests.helpers.store import DROP, KEEP, T0, ack, claim, new, setup

RETRY = QueueOptions(persistent=True, timeout=1000, max_attempts=0, retry_delay=0)


async def stored(store: Store, task: Task | int) -> Task:
    found = await store.get_task("q", task if isinstance(task, int) else task.id)
    assert found is not None
    return found


def outcomes(task: Task) -> list[tuple[int, str | None, str | None]]:
    return [(d.attempt, d.worker, d.outcome) for d in rules.deliveries(task)]


# -- history ---------------------------------------------------------------------------------


async def test_a_task_delivered_once_has_one_delivery_and_no_stored_history(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store)
    running = await stored(store, task)
    assert running.started_at == T0
    assert rules.deliveries(running) == [Delivery(1, "w1", T0, None, None, None)]
    await store.poll("q", KEEP, [ack(task, "done")], 0, "w1", T0 + 5)
    done = await stored(store, task)
    assert done.history is None  # the row describes its only delivery
    assert rules.deliveries(done) == [Delivery(1, "w1", T0, T0 + 5, "done", None)]


async def test_history_records_failures_expiries_and_the_last_outcome(store: Store) -> None:
    await setup(store, RETRY)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store, options=RETRY)
    await store.poll("q", RETRY, [ack(task, "failed", error="boom", retry=True)], 0, "w1", T0 + 1)
    (task,) = (await store.poll("q", RETRY, [], 1, "w2", T0 + 2)).delivered
    await store.expire({"q": RETRY}, T0 + 2 + RETRY.timeout)  # w2 never answers
    later = T0 + 3 + RETRY.timeout
    (task,) = (await store.poll("q", RETRY, [], 1, "w3", later)).delivered
    await store.poll("q", RETRY, [ack(task, "done")], 0, "w3", later + 1)
    history = rules.deliveries(await stored(store, task))
    assert [(d.attempt, d.worker, d.outcome) for d in history] == [
        (1, "w1", "failed"),
        (2, "w2", "expired"),
        (3, "w3", "done"),
    ]
    assert history[0].error == "boom"
    assert history[0].ended_at == T0 + 1
    assert history[1].error is not None
    assert history[1].error.startswith("lease expired")
    assert history[2].started_at == later
    assert history[2].ended_at == later + 1


async def test_a_manual_retry_keeps_the_failed_delivery_in_history(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store)
    await store.poll("q", KEEP, [ack(task, "failed", error="bad input")], 0, "w1", T0 + 1)
    await store.set_status("q", task.id, "queued", T0 + 2)
    queued = await stored(store, task)
    assert outcomes(queued) == [(1, "w1", "failed")]
    (again,) = await claim(store, now=T0 + 3)
    assert outcomes(await stored(store, again)) == [(1, "w1", "failed"), (2, "w1", None)]


async def test_history_keeps_the_last_deliveries_only(store: Store) -> None:
    await setup(store, RETRY)
    await store.enqueue("q", [new(1)], T0)
    for n in range(HISTORY_LENGTH + 5):
        (task,) = await claim(store, options=RETRY, now=T0 + 2 * n)
        failed = ack(task, "failed", error=f"e{n}", retry=True)
        await store.poll("q", RETRY, [failed], 0, "w1", T0 + 2 * n + 1)
    history = rules.deliveries(await stored(store, task))
    assert len(history) == HISTORY_LENGTH
    assert history[-1].attempt == HISTORY_LENGTH + 5
    assert history[0].attempt == 6


# -- filters ---------------------------------------------------------------------------------


async def failed_tasks(store: Store, options: QueueOptions = KEEP) -> list[Task]:
    """Six tasks: keys a/b, two failed with different errors, one done, three queued."""
    await setup(store, options)
    made = await store.enqueue(
        "q",
        [NewTask(data=msgspec.Raw(b"1"), key="a" if n % 2 else "b") for n in range(6)],
        T0 + 0,
    )
    first, second, third = await claim(store, 3, options)
    acks = [
        ack(first, "failed", error="timeout talking to smtp"),
        ack(second, "failed", error="invalid address"),
        ack(third, "done"),
    ]
    await store.poll("q", options, acks, 0, "w1", T0 + 10)
    return made


async def test_listings_filter_by_status_key_worker_error_and_time(store: Store) -> None:
    made = await failed_tasks(store)
    ids = [t.id for t in made]

    async def listed(where: TaskFilter, **page: object) -> list[int]:
        return [t.id for t in await store.list_tasks("q", where, 100, 0, **page)]  # type: ignore[arg-type]

    assert await listed(EVERY_TASK) == ids
    assert await listed(TaskFilter(states=(State.FAILED,))) == ids[:2]
    assert await listed(TaskFilter(key="a")) == ids[1::2]
    assert await listed(TaskFilter(worker="w1")) == ids[:3]
    assert await listed(TaskFilter(error="smtp")) == ids[:1]
    assert await listed(TaskFilter(error="SMTP")) == []  # case-sensitive
    assert await listed(TaskFilter(ids=(ids[4], ids[0], 10**12))) == [ids[0], ids[4]]
    assert await listed(TaskFilter(before=T0)) == []
    assert await listed(TaskFilter(after=T0, before=T0 + 1)) == ids
    assert await listed(TaskFilter(states=(State.READY,), key="b")) == [ids[4]]
    assert await listed(EVERY_TASK, newest_first=True) == ids[::-1]
    newest = await store.list_tasks("q", EVERY_TASK, 2, ids[4], newest_first=True)
    assert [t.id for t in newest] == [ids[3], ids[2]]
    assert await store.count_tasks("q", TaskFilter(states=(State.FAILED, State.DONE))) == 3


async def test_a_filter_with_sql_in_its_text_is_only_text(store: Store) -> None:
    await failed_tasks(store)
    where = TaskFilter(error="' OR 1=1 --", key="x'; DROP TABLE tasks; --")
    assert await store.list_tasks("q", where, 10, 0) == []
    assert await store.count_tasks("q", EVERY_TASK) == 6


# -- bulk actions ----------------------------------------------------------------------------


async def test_a_bulk_retry_requeues_the_failed_tasks_it_selects(store: Store) -> None:
    made = await failed_tasks(store)
    step = await store.bulk("q", "retry", EVERY_TASK, T0 + 20, 0, 100)
    assert (step.matched, step.changed, step.last) == (6, 2, made[-1].id)
    assert sorted(c.task.id for c in step.changes) == [made[0].id, made[1].id]
    assert all(c.old is State.FAILED and c.task.state is State.READY for c in step.changes)
    retried = await stored(store, made[0])
    assert retried.state is State.READY
    assert retried.attempt_base == 1
    assert outcomes(retried) == [(1, "w1", "failed")]
    assert (await stored(store, made[2])).state is State.DONE  # not a retry's to touch


async def test_bulk_steps_page_by_id(store: Store) -> None:
    made = await failed_tasks(store)
    where = TaskFilter(states=(State.READY,))
    first = await store.bulk("q", "cancel", where, T0 + 20, 0, 2)
    assert (first.matched, first.changed, first.last) == (2, 2, made[4].id)
    second = await store.bulk("q", "cancel", where, T0 + 20, first.last, 2)
    assert (second.matched, second.changed) == (1, 1)
    assert await store.count_tasks("q", TaskFilter(states=(State.CANCELLED,))) == 3
    end = await store.bulk("q", "cancel", where, T0 + 20, second.last, 2)
    assert (end.matched, end.changed, end.last) == (0, 0, second.last)


async def test_a_bulk_delete_leaves_the_tasks_in_progress(store: Store) -> None:
    await setup(store)
    made = await store.enqueue("q", [new(n) for n in range(4)], T0)
    (running,) = await claim(store)
    step = await store.bulk("q", "delete", EVERY_TASK, T0 + 1, 0, 100)
    assert (step.matched, step.changed, step.changes) == (4, 3, [])
    assert [t.id for t in await store.list_tasks("q", EVERY_TASK, 10, 0)] == [running.id]
    assert running.id == made[0].id


async def test_a_bulk_retry_skips_a_task_whose_unique_key_is_taken(store: Store) -> None:
    await setup(store)
    unique = NewTask(data=msgspec.Raw(b"1"), unique_key="k")
    (first,) = await store.enqueue("q", [unique], T0)
    await store.set_status("q", first.id, "cancelled", T0 + 1)
    (holder,) = await store.enqueue("q", [unique], T0 + 2)
    assert holder.id != first.id
    step = await store.bulk("q", "retry", EVERY_TASK, T0 + 3, 0, 100)
    assert (step.matched, step.changed) == (2, 0)
    assert (await stored(store, first)).state is State.CANCELLED


async def test_bulk_actions_never_touch_another_queue(store: Store) -> None:
    await failed_tasks(store)
    await setup(store, KEEP, "other")
    (other,) = await store.enqueue("other", [new(1)], T0)
    await store.bulk("q", "delete", TaskFilter(ids=(other.id,)), T0 + 1, 0, 100)
    await store.bulk("q", "cancel", EVERY_TASK, T0 + 1, 0, 100)
    assert (await store.get_task("other", other.id)) is not None
    assert (await store.get_task("other", other.id)).state is State.READY  # type: ignore[union-attr]


# -- retention -------------------------------------------------------------------------------


async def test_prune_removes_what_finished_before_the_time_oldest_first(store: Store) -> None:
    await setup(store)
    made = await store.enqueue("q", [new(n) for n in range(5)], T0)
    tasks = await claim(store, 5)
    for n, task in enumerate(tasks):
        await store.poll("q", KEEP, [ack(task, "done")], 0, "w1", T0 + 10 * (n + 1))
    assert await store.prune("q", State.DONE, T0 + 30, T0 + 100, 2) == 2
    assert await store.prune("q", State.FAILED, T0 + 30, T0 + 100, 2) == 0
    assert await store.prune("q", State.DONE, T0 + 30, T0 + 100, 2) == 1
    assert await store.prune("q", State.DONE, T0 + 30, T0 + 100, 2) == 0
    left = [t.id for t in await store.list_tasks("q", EVERY_TASK, 10, 0)]
    assert left == [made[3].id, made[4].id]


async def test_prune_keeps_a_task_that_holds_its_unique_key(store: Store) -> None:
    await setup(store)
    held = NewTask(data=msgspec.Raw(b"1"), unique_key="k", unique_for_ms=1_000_000)
    (task,) = await store.enqueue("q", [held], T0)
    await store.set_status("q", task.id, "cancelled", T0 + 1)
    assert await store.prune("q", State.CANCELLED, T0 + 10, T0 + 10, 100) == 0
    assert await store.prune("q", State.CANCELLED, T0 + 10, T0 + 1_000_000, 100) == 1


def test_retention_defaults_and_the_time_before_which_tasks_go() -> None:
    options = QueueOptions()
    day = 86_400_000
    assert rules.prune_before(options, State.DONE, T0) == T0 - day
    assert rules.prune_before(options, State.FAILED, T0) == T0 - 7 * day
    forever = QueueOptions(keep=Keep(done=None))
    assert rules.prune_before(forever, State.DONE, T0) is None
    assert rules.prune_before(forever, State.CANCELLED, T0) == T0 - 7 * day


# -- heads and workers -----------------------------------------------------------------------


async def test_heads_say_when_the_next_task_became_ready(store: Store) -> None:
    await setup(store)
    await setup(store, DROP, "idle")
    assert await store.heads() == {}
    await store.enqueue("q", [new(1)], T0)
    await store.enqueue("q", [new(2, priority=5)], T0 + 7)
    assert await store.heads() == {"q": T0 + 7}  # the high priority task goes first
    await claim(store)
    assert await store.heads() == {"q": T0}


async def test_tasks_in_progress_are_counted_per_queue_and_worker(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(n) for n in range(4)], T0)
    await store.poll("q", KEEP, [], 2, "w1", T0)
    await store.poll("q", KEEP, [], 1, None, T0)
    assert await store.running_by_worker() == {("q", "w1"): 2, ("q", None): 1}


async def test_a_bulk_step_in_sql_does_what_the_rules_do(store: Store) -> None:
    """A retry and a cancel that nobody watches may run in SQL (report=False): the tasks end
    as the rules make them, history included."""
    results = {}
    for queue, report in (("rules", True), ("sql", False)):
        await setup(store, RETRY, queue)
        await store.enqueue(queue, [new(n) for n in range(4)], T0)
        await store.set_status(queue, 4 if queue == "rules" else 8, "paused", T0)
        tasks = (await store.poll(queue, RETRY, [], 2, "w1", T0)).delivered
        failed = [ack(tasks[0], "failed", error="e0"), ack(tasks[1], "failed", error="e1")]
        await store.poll(queue, RETRY, failed, 0, "w1", T0 + 1)
        for task in tasks:  # failed twice: one delivery in history, one in the row
            await store.set_status(queue, task.id, "queued", T0 + 2)
            (again,) = (await store.poll(queue, RETRY, [], 1, "w2", T0 + 3)).delivered
            await store.poll(queue, RETRY, [ack(again, "failed", error="e2")], 0, "w2", T0 + 4)
        cancel = await store.bulk(queue, "cancel", EVERY_TASK, T0 + 5, 0, 100, report)
        retry = await store.bulk(queue, "retry", EVERY_TASK, T0 + 6, 0, 100, report)
        assert (cancel.matched, cancel.changed, retry.changed) == (4, 2, 4)
        results[queue] = [
            (t.state, t.attempts, t.attempt_base, t.error, t.started_at, t.cancel_requested,
             rules.deliveries(t), t.updated_at)
            for t in await store.list_tasks(queue, EVERY_TASK, 10, 0)
        ]  # fmt: skip
    assert results["sql"] == results["rules"]
    assert [len(r[6]) for r in results["sql"]] == [2, 2, 0, 0]
