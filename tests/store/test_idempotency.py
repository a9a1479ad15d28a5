"""Idempotency keys on enqueue, over every store (part of the conformance suite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from katar.core.idempotency import (
    KEY_TTL_MS,
    KeyReused,
    check_key,
    fresh_since,
    idempotency,
    pack_ids,
    unpack_ids,
)
from katar.core.model import EVERY_TASK
from katar.errors import QueueNotFound, ValidationError
from katar.store import Store, open_store
from tests.conftest import DURABLE_KINDS, store_url
from tests.helpers.store import KEEP, T0, new, setup


async def all_ids(store: Store, queue: str = "q") -> list[int]:
    return [task.id for task in await store.list_tasks(queue, EVERY_TASK, 1000, 0)]


async def test_a_repeat_creates_nothing_and_answers_the_first_tasks(store: Store) -> None:
    await setup(store)
    tasks = [new({"n": 1}, priority=5), new(2, delay_ms=500), new(3, paused=True)]
    first, created = await store.enqueue_once("q", tasks, T0, idempotency("k1", tasks))
    assert created
    again, created_again = await store.enqueue_once("q", tasks, T0 + 1000, idempotency("k1", tasks))
    assert not created_again
    assert again == first  # the records as first created: ids, times, states
    assert await all_ids(store) == [task.id for task in first]


async def test_a_key_with_another_request_is_refused_and_changes_nothing(store: Store) -> None:
    await setup(store)
    tasks = [new(1)]
    await store.enqueue_once("q", tasks, T0, idempotency("k", tasks))
    others = [new(2)], [new(1), new(1)], [new(1, priority=1)], [new(1, delay_ms=1)]
    # run_at is part of the request: a repeat that asks another time is another request.
    at = [[msgspec.structs.replace(new(1), run_at=when)] for when in (T0 + 5000, T0 - 1)]
    for other in (*others, *at):
        with pytest.raises(KeyReused) as refused:
            await store.enqueue_once("q", other, T0, idempotency("k", other))
        assert isinstance(refused.value, ValidationError)  # a 422
    assert len(await all_ids(store)) == 1


async def test_keys_are_per_queue(store: Store) -> None:
    await setup(store, name="a")
    await setup(store, name="b")
    tasks = [new(1)]
    in_a, _ = await store.enqueue_once("a", tasks, T0, idempotency("k", tasks))
    in_b, created = await store.enqueue_once("b", tasks, T0, idempotency("k", tasks))
    assert created
    assert in_b[0].id != in_a[0].id
    assert in_b[0].queue == "b"
    other = [new(2)]  # another request under the same key, on a third queue: its own
    await setup(store, name="c")
    assert (await store.enqueue_once("c", other, T0, idempotency("k", other))).created


async def test_a_key_expires_after_24_hours(store: Store) -> None:
    await setup(store)
    tasks = [new(1)]
    (first,), _ = await store.enqueue_once("q", tasks, T0, idempotency("k", tasks))
    just_before = T0 + KEY_TTL_MS - 1
    assert not (await store.enqueue_once("q", tasks, just_before, idempotency("k", tasks))).created
    # Expired: the key is free, even with another request, and is then taken again.
    other = [new(2)]
    later = T0 + KEY_TTL_MS
    (second,), created = await store.enqueue_once("q", other, later, idempotency("k", other))
    assert created
    assert second.id > first.id
    again, created = await store.enqueue_once("q", other, later + 1, idempotency("k", other))
    assert not created
    assert again == [second]


async def test_pruning_forgets_expired_keys_only(store: Store) -> None:
    await setup(store)
    tasks = [new(1)]
    await store.enqueue_once("q", tasks, T0, idempotency("old", tasks))
    await store.enqueue_once("q", tasks, T0 + 1000, idempotency("new", tasks))
    assert await store.prune_keys(fresh_since(T0 + KEY_TTL_MS)) == 1
    assert await store.prune_keys(fresh_since(T0 + KEY_TTL_MS)) == 0
    # "new" is still remembered (the time given is before its expiry).
    assert not (await store.enqueue_once("q", tasks, T0 + 2000, idempotency("new", tasks))).created
    assert (await store.enqueue_once("q", tasks, T0 + 2000, idempotency("old", tasks))).created


async def test_an_unknown_queue_keeps_no_key(store: Store) -> None:
    tasks = [new(1)]
    with pytest.raises(QueueNotFound):
        await store.enqueue_once("nope", tasks, T0, idempotency("k", tasks))
    await setup(store, name="nope")
    assert (await store.enqueue_once("nope", tasks, T0, idempotency("k", tasks))).created


async def test_a_deleted_queue_forgets_its_keys(store: Store) -> None:
    await setup(store)
    tasks = [new(1)]
    await store.enqueue_once("q", tasks, T0, idempotency("k", tasks))
    await store.delete_queue("q")
    await setup(store)
    assert (await store.enqueue_once("q", tasks, T0, idempotency("k", tasks))).created


async def test_concurrent_repeats_create_once(store: Store) -> None:
    await setup(store)
    tasks = [new(n) for n in range(5)]
    outcomes = await asyncio.gather(
        *(store.enqueue_once("q", tasks, T0, idempotency("same", tasks)) for _ in range(6))
    )
    assert sum(outcome.created for outcome in outcomes) == 1
    assert len({tuple(task.id for task in outcome.tasks) for outcome in outcomes}) == 1
    assert len(await all_ids(store)) == 5


@pytest.mark.parametrize("kind", DURABLE_KINDS)
async def test_keys_survive_a_restart_and_servers_share_them(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    first = open_store(url)
    await first.open()
    try:
        await setup(first, KEEP)
        tasks = [new(1), new(2)]
        made, _ = await first.enqueue_once("q", tasks, T0, idempotency("k", tasks))
    finally:
        await first.close()
    second = open_store(url)
    await second.open()
    try:
        again, created = await second.enqueue_once("q", tasks, T0 + 5, idempotency("k", tasks))
        assert not created
        assert again == made
    finally:
        await second.close()


async def test_two_postgres_servers_racing_with_one_key_create_once(
    shared_stores: list[Store],
) -> None:
    servers = shared_stores
    await setup(servers[0])
    for server in servers:
        await server.load_queues()
    tasks = [new(n) for n in range(50)]
    outcomes = await asyncio.gather(
        *(s.enqueue_once("q", tasks, T0, idempotency("race", tasks)) for s in servers * 3)
    )
    assert sum(outcome.created for outcome in outcomes) == 1
    assert len({tuple(task.id for task in outcome.tasks) for outcome in outcomes}) == 1
    assert len(await all_ids(servers[0])) == 50


@pytest.mark.parametrize("key", ["", "x" * 256, "é", "tab\there", "nl\n", "\x00", "\x7f"], ids=repr)
def test_invalid_keys_are_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="Idempotency-Key"):
        check_key(key)


def test_valid_keys() -> None:
    for key in ["a", "x" * 255, "3f2c-uuid 4 ~!{}", " spaced "]:
        assert check_key(key) == key


def test_ids_are_packed_in_runs() -> None:
    for ids in ([], [7], [1, 2, 3], [1, 2, 5, 6, 9], list(range(100, 10_100))):
        assert unpack_ids(pack_ids(ids)) == ids
    assert len(pack_ids(list(range(1, 10_001)))) < 20
