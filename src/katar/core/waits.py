"""The engine's wait list: long polls parked on a queue until a task there becomes ready.

Each queue has a deque of parked polls and a count of its wake-ups; a poll compares the
count before and after its claim, so that a wake-up between the two is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from katar.core.clock import Clock


class WaitList:
    """The long polls of an Engine, parked per queue (the Engine sets the attributes)."""

    clock: Clock
    _waiters: dict[str, deque[asyncio.Future[bool]]]
    _wakes: dict[str, int]  # per queue: how many wake-ups so far

    async def _park(self, queue: str, until: float, gone: asyncio.Future[Any] | None) -> bool:
        """Wait for a wake-up on the queue: True when woken, False once the clock reaches
        ``until`` (ms) or on hang-up."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(queue, deque())
        waiters.append(future)
        timer = self.clock.call_at(until, lambda: _settle_bool(future, False))

        def hang_up(_: object) -> None:
            _settle_bool(future, False)

        if gone is not None:
            gone.add_done_callback(hang_up)
        try:
            woken = await future
        finally:
            timer.cancel()
            if gone is not None:
                gone.remove_done_callback(hang_up)
        if not woken:
            with contextlib.suppress(ValueError):
                waiters.remove(future)
        return woken

    def _wake(self, queue: str, count: int) -> None:
        self._wakes[queue] = self._wakes.get(queue, 0) + 1
        waiters = self._waiters.get(queue)
        if waiters:
            _release(waiters, True, count)


def _settle_bool(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _release(waiters: deque[asyncio.Future[bool]], value: bool, count: int) -> None:
    while waiters and count > 0:
        future = waiters.popleft()
        if not future.done():
            future.set_result(value)
            count -= 1
