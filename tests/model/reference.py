"""A reference model of the storage contract: plain Python, written from the contract alone.

This is what the stores are checked against (see test_stateful.py). It deliberately does
not import :mod:`katar.core.rules`, nor any store: those are what it checks. It uses only
katar's public types (the states, the tasks, acks and options a caller builds, the error
classes a caller catches) to speak the stores' language.

The state is plain: a dict of tasks by id, a dict of queues, the highest id issued. Each
operation is one method that returns what the store should answer, or raises the error it
should raise, and changes the state only when it succeeds (an operation is atomic).

To model a new operation or option: add a field to :class:`MTask` or read the option in
the method it affects, add a method here, and one rule in test_stateful.py that calls the
store and this method and compares them.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Final

import msgspec

from katar.core.idempotency import KeyReused
from katar.core.model import Ack, Edit, NewTask, QueueOptions, Rate, State
from katar.errors import (
    Conflict,
    IllegalTransition,
    KatarError,
    QueueNotFound,
    TaskNotFound,
    ValidationError,
)

#: What PATCH may ask for, and from which public statuses (contract section 3).
PATCH_FROM: Final = {
    "cancelled": ("paused", "queued", "in progress"),  # in progress: requested (section 9)
    "paused": ("queued",),
    "queued": ("paused", "failed", "cancelled"),
}
#: The highest id a client may name (ids are positive 63-bit integers).
MAX_ID: Final = 2**63 - 1
#: How long an Idempotency-Key is remembered, in ms (contract section 8: 24 hours).
KEY_TTL: Final = 24 * 3600 * 1000


#: The states of a task that waits or runs: a fair key's places count among these (not a
#: task that waits for others: it keeps its place, and pushes no later task of its key back).
_WAITING = (State.PAUSED, State.READY, State.SCHEDULED, State.RUNNING)
#: The states of a task that waits or runs, whatever for (section 11: WAITING is "queued").
_UNFINISHED = (*_WAITING, State.WAITING)
#: The states of a task that its parent's failure, cancellation or deletion cancels.
_ORPHANABLE = (State.PAUSED, State.READY, State.SCHEDULED, State.WAITING)


@dataclass
class MTask:
    """A task as the model knows it: the fields of a stored task that callers can see.

    ``budget_from`` is the number of deliveries at the last manual retry: a retry gives a
    fresh set of ``max_attempts`` while ``attempts`` keeps counting (it fences stale acks).
    """

    id: int
    queue: str
    state: State
    priority: int
    data: bytes
    created_at: int
    updated_at: int
    attempts: int = 0
    budget_from: int = 0
    error: str | None = None
    result: bytes | None = None
    worker: str | None = None
    run_at: int | None = None
    lease_until: int | None = None
    key: str | None = None
    cancel_requested: bool = False  # an operator cancelled it while it ran (section 9)
    progress: bytes | None = None  # the last heartbeat's progress, of this delivery
    timeout: int | None = None  # its own lease, over the queue's
    max_attempts: int | None = None  # its own, over the queue's
    expires_at: int | None = None  # cancelled then, if never delivered (section 8)
    unique_key: str | None = None
    unique_until: int | None = None  # holds its key until then, whatever its status
    duplicate: bool = False  # in an enqueue's answer: an existing task holding the key
    #: While it waits, never delivered, an enqueue of this key replaces it (section 14).
    debounce_key: str | None = None
    debounced: bool = False  # in an enqueue's answer: an existing task it replaced
    #: Its place in a fair queue (section 8, fair): one past its key's last task waiting or
    #: running, never before the queue's head; given at enqueue while the queue is fair, to
    #: the waiting tasks when a queue becomes fair, at a retry that lacks one. Kept after.
    seq: int | None = None
    #: The tasks it waits for (section 11, after), by id.
    parents: tuple[int, ...] = ()
    #: Where it failed for good before it moved to this queue, its dead-letter queue
    #: (section 14): (that queue, the error, the deliveries it had there, when it moved).
    dead_letter: tuple[str, str | None, int, int] | None = None
    #: after_failure "run" (section 14): it runs once every parent ended, however.
    run: bool = False
    #: As shown (Model.shown): the parents not done yet, and the results of those done.
    waiting_for: tuple[int, ...] = ()
    after: bytes | None = None

    @property
    def status(self) -> str:
        if self.state in (State.READY, State.SCHEDULED, State.WAITING):
            return "queued"
        return {
            State.PAUSED: "paused",
            State.RUNNING: "in progress",
            State.DONE: "done",
            State.FAILED: "failed",
            State.CANCELLED: "cancelled",
        }[self.state]


@dataclass(frozen=True)
class MChange:
    """A task whose state an operation changed: its new version and its state before."""

    task: MTask
    old: State


@dataclass(frozen=True)
class Keyed:
    """What an enqueue under an Idempotency-Key left: its request, its tasks as created."""

    request: tuple[tuple[object, ...], ...]
    tasks: list[MTask]
    created: int


@dataclass(frozen=True)
class Refusal(Exception):
    """The error a store must raise: its class, and the details that locate the fault."""

    kind: type[KatarError]
    ack: int | None = None  # the index of the faulty ack, for a poll


@dataclass
class Model:
    """Every queue and every task, as the contract says they must be."""

    queues: dict[str, QueueOptions] = field(default_factory=dict)
    tasks: dict[int, MTask] = field(default_factory=dict)  # by id: ids grow, so in id order
    issued: int = 0  # the highest task id ever issued
    keys: dict[tuple[str, str], Keyed] = field(default_factory=dict)  # by (queue, key)
    #: Section 13's ownership rule (an ack naming a task leased to another named worker is
    #: a 409). Every store enforces it; turned off, the test never sends such acks.
    ownership: bool = True
    #: Each rate-limited queue's token bucket: [tokens, as of when (ms)]; absent: full.
    buckets: dict[str, list[float]] = field(default_factory=dict)
    #: key_rate: each (queue, task key)'s token bucket, [tokens, as of when (ms)], in exact
    #: fractions; absent: full (the stores keep another form of it, and drop full ones).
    key_buckets: dict[tuple[str, str], list[Fraction]] = field(default_factory=dict)
    #: Dependencies: per child, its parents' (done, result), kept while the child is.
    edges: dict[int, dict[int, tuple[bool, bytes | None]]] = field(default_factory=dict)

    # -- queues ------------------------------------------------------------------------------

    def save_queue(self, name: str, options: QueueOptions) -> None:
        old = self.queues.get(name)
        if options.fair and (old is None or not old.fair):  # made fair: places, key by key
            waiting = sorted(
                (
                    t
                    for t in self.tasks.values()
                    if t.queue == name and t.state in _UNFINISHED and t.seq is None
                ),
                key=lambda t: (-t.priority, t.id),
            )
            counted: Counter[str | None] = Counter()
            for task in waiting:
                task.seq = counted[task.key]
                counted[task.key] += 1
        self.queues[name] = options
        self.buckets.pop(name, None)  # new options: a rate limit starts with a full bucket
        self._forget_key_buckets(name)  # and so does every key's under key_rate

    def _forget_key_buckets(self, name: str) -> None:
        for pair in [pair for pair in self.key_buckets if pair[0] == name]:
            del self.key_buckets[pair]

    def delete_queue(self, name: str, now: int) -> int:
        if name not in self.queues:
            raise Refusal(QueueNotFound)
        del self.queues[name]
        self._forget_key_buckets(name)
        self.buckets.pop(name, None)
        for queue_key in [queue_key for queue_key in self.keys if queue_key[0] == name]:
            del self.keys[queue_key]
        gone = [t.id for t in self.tasks.values() if t.queue == name]
        for task_id in gone:
            self._ended(self.tasks, self.tasks[task_id], None, now, [])
        for task_id in gone:
            self._forget(self.tasks, task_id)
        return len(gone)

    def _options(self, queue: str) -> QueueOptions:
        if queue not in self.queues:
            raise Refusal(QueueNotFound)
        return self.queues[queue]

    def of_queue(self, queue: str) -> list[MTask]:
        """The queue's tasks, as shown (see shown)."""
        return [self.shown(t) for t in self.tasks.values() if t.queue == queue]

    # -- dependencies (section 11) -------------------------------------------------------------

    def shown(self, task: MTask) -> MTask:
        """A copy of the task with its parents as its record shows them."""
        if not task.parents:
            return replace(task)
        edges = sorted(self.edges.get(task.id, {}).items())
        results = [b'"%d":%b' % (p, r or b"null") for p, (done, r) in edges if done]
        return replace(
            task,
            waiting_for=tuple(p for p, (done, _r) in edges if not done),
            after=b"{" + b",".join(results) + b"}",
        )

    def _ended(
        self,
        tasks: dict[int, MTask],
        parent: MTask,
        new: State | None,
        now: int,
        changes: list[MChange],
    ) -> None:
        """A task that waited or ran is now ``new`` (None: deleted): the tasks waiting for
        it are released when it is done and it was their last not done, cancelled when it
        failed for good, was cancelled or deleted, and theirs after them."""
        if parent.state not in _UNFINISHED or new in _UNFINISHED:
            return
        how = {
            None: "was deleted",
            State.DONE: "done",
            State.FAILED: "failed",
            State.CANCELLED: "was cancelled",
        }[new]
        children = [
            child_id
            for child_id, edges in self.edges.items()
            if parent.id in edges and not edges[parent.id][0] and child_id in tasks
        ]
        cancelled: list[tuple[MTask, State]] = []
        for child_id in children:
            child = tasks[child_id]
            edges = self.edges[child_id]
            if how == "done" or child.run:
                edges[parent.id] = (True, outcome(how, parent) if child.run else parent.result)
                if child.state is State.WAITING and all(done for done, _r in edges.values()):
                    due = child.run_at is None or child.run_at <= now
                    child.state = State.READY if due else State.SCHEDULED
                    child.run_at = None if due else child.run_at
                    child.updated_at = now
                    changes.append(MChange(replace(child), State.WAITING))
            elif child.state in _ORPHANABLE:
                old = child.state
                child.state = State.CANCELLED
                child.run_at = None
                child.error = f"cancelled: task {parent.id} it waited for {how}"
                child.updated_at = now
                changes.append(MChange(replace(child), old))
                cancelled.append((child, old))
        # Every task waiting for this one is cancelled first, then theirs after them, the
        # last cancelled first (as the stores walk the tasks a cancel reaches): a task that
        # waits for both this one and one of its children is cancelled for this one.
        for child, old in reversed(cancelled):
            self._ended(tasks, replace(child, state=old), State.CANCELLED, now, changes)

    def _forget(self, tasks: dict[int, MTask], task_id: int) -> None:
        del tasks[task_id]
        self.edges.pop(task_id, None)

    def _still_waits(self, task: MTask) -> bool:
        return any(
            not done and (p := self.tasks.get(parent_id)) is not None and p.state in _UNFINISHED
            for parent_id, (done, _r) in self.edges.get(task.id, {}).items()
        )

    # -- tasks ---------------------------------------------------------------------------------

    def holder(self, queue: str, key: str, now: int) -> MTask | None:
        """The task of the queue that holds ``key``: paused, queued or in progress, or
        within its unique_until whatever its status (section 8); the oldest, if several."""
        for task in self.tasks.values():
            if task.queue != queue or task.unique_key != key:
                continue
            active = task.state in _UNFINISHED
            if active or (task.unique_until is not None and task.unique_until > now):
                return task
        return None

    def debouncing(self, queue: str, key: str) -> MTask | None:
        """The task of the queue that waits with debounce_key ``key``, never delivered
        (section 14): paused or queued, not waiting for others, no delivery yet."""
        for task in self.tasks.values():
            if (
                task.queue == queue
                and task.debounce_key == key
                and task.attempts == 0
                and task.state in (State.PAUSED, State.READY, State.SCHEDULED)
            ):
                return task
        return None

    def _debounce(self, task: MTask, spec: NewTask, now: int) -> None:
        """``task`` as an enqueue of its debounce_key leaves it: the enqueue's data, options
        and due time; still paused if it was; its id, creation time and fair place kept."""
        fresh = new_task(task.queue, spec, task.id, now)
        if task.state is not State.PAUSED:
            task.state = fresh.state
        task.priority, task.data, task.run_at = fresh.priority, fresh.data, fresh.run_at
        task.key, task.timeout, task.max_attempts = fresh.key, fresh.timeout, fresh.max_attempts
        task.expires_at = fresh.expires_at
        task.updated_at = now

    def _front(self, queue: str) -> int:
        """A fair queue's head: the place of the ready task a claim takes first; 0 if none."""
        placed = [
            t
            for t in self.tasks.values()
            if t.queue == queue and t.state is State.READY and t.seq is not None
        ]
        if not placed:
            return 0
        head = min(placed, key=lambda t: (-t.priority, t.seq or 0, t.id))
        return head.seq or 0

    def _last(self, queue: str, key: str | None) -> int | None:
        places = [
            t.seq
            for t in self.tasks.values()
            if t.queue == queue and t.key == key and t.state in _WAITING and t.seq is not None
        ]
        return max(places) if places else None

    def _place(self, task: MTask, front: int) -> None:
        last = self._last(task.queue, task.key)
        task.seq = front if last is None else max(last + 1, front)

    def enqueue(self, queue: str, specs: list[NewTask], now: int) -> list[MTask]:
        fair = self._options(queue).fair
        expires = self.queues[queue].expires  # section 14: the tasks' default expires_in
        if expires is not None:
            specs = [
                s
                if s.expires_in_ms is not None
                else msgspec.structs.replace(s, expires_in_ms=expires)
                for s in specs
            ]
        front = self._front(queue) if fair else 0
        for spec in specs:
            if any(parent_id not in self.tasks for parent_id in spec.after):
                raise Refusal(ValidationError)
        created: list[MTask] = []
        for spec in specs:
            if spec.debounce_key is not None:
                waiting = self.debouncing(queue, spec.debounce_key)
                if waiting is not None:  # nothing created: that task takes this one's place
                    self._debounce(waiting, spec, now)
                    created.append(replace(self.shown(waiting), debounced=True))
                    continue
            if spec.unique_key is not None:
                holder = self.holder(queue, spec.unique_key, now)
                if holder is not None:  # nothing created: the answer is the holder
                    created.append(replace(holder, duplicate=True))
                    continue
            self.issued += 1
            task = new_task(queue, spec, self.issued, now)
            if spec.after or spec.refs:
                named = sorted({*spec.after, *(created[n].id for n in spec.refs)})
                self._depend(task, named, spec.after_failure == "run")
            if fair:
                self._place(task, front)
            self.tasks[task.id] = task
            created.append(self.shown(task))
        return created

    def _depend(self, task: MTask, parents: list[int], run: bool) -> None:
        """A new task that waits for ``parents``: it waits while one is not done, and is
        cancelled at once when one already failed or was cancelled (the first by id).
        ``run`` (section 14): it waits while one is not finished, and is never cancelled;
        those finished already count with their outcome."""
        task.parents = tuple(parents)
        task.run = run
        edges: dict[int, tuple[bool, bytes | None]] = {}
        for parent_id in parents:
            parent = self.tasks[parent_id]
            if run and parent.state in (State.DONE, State.FAILED, State.CANCELLED):
                how = {State.DONE: "done", State.FAILED: "failed"}.get(parent.state)
                edges[parent_id] = (True, outcome(how or "was cancelled", parent))
                continue
            done = parent.state is State.DONE
            edges[parent_id] = (done, parent.result if done else None)
        self.edges[task.id] = edges
        for parent_id in parents:
            if run:
                break
            state = self.tasks[parent_id].state
            if state in (State.FAILED, State.CANCELLED):
                how = "failed" if state is State.FAILED else "was cancelled"
                task.state = State.CANCELLED
                task.run_at = None
                task.error = f"cancelled: task {parent_id} it waited for {how}"
                return
        waits = any(not done for done, _r in edges.values())
        if waits and task.state in (State.READY, State.SCHEDULED):
            task.state = State.WAITING

    def enqueue_once(
        self, queue: str, specs: list[NewTask], now: int, key: str
    ) -> tuple[list[MTask], bool]:
        """An enqueue with an Idempotency-Key: a repeat within KEY_TTL of the first creates
        nothing and answers the first's tasks as created (a different request: 422); the
        tasks and whether they were created."""
        self._options(queue)
        request = tuple(
            (
                spec.priority,
                spec.delay_ms,
                spec.run_at,
                spec.paused,
                bytes(spec.data),
                spec.timeout,
                spec.max_attempts,
                spec.expires_in_ms,
                spec.unique_key,
                spec.unique_for_ms,
                spec.key,
                spec.debounce_key,
            )
            for spec in specs
        )
        first = self.keys.get((queue, key))
        if first is not None and first.created > now - KEY_TTL:
            if first.request != request:
                raise Refusal(KeyReused)
            again = [
                self._again(t, spec, first.created)
                for t, spec in zip(first.tasks, specs, strict=True)
            ]
            return again, False
        created = self.enqueue(queue, specs, now)
        self.keys[(queue, key)] = Keyed(request, [replace(task) for task in created], now)
        return created, True

    def _again(self, first: MTask, spec: NewTask, answered: int) -> MTask:
        """A repeat's answer for a task of the first answer: as created then; a duplicate
        (the task that held the key) as it is now, or, once gone, as the request describes
        it, with the holder's id and the first answer's time."""
        if not (first.duplicate or first.debounced):
            return replace(first)
        now = self.tasks.get(first.id)
        found = now is not None and now.queue == first.queue
        if first.debounced:  # the task the first debounced, as it is now (section 14)
            task = self.shown(now) if now is not None and found else None
            fresh = new_task(first.queue, spec, first.id, answered)
            return replace(task or fresh, debounced=True)
        if now is not None and found:
            return replace(now, duplicate=True)
        return replace(new_task(first.queue, spec, first.id, answered), duplicate=True)

    def prune_keys(self, before: int, most: int) -> int:
        """Forget up to ``most`` keys created at or before ``before``; how many."""
        old = sorted(
            (keyed.created, queue_key)
            for queue_key, keyed in self.keys.items()
            if keyed.created <= before
        )
        for _created, queue_key in old[:most]:
            del self.keys[queue_key]
        return len(old[:most])

    def parse_id(self, raw: str | int) -> int | None:
        """The id a client's task id names, or None when it cannot name one."""
        if isinstance(raw, int):
            return raw if 0 < raw <= MAX_ID else None
        if raw and all("0" <= c <= "9" for c in raw) and len(raw) < 19 and int(raw) > 0:
            return int(raw)
        return None

    def owner_conflict(self, ack: Ack, worker: str | None) -> bool:
        """Whether the ack names a live delivery leased to another named worker."""
        task_id = self.parse_id(ack.task_id)
        task = self.tasks.get(task_id) if task_id is not None else None
        return (
            worker is not None
            and task is not None
            and task.state is State.RUNNING
            and task.worker is not None
            and task.worker != worker
            and ack.attempt in (None, task.attempts)
        )

    def poll(
        self,
        queue: str,
        acks: list[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> tuple[list[MTask], list[MChange], list[int]]:
        """Apply the acks in order, each as if alone, then claim; all or nothing. Also the
        ids of the tasks the worker is told to stop (section 9)."""
        changes, cancel = self.poll_acks(queue, acks, worker, now)
        return self.claim(queue, limit, worker, now), changes, cancel

    def poll_acks(
        self, queue: str, acks: list[Ack], worker: str | None, now: int
    ) -> tuple[list[MChange], list[int]]:
        """A poll's acks, in order, each as if alone; all or nothing. The changes, and the
        tasks to stop: each heartbeat of a delivery cancelled at an operator's request,
        from its lease holder, in the acks' order (a repeated heartbeat hears it again)."""
        options = self._options(queue)
        work = copy.deepcopy(self.tasks)
        saved = self.edges
        self.edges = copy.deepcopy(saved)  # all or nothing, edges too
        queues = dict(self.queues)  # and a dead-letter queue a move made
        try:
            return self._poll_acks(queue, options, work, acks, worker, now)
        except Refusal:
            self.edges = saved
            self.queues = queues
            raise

    def _poll_acks(
        self,
        queue: str,
        options: QueueOptions,
        work: dict[int, MTask],
        acks: list[Ack],
        worker: str | None,
        now: int,
    ) -> tuple[list[MChange], list[int]]:
        before = {task_id: task.state for task_id, task in work.items()}
        last: dict[int, MTask] = {}  # each acked task's last version, gone or not
        cancel: list[int] = []
        settled: list[MChange] = []  # the tasks that waited for those the acks ended
        for index, ack in enumerate(acks):
            task_id = self.parse_id(ack.task_id)
            if task_id is None or task_id > self.issued:
                raise Refusal(TaskNotFound, ack=index)
            task = work.get(task_id)
            if task is None or task.queue != queue:
                # Issued and gone (a finished task of a queue without history), or another
                # queue's: ignored alike, whatever its state.
                continue
            if self.ownership and self.owner_conflict(ack, worker):
                raise Refusal(Conflict, ack=index)
            if ack.attempt is not None and not 1 <= ack.attempt <= task.attempts:
                raise Refusal(Conflict, ack=index)  # a delivery that never happened
            if task.attempts == 0:
                raise Refusal(Conflict, ack=index)  # never delivered
            if task.state is not State.RUNNING or ack.attempt not in (None, task.attempts):
                if (
                    ack.status == "in progress"
                    and task.state is State.CANCELLED
                    and task.cancel_requested
                    and ack.attempt in (None, task.attempts)
                    and (worker is None or task.worker is None or task.worker == worker)
                ):
                    cancel.append(task_id)  # the cancelled delivery's heartbeat, again
                continue  # an earlier delivery's ack, or a repeat: changes nothing
            running = task.state
            if task.cancel_requested:  # its first ack since the cancel: whatever it says
                self._cancel(task, now)
                if ack.status == "in progress":
                    cancel.append(task_id)
            else:
                self._ack(task, ack, options, now)
            self._ended(work, replace(task, state=running), task.state, now, settled)
            last[task_id] = task
            if task.status == "failed" and options.dead_letter is not None:
                self._dead_letter(task, options.dead_letter, now)
            elif task.state in (State.DONE, State.FAILED) and not self._kept(task, options, now):
                self._forget(work, task_id)  # a queue without history keeps no finished task
        changes = [
            MChange(replace(task), before[task_id])
            for task_id, task in last.items()
            if task.state != before[task_id]
        ]
        self.tasks = work
        return changes + settled, cancel

    def claim(self, queue: str, limit: int, worker: str | None, now: int) -> list[MTask]:
        """A poll's claim: up to ``limit`` ready tasks, by priority then age; none while the
        queue is paused, no more than its concurrency leaves room for, and none of a key
        that has key_concurrency tasks in progress (its later tasks wait their turn)."""
        options = self._options(queue)
        if options.paused:
            return []
        mine = [t for t in self.tasks.values() if t.queue == queue]
        running = [t for t in mine if t.state is State.RUNNING]
        if options.concurrency is not None:
            limit = min(limit, options.concurrency - len(running))
        bucket = None
        if options.rate is not None:  # limit tokens, refilled evenly over period, from full
            rate = options.rate
            bucket = self.buckets.setdefault(queue, [float(rate.limit), now])
            if now > bucket[1]:
                bucket[0] = min(
                    float(rate.limit), bucket[0] + (now - bucket[1]) * rate.limit / rate.period
                )
                bucket[1] = now
            limit = min(limit, math.floor(bucket[0]))
        per_key = Counter(t.key for t in running if t.key is not None)
        ready = sorted(
            (t for t in mine if t.state is State.READY and not self._expired(t, now)),
            key=(lambda t: (-t.priority, t.seq or 0, t.id))
            if options.fair
            else (lambda t: (-t.priority, 0, t.id)),
        )
        chosen: list[MTask] = []
        by_rate: Counter[str] = Counter()  # taken per key, under key_rate
        for task in ready:
            if len(chosen) >= limit:
                break
            if (
                options.key_concurrency is not None
                and task.key is not None
                and per_key[task.key] >= options.key_concurrency
            ):
                continue
            if options.key_rate is not None and task.key is not None:
                tokens = self._key_bucket(queue, task.key, options.key_rate, now)[0]
                if tokens - by_rate[task.key] < 1:  # passed over: the next keys' go on
                    continue
                by_rate[task.key] += 1
            if options.key_concurrency is not None and task.key is not None:
                per_key[task.key] += 1
            chosen.append(task)
        if bucket is not None:
            bucket[0] -= len(chosen)
        for key, count in by_rate.items():
            self.key_buckets[(queue, key)][0] -= count
        delivered = []
        for task in chosen:
            task.state = State.RUNNING
            task.attempts += 1
            task.worker = worker
            task.lease_until = now + self._lease(task, options)
            task.run_at = None
            task.updated_at = now
            task.progress = None  # a new delivery reports its own
            delivered.append(self.shown(task))
        return delivered

    def _key_bucket(self, queue: str, key: str, rate: Rate, now: int) -> list[Fraction]:
        """The key's bucket under key_rate, refilled to ``now``: limit tokens, refilled
        evenly over period, from full."""
        bucket = self.key_buckets.setdefault((queue, key), [Fraction(rate.limit), Fraction(now)])
        if now > bucket[1]:
            refill = (now - bucket[1]) * Fraction(rate.limit, rate.period)
            bucket[0] = min(Fraction(rate.limit), bucket[0] + refill)
            bucket[1] = Fraction(now)
        return bucket

    def _ack(self, task: MTask, ack: Ack, options: QueueOptions, now: int) -> None:
        """What an ack for the current delivery does (the task is in progress)."""
        task.updated_at = now
        if ack.status == "in progress":
            if len(ack.progress):  # absent: the last progress stays
                task.progress = bytes(ack.progress)
            if ack.lease == 0 and options.dead_letter is not None and self._spent(task, options):
                # Given back with every delivery spent: it fails for good, and the caller
                # moves it to its dead-letter queue (SQS's maxReceiveCount).
                task.state = State.FAILED
                task.lease_until = None
                task.error = f"given back after delivery {task.attempts}; all attempts are spent"
                return
            if ack.lease == 0:  # given back: queued again, not a failure (its error stays)
                task.state = State.READY
                task.lease_until = None
                task.run_at = None
                return
            lease = self._lease(task, options) if ack.lease is None else ack.lease
            task.lease_until = now + lease
            return
        task.lease_until = None
        if ack.status == "done":
            task.state = State.DONE
            task.result = bytes(ack.result)
            task.error = None
            return
        task.error = "failed" if ack.error is None else ack.error
        retry = options.retry_failed if ack.retry is None else ack.retry
        if retry and not self._spent(task, options):
            delay = backoff(options, task.attempts)
            task.state = State.SCHEDULED if delay else State.READY
            task.run_at = now + delay if delay else None
        else:
            task.state = State.FAILED

    @staticmethod
    def _cancel(task: MTask, now: int) -> None:
        """A task in progress whose cancel was requested ends cancelled."""
        task.state = State.CANCELLED
        task.lease_until = None
        task.updated_at = now
        task.error = (
            f"cancelled at the operator's request while in progress (delivery {task.attempts})"
        )

    @staticmethod
    def _spent(task: MTask, options: QueueOptions) -> bool:
        limit = options.max_attempts if task.max_attempts is None else task.max_attempts
        return limit > 0 and task.attempts - task.budget_from >= limit

    @staticmethod
    def _lease(task: MTask, options: QueueOptions) -> int:
        return options.timeout if task.timeout is None else task.timeout

    @staticmethod
    def _expired(task: MTask, now: int) -> bool:
        """A task never delivered, still waiting, whose expires_at has come."""
        return (
            task.expires_at is not None
            and task.expires_at <= now
            and task.attempts == 0
            and task.state in (State.PAUSED, State.READY, State.SCHEDULED)
        )

    @staticmethod
    def _kept(task: MTask, options: QueueOptions, now: int) -> bool:
        """Whether a queue without history keeps a finished task: while it holds its key."""
        return options.persistent or (task.unique_until is not None and task.unique_until > now)

    def expire(self, now: int) -> list[MChange]:
        """Leases that ran out: deliver again, or fail once the attempts are spent. Then
        scheduled tasks whose time has come become ready."""
        changes = []
        for task in list(self.tasks.values()):
            if task.state is not State.RUNNING or task.lease_until is None:
                continue
            if task.lease_until > now:
                continue
            options = self.queues[task.queue]
            lease = self._lease(task, options)
            message = f"lease expired: no ack within {lease} ms of delivery {task.attempts}"
            if task.cancel_requested:
                self._cancel(task, now)
                changes.append(MChange(replace(task), State.RUNNING))
                self._ended(
                    self.tasks, replace(task, state=State.RUNNING), task.state, now, changes
                )
                continue
            task.lease_until = None
            task.updated_at = now
            if self._spent(task, options):
                task.state = State.FAILED
                task.error = f"{message}; all attempts are spent"
                running = replace(task, state=State.RUNNING)
                self._ended(self.tasks, running, task.state, now, changes)
                if options.dead_letter is not None:
                    self._dead_letter(task, options.dead_letter, now)
                elif not self._kept(task, options, now):
                    self._forget(self.tasks, task.id)
            else:
                task.state = State.READY
                task.run_at = None
                task.error = message
            changes.append(MChange(replace(task), State.RUNNING))
        # Each expiry at its moment (section 8), the earliest first: a task that an expiry
        # releases (it waited for the task that expired, after_failure "run") and whose own
        # expiry has come meanwhile expires then too, before any later one.
        due = [(t.expires_at or 0, t.id) for t in self.tasks.values() if self._expired(t, now)]
        heapq.heapify(due)
        while due:
            _at, task_id = heapq.heappop(due)
            task = self.tasks[task_id]
            if not self._expired(task, now):  # an earlier expiry cancelled it
                continue
            assert task.expires_at is not None
            old = task.state
            task.state = State.CANCELLED
            task.run_at = None
            task.error = (
                f"expired: not delivered within {(task.expires_at - task.created_at) / 1000:g} s"
            )
            task.updated_at = now
            changes.append(MChange(replace(task), old))
            settled: list[MChange] = []
            self._ended(self.tasks, replace(task, state=old), task.state, now, settled)
            changes += settled
            for change in settled:
                if self._expired(self.tasks[change.task.id], now):
                    heapq.heappush(due, (change.task.expires_at or 0, change.task.id))
        for task in list(self.tasks.values()):
            options = self.queues[task.queue]
            finished = task.state in (State.DONE, State.FAILED)
            if finished and task.unique_until is not None and not self._kept(task, options, now):
                self._forget(self.tasks, task.id)  # kept while it held its key: time is over
        for task in self.tasks.values():
            if task.state is State.SCHEDULED and task.run_at is not None and task.run_at <= now:
                task.state = State.READY
                task.run_at = None
                task.updated_at = now
                changes.append(MChange(replace(task), State.SCHEDULED))
        return changes

    def _in_queue(self, queue: str, task_id: int) -> MTask:
        task = self.tasks.get(task_id)
        if task is None or task.queue != queue:
            raise Refusal(TaskNotFound)
        return task

    def set_status(
        self, queue: str, task_id: int, status: str, now: int, edit: Edit | None = None
    ) -> MChange | None:
        """An operator's PATCH; None when the task already has that status. With ``edit``,
        an edit and retry (section 14)."""
        self._options(queue)
        task = self._in_queue(queue, task_id)
        if edit is not None:
            return self._edit(queue, task, status, now, edit)
        if status not in PATCH_FROM:
            raise Refusal(ValidationError)
        if task.status == status:
            return None
        if task.status not in PATCH_FROM[status]:
            raise Refusal(IllegalTransition)
        old = task.state
        if old is State.RUNNING:  # cancelled: only recorded, once
            if task.cancel_requested:
                return None
            task.cancel_requested = True
            task.updated_at = now
            return MChange(self.shown(task), old)  # its record, parents' results included
        if (
            status == "queued"
            and old in (State.FAILED, State.CANCELLED)
            and task.unique_key is not None
            and self.holder(queue, task.unique_key, now) not in (None, task)
        ):
            raise Refusal(Conflict)  # another task took the key meanwhile: nothing changes
        task.updated_at = now
        waits = self._still_waits(task)
        if status == "cancelled":
            task.state = State.CANCELLED
            self._ended(self.tasks, replace(task, state=old), task.state, now, [])
        elif status == "paused":
            task.state = State.PAUSED
        elif old is State.PAUSED:  # resume: due now, or still waiting for its time
            if task.run_at is None or task.run_at <= now:
                task.state, task.run_at = State.READY, None
            else:
                task.state = State.SCHEDULED
            if waits:  # and for the tasks it names (section 11)
                task.state = State.WAITING
        else:  # retry a failed or cancelled task, with a fresh set of attempts
            if task.unique_key is not None and self.holder(queue, task.unique_key, now) not in (
                None,
                task,
            ):
                raise Refusal(Conflict)  # another task took the key meanwhile
            task.state = State.WAITING if waits else State.READY
            task.run_at = None
            task.budget_from = task.attempts
            task.cancel_requested = False
            task.expires_at = None  # the operator's retry: no expiry any more
            task.debounce_key = None  # and out of its debounce (section 14)
            if old is State.CANCELLED:
                task.error = None
            if self.queues[queue].fair and task.seq is None:  # finished before it was fair
                retried = task.state
                task.state = old  # not waiting while its place is worked out
                front = self._front(queue)
                task.state = retried
                self._place(task, front)
        return MChange(self.shown(task), old)

    def _edit(self, queue: str, task: MTask, status: str, now: int, edit: Edit) -> MChange:
        """Edit and retry: with "queued" only; a task in progress or done is refused; a
        paused one resumes, a failed or cancelled one is retried (as PATCH does); each takes
        the edit's fields and a fresh set of attempts, and keeps its time and its parents."""
        if status != "queued":
            raise Refusal(ValidationError)
        if task.state in (State.RUNNING, State.DONE):
            raise Refusal(IllegalTransition)
        old = task.state
        if old in (State.PAUSED, State.FAILED, State.CANCELLED):
            self.set_status(queue, task.id, "queued", now)  # refused: nothing changed
        moved = edit.key is not None and edit.key != task.key
        if edit.data is not None:
            task.data = bytes(edit.data)
        if edit.priority is not None:
            task.priority = edit.priority
        if edit.key is not None:
            task.key = edit.key
        task.budget_from = task.attempts
        task.updated_at = now
        if moved and self.queues[queue].fair:  # another key's task now: placed as one
            task.seq = None
            self._place(task, self._front(queue))
        return MChange(self.shown(task), old)

    def delete_task(self, queue: str, task_id: int, now: int) -> bool:
        self._options(queue)
        task = self.tasks.get(task_id)
        if task is None or task.queue != queue:
            return False
        self._ended(self.tasks, task, None, now, [])
        self._forget(self.tasks, task_id)
        return True

    def bulk(
        self,
        queue: str,
        action: str,
        states: tuple[State, ...] | None,
        key: str | None,
        now: int,
        step: int = 1000,
    ) -> tuple[int, int]:
        """A bulk action on the queue's tasks of ``states`` (None: any) and ``key`` (None:
        any), applied as the PATCH it stands for, task by task, skipping those it does not
        apply to: (matched, changed). It goes in steps of ``step`` tasks by id, each its own
        transaction: a step selects the tasks as the earlier steps left them (one that an
        earlier step's cancellation cascaded to may no longer match)."""
        self._options(queue)
        matched_all = changed = after = 0
        while True:
            matched = [
                t
                for t in self.of_queue(queue)
                if t.id > after
                and (states is None or t.state in states)
                and (key is None or t.key == key)
            ][:step]
            for task in matched:
                after = task.id
                if action == "delete":
                    if task.state is not State.RUNNING and task.id in self.tasks:
                        # As DELETE: the tasks waiting for it end as it ended (section 11).
                        self._ended(self.tasks, self.tasks[task.id], None, now, [])
                        self._forget(self.tasks, task.id)
                        changed += 1
                    continue
                applies = BULK_FROM[action]
                if task.state not in applies:
                    continue
                try:
                    status = "queued" if action == "retry" else "cancelled"
                    if self.set_status(queue, task.id, status, now) is not None:
                        changed += 1
                except Refusal:
                    pass  # a retry whose unique_key another task holds
            matched_all += len(matched)
            if len(matched) < step:
                return matched_all, changed

    def prune(self, queue: str, state: State, before: int, now: int, most: int) -> int:
        """Retention: the oldest (by id) finished tasks of ``state`` that finished at or
        before ``before`` and hold no unique_key at ``now``."""
        gone = [
            t
            for t in self.of_queue(queue)
            if t.state is state
            and t.updated_at <= before
            and not (t.unique_until is not None and t.unique_until > now)
        ][:most]
        for task in gone:
            del self.tasks[task.id]
        return len(gone)

    # -- dead letters and redrive (section 14) -------------------------------------------------

    def _dead_letter(self, task: MTask, target: str, now: int) -> None:
        """A task that failed for good in a queue with a dead_letter option (its dependants
        settled as at a failure): moved to that queue, saying where from and why."""
        record = (task.queue, task.error, task.attempts - task.budget_from, now)
        self._move(task, target, now)
        task.dead_letter = record

    def _move(self, task: MTask, target: str, now: int) -> None:
        """The task moved to ``target`` (made with default options when there is none), as
        queued, with a fresh set of attempts; what belonged to the queue it left goes (its
        own max_attempts, expiry, unique_key and debounce_key: keys are per queue). Its
        error stays."""
        if target not in self.queues:
            self.queues[target] = QueueOptions()
        task.queue = target
        task.state = State.READY
        task.run_at = None
        task.lease_until = None
        task.budget_from = task.attempts
        task.max_attempts = None
        task.expires_at = None
        task.unique_key = None
        task.unique_until = None
        task.debounce_key = None
        task.cancel_requested = False
        task.progress = None
        task.updated_at = now
        task.seq = None
        if self.queues[target].fair:
            self._place(task, self._front(target))

    def redrive(
        self,
        queue: str,
        to: str | None,
        states: tuple[State, ...] | None,
        key: str | None,
        now: int,
    ) -> tuple[int, int]:
        """Move the queue's queued (due or delayed) and failed tasks of ``states`` and
        ``key`` to ``to``, or each back to the queue it came from (its dead_letter): the
        tasks selected, and those moved (a task with nowhere to go stays)."""
        self._options(queue)
        movable = (State.READY, State.SCHEDULED, State.FAILED)
        selected = [
            t
            for t in self.tasks.values()
            if t.queue == queue
            and t.state in movable
            and (states is None or t.state in states)
            and (key is None or t.key == key)
        ]
        moved = 0
        for task in selected:
            target = to if to is not None else task.dead_letter[0] if task.dead_letter else None
            if target is None or target == queue:
                continue
            self._move(task, target, now)
            task.dead_letter = None
            moved += 1
        return len(selected), moved

    def counts(self) -> dict[str, dict[State, int]]:
        result: dict[str, dict[State, int]] = {name: {} for name in self.queues}
        for task in self.tasks.values():
            per_state = result[task.queue]
            per_state[task.state] = per_state.get(task.state, 0) + 1
        return result


#: What each bulk action applies to (the others it skips); a delete takes all but RUNNING.
BULK_FROM: Final = {
    "retry": (State.FAILED, State.CANCELLED),
    # A task waiting for others is "queued" (section 11): cancelled as PATCH would.
    "cancel": (State.PAUSED, State.READY, State.SCHEDULED, State.WAITING),
}


def outcome(how: str, parent: MTask | None) -> bytes:
    """What a child with after_failure "run" keeps of a parent that ended (section 14): its
    status, its result and its error (a deleted parent counts as cancelled)."""
    status = {"done": "done", "failed": "failed"}.get(how, "cancelled")
    if how == "was deleted":
        error: str | None = "deleted before it ended"
    else:
        error = None if how == "done" or parent is None else parent.error
    result = None if parent is None or how == "was deleted" else parent.result
    return b'{"status":"%b","result":%b,"error":%b}' % (
        status.encode(),
        result or b"null",
        msgspec.json.encode(error),
    )


def new_task(queue: str, spec: NewTask, task_id: int, now: int) -> MTask:
    """A task as an enqueue at ``now`` creates it."""
    # A run_at stands for the delay; one that has passed means now (section 7).
    later = now + spec.delay_ms if spec.run_at is None else spec.run_at
    run_at = later if later > now else None
    if spec.paused:
        state = State.PAUSED
    elif run_at is not None:
        state = State.SCHEDULED
    else:
        state = State.READY
    return MTask(
        id=task_id,
        queue=queue,
        state=state,
        priority=spec.priority,
        data=bytes(spec.data),
        created_at=now,
        updated_at=now,
        run_at=run_at,
        key=spec.key,
        timeout=spec.timeout,
        max_attempts=spec.max_attempts,
        expires_at=None if spec.expires_in_ms is None else now + spec.expires_in_ms,
        unique_key=spec.unique_key,
        unique_until=None if spec.unique_for_ms is None else now + spec.unique_for_ms,
        debounce_key=spec.debounce_key,
    )


def backoff(options: QueueOptions, attempts: int) -> int:
    """Milliseconds before the retry after failed delivery number ``attempts``:
    ``retry_delay``, doubled for each delivery before it, at most ``retry_delay_max``."""
    if options.retry_delay <= 0:
        return 0
    doubled: int = options.retry_delay * 2 ** min(max(attempts - 1, 0), 40)
    return min(doubled, options.retry_delay_max)
