"""Redrive: moving a queue's waiting tasks to another queue, or back where they came from.

A redrive runs in steps of a bounded number of tasks, each one transaction of the store
(Store.redrive), as a bulk action does, so that the polls queued behind it wait
milliseconds. Without a rate it runs to the end in the request that asked for it; with a
rate it is a move job that runs in the background, moving at most that many tasks a second,
so that a service that just recovered is not flooded with the whole backlog at once.

A move job lives in the process of the server that started it: a restart ends it (the
tasks it moved stay moved; a new redrive moves the rest, since the filter still selects
them). Each server keeps the last jobs of each queue it ran (MOVE_HISTORY, as SQS lists
its message move tasks), the last for GET .../redrive. Servers sharing a PostgreSQL
database do not see each other's jobs: a job is a task of the process that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Final, Literal

import msgspec

from katar.core.clock import Clock
from katar.core.model import TaskFilter
from katar.core.storage import RedriveStep, Store
from katar.errors import Conflict, NotFound, StoreUnavailable

log = logging.getLogger("katar")

MoveState = Literal["running", "completed", "cancelled", "failed"]
#: The most tasks a second a rated redrive may move (a redrive without a rate moves them as
#: fast as the store takes them).
MAX_RATE: Final = 1_000_000.0
#: The move jobs of a queue that a server keeps, the last first (SQS lists up to 10
#: message move tasks per source queue).
MOVE_HISTORY: Final = 10
#: Seconds a move job waits before it tries again when the store is unavailable.
RETRY_AFTER: Final = 1.0


class Redrive(msgspec.Struct, frozen=True):
    """What a redrive did: the tasks its filter selected among those it may move, those it
    moved, and those it left where they are because they have no queue to go to (no
    ``to``, and no dead_letter record naming their origin)."""

    matched: int
    moved: int
    no_origin: int


class MoveJob(msgspec.Struct, kw_only=True):
    """A redrive at a rate, as it stands. Times in ms."""

    queue: str
    to: str | None
    where: TaskFilter
    rate: float
    state: MoveState = "running"
    #: The tasks the filter selected when the job started (those it may move).
    total: int = 0
    matched: int = 0
    moved: int = 0
    no_origin: int = 0
    started_at: int
    ended_at: int | None = None
    #: Why the job failed (state "failed"), or None.
    error: str | None = None

    @property
    def remaining(self) -> int:
        """The tasks still to look at, as far as the count at the start tells."""
        return max(self.total - self.matched, 0)


#: What the engine does with each step's moves (wake the target queues, count, emit).
Moved = Callable[[str, RedriveStep], Awaitable[None]]


class MoveJobs:
    """The move jobs of this process, by source queue: at most one running per queue."""

    def __init__(self, store: Store, clock: Clock, moved: Moved, step: int) -> None:
        self._store = store
        self._clock = clock
        self._moved = moved
        self._step = step
        self._jobs: dict[str, MoveJob] = {}
        #: Each queue's last jobs, the last first (its last is also in _jobs).
        self._history: dict[str, list[MoveJob]] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        #: Set to stop a queue's running job between two steps (see cancel).
        self._stops: dict[str, asyncio.Event] = {}

    async def run(
        self,
        queue: str,
        to: str | None,
        where: TaskFilter,
        allowed: Collection[str] | None = None,
    ) -> Redrive:
        """Redrive every task ``where`` selects, in steps, to the end (to the ``allowed``
        queues only, when given: see Store.redrive)."""
        matched = moved = after = 0
        while True:
            step = await self._store.redrive(
                queue, to, where, self._clock.now_ms(), after, self._step, allowed
            )
            await self._moved(queue, step)
            matched += step.matched
            moved += step.moved
            after = step.last
            if step.matched < self._step:
                return Redrive(matched, moved, matched - moved)

    def start(
        self,
        queue: str,
        to: str | None,
        where: TaskFilter,
        rate: float,
        total: int,
        allowed: Collection[str] | None = None,
    ) -> MoveJob:
        """Start a move job at ``rate`` tasks a second; Conflict when one runs for the
        queue already."""
        running = self._jobs.get(queue)
        if running is not None and running.state == "running":
            raise Conflict(
                f"a redrive of queue {queue!r} is running (moved {running.moved} so far);"
                " cancel it (DELETE) or wait for its end",
                queue=queue,
            )
        job = MoveJob(
            queue=queue, to=to, where=where, rate=rate, total=total, started_at=self._clock.now_ms()
        )
        self._jobs[queue] = job
        self._history[queue] = [job, *self._history.get(queue, [])][:MOVE_HISTORY]
        self._stops[queue] = asyncio.Event()
        self._runs[queue] = asyncio.create_task(
            self._run_at_rate(job, allowed), name=f"katar-redrive-{queue}"
        )
        return job

    def job(self, queue: str) -> MoveJob:
        """The queue's last move job; NotFound when it had none on this server."""
        job = self._jobs.get(queue)
        if job is None:
            raise NotFound(
                f"no redrive with a rate of queue {queue!r} on this server (a move job lives"
                " on the server that started it, until it restarts)",
                queue=queue,
            )
        return job

    def history(self, queue: str) -> list[MoveJob]:
        """The queue's last move jobs on this server (up to MOVE_HISTORY), the last first."""
        return list(self._history.get(queue, []))

    def jobs(self) -> list[MoveJob]:
        """Every queue's last move job, by queue."""
        return [self._jobs[queue] for queue in sorted(self._jobs)]

    async def cancel(self, queue: str) -> MoveJob:
        """Stop the queue's running move job (the tasks it moved stay moved): the job as it
        ends. A job that has ended already is answered as it is.

        The job stops between two steps, not inside one: a step cut off once the store has
        committed its moves would leave them out of the job's count."""
        job = self.job(queue)
        run = self._runs.get(queue)
        if run is not None and not run.done():
            self._stops[queue].set()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        if job.state == "running":  # cancelled before it ever ran
            job.state = "cancelled"
            job.ended_at = self._clock.now_ms()
        return job

    def forget(self, queue: str) -> None:
        """The queue is deleted: its job stops and goes."""
        run = self._runs.pop(queue, None)
        if run is not None:
            run.cancel()
        self._jobs.pop(queue, None)
        self._history.pop(queue, None)
        self._stops.pop(queue, None)

    async def close(self) -> None:
        """Stop every running job (a restart ends them)."""
        for queue in list(self._runs):
            await self.cancel(queue)

    async def _run_at_rate(self, job: MoveJob, allowed: Collection[str] | None) -> None:
        per_step = max(1, min(self._step, math.floor(job.rate)))
        stop = self._stops[job.queue]
        after = 0
        try:
            while True:
                if stop.is_set():
                    job.state = "cancelled"
                    break
                began = time.monotonic()
                try:
                    step = await self._store.redrive(
                        job.queue, job.to, job.where, self._clock.now_ms(), after, per_step, allowed
                    )
                except StoreUnavailable:
                    await _until(stop, RETRY_AFTER)
                    continue
                # Counted before anything else is awaited: the store has moved them.
                job.matched += step.matched
                job.moved += step.moved
                job.no_origin += step.matched - step.moved
                after = step.last
                await self._moved(job.queue, step)
                if step.matched < per_step:
                    job.state = "completed"
                    break
                # The step's tasks took their share of the second: wait out the rest.
                await _until(stop, max(step.matched / job.rate - (time.monotonic() - began), 0))
        except asyncio.CancelledError:
            job.state = "cancelled"
            raise
        except Exception as exc:  # a bug or a bad row: the job says so, the server goes on
            log.exception("redrive of queue %s failed", job.queue)
            job.state = "failed"
            job.error = str(exc) or type(exc).__name__
        finally:
            job.ended_at = self._clock.now_ms()
            if self._runs.get(job.queue) is asyncio.current_task():
                self._runs.pop(job.queue, None)


async def _until(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
