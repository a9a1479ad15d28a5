"""key_rate over every store: a token bucket per task key, as ``rate`` has for the queue.

Time is passed in explicitly (``now``), so the buckets are tested without sleeping. The
PostgreSQL tests at the end run three stores on one schema, as three servers would.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import msgspec
import pytest

from katar.core.model import NewTask, QueueOptions, Rate, Task
from katar.store import Store
from katar.store.memory import MemoryStore
from katar.store.postgres import PostgresStore
from katar.store.postgres import store as postgres_store
from katar.store.sqlite import SQLiteStore
from tests.helpers.store import T0, ack, claim, new

BASE = QueueOptions(persistent=True, timeout=1000, max_attempts=3)


def limited(**options: object) -> QueueOptions:
    return msgspec.structs.replace(BASE, **options)


def keyed(data: object, key: str | None, priority: int = 0) -> NewTask:
    return msgspec.structs.replace(new(data, priority), key=key)


def values(tasks: list[Task]) -> list[object]:
    return [msgspec.json.decode(task.data) for task in tasks]


def by_key(tasks: list[Task]) -> dict[str | None, list[object]]:
    found: dict[str | None, list[object]] = {}
    for task in tasks:
        found.setdefault(task.key, []).append(msgspec.json.decode(task.data))
    return found


async def kept_buckets(store: Store, queue: str = "q") -> int:
    """How many key buckets the store keeps for the queue (its own inspection)."""
    if isinstance(store, MemoryStore):
        buckets = store._key_buckets.get(queue)
        return 0 if buckets is None else len(buckets)
    if isinstance(store, SQLiteStore):
        found = store._batches.key_buckets.get(store._queues.id_of(queue))
        return 0 if found is None else len(found)
    assert isinstance(store, PostgresStore)
    # Its prunes run beside the claims: those under way end first.
    await asyncio.gather(*list(store._key_buckets_pruning.values()))
    queue_id = await store._queue_id(queue)
    async with store._transaction(writes=False) as conn:
        cursor = await conn.execute(
            f"SELECT count(*) FROM {store._schema}.key_buckets WHERE queue_id = %s", (queue_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    count: int = row[0]
    return count


async def test_each_key_has_its_own_full_bucket_and_tasks_without_a_key_are_free(
    store: Store,
) -> None:
    options = limited(key_rate=Rate(limit=2, period=1000))
    await store.save_queue("q", options)
    tasks = [keyed(f"a{n}", "a") for n in range(6)] + [keyed(f"b{n}", "b") for n in range(6)]
    tasks += [keyed(f"none{n}", None) for n in range(3)]
    await store.enqueue("q", tasks, T0)
    first = by_key(await claim(store, 100, options=options, now=T0))
    # Each key's full bucket, in its own order; tasks without a key are not bound by it.
    assert first == {"a": ["a0", "a1"], "b": ["b0", "b1"], None: ["none0", "none1", "none2"]}
    result = await store.poll("q", options, [], 10, "w1", T0)
    assert result.delivered == []
    assert result.retry_at == T0 + 500  # a token a key every 500 ms
    assert result.held == "key_rate"  # counted in the metrics as a limited poll
    assert by_key(await claim(store, 100, options=options, now=T0 + 500)) == {
        "a": ["a2"],
        "b": ["b2"],
    }
    state = await store.limit_state("q", options, T0 + 500)
    assert state.keys_rate_limited == 2
    assert (await store.limit_state("q", options, T0 + 3000)).keys_rate_limited == 0


async def test_a_key_out_of_tokens_does_not_hold_back_the_others(store: Store) -> None:
    # The head of the queue is a long backlog of one key: the claim passes over it.
    options = limited(key_rate=Rate(limit=1, period=60_000))
    await store.save_queue("q", options)
    tasks = [keyed(n, "big", priority=1) for n in range(300)]
    tasks += [keyed(f"k{n}", f"k{n}") for n in range(5)]
    await store.enqueue("q", tasks, T0)
    assert values(await claim(store, 3, options=options, now=T0)) == [0, "k0", "k1"]
    assert values(await claim(store, 10, options=options, now=T0 + 1)) == ["k2", "k3", "k4"]
    result = await store.poll("q", options, [], 10, "w1", T0 + 2)
    assert result.delivered == []
    assert result.retry_at == T0 + 60_000  # "big"'s next token: the first of all


async def test_a_key_never_gets_more_than_twice_its_limit_in_any_period(store: Store) -> None:
    options = limited(key_rate=Rate(limit=3, period=1000))
    await store.save_queue("q", options)
    keys = ["a", "b", "c"]
    await store.enqueue("q", [keyed(n, keys[n % 3]) for n in range(300)], T0)
    moments: dict[str | None, list[int]] = {key: [] for key in keys}
    rng = random.Random(7)
    now = T0
    while now < T0 + 4000:  # polls at uneven moments, each taking all it may
        for task in await claim(store, rng.randint(1, 8), options=options, now=now):
            moments[task.key].append(now)
        now += rng.randint(1, 120)
    for key in keys:
        seen = moments[key]
        for start in seen:
            assert sum(1 for m in seen if start <= m < start + 1000) <= 6
        assert len(seen) <= 3 + 3 * 4  # the full bucket, then 3 a second
        assert len(seen) >= 3 + 3 * 3  # and it is spent: the limit is reached, not undercut


async def test_key_rate_with_rate_key_concurrency_and_fair(store: Store) -> None:
    options = limited(
        key_rate=Rate(limit=2, period=1000),
        rate=Rate(limit=5, period=1000),
        key_concurrency=1,
        fair=True,
    )
    await store.save_queue("q", options)
    tasks = [keyed(f"a{n}", "a") for n in range(20)] + [keyed(f"b{n}", "b") for n in range(3)]
    tasks += [keyed(f"c{n}", "c") for n in range(3)]
    await store.enqueue("q", tasks, T0)
    # key_concurrency 1: one of each key; fair: the keys take turns, "a"'s backlog first.
    first = await claim(store, 10, options=options, now=T0)
    assert values(first) == ["a0", "b0", "c0"]
    # Acked: a key's second token remains, its third is not there yet.
    result = await store.poll("q", options, [ack(t) for t in first], 10, "w1", T0)
    assert sorted(map(str, values(result.delivered))) == ["a1", "b1"]  # rate: 5 in all
    result = await store.poll("q", options, [ack(t) for t in result.delivered], 10, "w1", T0)
    assert result.delivered == []  # rate spent, "a" and "b" spent; "c" waits for the rate
    assert result.retry_at is not None
    later = await store.poll("q", options, [], 10, "w1", T0 + 1000)
    assert sorted(map(str, values(later.delivered))) == ["a2", "b2", "c1"]


async def test_buckets_of_keys_full_again_are_dropped(store: Store) -> None:
    # A key taken from at t is full by t + period: the store keeps no more than the keys
    # taken from within the last period (memory, SQLite) or period and a quarter
    # (PostgreSQL, docs/configuration.md), however many keys pass through. The waves are
    # 600 ms apart and a wave's buckets are full 500 ms after it: the last wave's are gone
    # or going (PostgreSQL drops a bucket full for an eighth of a period), so that this
    # wave's and the last one's remain at most.
    options = limited(key_rate=Rate(limit=2, period=1000))
    await store.save_queue("q", options)
    now = T0
    for wave in range(6):
        tasks = [keyed(n, f"w{wave}-k{n}") for n in range(300)]
        await store.enqueue("q", tasks, now)
        assert len(await claim(store, 300, options=options, now=now)) == 300
        assert await kept_buckets(store) <= 300 * 2
        now += 600
    await store.enqueue("q", [keyed("last", "last")], now + 5000)
    assert len(await claim(store, 1, options=options, now=now + 5000)) == 1
    assert await kept_buckets(store) == 1
    assert (await store.limit_state("q", options, now + 5000)).keys_rate_limited == 0


async def test_new_options_start_the_key_buckets_full(store: Store) -> None:
    options = limited(key_rate=Rate(limit=1, period=60_000))
    await store.save_queue("q", options)
    await store.enqueue("q", [keyed(n, "a") for n in range(5)], T0)
    assert len(await claim(store, 5, options=options, now=T0)) == 1
    assert await claim(store, 5, options=options, now=T0) == []
    options = limited(key_rate=Rate(limit=1, period=30_000))
    await store.save_queue("q", options)
    assert len(await claim(store, 5, options=options, now=T0)) == 1


async def test_a_queue_without_key_rate_reports_no_key_state(store: Store) -> None:
    options = limited(rate=Rate(limit=2, period=1000))
    await store.save_queue("q", options)
    assert (await store.limit_state("q", options, T0)).keys_rate_limited is None


# -- several servers on one PostgreSQL ---------------------------------------------------------


async def test_key_rate_holds_across_servers(shared_stores: list[Store]) -> None:
    stores = shared_stores
    options = limited(key_rate=Rate(limit=3, period=1000))
    await stores[0].save_queue("q", options)
    keys = [f"k{n}" for n in range(4)]
    await stores[0].enqueue("q", [keyed(n, keys[n % 4]) for n in range(400)], T0)
    moments: dict[str | None, list[int]] = {key: [] for key in keys}
    for now in range(T0, T0 + 3000, 100):
        # Every server polls at once, several polls each, all at the same moment.
        results = await asyncio.gather(
            *(s.poll("q", options, [], 4, f"w{i}", now) for i, s in enumerate(stores * 3))
        )
        for result in results:
            for task in result.delivered:
                moments[task.key].append(now)
    for key in keys:
        seen = moments[key]
        assert seen[:3] == [T0] * 3  # the full bucket, at once
        for start in seen:
            assert sum(1 for m in seen if start <= m < start + 1000) <= 6
        assert len(seen) <= 3 + 3 * 3  # the full bucket, then 3 a second over every server
    assert await kept_buckets(stores[1]) == 4
    counts = Counter(t for seen in moments.values() for t in seen)
    assert counts[T0] == 12


async def test_a_bucket_in_use_keeps_its_row_and_goes_once_full_for_an_eighth_of_a_period(
    shared_stores: list[Store],
) -> None:
    # PostgreSQL keeps a row until its bucket has been full for an eighth of a period, so
    # that a key in steady use updates its row in place; each server prunes every eighth of
    # a period, beside its claims.
    stores = shared_stores
    options = limited(key_rate=Rate(limit=2, period=1000))
    await stores[0].save_queue("q", options)
    await stores[0].enqueue("q", [keyed(n, "a") for n in range(6)], T0)
    assert len(await claim(stores[0], 1, options=options, now=T0)) == 1  # full at T0 + 500
    # Full again since T0 + 500: the full bucket, exactly, whether its row is kept or gone.
    assert len(await claim(stores[0], 5, options=options, now=T0 + 900)) == 2
    assert await claim(stores[1], 5, options=options, now=T0 + 900) == []
    assert await kept_buckets(stores[0]) == 1  # full at T0 + 1900
    others = [keyed("b", "b", priority=1), keyed("c", "c", priority=1)]
    await stores[0].enqueue("q", others, T0 + 2000)
    # Another server's claim at T0 + 2000 prunes what was full by T0 + 1875: "a" stays.
    assert values(await claim(stores[1], 1, options=options, now=T0 + 2000)) == ["b"]
    assert await kept_buckets(stores[0]) == 2
    # And one at T0 + 2100 what was full by T0 + 1975: "a" goes, "b" stays; "a" gets its
    # full bucket again.
    taken = await claim(stores[2], 5, options=options, now=T0 + 2100)
    assert values(taken) == ["c", 3, 4]
    assert await kept_buckets(stores[0]) == 3  # "a" again, "b" and "c"


async def test_a_bucket_is_gone_a_period_and_a_quarter_after_its_last_take(
    shared_stores: list[Store],
) -> None:
    store, other = shared_stores[0], shared_stores[1]
    options = limited(key_rate=Rate(limit=1, period=1000))
    await store.save_queue("q", options)
    await store.enqueue("q", [keyed("a", "a"), keyed("b", "b")], T0)
    assert values(await claim(store, 1, options=options, now=T0)) == ["a"]  # full at T0 + 1000
    # The prune at T0 + 1050 drops what was full by T0 + 925: "a" stays.
    assert values(await claim(store, 1, options=options, now=T0 + 1050)) == ["b"]
    assert await kept_buckets(store) == 2
    # The next, due an eighth of a period later, drops "a" (full by T0 + 1055).
    assert await claim(store, 1, options=options, now=T0 + 1175) == []
    assert await kept_buckets(store) == 1
    # A queue no longer claimed from is pruned at housekeeping (expire), by any server:
    # "b", taken at T0 + 1050, is full at T0 + 2050 and gone by T0 + 2175.
    await other.load_queues()
    await other.expire({"q": options}, T0 + 2170)
    assert await kept_buckets(store) == 1
    await other.expire({"q": options}, T0 + 2300)
    assert await kept_buckets(store) == 0
    assert (await store.limit_state("q", options, T0 + 2300)).keys_rate_limited == 0


async def test_more_stale_buckets_than_a_batch_all_go(shared_stores: list[Store]) -> None:
    # A prune drops a batch per transaction, and goes on while a batch was full.
    store = shared_stores[0]
    batch = postgres_store._KEY_BUCKETS_PRUNE_BATCH
    options = limited(key_rate=Rate(limit=1, period=1000))
    await store.save_queue("q", options)
    await store.enqueue("q", [keyed(n, f"k{n}") for n in range(2 * batch + 100)], T0)
    assert len(await claim(store, 2 * batch + 100, options=options, now=T0)) == 2 * batch + 100
    assert await kept_buckets(store) == 2 * batch + 100
    await store.enqueue("q", [keyed("x", "x")], T0 + 5000)
    assert len(await claim(store, 1, options=options, now=T0 + 5000)) == 1
    assert await kept_buckets(store) == 1


async def test_a_server_reads_the_buckets_again_once_another_wrote_them(
    shared_stores: list[Store],
) -> None:
    # A server that made the last claim knows the buckets without reading them; a claim of
    # another server, or a change of options, makes it read them again.
    a, b = shared_stores[0], shared_stores[1]
    options = limited(key_rate=Rate(limit=4, period=60_000))
    await a.save_queue("q", options)
    await a.enqueue("q", [keyed(n, "k") for n in range(20)], T0)
    assert values(await claim(a, 1, options=options, now=T0)) == [0]
    assert values(await claim(a, 1, options=options, now=T0 + 1)) == [1]
    assert values(await claim(a, 1, options=options, now=T0 + 2)) == [2]  # from what it knows
    await b.enqueue("q", [keyed("other", "other", priority=1)], T0 + 3)
    assert values(await claim(b, 5, options=options, now=T0 + 3)) == ["other", 3]
    assert await claim(a, 5, options=options, now=T0 + 4) == []  # "k" is spent: b took one
    await b.save_queue("q", options)  # buckets full again, as a change of options makes them
    assert values(await claim(a, 5, options=options, now=T0 + 5)) == [4, 5, 6, 7]
    assert await claim(a, 5, options=options, now=T0 + 6) == []
    assert await claim(b, 5, options=options, now=T0 + 7) == []


async def test_more_keys_in_use_than_a_server_keeps_are_read_at_each_claim(
    shared_stores: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_store, "_KEY_CACHE_MAX", 3)
    store = shared_stores[0]
    assert isinstance(store, PostgresStore)
    options = limited(key_rate=Rate(limit=2, period=60_000))
    await store.save_queue("q", options)
    await store.enqueue("q", [keyed(f"{k}{n}", k) for n in range(3) for k in "abcde"], T0)
    assert values(await claim(store, 5, options=options, now=T0)) == ["a0", "b0", "c0", "d0", "e0"]
    # Five buckets kept, more than the server keeps a copy of: it reads them, as another's.
    assert values(await claim(store, 5, options=options, now=T0 + 1)) == [
        "a1",
        "b1",
        "c1",
        "d1",
        "e1",
    ]
    assert not store._key_caches[await store._queue_id("q")].complete
    assert await claim(store, 5, options=options, now=T0 + 2) == []
    assert await kept_buckets(store) == 5


async def test_keys_and_workers_with_any_characters(store: Store) -> None:
    # PostgreSQL sends a key_rate claim's keys, buckets and workers as array literals.
    options = limited(key_rate=Rate(limit=1, period=60_000))
    await store.save_queue("q", options)
    keys = ['a"b', "c\\d", "{x,y}", "NULL", " spaced ", "", "é€", "x,y"]
    await store.enqueue(
        "q", [keyed(f"{n}-{m}", key) for m in range(2) for n, key in enumerate(keys)], T0
    )
    worker = 'w "1" {a,b} \\ NULL'
    result = await store.poll("q", options, [], 20, worker, T0)
    assert sorted(str(task.key) for task in result.delivered) == sorted(keys)
    assert {task.worker for task in result.delivered} == {worker}
    again = await store.poll("q", options, [], 20, worker, T0 + 1)
    assert again.delivered == []  # every key's bucket spent, each passed over by name
    assert again.held == "key_rate"
    assert (await store.limit_state("q", options, T0 + 1)).keys_rate_limited == len(keys)
