"""The engine reloads the queues' options until it succeeds: a reload that meets the store
unavailable (as right after a lost connection) is tried again, not dropped."""

from __future__ import annotations

import asyncio
import logging

import pytest

from katar.core.engine import Engine
from katar.core.model import QueueOptions
from katar.store.memory import MemoryStore
from tests.helpers.flaky import Flaky


async def test_a_reload_that_fails_is_tried_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="katar")
    store = Flaky()
    engine = Engine(store)
    await engine.open({"q": QueueOptions()})
    try:
        # Changed by "another server": in the store, not through this engine.
        await store.save_queue("q", QueueOptions(paused=True, concurrency=1))
        store.failures = 4
        engine.resync()  # the listener is back: events may have been missed
        async with asyncio.timeout(30):
            # ASYNC110: the engine's options change with no event to wait on.
            while not engine.options("q").paused:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert engine.options("q").concurrency == 1
        assert store.failures == 0
        messages = [r.getMessage() for r in caplog.records]
        # One line for the outage, one for the recovery; no traceback.
        assert sum("store unavailable" in m for m in messages) == 1
        assert sum("store available again" in m for m in messages) == 1
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        await engine.close()


async def test_a_change_asked_for_during_a_reload_is_read_by_another() -> None:
    store = MemoryStore()
    engine = Engine(store)
    await engine.open({"q": QueueOptions()})
    try:
        engine.queue_changed("q")  # a reload starts, and reads "q" as it is
        await store.save_queue("q", QueueOptions(max_batch=7))
        engine.queue_changed("q")  # while it runs: one more follows
        async with asyncio.timeout(30):
            while engine.options("q").max_batch != 7:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await engine.close()


class SlowLoad(MemoryStore):
    """A store whose read of every queue's options waits until it is let go, having read."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.go = asyncio.Event()

    async def load_queues(self) -> dict[str, QueueOptions]:
        queues = await super().load_queues()
        self.reading.set()
        await self.go.wait()
        return queues


async def test_a_reload_does_not_undo_a_change_made_here_while_it_read() -> None:
    store = SlowLoad()
    engine = Engine(store)
    store.go.set()
    await engine.open({"q": QueueOptions(), "gone": QueueOptions()})
    store.go.clear()
    store.reading.clear()  # set by the read of open()
    try:
        engine.queue_changed("q")  # another server changed something: a reload reads
        async with asyncio.timeout(30):
            await store.reading.wait()
        # Meanwhile, this server changes one queue and deletes another, after the read.
        await engine.patch_queue("q", {"max_batch": 7})
        await engine.delete_queue("gone")
        store.go.set()
        async with asyncio.timeout(30):
            while engine._reloader._job is not None and not engine._reloader._job.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert engine.options("q").max_batch == 7
        assert "gone" not in engine.queue_options()
        # A later reload reads the store as it is, and takes it.
        await store.save_queue("q", QueueOptions(max_batch=9))
        engine.queue_changed("q")
        async with asyncio.timeout(30):
            while engine.options("q").max_batch != 9:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await engine.close()
