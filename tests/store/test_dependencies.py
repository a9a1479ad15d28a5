"""Dependencies over every store: tasks that wait for tasks (``after``), fan-in of results,
fan-out, chains across queues, cascades of cancellation, retries and deletions.

Part of the conformance suite (see test_conformance): the same tests run on every store.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest

from katar.core import rules
from katar.core.idempotency import idempotency
from katar.core.model import EVERY_TASK, QueueOptions, State, Task
from katar.core.storage import Change
from katar.errors import ValidationError
from katar.store import Store
from tests.helpers.store import DROP, KEEP, T0, ack, child, claim, finish, new, results, setup

RETRY = QueueOptions(
    persistent=True, timeout=1000, max_attempts=3, retry_failed=True, retry_delay=0
)


async def stored(store: Store, task: Task | int, queue: str = "q") -> Task:
    found = await store.get_task(queue, task if isinstance(task, int) else task.id)
    assert found is not None
    return found


class Recorder:
    """An observer that keeps what the store reports apart (Observer.settled)."""

    def __init__(self) -> None:
        self.seen: list[Change] = []

    def watching(self) -> bool:
        return True

    def tasks_ready(self, queue: str, count: int) -> None:
        return None

    def queue_changed(self, name: str) -> None:
        return None

    def resync(self) -> None:
        return None

    def schedules_changed(self) -> None:
        return None

    def settled(self, changes: list[Change]) -> None:
        self.seen += changes

    def now_ms(self) -> int:
        return 0  # never later than a poll's own time: leases start at the poll's


async def test_fan_in_waits_for_every_parent_and_delivers_their_results(store: Store) -> None:
    await setup(store, DROP)  # no history: the results must outlive their tasks
    parents = await store.enqueue("q", [new(1), new(2), new(3)], T0)
    (waiting,) = await store.enqueue("q", [child("sum", *(p.id for p in parents))], T0)
    assert waiting.state is State.WAITING
    assert waiting.status == "queued"
    assert waiting.waiting_for == tuple(p.id for p in parents)
    assert results(waiting) == {}
    await finish(store, parents[0], {"n": 1}, DROP)
    await finish(store, parents[1], None, DROP)
    now = await stored(store, waiting)
    assert now.state is State.WAITING
    assert now.waiting_for == (parents[2].id,)
    assert results(now) == {str(parents[0].id): {"n": 1}, str(parents[1].id): None}
    changes = await finish(store, parents[2], [3], DROP)
    assert [(c.task.id, c.task.state, c.old) for c in changes if c.task.id == waiting.id] == [
        (waiting.id, State.READY, State.WAITING)
    ]
    (delivered,) = await claim(store, options=DROP)
    assert delivered.id == waiting.id
    assert results(delivered) == {
        str(parents[0].id): {"n": 1},
        str(parents[1].id): None,
        str(parents[2].id): [3],
    }
    assert delivered.waiting_for == ()


async def test_fan_out_releases_every_child_at_once(store: Store) -> None:
    await setup(store)
    (parent,) = await store.enqueue("q", [new("root")], T0)
    children = await store.enqueue("q", [child(i, parent.id) for i in range(50)], T0)
    assert {c.state for c in children} == {State.WAITING}
    assert (await store.counts())["q"].get(State.WAITING) == 50
    changes = await finish(store, parent, "r")
    released = {c.task.id for c in changes if c.task.state is State.READY}
    assert released == {c.id for c in children}
    delivered = await claim(store, limit=100)
    assert [t.id for t in delivered] == [c.id for c in children]
    assert all(results(t) == {str(parent.id): "r"} for t in delivered)


async def test_a_chain_runs_across_two_queues(store: Store) -> None:
    await setup(store, KEEP, "parse")
    await setup(store, DROP, "store")
    (first,) = await store.enqueue("parse", [new("doc")], T0)
    (second,) = await store.enqueue("store", [child("save", first.id)], T0)
    (third,) = await store.enqueue("parse", [child("index", second.id)], T0)
    assert await claim(store, options=DROP, queue="store") == []
    await finish(store, first, {"words": 3}, KEEP, "parse")
    (got,) = await claim(store, options=DROP, queue="store")
    assert got.id == second.id
    assert results(got) == {str(first.id): {"words": 3}}
    done = ack(got, "done", result=msgspec.Raw(b'"saved"'))
    await store.poll("store", DROP, [done], 0, "w1", T0 + 2)
    (last,) = await claim(store, queue="parse")
    assert last.id == third.id
    assert results(last) == {str(second.id): "saved"}


async def test_a_failure_cancels_the_children_and_theirs(store: Store) -> None:
    await setup(store)
    (root,) = await store.enqueue("q", [new("root")], T0)
    (middle,) = await store.enqueue("q", [child("m", root.id)], T0)
    (leaf,) = await store.enqueue("q", [child("l", middle.id)], T0)
    (claimed,) = await claim(store)
    failed = ack(claimed, "failed", error="boom")
    changes = (await store.poll("q", KEEP, [failed], 0, "w1", T0 + 1)).changes
    cancelled = {c.task.id: c.task for c in changes if c.task.state is State.CANCELLED}
    assert set(cancelled) == {middle.id, leaf.id}
    m, lf = await stored(store, middle), await stored(store, leaf)
    assert m.state is State.CANCELLED
    assert lf.state is State.CANCELLED
    assert m.error is not None
    assert f"task {root.id} " in m.error
    assert "failed" in m.error
    assert lf.error is not None
    assert f"task {middle.id} " in lf.error
    assert "cancelled" in lf.error
    assert await claim(store) == []


async def test_children_keep_waiting_while_a_failed_parent_is_retried(store: Store) -> None:
    await setup(store, RETRY)
    (parent,) = await store.enqueue("q", [new("flaky")], T0)
    (waiting,) = await store.enqueue("q", [child("next", parent.id)], T0)
    (claimed,) = await claim(store, options=RETRY)
    await store.poll("q", RETRY, [ack(claimed, "failed", error="try again")], 0, "w1", T0 + 1)
    assert (await stored(store, waiting)).state is State.WAITING
    # The lease of the next delivery runs out: still attempts left, still waiting.
    (again,) = await claim(store, options=RETRY, now=T0 + 2)
    assert again.id == parent.id
    await store.expire({"q": RETRY}, T0 + 2 + RETRY.timeout)
    assert (await stored(store, waiting)).state is State.WAITING
    await finish(store, parent, "finally", RETRY)
    (got,) = await claim(store, options=RETRY)
    assert got.id == waiting.id
    assert results(got) == {str(parent.id): "finally"}


async def test_a_lease_that_fails_the_parent_for_good_cancels_the_children(store: Store) -> None:
    once = QueueOptions(persistent=True, timeout=1000, max_attempts=1)
    await setup(store, once)
    (parent,) = await store.enqueue("q", [new("once")], T0)
    (waiting,) = await store.enqueue("q", [child("next", parent.id)], T0)
    await claim(store, options=once)
    changes = await store.expire({"q": once}, T0 + once.timeout)
    assert {(c.task.id, c.task.state) for c in changes} == {
        (parent.id, State.FAILED),
        (waiting.id, State.CANCELLED),
    }


async def test_cancelling_or_deleting_a_parent_cancels_its_children(store: Store) -> None:
    recorder = Recorder()
    store.attach(recorder)
    await setup(store)
    first, second = await store.enqueue("q", [new(1), new(2)], T0)
    (a,) = await store.enqueue("q", [child("a", first.id)], T0)
    (b,) = await store.enqueue("q", [child("b", second.id)], T0)
    change = await store.set_status("q", first.id, "cancelled", T0 + 1)
    assert change is not None
    got = await stored(store, a)
    assert got.state is State.CANCELLED
    assert got.error is not None
    assert "cancelled" in got.error
    assert [c.task.id for c in recorder.seen] == [a.id]
    assert await store.delete_task("q", second.id, T0 + 2)
    got = await stored(store, b)
    assert got.state is State.CANCELLED
    assert got.error is not None
    assert f"task {second.id} " in got.error
    assert "deleted" in got.error
    assert [c.task.id for c in recorder.seen] == [a.id, b.id]


async def test_references_name_earlier_tasks_of_the_same_enqueue(store: Store) -> None:
    await setup(store)
    batch = [new("a"), new("b"), child("ab", refs=(0, 1)), child("abc", refs=(2,))]
    a, b, ab, abc = await store.enqueue("q", batch, T0)
    assert ab.state is State.WAITING
    assert ab.waiting_for == (a.id, b.id)
    assert abc.waiting_for == (ab.id,)
    await finish(store, a, "A")
    await finish(store, b, "B")
    (got,) = await claim(store)
    assert got.id == ab.id
    assert results(got) == {str(a.id): "A", str(b.id): "B"}


async def test_parents_must_exist(store: Store) -> None:
    await setup(store)
    (one,) = await store.enqueue("q", [new(1)], T0)
    with pytest.raises(ValidationError) as refused:
        await store.enqueue("q", [new(2), child(3, one.id, one.id + 1000)], T0)
    assert str(one.id + 1000) in refused.value.message
    assert len(await store.list_tasks("q", EVERY_TASK, 10, 0)) == 1  # nothing created


async def test_the_tasks_waiting_for_one_are_bounded(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most MAX_CHILDREN tasks may name a task while it is unfinished (its end settles
    them in one transaction); beyond, the enqueue is refused and creates nothing. Tasks
    that name it once it is done wait for nothing, and are not counted."""
    monkeypatch.setattr(rules, "MAX_CHILDREN", 3)
    await setup(store)
    parent, other = await store.enqueue("q", [new("p"), new("o")], T0)
    await store.enqueue("q", [child(1, parent.id), child(2, parent.id, other.id)], T0)
    with pytest.raises(ValidationError) as refused:
        await store.enqueue("q", [child(3, other.id), child(4, parent.id, parent.id)] * 2, T0)
    assert f"task {parent.id} has 2 tasks waiting for it; at most 3" in refused.value.message
    assert len(await store.list_tasks("q", EVERY_TASK, 10, 0)) == 4  # nothing created
    (third,) = await store.enqueue("q", [child(3, parent.id)], T0)
    assert third.state is State.WAITING
    with pytest.raises(ValidationError):
        await store.enqueue("q", [child(4, parent.id)], T0)
    await finish(store, parent, "r")
    (late,) = await store.enqueue("q", [child(5, parent.id)], T0 + 2)  # done: not counted
    assert late.state is State.READY


async def test_a_parent_already_finished_counts_as_it_ended(store: Store) -> None:
    await setup(store)
    done, failed = await store.enqueue("q", [new("done"), new("failed")], T0)
    await finish(store, done, 42)
    (claimed,) = await claim(store)
    await store.poll("q", KEEP, [ack(claimed, "failed", error="no")], 0, "w1", T0 + 1)
    ready, cancelled = await store.enqueue(
        "q", [child("r", done.id), child("c", done.id, failed.id)], T0 + 2
    )
    assert ready.state is State.READY
    assert results(ready) == {str(done.id): 42}
    assert cancelled.state is State.CANCELLED
    assert cancelled.error is not None
    assert f"task {failed.id} " in cancelled.error
    (got,) = await claim(store, now=T0 + 3)
    assert got.id == ready.id


async def test_a_waiting_child_with_a_delay_is_scheduled_when_released(store: Store) -> None:
    await setup(store)
    (parent,) = await store.enqueue("q", [new("p")], T0)
    (later,) = await store.enqueue("q", [child("later", parent.id, delay_ms=60_000)], T0)
    assert later.state is State.WAITING
    await finish(store, parent, None)
    assert (await stored(store, later)).state is State.SCHEDULED
    assert await claim(store, now=T0 + 10) == []
    await store.expire({"q": KEEP}, T0 + 60_000)
    (got,) = await claim(store, now=T0 + 60_000)
    assert got.id == later.id


async def test_a_paused_waiting_task_waits_again_when_resumed(store: Store) -> None:
    await setup(store)
    (parent,) = await store.enqueue("q", [new("p")], T0)
    (waiting,) = await store.enqueue("q", [child("c", parent.id)], T0)
    await store.set_status("q", waiting.id, "paused", T0 + 1)
    resumed = await store.set_status("q", waiting.id, "queued", T0 + 2)
    assert resumed is not None
    assert resumed.task.state is State.WAITING
    await store.set_status("q", waiting.id, "paused", T0 + 3)
    await finish(store, parent, "p")
    assert (await stored(store, waiting)).state is State.PAUSED  # a pause holds it
    resumed = await store.set_status("q", waiting.id, "queued", T0 + 4)
    assert resumed is not None
    assert resumed.task.state is State.READY


# -- several servers on one PostgreSQL ---------------------------------------------------------


async def test_parents_finished_at_once_on_several_servers_release_the_child(
    shared_stores: list[Store],
) -> None:
    servers = shared_stores
    await servers[0].save_queue("q", KEEP)
    for _round in range(5):
        parents = await servers[0].enqueue("q", [new(n) for n in range(6)], T0)
        (waiting,) = await servers[0].enqueue("q", [child("c", *(p.id for p in parents))], T0)
        claimed = (await servers[0].poll("q", KEEP, [], 6, None, T0)).delivered
        assert {t.id for t in claimed} == {p.id for p in parents}
        # Each server finishes two parents, all at the same moment.
        await asyncio.gather(
            *(
                servers[i % 3].poll("q", KEEP, [ack(task, "done")], 0, None, T0 + 1)
                for i, task in enumerate(claimed)
            )
        )
        released = await stored(servers[1], waiting)
        assert released.state is State.READY
        assert released.waiting_for == ()
        (got,) = (await servers[2].poll("q", KEEP, [], 1, None, T0 + 2)).delivered
        assert got.id == waiting.id
        await servers[2].poll("q", KEEP, [ack(got, "done")], 0, None, T0 + 3)


async def test_a_release_wakes_the_other_servers(shared_stores: list[Store]) -> None:
    one, other, _third = shared_stores
    await one.save_queue("q", KEEP)
    await one.save_queue("next", DROP)
    heard: list[tuple[str, int]] = []

    class Listener(Recorder):
        def tasks_ready(self, queue: str, count: int) -> None:
            heard.append((queue, count))

    listening = asyncio.create_task(other.listen(Listener()))
    try:
        (parent,) = await one.enqueue("q", [new("p")], T0)
        await one.enqueue("next", [child(i, parent.id) for i in range(3)], T0)
        await asyncio.sleep(0.2)  # the listener is connected; the enqueue woke nobody
        heard.clear()
        await finish(store=one, task=parent, result="r")
        for _ in range(100):
            if ("next", 3) in heard:
                break
            await asyncio.sleep(0.05)
        assert ("next", 3) in heard
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


async def test_a_child_enqueued_as_its_parent_finishes_on_another_server_is_released(
    shared_stores: list[Store],
) -> None:
    enqueuer, acker, _third = shared_stores
    await enqueuer.save_queue("q", KEEP)
    for _round in range(10):
        (parent,) = await enqueuer.enqueue("q", [new("p")], T0)
        (claimed,) = (await acker.poll("q", KEEP, [], 1, None, T0)).delivered
        made, _acked = await asyncio.gather(
            enqueuer.enqueue("q", [child("c", parent.id)], T0),
            acker.poll("q", KEEP, [ack(claimed, "done")], 0, None, T0 + 1),
        )
        got = await stored(enqueuer, made[0])
        assert got.state is State.READY, got  # never left waiting for a parent that is done
        (delivered,) = (await acker.poll("q", KEEP, [], 1, None, T0 + 2)).delivered
        await acker.poll("q", KEEP, [ack(delivered, "done")], 0, None, T0 + 3)


async def test_a_repeat_under_an_idempotency_key_answers_the_waiting_task_as_it_is(
    store: Store,
) -> None:
    await setup(store)
    (parent,) = await store.enqueue("q", [new("p")], T0)
    tasks = [new("a"), child("b", parent.id, refs=(0,))]
    once = idempotency("k", tasks)
    first = await store.enqueue_once("q", tasks, T0, once)
    assert first.created
    assert first.tasks[1].waiting_for == (parent.id, first.tasks[0].id)
    again = await store.enqueue_once("q", tasks, T0 + 1, once)
    assert not again.created
    assert [t.id for t in again.tasks] == [t.id for t in first.tasks]
    assert again.tasks[1].state is State.WAITING
    assert again.tasks[1].waiting_for == (parent.id, first.tasks[0].id)
    await store.set_status("q", parent.id, "cancelled", T0 + 2)
    cancelled = await store.enqueue_once("q", tasks, T0 + 3, once)
    assert cancelled.tasks[1].state is State.CANCELLED


async def test_the_poll_that_finishes_a_parent_takes_the_child_it_released(store: Store) -> None:
    await setup(store)
    (parent,) = await store.enqueue("q", [new("p", priority=-5)], T0)
    (waiting,) = await store.enqueue("q", [child("c", parent.id)], T0)
    (claimed,) = await claim(store)
    await store.enqueue("q", [new("later", priority=-10)], T0)
    done = ack(claimed, "done", result=msgspec.Raw(b"1"))
    result = await store.poll("q", KEEP, [done], 1, "w1", T0 + 1)
    # Acks first, then the claim: the child, ready now and first in order, is taken.
    assert [t.id for t in result.delivered] == [waiting.id]
    assert results(result.delivered[0]) == {str(parent.id): 1}


async def test_a_task_knows_its_parents_of_other_queues_even_gone(store: Store) -> None:
    # Task.foreign: what lets a reader that may not use the other queue be shown neither
    # their ids nor their results; kept in the edge, so it outlives a parent removed.
    await setup(store)
    await setup(store, DROP, name="other")  # no history: a done task is removed at once
    (own,) = await store.enqueue("q", [new("own")], T0)
    away, waits = await store.enqueue("other", [new("away"), new("waits")], T0)
    (kid,) = await store.enqueue("q", [child("kid", own.id, away.id, waits.id)], T0)
    assert kid.foreign == ((away.id, "other"), (waits.id, "other"))
    await finish(store, away, {"r": 1}, DROP, queue="other")
    assert await store.get_task("other", away.id) is None  # gone: its edge keeps its queue
    got = await stored(store, kid)
    assert got.foreign == ((away.id, "other"), (waits.id, "other"))
    assert results(got) == {str(away.id): {"r": 1}}
    (listed,) = [t for t in await store.list_tasks("q", EVERY_TASK, 10, 0) if t.id == kid.id]
    assert listed.foreign == got.foreign
    # A task of the same request ("$0") and one of its own queue are not foreign.
    _first, second = await store.enqueue("q", [new(1), child(2, own.id, refs=[0])], T0)
    assert second.foreign == ()
    assert (await stored(store, second)).foreign == ()
