"""The engine's reaper: lease expiry and due scheduled tasks at their deadlines, and the
pruning of expired idempotency keys.

One timer is armed for the earliest known deadline; when it rings, the reaper asks the store
to expire what is due. A poll that finds the deadline past catches up first.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Iterable
from typing import Final

from katar.core import idempotency
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


class Reaper(abc.ABC):
    """The deadlines of an Engine (the Engine sets the attributes)."""

    store: Store
    clock: Clock
    queues: dict[str, QueueOptions]
    reap_interval: float
    outages: Outages
    _due: int | None
    _timer: Timer | None
    _alarm: asyncio.Event
    _reap_lock: asyncio.Lock
    _reaping: bool
    _noted: int | None
    _next_prune: int | None
    _last_keyed: int | None

    @abc.abstractmethod
    def _apply(
        self, changes: Iterable[Change], *, expired: bool = False, operator: bool = False
    ) -> None:
        """Act on what the expiry changed (Engine._apply)."""

    def _expect(self, when: int | None) -> None:
        """A deadline exists at ``when`` (ms): arm the timer for it if it is the earliest."""
        if when is None:
            return
        if self._reaping and (self._noted is None or when < self._noted):
            self._noted = when  # the running reap arms the timer for it when it ends
        if self._due is not None and self._due <= when:
            return
        self._due = when
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.clock.call_at(when, self._ring)

    def _ring(self) -> None:
        self._timer = None
        self._alarm.set()

    async def _reap(self) -> None:
        while True:
            await self._alarm.wait()
            self._alarm.clear()
            now = await self._catch_up(self.clock.now_ms())
            if self._next_prune is not None and self._next_prune <= now:
                await self._prune_keys(now)
                self._expect(self._next_prune)

    async def _catch_up(self, now: int) -> int:
        """Reap if a known deadline is at or before ``now``; the time afterwards. A reap
        already running is waited for, and is enough if it ended past the deadline."""
        async with self._reap_lock:
            if self._due is None or self._due > now:
                if self._due is not None and self._timer is None:  # it rang early: re-arm
                    self._timer = self.clock.call_at(self._due, self._ring)
                return now
            now = self.clock.now_ms()
            self._reaping, self._noted = True, None
            try:
                changes = await self.store.expire(dict(self.queues), now)
                self.outages.up()
                if changes:
                    self._apply(changes, expired=True)
                next_due = await self.store.next_deadline()
                if not changes and next_due is not None and next_due <= now:
                    # Due, yet nothing to do: another server holds it (PostgreSQL's SKIP
                    # LOCKED) or its queue is not loaded yet. Look again soon, not at once.
                    next_due = now + round(self.reap_interval * 1000)
            except StoreUnavailable as exc:  # said once per outage, not at every reap
                self.outages.down(exc.message)
                next_due = now + round(self.reap_interval * 1000)
            except Exception:
                log.exception("lease expiry failed; trying again in %.2fs", self.reap_interval)
                next_due = now + round(self.reap_interval * 1000)
            finally:
                self._reaping = False
            noted = self._noted
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._due = None
            self._expect(next_due)
            self._expect(noted)
            self._expect(self._next_prune)
            if self.store.shared:
                self._expect(now + HOUSEKEEPING_MS)
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
