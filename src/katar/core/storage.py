"""The storage contract, in domain operations.

A store persists queues and tasks and performs each operation atomically: an operation
either applies entirely or not at all. The queue rules themselves live in
:mod:`katar.core.rules`; a store loads tasks, asks the rules, and writes the outcome.

The engine owns this contract (:class:`Store`) and the interface through which a store
reports to it (:class:`Observer`); the stores in :mod:`katar.store` implement the contract.
Every store passes the conformance suite in ``tests/store``.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Final, NamedTuple, Protocol, cast

from katar.core.idempotency import Idempotency
from katar.core.model import (
    Ack,
    Edit,
    MoveJob,
    NewTask,
    OutboxRow,
    QueueOptions,
    State,
    Task,
    TaskFilter,
)
from katar.core.schedule import Schedule, ScheduleSpec


class Change(NamedTuple):
    """A task whose state changed; ``task`` is its new version (its last, if deleted)."""

    task: Task
    old: State
    #: The queue the task moved from (a dead letter, a redrive: ``task.queue`` is where it
    #: is now); None when it stayed in its queue.
    origin: str | None = None


#: ``Change(task, old)``, given as one ``(task, old, None)`` tuple, made without the named
#: tuple's ``__new__`` (a function in Python): the stores make one for each task an ack
#: finishes, on every worker's poll.
changed: Final = cast(
    "Callable[[tuple[Task, State, None]], Change]", functools.partial(tuple.__new__, Change)
)


#: A completion-webhook event to keep in the outbox (katar.push.notify): (the queue whose
#: ``notify`` option hears it, the task's id, the body to send).
Event = tuple[str, int, bytes]


class PollResult(NamedTuple):
    """What a worker's poll did: the tasks it now holds and the changes its acks made."""

    delivered: list[Task]
    changes: list[Change]
    #: When a rate limit took less than asked: the time (ms) its bucket holds a token again,
    #: which a long poll waits for. None otherwise.
    retry_at: int | None = None
    #: The ids of the tasks whose heartbeat in the acks found them cancelled by an operator
    #: (rules.stops): the worker is told to stop them.
    cancel: Sequence[int] = ()
    #: When a limit let the claim take fewer tasks than asked, and the claim took all the
    #: limit allowed: that limit (rules.held_by). None otherwise. For the metrics.
    held: str | None = None


class LimitState(NamedTuple):
    """Where a queue stands against its flow-control options (GET /v1/queues)."""

    #: Tokens left in the rate limit's bucket now; None without a rate limit.
    tokens: float | None = None
    #: Keys with key_concurrency tasks in progress; None without key_concurrency.
    keys_at_limit: int | None = None
    #: Keys whose key_rate bucket holds no whole token now; None without key_rate.
    keys_rate_limited: int | None = None


class BulkStep(NamedTuple):
    """One step (one transaction) of a bulk action: see :meth:`Store.bulk`."""

    #: The tasks the filter selected in this step (at most the step's limit).
    matched: int
    #: Those the action changed (or removed).
    changed: int
    #: The highest id the step looked at: the next step starts after it.
    last: int
    #: The changes of a retry or a cancel (a delete reports none).
    changes: list[Change]


class RedriveStep(NamedTuple):
    """One step (one transaction) of a redrive: see :meth:`Store.redrive`."""

    #: The tasks the filter selected in this step (at most the step's limit).
    matched: int
    #: Those moved to their target queue.
    moved: int
    #: The highest id the step looked at: the next step starts after it.
    last: int
    #: The moved tasks, each as it is now in its target queue (old: its state before).
    changes: list[Change]
    #: The target queues that the step created (with default options) because they did
    #: not exist: a task's origin deleted meanwhile.
    created: tuple[str, ...] = ()
    #: The step of a move job (see :class:`MoveLease`): the job as the step left it. When
    #: it was no longer running on the lease's runner, the step moved nothing; None when
    #: the store has no such job (its queue deleted).
    job: MoveJob | None = None


class MoveLease(NamedTuple):
    """A redrive step's move job: the step runs only if the job is running on ``runner``,
    and holds it until ``until`` (see :meth:`Store.redrive`)."""

    job: int
    runner: str
    until: int


class Enqueued(NamedTuple):
    """What an enqueue under an idempotency key did."""

    tasks: list[Task]
    #: False when the key had been used: nothing was created, ``tasks`` are the first's.
    created: bool


class Fired(NamedTuple):
    """What :meth:`Store.fire_schedule` did."""

    #: False when the schedule's cursor had moved (another server fired the tick, or the
    #: schedule is gone): nothing changed.
    won: bool
    #: The task made for the tick; None when none was (no task asked for, or overlap
    #: "skip" found the last one unfinished).
    task: Task | None = None


class Observer(Protocol):
    """What a store tells the engine it serves, and asks it (see :meth:`Store.attach`).

    The engine implements it; its methods run on the event loop and must not block.
    """

    def watching(self) -> bool:
        """Whether anyone needs the final version of a task a worker finishes ("done"):
        event listeners, or a producer waiting for the outcome (see :attr:`Store.watch`)."""
        ...

    def tasks_ready(self, queue: str, count: int) -> None:
        """A server sharing the store made ``count`` tasks of ``queue`` ready."""
        ...

    def queue_changed(self, name: str) -> None:
        """A server sharing the store created, changed or deleted the queue ``name`` (empty:
        some queue, not known which; a store's periodic check found the stored options
        differ from those last loaded)."""
        ...

    def schedules_changed(self) -> None:
        """A server sharing the store created, changed or deleted a schedule."""
        ...

    def resync(self) -> None:
        """The store lost touch for a while: events may have been missed."""
        ...

    def now_ms(self) -> int:
        """The time now (ms), by the engine's clock: when a claim starts its leases (see
        :meth:`Store.lease_start`)."""
        ...

    def settled(self, changes: list[Change]) -> None:
        """An operation that reports no changes of its own (a deletion) changed these tasks:
        the tasks that waited for a deleted task, cancelled (see rules.orphaned)."""
        ...


class Store(abc.ABC):
    """Where queues and tasks live. Chosen by URL with :func:`katar.store.open_store`."""

    #: The URL the store was opened with, without credentials.
    url: str
    #: Whether anyone needs the final version of a task a worker finishes ("done"): the
    #: observer's :meth:`Observer.watching`, kept bound here by :meth:`attach` because the
    #: acks ask it on the hot path. Asked as the acks are applied; when it answers False, a
    #: store may leave those tasks out of ``PollResult.changes`` and spare building them.
    #: None (no observer attached) counts as True.
    watch: Callable[[], bool] | None = None
    #: What :meth:`open` did to a stored schema: (the version it found, the version it
    #: left), equal when nothing changed, 0 found when it created the schema. None for a
    #: store that keeps no schema.
    schema_change: tuple[int, int] | None = None
    #: Whether other servers may write to this store, making deadlines (leases, delays) that
    #: this one hears nothing of: its engine then looks for due tasks at least once a second
    #: even when it knows of none. False for a store only one server can use.
    shared: bool = False

    #: The observer attached (see :meth:`attach`), None before.
    observer: Observer | None = None
    #: Completion webhooks (katar.push.notify): while some queue has a ``notify`` option, the
    #: engine's choice of the events that changes make (rules.ended, the queues' options).
    #: Every operation that changes tasks asks it with its changes (those it returns and
    #: those it reports, Observer.settled) and adds the events to the outbox in its own
    #: transaction, before it commits: a task's end and its event are kept together or not
    #: at all, whatever happens to the server next. It runs on the event loop and must not
    #: block. None: no queue notifies, and an operation pays one test.
    notify: Callable[[Sequence[Change]], list[Event]] | None = None

    def attach(self, observer: Observer) -> None:
        """Report to ``observer`` from now on: the engine calls it once, before :meth:`open`."""
        self.watch = observer.watching
        self.observer = observer

    def lease_start(self, now: int) -> int:
        """When a claim made at this moment starts its leases (ms): the observer's time read
        now, at the claim, never before ``now``, when the poll arrived. A poll may wait for
        a connection, a lock or the writer before its claim; that wait is not taken off the
        lease, so that every delivery reaches its worker with its whole lease (every store
        claims by this rule). Without an observer: ``now``."""
        observer = self.observer
        return now if observer is None else max(now, observer.now_ms())

    def report(self, changes: list[Change]) -> None:
        """Tell the observer, if any, of the changes an operation made that it does not
        return (Observer.settled)."""
        if changes and self.observer is not None:
            self.observer.settled(changes)

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and prepare the schema. Raises StoreUnavailable or ConfigError."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release every resource."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable when it does not."""

    def failing(self) -> str | None:
        """Why the store cannot serve every request though some succeed, or None: a SQLite
        disk that refused writes is one (reads and acks go on, new tasks are refused). While
        it gives a reason, a request that succeeds does not end the outage logged."""
        return None

    @abc.abstractmethod
    async def load_queues(self) -> dict[str, QueueOptions]:
        """Every stored queue with its options."""

    @abc.abstractmethod
    async def load_queue(self, name: str) -> QueueOptions | None:
        """The stored queue's options; None when there is no such queue. For a server that
        does not know a queue (another server may have made it, and not notified it yet)."""

    @abc.abstractmethod
    async def save_queue(self, name: str, options: QueueOptions) -> None:
        """Create the queue, or replace its options."""

    @abc.abstractmethod
    async def delete_queue(self, name: str, now: int | None = None) -> int:
        """Remove the queue, its tasks and its move jobs; the number of tasks removed.
        Tasks of other queues that waited for one of them are cancelled (Observer.settled)."""

    @abc.abstractmethod
    async def enqueue(self, queue: str, tasks: Sequence[NewTask], now: int) -> list[Task]:
        """Add tasks to an existing queue; the new tasks, in order, with growing ids.

        A task with ``after`` (ids, and ``refs`` to earlier tasks of the batch) depends on
        those tasks (rules.depend): every id must name an existing task, of any queue, else
        ValidationError (rules.unknown_parent) and nothing is created. Tasks read from the
        store carry ``waiting_for`` and ``after`` (rules.after_json) when they have parents.

        A task whose unique_key a task of the queue holds (rules.holds_key; one of this
        batch included) is not created: its place in the answer is the holder, marked
        with rules.duplicate. Concurrent enqueues of one key, from any number of servers,
        create one task."""

    @abc.abstractmethod
    async def enqueue_once(
        self, queue: str, tasks: Sequence[NewTask], now: int, once: Idempotency
    ) -> Enqueued:
        """Enqueue under an idempotency key (see katar.core.idempotency), atomically with
        the key's record. When the queue has a record of the key created after
        ``fresh_since(now)``, create nothing: answer the first enqueue's tasks as it created
        them, or raise KeyReused if its digest differs. Concurrent enqueues with one key,
        from any number of servers, create at most once."""

    @abc.abstractmethod
    async def prune_keys(self, before: int) -> int:
        """Forget up to idempotency.PRUNE_BATCH keys created at or before ``before``, oldest
        first; how many."""

    # A task that fails for good in a queue with a dead_letter option (an ack's failure, a
    # lease's end in expire) moves in the same transaction to that queue, as the rules say
    # (rules.dead_lettered: the new version's ``queue`` differs): the store moves its row
    # and creates the target queue with default options when it does not exist (on a
    # shared store, telling the other servers as save_queue does). The move's Change has
    # the task as it is in its new queue.

    @abc.abstractmethod
    async def poll(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        """Apply ``acks`` in order, then claim up to ``limit`` tasks, in one transaction.

        Claimed tasks are the READY ones of the queue whose expiry (rules.expired) has not
        come, highest priority first, then lowest id, leased until ``now`` plus their own
        timeout or ``options.timeout`` (rules.lease_ms). A queue whose options are
        ``limited`` takes what rules.claim_allowance allows, and passes over the tasks of
        keys at their key_concurrency (rules.pick_by_key), counting what is in progress on
        every server that shares the store, atomically with the claim. If any ack is
        rejected, nothing changes
        and the error is raised with ``details["ack"]``, the index of the faulty ack. An ack
        for an id this store never issued raises TaskNotFound; one for a task of another
        queue too; one for a task that is gone (a finished task of a queue without history)
        changes nothing. ``changes`` holds every task whose status the acks changed, except
        those finished while :attr:`watch` answers False; ``cancel`` the ids of the tasks
        whose heartbeat :func:`rules.stops <katar.core.rules.stops>`.
        """

    @abc.abstractmethod
    async def limit_state(self, queue: str, options: QueueOptions, now: int) -> LimitState:
        """The queue's rate bucket and keys at their limit (see :class:`LimitState`)."""

    @abc.abstractmethod
    async def get_task(self, queue: str, task_id: int) -> Task | None:
        """The task, or None when the queue holds no such task."""

    @abc.abstractmethod
    async def list_tasks(
        self, queue: str, where: TaskFilter, limit: int, after: int, newest_first: bool = False
    ) -> list[Task]:
        """Up to ``limit`` tasks that ``where`` selects, by id: those above ``after``; or,
        ``newest_first``, by id descending, those below ``after`` (0: from the newest)."""

    @abc.abstractmethod
    async def count_tasks(self, queue: str, where: TaskFilter) -> int:
        """How many tasks ``where`` selects."""

    @abc.abstractmethod
    async def bulk(
        self,
        queue: str,
        action: str,
        where: TaskFilter,
        now: int,
        after: int,
        limit: int,
        report: bool = True,
    ) -> BulkStep:
        """One step of a bulk action, in one transaction: take the first ``limit`` tasks
        that ``where`` selects with an id above ``after``, and apply ``action`` to each in
        rules.BULK_STATES[action]: "retry" and "cancel" as rules.bulk_change says (a retry
        whose unique_key another task holds is skipped), "delete" removes them. Without
        ``report``, a store may leave out of ``changes`` the tasks it changed in SQL, without
        building them (``changed`` counts them all): nobody watches those tasks one by one."""

    @abc.abstractmethod
    async def redrive(
        self,
        queue: str,
        to: str | None,
        where: TaskFilter,
        now: int,
        after: int,
        limit: int,
        allowed: Collection[str] | None = None,
        job: MoveLease | None = None,
    ) -> RedriveStep:
        """One step of a redrive, in one transaction: take the first ``limit`` tasks that
        ``where`` selects (the engine narrows its states to rules.REDRIVE_STATES) with an id
        above ``after``, and move each to rules.redrive_target(task, ``to``) as
        rules.redriven says, creating that queue with default options when it does not
        exist. A task without a target, or whose target is not among ``allowed`` (None: any
        queue), stays (counted in ``matched``, not ``moved``).

        With ``job``, the step of that move job: the transaction first reads (and locks)
        the job; unless it is running on ``job.runner``, the step moves nothing and answers
        the job as it is (cancelled, taken over). Else it writes the job as
        model.advanced says (``until``: its new lease) with the moves, and answers it."""

    # -- move jobs (katar.core.moves): redrives at a rate, shared by the servers -----------

    @abc.abstractmethod
    async def move_start(self, job: MoveJob, keep: int) -> tuple[MoveJob, bool]:
        """Keep the new move ``job`` (its id given by the store), and forget the oldest
        ended jobs of its queue past the ``keep`` last: (the job, True). When a job of the
        queue is running already (on any server), keep nothing: (that job, False)."""

    @abc.abstractmethod
    async def move_list(self, queue: str, limit: int) -> list[MoveJob]:
        """The queue's last ``limit`` move jobs, the last first."""

    @abc.abstractmethod
    async def move_get(self, job_id: int) -> MoveJob | None:
        """The move job; None when there is none."""

    @abc.abstractmethod
    async def move_end(
        self,
        job_id: int,
        state: str,
        now: int,
        error: str | None = None,
        runner: str | None = None,
    ) -> MoveJob | None:
        """End the running move job with ``state`` ("cancelled", "failed") and ``error``,
        when it runs (on ``runner`` only, when given); the job as it is then (None: no
        such job). A step of the job under way commits before, or sees the end."""

    @abc.abstractmethod
    async def move_take(self, runner: str, now: int, until: int) -> MoveJob | None:
        """Take over one running move job whose lease ended before ``now``: it runs on
        ``runner`` until ``until``; None when there is none. Of servers taking at once, one
        gets each job."""

    @abc.abstractmethod
    async def move_release(self, job_id: int, runner: str) -> None:
        """The job's runner stops without ending it (its server shuts down): its lease
        ends now, for another server to take it over."""

    @abc.abstractmethod
    async def prune(self, queue: str, state: State, before: int, now: int, limit: int) -> int:
        """Remove up to ``limit`` finished tasks of the queue in ``state`` that finished at
        or before ``before`` (rules.prune_before) and hold no unique_key at ``now``
        (rules.holds_key); how many."""

    @abc.abstractmethod
    async def heads(self) -> dict[str, int]:
        """For every queue with ready tasks: when the task at its head (the next a claim
        takes) became ready (ms)."""

    @abc.abstractmethod
    async def running_by_worker(self) -> dict[tuple[str, str | None], int]:
        """The tasks in progress, counted by (queue, worker)."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, dict[State, int]]:
        """For every queue, its number of tasks in each state (zero counts may be absent)."""

    @abc.abstractmethod
    async def set_status(
        self, queue: str, task_id: int, status: str, now: int, edit: Edit | None = None
    ) -> Change | None:
        """Apply an operator's status change (see rules.change_status); None if no change.
        With ``edit``, an edit and retry (rules.edit_task): the task's data, priority and key
        as the edit gives them, written in the same transaction.

        Raises TaskNotFound or IllegalTransition.
        """

    @abc.abstractmethod
    async def delete_task(self, queue: str, task_id: int, now: int | None = None) -> bool:
        """Remove a task; False when the queue holds no such task. The tasks that waited for
        it are cancelled, at ``now`` (default: the wall clock), and reported to the observer
        (Observer.settled)."""

    @abc.abstractmethod
    async def linked(
        self,
        queue: str,
        task_id: int,
        limit: int,
        after: int,
        queues: Collection[str] | None = None,
        parents: bool = False,
    ) -> list[Task] | None:
        """Up to ``limit`` of the tasks that named the task ``task_id`` of ``queue`` in their
        ``after`` (its children), or with ``parents`` those it named (that are still there),
        of any queue (of ``queues`` only, when given), by id, those above ``after``; None
        when the queue holds no such task. A page costs the same however many the task has
        (the edges are indexed both ways)."""

    @abc.abstractmethod
    async def queues_of(self, ids: Sequence[int]) -> dict[int, str]:
        """The queue of each task of ``ids`` that exists (the others are left out)."""

    # -- schedules (katar.core.schedule) -----------------------------------------------------

    @abc.abstractmethod
    async def load_schedules(self) -> dict[str, Schedule]:
        """Every stored schedule."""

    @abc.abstractmethod
    async def save_schedule(self, name: str, spec: ScheduleSpec, cursor: int | None) -> Schedule:
        """Create the schedule (its cursor at ``cursor``) or replace its spec, keeping where
        its ticks stand, or moving its cursor forward to ``cursor`` when that is not None and
        later (a schedule resumed: the ticks of its pause pass). A cursor never moves back:
        two servers declaring one new schedule at once cannot undo a tick the first fired. A
        new schedule needs a ``cursor``."""

    @abc.abstractmethod
    async def delete_schedule(self, name: str) -> bool:
        """Remove the schedule (not the tasks it made); False when there was none."""

    @abc.abstractmethod
    async def fire_schedule(
        self, name: str, cursor: int, tick: int, task: NewTask | None, now: int
    ) -> Fired:
        """Use up the schedule's ticks up to ``tick``, in one transaction: move its cursor
        from ``cursor`` to ``tick`` (compare-and-set: when the stored cursor is not
        ``cursor``, change nothing and answer ``won`` False), set its last tick, and insert
        ``task`` into the schedule's queue with ``schedule`` and ``scheduled_for`` (the
        tick) set, unless the schedule's overlap is "skip" and the last task it made is
        unfinished. However many servers fire one tick at once, one wins. Raises
        QueueNotFound (changing nothing) when the queue does not exist."""

    async def listen(self, observer: Observer) -> None:
        """Tell ``observer`` what the servers sharing this store do, until the store closes:
        :meth:`Observer.tasks_ready`, :meth:`Observer.queue_changed`,
        :meth:`Observer.schedules_changed`, and
        :meth:`Observer.resync` after a gap in which events may have been missed. A store
        that only one server can use has nothing to tell, and keeps this default."""
        return None

    # -- the outbox of completion webhooks (katar.push.notify) --

    @abc.abstractmethod
    async def outbox_trim(self, queues: Collection[str], keep: int) -> dict[str, int]:
        """Drop the oldest events of each of ``queues`` past the ``keep`` newest (the bound
        on what the outbox keeps); the number dropped, by queue (those with none left out).
        The events themselves are added by the operations that end tasks (:attr:`notify`)."""

    @abc.abstractmethod
    async def outbox_pending(self, queue: str) -> tuple[int, int]:
        """The queue's events in the outbox, not yet sent: (how many, how many of those
        failed a send at least once)."""

    @abc.abstractmethod
    async def outbox_take(self, limit: int, now: int, lease_ms: int) -> list[OutboxRow]:
        """Take up to ``limit`` events to send, the oldest first: each the first kept of its
        task (a task's next event waits until this one is gone, so that a task's events
        are sent in order), and none another taker holds; each is held until ``now +
        lease_ms`` (a sender that dies leaves it to another then)."""

    @abc.abstractmethod
    async def outbox_delete(self, ids: Sequence[int]) -> None:
        """Forget events sent."""

    @abc.abstractmethod
    async def outbox_retry(self, event_id: int, until: int) -> None:
        """An event's send failed: it waits until ``until``, one more attempt counted."""

    @abc.abstractmethod
    async def expire(self, queues: Mapping[str, QueueOptions], now: int) -> list[Change]:
        """Re-queue or fail tasks whose lease ran out (a task's end settles the tasks that
        wait for it, as every change does: rules.release, rules.orphaned); cancel the tasks
        never delivered whose expiry has come (rules.expire); make due scheduled tasks READY.
        Also remove the finished tasks that a queue without history kept while they held
        their unique_key, once that time has passed (rules.sweepable): no change is
        reported."""

    @abc.abstractmethod
    async def next_deadline(self) -> int | None:
        """The earliest time (ms) at which a task will need :meth:`expire`: the earliest
        lease end of a task in progress, not-before time of a scheduled one, or expiry of
        one never delivered (rules.expiry); None when there is no such task. A time in the
        past means some are due now."""
