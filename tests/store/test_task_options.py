"""Per-task options (timeout, max_attempts, expires_in) and unique keys, on every store.

Time is passed in explicitly (``now``), so leases and expiries are tested without sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from katar.core.idempotency import idempotency
from katar.core.model import EVERY_TASK, Ack, NewTask, QueueOptions, State, Task
from katar.errors import Conflict
from katar.store import Store

T0 = 1_700_000_000_000
KEEP = QueueOptions(persistent=True, timeout=1000, max_attempts=3, retry_delay=0)
DROP = QueueOptions(persistent=False, timeout=1000, max_attempts=3, retry_delay=0)


def new(data: object = 1, **fields: Any) -> NewTask:
    return NewTask(data=msgspec.Raw(msgspec.json.encode(data)), **fields)


def ack(task: Task, status: str = "done", **fields: Any) -> Ack:
    return Ack(task_id=str(task.id), status=status, **fields)  # type: ignore[arg-type]


async def claim(store: Store, now: int, limit: int = 1, options: QueueOptions = KEEP) -> list[Task]:
    return (await store.poll("q", options, [], limit, "w1", now)).delivered


async def state(store: Store, task: Task) -> State | None:
    got = await store.get_task("q", task.id)
    return None if got is None else got.state


# -- timeout ------------------------------------------------------------------------------------


async def test_a_task_timeout_is_its_lease(store: Store) -> None:
    await store.save_queue("q", KEEP)
    short, plain = await store.enqueue("q", [new(timeout=200), new()], T0)
    assert short.timeout == 200
    assert plain.timeout is None
    delivered = await claim(store, T0, limit=2)
    assert [(t.id, t.lease_until) for t in delivered] == [
        (short.id, T0 + 200),
        (plain.id, T0 + 1000),
    ]
    assert await store.next_deadline() == T0 + 200
    # A heartbeat extends it by the task's own timeout too.
    await store.poll("q", KEEP, [ack(short, "in progress")], 0, "w1", T0 + 100)
    got = await store.get_task("q", short.id)
    assert got is not None
    assert got.lease_until == T0 + 300
    assert got.timeout == 200
    changes = await store.expire({"q": KEEP}, T0 + 300)
    assert [(c.task.id, c.task.state) for c in changes] == [(short.id, State.READY)]
    assert changes[0].task.error == "lease expired: no ack within 200 ms of delivery 1"
    assert await state(store, plain) is State.RUNNING


# -- max_attempts -------------------------------------------------------------------------------


async def test_a_task_max_attempts_counts_lease_expiries(store: Store) -> None:
    await store.save_queue("q", KEEP)  # the queue's max_attempts: 3
    (task,) = await store.enqueue("q", [new(max_attempts=1)], T0)
    assert task.max_attempts == 1
    await claim(store, T0)
    (change,) = await store.expire({"q": KEEP}, T0 + 1000)
    assert change.task.state is State.FAILED
    assert "all attempts are spent" in (change.task.error or "")


async def test_a_task_max_attempts_counts_failed_acks_with_retry(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (task,) = await store.enqueue("q", [new(max_attempts=5)], T0)
    for attempt in range(1, 6):
        (delivered,) = await claim(store, T0 + attempt)
        assert delivered.attempts == attempt
        retry = ack(delivered, "failed", retry=True)
        await store.poll("q", KEEP, [retry], 0, "w1", T0 + attempt)
    assert await state(store, task) is State.FAILED  # five deliveries, not the queue's three


async def test_a_task_max_attempts_zero_is_no_limit(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (task,) = await store.enqueue("q", [new(max_attempts=0)], T0)
    for attempt in range(1, 8):
        await claim(store, T0 + attempt * 1000)
        await store.expire({"q": KEEP}, T0 + attempt * 1000 + 1000)
    assert await state(store, task) is State.READY


# -- expires_in ---------------------------------------------------------------------------------


async def test_a_task_not_delivered_in_time_is_cancelled_at_its_expiry(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (task,) = await store.enqueue("q", [new(expires_in_ms=1500)], T0)
    assert task.expires_at == T0 + 1500
    assert await store.next_deadline() == T0 + 1500
    assert await store.expire({"q": KEEP}, T0 + 1499) == []
    assert await claim(store, T0 + 1500) == []  # not delivered at its expiry
    changes = await store.expire({"q": KEEP}, T0 + 1500)
    cancelled = [c.task for c in changes if c.task.state is State.CANCELLED]
    got = await store.get_task("q", task.id)
    assert got is not None
    assert got.state is State.CANCELLED
    assert got.error == "expired: not delivered within 1.5 s"
    assert got.expires_at == T0 + 1500
    assert [t.id for t in cancelled] in ([task.id], [])  # memory cancels it in the claim
    assert await store.next_deadline() is None


async def test_paused_and_scheduled_tasks_expire_too(store: Store) -> None:
    await store.save_queue("q", KEEP)
    paused, later = await store.enqueue(
        "q", [new(paused=True, expires_in_ms=500), new(delay_ms=2000, expires_in_ms=700)], T0
    )
    assert await store.next_deadline() == T0 + 500
    await store.expire({"q": KEEP}, T0 + 500)
    assert await state(store, paused) is State.CANCELLED
    assert await store.next_deadline() == T0 + 700
    await store.expire({"q": KEEP}, T0 + 700)
    assert await state(store, later) is State.CANCELLED
    assert await store.next_deadline() is None


async def test_a_task_released_past_its_expiry_expires_in_the_same_reap(store: Store) -> None:
    """Found by the model test on SQLite and PostgreSQL: an expiry released a task that waited
    for it (after_failure "run") whose own expiry had come meanwhile, and the reap left it
    queued until the next one. Each task expires at its moment, the earliest first: one
    released past its expiry at once, and its own children then as its end says."""
    await store.save_queue("q", KEEP)
    (parent,) = await store.enqueue("q", [new("p", paused=True, expires_in_ms=500)], T0)
    runs = new("c", after=(parent.id,), after_failure="run", expires_in_ms=400)
    (child,) = await store.enqueue("q", [runs], T0)
    # One waiting for the child, one paused waiting for it: both end with the child.
    grandchild, paused = await store.enqueue(
        "q", [new("g", after=(child.id,)), new("h", after=(child.id,), paused=True)], T0
    )
    assert (child.state, grandchild.state, paused.state) == (State.WAITING,) * 2 + (State.PAUSED,)
    # A paused task of the parent expiring later: the parent's end reaches it first.
    late = await store.enqueue(
        "q", [new("l", after=(parent.id,), paused=True, expires_in_ms=900)], T0
    )
    await store.expire({"q": KEEP}, T0 + 1000)
    errors = {}
    for task in (parent, child, grandchild, paused, *late):
        got = await store.get_task("q", task.id)
        assert got is not None
        assert got.state is State.CANCELLED
        errors[task.id] = got.error
    assert errors == {
        parent.id: "expired: not delivered within 0.5 s",
        child.id: "expired: not delivered within 0.4 s",
        grandchild.id: f"cancelled: task {child.id} it waited for was cancelled",
        paused.id: f"cancelled: task {child.id} it waited for was cancelled",
        late[0].id: f"cancelled: task {parent.id} it waited for was cancelled",
    }
    assert await store.next_deadline() is None


async def test_a_task_delivered_before_its_expiry_no_longer_expires(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (task,) = await store.enqueue("q", [new(expires_in_ms=1000)], T0)
    (delivered,) = await claim(store, T0 + 100)
    await store.poll("q", KEEP, [ack(delivered, "failed", retry=True)], 0, "w1", T0 + 200)
    assert await state(store, task) is State.READY
    assert await store.next_deadline() is None
    assert await store.expire({"q": KEEP}, T0 + 5000) == []
    (again,) = await claim(store, T0 + 5000)
    assert again.attempts == 2


async def test_a_manual_retry_of_an_expired_task_lifts_its_expiry(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (task,) = await store.enqueue("q", [new(expires_in_ms=100)], T0)
    await store.expire({"q": KEEP}, T0 + 100)
    change = await store.set_status("q", task.id, "queued", T0 + 200)
    assert change is not None
    assert change.task.state is State.READY
    assert change.task.expires_at is None
    assert await store.next_deadline() is None
    assert len(await claim(store, T0 + 300)) == 1


# -- unique keys --------------------------------------------------------------------------------


async def test_a_held_unique_key_creates_nothing_and_answers_the_holder(store: Store) -> None:
    await store.save_queue("q", KEEP)
    await store.save_queue("other", KEEP)
    (first,) = await store.enqueue("q", [new(1, unique_key="k")], T0)
    assert not first.duplicate
    assert first.unique_key == "k"
    (again,) = await store.enqueue("q", [new(2, unique_key="k")], T0 + 1)
    assert again.duplicate
    assert again.id == first.id
    assert msgspec.json.decode(again.data) == 1  # the holder's own record
    (elsewhere,) = await store.enqueue("other", [new(3, unique_key="k")], T0 + 1)
    assert not elsewhere.duplicate  # keys are per queue
    # Held while paused, queued and in progress; free once finished.
    (delivered,) = await claim(store, T0 + 2)
    (held,) = await store.enqueue("q", [new(4, unique_key="k")], T0 + 3)
    assert held.duplicate
    await store.poll("q", KEEP, [ack(delivered)], 0, "w1", T0 + 4)
    (fresh,) = await store.enqueue("q", [new(5, unique_key="k")], T0 + 5)
    assert not fresh.duplicate
    assert fresh.id > first.id
    await store.set_status("q", fresh.id, "paused", T0 + 6)
    (paused,) = await store.enqueue("q", [new(6, unique_key="k")], T0 + 7)
    assert paused.duplicate
    assert paused.id == fresh.id
    await store.set_status("q", fresh.id, "cancelled", T0 + 8)
    (after,) = await store.enqueue("q", [new(7, unique_key="k")], T0 + 9)
    assert not after.duplicate


async def test_unique_for_holds_the_key_whatever_the_status(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new(unique_key="k", unique_for_ms=10_000)], T0)
    assert first.unique_until == T0 + 10_000
    (delivered,) = await claim(store, T0 + 1)
    await store.poll("q", KEEP, [ack(delivered)], 0, "w1", T0 + 2)
    (during,) = await store.enqueue("q", [new(unique_key="k")], T0 + 9_999)
    assert during.duplicate
    assert during.id == first.id
    assert during.state is State.DONE
    (after,) = await store.enqueue("q", [new(unique_key="k")], T0 + 10_000)
    assert not after.duplicate


async def test_a_queue_without_history_keeps_a_finished_task_while_it_holds_its_key(
    store: Store,
) -> None:
    await store.save_queue("q", DROP)
    (held, plain) = await store.enqueue(
        "q", [new(unique_key="k", unique_for_ms=5000), new(unique_key="p")], T0
    )
    delivered = await claim(store, T0 + 1, limit=2, options=DROP)
    await store.poll("q", DROP, [ack(t) for t in delivered], 0, "w1", T0 + 2)
    assert await store.get_task("q", plain.id) is None  # no key held past its end: gone
    (during,) = await store.enqueue("q", [new(unique_key="k")], T0 + 3)
    assert during.duplicate
    assert during.state is State.DONE
    assert await store.expire({"q": DROP}, T0 + 5000) == []
    assert await store.get_task("q", held.id) is None  # swept once its key is free
    (after,) = await store.enqueue("q", [new(unique_key="k")], T0 + 5001)
    assert not after.duplicate


async def test_a_batch_with_a_key_twice_creates_the_first_only(store: Store) -> None:
    await store.save_queue("q", KEEP)
    created = await store.enqueue(
        "q", [new(1, unique_key="a"), new(2, unique_key="a"), new(3, unique_key="b"), new(4)], T0
    )
    assert [t.duplicate for t in created] == [False, True, False, False]
    assert created[1].id == created[0].id
    assert len(await store.list_tasks("q", EVERY_TASK, 100, 0)) == 3


async def test_concurrent_enqueues_of_one_key_create_once(store: Store) -> None:
    await store.save_queue("q", KEEP)
    outcomes = await asyncio.gather(
        *(store.enqueue("q", [new(n, unique_key="k")], T0) for n in range(10))
    )
    assert sum(not task.duplicate for (task,) in outcomes) == 1
    assert len({task.id for (task,) in outcomes}) == 1


async def test_an_idempotent_repeat_answers_the_duplicates_again(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (holder,) = await store.enqueue("q", [new(0, unique_key="k")], T0)
    tasks = [new(1, unique_key="k"), new(2, unique_key="j")]
    made = await store.enqueue_once("q", tasks, T0 + 1, idempotency("i", tasks))
    assert made.created
    assert [(t.id, t.duplicate) for t in made.tasks] == [
        (holder.id, True),
        (made.tasks[1].id, False),
    ]
    again = await store.enqueue_once("q", tasks, T0 + 2, idempotency("i", tasks))
    assert not again.created
    assert [(t.id, t.duplicate) for t in again.tasks] == [(t.id, t.duplicate) for t in made.tasks]
    other = [new(1, unique_key="x"), new(2, unique_key="j")]
    assert idempotency("i", other).digest != idempotency("i", tasks).digest


async def test_servers_racing_with_one_key_create_once(shared_stores: list[Store]) -> None:
    servers = shared_stores
    await servers[0].save_queue("q", KEEP)
    for server in servers:
        await server.load_queues()
    for round_ in range(5):
        key = f"k{round_}"
        outcomes = await asyncio.gather(
            *(
                s.enqueue("q", [new(n, unique_key=key), new(n, unique_key=f"{key}-2")], T0)
                for n, s in enumerate(servers * 4)
            )
        )
        created = [t for tasks in outcomes for t in tasks if not t.duplicate]
        assert len(created) == 2
        assert len({t.id for tasks in outcomes for t in tasks}) == 2
    assert len(await servers[1].list_tasks("q", EVERY_TASK, 100, 0)) == 10


# -- with the queue options of flow control -----------------------------------------------------


@pytest.mark.parametrize(
    "flow",
    [
        {"fair": True},
        {"key_concurrency": 1},
        {"concurrency": 5},
        {"fair": True, "key_concurrency": 2, "concurrency": 5},
    ],
    ids=repr,
)
async def test_task_options_on_limited_and_fair_queues(store: Store, flow: dict[str, Any]) -> None:
    options = msgspec.structs.replace(KEEP, **flow)
    await store.save_queue("q", options)
    tasks = [
        new("a0", key="a", timeout=200, unique_key="u"),
        new("a1", key="a", unique_key="u"),  # a duplicate of a0
        new("b0", key="b", expires_in_ms=100),
        new("b1", key="b", max_attempts=1),
        new("c0", key="c"),
    ]
    created = await store.enqueue("q", tasks, T0)
    assert [t.duplicate for t in created] == [False, True, False, False, False]
    assert created[1].id == created[0].id
    # b0 expires before any claim: it is passed over, then cancelled by the reaper.
    delivered = await claim(store, T0 + 100, limit=5, options=options)
    assert sorted(msgspec.json.decode(t.data) for t in delivered) == ["a0", "b1", "c0"]
    by_data = {msgspec.json.decode(t.data): t for t in delivered}
    assert by_data["a0"].lease_until == T0 + 300
    assert by_data["a0"].timeout == 200
    assert by_data["c0"].lease_until == T0 + 1100
    assert by_data["b1"].max_attempts == 1
    changes = await store.expire({"q": options}, T0 + 300)
    assert sorted((msgspec.json.decode(c.task.data), c.task.state) for c in changes) == [
        ("a0", State.READY),
        ("b0", State.CANCELLED),
    ]
    changes = await store.expire({"q": options}, T0 + 1100)
    states = sorted((msgspec.json.decode(c.task.data), c.task.state) for c in changes)
    assert states == [("b1", State.FAILED), ("c0", State.READY)]


async def test_a_retry_cannot_take_a_unique_key_another_task_holds(store: Store) -> None:
    await store.save_queue("q", KEEP)
    (first,) = await store.enqueue("q", [new(1, unique_key="k")], T0)
    await store.set_status("q", first.id, "cancelled", T0)
    # The cancelled task no longer holds its key: another task takes it.
    (second,) = await store.enqueue("q", [new(2, unique_key="k")], T0)
    assert not second.duplicate
    assert second.id != first.id
    with pytest.raises(Conflict, match=f"task {second.id} holds its unique_key"):
        await store.set_status("q", first.id, "queued", T0 + 1)
    still = await store.get_task("q", first.id)
    assert still is not None
    assert still.state is State.CANCELLED  # nothing changed
    # Once the holder is finished, the retry may take the key back.
    (taken,) = (await store.poll("q", KEEP, [], 1, "w", T0 + 2)).delivered
    assert taken.id == second.id
    await store.poll("q", KEEP, [ack(taken)], 0, "w", T0 + 3)
    change = await store.set_status("q", first.id, "queued", T0 + 4)
    assert change is not None
    assert change.task.state is State.READY
    (third,) = await store.enqueue("q", [new(3, unique_key="k")], T0 + 5)
    assert third.duplicate
    assert third.id == first.id
