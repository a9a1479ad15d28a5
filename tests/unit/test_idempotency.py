"""Idempotency keys through the engine and the Python API: a repeat is not an enqueue (no
count, no wake-up, no event), and expired keys are pruned by the engine's housekeeping."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from katar import Katar
from katar.core import engine as engine_module
from katar.core.idempotency import KEY_TTL_MS, KeyReused, idempotency
from katar.core.model import now_ms
from katar.errors import ValidationError
from katar.store.base import Store
from tests.store.test_conformance import new


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


async def test_housekeeping_prunes_expired_keys_once_a_minute(
    make_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    katar = Katar(make_url(), reap_interval=3600)  # no reap of its own during the test
    katar.queue("q")
    async with katar:
        store: Store = katar.engine.store
        tasks = [new(1)]
        now = now_ms()
        await store.enqueue_once("q", tasks, now - KEY_TTL_MS - 1, idempotency("old", tasks))
        await store.enqueue_once("q", tasks, now, idempotency("new", tasks))
        calls: list[int] = []
        real_prune = store.prune_keys

        async def prune_keys(before: int) -> int:
            calls.append(await real_prune(before))
            return calls[-1]

        monkeypatch.setattr(store, "prune_keys", prune_keys)
        monkeypatch.setattr(engine_module, "now_ms", lambda: now)
        katar.engine._next_prune = 0
        await katar.engine._prune_keys()
        assert calls == [1]  # "old" only
        await katar.engine._prune_keys()
        assert calls == [1]  # not again within the minute
        monkeypatch.setattr(engine_module, "now_ms", lambda: now + 60_000)
        await katar.engine._prune_keys()
        assert calls == [1, 0]
        assert not (await store.enqueue_once("q", tasks, now, idempotency("new", tasks))).created
