"""The engine's wait list: long polls parked on a queue until a task there becomes ready.

Each queue has a deque of parked polls and a count of its wake-ups; a poll compares the
count before and after its claim, so that a wake-up between the two is never lost. The
engine holds one, on its clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from katar.core.clock import Clock


class WaitList:
    """The long polls parked per queue, on the ``clock``'s time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._waiters: dict[str, deque[asyncio.Future[bool]]] = {}
        #: Per queue: how many wake-ups so far. Read by a poll before its claim and
        #: compared after it (a dict, not a method: every poll reads it).
        self.wakes: dict[str, int] = {}

    async def park(self, queue: str, until: float, gone: asyncio.Future[Any] | None) -> bool:
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

    def wake(self, queue: str, count: int) -> None:
        """``count`` tasks of the queue became ready (or room under its limits): wake as
        many parked polls, and count the wake-up for the polls between two looks."""
        self.wakes[queue] = self.wakes.get(queue, 0) + 1
        waiters = self._waiters.get(queue)
        if waiters:
            _release(waiters, True, count)

    def wake_all(self, queue: str) -> None:
        """Every poll parked on the queue looks again (its options changed)."""
        self.wake(queue, len(self._waiters.get(queue, ())))

    def wake_every_queue(self) -> None:
        """Every parked poll looks again (events may have been missed)."""
        for queue, waiters in self._waiters.items():
            self.wake(queue, len(waiters))

    def drop(self, queue: str) -> None:
        """The queue is gone: its parked polls look again (and find no queue)."""
        waiters = self._waiters.pop(queue, deque())
        _release(waiters, True, len(waiters))

    def release_all(self) -> None:
        """Shutting down: every parked poll ends with nothing."""
        for waiters in self._waiters.values():
            _release(waiters, False, len(waiters))


def _settle_bool(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _release(waiters: deque[asyncio.Future[bool]], value: bool, count: int) -> None:
    while waiters and count > 0:
        future = waiters.popleft()
        if not future.done():
            future.set_result(value)
            count -= 1
