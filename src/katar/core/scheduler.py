"""The engine's scheduler: fires the schedules' ticks (katar.core.schedule).

One timer is armed for the earliest tick to come among the schedules; when it rings, the
scheduler reads the schedules from the store (other servers may have fired or changed them)
and fires what is due, each step one compare-and-set of the schedule's cursor in the store
(Store.fire_schedule): however many servers share the store, each tick makes one task, and
no server leads. A change made through this engine, or heard of from another server
(Observer.schedules_changed, or a resync after notifications were lost), rings it at once;
on a store other servers share, a server that has schedules also looks every
HOUSEKEEPING_MS.

A schedule that cannot run (katar.core.schedule.fault: stored before its checks existed, or
edited in the database) is left out: its error is logged once and shown in its record, and
the other schedules fire as usual. Each record is checked once per version (spec and cursor).

The engine makes one and gives it the store, the clock, the outages log and a callback for
each task a tick made; the engine's schedule operations read and change the schedules
through it, and it keeps them between passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from katar.core import background
from katar.core.clock import Clock, Timer
from katar.core.model import NewTask, Task
from katar.core.reaper import HOUSEKEEPING_MS
from katar.core.schedule import Schedule, ScheduleSpec, due, fault, task_data, wake_at
from katar.core.storage import Store
from katar.errors import KatarError, QueueNotFound, StoreUnavailable
from katar.logs import Outages

log = logging.getLogger("katar")


class Scheduler:
    """The schedules of an engine, fired at their ticks.

    ``made`` is told of each task a tick made (the engine wakes its queue's long polls and
    emits its event); ``retry_interval`` is the seconds before a pass the store failed is
    tried again.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        outages: Outages,
        *,
        made: Callable[[Task], None],
        retry_interval: float,
    ) -> None:
        self.store = store
        self.clock = clock
        self.outages = outages
        self._made = made
        self.retry_interval = retry_interval
        #: The schedules as last read from the store or changed through this engine.
        self.schedules: dict[str, Schedule] = {}
        self._alarm = asyncio.Event()  # the scheduler's cue: a tick or a change
        self._timer: Timer | None = None
        #: Per schedule: the version of its record last checked (spec, cursor) and its error.
        self._checks: dict[str, tuple[ScheduleSpec, int, str | None]] = {}
        #: Set when the engine begins to shut down: the scheduler ends after its current pass.
        self._draining = False
        self._job: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start firing: at once, for the ticks due now or missed while no server ran."""
        self._alarm.set()
        self._job = asyncio.create_task(self._run(), name="katar-scheduler")

    def drain(self) -> None:
        """Fire no more once the current pass, if any, ends (the engine shuts down)."""
        self._draining = True

    def changed(self) -> None:
        """A schedule changed (through this engine, or another server's): look again now."""
        self._alarm.set()

    def saved(self, schedule: Schedule) -> None:
        """This engine saved ``schedule``: keep it, and look again now."""
        self.schedules[schedule.name] = schedule
        self._alarm.set()

    def deleted(self, name: str) -> None:
        """This engine deleted the schedule ``name``: look again now."""
        self.schedules.pop(name, None)
        self._alarm.set()

    async def stop(self) -> None:
        """End the scheduler: it finishes the pass it is in, if any. Not a cancel in the
        middle of a store call: a driver may turn that into an error the loop would take
        for an outage, and go on."""
        self._draining = True
        job, self._job = self._job, None
        if job is not None:
            self._alarm.set()
            try:
                await asyncio.wait_for(asyncio.shield(job), 10)
            except TimeoutError:
                await background.stop(job)
        self._arm(None)

    async def reload(self) -> dict[str, Schedule]:
        """Read the schedules again from the store, each with its error if it cannot run;
        kept as this engine's (``schedules``) and returned."""
        loaded = await self.store.load_schedules()
        for gone in self._checks.keys() - loaded.keys():
            del self._checks[gone]
        self.schedules = {name: self.checked(schedule) for name, schedule in loaded.items()}
        return self.schedules

    def checked(self, schedule: Schedule) -> Schedule:
        """``schedule`` with its ``error`` (katar.core.schedule.fault), found once per version
        of its record and logged when it appears."""
        name, spec, cursor = schedule.name, schedule.spec, schedule.cursor
        known = self._checks.get(name)
        if known is not None and known[1] == cursor and known[0] == spec:
            error = known[2]
        else:
            error = fault(schedule)
            self._note_fault(schedule, error, known)
        return schedule if error is None else msgspec.structs.replace(schedule, error=error)

    def _note_fault(
        self,
        schedule: Schedule,
        error: str | None,
        known: tuple[ScheduleSpec, int, str | None] | None,
    ) -> None:
        if error is not None and (known is None or known[2] != error):
            log.error("schedule %s cannot run, its ticks pass: %s", schedule.name, error)
        self._checks[schedule.name] = (schedule.spec, schedule.cursor, error)

    def _broken(self, schedule: Schedule, exc: Exception) -> Schedule:
        """A schedule whose ticks failed to compute although its check passed: set aside as
        one that cannot run, not retried until its record changes."""
        error = f"its ticks cannot be computed ({exc!r}); PUT it again or DELETE it"
        self._note_fault(schedule, error, self._checks.get(schedule.name))
        return msgspec.structs.replace(schedule, error=error)

    def _wake_of(self, name: str, schedule: Schedule) -> int | None:
        try:
            return wake_at(schedule)
        except Exception as exc:  # one schedule's failure must not stop the others
            self.schedules[name] = self._broken(schedule, exc)
            return None

    def _arm(self, when: int | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self.clock.call_at(when, self._alarm.set)

    async def _run(self) -> None:
        while True:
            await self._alarm.wait()
            self._alarm.clear()
            if self._draining:
                return
            now = self.clock.now_ms()
            try:
                refused = await self._fire_due(now)
                wake = min(
                    (
                        t
                        for name, s in list(self.schedules.items())
                        if (t := self._wake_of(name, s)) is not None
                    ),
                    default=None,
                )
                if refused and wake is not None:  # not at once again: after a pause
                    wake = max(wake, now + round(self.retry_interval * 1000))
            except StoreUnavailable as exc:  # said once per outage, not at every pass
                self.outages.down(exc.message)
                wake = now + round(self.retry_interval * 1000)
            except Exception:
                log.exception("firing schedules failed; trying again in %.2fs", self.retry_interval)
                wake = now + round(self.retry_interval * 1000)
            if self.store.shared and self.schedules:
                # A notification lost (a server changed a schedule) is seen within a second;
                # with no schedule at all, an idle server arms nothing for them.
                housekeeping = self.clock.now_ms() + HOUSEKEEPING_MS
                wake = housekeeping if wake is None else min(wake, housekeeping)
            self._arm(wake)

    async def _fire_due(self, now: int) -> bool:
        """Fire every tick due at ``now``, as the store has the schedules; whether the store
        refused one."""
        refused = False
        await self.reload()
        for name, schedule in list(self.schedules.items()):
            try:
                steps = due(schedule, now)  # none for a schedule that cannot run
            except Exception as exc:  # one schedule's failure must not stop the others
                self.schedules[name] = self._broken(schedule, exc)
                continue
            for step in steps:
                spec = schedule.spec
                task = None
                if step.task:
                    data = msgspec.Raw(task_data(spec))
                    task = NewTask(data=data, priority=int(spec.priority))
                try:
                    try:
                        fired = await self.store.fire_schedule(
                            name, schedule.cursor, step.tick, task, now
                        )
                    except QueueNotFound:
                        # The store is the authority on queues (another server may have made
                        # the queue, and this one not heard yet): only when it has none does
                        # the tick pass without a task.
                        log.warning(
                            "schedule %s: no queue %s: its tick passes without a task",
                            name,
                            spec.queue,
                        )
                        fired = await self.store.fire_schedule(
                            name, schedule.cursor, step.tick, None, now
                        )
                except KatarError as exc:
                    if isinstance(exc, StoreUnavailable):
                        raise
                    log.warning("schedule %s not fired: %s", name, exc.message)
                    refused = True
                    break
                if not fired.won:
                    break  # another server fired it, or the schedule changed: read it again
                schedule = msgspec.structs.replace(
                    schedule,
                    cursor=step.tick,
                    last_tick=step.tick,
                    last_task=schedule.last_task if fired.task is None else fired.task.id,
                )
                self.schedules[name] = schedule
                if fired.task is not None:
                    log.info("schedule %s: task %d in queue %s", name, fired.task.id, spec.queue)
                    self._made(fired.task)
        return refused
