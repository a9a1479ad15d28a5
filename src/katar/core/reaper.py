"""The engine's reaper: lease expiry and due scheduled tasks at their deadlines, and the
pruning of expired idempotency keys.

One timer is armed for the earliest known deadline; when it rings, the reaper asks the store
to expire what is due. A poll that finds the deadline past catches up first.

The engine makes one and gives it the store, the clock, the outages log, a view of the
queues' options and a callback for what a reap changed; the engine's operations tell it of
the deadlines they make (``expect``) and of the idempotency keys they store (``keyed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final

from katar.core import background, idempotency
from katar.core.clock import Clock, Timer
from katar.core.model import QueueOptions
from katar.core.storage import Change, Store
from katar.errors import StoreUnavailable
from katar.logs import Outages

log = logging.getLogger("katar")

#: On a store that other servers write to (Store.shared), the longest the reaper sleeps, in
#: ms: their leases and delays are due without this server hearing of them.
HOUSEKEEPING_MS: Final = 1000
#: How often expired idempotency keys are pruned, in ms.
_PRUNE_EVERY_MS: Final = 60_000


class Reaper:
    """The deadlines of an engine: leases, delays and expiries to reap at their time.

    ``queues`` gives the queues' options as they are now (the engine replaces them on a
    reload); ``expired`` acts on what a reap changed (wakes, events, counts);
    ``retry_interval`` is the seconds before a reap the store failed is tried again.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        outages: Outages,
        *,
        queues: Callable[[], Mapping[str, QueueOptions]],
        expired: Callable[[list[Change]], None],
        retry_interval: float,
    ) -> None:
        self.store = store
        self.clock = clock
        self.outages = outages
        self._queues = queues
        self._expired = expired
        self.retry_interval = retry_interval
        #: The earliest deadline known: when the next reap is due (ms). Polls read it: one
        #: made past it catches up first (catch_up).
        self.due: int | None = None
        self._timer: Timer | None = None  # armed for due
        self._alarm = asyncio.Event()  # due has come: the reaper's cue
        self._lock = asyncio.Lock()  # one reap at a time; polls past due wait for it
        self._reaping = False
        self._noted: int | None = None  # the earliest deadline made while a reap ran
        self._next_prune: int | None = None  # when to prune idempotency keys next (ms)
        self._last_keyed: int | None = None  # when an enqueue last stored a key (ms)
        self._job: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start reaping: first at the earliest deadline the store has (leases and delays
        left by an earlier run)."""
        self.expect(await self.store.next_deadline())
        if self.store.shared:
            self.expect(self.clock.now_ms() + HOUSEKEEPING_MS)
        self._job = asyncio.create_task(self._run(), name="katar-reaper")

    async def stop(self) -> None:
        """Stop reaping and disarm the timer."""
        job, self._job = self._job, None
        await background.stop(job)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.due = None

    def expect(self, when: int | None) -> None:
        """A deadline exists at ``when`` (ms): arm the timer for it if it is the earliest."""
        if when is None:
            return
        if self._reaping and (self._noted is None or when < self._noted):
            self._noted = when  # the running reap arms the timer for it when it ends
        if self.due is not None and self.due <= when:
            return
        self.due = when
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.clock.call_at(when, self._ring)

    def keyed(self, now: int) -> None:
        """An enqueue stored an idempotency key at ``now``: keys to forget, pruned once a
        minute from the next prune on."""
        self._last_keyed = now
        if self._next_prune is None:
            self._next_prune = now + _PRUNE_EVERY_MS
            self.expect(self._next_prune)

    def _ring(self) -> None:
        self._timer = None
        self._alarm.set()

    async def _run(self) -> None:
        while True:
            await self._alarm.wait()
            self._alarm.clear()
            now = await self.catch_up(self.clock.now_ms())
            if self._next_prune is not None and self._next_prune <= now:
                await self._prune_keys(now)
                self.expect(self._next_prune)

    async def catch_up(self, now: int) -> int:
        """Reap if a known deadline is at or before ``now``; the time afterwards. A reap
        already running is waited for, and is enough if it ended past the deadline."""
        async with self._lock:
            if self.due is None or self.due > now:
                if self.due is not None and self._timer is None:  # it rang early: re-arm
                    self._timer = self.clock.call_at(self.due, self._ring)
                return now
            now = self.clock.now_ms()
            self._reaping, self._noted = True, None
            retry_ms = round(self.retry_interval * 1000)
            try:
                changes = await self.store.expire(dict(self._queues()), now)
                self.outages.up()
                if changes:
                    self._expired(changes)
                next_due = await self.store.next_deadline()
                if not changes and next_due is not None and next_due <= now:
                    # Due, yet nothing to do: another server holds it (PostgreSQL's SKIP
                    # LOCKED) or its queue is not loaded yet. Look again soon, not at once.
                    next_due = now + retry_ms
            except StoreUnavailable as exc:  # said once per outage, not at every reap
                self.outages.down(exc.message)
                next_due = now + retry_ms
            except Exception:
                log.exception("lease expiry failed; trying again in %.2fs", self.retry_interval)
                next_due = now + retry_ms
            finally:
                self._reaping = False
            noted = self._noted
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.due = None
            self.expect(next_due)
            self.expect(noted)
            self.expect(self._next_prune)
            if self.store.shared:
                self.expect(now + HOUSEKEEPING_MS)
            return self.clock.now_ms()

    async def _prune_keys(self, now: int) -> None:
        """Forget the expired idempotency keys, once a minute while keys may be stored:
        housekeeping, never in a request (a store ignores expired keys meanwhile). Keys left
        by an earlier run are pruned after this run's first enqueue with a key."""
        self._next_prune = None
        try:
            before = idempotency.fresh_since(now)
            while await self.store.prune_keys(before) >= idempotency.PRUNE_BATCH:
                pass  # each batch is a transaction of its own: others go in between
        except Exception:
            log.exception("pruning idempotency keys failed; trying again in a minute")
        if self._last_keyed is not None and idempotency.fresh_since(now) <= self._last_keyed:
            self._next_prune = now + _PRUNE_EVERY_MS  # keys still to expire
