"""The engine's time: what time it is, and timers that fire at a given time.

Every time the engine reads or waits for goes through a :class:`Clock`. The server runs on
:class:`SystemClock`; tests of leases, delays and long polls run on :class:`FakeClock`, whose
time moves only when the test says so, so that they need no real sleeps.

Times are milliseconds since the epoch, the unit of every stored time (a lease's end, a
delay's end), so that a timer is armed for the very number the store holds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """An armed timer; :meth:`cancel` disarms it (a no-op once it fired)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where the engine's time comes from."""

    def now_ms(self) -> int:
        """The time, in milliseconds since the epoch."""
        ...

    def call_at(self, when_ms: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` on the event loop once the time is ``when_ms`` or later."""
        ...


class SystemClock:
    """The wall clock, with the running event loop's timers."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def call_at(self, when_ms: float, callback: Callable[[], None]) -> Timer:
        # The loop's timers run on a monotonic clock: convert the wall-clock time to a delay.
        # A timer then fires a little early at most by the rounding of now_ms (under 1 ms);
        # _LATE_MS makes up for that, so that a timer never fires before its time is due.
        delay = (when_ms - time.time_ns() / 1_000_000 + _LATE_MS) / 1000
        return asyncio.get_running_loop().call_later(max(delay, 0.0), callback)


#: How late a system timer is armed past its time, in ms: the loop's timers may fire up to
#: one clock resolution early, and a deadline reached 0.1 ms early would find nothing due.
_LATE_MS = 1.0


class _FakeTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock for tests: its time changes only through :meth:`advance` and :meth:`set`,
    which fire the timers that come due, in order, at once (no real sleeping)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()

    def now_ms(self) -> int:
        return self._now

    def call_at(self, when_ms: float, callback: Callable[[], None]) -> Timer:
        if when_ms <= self._now:  # already due: at once, as the system clock's timers do
            return asyncio.get_running_loop().call_soon(callback)
        timer = _FakeTimer(callback)
        heapq.heappush(self._timers, (when_ms, next(self._order), timer))
        return timer

    @property
    def armed(self) -> list[float]:
        """The times of the timers armed and not cancelled, earliest first."""
        return sorted(when for when, _, timer in self._timers if not timer.cancelled)

    async def set(self, when_ms: int) -> None:
        """Move the time to ``when_ms`` (never backwards), firing each timer due on the way
        at its own time, and let the event loop run what they woke."""
        while self._timers and self._timers[0][0] <= when_ms:
            due, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, int(due))
            timer.callback()
            await settle()
        self._now = max(self._now, when_ms)
        await settle()

    async def advance(self, ms: int) -> None:
        """Move the time ``ms`` milliseconds forward (see :meth:`set`)."""
        await self.set(self._now + ms)


async def settle(rounds: int = 20) -> None:
    """Let the event loop run what is ready, for a few turns: what a timer or a reply woke
    runs to its next real wait."""
    for _ in range(rounds):
        await asyncio.sleep(0)
