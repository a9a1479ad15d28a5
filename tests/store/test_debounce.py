"""Debounce (a task's debounce_key), on every store: while a task of the key waits, never
delivered, an enqueue of the key replaces its data and options and moves its due time.

Time is passed in explicitly (``now``), so due times are tested without sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from katar.core.idempotency import idempotency
from katar.core.model import EVERY_TASK, Ack, NewTask, QueueOptions, State, Task, TaskFilter
from katar.store import Store

T0 = 1_700_000_000_000
KEEP = QueueOptions(persistent=True, timeout=1000, max_attempts=3, retry_delay=0)


def new(data: object = 1, delay_ms: int = 1000, **fields: Any) -> NewTask:
    return NewTask(data=msgspec.Raw(msgspec.json.encode(data)), delay_ms=delay_ms, **fields)


def data(task: Task) -> Any:
    return msgspec.json.decode(task.data)


async def claim(store: Store, now: int, limit: int = 10, queue: str = "q") -> list[Task]:
    await store.expire({queue: KEEP}, now)  # what is due becomes ready
    return (await store.poll(queue, KEEP, [], limit, "w1", now)).delivered


async def every(store: Store, queue: str = "q") -> list[Task]:
    return await store.list_tasks(queue, EVERY_TASK, 100, 0)


async def test_an_enqueue_of_a_waiting_key_replaces_the_task(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new("v1", debounce_key="doc-1")], T0)
    assert not first.debounced
    assert first.debounce_key == "doc-1"
    assert (first.state, first.run_at) == (State.SCHEDULED, T0 + 1000)
    (second,) = await store.enqueue(
        "q", [new("v2", 500, debounce_key="doc-1", priority=5)], T0 + 800
    )
    assert second.debounced
    assert second.id == first.id
    assert data(second) == "v2"
    assert (second.state, second.run_at, second.priority) == (State.SCHEDULED, T0 + 1300, 5)
    assert (second.created_at, second.updated_at) == (T0, T0 + 800)
    (stored,) = await every(store)
    assert (stored.id, data(stored), stored.run_at, stored.debounced) == (
        first.id,
        "v2",
        T0 + 1300,
        False,
    )
    # Not due at the first due time any more; due at the new one, delivered once.
    assert await claim(store, T0 + 1000) == []
    (delivered,) = await claim(store, T0 + 1300)
    assert (delivered.id, data(delivered), delivered.priority) == (first.id, "v2", 5)


async def test_a_debounce_may_move_the_due_time_earlier(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new("v1", 60_000, debounce_key="k")], T0)
    (second,) = await store.enqueue("q", [new("v2", 100, debounce_key="k")], T0 + 10)
    assert second.run_at == T0 + 110
    (delivered,) = await claim(store, T0 + 110)
    assert (delivered.id, data(delivered)) == (first.id, "v2")


async def test_a_ready_task_not_yet_delivered_is_debounced_too(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new("v1", 100, debounce_key="k")], T0)
    await store.expire({"q": KEEP}, T0 + 200)  # due: ready, still not delivered
    got = await store.get_task("q", first.id)
    assert got is not None
    assert got.state is State.READY
    (second,) = await store.enqueue("q", [new("v2", 100, debounce_key="k")], T0 + 300)
    assert second.debounced
    assert second.id == first.id
    assert (second.state, second.run_at) == (State.SCHEDULED, T0 + 400)
    assert await claim(store, T0 + 300) == []
    assert [data(t) for t in await claim(store, T0 + 400)] == ["v2"]


async def test_a_run_at_that_has_passed_makes_the_debounced_task_ready(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new("v1", debounce_key="k")], T0)
    (second,) = await store.enqueue("q", [new("v2", 0, run_at=T0 - 5, debounce_key="k")], T0 + 1)
    assert (second.id, second.state, second.run_at) == (first.id, State.READY, None)
    (delivered,) = (await store.poll("q", KEEP, [], 10, "w1", T0 + 1)).delivered
    assert data(delivered) == "v2"


async def test_once_delivered_the_key_is_free_again(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new("v1", 100, debounce_key="k")], T0)
    (delivered,) = await claim(store, T0 + 100)
    (second,) = await store.enqueue("q", [new("v2", 100, debounce_key="k")], T0 + 150)
    assert not second.debounced
    assert second.id != first.id
    running = await store.get_task("q", first.id)
    assert running is not None
    assert (running.state, data(running)) == (State.RUNNING, "v1")
    # The new task holds the key now.
    (third,) = await store.enqueue("q", [new("v3", 100, debounce_key="k")], T0 + 160)
    assert third.debounced
    assert third.id == second.id
    assert len(await every(store)) == 2
    del delivered


async def test_a_task_retried_after_a_failure_was_delivered_and_frees_the_key(
    store: Store,
) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new("v1", 100, debounce_key="k")], T0)
    await claim(store, T0 + 100)
    failed = Ack(task_id=str(first.id), status="failed", error="boom", retry=True)
    await store.poll("q", KEEP, [failed], 0, "w1", T0 + 200)
    again = await store.get_task("q", first.id)
    assert again is not None
    assert again.status == "queued"
    assert again.attempts == 1
    (second,) = await store.enqueue("q", [new("v2", 100, debounce_key="k")], T0 + 300)
    assert not second.debounced
    assert second.id != first.id
    unchanged = await store.get_task("q", first.id)
    assert unchanged is not None
    assert data(unchanged) == "v1"


async def test_a_paused_task_stays_paused_and_takes_the_new_data(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new("v1", debounce_key="k", paused=True)], T0)
    assert first.state is State.PAUSED
    (second,) = await store.enqueue("q", [new("v2", 2000, debounce_key="k")], T0 + 10)
    assert (second.id, second.state, data(second)) == (first.id, State.PAUSED, "v2")
    assert second.run_at == T0 + 2010
    # An operator resumes it: it waits for its (moved) due time.
    change = await store.set_status("q", first.id, "queued", T0 + 20)
    assert change is not None
    assert change.task.state is State.SCHEDULED
    assert [data(t) for t in await claim(store, T0 + 2010)] == ["v2"]


async def test_a_debounce_replaces_the_task_options(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue(
        "q", [new("v1", debounce_key="k", timeout=300, max_attempts=1, expires_in_ms=5000)], T0
    )
    (second,) = await store.enqueue("q", [new("v2", debounce_key="k", key="g")], T0 + 10)
    assert (second.timeout, second.max_attempts, second.expires_at, second.key) == (
        None,
        None,
        None,
        "g",
    )
    (third,) = await store.enqueue(
        "q", [new("v3", debounce_key="k", timeout=700, expires_in_ms=9000)], T0 + 20
    )
    assert (third.timeout, third.expires_at, third.key) == (700, T0 + 9020, None)
    (stored,) = await every(store)
    assert (stored.timeout, stored.expires_at, stored.key) == (700, T0 + 9020, None)
    assert first.id == second.id == third.id == stored.id


async def test_keys_are_per_queue_and_apart_from_other_tasks(store: Store) -> None:
    await store.save_queue("q", KEEP)
    await store.save_queue("r", KEEP)
    a = await store.enqueue("q", [new(1, debounce_key="k"), new(2, debounce_key="j"), new(3)], T0)
    b = await store.enqueue("r", [new(4, debounce_key="k")], T0)
    c = await store.enqueue("q", [new(5, debounce_key="k"), new(6, unique_key="k")], T0 + 1)
    assert [t.debounced for t in a + b] == [False, False, False, False]
    assert [t.debounced for t in c] == [True, False]
    assert c[0].id == a[0].id
    assert sorted(data(t) for t in await every(store)) == [2, 3, 5, 6]
    assert [data(t) for t in await every(store, "r")] == [4]


async def test_a_batch_with_a_key_several_times_ends_with_the_last(store: Store) -> None:
    await store.save_queue("q", KEEP)
    answered = await store.enqueue(
        "q",
        [
            new("a1", debounce_key="a"),
            new("b1", debounce_key="b"),
            new("a2", 2000, debounce_key="a"),
            new("plain"),
            new("a3", 3000, debounce_key="a", priority=2),
        ],
        T0,
    )
    assert [t.debounced for t in answered] == [False, False, True, False, True]
    # Each place answers the task as that task of the batch left it.
    assert [data(t) for t in answered] == ["a1", "b1", "a2", "plain", "a3"]
    assert answered[0].id == answered[2].id == answered[4].id
    stored = {t.id: t for t in await every(store)}
    assert len(stored) == 3
    last = stored[answered[0].id]
    assert (data(last), last.run_at, last.priority) == ("a3", T0 + 3000, 2)
    # A batch that meets a waiting task: every one of its places debounces it.
    more = await store.enqueue(
        "q", [new("a4", debounce_key="a"), new("a5", 10, debounce_key="a")], T0 + 5
    )
    assert [(t.id, t.debounced) for t in more] == [(last.id, True), (last.id, True)]
    final = await store.get_task("q", last.id)
    assert final is not None
    assert (data(final), final.run_at) == ("a5", T0 + 15)


async def test_a_cancelled_task_frees_the_key_and_a_retry_leaves_the_debounce(
    store: Store,
) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new("v1", debounce_key="k")], T0)
    await store.set_status("q", first.id, "cancelled", T0 + 1)
    (second,) = await store.enqueue("q", [new("v2", debounce_key="k")], T0 + 2)
    assert not second.debounced
    assert second.id != first.id
    # The cancelled task retried runs as it is: out of its debounce, beside the new one.
    change = await store.set_status("q", first.id, "queued", T0 + 3)
    assert change is not None
    assert (change.task.state, change.task.debounce_key) == (State.READY, None)
    (third,) = await store.enqueue("q", [new("v3", debounce_key="k")], T0 + 4)
    assert third.debounced
    assert third.id == second.id
    # A bulk retry does the same.
    await store.set_status("q", second.id, "cancelled", T0 + 5)
    step = await store.bulk(
        "q", "retry", TaskFilter(states=(State.CANCELLED,)), T0 + 6, 0, 100, report=False
    )
    assert step.changed == 1
    retried = await store.get_task("q", second.id)
    assert retried is not None
    assert (retried.state, retried.debounce_key) == (State.READY, None)
    (fourth,) = await store.enqueue("q", [new("v4", debounce_key="k")], T0 + 7)
    assert not fourth.debounced
    assert len(await every(store)) == 3


async def test_an_idempotent_repeat_answers_the_debounced_task_again(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (held,) = await store.enqueue("q", [new(0, debounce_key="k")], T0)
    tasks = [new(1, debounce_key="k"), new(2, debounce_key="j")]
    made = await store.enqueue_once("q", tasks, T0 + 1, idempotency("i", tasks))
    assert made.created
    assert [(t.id, t.debounced) for t in made.tasks] == [
        (held.id, True),
        (made.tasks[1].id, False),
    ]
    again = await store.enqueue_once("q", tasks, T0 + 2, idempotency("i", tasks))
    assert not again.created
    assert [(t.id, t.debounced, data(t)) for t in again.tasks] == [
        (held.id, True, 1),
        (made.tasks[1].id, False, 2),
    ]
    (stored,) = [t for t in await every(store) if t.id == held.id]
    assert stored.updated_at == T0 + 1  # the repeat changed nothing


async def test_concurrent_debounces_of_one_key_leave_one_task(store: Store) -> None:
    await store.save_queue("q", KEEP)
    outcomes = await asyncio.gather(
        *(store.enqueue("q", [new(n, debounce_key="k")], T0 + n) for n in range(10))
    )
    assert sum(not task.debounced for (task,) in outcomes) == 1
    assert len({task.id for (task,) in outcomes}) == 1
    assert len(await every(store)) == 1


@pytest.mark.parametrize("flow", [{"fair": True}, {"key_concurrency": 1}], ids=repr)
async def test_debounce_on_fair_and_limited_queues(store: Store, flow: dict[str, Any]) -> None:
    options = msgspec.structs.replace(KEEP, **flow)
    await store.save_queue("q", options)
    await store.enqueue(
        "q",
        [new("a", 0, key="a"), new("b", 0, key="b"), new("d1", 100, key="a", debounce_key="d")],
        T0,
    )
    (moved,) = await store.enqueue("q", [new("d2", 100, key="c", debounce_key="d")], T0 + 1)
    assert moved.debounced
    assert moved.key == "c"
    await store.expire({"q": options}, T0 + 101)
    delivered = (await store.poll("q", options, [], 10, "w1", T0 + 101)).delivered
    assert sorted(data(t) for t in delivered) == ["a", "b", "d2"]
    assert len(await every(store)) == 3


async def test_servers_racing_with_one_key_leave_one_task(shared_stores: list[Store]) -> None:
    servers = shared_stores
    await servers[0].save_queue("q", KEEP)
    for server in servers:
        await server.load_queues()
    for round_ in range(5):
        key = f"k{round_}"
        outcomes = await asyncio.gather(
            *(
                s.enqueue("q", [new(n, debounce_key=key), new(n, debounce_key=f"{key}-2")], T0)
                for n, s in enumerate(servers * 4)
            )
        )
        created = [t for tasks in outcomes for t in tasks if not t.debounced]
        assert len(created) == 2
        assert len({t.id for tasks in outcomes for t in tasks}) == 2
    assert len(await servers[1].list_tasks("q", EVERY_TASK, 100, 0)) == 10


async def test_servers_debouncing_while_others_claim(shared_stores: list[Store]) -> None:
    """Debounces race with claims on other servers: a task is delivered as some enqueue
    left it, or waits once with the key; never two tasks of the key wait at once."""
    servers = shared_stores
    await servers[0].save_queue("q", KEEP)
    for server in servers:
        await server.load_queues()
    delivered: list[Task] = []

    async def claims() -> None:
        for n in range(20):
            delivered.extend(
                (await servers[2].poll("q", KEEP, [], 10, "w", T0 + 10_000 + n)).delivered
            )
            await asyncio.sleep(0)

    async def debounces(server: Store, base: int) -> list[Task]:
        answers = []
        for n in range(20):
            # A run_at that has passed: ready at once, so that claims race the debounces.
            (task,) = await server.enqueue("q", [new(base + n, 0, run_at=T0, debounce_key="k")], T0)
            answers.append(task)
            await asyncio.sleep(0)
        return answers

    *answers, _ = await asyncio.gather(
        debounces(servers[0], 0), debounces(servers[1], 100), claims()
    )
    delivered.extend((await servers[2].poll("q", KEEP, [], 100, "w", T0 + 20_000)).delivered)
    tasks = await servers[0].list_tasks("q", EVERY_TASK, 100, 0)
    waiting = [t for t in tasks if t.state is not State.RUNNING]
    assert waiting == []  # the last poll took what waited
    assert {t.id for t in tasks} == {t.id for t in delivered}
    assert len({t.id for t in delivered}) == len(delivered)  # each delivered once
    # Every answer names a task that exists, delivered with the data of some debounce.
    assert {t.id for batch in answers for t in batch} <= {t.id for t in tasks}
    sent = {data(t) for batch in answers for t in batch}
    assert {data(t) for t in delivered} <= sent
