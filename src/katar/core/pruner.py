"""The engine's pruner: retention, the finished tasks their queue's ``keep`` no longer keeps.

Once every RETENTION_EVERY seconds, off the requests' path, it removes them in batches of
PRUNE_BATCH, each a transaction of its own, so that the requests queued behind a batch wait
milliseconds. The engine makes one and gives it the store, the clock, the outages log and a
view of the queues' options; ``prune`` is also the engine's public ``prune_finished``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final

from katar.core import background
from katar.core.clock import Clock
from katar.core.model import FINAL_STATES, QueueOptions
from katar.core.rules import prune_before
from katar.core.storage import Store
from katar.errors import QueueNotFound, StoreUnavailable
from katar.logs import Outages

log = logging.getLogger("katar")

#: The finished tasks one transaction of the pruner removes.
PRUNE_BATCH: Final = 1000
#: Seconds between two passes of the pruner.
RETENTION_EVERY: Final = 60


class Pruner:
    """Removes the finished tasks past their queue's retention, once a minute.

    ``queues`` gives the queues' options as they are now (the engine replaces them on a
    reload).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        outages: Outages,
        *,
        queues: Callable[[], Mapping[str, QueueOptions]],
    ) -> None:
        self.store = store
        self.clock = clock
        self.outages = outages
        self._queues = queues
        self._job: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Prune every RETENTION_EVERY seconds, the first pass that long from now."""
        self._job = asyncio.create_task(self._run(), name="katar-retention")

    async def stop(self) -> None:
        """Stop pruning (a pass under way is cancelled: what it removed stays removed)."""
        job, self._job = self._job, None
        await background.stop(job)

    async def prune(self) -> int:
        """Remove the finished tasks that their queue's ``keep`` no longer keeps, in batches
        of PRUNE_BATCH (each a transaction of its own); how many."""
        pruned = 0
        for queue, options in list(self._queues().items()):
            for state in FINAL_STATES:
                now = self.clock.now_ms()
                before = prune_before(options, state, now)
                if before is None:
                    continue
                try:
                    while True:
                        count = await self.store.prune(queue, state, before, now, PRUNE_BATCH)
                        pruned += count
                        if count < PRUNE_BATCH:
                            break
                        await asyncio.sleep(0)  # let requests go first
                except QueueNotFound:
                    break  # deleted meanwhile
        if pruned:
            log.info("retention: %d finished task(s) removed", pruned)
        return pruned

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_EVERY)
            try:
                await self.prune()
                self.outages.up()
            except StoreUnavailable as exc:
                self.outages.down(exc.message)
            except Exception:
                log.exception("retention failed; trying again in %d s", RETENTION_EVERY)
