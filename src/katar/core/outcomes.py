"""The engine's outcome waits: producers waiting for a task to finish (GET with ``wait``).

A wait registers before it reads the task, so that no change can slip between the read and
the wait; the engine settles the waits of a task when it sees the task finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from katar.core.model import Task
from katar.core.rules import is_final


class OutcomeWaits:
    """The producers waiting for a task's outcome, per task id."""

    def __init__(self) -> None:
        #: The waits per task id: the engine asks whether a task it sees finish has any
        #: (a dict, not a method: asked at every change of status).
        self.waiting: dict[int, list[asyncio.Future[Task | None]]] = {}

    async def wait(self, read: Callable[[], Awaitable[Task]], task_id: int, wait: float) -> Task:
        """The task once it is final, or as it is after ``wait`` seconds (or at shutdown);
        ``read`` reads it from the store."""
        future: asyncio.Future[Task | None] = asyncio.get_running_loop().create_future()
        futures = self.waiting.setdefault(task_id, [])
        futures.append(future)  # before the read, so that no change can slip between
        try:
            task = await read()
            if is_final(task):
                return task
            try:
                finished = await asyncio.wait_for(future, wait)
            except TimeoutError:
                finished = None
            return finished if finished is not None else await read()
        finally:
            futures.remove(future)
            if not futures:
                del self.waiting[task_id]

    def settle(self, task: Task) -> None:
        """The task finished: answer whoever waits for it."""
        for future in self.waiting.get(task.id, ()):
            if not future.done():
                future.set_result(task)

    def moved(self, task_id: int) -> None:
        """The task left the queue it was waited for in (a dead letter): the waits read
        it again, and learn where it went."""
        for future in self.waiting.get(task_id, ()):
            if not future.done():
                future.set_result(None)

    def release_all(self) -> None:
        """Shutting down: every wait answers with the task as it is now."""
        for futures in self.waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
