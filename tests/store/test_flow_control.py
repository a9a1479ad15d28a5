"""Flow control over every store: pause, concurrency, key_concurrency, rate.

Time is passed in explicitly (``now``), so rate limits are tested without sleeping. The
PostgreSQL tests at the end run several stores on one schema, as several servers would.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from katar.core.model import QueueOptions, Rate, State, Task
from katar.store import Store
from tests.helpers.store import T0, ack, claim, new

BASE = QueueOptions(persistent=True, timeout=1000, max_attempts=3)


def limited(**options: object) -> QueueOptions:
    return msgspec.structs.replace(BASE, **options)


def keyed(data: object, key: str | None) -> object:
    return msgspec.structs.replace(new(data), key=key)


def values(tasks: list[Task]) -> list[object]:
    return [msgspec.json.decode(task.data) for task in tasks]


async def running(store: Store, queue: str = "q") -> int:
    return (await store.counts()).get(queue, {}).get(State.RUNNING, 0)


async def test_a_paused_queue_delivers_nothing_but_takes_acks_and_enqueues(store: Store) -> None:
    await store.save_queue("q", BASE)
    await store.enqueue("q", [new(1), new(2)], T0)
    (first,) = await claim(store, options=BASE)
    paused = limited(paused=True)
    await store.save_queue("q", paused)
    await store.enqueue("q", [new(3)], T0)
    result = await store.poll("q", paused, [ack(first)], 5, "w1", T0)
    assert result.delivered == []
    assert (await store.get_task("q", first.id)).state is State.DONE  # type: ignore[union-attr]
    await store.save_queue("q", BASE)
    assert values(await claim(store, 5, options=BASE)) == [2, 3]


async def test_concurrency_caps_the_tasks_in_progress(store: Store) -> None:
    options = limited(concurrency=3)
    await store.save_queue("q", options)
    await store.enqueue("q", [new(n) for n in range(10)], T0)
    taken = await claim(store, 10, options=options)
    assert values(taken) == [0, 1, 2]
    assert await claim(store, 10, options=options) == []
    result = await store.poll("q", options, [ack(taken[0])], 10, "w1", T0)
    assert values(result.delivered) == [3]
    assert await running(store) == 3


async def test_concurrent_polls_of_one_group_respect_the_limit(store: Store) -> None:
    # Polls that arrive together share one transaction on SQLite (group commit): the limit
    # holds inside the group as between groups.
    options = limited(concurrency=4)
    await store.save_queue("q", options)
    await store.enqueue("q", [new(n) for n in range(50)], T0)
    results = await asyncio.gather(
        *(store.poll("q", options, [], 3, f"w{i}", T0) for i in range(12))
    )
    assert sum(len(r.delivered) for r in results) == 4
    assert await running(store) == 4


async def test_key_concurrency_one_runs_a_key_in_order_without_slowing_the_others(
    store: Store,
) -> None:
    options = limited(key_concurrency=1)
    await store.save_queue("q", options)
    tasks = [keyed(f"a{n}", "a") for n in range(30)] + [keyed("b0", "b"), keyed("b1", "b")]
    await store.enqueue("q", [*tasks, keyed("free", None)], T0)  # type: ignore[list-item]
    first = await claim(store, 10, options=options)
    # One of each key, at the head of each key's line; a task without a key is not held.
    assert values(first) == ["a0", "b0", "free"]
    assert await claim(store, 10, options=options) == []
    a0 = next(t for t in first if t.key == "a")
    result = await store.poll("q", options, [ack(a0)], 10, "w1", T0)
    assert values(result.delivered) == ["a1"]
    state = await store.limit_state("q", options, T0)
    assert state.keys_at_limit == 2


async def test_key_concurrency_counts_per_key_and_with_concurrency(store: Store) -> None:
    options = limited(key_concurrency=2, concurrency=3)
    await store.save_queue("q", options)
    batch = [keyed(f"{k}{n}", k) for k in "xyz" for n in range(3)]
    await store.enqueue("q", batch, T0)  # type: ignore[arg-type]
    assert values(await claim(store, 10, options=options)) == ["x0", "x1", "y0"]
    assert await claim(store, 10, options=options) == []


async def test_key_concurrency_passes_over_many_keys_held(store: Store) -> None:
    """A claim that meets hundreds of keys at their limit at the head of the line (more
    than its first looks read) passes over them in order and takes the free keys behind;
    a key freed is taken again first; another queue's keys in progress count for nothing."""
    held = 300
    options = limited(key_concurrency=1, max_batch=1000)
    await store.save_queue("q", options)
    await store.save_queue("other", options)
    await store.enqueue("other", [keyed(n, f"k{n}") for n in range(held)], T0)  # type: ignore[misc]
    assert len(await claim(store, held, options=options, queue="other")) == held
    firsts = [keyed(f"k{n}-0", f"k{n}") for n in range(held)]
    seconds = [keyed(f"k{n}-1", f"k{n}") for n in range(held)]
    free = [keyed(f"f{n}", f"f{n}") for n in range(5)]
    await store.enqueue("q", [*firsts, *seconds, *free, keyed("none", None)], T0)  # type: ignore[list-item]
    # The same keys in progress on "other" hold nothing here.
    taken = await claim(store, held, options=options)
    assert values(taken) == [f"k{n}-0" for n in range(held)]
    # Every key of the next 300 tasks is held: the claim passes over them.
    assert values(await claim(store, 3, options=options)) == ["f0", "f1", "f2"]
    state = await store.limit_state("q", options, T0)
    assert state.keys_at_limit == held + 3
    freed = await store.poll("q", options, [ack(taken[7])], 3, "w1", T0)
    assert values(freed.delivered) == ["k7-1", "f3", "f4"]
    assert values(await claim(store, 10, options=options)) == ["none"]
    assert await claim(store, 10, options=options) == []


async def test_key_concurrency_above_one_counts_each_key_met(store: Store) -> None:
    options = limited(key_concurrency=2, max_batch=1000)
    await store.save_queue("q", options)
    # 200 keys with one task in progress each, their next two tasks behind them.
    await store.enqueue("q", [keyed(f"a{n}", f"k{n}") for n in range(200)], T0)  # type: ignore[misc]
    assert len(await claim(store, 200, options=options)) == 200
    later = [keyed(f"{step}{n}", f"k{n}") for step in "bc" for n in range(200)]
    await store.enqueue("q", later, T0)  # type: ignore[arg-type]
    # Room for one more of each key: the b's, never a c (that would be a key's third).
    assert values(await claim(store, 1000, options=options)) == [f"b{n}" for n in range(200)]
    assert await claim(store, 10, options=options) == []
    assert (await store.limit_state("q", options, T0)).keys_at_limit == 200


async def test_a_rate_limit_delivers_a_full_bucket_then_what_refills(store: Store) -> None:
    options = limited(rate=Rate(limit=3, period=1000))
    await store.save_queue("q", options)
    await store.enqueue("q", [new(n) for n in range(20)], T0)
    assert len(await claim(store, 10, options=options, now=T0)) == 3
    result = await store.poll("q", options, [], 10, "w1", T0)
    assert result.delivered == []
    assert result.retry_at == T0 + 334  # a token drips in every 333.3 ms
    assert len(await claim(store, 10, options=options, now=T0 + 334)) == 1
    # Over any one period: at most 2 x limit (a full bucket, then what refills meanwhile).
    assert len(await claim(store, 10, options=options, now=T0 + 1000)) == 2
    assert len(await claim(store, 10, options=options, now=T0 + 5000)) == 3
    state = await store.limit_state("q", options, T0 + 5000)
    assert state.tokens == pytest.approx(0.0)


async def test_a_rate_limit_caps_a_burst_to_twice_its_limit_in_any_period(store: Store) -> None:
    options = limited(rate=Rate(limit=5, period=1000))
    await store.save_queue("q", options)
    await store.enqueue("q", [new(n) for n in range(100)], T0)
    moments: list[int] = []
    for now in range(T0, T0 + 3000, 50):  # a worker polling every 50 ms, taking all it may
        moments += [now] * len(await claim(store, 10, options=options, now=now))
    for start in moments:
        assert sum(1 for m in moments if start <= m < start + 1000) <= 10
    assert len(moments) <= 5 + 5 * 3  # the full bucket, then 5 a second


async def test_a_queue_without_limits_reports_no_state(store: Store) -> None:
    await store.save_queue("q", BASE)
    state = await store.limit_state("q", BASE, T0)
    assert state.tokens is None
    assert state.keys_at_limit is None


# -- several servers on one PostgreSQL ---------------------------------------------------------


async def test_concurrency_holds_across_servers(shared_stores: list[Store]) -> None:
    stores = shared_stores
    options = limited(concurrency=3)
    await stores[0].save_queue("q", options)
    await stores[0].enqueue("q", [new(n) for n in range(60)], T0)
    held: list[Task] = []
    for _round in range(8):
        # Every server polls at once, each with several polls, acking what it held.
        acks = [ack(t) for t in held]  # from an anonymous poll: it may ack any delivery
        results = await asyncio.gather(
            *(
                s.poll("q", options, acks if i == j == 0 else [], 2, None, T0)
                for i, s in enumerate(stores)
                for j in range(3)
            )
        )
        held = [t for r in results for t in r.delivered]
        assert len(held) <= 3
        assert await running(stores[0]) <= 3
    assert held


async def test_a_rate_limit_holds_across_servers(shared_stores: list[Store]) -> None:
    stores = shared_stores
    options = limited(rate=Rate(limit=4, period=1000))
    await stores[0].save_queue("q", options)
    await stores[0].enqueue("q", [new(n) for n in range(60)], T0)
    results = await asyncio.gather(
        *(s.poll("q", options, [], 3, f"w{i}", T0) for i, s in enumerate(stores * 3))
    )
    assert sum(len(r.delivered) for r in results) == 4
    later = await asyncio.gather(
        *(s.poll("q", options, [], 3, f"w{i}", T0 + 500) for i, s in enumerate(stores))
    )
    assert sum(len(r.delivered) for r in later) == 2


async def test_key_concurrency_holds_across_servers(shared_stores: list[Store]) -> None:
    stores = shared_stores
    options = limited(key_concurrency=1)
    await stores[0].save_queue("q", options)
    batch = [keyed(n, f"k{n % 4}") for n in range(40)]
    await stores[0].enqueue("q", batch, T0)  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(s.poll("q", options, [], 2, f"w{i}", T0) for i, s in enumerate(stores * 2))
    )
    taken = [t for r in results for t in r.delivered]
    assert sorted(t.key or "" for t in taken) == ["k0", "k1", "k2", "k3"]
    assert sorted(int(str(v)) for v in values(taken)) == [0, 1, 2, 3]  # each key's first


# -- fairness between keys ---------------------------------------------------------------------


async def _drain_order(store: Store, options: QueueOptions, count: int) -> list[object]:
    order: list[object] = []
    for _ in range(count):  # one task a poll, acked by the next: the keys' turns show
        order += values(await claim(store, 1, options=options))
    return order


async def test_fair_keys_take_turns_so_a_backlog_cannot_starve_another_key(
    store: Store,
) -> None:
    options = limited(fair=True)
    await store.save_queue("q", options)
    await store.enqueue("q", [keyed(f"a{n}", "a") for n in range(100)], T0)  # type: ignore[misc]
    assert values(await claim(store, 30, options=options)) == [f"a{n}" for n in range(30)]
    # b arrives behind a backlog of 70: its tasks start at the front and alternate with a's.
    await store.enqueue("q", [keyed(f"b{n}", "b") for n in range(10)], T0)  # type: ignore[misc]
    order = await _drain_order(store, options, 20)
    assert order == [x for n in range(30, 40) for x in (f"a{n}", f"b{n - 30}")]


async def test_fair_keeps_priority_first_and_groups_tasks_without_a_key(store: Store) -> None:
    options = limited(fair=True)
    await store.save_queue("q", options)
    batch = [keyed(f"a{n}", "a") for n in range(5)] + [keyed(f"n{n}", None) for n in range(3)]
    await store.enqueue("q", batch, T0)  # type: ignore[arg-type]
    urgent = msgspec.structs.replace(new("urgent", priority=5), key="a")
    await store.enqueue("q", [urgent], T0)
    order = await _drain_order(store, options, 9)
    assert order == ["urgent", "a0", "n0", "a1", "n1", "a2", "n2", "a3", "a4"]


async def test_a_queue_made_fair_gives_its_waiting_tasks_places(store: Store) -> None:
    await store.save_queue("q", BASE)
    batch = [keyed(f"a{n}", "a") for n in range(6)] + [keyed(f"b{n}", "b") for n in range(2)]
    await store.enqueue("q", batch, T0)  # type: ignore[arg-type]
    options = limited(fair=True)
    await store.save_queue("q", options)
    order = await _drain_order(store, options, 8)
    assert order == ["a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"]
    # And back: without fair, the plain order again.
    await store.enqueue("q", [keyed("c0", "c"), keyed("a6", "a")], T0)  # type: ignore[list-item]
    await store.save_queue("q", BASE)
    assert values(await claim(store, 5, options=BASE)) == ["c0", "a6"]


async def test_fair_with_key_concurrency_and_concurrency(store: Store) -> None:
    options = limited(fair=True, key_concurrency=1, concurrency=2)
    await store.save_queue("q", options)
    await store.enqueue("q", [keyed(f"a{n}", "a") for n in range(5)], T0)  # type: ignore[misc]
    await store.enqueue("q", [keyed(f"b{n}", "b") for n in range(5)], T0)  # type: ignore[misc]
    first = await claim(store, 5, options=options)
    assert values(first) == ["a0", "b0"]
    result = await store.poll("q", options, [ack(t) for t in first], 5, "w1", T0)
    assert values(result.delivered) == ["a1", "b1"]


async def test_new_options_start_a_rate_limit_with_a_full_bucket(store: Store) -> None:
    options = limited(rate=Rate(limit=2, period=1000))
    await store.save_queue("q", options)
    await store.enqueue("q", [new(n) for n in range(10)], T0)
    assert len(await claim(store, 10, options=options, now=T0)) == 2
    assert await claim(store, 10, options=options, now=T0) == []
    changed = limited(rate=Rate(limit=3, period=1000))  # any change of the options
    await store.save_queue("q", changed)
    assert len(await claim(store, 10, options=changed, now=T0)) == 3


async def test_a_retry_in_a_fair_queue_gets_a_place(store: Store) -> None:
    await store.save_queue("q", BASE)
    (old,) = await store.enqueue("q", [keyed("old", "a")], T0)  # type: ignore[list-item]
    await store.set_status("q", old.id, "cancelled", T0)
    options = limited(fair=True)
    await store.save_queue("q", options)  # made fair: the cancelled task waits for nothing
    await store.enqueue("q", [keyed(f"b{n}", "b") for n in range(3)], T0)  # type: ignore[misc]
    await store.set_status("q", old.id, "queued", T0 + 1)  # a retry: it needs a place
    order = await _drain_order(store, options, 4)
    assert sorted(map(str, order)) == ["b0", "b1", "b2", "old"]  # delivered, not stranded
    assert order[0] in ("b0", "old")
