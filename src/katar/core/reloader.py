"""The engine's reload of the queues' options, when they may have changed elsewhere.

Another server sharing the store paused a queue or moved a limit (Observer.queue_changed),
or this server's notifications were lost for a while (Observer.resync): the engine must not
keep the options it has. The reloader reads them all again in the background: one reload
at a time, one more after it when asked while it ran (what it read may predate the change it
was asked for), and until one succeeds: while the store is unavailable it tries again with
backoff, the outage said once (Outages), not at every attempt.

The engine makes one and gives it the store, the outages log and a callback that takes what
was read (the engine replaces its options and wakes the long polls they concern).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from katar.core import background
from katar.core.model import QueueOptions
from katar.core.storage import Store
from katar.errors import StoreUnavailable
from katar.logs import Outages

log = logging.getLogger("katar")

#: Seconds before the first retry of a failed reload of the queues' options, and the most
#: between two retries (the delay doubles up to it).
RELOAD_BACKOFF_FIRST: Final = 0.1
RELOAD_BACKOFF_MAX: Final = 2.0


class Reloader:
    """Reads the queues' options again when asked, until it succeeds.

    ``reloaded(queues, wake_all)`` is given each set of options read, and whether every
    long poll must look again (events may have been missed); ``reading()`` is called as each
    read starts.
    """

    def __init__(
        self,
        store: Store,
        outages: Outages,
        *,
        reloaded: Callable[[dict[str, QueueOptions], bool], None],
        reading: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.outages = outages
        self._reloaded = reloaded
        #: Called as each read starts: what the engine writes from then on is newer.
        self._reading = reading
        #: The reload running, and what the next one must do: run at all, and wake every
        #: long poll.
        self._job: asyncio.Task[None] | None = None
        self._wanted = False
        self._wake_all = False

    def ask(self, wake_all: bool) -> None:
        """Read the queues' options again soon (``wake_all``: and wake every long poll)."""
        self._wanted = True
        self._wake_all = self._wake_all or wake_all
        if self._job is None or self._job.done():
            self._job = asyncio.create_task(self._run(), name="katar-reload")

    async def stop(self) -> None:
        """Stop the reload running, if any."""
        job, self._job = self._job, None
        await background.stop(job)

    async def _run(self) -> None:
        delay = RELOAD_BACKOFF_FIRST
        failed = False
        while self._wanted:
            self._wanted = False
            wake_all, self._wake_all = self._wake_all, False
            try:
                self._reading()
                queues = await self.store.load_queues()
            except Exception as exc:
                if isinstance(exc, StoreUnavailable):
                    self.outages.down(exc.message)
                elif not failed:  # a bug or a bad row: its traceback once, not every retry
                    log.exception("reloading the queues failed; trying again until it works")
                failed = True
                self._wanted = True
                self._wake_all = self._wake_all or wake_all
                await asyncio.sleep(delay)
                delay = min(delay * 2, RELOAD_BACKOFF_MAX)
                continue
            if failed:
                self.outages.up()
                failed, delay = False, RELOAD_BACKOFF_FIRST
            self._reloaded(queues, wake_all)
