"""Redrive: moving a queue's waiting tasks to another queue, or back where they came from.

A redrive runs in steps of a bounded number of tasks, each one transaction of the store
(Store.redrive), as a bulk action does, so that the polls queued behind it wait
milliseconds. Without a rate it runs to the end in the request that asked for it; with a
rate it is a move job that runs in the background, moving at most that many tasks a second,
so that a service that just recovered is not flooded with the whole backlog at once.

A move job is kept by the store, so every server that shares it sees the same jobs: any
server lists a queue's last jobs (MOVE_HISTORY, as SQS lists its message move tasks) and
cancels a running one. One server runs it, holding a lease that each step renews; each step
writes the job's counts and the last task id it looked at in its own transaction, so the
counts stay exact whatever stops the server, and a cancel written by any server is seen by
the next step, which then moves nothing. When a server stops (a shutdown releases its
lease; a crash lets it run out), every server looks now and then for running jobs whose
lease has passed, and one of them takes each over, at the job's rate, from where it stood.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Final

import msgspec

from katar.core import background
from katar.core.clock import Clock
from katar.core.model import MoveJob, MoveState, TaskFilter
from katar.core.storage import MoveLease, RedriveStep, Store
from katar.errors import Conflict, NotFound, QueueNotFound, StoreUnavailable

__all__ = ["MAX_RATE", "MOVE_HISTORY", "MoveJob", "MoveJobs", "MoveState", "Redrive"]

log = logging.getLogger("katar")

#: The most tasks a second a rated redrive may move (a redrive without a rate moves them as
#: fast as the store takes them).
MAX_RATE: Final = 1_000_000.0
#: The move jobs of a queue that the store keeps, the last first (SQS lists up to 10
#: message move tasks per source queue).
MOVE_HISTORY: Final = 10
#: Seconds a move job waits before it tries again when the store is unavailable.
RETRY_AFTER: Final = 1.0
#: Seconds a runner holds its job past the step it expects next: a server that died leaves
#: its jobs to another that long after their next step was due.
LEASE: Final = 5.0
#: Seconds between two looks for jobs to take over (each server; a query of the running
#: jobs only).
TAKEOVER_EVERY: Final = LEASE / 2


class Redrive(msgspec.Struct, frozen=True):
    """What a redrive did: the tasks its filter selected among those it may move, those it
    moved, and those it left where they are because they have no queue to go to (no
    ``to``, and no dead_letter record naming their origin)."""

    matched: int
    moved: int
    no_origin: int


#: What the engine does with each step's moves (wake the target queues, count, emit).
Moved = Callable[[str, RedriveStep], Awaitable[None]]


def runner_name() -> str:
    """A name for this server's runner, unique to its process: the host and process id, as
    an operator reads them, and a random part (a process id comes again after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class MoveJobs:
    """The move jobs, kept by the store: those this server runs, and the look for those to
    take over."""

    def __init__(self, store: Store, clock: Clock, moved: Moved, step: int) -> None:
        self._store = store
        self._clock = clock
        self._moved = moved
        self._step = step
        #: Who runs the jobs this server runs, as the store records it.
        self.runner = runner_name()
        #: The jobs this server runs, by id.
        self._runs: dict[int, asyncio.Task[None]] = {}
        #: Set to end a run's wait between two steps (a cancel, a shutdown).
        self._stops: dict[int, asyncio.Event] = {}
        self._watch: asyncio.Task[None] | None = None

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

    async def start(
        self,
        queue: str,
        to: str | None,
        where: TaskFilter,
        rate: float,
        total: int,
        allowed: Collection[str] | None = None,
    ) -> MoveJob:
        """Start a move job at ``rate`` tasks a second; Conflict when one runs for the
        queue already (on any server)."""
        now = self._clock.now_ms()
        draft = MoveJob(
            queue=queue,
            to=to,
            where=where,
            allowed=None if allowed is None else tuple(sorted(allowed)),
            rate=rate,
            total=total,
            started_at=now,
            runner=self.runner,
            lease_until=now + self._lease_ms(rate),
        )
        job, created = await self._store.move_start(draft, MOVE_HISTORY)
        if not created:
            raise Conflict(
                f"a redrive of queue {queue!r} is running (moved {job.moved} so far);"
                " cancel it (DELETE) or wait for its end",
                queue=queue,
            )
        self._launch(job)
        return job

    async def job(self, queue: str) -> MoveJob:
        """The queue's last move job; NotFound when it had none."""
        jobs = await self._store.move_list(queue, 1)
        if not jobs:
            raise NotFound(f"no redrive with a rate of queue {queue!r}", queue=queue)
        return jobs[0]

    async def history(self, queue: str) -> list[MoveJob]:
        """The queue's last move jobs (up to MOVE_HISTORY), the last first."""
        return await self._store.move_list(queue, MOVE_HISTORY)

    async def find(self, job_id: int) -> MoveJob | None:
        """The move job with this id, or None."""
        return await self._store.move_get(job_id)

    async def cancel(self, queue: str, job_id: int | None = None) -> MoveJob:
        """Stop the queue's running move job (the job ``job_id``, when given), whichever
        server runs it: the job as it ends (the tasks it moved stay moved). A job that has
        ended already is answered as it is.

        The store writes the cancel after any step under way has committed, and no step
        moves anything after it: the counts answered are the job's last."""
        if job_id is None:
            job_id = (await self.job(queue)).id
        else:  # another queue's job is not this one's to cancel: checked before the write
            found = await self._store.move_get(job_id)
            if found is None or found.queue != queue:
                raise NotFound(f"no redrive with a rate of queue {queue!r}", queue=queue)
        job = await self._store.move_end(job_id, "cancelled", self._clock.now_ms())
        if job is None:
            raise NotFound(f"no redrive with a rate of queue {queue!r}", queue=queue)
        stop = self._stops.get(job_id)
        if stop is not None:  # this server runs it: its wait ends now
            stop.set()
        return job

    def forget(self, queue: str) -> None:
        """The queue is deleted (the store forgets its jobs): its runs here stop."""
        for job_id, run in list(self._runs.items()):
            if run.get_name() == _run_name(queue, job_id):
                run.cancel()

    def start_watch(self) -> None:
        """Look for jobs to take over, every TAKEOVER_EVERY seconds, until close."""
        self._watch = asyncio.create_task(self._watching(), name="katar-redrive-takeover")

    async def take_over(self) -> list[MoveJob]:
        """Take over, and run here, every running job whose lease has passed; those taken."""
        taken: list[MoveJob] = []
        while True:
            now = self._clock.now_ms()
            job = await self._store.move_take(self.runner, now, now + self._lease_ms(None))
            if job is None:
                return taken
            if job.id in self._runs:
                # This server's own run, late for a step (a long outage of the store): the
                # new lease is its, and it goes on; a second run would double the rate.
                continue
            log.info(
                "%s: redrive taken over at %g a second (moved %d so far)",
                job.queue,
                job.rate,
                job.moved,
            )
            self._launch(job)
            taken.append(job)

    async def close(self) -> None:
        """Stop looking and stop the runs here, releasing their jobs (another server, or
        this one restarted, takes them over)."""
        await background.stop(self._watch)
        self._watch = None
        for job_id, run in list(self._runs.items()):
            await background.stop(run)
            with contextlib.suppress(StoreUnavailable):
                await self._store.move_release(job_id, self.runner)

    async def _watching(self) -> None:
        while True:
            await asyncio.sleep(TAKEOVER_EVERY)
            try:
                await self.take_over()
            except StoreUnavailable:
                pass  # the next look tries again
            except Exception:  # a bug or a bad row: said, and the next look tries again
                log.exception("taking over redrives failed")

    def _lease_ms(self, rate: float | None) -> int:
        """How long a runner holds its job from now: the wait before its next step, and
        LEASE more."""
        wait = 0.0 if rate is None else self._per_step(rate) / rate
        return math.ceil((wait + LEASE) * 1000)

    def _per_step(self, rate: float) -> int:
        return max(1, min(self._step, math.floor(rate)))

    def _launch(self, job: MoveJob) -> None:
        self._stops[job.id] = asyncio.Event()
        self._runs[job.id] = asyncio.create_task(
            self._run_at_rate(job), name=_run_name(job.queue, job.id)
        )

    async def _run_at_rate(self, job: MoveJob) -> None:
        per_step = self._per_step(job.rate)
        stop = self._stops[job.id]
        try:
            while not stop.is_set():
                began = time.monotonic()
                now = self._clock.now_ms()
                lease = MoveLease(job.id, self.runner, now + self._lease_ms(job.rate))
                try:
                    step = await self._store.redrive(
                        job.queue, job.to, job.where, now, job.after, per_step, job.allowed, lease
                    )
                except StoreUnavailable:
                    await _until(stop, RETRY_AFTER)
                    continue
                await self._moved(job.queue, step)
                if step.job is None:
                    break  # its queue deleted, with its jobs
                job = step.job
                if job.state != "running" or job.runner != self.runner:
                    break  # ended (completed, cancelled), or taken over by another server
                # The step's tasks took their share of the second: wait out the rest.
                await _until(stop, max(step.matched / job.rate - (time.monotonic() - began), 0))
        except asyncio.CancelledError:
            raise  # a shutdown or a deleted queue: the job stays as the store has it
        except QueueNotFound:
            # Deleted on another server, with its jobs; or deleted between the start's
            # checks and its write, which left this job behind: it ends here, else every
            # server would take it over again and again (and run it on a queue of the same
            # name made later).
            with contextlib.suppress(StoreUnavailable):
                await self._store.move_end(
                    job.id,
                    "failed",
                    self._clock.now_ms(),
                    f"queue {job.queue!r} was deleted",
                    self.runner,
                )
        except Exception as exc:  # a bug or a bad row: the job says so, the server goes on
            log.exception("redrive of queue %s failed", job.queue)
            with contextlib.suppress(StoreUnavailable):
                await self._store.move_end(
                    job.id,
                    "failed",
                    self._clock.now_ms(),
                    str(exc) or type(exc).__name__,
                    self.runner,
                )
        finally:
            if self._runs.get(job.id) is asyncio.current_task():
                self._runs.pop(job.id, None)
                self._stops.pop(job.id, None)


def _run_name(queue: str, job_id: int) -> str:
    return f"katar-redrive-{job_id}-{queue}"


async def _until(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
