"""The store conformance suite: every store must pass every test here.

Time is passed in explicitly (``now``), so leases and delays are tested without sleeping
(tests.helpers.store).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from katar.core.model import EVERY_TASK, Ack, NewTask, QueueOptions, State, Task, TaskFilter
from katar.core.storage import Change
from katar.errors import Conflict, IllegalTransition, QueueNotFound, TaskNotFound
from katar.store import PollResult, Store, open_store
from tests.conftest import DURABLE_KINDS, store_url

# The vocabulary of the store tests; other modules import it from tests.helpers.store.
from tests.helpers.store import DROP, KEEP, T0, ack, claim, data, new, setup


async def test_queues_are_saved_replaced_and_deleted(store: Store) -> None:
    await store.save_queue("a", KEEP)
    await store.save_queue("b", DROP)
    await store.save_queue("a", DROP)
    assert await store.load_queues() == {"a": DROP, "b": DROP}
    assert (await store.load_queue("a"), await store.load_queue("nope")) == (DROP, None)
    await store.enqueue("a", [new(1), new(2)], T0)
    assert await store.delete_queue("a") == 2
    assert await store.load_queues() == {"b": DROP}
    assert await store.load_queue("a") is None
    with pytest.raises(QueueNotFound):
        await store.enqueue("a", [new(1)], T0)


async def test_enqueue_gives_growing_ids_and_keeps_data_verbatim(store: Store) -> None:
    await setup(store)
    raw = msgspec.Raw(b'{"b": 1,  "a": [1, 2.50]}')
    created = await store.enqueue("q", [NewTask(data=raw), new("x"), new(None)], T0)
    assert [t.id for t in created] == sorted(t.id for t in created)
    assert len({t.id for t in created}) == 3
    assert bytes(created[0].data) == bytes(raw)
    got = await store.get_task("q", created[0].id)
    assert got is not None
    assert bytes(got.data) == bytes(raw)
    assert got.state is State.READY
    assert got.attempts == 0
    assert got.created_at == T0


async def test_delayed_and_paused_tasks_are_not_claimed(store: Store) -> None:
    await setup(store)
    delayed, paused = await store.enqueue("q", [new(1, delay_ms=500), new(2, paused=True)], T0)
    assert delayed.state is State.SCHEDULED
    assert delayed.run_at == T0 + 500
    assert paused.state is State.PAUSED
    assert await claim(store) == []
    assert await store.expire({"q": KEEP}, T0 + 499) == []
    changes = await store.expire({"q": KEEP}, T0 + 500)
    assert [(c.task.id, c.task.state, c.old) for c in changes] == [
        (delayed.id, State.READY, State.SCHEDULED)
    ]
    assert [t.id for t in await claim(store, 5)] == [delayed.id]


async def test_claim_takes_highest_priority_then_oldest(store: Store) -> None:
    await setup(store)
    created = await store.enqueue(
        "q", [new("low", -10), new("n1"), new("high", 10), new("n2"), new("mid", 5)], T0
    )
    by_name = {data(t): t.id for t in created}
    first = await claim(store, 2)
    assert [data(t) for t in first] == ["high", "mid"]
    rest = await claim(store, 10)
    assert [t.id for t in rest] == [by_name["n1"], by_name["n2"], by_name["low"]]


async def test_claim_leases_the_task(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store, now=T0 + 5)
    assert task.state is State.RUNNING
    assert task.attempts == 1
    assert task.worker == "w1"
    assert task.lease_until == T0 + 5 + KEEP.timeout
    assert await claim(store) == []


async def test_a_queue_another_server_made_is_found_by_name(
    shared_stores: list[Store],
) -> None:
    made_here, there, _third = shared_stores
    await there.load_queues()  # as it started: before the queue existed
    fair = msgspec.structs.replace(KEEP, fair=True)
    await made_here.save_queue("new", fair)
    assert await there.load_queue("new") == fair
    # Found, it is usable there at once: its tasks go in and out (its fair claim included).
    (task,) = await there.enqueue("new", [new(1)], T0)
    assert [t.id for t in await claim(there, options=fair, queue="new")] == [task.id]


class Late:
    """An observer whose clock says the claim runs ``wait`` ms after the poll arrived (it
    waited for a connection, a lock or the writer)."""

    def __init__(self, wait: int) -> None:
        self.wait = wait

    def now_ms(self) -> int:
        return T0 + self.wait

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
        return None


@pytest.mark.parametrize(
    "options",
    [KEEP, DROP, QueueOptions(persistent=True, timeout=1000, concurrency=5)],
    ids=["keep", "drop", "limited"],
)
async def test_a_lease_starts_at_the_claim_not_at_the_poll(
    store: Store, options: QueueOptions
) -> None:
    await setup(store, options)
    first, *_ = await store.enqueue("q", [new(1), new(2), new(3), new(4)], T0)
    (task,) = await claim(store, options=options)  # no observer: the poll's time
    assert task.lease_until == T0 + options.timeout
    store.attach(Late(7000))
    for acks in ([], [ack(task, "failed", error="again")]):
        result = await store.poll("q", options, acks, 1, "w1", T0)
        (leased,) = result.delivered
        assert leased.started_at == T0 + 7000
        assert leased.lease_until == T0 + 7000 + options.timeout
        stored = await store.get_task("q", leased.id)
        assert stored is not None
        assert stored.lease_until == T0 + 7000 + options.timeout
    # A clock behind the poll's time (another server's, say) never shortens a lease.
    store.attach(Late(-5000))
    (last,) = await claim(store, options=options, now=T0 + 100)
    assert last.lease_until == T0 + 100 + options.timeout
    assert first.id == task.id


async def test_claim_is_per_queue(store: Store) -> None:
    await setup(store, name="a")
    await setup(store, name="b")
    await store.enqueue("a", [new("a")], T0)
    assert await claim(store, queue="b") == []
    assert [data(t) for t in await claim(store, queue="a")] == ["a"]


async def test_done_keeps_history_with_result_in_a_persistent_queue(store: Store) -> None:
    await setup(store, KEEP)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store)
    result = msgspec.Raw(b'{"sent": true}')
    polled = await store.poll("q", KEEP, [ack(task, result=result)], 1, "w1", T0 + 10)
    assert polled.delivered == []
    assert [(c.task.state, c.old) for c in polled.changes] == [(State.DONE, State.RUNNING)]
    stored = await store.get_task("q", task.id)
    assert stored is not None
    assert stored.state is State.DONE
    assert stored.result is not None
    assert bytes(stored.result) == b'{"sent": true}'
    assert stored.lease_until is None


async def test_done_and_failed_tasks_are_removed_from_a_queue_without_history(
    store: Store,
) -> None:
    await setup(store, DROP)
    await store.enqueue("q", [new(1), new(2)], T0)
    one, two = await claim(store, 2, DROP)
    acks = [ack(one), ack(two, "failed", error="boom")]
    polled = await store.poll("q", DROP, acks, 1, "w1", T0)
    assert [(c.task.id, c.task.state) for c in polled.changes] == [
        (one.id, State.DONE),
        (two.id, State.FAILED),
    ]
    assert polled.changes[1].task.error == "boom"
    assert await store.get_task("q", one.id) is None
    assert await store.get_task("q", two.id) is None


async def test_acks_are_idempotent(store: Store) -> None:
    for options in (KEEP, DROP):
        name = f"q{int(options.persistent)}"
        await setup(store, options, name)
        await store.enqueue(name, [new(1)], T0)
        (task,) = await claim(store, 1, options, queue=name)
        for _ in range(3):
            await store.poll(name, options, [ack(task)], 0, "w1", T0)
        again = await store.poll(name, options, [ack(task, "failed", error="late")], 0, "w1", T0)
        assert again.changes == []
        stored = await store.get_task(name, task.id)
        if options.persistent:
            assert stored is not None
            assert stored.state is State.DONE
        else:
            assert stored is None


async def test_ack_and_claim_happen_in_one_call(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1), new(2)], T0)
    (first,) = await claim(store)
    polled = await store.poll("q", KEEP, [ack(first)], 1, "w1", T0)
    assert [data(t) for t in polled.delivered] == [2]
    assert [c.task.id for c in polled.changes] == [first.id]


async def test_an_ack_for_an_unknown_task_is_not_found(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    (mine,) = await claim(store)
    for bad in ("999999", "abc", "-1", "0"):
        acks = [ack(mine, "in progress"), Ack(task_id=bad, status="done")]
        with pytest.raises(TaskNotFound) as caught:
            await store.poll("q", KEEP, acks, 1, "w1", T0)
        assert caught.value.details["ack"] == 1


async def test_an_ack_for_another_queues_task_is_ignored_whatever_its_state(
    store: Store,
) -> None:
    # As an ack for a task that is gone: a worker of q learns nothing of other's tasks.
    await setup(store)
    await setup(store, name="other")
    await store.enqueue("q", [new(1)], T0)
    running, done = await store.enqueue("other", [new(2), new(3)], T0)
    await store.poll("other", KEEP, [], 2, "w2", T0)
    await store.poll("other", KEEP, [Ack(task_id=str(done.id), status="done")], 0, "w2", T0)
    queued, gone = await store.enqueue("other", [new(4), new(5)], T0)
    await store.delete_task("other", gone.id, T0)
    before = {t.id: t for t in await store.list_tasks("other", EVERY_TASK, 10, 0, False)}
    (mine,) = await claim(store)
    for foreign in (queued, running, done, gone):
        for status in ("done", "failed", "in progress"):
            acks = [ack(mine, "in progress"), Ack(task_id=str(foreign.id), status=status)]
            polled = await store.poll("q", KEEP, acks, 1, "w1", T0)
            assert [c.task.queue for c in polled.changes] == ["q"] * len(polled.changes)
            assert polled.cancel == []
    after = {t.id: t for t in await store.list_tasks("other", EVERY_TASK, 10, 0, False)}
    assert after == before
    assert [after[t.id].state for t in (queued, running, done)] == [
        State.READY,
        State.RUNNING,
        State.DONE,
    ]


async def test_one_bad_ack_changes_nothing(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1), new(2), new(3)], T0)
    one, two = await claim(store, 2)
    with pytest.raises(TaskNotFound):
        await store.poll("q", KEEP, [ack(one), ack(two, "failed"), ack(999_999)], 5, "w1", T0)
    for task in (one, two):
        stored = await store.get_task("q", task.id)
        assert stored is not None
        assert stored.state is State.RUNNING
    remaining = await claim(store, 5)
    assert [data(t) for t in remaining] == [3]


async def test_an_ack_for_a_task_never_delivered_is_a_conflict(store: Store) -> None:
    await setup(store)
    (task,) = await store.enqueue("q", [new(1)], T0)
    with pytest.raises(Conflict) as caught:
        await store.poll("q", KEEP, [ack(task)], 1, "w1", T0)
    assert caught.value.details["ack"] == 0
    stored = await store.get_task("q", task.id)
    assert stored is not None
    assert stored.state is State.READY


async def test_fencing_ignores_an_ack_from_an_expired_delivery(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    (first,) = await claim(store)
    await store.expire({"q": KEEP}, T0 + KEEP.timeout)
    (second,) = await claim(store, now=T0 + KEEP.timeout + 1)
    assert second.id == first.id
    assert second.attempts == 2
    stale = await store.poll("q", KEEP, [ack(first, "failed", attempt=1)], 0, "w1", T0 + 1001)
    assert stale.changes == []
    stored = await store.get_task("q", first.id)
    assert stored is not None
    assert stored.state is State.RUNNING
    await store.poll("q", KEEP, [ack(second, attempt=2)], 0, "w1", T0 + 1002)
    stored = await store.get_task("q", first.id)
    assert stored is not None
    assert stored.state is State.DONE
    with pytest.raises(Conflict):
        await store.poll("q", KEEP, [ack(first, attempt=3)], 0, "w1", T0 + 1003)


async def test_a_heartbeat_extends_the_lease(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store)
    beat = await store.poll("q", KEEP, [ack(task, "in progress")], 0, "w1", T0 + 900)
    assert beat.changes == []
    stored = await store.get_task("q", task.id)
    assert stored is not None
    assert stored.lease_until == T0 + 900 + KEEP.timeout
    assert await store.expire({"q": KEEP}, T0 + KEEP.timeout) == []
    changes = await store.expire({"q": KEEP}, T0 + 900 + KEEP.timeout)
    assert [c.task.state for c in changes] == [State.READY]


async def test_an_expired_lease_requeues_then_fails_when_attempts_are_spent(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(1)], T0)
    now = T0
    for attempt in range(1, KEEP.max_attempts + 1):
        (task,) = await claim(store, now=now)
        assert task.attempts == attempt
        now += KEEP.timeout
        (change,) = await store.expire({"q": KEEP}, now)
        assert change.old is State.RUNNING
    assert change.task.state is State.FAILED
    assert change.task.error is not None
    assert "lease expired" in change.task.error
    assert await claim(store, now=now) == []


async def test_failed_with_retry_backs_off_then_fails_for_good(store: Store) -> None:
    options = QueueOptions(persistent=True, max_attempts=2, retry_delay=100, timeout=1000)
    await setup(store, options)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store, 1, options)
    polled = await store.poll(
        "q", options, [ack(task, "failed", error="e1", retry=True)], 1, "w1", T0
    )
    assert polled.delivered == []
    stored = await store.get_task("q", task.id)
    assert stored is not None
    assert stored.state is State.SCHEDULED
    assert stored.run_at == T0 + 100
    assert stored.error == "e1"
    await store.expire({"q": options}, T0 + 100)
    (task,) = await claim(store, 1, options, now=T0 + 100)
    await store.poll("q", options, [ack(task, "failed", error="e2", retry=True)], 0, "w1", T0 + 101)
    stored = await store.get_task("q", task.id)
    assert stored is not None
    assert stored.state is State.FAILED
    assert stored.error == "e2"


async def test_failed_follows_the_queue_retry_option_by_default(store: Store) -> None:
    options = QueueOptions(persistent=True, retry_failed=True, retry_delay=0)
    await setup(store, options)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store, 1, options)
    polled = await store.poll("q", options, [ack(task, "failed")], 1, "w1", T0)
    assert [t.attempts for t in polled.delivered] == [2]


async def test_status_changes_follow_the_contract(store: Store) -> None:
    await setup(store)
    a, b = await store.enqueue("q", [new("a"), new("b")], T0)
    change = await store.set_status("q", a.id, "paused", T0 + 1)
    assert change is not None
    assert change.task.state is State.PAUSED
    assert await store.set_status("q", a.id, "paused", T0 + 2) is None
    assert [data(t) for t in await claim(store, 5)] == ["b"]
    with pytest.raises(IllegalTransition):
        await store.set_status("q", b.id, "paused", T0)  # in progress
    change = await store.set_status("q", a.id, "queued", T0 + 3)
    assert change is not None
    assert change.task.state is State.READY
    change = await store.set_status("q", a.id, "cancelled", T0 + 4)
    assert change is not None
    assert change.task.state is State.CANCELLED
    with pytest.raises(IllegalTransition):
        await store.set_status("q", a.id, "paused", T0)
    change = await store.set_status("q", a.id, "queued", T0 + 5)  # retry a cancelled task
    assert change is not None
    assert change.task.state is State.READY
    with pytest.raises(TaskNotFound):
        await store.set_status("q", 999_999, "paused", T0)


async def test_a_retried_failed_task_gets_fresh_attempts_but_keeps_its_count(store: Store) -> None:
    options = QueueOptions(persistent=True, max_attempts=1)
    await setup(store, options)
    await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store, 1, options)
    await store.poll("q", options, [ack(task, "failed", error="x")], 0, "w1", T0)
    with pytest.raises(IllegalTransition):
        await store.set_status("q", task.id, "paused", T0)
    await store.set_status("q", task.id, "queued", T0 + 1)
    (again,) = await claim(store, 1, options)
    assert again.attempts == 2
    polled = await store.poll("q", options, [ack(task, "done", attempt=1)], 0, "w1", T0 + 2)
    assert polled.changes == []  # the first delivery's ack cannot settle the second
    await store.expire({"q": options}, T0 + options.timeout + 10)
    stored = await store.get_task("q", task.id)
    assert stored is not None
    assert stored.state is State.FAILED


async def test_list_count_and_delete(store: Store) -> None:
    await setup(store)
    await setup(store, name="empty")
    created = await store.enqueue("q", [new(i) for i in range(5)], T0)
    await claim(store, 2)
    running = await store.list_tasks("q", TaskFilter(states=(State.RUNNING,)), 10, 0)
    assert [t.id for t in running] == [t.id for t in created[:2]]
    page = await store.list_tasks("q", EVERY_TASK, 2, created[1].id)
    assert [t.id for t in page] == [t.id for t in created[2:4]]
    counts = await store.counts()
    assert counts["q"] == {State.RUNNING: 2, State.READY: 3}
    assert counts["empty"] == {}
    assert await store.delete_task("q", created[0].id)
    assert not await store.delete_task("q", created[0].id)
    assert not await store.delete_task("empty", created[1].id)
    assert await store.get_task("q", created[0].id) is None
    assert await store.get_task("empty", created[1].id) is None


async def test_ids_are_never_reused(store: Store) -> None:
    await setup(store, DROP)
    (first,) = await store.enqueue("q", [new(1)], T0)
    (task,) = await claim(store, 1, DROP)
    await store.poll("q", DROP, [ack(task)], 0, "w1", T0)
    (second,) = await store.enqueue("q", [new(2)], T0)
    assert second.id > first.id


async def test_a_claim_at_depth_still_finds_the_best_task(store: Store) -> None:
    await setup(store)
    await store.enqueue("q", [new(i) for i in range(5000)], T0)
    (urgent,) = await store.enqueue("q", [new("urgent", priority=1)], T0)
    (task,) = await claim(store)
    assert task.id == urgent.id


@pytest.mark.parametrize("kind", DURABLE_KINDS)
async def test_durable_across_reopen(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    first = open_store(url)
    await first.open()
    await first.save_queue("q", DROP)
    created = await first.enqueue("q", [new(1), new(2)], T0)
    (task,) = (await first.poll("q", DROP, [], 1, "w1", T0)).delivered
    await first.poll("q", DROP, [ack(task)], 0, "w1", T0)
    await first.close()
    second = open_store(url)
    await second.open()
    try:
        assert await second.load_queues() == {"q": DROP}
        remaining = await second.list_tasks("q", EVERY_TASK, 10, 0)
        assert [t.id for t in remaining] == [created[1].id]
        (newer,) = await second.enqueue("q", [new(3)], T0)
        assert newer.id > created[1].id
        # The finished, deleted task's id is remembered as issued: a late ack is a no-op.
        assert (await second.poll("q", DROP, [ack(task)], 0, "w1", T0)).changes == []
    finally:
        await second.close()


def unwatched(store: Store, watched: bool) -> None:
    """With ``watched`` False, tell the store that nobody needs finished tasks (Store.watch):
    it may then leave them out of the changes it reports, and must do all else the same."""
    if not watched:
        store.watch = lambda: False


def reported(changes: list[tuple[int, State]], watched: bool) -> list[tuple[int, State]]:
    """The changes a store must report: all of them; unwatched, it may omit the "done"s,
    so only the others are compared."""
    return [c for c in changes if watched or c[1] is not State.DONE]


WATCHED = pytest.mark.parametrize("watched", [True, False], ids=["watched", "unwatched"])


@WATCHED
@pytest.mark.parametrize("options", [KEEP, DROP], ids=["history", "no-history"])
async def test_many_acks_in_one_poll(store: Store, options: QueueOptions, watched: bool) -> None:
    unwatched(store, watched)
    await setup(store, options)
    await store.enqueue("q", [new(i) for i in range(6)], T0)
    tasks = await claim(store, 6, options)
    results = [msgspec.Raw(msgspec.json.encode({"r": t.id})) for t in tasks]
    acks = [
        ack(tasks[0], result=results[0]),
        ack(tasks[1], result=results[1], attempt=1),
        ack(tasks[2], "failed", error="x"),
        ack(tasks[3], attempt=2),  # a delivery that never was: refused, nothing changes
        ack(tasks[4]),
        ack(tasks[5], "in progress"),
    ]
    with pytest.raises(Conflict) as caught:
        await store.poll("q", options, acks, 0, "w1", T0 + 1)
    assert caught.value.details["ack"] == 3
    for task in tasks:
        stored = await store.get_task("q", task.id)
        assert stored is not None
        assert stored.state is State.RUNNING
    del acks[3]
    polled = await store.poll("q", options, acks, 0, "w1", T0 + 2)
    finished = [
        (tasks[0].id, State.DONE),
        (tasks[1].id, State.DONE),
        (tasks[2].id, State.FAILED),
        (tasks[4].id, State.DONE),
    ]
    changes = [(c.task.id, c.task.state) for c in polled.changes]
    assert reported(changes, watched) == reported(finished, watched)
    if watched:
        assert polled.changes[0].task.result is not None
        assert bytes(polled.changes[0].task.result) == bytes(results[0])
    for task_id, state in finished:
        stored = await store.get_task("q", task_id)
        if options.persistent:
            assert stored is not None
            assert stored.state == state
        else:
            assert stored is None
    if options.persistent:
        kept = await store.get_task("q", tasks[0].id)
        assert kept is not None
        assert kept.result is not None
        assert bytes(kept.result) == bytes(results[0])
    running = await store.get_task("q", tasks[5].id)
    assert running is not None
    assert running.lease_until == T0 + 2 + options.timeout
    # The same acks again: nothing changes, nothing fails.
    assert (await store.poll("q", options, acks, 0, "w1", T0 + 3)).changes == []


@WATCHED
@pytest.mark.parametrize("options", [KEEP, DROP], ids=["history", "no-history"])
async def test_concurrent_polls_ack_and_claim_as_if_one_after_another(
    store: Store, options: QueueOptions, watched: bool
) -> None:
    # Polls sent together may be served together (SQLite makes their "done"s and claims in
    # one statement each): every outcome must still be one that some order of them gives.
    unwatched(store, watched)
    await setup(store, options)
    await store.enqueue("q", [new(n, priority=n % 3) for n in range(12)], T0)
    first = await claim(store, limit=4, options=options)
    never_delivered = (await store.enqueue("q", [new("late")], T0))[0]
    polls = [
        store.poll("q", options, [ack(first[0])], 2, None, T0 + 1),
        store.poll("q", options, [ack(first[0])], 2, None, T0 + 1),  # the same ack again
        store.poll("q", options, [ack(never_delivered)], 3, None, T0 + 1),  # refused
        store.poll("q", options, [ack(first[1], "failed", error="x")], 1, "w1", T0 + 1),
        store.poll("q", options, [ack(first[2])], 0, None, T0 + 1),
        store.poll("q", options, [ack(first[3])], 3, "w1", T0 + 1),
    ]
    results = await asyncio.gather(*polls, return_exceptions=True)
    assert isinstance(results[2], Conflict)
    answered = [r for r in results if not isinstance(r, BaseException)]
    delivered = [task for result in answered for task in result.delivered]
    assert [len(r.delivered) for r in answered] == [2, 2, 1, 0, 3]
    assert len({task.id for task in delivered}) == 8  # nobody shares a task
    changes = [(c.task.id, c.task.state) for result in answered for c in result.changes]
    acked = [(t.id, State.FAILED if t is first[1] else State.DONE) for t in first]
    assert sorted(reported(changes, watched)) == sorted(reported(acked, watched))  # once each
    for task_id, state in acked:  # and is stored (or gone, in a queue without history)
        stored = await store.get_task("q", task_id)
        assert (stored and stored.state) is (state if options.persistent else None)
    # What was left and what was taken agree with the priorities: nothing taken ranks
    # below something left.
    left = await claim(store, limit=20, options=options, now=T0 + 2)
    worst_taken = max((-t.priority, t.id) for t in delivered)
    assert left
    assert all((-t.priority, t.id) > worst_taken for t in left)
    if options.persistent:
        record = await store.get_task("q", first[0].id)
        assert record is not None
        assert record.status == "done"


# -- ownership: a named worker acks only its own deliveries ------------------------------------


async def claim_as(
    store: Store, worker: str | None, limit: int, options: QueueOptions, now: int = T0
) -> list[Task]:
    return (await store.poll("q", options, [], limit, worker, now)).delivered


@WATCHED
@pytest.mark.parametrize("options", [KEEP, DROP], ids=["history", "no-history"])
@pytest.mark.parametrize("status", ["done", "failed", "in progress"])
async def test_a_named_worker_cannot_ack_another_workers_delivery(
    store: Store, options: QueueOptions, watched: bool, status: str
) -> None:
    unwatched(store, watched)
    await setup(store, options)
    await store.enqueue("q", [new(1), new(2)], T0)
    (theirs,) = await claim_as(store, "alice", 1, options)
    (mine,) = await claim_as(store, "bob", 1, options)
    # Alone, and after an ack of bob's own in the same poll: refused, and nothing changes.
    for acks, index in (([ack(theirs, status)], 0), ([ack(mine), ack(theirs, status)], 1)):
        with pytest.raises(Conflict) as caught:
            await store.poll("q", options, acks, 1, "bob", T0 + 1)
        assert caught.value.details == {"_id": str(theirs.id), "ack": index}
        for task in (theirs, mine):
            assert await store.get_task("q", task.id) == task
    # The owner may; so may a poll that gives no name (the original protocol).
    polled = await store.poll("q", options, [ack(theirs, status)], 0, "alice", T0 + 2)
    polled = await store.poll("q", options, [ack(mine, status)], 0, None, T0 + 2)
    if status == "in progress":
        for task in (theirs, mine):
            stored = await store.get_task("q", task.id)
            assert stored is not None
            assert stored.lease_until == T0 + 2 + options.timeout
    else:
        assert reported([(c.task.id, c.task.state) for c in polled.changes], watched) == (
            reported([(mine.id, State.DONE if status == "done" else State.FAILED)], watched)
        )


@pytest.mark.parametrize("options", [KEEP, DROP], ids=["history", "no-history"])
async def test_a_delivery_leased_without_a_name_is_anyones(
    store: Store, options: QueueOptions
) -> None:
    await setup(store, options)
    await store.enqueue("q", [new(1), new(2)], T0)
    first, second = await claim_as(store, None, 2, options)
    assert first.worker is None
    await store.poll("q", options, [ack(first), ack(second, attempt=1)], 0, "bob", T0 + 1)
    for task in (first, second):
        stored = await store.get_task("q", task.id)
        assert (stored and stored.state) is (State.DONE if options.persistent else None)


async def test_ownership_follows_the_current_delivery(store: Store) -> None:
    await setup(store, KEEP)
    (task,) = await store.enqueue("q", [new(1)], T0)
    await claim_as(store, "alice", 1, KEEP)
    await store.expire({"q": KEEP}, T0 + KEEP.timeout)
    await claim_as(store, "carol", 1, KEEP, T0 + KEEP.timeout + 1)
    # Alice's ack of her own, expired delivery stays a silent no-op...
    late = await store.poll("q", KEEP, [ack(task, attempt=1)], 0, "alice", T0 + 2000)
    assert late.changes == []
    # ...but without naming it, it names carol's delivery: refused.
    with pytest.raises(Conflict):
        await store.poll("q", KEEP, [ack(task, "failed")], 0, "alice", T0 + 2000)
    stored = await store.get_task("q", task.id)
    assert stored is not None
    assert stored.state is State.RUNNING
    assert stored.worker == "carol"
    done = await store.poll("q", KEEP, [ack(task, attempt=2)], 0, "carol", T0 + 2001)
    assert [(c.task.id, c.task.state) for c in done.changes] == [(task.id, State.DONE)]


@WATCHED
@pytest.mark.parametrize("options", [KEEP, DROP], ids=["history", "no-history"])
async def test_concurrent_acks_from_named_and_anonymous_polls(
    store: Store, options: QueueOptions, watched: bool
) -> None:
    # Served together (SQLite makes their "done"s in shared statements), each poll still
    # gets the answer the ownership rule gives it alone.
    unwatched(store, watched)
    await setup(store, options)
    await store.enqueue("q", [new(n) for n in range(5)], T0)
    alices = await claim_as(store, "alice", 3, options)
    bobs = await claim_as(store, "bob", 2, options)
    polls = [
        store.poll("q", options, [ack(alices[0])], 0, "alice", T0 + 1),
        store.poll("q", options, [ack(alices[1])], 1, "bob", T0 + 1),  # refused
        store.poll("q", options, [ack(bobs[0])], 0, "bob", T0 + 1),
        store.poll("q", options, [ack(alices[2])], 0, None, T0 + 1),
        store.poll("q", options, [ack(bobs[1])], 0, "alice", T0 + 1),  # refused
    ]
    results = await asyncio.gather(*polls, return_exceptions=True)
    assert [type(r) for r in results] == [PollResult, Conflict, PollResult, PollResult, Conflict]
    for task in (alices[1], bobs[1]):
        assert await store.get_task("q", task.id) == task
    for task in (alices[0], bobs[0], alices[2]):
        stored = await store.get_task("q", task.id)
        assert (stored and stored.state) is (State.DONE if options.persistent else None)


async def test_concurrent_polls_acking_the_same_tasks_in_opposite_orders(store: Store) -> None:
    # Each poll locks what it acks: in opposite orders, two PostgreSQL transactions would each
    # hold one task and wait for the other's (a deadlock that fails one with a 503) unless
    # the store takes its locks in one order.
    await setup(store, KEEP)
    for _ in range(20):
        first, second = await store.enqueue("q", [new(1), new(2)], T0)
        await store.poll("q", KEEP, [], 2, None, T0)
        forth = [ack(first, "failed", error="x"), ack(second, "failed", error="y")]
        back = [ack(second, "in progress"), ack(first, "in progress")]
        results = await asyncio.gather(
            store.poll("q", KEEP, forth, 0, None, T0 + 1),
            store.poll("q", KEEP, back, 0, None, T0 + 1),
            return_exceptions=True,
        )
        assert all(isinstance(r, PollResult) for r in results), results
        for task in (first, second):
            stored = await store.get_task("q", task.id)
            assert stored is not None
            assert stored.state is State.FAILED


async def test_odd_keys_and_data_are_stored_as_given(store: Store) -> None:
    # PostgreSQL sends a batch's columns as array literals: quoting must not touch them.
    await setup(store)
    keys = ['a"b', "c\\d", "{x,y}", "NULL", " spaced ", "", "é€", None]
    raw = [b'"\\u00e9 \\" \\\\ {,}"', b"[1, 2]", b'{"k": "NULL"}', b"null"]
    tasks = [
        NewTask(data=msgspec.Raw(raw[n % len(raw)]), key=key, priority=-n, delay_ms=n % 2)
        for n, key in enumerate(keys)
    ]
    made = await store.enqueue("q", tasks, T0)
    for n, (task, key) in enumerate(zip(made, keys, strict=True)):
        stored = await store.get_task("q", task.id)
        assert stored is not None
        assert stored.key == key
        assert bytes(stored.data) == raw[n % len(raw)]
        assert stored.priority == -n
        assert stored.state is (State.SCHEDULED if n % 2 else State.READY)
