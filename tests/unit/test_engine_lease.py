"""A lease starts when the store claims the task, by the engine's clock: time a poll spends
waiting for the store before its claim is not taken off the lease."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from katar.core.clock import FakeClock
from katar.core.engine import Engine
from katar.core.model import Ack, NewTask, QueueOptions
from katar.core.storage import PollResult
from katar.store.memory import MemoryStore

WAIT_MS = 7000


class Slow(MemoryStore):
    """A store whose polls wait WAIT_MS (on the fake clock) before they claim, as a poll
    waits for a connection or a lock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    async def poll(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        await self.clock.advance(WAIT_MS)
        return await super().poll(queue, options, acks, limit, worker, now)


async def test_the_wait_before_the_claim_is_not_taken_off_the_lease() -> None:
    clock = FakeClock()
    engine = Engine(Slow(clock), clock=clock)
    await engine.open({"q": QueueOptions(timeout=10_000)})
    try:
        await engine.enqueue("q", [NewTask(data=msgspec.Raw(b"1"))])
        arrived = clock.now_ms()
        (task,) = await engine.poll("q", worker="w")
        assert task.started_at == arrived + WAIT_MS
        assert task.lease_until == arrived + WAIT_MS + 10_000
        # The reaper's deadline is the lease's end: the task is not expired before then.
        await clock.advance(9_999)
        stored = await engine.store.get_task("q", task.id)
        assert stored is not None
        assert stored.status == "in progress"
    finally:
        await engine.close()
