"""The queue rules: what each ack, lease expiry and status change does to a task.

Pure functions over :class:`~katar.core.model.Task`. Every store loads the task inside its
transaction, asks these functions what the new task is, and writes it back, so the rules are
written once and every store behaves the same.

Each returns the task's new version, or None when nothing changes. A store then writes the
new version, or removes it where :func:`discard` says the queue keeps no such history.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
from msgspec.structs import replace

from katar.core.model import (
    CANCELLED,
    DONE,
    FAILED,
    FINAL_STATES,
    PAUSED,
    READY,
    RUNNING,
    SCHEDULED,
    UNFINISHED,
    WAITING,
    Ack,
    Delivery,
    NewTask,
    QueueOptions,
    Rate,
    State,
    Task,
)
from katar.core.model import unknown_parent as unknown_parent  # the stores take it here
from katar.errors import Conflict, IllegalTransition, ValidationError
from katar.protocol import ACK_STATUSES as ACK_STATUSES
from katar.protocol import HISTORY_LENGTH, MAX_AFTER, MAX_AFTER_PER_REQUEST
from katar.protocol import MAX_CHILDREN as MAX_WAITING
from katar.protocol import PATCH_STATUSES as PATCH_STATUSES


def new_task(queue: str, spec: NewTask, task_id: int, now: int) -> Task:
    """The stored form of a freshly enqueued task."""
    # A run_at that has passed means now, as a delay of 0 does.
    later = spec.run_at if spec.run_at is not None else now + spec.delay_ms
    run_at = later if later > now else None
    state = PAUSED if spec.paused else SCHEDULED if run_at is not None else READY
    return Task(
        id=task_id,
        queue=queue,
        state=state,
        priority=spec.priority,
        data=spec.data,
        created_at=now,
        updated_at=now,
        run_at=run_at,
        key=spec.key,
        timeout=spec.timeout,
        max_attempts=spec.max_attempts,
        expires_at=None if spec.expires_in_ms is None else now + spec.expires_in_ms,
        unique_key=spec.unique_key,
        unique_until=None if spec.unique_for_ms is None else now + spec.unique_for_ms,
        trace=spec.trace,
    )


def special(spec: NewTask) -> bool:
    """Whether a task to enqueue has per-task options or a unique_key: the SQL stores write
    such tasks one by one, looking for the key's holder first."""
    return (
        spec.unique_key is not None
        or bool(spec.after)
        or bool(spec.refs)
        or spec.timeout is not None
        or spec.max_attempts is not None
        or spec.expires_in_ms is not None
        or spec.trace is not None
    )


def lease_ms(task: Task, options: QueueOptions) -> int:
    """The lease of the task's deliveries: its own timeout, else its queue's."""
    return options.timeout if task.timeout is None else task.timeout


def claimed(task: Task, options: QueueOptions, worker: str | None, now: int) -> Task:
    """The task as leased to a worker by a claim."""
    return replace(
        task,
        state=RUNNING,
        attempts=task.attempts + 1,
        worker=worker,
        lease_until=now + lease_ms(task, options),
        run_at=None,
        updated_at=now,
        progress=None,  # a new delivery reports its own
        started_at=now,
    )


# -- delivery history (the task record's ``history``) ------------------------------------------
#
# A task's row describes its current or last delivery (attempts, worker, started_at, and its
# state, error and updated_at once it ended): the common task, delivered once and done, writes
# no history at all. A delivery whose end the row cannot keep describing (the task waits or
# runs again, or its outcome is not its state's: an expired lease) moves into ``history``.

_history_decoder: Final = msgspec.json.Decoder(list[Delivery])
_OUTCOME_OF_STATE: Final = {DONE: "done", FAILED: "failed", CANCELLED: "cancelled"}


def _current(task: Task) -> Delivery | None:
    """The delivery the row describes, if any."""
    if task.started_at is None:
        return None
    outcome = _OUTCOME_OF_STATE.get(task.state)
    return Delivery(
        task.attempts,
        task.worker,
        task.started_at,
        None if outcome is None else task.updated_at,
        outcome,
        task.error if outcome is not None and outcome != "done" else None,
    )


def archive(task: Task, outcome: str | None = None, now: int | None = None, **changes: Any) -> Task:
    """``task`` with ``changes``, its current delivery moved into its history (the last
    HISTORY_LENGTH kept), ended at ``now`` with ``outcome`` and the error in ``changes``,
    or, without an outcome, as its state says (a finished task retried)."""
    current = _current(task)
    if current is None:
        return replace(task, **changes)
    if outcome is not None:
        error = changes.get("error", task.error) if outcome != "done" else None
        current = Delivery(current.attempt, current.worker, current.started_at, now, outcome, error)
    past = [] if task.history is None else _history_decoder.decode(task.history)
    past.append(current)
    history = msgspec.Raw(msgspec.json.encode(past[-HISTORY_LENGTH:]))
    return replace(task, started_at=None, history=history, **changes)


def deliveries(task: Task) -> list[Delivery]:
    """The task's deliveries, oldest first: the last HISTORY_LENGTH."""
    past = [] if task.history is None else _history_decoder.decode(task.history)
    current = _current(task)
    if current is not None:
        past.append(current)
    return past[-HISTORY_LENGTH:]


# -- flow control: what a claim of a limited queue may take (QueueOptions.limited) -----------


class Bucket:
    """A rate limit's token bucket: ``tokens`` as of ``at`` (ms). It holds at most
    rate.limit tokens and starts full, so that at most 2 x limit deliveries fall in any one
    period: a full bucket, then what refills while it is spent."""

    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: int) -> None:
        self.tokens = tokens
        self.at = at

    @classmethod
    def full(cls, rate: Rate, now: int) -> Bucket:
        return cls(float(rate.limit), now)

    @classmethod
    def stored(cls, rate: Rate, now: int, tokens: float | None, at: int | None) -> Bucket:
        """A bucket kept as (tokens, at), refilled to ``now``; full when none was kept."""
        if tokens is None or at is None:
            return cls.full(rate, now)
        bucket = cls(tokens, at)
        bucket.refill(rate, now)
        return bucket

    @classmethod
    def kept_in(cls, buckets: dict[Any, Bucket], name: Any, rate: Rate, now: int) -> Bucket:
        """The bucket a server keeps in ``buckets`` under ``name``, made full the first time,
        refilled to ``now`` (the stores that one server serves keep theirs in memory)."""
        bucket = buckets.get(name)
        if bucket is None:
            bucket = buckets[name] = cls.full(rate, now)
        bucket.refill(rate, now)
        return bucket

    def refill(self, rate: Rate, now: int) -> None:
        """Add what has dripped in since ``at``, up to the bucket's size."""
        if now > self.at:
            self.tokens = min(
                float(rate.limit), self.tokens + (now - self.at) * rate.limit / rate.period
            )
            self.at = now

    def take(self, count: int) -> None:
        self.tokens -= count

    def next_token(self, rate: Rate, now: int) -> int:
        """When (ms) the bucket will hold a whole token again."""
        missing = 1.0 - self.tokens
        if missing <= 0:
            return now
        return now + math.ceil(missing * rate.period / rate.limit)


def claim_allowance(options: QueueOptions, limit: int, running: int, bucket: Bucket | None) -> int:
    """How many tasks a poll asking for ``limit`` may take from a queue that has
    ``running`` tasks in progress and whose rate ``bucket`` is refilled to now."""
    if options.paused:
        return 0
    allowed = limit
    if options.concurrency is not None:
        allowed = min(allowed, options.concurrency - running)
    if options.rate is not None and bucket is not None:
        allowed = min(allowed, math.floor(bucket.tokens))
    return max(allowed, 0)


def held_by(options: QueueOptions, limit: int, running: int, bucket: Bucket | None) -> str | None:
    """Which limit made claim_allowance (same arguments) allow fewer than ``limit`` tasks:
    "paused", "concurrency" or "rate" (the first that did, in that order); None if none.
    Counted in the metrics as a limited poll."""
    if options.paused:
        return "paused"
    if options.concurrency is not None and options.concurrency - running < limit:
        return "concurrency"
    if options.rate is not None and bucket is not None and math.floor(bucket.tokens) < limit:
        return "rate"
    return None


class ClaimPlan:
    """A claim from a queue with limits, as every store runs it: what the polls asking for
    ``asked`` tasks may take (``allowed``: claim_allowance) and the limit that cut it
    (``held``: held_by), from the tasks in progress and the rate bucket refilled to now;
    then, once the claim took its tasks, ``settle`` spends their tokens, and ``retry_at``
    and ``held_after`` say what each poll learns. The stores only count, claim and keep the
    bucket."""

    __slots__ = ("allowed", "bucket", "held", "rate")

    def __init__(
        self, options: QueueOptions, asked: int, running: int, bucket: Bucket | None
    ) -> None:
        self.allowed = claim_allowance(options, asked, running, bucket)
        self.held = held_by(options, asked, running, bucket)
        self.rate = options.rate
        self.bucket = bucket if options.rate is not None else None

    def settle(self, taken: int) -> Bucket | None:
        """Spend the tokens of what the claim took (not of what it was allowed): the bucket
        to keep, None without a rate limit."""
        if self.bucket is not None:
            self.bucket.take(taken)
        return self.bucket

    def retry_at(self, asked: int, got: int, now: int) -> int | None:
        """When a poll that got fewer tasks than it asked may find a token again
        (PollResult.retry_at), after settle; None without a rate limit."""
        if self.bucket is None or self.rate is None or got >= asked:
            return None
        return self.bucket.next_token(self.rate, now)

    def held_after(self, taken: int) -> str | None:
        """The limit that held the claim back: none when it took fewer tasks than it was
        allowed (there were fewer ready tasks: no limit held it)."""
        return self.held if taken >= self.allowed else None


def pick_by_key(
    candidates: Iterable[tuple[int, str | None]],
    want: int,
    running: Mapping[str, int],
    key_concurrency: int | None,
    taken: dict[str, int],
) -> list[int]:
    """From ready tasks (id, key) in claim order, the ids a claim takes: up to ``want``,
    skipping a task whose key already has ``key_concurrency`` in progress (``running``) or
    taken by this claim (``taken``, updated). Skipping keeps the order within each key: a
    key's later task is never taken before an earlier one that was skipped."""
    picked: list[int] = []
    for task_id, key in candidates:
        if len(picked) >= want:
            break
        if key is not None and key_concurrency is not None:
            now_taken = taken.get(key, 0)
            if running.get(key, 0) + now_taken >= key_concurrency:
                continue
            taken[key] = now_taken + 1
        picked.append(task_id)
    return picked


def fair_seq(last: int | None, front: int) -> int:
    """A fair queue's order for a new task of a key (start-time fair queuing): one past
    the key's last task still waiting or running (``last``), but never before the task at
    the head of the queue (``front``). A claim takes ready tasks by priority, then by this
    number, then by id, so the keys take turns: a key with a backlog of 100,000 has numbers
    far ahead, and another key's first task starts at the front. Tasks without a key form
    one group of their own."""
    return front if last is None else max(last + 1, front)


def fair_places(
    keys: Sequence[str | None], last: dict[str | None, int | None], front: int
) -> list[int]:
    """The places (fair_seq) of new tasks with these keys, in order, given each key's last
    place (``last``, updated) and the queue's front."""
    places = []
    for key in keys:
        place = fair_seq(last[key], front)
        last[key] = place
        places.append(place)
    return places


#: How many ready tasks beyond those it wants a key_concurrency claim reads at its first
#: look; doubled at each further look, so that passing over many tasks of keys at their
#: limit takes a few looks, not one per CLAIM_EXTRA tasks.
CLAIM_EXTRA: Final = 64


def unseen_keys(
    candidates: Iterable[tuple[int, str | None]], known: Mapping[str, int]
) -> list[str]:
    """The keys of the candidates (id, key) whose tasks in progress a claim has not counted
    yet (not in ``known``), once each, sorted: a claim counts those it meets, not every key
    in progress."""
    return sorted({key for _id, key in candidates if key is not None and key not in known})


def blocked_keys(
    running: Mapping[str, int], taken: Mapping[str, int], key_concurrency: int | None
) -> list[str]:
    """The keys a claim must pass over: those at their key_concurrency."""
    if key_concurrency is None:
        return []
    keys = set(running) | set(taken)
    return sorted(k for k in keys if running.get(k, 0) + taken.get(k, 0) >= key_concurrency)


def _attempts_spent(task: Task, options: QueueOptions) -> bool:
    limit = options.max_attempts if task.max_attempts is None else task.max_attempts
    return limit > 0 and task.attempts - task.attempt_base >= limit


def _finish(task: Task, state: State, now: int, **changes: object) -> Task:
    return replace(task, state=state, lease_until=None, updated_at=now, **changes)


def discard(task: Task, options: QueueOptions) -> bool:
    """True when the store removes the task instead of keeping it: a done or failed task
    of a queue that keeps no history, unless its unique_key is held past the moment it
    finished (unique_for): then it stays until :func:`sweepable`."""
    return (
        not options.persistent
        and task.state in (DONE, FAILED)
        and (task.unique_until is None or task.unique_until <= task.updated_at)
    )


def sweepable(task: Task, options: QueueOptions, now: int) -> bool:
    """True for a finished task that a queue without history kept only while its
    unique_key was held (see :func:`discard`), once that time has passed."""
    return (
        not options.persistent
        and task.state in (DONE, FAILED)
        and task.unique_until is not None
        and task.unique_until <= now
    )


#: The states in which a task that was never delivered expires at its expires_at.
_WAITING: Final = frozenset({PAUSED, READY, SCHEDULED})


def holds_key(task: Task, now: int) -> bool:
    """Whether the task keeps another task with its unique_key out of its queue at ``now``:
    while it is paused, queued or in progress, and until its unique_until in any status."""
    return task.unique_key is not None and (
        task.state in UNFINISHED or (task.unique_until is not None and task.unique_until > now)
    )


def retakes_key(old: Task, new: Task | None, now: int) -> bool:
    """Whether an operator's change (a retry of a failed or cancelled task) makes the task
    hold its unique_key again: the store must then check that no other task holds it."""
    return new is not None and not holds_key(old, now) and holds_key(new, now)


def key_taken(task: Task, holder: Task) -> Conflict:
    """The refusal of a retry whose unique_key another task now holds."""
    return Conflict(
        f"task {task.id} cannot be queued again: task {holder.id} holds its unique_key "
        f"{task.unique_key!r}; retry it once that task is finished (or delete one of them)",
        _id=str(task.id),
    )


def duplicate(task: Task) -> Task:
    """An existing task as an enqueue that asked for its unique_key answers it."""
    return replace(task, duplicate=True)


def expiry(task: Task) -> int | None:
    """When the task expires (ms): its expires_at while it waits and was never delivered;
    None when it does not (any more). A delivery before that time lifts the expiry for good."""
    if task.expires_at is None or task.attempts or task.state not in _WAITING:
        return None
    return task.expires_at


def expired(task: Task, now: int) -> bool:
    """Whether the task's expiry has come: no claim may deliver it any more."""
    at = expiry(task)
    return at is not None and at <= now


def expire(task: Task, now: int) -> Task | None:
    """A task not delivered by its expires_at: cancelled, its error saying so."""
    if not expired(task, now):
        return None
    assert task.expires_at is not None
    waited = (task.expires_at - task.created_at) / 1000
    return replace(
        task,
        state=CANCELLED,
        run_at=None,
        error=f"expired: not delivered within {waited:g} s",
        updated_at=now,
    )


def retry_delay(options: QueueOptions, attempts: int) -> int:
    """Milliseconds before the retry that follows failed delivery number ``attempts``."""
    if options.retry_delay <= 0:
        return 0
    exponent = min(max(attempts - 1, 0), 40)
    return int(min(options.retry_delay * (2**exponent), options.retry_delay_max))


def apply_ack(
    task: Task, ack: Ack, options: QueueOptions, now: int, worker: str | None = None
) -> Task | None:
    """What a worker's ack does to the task it names; ``worker`` is the name the acking
    poll gave, None for an anonymous poll.

    An ack applies to the current delivery: the task must be in progress, and ``attempt``,
    when given, must be the current one. An ack for an earlier delivery (its lease ran out
    and the task was delivered again, or it is a repeat of an ack already applied) changes
    nothing and is not an error, so that acks are idempotent and a stale worker can never
    overwrite a later outcome. An ack for a task that was never delivered, or for a delivery
    that never happened, is a client mistake: :class:`Conflict`. So is a named worker's ack
    of a delivery leased to another named worker (ownership); an anonymous poll, as the
    original protocol sends it, may ack any delivery, and a named one any delivery leased
    without a name.

    The stores call this for the acked queue's own tasks only. An ack naming an id that was
    issued but is not a task of this queue (finished and gone, or another queue's, in any
    state) is ignored, the same way whatever that task is: so that acks stay idempotent on
    queues without history, and a worker's answers tell it nothing of other queues' tasks.
    An id never issued is a 404.
    """
    if ack.attempt is not None and not 1 <= ack.attempt <= task.attempts:
        raise Conflict(
            f"task {task.id} has had {task.attempts} deliveries; "
            f"attempt {ack.attempt} was never delivered",
            _id=str(task.id),
        )
    current = task.state is RUNNING and ack.attempt in (None, task.attempts)
    if not current:
        if task.attempts == 0:
            raise Conflict(
                f"task {task.id} has not been delivered (status {task.status!r}); "
                "only a delivered task can be acknowledged",
                _id=str(task.id),
            )
        return None
    if not owns(task, worker):
        raise Conflict(
            f"task {task.id} is leased to another worker (delivery {task.attempts}); "
            f"worker {worker!r} may only acknowledge its own deliveries",
            _id=str(task.id),
        )
    if ack.status not in ACK_STATUSES:
        raise ValidationError(f"ack status must be one of {', '.join(ACK_STATUSES)}")
    if task.cancel_requested:
        # An operator cancelled the delivery: its first ack ends it cancelled, whatever the
        # ack says (a heartbeat's answer then tells the worker to stop: see stops()).
        return cancelled(task, now)
    if ack.status == "in progress":
        # A heartbeat with progress replaces the last one; one without keeps it.
        progress = ack.progress if len(ack.progress) else task.progress
        lease_until = now + lease_ms(task, options)
        return replace(task, lease_until=lease_until, updated_at=now, progress=progress)
    if ack.status == "done":
        return _finish(task, DONE, now, result=ack.result, error=None)
    error = ack.error if ack.error is not None else "failed"
    retry = options.retry_failed if ack.retry is None else ack.retry
    if retry and not _attempts_spent(task, options):
        delay = retry_delay(options, task.attempts)
        return archive(
            task,
            "failed",
            now,
            state=SCHEDULED if delay else READY,
            run_at=now + delay if delay else None,
            lease_until=None,
            error=error,
            updated_at=now,
        )
    return _finish(task, FAILED, now, error=error)


def cancelled(task: Task, now: int) -> Task:
    """A task in progress whose cancel an operator asked for, cancelled now."""
    return _finish(
        task,
        CANCELLED,
        now,
        error=f"cancelled at the operator's request while in progress (delivery {task.attempts})",
    )


def stops(task: Task, ack: Ack, worker: str | None = None) -> bool:
    """Whether the answer to ``ack`` tells its worker to stop the task: ``ack`` is a
    heartbeat of the delivery that an operator cancelled while it ran, from its lease holder.
    ``task`` is the task after the ack. True again for a repeat of that heartbeat, so that a
    worker whose answer was lost hears it again."""
    return (
        ack.status == "in progress"
        and task.state is CANCELLED
        and task.cancel_requested
        and ack.attempt in (None, task.attempts)
        and owns(task, worker)
    )


def owns(task: Task, worker: str | None) -> bool:
    """Whether a poll naming ``worker`` (None: an anonymous poll) may acknowledge the
    task's current delivery. The SQL stores' fast "done" statements match the same rows."""
    return worker is None or task.worker is None or task.worker == worker


def expire_lease(task: Task, options: QueueOptions, now: int) -> Task | None:
    """A lease ran out without an ack: deliver the task again, or fail it for good; or
    cancel it, when an operator asked for that while it ran."""
    if task.cancel_requested:  # the operator's cancel: the worker never heard of it
        return cancelled(task, now)
    lease = lease_ms(task, options)
    message = f"lease expired: no ack within {lease} ms of delivery {task.attempts}"
    if _attempts_spent(task, options):
        error = f"{message}; all attempts are spent"
        return archive(
            task, "expired", now, state=FAILED, lease_until=None, updated_at=now, error=error
        )
    return archive(
        task,
        "expired",
        now,
        state=READY,
        lease_until=None,
        run_at=None,
        error=message,
        updated_at=now,
    )


def promote(task: Task, now: int) -> Task:
    """A scheduled task whose not-before time has come becomes claimable."""
    return replace(task, state=READY, run_at=None, updated_at=now)


def change_status(task: Task, status: str, now: int, waiting: bool = False) -> Task | None:
    """An operator's PATCH: cancel, pause, resume or retry a task.

    ``waiting``: the task names in ``after`` a task that is not finished yet (see
    the store looks): resumed or retried, it waits for it again (WAITING).

    Returns the new task, or None when the task already has that status (or, for a task in
    progress, already has its cancel requested). Cancelling a task in progress only
    records the request (``cancel_requested``): see :func:`apply_ack`. Only the
    transitions of the contract are allowed; any other raises :class:`IllegalTransition`.
    """
    if status not in PATCH_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(PATCH_STATUSES)}")
    state = task.state
    if task.status == status:
        return None
    if status == "cancelled" and state in (PAUSED, READY, SCHEDULED, WAITING):
        return replace(task, state=CANCELLED, updated_at=now)
    if status == "cancelled" and state is RUNNING:
        # Recorded only: the task is cancelled at its worker's next heartbeat or ack, or at
        # its lease's end (apply_ack, expire_lease). A repeat changes nothing.
        if task.cancel_requested:
            return None
        return replace(task, cancel_requested=True, updated_at=now)
    if status == "paused" and state in (READY, SCHEDULED, WAITING):
        return replace(task, state=PAUSED, updated_at=now)
    if status == "queued" and state is PAUSED:
        due = task.run_at is None or task.run_at <= now
        return replace(
            task,
            state=WAITING if waiting else READY if due else SCHEDULED,
            run_at=None if due else task.run_at,
            updated_at=now,
        )
    if status == "queued" and state in (FAILED, CANCELLED):
        # A retry gets a fresh set of attempts; the delivery count itself keeps growing so
        # that an ack from an old delivery can still be told apart (fencing). It is the
        # operator's decision: an expiry (expires_in) no longer applies.
        return archive(
            task,
            state=WAITING if waiting else READY,
            run_at=None,
            expires_at=None,
            attempt_base=task.attempts,
            error=None if state is CANCELLED else task.error,
            cancel_requested=False,
            updated_at=now,
        )
    allowed = {
        "cancelled": "paused, queued or in progress",
        "paused": "queued",
        "queued": "paused, failed or cancelled",
    }[status]
    raise IllegalTransition(
        f"task {task.id} is {task.status!r}; only a {allowed} task can become {status!r}",
        _id=str(task.id),
        status=task.status,
    )


def is_final(task: Task) -> bool:
    """True once the task is done, failed or cancelled."""
    return task.state in FINAL_STATES


# -- operators: bulk actions and retention ----------------------------------------------------

#: The states each bulk action applies to, as PATCH would (katar.protocol.BULK_ACTIONS):
#: retry a failed or cancelled task, cancel a paused or queued one, delete any task not in
#: progress (a worker holds it: cancel it first).
BULK_STATES: Final[Mapping[str, frozenset[State]]] = {
    "retry": frozenset({FAILED, CANCELLED}),
    "cancel": frozenset({PAUSED, READY, SCHEDULED, WAITING}),
    "delete": frozenset(State) - {RUNNING},
}
_BULK_STATUS: Final = {"retry": "queued", "cancel": "cancelled"}


def bulk_change(task: Task, action: str, now: int, waiting: bool = False) -> Task | None:
    """What a bulk ``retry`` or ``cancel`` does to one task: its new version, or None when
    the action does not apply to its state (a bulk action skips such tasks, where PATCH
    would refuse them). A ``delete`` changes no task: the store removes those in
    BULK_STATES["delete"]."""
    if task.state not in BULK_STATES[action]:
        return None
    return change_status(task, _BULK_STATUS[action], now, waiting)


def bulk_in_sql(action: str, report: bool, fair: bool) -> bool:
    """Whether a SQL store may run a step of a bulk ``action`` as one statement, without
    building the tasks: a delete; a cancel, or a retry outside a fair queue (a retried task
    takes a place there: fair_seq), when nobody watches the changes (``report``)."""
    return action == "delete" or (not report and (action == "cancel" or not fair))


def bulk_split(
    action: str, rows: Iterable[tuple[int, State, str | None, bool]]
) -> tuple[list[int], set[int]]:
    """A bulk step run in SQL (bulk_in_sql), over its tasks' (id, state, unique_key, whether
    it has parents or children): the ids the statement changes, and those left to the rules
    (bulk_change). Tasks with dependencies settle others when they end, or wait again when
    retried; a retried task may take its unique_key back (retakes_key). Tasks the action does
    not apply to (BULK_STATES) are in neither."""
    states = BULK_STATES[action]
    ids: list[int] = []
    apart: set[int] = set()
    for task_id, state, key, deps in rows:
        if state not in states:
            continue
        if deps or (key is not None and action == "retry"):
            apart.add(task_id)
        else:
            ids.append(task_id)
    return ids, apart


def prune_before(options: QueueOptions, state: State, now: int) -> int | None:
    """Retention (QueueOptions.keep): the finished tasks in ``state`` that finished at or
    before this time (ms) are removed, unless they hold their unique_key (holds_key); None
    when the queue keeps them for ever."""
    keep = options.keep.of(state)
    return None if keep is None else now - keep


# -- dependencies: a task's ``after`` (its parents) and the tasks that wait for it -----------
#
# The stores keep one edge per (parent, child) with the parent's result once it is done, so
# that a child's record and delivery carry the results however long its parents are kept.
# A parent's end settles its children in the same transaction: "done" releases those whose
# last unfinished parent it was (release), "failed" or "cancelled" for good, or a deletion,
# cancels them (orphaned), and that cascades to their own children.

#: The most tasks one task may name in ``after``.
MAX_PARENTS: Final = MAX_AFTER
#: The most edges one enqueue may create, over all its tasks.
MAX_EDGES: Final = MAX_AFTER_PER_REQUEST
#: The most tasks that may wait for one task over its life (those that name it while it is
#: unfinished): its end settles them all in the transaction of the change that ends it.
MAX_CHILDREN: Final = MAX_WAITING
#: The states of a child that its parent's failure cancels: any not in progress or finished.
_ORPHANABLE: Final = frozenset({PAUSED, READY, SCHEDULED, WAITING})


def check_edges(tasks: Sequence[NewTask]) -> None:
    """Refuse an enqueue whose tasks name more than MAX_PARENTS tasks each, or MAX_EDGES in
    all (ValidationError, before anything is looked up or written): what one request may
    make a store write, and a delivery read, stays bounded."""
    edges = 0
    for index, spec in enumerate(tasks):
        named = len(spec.after) + len(spec.refs)
        if named > MAX_PARENTS:
            raise ValidationError(
                f"tasks[{index}].after names {named:,} tasks; at most {MAX_PARENTS:,}",
                field="after",
            )
        edges += named
    if edges > MAX_EDGES:
        raise ValidationError(
            f"the tasks' after lists name {edges:,} tasks in all; at most {MAX_EDGES:,} in one"
            " request: enqueue the tasks in several requests",
            field="after",
        )


def check_children(tasks: Sequence[NewTask], waited: Mapping[int, int]) -> None:
    """Refuse an enqueue that would make more than MAX_CHILDREN tasks wait for one task
    (ValidationError, before anything is written). ``waited`` holds, for each unfinished task
    the batch names by id, how many tasks named it while it was unfinished."""
    adding: dict[int, int] = {}
    for spec in tasks:
        for parent_id in set(spec.after):
            adding[parent_id] = adding.get(parent_id, 0) + 1
    for parent_id, count in adding.items():
        before = waited.get(parent_id)
        if before is not None and before + count > MAX_CHILDREN:
            raise ValidationError(
                f"task {parent_id} has {before:,} tasks waiting for it; at most"
                f" {MAX_CHILDREN:,} may wait for one task",
                field="after",
            )


def depend(task: Task, parents: Sequence[tuple[int, State]]) -> Task:
    """A new task that names ``parents`` (their ids and states as it is enqueued): it waits
    (WAITING) while one is not done; it is cancelled at once if one already failed or was
    cancelled; a paused task stays paused (resumed, it waits: see change_status)."""
    task = replace(task, parents=len(parents))
    for parent_id, state in parents:
        if state is FAILED or state is CANCELLED:
            how = "failed" if state is FAILED else "was cancelled"
            return replace(task, state=CANCELLED, run_at=None, error=orphan_error(parent_id, how))
    if task.state in (READY, SCHEDULED) and any(state is not DONE for _id, state in parents):
        return replace(task, state=WAITING)
    return task


def orphan_error(parent_id: int, how: str) -> str:
    """The error of a task cancelled because of its parent: ``how`` is "failed", "was
    cancelled" or "was deleted"."""
    return f"cancelled: task {parent_id} it waited for {how}"


def parent_end(old: State | None, new: State | None) -> str | None:
    """What a task's change means to the tasks that wait for it: "done" (release them),
    "failed", "was cancelled" or "was deleted" (``new`` None; cancel them), or None
    (nothing yet: a retry, a heartbeat, a task that was already finished)."""
    if old is not None and old in FINAL_STATES:
        return None
    if new is None:
        return "was deleted"
    if new is DONE:
        return "done"
    if new is FAILED:
        return "failed"
    if new is CANCELLED:
        return "was cancelled"
    return None


def release(task: Task, now: int) -> Task | None:
    """A waiting task whose last unfinished parent is done: ready (or scheduled, while its
    delay runs). None when it does not wait (paused, or retried by an operator)."""
    if task.state is not WAITING:
        return None
    due = task.run_at is None or task.run_at <= now
    return replace(
        task,
        state=READY if due else SCHEDULED,
        run_at=None if due else task.run_at,
        updated_at=now,
    )


def orphaned(task: Task, parent_id: int, how: str, now: int) -> Task | None:
    """A task whose parent failed, was cancelled or deleted (``how``): cancelled, its error
    naming the parent; None when it runs or has finished."""
    if task.state not in _ORPHANABLE:
        return None
    return replace(
        task, state=CANCELLED, run_at=None, error=orphan_error(parent_id, how), updated_at=now
    )


def without_parents(task: Task, hidden: Collection[int]) -> Task:
    """The task as a reader who may not see the parents ``hidden`` reads it: neither their
    ids (``waiting_for``, ``foreign``) nor their results (``after``)."""
    after = task.after
    if after is not None:
        results = msgspec.json.decode(after, type=dict[str, msgspec.Raw])
        after = after_json([(int(k), bytes(v)) for k, v in results.items() if int(k) not in hidden])
    return replace(
        task,
        waiting_for=tuple(p for p in task.waiting_for if p not in hidden),
        after=after,
        foreign=tuple((p, q) for p, q in task.foreign if p not in hidden),
    )


def after_json(results: Sequence[tuple[int, bytes | None]]) -> msgspec.Raw:
    """The ``after`` of a task: its done parents' results as a JSON object keyed by id, the
    results spliced in as the workers sent them (null for none)."""
    parts = [b'"%d":%b' % (parent_id, result or b"null") for parent_id, result in results]
    return msgspec.Raw(b"{" + b",".join(parts) + b"}")
