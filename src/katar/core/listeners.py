"""The engine's listeners: user code called on each status change of a task.

``Katar.on("emails.done", ...)`` registers one. The engine emits each task whose public
status changed; a listener runs on the event loop after the change is stored, a coroutine
function as a task of its own, and its errors are logged, never raised into the operation
that made the change.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from katar.core.model import STATUSES, Task
from katar.errors import ValidationError

log = logging.getLogger("katar")

#: A status-change callback: called with the task in its new status; may be a coroutine.
Listener = Callable[[Task], Awaitable[None] | None]


class Listeners:
    """The listeners per event, ``"<queue>.<status>"`` (the queue ``*`` for every queue)."""

    def __init__(self) -> None:
        #: The listeners of each event. The engine tests it before it builds anything to
        #: emit (a dict, not a method: asked at every poll and enqueue).
        self.by_event: dict[str, list[Listener]] = {}
        #: The coroutines of listeners still running: kept until they end, so that the
        #: event loop does not drop them.
        self._running: set[asyncio.Future[Any]] = set()

    def on(self, event: str, listener: Listener) -> None:
        """Call ``listener(task)`` on each status change named ``event``."""
        queue, _, status = event.rpartition(".")
        if not queue or status not in STATUSES:
            raise ValidationError(
                f"invalid event {event!r}: use '<queue>.<status>' with a status among "
                f"{', '.join(STATUSES)}"
            )
        self.by_event.setdefault(event, []).append(listener)

    def watching_done(self) -> bool:
        """Whether a listener waits for "done" events (then a store reports each task it
        finishes "done", see Observer.watching)."""
        return any(event.endswith(".done") for event in self.by_event)

    def emit(self, task: Task) -> None:
        """Call the listeners of the task's queue and status, and those of every queue."""
        status = task.status
        for event in (f"{task.queue}.{status}", f"*.{status}"):
            for listener in self.by_event.get(event, ()):
                try:
                    outcome = listener(task)
                    if inspect.isawaitable(outcome):
                        job = asyncio.ensure_future(outcome)
                        self._running.add(job)
                        job.add_done_callback(self._done)
                except Exception:
                    log.exception("listener for %s failed", event)

    def _done(self, job: asyncio.Future[Any]) -> None:
        self._running.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.error("listener failed", exc_info=job.exception())
