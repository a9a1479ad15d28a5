"""The engine: Katar's operations over a store, with long polls, leases and events.

The store makes each operation atomic and durable; the engine adds what lives in the
process: the queues' options (read once, kept current by every change made through this
engine, and read again by the reloader when another server changed them), the long polls
parked on each queue, the reaper that expires leases and promotes due tasks, the scheduler,
the pruner of finished tasks, and the listeners that user code registers for status
changes. Those parts are objects of their own (see Engine), composed here, not inherited.

Time comes from a :class:`~katar.core.clock.Clock`. The reaper sleeps until the earliest
deadline the engine knows (a lease's end, a delay's end): the store's own earliest, read
after each reap, or an earlier one the engine just made (a claim, an enqueue with a delay, a
retry's backoff), which re-arms the timer at once. With nothing due it sleeps until something
happens, except on a store other servers write to (see Store.shared). A poll never waits on
the timer: one made past a known deadline reaps first, so it finds what came due.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import msgspec

from katar.core import idempotency, model, rules
from katar.core.clock import Clock, SystemClock
from katar.core.counters import Counters, DeliveryStarts
from katar.core.listeners import Listener as Listener  # the API names it from here
from katar.core.listeners import Listeners
from katar.core.model import (
    CANCELLED,
    DONE,
    EVERY_TASK,
    FAILED,
    PAUSED,
    PUBLIC_STATUS,
    READY,
    RUNNING,
    SCHEDULED,
    STATUSES,
    WAITING,
    WAITING_COUNT,
    Ack,
    Edit,
    NewTask,
    QueueOptions,
    State,
    Task,
    TaskFilter,
    check_dead_letter,
    check_queue_name,
    check_text,
    parse_queue_options,
)
from katar.core.moves import MAX_RATE, MoveJob, MoveJobs, Redrive
from katar.core.outcomes import OutcomeWaits
from katar.core.pruner import Pruner
from katar.core.reaper import HOUSEKEEPING_MS, Reaper
from katar.core.reloader import Reloader
from katar.core.rules import (
    BULK_STATES,
    REDRIVE_STATES,
    check_edges,
    is_final,
    unknown_parent,
    with_expiry,
)
from katar.core.schedule import (
    Schedule,
    ScheduleSpec,
    check_fires,
    check_name,
    not_found,
    parse_schedule,
)
from katar.core.scheduler import Scheduler
from katar.core.storage import Change, Event, LimitState, RedriveStep, Store
from katar.core.waits import WaitList
from katar.core.workers import WorkerNames
from katar.errors import (
    ConfigError,
    QueueNotFound,
    ScheduleNotFound,
    ShuttingDown,
    TaskNotFound,
    ValidationError,
)
from katar.logs import Outages

log = logging.getLogger("katar")

#: A delivered task's lease end (a claimed task always has one).
_LEASE_UNTIL: Final[Callable[[Task], int]] = operator.attrgetter("lease_until")

#: The tasks one step of a bulk action takes, in one transaction: small enough that the
#: polls queued behind it wait milliseconds, large enough that a million tasks take seconds.
BULK_STEP: Final = 1000
#: GET /v1/workers lists the workers seen in this last time (ms).
WORKERS_SEEN_MS: Final = 3_600_000
#: The most worker names remembered, for all queues (names are the clients' to choose):
#: beyond, a new name takes the place of the longest unseen of the queue with the most.
MAX_WORKERS_SEEN: Final = 10_000


def _log_overridden(name: str, stored: QueueOptions, declared: QueueOptions) -> None:
    """Say at start-up which stored options of a queue its ``[queues.NAME]`` table replaces:
    a queue made or changed over HTTP is otherwise reset in silence by a file that names it
    (every option the table leaves out takes its default)."""
    # Never the push secrets: the log is no place for them.
    old = msgspec.to_builtins(model.public_options(stored))
    new = msgspec.to_builtins(model.public_options(declared))
    changes = ", ".join(
        f"{key} {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    )
    log.warning(
        "queue %s: the configuration file's [queues.%s] replaces its stored options: %s",
        name,
        name,
        changes,
    )


class Engine:
    """Katar's operations. Open it before use and close it after; all methods are async.

    It is made of objects with their own state, each given what it needs: the long polls
    parked per queue (katar.core.waits), the producers waiting for an outcome
    (katar.core.outcomes), the reaper of deadlines (katar.core.reaper), the scheduler
    (katar.core.scheduler), the names of the workers seen (katar.core.workers), the
    listeners (katar.core.listeners), the reload of the queues' options
    (katar.core.reloader) and the pruner (katar.core.pruner). The engine calls them; the
    reaper, the scheduler and the reloader call back through the one callback each is given
    (what a reap changed, what a tick made, the options read).
    """

    def __init__(
        self, store: Store, *, reap_interval: float = 0.25, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.queues: dict[str, QueueOptions] = {}
        #: Seconds before the reaper tries again after the store failed it.
        self.reap_interval = reap_interval
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.draining = False
        #: The store's outages, logged once each (by the reaper, the scheduler, the reload of
        #: the queues and the HTTP app's requests).
        self.outages = Outages(store.failing)
        #: What this process has done since it started, per queue (katar.core.counters).
        self.counters = Counters()
        self._waits = WaitList(self.clock)
        self._outcomes = OutcomeWaits()
        self._reaper = Reaper(
            store,
            self.clock,
            self.outages,
            queues=self.queue_options,
            expired=self._expired,
            retry_interval=reap_interval,
        )
        self._scheduler = Scheduler(
            store, self.clock, self.outages, made=self._made, retry_interval=reap_interval
        )
        self._workers = WorkerNames(MAX_WORKERS_SEEN)
        self._events = Listeners()
        #: This server's own writes of queues' options, numbered, and the number of the last
        #: one before the reload running began reading: a reload must not undo a write that
        #: came while it read (the store's notification of that write brings another).
        self._queue_writes = 0
        self._written: dict[str, int] = {}
        self._reload_mark = 0
        self._reloader = Reloader(
            store, self.outages, reloaded=self._reloaded, reading=self._reload_reading
        )
        self._pruner = Pruner(store, self.clock, self.outages, queues=self.queue_options)
        # The collaborators' methods that the operations call, bound once: a poll calls
        # them, and through these names the operations read as before.
        self._wake = self._waits.wake
        self._expect = self._reaper.expect
        self._listeners = self._events.by_event  # a dict: tested before anything is emitted
        #: Completion webhooks (katar.push.notify): how an event's body is made from its
        #: name and the task as it ended, while some queue has a notify option (see
        #: notify_with); None otherwise, and a plain server pays one test per operation.
        self.notifier: Callable[[str, Task], bytes] | None = None
        #: Called after a change that kept events in the outbox (the sender looks).
        self.outbox_written: Callable[[], None] | None = None
        self._kept_events = False  # events kept since the last change applied
        #: Set by a server that exports spans on a store other servers share: a settle
        #: span needs the acked task's trace context, which the task's row holds and which
        #: the server that delivered it may not be this one. The stores then hand back the
        #: rows of tasks finished "done" (see watching), which they do not otherwise.
        self.trace_settles = False
        self._emit = self._events.emit
        store.attach(self)
        #: Called with a queue's new options before they are saved, by the fronts that
        #: serve them (the push dispatcher: its outbound safety, and a pusher that must stop
        #: before the change wakes its claim): each may raise ValidationError.
        self.option_checks: list[Callable[[str, QueueOptions], None]] = []
        #: When this process delivered each task it leased, for katar_run_seconds.
        self._delivered_at = DeliveryStarts()
        #: Redrives (katar.core.moves): those at a rate run in the background.
        self._moves = MoveJobs(store, self.clock, self._redriven, BULK_STEP)

    # -- life cycle ------------------------------------------------------------------------

    async def open(
        self,
        declared: Mapping[str, QueueOptions] | None = None,
        schedules: Mapping[str, ScheduleSpec] | None = None,
    ) -> None:
        """Open the store, load its queues and schedules, create or update the ``declared``
        queues and the ``schedules`` (those the store has and these do not name stay)."""
        await self.store.open()
        self.queues = await self.store.load_queues()
        declared = dict(declared or {})
        # The queues that others name as their dead_letter first: a queue declared with a
        # dead_letter would otherwise create its target with default options, which the
        # target's own declaration would then replace (and warn of).
        targets = {o.dead_letter for o in declared.values() if o.dead_letter is not None}
        for name, options in sorted(declared.items(), key=lambda item: item[0] not in targets):
            stored = self.queues.get(name)
            if stored is not None and stored.paused and not options.paused:
                # A pause made during an incident outlasts a restart: only PATCH lifts it.
                options = msgspec.structs.replace(options, paused=True)
            options = model.settle_push(stored, options)  # the file names no secret
            if stored is not None and stored != options:
                _log_overridden(name, stored, options)
            try:
                await self.put_queue(name, options)
            except ValidationError as exc:  # a front's check (a push URL not allowed)
                raise ConfigError(f"[queues.{name}] {exc.message}") from None
        stored_schedules = await self._scheduler.reload()
        for name, spec in (schedules or {}).items():
            kept = stored_schedules.get(name)
            if kept is not None and kept.spec.paused and not spec.paused:
                spec = msgspec.structs.replace(spec, paused=True)  # as a queue's pause
            try:
                await self.put_schedule(name, spec)
            except QueueNotFound as exc:  # a mistake in the declaration: start-up stops
                raise ConfigError(f"[schedules.{name}] queue: {exc.message}") from None
            except ValidationError as exc:  # e.g. a cron that never fires
                field = exc.details.get("field", "cron")
                raise ConfigError(f"[schedules.{name}] {field}: {exc.message}") from None
        await self.store.listen(self)
        await self._reaper.start()
        self._pruner.start()
        self._scheduler.start()
        self._moves.start_watch()

    def begin_shutdown(self) -> None:
        """Stop parking long polls and release those parked (they answer 204)."""
        self.draining = True
        self._scheduler.drain()
        self._waits.release_all()
        self._outcomes.release_all()

    async def close(self) -> None:
        """Release waiters, stop the reaper, and close the store."""
        self.begin_shutdown()
        await self._moves.close()
        await self._scheduler.stop()
        await self._reaper.stop()
        await self._pruner.stop()
        await self._reloader.stop()
        await self.store.close()

    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable when it does not."""
        await self.store.ping()

    # -- queues ----------------------------------------------------------------------------

    def queue_options(self) -> Mapping[str, QueueOptions]:
        """Every queue this server knows, with its options (a read-only view)."""
        return MappingProxyType(self.queues)

    def options(self, queue: str) -> QueueOptions:
        """The queue's options; QueueNotFound when there is no such queue."""
        try:
            return self.queues[queue]
        except KeyError:
            raise QueueNotFound(queue=queue) from None

    async def find_queue(self, name: str) -> QueueOptions | None:
        """The queue's options; when this server does not know the queue, as the store has
        them (another server may have made it, its notification not here yet), kept from
        then on; None when the store has no such queue either."""
        options = self.queues.get(name)
        if options is None:
            options = await self.store.load_queue(name)
            if options is not None:
                options = self.queues.setdefault(name, options)  # unless a reload was faster
        return options

    async def put_queue(self, name: str, options: QueueOptions) -> QueueOptions:
        """Create the queue or replace its options. A ``dead_letter`` queue that does not
        exist is created with default options."""
        check_queue_name(name)
        check_dead_letter(name, options)
        old = self.queues.get(name)
        if options.push is not None or options.notify is not None:
            options = model.settle_push(old, options)
        for check in self.option_checks:
            check(name, options)
        target = options.dead_letter
        if target is not None and await self.find_queue(target) is None:
            await self.put_queue(target, QueueOptions())
        await self.store.save_queue(name, options)
        if old is None:
            log.info("queue %s created", name)
        elif old.paused != options.paused:
            log.info("queue %s %s", name, "paused" if options.paused else "resumed")
        self.queues[name] = options
        self._wrote(name)
        if old is not None and old != options:
            self._waits.wake_all(name)  # resumed, or a limit moved: the long polls look again
        return options

    async def patch_queue(self, name: str, changes: Mapping[str, Any]) -> QueueOptions:
        """Change some of the queue's options and keep the others (top-level keys: a
        ``configuration`` given replaces the whole configuration; null removes a limit)."""
        current = msgspec.to_builtins(self.options(name))
        return await self.put_queue(name, parse_queue_options({**current, **changes}))

    async def rotate_notify_secret(self, name: str, grace_ms: int) -> QueueOptions:
        """Give the queue's notify option a fresh secret; the old one signs too for
        ``grace_ms``."""
        options = model.rotated(self.options(name), self.clock.now_ms(), grace_ms, "notify")
        return await self.put_queue(name, options)

    # -- the completion webhooks' outbox (katar.push.notify; see Store.notify) --

    def notify_with(self, body: Callable[[str, Task], bytes] | None) -> None:
        """Keep the completion webhooks' events from now on, each made by ``body(event,
        task)``, in the transaction of the task's end (Store.notify); None: keep none."""
        self.notifier = body
        self.store.notify = None if body is None else self._ended

    def _ended(self, changes: Sequence[Change]) -> list[Event]:
        """The events that changes make (Store.notify): each end of a task that rules.ended
        names and its queue's notify option asks for."""
        body = self.notifier
        if body is None:
            return []
        queues = self.queues
        events: list[Event] = []
        for task, old, origin in changes:
            ended = rules.ended(task, old, origin)
            if ended is None:
                continue
            queue, event = ended
            options = queues.get(queue)
            notify = None if options is None else options.notify
            if notify is not None and event in notify.events:
                events.append((queue, task.id, body(event, task)))
        if events:
            self._kept_events = True
        return events

    async def outbox_trim(self, keep: int) -> dict[str, int]:
        """Drop the oldest events of each notify queue past ``keep``; how many, by queue."""
        queues = [name for name, options in self.queues.items() if options.notify is not None]
        return await self.store.outbox_trim(queues, keep) if queues else {}

    async def outbox_pending(self, queue: str) -> tuple[int, int]:
        """The queue's events not yet sent: (how many, those that failed a send)."""
        self.options(queue)
        return await self.store.outbox_pending(queue)

    async def outbox_take(self, limit: int, lease_ms: int) -> list[model.OutboxRow]:
        """Events to send now, each the first of its task, held by this server a while."""
        return await self.store.outbox_take(limit, self.clock.now_ms(), lease_ms)

    async def outbox_delete(self, ids: Sequence[int]) -> None:
        """Forget events sent."""
        await self.store.outbox_delete(ids)

    async def outbox_retry(self, event_id: int, delay_ms: int) -> None:
        """An event's send failed: it is sent again in ``delay_ms``."""
        await self.store.outbox_retry(event_id, self.clock.now_ms() + delay_ms)

    async def rotate_push_secret(self, name: str, grace_ms: int) -> QueueOptions:
        """Give the push queue a fresh secret; the old one signs too for ``grace_ms``."""
        options = model.rotated(self.options(name), self.clock.now_ms(), grace_ms)
        return await self.put_queue(name, options)

    async def delete_queue(self, name: str) -> int:
        """Remove the queue and its tasks; the number of tasks removed."""
        self.options(name)
        count = await self.store.delete_queue(name, self.clock.now_ms())
        self.queues.pop(name, None)
        self._wrote(name)
        self.counters.forget(name)
        self._moves.forget(name)
        log.info("queue %s deleted with its %d task(s)", name, count)
        self._waits.drop(name)  # its long polls look again, and find no queue
        return count

    async def limit_state(self, queue: str) -> LimitState:
        """Where the queue stands against its rate limits and key_concurrency."""
        options = self.options(queue)
        if options.rate is None and options.key_concurrency is None and options.key_rate is None:
            return LimitState()
        return await self.store.limit_state(queue, options, self.clock.now_ms())

    async def oldest_queued(self) -> dict[str, int]:
        """For every queue with ready tasks, when its head (the next task a poll takes)
        became ready (ms): how long the queue keeps work waiting."""
        return await self.store.heads()

    async def workers(
        self, visible: Callable[[str], bool] = lambda _queue: True
    ) -> list[tuple[str, list[str], int, int]]:
        """The workers that polled this server in the last WORKERS_SEEN_MS, by name:
        (name, the queues they polled that ``visible`` lets through, last poll (ms), tasks
        in progress leased to that name on those queues)."""
        now = self.clock.now_ms()
        since = now - WORKERS_SEEN_MS
        running = await self.store.running_by_worker()
        polled = self._workers.since(since, visible)
        found = []
        for name, queues in sorted(polled.items()):
            busy = sum(running.get((q, name), 0) for q in queues)
            found.append((name, sorted(queues), max(queues.values()), busy))
        return found

    async def prune_finished(self) -> int:
        """Retention: remove the finished tasks that their queue's ``keep`` no longer keeps
        (katar.core.pruner, which also does it once a minute); how many."""
        return await self._pruner.prune()

    async def stats(self) -> dict[str, dict[str, int]]:
        """Every queue's task counts by public status, and the queued tasks that wait for
        others apart from the others (under "waiting", not in "queued")."""
        counts = await self.store.counts()
        result = {}
        for name in sorted(self.queues):
            per_status = dict.fromkeys((*STATUSES, WAITING_COUNT), 0)
            for state, count in counts.get(name, {}).items():
                per_status[WAITING_COUNT if state is WAITING else PUBLIC_STATUS[state]] += count
            result[name] = per_status
        return result

    # -- schedules (katar.core.schedule; fired by katar.core.scheduler) --------------------

    # A token limited to some queues (``may_use``) sees and manages the schedules of those
    # queues only: another scope's schedule is answered as one that does not exist.

    async def list_schedules(self, may_use: Callable[[str], bool] | None = None) -> list[Schedule]:
        """Every schedule (of the queues ``may_use`` allows), by name, as the store has it
        now; one that cannot run has its ``error``."""
        schedules = await self._scheduler.reload()
        listed = [schedules[name] for name in sorted(schedules)]
        return [s for s in listed if may_use is None or may_use(s.spec.queue)]

    async def get_schedule(
        self, name: str, may_use: Callable[[str], bool] | None = None
    ) -> Schedule:
        """The schedule as the store has it now; ScheduleNotFound when there is none, or
        when ``may_use`` does not allow its queue."""
        schedule = (await self._scheduler.reload()).get(name)
        if schedule is None or (may_use is not None and not may_use(schedule.spec.queue)):
            raise not_found(name)
        return schedule

    async def put_schedule(
        self, name: str, spec: ScheduleSpec, may_use: Callable[[str], bool] | None = None
    ) -> Schedule:
        """Create the schedule or replace its spec. A new schedule's first tick is the first
        after now; a schedule resumed (paused before, not now), or replacing one that could
        not run, skips the ticks before now. It must have a tick to come (ValidationError).
        ``may_use`` must allow the queue of the schedule it replaces (else ScheduleNotFound):
        the caller checks the new spec's queue."""
        check_name(name)
        if await self.find_queue(spec.queue) is None:
            raise QueueNotFound(
                f"schedule {name!r}: no queue {spec.queue!r}; create the queue first",
                queue=spec.queue,
            )
        now = self.clock.now_ms()
        check_fires(spec, now)
        old = (await self.store.load_schedules()).get(name)  # another server's, maybe
        if old is not None and may_use is not None and not may_use(old.spec.queue):
            raise ScheduleNotFound(
                f"schedule name {name!r} is taken by a schedule this token may not manage;"
                " choose another name",
                schedule=name,
            )
        fresh = (
            old is None
            or self._scheduler.checked(old).error is not None
            or (old.spec.paused and not spec.paused)
        )
        cursor = now if fresh else None
        saved = await self.store.save_schedule(name, spec, cursor)
        if old is None:
            log.info("schedule %s created", name)
        elif old.spec.paused != spec.paused:
            log.info("schedule %s %s", name, "paused" if spec.paused else "resumed")
        self._scheduler.saved(saved)
        return saved

    async def patch_schedule(
        self,
        name: str,
        changes: Mapping[str, Any],
        may_use: Callable[[str], bool] | None = None,
    ) -> Schedule:
        """Change some fields of the schedule (e.g. ``{"paused": true}``), keep the others.
        One that cannot run is refused (ValidationError): PUT it whole, or delete it."""
        schedule = await self.get_schedule(name, may_use)
        if schedule.error is not None:
            raise ValidationError(f"schedule {name!r} cannot run: {schedule.error}", schedule=name)
        current = msgspec.to_builtins(schedule.spec)
        return await self.put_schedule(name, parse_schedule({**current, **changes}), may_use)

    async def delete_schedule(
        self, name: str, may_use: Callable[[str], bool] | None = None
    ) -> None:
        """Remove the schedule; the tasks it made stay. ScheduleNotFound when there is none,
        or when ``may_use`` does not allow its queue."""
        if may_use is not None:
            await self.get_schedule(name, may_use)
        if not await self.store.delete_schedule(name):
            raise not_found(name)
        log.info("schedule %s deleted", name)
        self._scheduler.deleted(name)

    def _made(self, task: Task) -> None:
        enqueued = self.counters.enqueued
        enqueued[task.queue] = enqueued.get(task.queue, 0) + 1
        if task.state is READY:
            self._wake(task.queue, 1)
        if self._listeners:
            self._emit(task)

    # -- tasks -----------------------------------------------------------------------------

    async def enqueue(
        self,
        queue: str,
        tasks: Sequence[NewTask],
        key: str | None = None,
        may_use: Callable[[str], bool] | None = None,
    ) -> list[Task]:
        """Add tasks to the queue; the new tasks, in order.

        With an idempotency ``key`` (see katar.core.idempotency) that this queue saw in the
        last 24 hours: create nothing and return the tasks as that enqueue created them.
        Tasks may wait for others (``after``): ``may_use`` says which queues' tasks the
        caller may name (None: any), the others are refused as if they did not exist.
        """
        expires = self.options(queue).expires
        if self.draining:
            raise ShuttingDown()
        given = tasks  # what an idempotency key's digest is of (not the queue's defaults)
        if expires is not None:  # the queue's default expires_in
            tasks = with_expiry(tasks, expires)
        if any(spec.after or spec.refs for spec in tasks):
            await self._check_after(tasks, may_use)
        now = self.clock.now_ms()
        if key is None:
            created = await self.store.enqueue(queue, tasks, now)
        else:
            once = idempotency.idempotency(key, given)
            created, new = await self.store.enqueue_once(queue, tasks, now, once)
            if not new:
                return created
            self._reaper.keyed(now)  # keys to forget: the reaper prunes once a minute
        answered = created
        if any(task.duplicate or task.debounced for task in created):
            # unique_keys already held, waiting tasks debounced: not new.
            created = [task for task in created if not (task.duplicate or task.debounced)]
            for task in answered:
                if task.debounced:
                    self._debounced(task)
        enqueued = self.counters.enqueued
        enqueued[queue] = enqueued.get(queue, 0) + len(created)
        ready = sum(1 for task in created if task.state is READY)
        if ready:
            self._wake(queue, ready)
        if ready < len(created):  # delayed (or paused) tasks: a delay's end may come first
            for task in created:
                if task.state is SCHEDULED:
                    self._expect(task.run_at)
        for task in created:
            if task.expires_at is not None:  # a deadline (expires_in) to keep
                self._expect(task.expires_at)
        if self._listeners:
            for task in created:
                self._emit(task)
        return answered

    def _debounced(self, task: Task) -> None:
        """A waiting task that an enqueue debounced: its due time moved (maybe earlier)."""
        if task.state is READY:  # a run_at that has passed: due at once
            self._wake(task.queue, 1)
        elif task.state is SCHEDULED:
            self._expect(task.run_at)
        if task.expires_at is not None:
            self._expect(task.expires_at)

    async def _check_after(
        self, tasks: Sequence[NewTask], may_use: Callable[[str], bool] | None
    ) -> None:
        """Refuse an ``after`` that names too many tasks, a later task of the batch, or a
        task that does not exist or that the caller may not see. (The store checks again,
        in the enqueue's transaction, that each still exists.)"""
        check_edges(tasks)
        for index, spec in enumerate(tasks):
            for ref in spec.refs:
                if not 0 <= ref < index:
                    raise ValidationError(
                        f'tasks[{index}].after: "${ref}" must name an earlier task of the '
                        f"request (0 to {index - 1})",
                        field="after",
                    )
        named = list(dict.fromkeys(i for spec in tasks for i in spec.after))
        if not named:
            return
        found = await self.store.queues_of(named)
        for index, spec in enumerate(tasks):
            for parent_id in spec.after:
                where = found.get(parent_id)
                if where is None or (may_use is not None and not may_use(where)):
                    raise unknown_parent(f"tasks[{index}]", parent_id)

    async def poll(
        self,
        queue: str,
        acks: Sequence[Ack] = (),
        limit: int = 1,
        wait: float = 0.0,
        worker: str | None = None,
        gone: asyncio.Future[Any] | None = None,
        cancel: list[int] | None = None,
        settled: list[Task] | None = None,
    ) -> list[Task]:
        """Apply a worker's acks, then deliver up to ``limit`` tasks (capped by max_batch).

        ``limit`` 0 applies the acks and takes nothing (a worker resending acks after a
        transient error must not claim twice). With ``wait`` > 0 and nothing to deliver,
        park up to ``wait`` seconds and deliver as soon as a task becomes ready. ``gone`` is
        a future that completes when the client disconnects: the long poll then ends without
        claiming anything. ``cancel``, when given, receives the ids of the tasks that the
        worker must stop: those whose heartbeat in ``acks`` found them cancelled by an
        operator (a poll that has some answers at once, without waiting). ``settled``, when
        given, receives the tasks the acks changed as the store handed them back (their
        new versions; a task finished "done" only when someone watches, see
        :meth:`watching`): a settle span's trace contexts.
        """
        options = self.options(queue)
        limit = min(limit, options.max_batch)
        check_text(worker, acks)
        wakes = self._waits.wakes
        seen = wakes.get(queue, 0)
        clock = self.clock
        now = clock.now_ms()
        if worker is not None:
            self._workers.saw(worker, queue, now)
        reaper = self._reaper
        if reaper.due is not None and reaper.due <= now:
            now = await reaper.catch_up(now)
        result = await self.store.poll(queue, options, acks, limit, worker, now)
        if acks:
            self._count_acks(queue, acks, now)
        if result.changes:
            self._apply(result.changes)
            if settled is not None:
                settled.extend(change.task for change in result.changes)
        if result.held is not None:
            self.counters.limited(queue, result.held)
        if acks and options.limited:
            # Finished tasks free room under a limit: the long polls parked on it look again
            # (the changes may leave out tasks finished "done", see Store.watch; a heartbeat
            # that found its task cancelled finished it too).
            finished = sum(1 for ack in acks if ack.status != "in progress")
            self._wake(queue, finished + len(result.cancel))
        if result.cancel and cancel is not None:
            cancel.extend(dict.fromkeys(result.cancel))  # once each, in the acks' order
        if result.delivered:  # _leased, inline: this is every worker's poll
            lease_until = result.delivered[0].lease_until
            if len(result.delivered) > 1:  # tasks with a timeout of their own lease apart
                # Every task a claim delivers has its lease's end: their earliest, in C.
                lease_until = min(map(_LEASE_UNTIL, result.delivered))
            if lease_until is not None and (reaper.due is None or lease_until < reaper.due):
                self._expect(lease_until)
        if result.delivered or wait <= 0 or limit == 0 or result.cancel:
            return self._deliver(result.delivered, now)
        deadline = now + wait * 1000
        recheck = self._recheck_at(options, result.retry_at, now)
        while True:
            if wakes.get(queue, 0) == seen:  # nothing new since the last look
                if deadline - clock.now_ms() <= 0 or self.draining:
                    return []
                until = deadline if recheck is None else min(deadline, recheck)
                if not await self._waits.park(queue, until, gone):
                    if self.draining or (gone is not None and gone.done()):
                        return []
                    if clock.now_ms() >= deadline:
                        return []
                    # else: a limit's time to look again has come (see _recheck_at)
            if gone is not None and gone.done():  # woken as the poller left: take nothing
                return []
            seen = wakes.get(queue, 0)
            options = self.options(queue)
            now = clock.now_ms()
            if reaper.due is not None and reaper.due <= now:
                now = await reaper.catch_up(now)
            result = await self.store.poll(queue, options, (), limit, worker, now)
            if result.held is not None:
                self.counters.limited(queue, result.held)
            if result.delivered:
                self._leased(result.delivered)
                return self._deliver(result.delivered, now)
            recheck = self._recheck_at(options, result.retry_at, now)

    def _recheck_at(self, options: QueueOptions, retry_at: int | None, now: int) -> int | None:
        """When a long poll on a limited queue looks again without a wake-up: when the rate
        limit's bucket holds a token again; on a store other servers share, at least every
        HOUSEKEEPING_MS, since a task they finish frees room that this server hears nothing
        of. A pause is lifted through the queue's options, which wake every long poll."""
        if retry_at is not None:
            return retry_at
        if options.limited and not options.paused and self.store.shared:
            return now + HOUSEKEEPING_MS
        return None

    def _deliver(self, tasks: list[Task], now: int) -> list[Task]:
        if tasks:
            counters = self.counters
            delivered = counters.delivered
            queue = tasks[0].queue
            delivered[queue] = delivered.get(queue, 0) + len(tasks)
            # The first deliveries: how long the tasks waited, since their creation (a delay
            # included: a claimed task keeps no run_at).
            waited = [now - task.created_at for task in tasks if task.attempts == 1]
            self._delivered_at.started(tasks, now)
            if waited:
                counters.observe(counters.wait, queue, waited)
        if self._listeners:
            for task in tasks:
                self._emit(task)
        return tasks

    def _count_acks(self, queue: str, acks: Sequence[Ack], now: int) -> None:
        """Count the "done" acks of an applied poll, and observe how long each delivery an
        ack ends (done or failed) ran, when this process made it. The failed acks are counted
        from the changes (_apply), which every store reports, unlike those of "done".
        Heartbeats that set their lease's end (``lease``, SQS's ChangeMessageVisibility) may
        end it before the reaper's next deadline: it must wake then, not at the queue's
        timeout (looked for here, in the one pass over the acks)."""
        done = 0
        started = self._delivered_at
        counters = self.counters
        ended: list[str | int] = []
        shortest = None
        for ack in acks:
            status = ack.status
            if status == "done":
                done += 1
            elif status == "in progress":
                if started:
                    task_id = ack.task_id
                    started.extended(task_id if isinstance(task_id, str) else str(task_id), now)
                lease = ack.lease
                if lease and (shortest is None or lease < shortest):
                    shortest = lease
                continue
            ended.append(ack.task_id)
        if ended:
            ran = started.ran(ended, now)
            if ran:
                counters.observe(counters.run, queue, ran)
        if done:
            counters.add(counters.done, queue, done)
        if shortest is not None:
            due = self._reaper.due
            if due is None or now + shortest < due:
                self._expect(now + shortest)

    def _leased(self, tasks: list[Task]) -> None:
        # The lease's end is a deadline, earlier than the known one when the timer is idle
        # or this lease is shorter than another's. The tasks of one claim lease for the
        # queue's timeout, or for their own.
        lease_until = min(t.lease_until or 0 for t in tasks) or None
        due = self._reaper.due
        if lease_until is not None and (due is None or lease_until < due):
            self._expect(lease_until)

    async def get_task(self, queue: str, task_id: int, wait: float = 0.0) -> Task:
        """The task; with ``wait`` > 0, wait up to that many seconds for it to finish."""
        self.options(queue)
        if wait <= 0 or self.draining:
            return await self._existing(queue, task_id)
        return await self._outcomes.wait(lambda: self._existing(queue, task_id), task_id, wait)

    async def _existing(self, queue: str, task_id: int) -> Task:
        task = await self.store.get_task(queue, task_id)
        if task is None:
            raise await self._not_here(queue, task_id)
        return task

    async def _not_here(self, queue: str, task_id: int) -> TaskNotFound:
        """The answer for a task the queue does not hold: when it failed for good there and
        moved to the queue's dead-letter queue, it says where (``moved_to``), so that a
        producer holding the id finds it."""
        where = (await self.store.queues_of([task_id])).get(task_id)
        if where is not None and where != queue:
            moved = await self.store.get_task(where, task_id)
            if moved is not None and moved.dead_letter and moved.dead_letter.queue == queue:
                return TaskNotFound(
                    f"task {task_id} is no longer in queue {queue!r}: it failed for good"
                    f" there and moved to the dead-letter queue {where!r}; read it there",
                    _id=str(task_id),
                    moved_to=where,
                )
        return TaskNotFound.named(task_id, queue)

    async def list_tasks(
        self,
        queue: str,
        where: TaskFilter = EVERY_TASK,
        limit: int = 100,
        after: int = 0,
        newest_first: bool = False,
    ) -> list[Task]:
        """Tasks of the queue that ``where`` selects, by id (descending, ``newest_first``),
        from the cursor ``after`` (an id; 0 for the first page)."""
        self.options(queue)
        return await self.store.list_tasks(queue, where, limit, after, newest_first)

    async def linked(
        self,
        queue: str,
        task_id: int,
        limit: int = 100,
        after: int = 0,
        may_use: Callable[[str], bool] | None = None,
        parents: bool = False,
    ) -> list[Task]:
        """The tasks that named the task in their ``after`` (its children, of any queue),
        or with ``parents`` those it named that are still there, by id from the cursor
        ``after``. ``may_use`` says which queues' tasks the caller may see (None: any); the
        others are left out. TaskNotFound when there is no such task."""
        self.options(queue)
        queues = None if may_use is None else [q for q in self.queue_options() if may_use(q)]
        found = await self.store.linked(queue, task_id, limit, after, queues, parents)
        if found is None:
            raise TaskNotFound.named(task_id, queue)
        return found

    async def bulk(
        self, queue: str, action: str, where: TaskFilter, dry_run: bool = False
    ) -> tuple[int, int]:
        """Retry, cancel or delete every task of the queue that ``where`` selects:
        (matched, changed). Applied in steps of BULK_STEP tasks, each atomic, so that other
        requests go in between; a task that the filter selects once a step has passed it
        (enqueued meanwhile) is not touched. ``dry_run`` counts and changes nothing."""
        self.options(queue)
        if action not in BULK_STATES:
            raise ValidationError(f"unknown action {action!r}; use retry, cancel or delete")
        if dry_run:
            matched = await self.store.count_tasks(queue, where)
            applies = BULK_STATES[action]
            states = applies if where.states is None else applies.intersection(where.states)
            changed = 0
            if states:
                narrowed = msgspec.structs.replace(where, states=tuple(sorted(states)))
                changed = await self.store.count_tasks(queue, narrowed)
            return matched, changed
        matched = changed = after = 0
        while True:
            now = self.clock.now_ms()
            # Each change is reported (built) only when someone watches tasks one by one.
            report = bool(self._listeners or self._outcomes.waiting or self.notifier)
            step = await self.store.bulk(queue, action, where, now, after, BULK_STEP, report)
            matched += step.matched
            changed += step.changed
            after = step.last
            if step.changes:
                self._apply(step.changes, operator=True)
            unreported = step.changed - len(step.changes)
            if unreported and action != "delete":
                counters = self.counters
                counter = counters.retries if action == "retry" else counters.cancellations
                counters.add(counter, queue, unreported)
                if action == "retry":
                    self._wake(queue, unreported)
            if step.matched < BULK_STEP:
                break
        if changed:
            log.info("%s: %s of %d task(s) matched: %d changed", queue, action, matched, changed)
        return matched, changed

    async def set_status(
        self, queue: str, task_id: int, status: str, edit: Edit | None = None
    ) -> Task:
        """Cancel, pause, resume or retry a task; the task as it is afterwards. A task in
        progress that is cancelled stays in progress, with ``cancel_requested``, until its
        worker hears of it (see rules.change_status). With ``edit`` (status "queued"): edit
        and retry, the task runs again with the edit's data, priority or key (see
        rules.edit_task)."""
        self.options(queue)
        now = self.clock.now_ms()
        change = await self.store.set_status(queue, task_id, status, now, edit)
        if change is None:
            return await self._existing(queue, task_id)
        self._apply([change], operator=True)
        return change.task

    # -- redrive (katar.core.moves) -----------------------------------------------------------

    async def redrive(
        self,
        queue: str,
        to: str | None = None,
        where: TaskFilter = EVERY_TASK,
        may_use: Callable[[str], bool] | None = None,
    ) -> Redrive:
        """Move the waiting tasks of the queue that ``where`` selects (queued, or failed:
        rules.REDRIVE_STATES) to ``to``, or each back to the queue it came from (its
        dead_letter record), queued with fresh attempts; in steps of BULK_STEP tasks, each
        atomic. A task with no queue to go to stays (Redrive.no_origin), and so does one
        whose queue ``may_use`` does not allow (None: any), or, with ``may_use``, that is
        gone."""
        where = await self._redrive_checks(queue, to, where)
        done = await self._moves.run(queue, to, where, self._allowed(may_use))
        if done.moved:
            log.info("%s: redrive moved %d of %d task(s)", queue, done.moved, done.matched)
        return done

    async def start_redrive(
        self,
        queue: str,
        rate: float,
        to: str | None = None,
        where: TaskFilter = EVERY_TASK,
        may_use: Callable[[str], bool] | None = None,
    ) -> MoveJob:
        """:meth:`redrive` at ``rate`` tasks a second, in the background: the move job,
        which :meth:`move_job` shows and :meth:`cancel_redrive` stops, from any server
        sharing the store (katar.core.moves). Conflict when one runs for the queue already."""
        if not 0 < rate <= MAX_RATE:
            raise ValidationError(
                f"rate must be a number of tasks per second above 0 and at most {MAX_RATE:g}",
                field="rate",
            )
        where = await self._redrive_checks(queue, to, where)
        total = await self.store.count_tasks(queue, where)
        job = await self._moves.start(queue, to, where, rate, total, self._allowed(may_use))
        log.info("%s: redrive of %d task(s) started at %g a second", queue, total, rate)
        return job

    async def move_job(self, queue: str) -> MoveJob:
        """The queue's last redrive at a rate; NotFound when none."""
        self.options(queue)
        return await self._moves.job(queue)

    async def move_history(self, queue: str) -> list[MoveJob]:
        """The queue's last redrives at a rate (up to 10), the last first."""
        self.options(queue)
        return await self._moves.history(queue)

    async def find_move_job(self, job_id: int) -> MoveJob | None:
        """The redrive at a rate with this id (any queue's), or None."""
        return await self._moves.find(job_id)

    async def cancel_redrive(self, queue: str, job_id: int | None = None) -> MoveJob:
        """Stop the queue's redrive at a rate (the job ``job_id``, when given), whichever
        server runs it; the tasks it moved stay moved."""
        self.options(queue)
        return await self._moves.cancel(queue, job_id)

    async def take_over_redrives(self) -> list[MoveJob]:
        """Run here the redrives at a rate whose server stopped (their lease passed); the
        background does it every few seconds."""
        return await self._moves.take_over()

    def _allowed(self, may_use: Callable[[str], bool] | None) -> frozenset[str] | None:
        """The queues a caller limited by ``may_use`` may move tasks to: those it may use
        that exist now (None: any)."""
        if may_use is None:
            return None
        return frozenset(name for name in self.queues if may_use(name))

    def dead_letter_sources(self, queue: str) -> list[str]:
        """The queues whose dead_letter option names ``queue``, by name."""
        return sorted(name for name, o in self.queues.items() if o.dead_letter == queue)

    async def _redrive_checks(self, queue: str, to: str | None, where: TaskFilter) -> TaskFilter:
        """Refuse a redrive to the queue itself or to no queue; ``where`` narrowed to the
        states a redrive moves."""
        self.options(queue)
        if to is not None:
            if to == queue:
                raise ValidationError(
                    f"to names queue {queue!r} itself; name another queue, or leave it out"
                    " to move each task back to the queue it came from",
                    field="to",
                )
            if await self.find_queue(to) is None:
                raise QueueNotFound(f"no queue {to!r} to redrive to; create it first", queue=to)
        states = REDRIVE_STATES if where.states is None else REDRIVE_STATES & set(where.states)
        if not states:
            raise ValidationError(
                "a redrive moves queued or failed tasks only; ask for those statuses",
                field="status",
            )
        return msgspec.structs.replace(where, states=tuple(sorted(states)))

    async def _redriven(self, queue: str, step: RedriveStep) -> None:
        """A redrive's step: the engine learns of the queues it created, and of its moves."""
        for name in step.created:
            await self.find_queue(name)
        if step.moved:
            self.counters.add(self.counters.redriven, queue, step.moved)
        if step.changes:
            self._apply(step.changes, operator=True)

    async def delete_task(self, queue: str, task_id: int) -> None:
        """Remove a task, whatever its status."""
        self.options(queue)
        if not await self.store.delete_task(queue, task_id, self.clock.now_ms()):
            raise TaskNotFound.named(task_id, queue)

    # What a server sharing the store did (the engine is the store's Observer, Store.listen).

    def tasks_ready(self, queue: str, count: int) -> None:
        self._wake(queue, count)

    def queue_changed(self, name: str) -> None:
        self._reloader.ask(wake_all=False)

    def resync(self) -> None:
        self._reloader.ask(wake_all=True)
        self._scheduler.changed()  # a schedule changed meanwhile: read them again

    def schedules_changed(self) -> None:
        self._scheduler.changed()

    def settled(self, changes: list[Change]) -> None:
        self._apply(changes, operator=True)

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def _wrote(self, name: str) -> None:
        self._queue_writes += 1
        self._written[name] = self._queue_writes

    def _reload_reading(self) -> None:
        self._reload_mark = self._queue_writes

    def _reloaded(self, queues: dict[str, QueueOptions], wake_all: bool) -> None:
        """The queues' options as the reloader read them: this server's from now on, but for
        those this server wrote while they were read (what it wrote is newer)."""
        mark = self._reload_mark
        newer = {name for name, number in self._written.items() if number > mark}
        self._written = {name: self._written[name] for name in newer}
        for name in newer:
            if name in self.queues:
                queues[name] = self.queues[name]
            else:
                queues.pop(name, None)
        old, self.queues = self.queues, queues
        for queue, options in queues.items():
            if queue in old and old[queue] != options:
                self._waits.wake_all(queue)  # another server resumed it or moved a limit
        if wake_all:  # events may have been missed: every long poll looks again
            self._waits.wake_every_queue()

    # -- events ----------------------------------------------------------------------------

    def _apply(
        self, changes: Iterable[Change], *, expired: bool = False, operator: bool = False
    ) -> None:
        """Wake long polls for tasks that became ready; emit events; settle outcome waits;
        count what happened. The changes come from a worker's acks unless ``expired`` (the
        reaper's) or ``operator`` (a status set over HTTP or the API)."""
        ready: dict[str, int] = {}
        for task, old, origin in changes:
            if origin is not None:  # moved to another queue: a dead letter, a redrive
                self._moved(task, old, origin, expired)
                ready[task.queue] = ready.get(task.queue, 0) + 1
                continue
            state = task.state
            ended = old is RUNNING and state is not RUNNING
            if ended:
                if state is not DONE:  # "done" acks are counted from the acks
                    self._count_end(task, expired)
            elif state is CANCELLED and old is not CANCELLED:
                self.counters.add(self.counters.cancellations, task.queue)
            elif operator and (old is FAILED or old is CANCELLED) and state is not old:
                self.counters.add(self.counters.retries, task.queue)
            if state is READY:
                ready[task.queue] = ready.get(task.queue, 0) + 1
            elif ended:
                options = self.queues.get(task.queue)
                if options is not None and options.limited:  # room under a limit
                    ready[task.queue] = ready.get(task.queue, 0) + 1
            if state is SCHEDULED:  # a retry's backoff, a resumed delayed task
                self._expect(task.run_at)
            if PUBLIC_STATUS[old] != PUBLIC_STATUS[state]:
                if self._listeners:
                    self._emit(task)
                if task.id in self._outcomes.waiting and is_final(task):
                    self._outcomes.settle(task)
        for queue, count in ready.items():
            self._wake(queue, count)
        if self._kept_events:  # committed now: the sender looks
            self._kept_events = False
            if self.outbox_written is not None:
                self.outbox_written()

    def _moved(self, task: Task, old: State, origin: str, expired: bool) -> None:
        """A task that moved from ``origin`` to ``task.queue``, queued there: a dead letter
        ends its delivery in ``origin`` (counted as a failure or a lease's end, and as a
        dead letter), and is the end of the task for those waiting for its outcome in
        ``origin`` (they read it again, and learn where it went)."""
        counters = self.counters
        if old is RUNNING:
            counters.add(counters.dead_lettered, origin)
            if expired:
                counters.add(counters.lease_expiries, origin)
                self._delivered_at.ended(str(task.id))
            else:
                counters.add(counters.failed, origin)
            options = self.queues.get(origin)
            if options is not None and options.limited:
                self._wake(origin, 1)  # room under a limit
        if task.queue not in self.queues:  # the store created it: default options
            self._reloader.ask(wake_all=False)
        if self._listeners:
            self._emit(task)
        if task.id in self._outcomes.waiting:
            self._outcomes.moved(task.id)

    def _expired(self, changes: list[Change]) -> None:
        """The reaper's changes: leases run out, delays and expiries come."""
        self._apply(changes, expired=True)

    def _count_end(self, task: Task, expired: bool) -> None:
        """Count a delivery that ended other than "done" by its ack (those are counted from
        the acks, _count_acks): its lease ran out, or a "failed" ack ended it."""
        counters, queue, state = self.counters, task.queue, task.state
        if state is READY and rules.released(task):
            return  # given back by its holder (an SQS visibility of 0): no failure, no retry
        if expired:
            counters.add(counters.lease_expiries, queue)
            self._delivered_at.ended(str(task.id))
        elif state is FAILED or state is READY or state is SCHEDULED:
            counters.add(counters.failed, queue)
        if state is READY or state is SCHEDULED or state is PAUSED:
            counters.add(counters.retries, queue)
        elif state is CANCELLED:
            counters.add(counters.cancellations, queue)

    def on(self, event: str, listener: Listener) -> None:
        """Call ``listener(task)`` on each status change named ``"<queue>.<status>"``.

        The queue may be ``*`` for every queue. Listeners run on the event loop after the
        change is stored; a coroutine function is run as a task. Errors are logged.
        """
        self._events.on(event, listener)

    def watching(self) -> bool:
        """Whether anyone needs the final version of a task finished "done" (Observer):
        a listener for "done" events, a wait for a task's outcome, a notifier, or a settle
        span (trace_settles)."""
        return (
            bool(self._outcomes.waiting)
            or self._events.watching_done()
            or self.notifier is not None
            or self.trace_settles
        )
