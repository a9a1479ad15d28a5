"""Idempotency keys through the engine and the Python API: a repeat is not an enqueue (no
count, no wake-up, no event), and expired keys are pruned by the engine's housekeeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from katar import Katar
from katar.core.clock import FakeClock, settle
from katar.core.idempotency import KEY_TTL_MS, KeyReused, digest, idempotency
from katar.core.model import NewTask
from katar.errors import ValidationError
from katar.store.base import Store
from tests.helpers.store import new


async def test_a_repeat_creates_counts_and_tells_nothing(make_url: Callable[[], str]) -> None:
    katar = Katar(make_url())
    queue = katar.queue("q", persistent=True)
    events: list[int] = []
    katar.on("q.queued", lambda task: events.append(task.id))
    async with katar:
        first = await queue.enqueue_many([1, 2], idempotency_key="batch-1")
        again = await queue.enqueue_many([1, 2], idempotency_key="batch-1")
        assert again == first
        assert katar.engine.counters.enqueued["q"] == 2
        assert events == [task.id for task in first]
        assert len(await queue.tasks()) == 2
        with pytest.raises(KeyReused):
            await queue.enqueue(3, idempotency_key="batch-1")
        with pytest.raises(ValidationError, match="Idempotency-Key"):
            await queue.enqueue(3, idempotency_key="x" * 256)
        assert len(await queue.tasks()) == 2


async def pruned(calls: list[int], count: int) -> None:
    """Let the reaper's pruning run: the stores do it on threads and sockets, so a few turns
    of the loop are not enough."""
    for _ in range(500):
        if len(calls) >= count:
            return
        await asyncio.sleep(0.01)


async def test_housekeeping_prunes_expired_keys_once_a_minute(
    make_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    katar = Katar(make_url(), clock=clock)
    queue = katar.queue("q")
    async with katar:
        store: Store = katar.engine.store
        tasks = [new(1)]
        now = clock.now_ms()
        await store.enqueue_once("q", tasks, now - KEY_TTL_MS - 1, idempotency("old", tasks))
        calls: list[int] = []
        real_prune = store.prune_keys

        async def prune_keys(before: int) -> int:
            calls.append(await real_prune(before))
            return calls[-1]

        monkeypatch.setattr(store, "prune_keys", prune_keys)
        await clock.advance(3_600_000)
        assert calls == []  # no key stored by this run: the idle engine does not wake
        now = clock.now_ms()
        await queue.enqueue(1, idempotency_key="new")  # arms the pruning, a minute on
        await clock.advance(59_999)
        assert calls == []
        await clock.advance(1)
        await pruned(calls, 1)
        assert calls == [1]  # "old" only
        await clock.advance(30_000)
        await settle()
        assert calls == [1]  # not again within the minute
        await clock.advance(30_000)
        await pruned(calls, 2)
        assert calls == [1, 0]  # "new" stays for 24 hours, so the pruning goes on
        assert not (await store.enqueue_once("q", tasks, now, idempotency("new", tasks))).created


def test_the_digest_covers_the_task_options_and_keeps_older_digests() -> None:
    plain = [
        NewTask(data=msgspec.Raw(b"1")),
        NewTask(data=msgspec.Raw(b"[2]"), priority=3, delay_ms=5, run_at=7, paused=True),
    ]
    # Keys stored before the task options existed still match their repeats.
    assert digest(plain).hex() == (
        "f621c9004f209965706bee6c5e4f3f88e51519f277715b49d2403d92a7f6af01"
    )
    variants: list[dict[str, Any]] = [
        {"timeout": 5},
        {"max_attempts": 0},
        {"expires_in_ms": 5},
        {"unique_key": "k"},
        {"unique_key": "k", "unique_for_ms": 5},
        {"unique_key": "5"},
    ]
    digests = {digest([NewTask(data=msgspec.Raw(b"1"), **v)]) for v in variants}
    assert len(digests) == len(variants)
    assert digest(plain[:1]) not in digests
