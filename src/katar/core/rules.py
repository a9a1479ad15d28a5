"""The queue rules: what each ack, lease expiry and status change does to a task.

Pure functions over :class:`~katar.core.model.Task`. Every store loads the task inside its
transaction, asks these functions what the new task is, and writes it back, so the rules are
written once and every store behaves the same.

Each returns the task's new version, or None when nothing changes. A store then writes the
new version, or removes it where :func:`discard` says the queue keeps no such history.
"""

from __future__ import annotations

import math
from collections import OrderedDict
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
    DeadLetter,
    Delivery,
    Edit,
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
        debounce_key=spec.debounce_key,
        attributes=spec.attributes,
        trace=spec.trace,
    )


def with_expiry(tasks: Sequence[NewTask], expires: int) -> list[NewTask]:
    """The tasks of a queue with the ``expires`` option (ms): each that gives no expires_in
    of its own takes the queue's (a task's own wins)."""
    return [
        spec if spec.expires_in_ms is not None else replace(spec, expires_in_ms=expires)
        for spec in tasks
    ]


def special(spec: NewTask) -> bool:
    """Whether a task to enqueue has per-task options, a unique_key or a debounce_key: the
    SQL stores write such tasks one by one, looking for the key's holder first."""
    return (
        spec.unique_key is not None
        or spec.debounce_key is not None
        or bool(spec.after)
        or bool(spec.refs)
        or spec.timeout is not None
        or spec.max_attempts is not None
        or spec.expires_in_ms is not None
        or spec.attributes is not None
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


def released(task: Task) -> bool:
    """Whether the task's last delivery ended given back to the queue (a heartbeat with
    ``lease`` 0), rather than failed or expired: not counted as a failure."""
    if task.state is not READY or task.started_at is not None or task.history is None:
        return False
    return _history_decoder.decode(task.history)[-1].outcome == "released"


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
    rates: KeyRates | None = None,
) -> list[int]:
    """From ready tasks (id, key) in claim order, the ids a claim takes: up to ``want``,
    skipping a task whose key already has ``key_concurrency`` in progress (``running``) or
    taken by this claim (``taken``, updated), or whose key_rate bucket (``rates``, whose
    tokens it takes) holds no whole token more. Skipping keeps the order within each key:
    a key's later task is never taken before an earlier one that was skipped."""
    picked: list[int] = []
    for task_id, key in candidates:
        if len(picked) >= want:
            break
        if key is not None:
            now_taken = taken.get(key, 0)
            if key_concurrency is not None and running.get(key, 0) + now_taken >= key_concurrency:
                continue
            if rates is not None and not rates.take(key):
                continue
            taken[key] = now_taken + 1
        picked.append(task_id)
    return picked


# -- key_rate: a token bucket per task key ----------------------------------------------------
#
# A key's bucket is kept as one number, the moment (ms, a float) it is full again: ``full_at``
# (the "theoretical arrival time" of GCRA). It holds rate.limit tokens less what refills
# until then, (full_at - now) x limit / period, so it is the queue's Bucket exactly, in one
# column instead of two; and a bucket whose full_at has passed is full, the same as no bucket
# at all: the stores drop it (prune), which bounds what they keep by the keys taken from in
# the last period (a bucket is never emptier than empty, so full_at <= now + period).


def key_tokens(rate: Rate, full_at: float | None, now: int) -> float:
    """The tokens of a key's bucket at ``now`` (full when it has none kept)."""
    if full_at is None or full_at <= now:
        return float(rate.limit)
    return rate.limit - (full_at - now) * rate.limit / rate.period


def key_spent(rate: Rate, full_at: float | None, now: int, taken: int) -> float:
    """The bucket's full_at once ``taken`` more tokens are spent at ``now``."""
    start = now if full_at is None or full_at < now else full_at
    return start + taken * rate.period / rate.limit


def key_empty_after(rate: Rate, now: int) -> float:
    """The full_at beyond which a key's bucket holds no whole token at ``now``."""
    return now + (rate.limit - 1) * rate.period / rate.limit


def key_next_token(rate: Rate, full_at: float, now: int) -> int:
    """When (ms) a bucket that is full at ``full_at`` holds a whole token again."""
    return max(now, math.ceil(full_at - (rate.limit - 1) * rate.period / rate.limit))


class KeyRates:
    """A claim's view of a key_rate queue's buckets: the full_at of the keys it met
    (``known``: a store's KeyBuckets, or what a SQL store read of the keys met), and per
    key met, the whole tokens its bucket held and how many the claim took (``met``); for
    the keys it passed over, when the first next token comes (``next_at``: the poll's
    retry_at). ``spent`` gives the buckets to keep, once the claim took its tasks."""

    __slots__ = ("known", "met", "next_at", "now", "rate", "skipped")

    def __init__(self, rate: Rate, now: int, known: Mapping[str, float] | None = None) -> None:
        self.rate = rate
        self.now = now
        self.known: Mapping[str, float] = {} if known is None else known
        self.met: dict[str, list[int]] = {}  # per key met: [whole tokens, taken]
        self.next_at: int | None = None
        self.skipped: set[str] = set()  # the keys passed over

    def take(self, key: str) -> bool:
        """Take a token of the key's bucket for a task the claim takes: False when it holds
        no whole token more (the task is passed over), noting when it will (next_at)."""
        counts = self.met.get(key)
        if counts is None:
            full_at = self.known.get(key)
            if full_at is None or full_at <= self.now:  # full: the common case, kept cheap
                counts = self.met[key] = [self.rate.limit, 0]
            else:
                tokens = math.floor(key_tokens(self.rate, full_at, self.now))
                counts = self.met[key] = [tokens, 0]
        if counts[0] > counts[1]:
            counts[1] += 1
            return True
        if key not in self.skipped:
            self.skipped.add(key)
            rate, now = self.rate, self.now
            at = key_next_token(rate, key_spent(rate, self.known.get(key), now, counts[1]), now)
            if self.next_at is None or at < self.next_at:
                self.next_at = at
        return False

    @property
    def taken(self) -> dict[str, int]:
        """The tokens the claim took, per key it took from."""
        return {key: counts[1] for key, counts in self.met.items() if counts[1]}

    def blocked(self) -> set[str]:
        """The keys met whose buckets allow no more (a SQL claim's next look passes them)."""
        return {key for key, (tokens, taken) in self.met.items() if taken >= tokens}

    def spent(self) -> dict[str, float]:
        """The full_at of each key the claim took from, to keep."""
        now, known = self.now, self.known
        period, limit = self.rate.period, self.rate.limit
        spent = {}
        for key, (_tokens, n) in self.met.items():  # key_spent, inline: many keys a claim
            if n:
                at = known.get(key)
                spent[key] = (now if at is None or at < now else at) + n * period / limit
        return spent

    def limited_keys(self) -> int:
        """How many of the known buckets hold no whole token now (GET /v1/queues)."""
        rate, now = self.rate, self.now
        return sum(1 for at in self.known.values() if key_tokens(rate, at, now) < 1)


class KeyBuckets:
    """The key_rate buckets a server keeps in memory for one queue (the memory and SQLite
    stores, which one server serves): key -> full_at, in the order of each key's last
    take. A key taken from at t is full by t + period, so :meth:`prune`, from the oldest
    take, drops full buckets until the first that is not: what stays is bounded by the
    keys taken from within the last period."""

    __slots__ = ("full_at",)

    def __init__(self) -> None:
        self.full_at: OrderedDict[str, float] = OrderedDict()

    def keep(self, spent: Mapping[str, float]) -> None:
        """Keep the buckets a claim spent (KeyRates.spent), each now the last taken."""
        full_at = self.full_at
        for key, at in spent.items():
            full_at[key] = at
            full_at.move_to_end(key)

    def prune(self, now: int) -> None:
        """Drop the full buckets taken from before any that is not full."""
        full_at = self.full_at
        full = 0
        for at in full_at.values():
            if at > now:
                break
            full += 1
        for _ in range(full):
            full_at.popitem(last=False)

    def __len__(self) -> int:
        return len(self.full_at)


def claim_retry_at(
    plan: ClaimPlan, asked: int, got: int, now: int, rates: KeyRates | None
) -> int | None:
    """When a poll that got fewer tasks than it asked may find one again: the queue's
    rate's next token (ClaimPlan.retry_at); and when key_rate passed over keys with tasks
    ready and the queue's limits did not cut the claim, the first of their next tokens
    (not before the queue's own)."""
    at = plan.retry_at(asked, got, now)
    if rates is None or rates.next_at is None or got >= plan.allowed:
        return at
    return rates.next_at if at is None else max(at, rates.next_at)


def claim_held(plan: ClaimPlan, got: int, rates: KeyRates | None) -> str | None:
    """The limit that held a claim back (PollResult.held): the queue's (held_after), else
    "key_rate" when it passed over keys out of tokens and took less than it was allowed."""
    held = plan.held_after(got)
    if held is None and rates is not None and rates.skipped and got < plan.allowed:
        return "key_rate"
    return held


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


#: The states of a task that may hold its debounce_key (with no delivery yet): paused or
#: queued. Not WAITING: a task with a debounce_key names no parents (model.check_debounce).
DEBOUNCING: Final = frozenset({PAUSED, READY, SCHEDULED})


def holds_debounce(task: Task) -> bool:
    """Whether an enqueue of the task's debounce_key in its queue replaces the task rather
    than creating one: while it waits and was never delivered. Its first delivery frees
    the key for good (a retry after a failure, or an operator's retry, has been delivered
    or left its debounce: see change_status)."""
    return task.debounce_key is not None and task.attempts == 0 and task.state in DEBOUNCING


def debounce(held: Task, spec: NewTask, now: int) -> Task:
    """The task that holds ``spec``'s debounce_key (holds_debounce) once that enqueue has
    replaced it: the latest enqueue's data and options, and its due time, counted from
    ``now``. It keeps its id, its creation time and its place in a fair queue (its turn
    among the keys, whatever its key now); a paused task stays paused (an operator's
    pause outlives a producer's burst: PATCH it to "queued" to let it run). The store
    writes it, and answers it marked by :func:`debounced`."""
    fresh = new_task(held.queue, spec, held.id, now)
    return replace(
        held,
        state=PAUSED if held.state is PAUSED else fresh.state,
        priority=fresh.priority,
        data=fresh.data,
        run_at=fresh.run_at,
        key=fresh.key,
        timeout=fresh.timeout,
        max_attempts=fresh.max_attempts,
        expires_at=fresh.expires_at,
        updated_at=now,
    )


def debounced(task: Task) -> Task:
    """A task as an enqueue that debounced it (see :func:`debounce`) answers it."""
    return replace(task, debounced=True)


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
        if ack.lease == 0:  # given back (SQS's visibility 0): queued again, no failure
            if options.dead_letter is not None and _attempts_spent(task, options):
                # With all its deliveries spent it would be delivered once more than
                # max_attempts allows: it moves now, as SQS moves a message received
                # maxReceiveCount times rather than deliver it again.
                return dead_lettered(
                    task,
                    options.dead_letter,
                    "released",
                    f"given back after delivery {task.attempts}; all attempts are spent",
                    now,
                )
            return archive(
                task,
                "released",
                now,
                state=READY,
                run_at=None,
                lease_until=None,
                updated_at=now,
                progress=progress,
            )
        lease = lease_ms(task, options) if ack.lease is None else ack.lease
        lease_until = now + lease
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
    if options.dead_letter is not None:
        return dead_lettered(task, options.dead_letter, "failed", error, now)
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
        if options.dead_letter is not None:
            return dead_lettered(task, options.dead_letter, "expired", error, now)
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


# -- dead letters and redrive -------------------------------------------------------------------
#
# A task that fails for good in a queue with a ``dead_letter`` option moves, in the
# transaction that fails it, to that queue: the rules return it with another ``queue``, and
# a store that sees ``new.queue != old.queue`` moves the row (creating the target queue with
# default options when it does not exist). A move keeps the id, data, key and priority.


#: What a task leaves behind when it moves to another queue: its own max_attempts and
#: expiry, its unique_key (held in that queue only), a cancel request, progress.
_LEFT_BEHIND: Final[dict[str, Any]] = {
    "run_at": None,
    "max_attempts": None,
    "expires_at": None,
    "unique_key": None,
    "unique_until": None,
    "cancel_requested": False,
    "progress": None,
    # A key held in the queue it leaves: in the other, it would replace or block a task
    # that waits there with the same key.
    "debounce_key": None,
}


def leaves_behind(task: Task) -> bool:
    """Whether the task has something to leave behind when it moves (_LEFT_BEHIND, but for
    run_at, which a move always writes): most tasks have none of it, and a store then writes
    fewer columns."""
    return not (
        task.max_attempts is None
        and task.expires_at is None
        and task.unique_key is None
        and task.unique_until is None
        and task.progress is None
        and not task.cancel_requested
        and task.debounce_key is None
    )


def _leaving(task: Task) -> Task:
    """The task without what it leaves behind in the queue it leaves (_LEFT_BEHIND). Most
    tasks have none of it: then the task itself (a replace costs per field it names)."""
    if task.run_at is None and not leaves_behind(task):
        return task
    return replace(task, **_LEFT_BEHIND)


def moved(task: Task, queue: str, now: int, **changes: Any) -> Task:
    """The task moved to ``queue`` as queued (READY), with a fresh set of attempts there
    (its delivery count goes on growing, so that a late ack of an earlier delivery is told
    apart), without what it leaves behind (_LEFT_BEHIND)."""
    return archive(
        _leaving(task),
        queue=queue,
        state=READY,
        lease_until=None,
        attempt_base=task.attempts,
        updated_at=now,
        **changes,
    )


def dead_lettered(task: Task, target: str, outcome: str, error: str, now: int) -> Task:
    """A task in progress that fails for good (its delivery ended ``outcome``, "failed" or
    "expired", with ``error``) in a queue whose dead_letter option is ``target``: moved
    there as :func:`moved` says, with ``dead_letter`` saying where from and why. For the
    tasks that wait for it (``after``), it failed (see dependants_see): they are settled as
    at a failure (and, as after an operator's retry of a failed task, a later success there
    is no news to the children it cancelled). One archive, as a retry's: the move costs
    what a retry does."""
    record = DeadLetter(task.queue, error, task.attempts - task.attempt_base, now)
    return archive(
        _leaving(task),
        outcome,
        now,
        queue=target,
        state=READY,
        lease_until=None,
        attempt_base=task.attempts,
        error=error,
        updated_at=now,
        dead_letter=record,
    )


def dependants_see(old: Task, new: Task) -> State:
    """The state the tasks that wait for ``old`` see it end in, now that it is ``new``: a
    task moved to its dead-letter queue failed (its children are cancelled, unless they run
    after a failure too); any other change, its new state."""
    if new.dead_letter is not None and new.queue != old.queue:
        return FAILED
    return new.state


#: The states of the tasks a redrive moves: queued and due, or delayed (not waiting for
#: parents: moved, such a task would run before them), and failed (in the dead-letter
#: queue itself, by its own workers). Paused and cancelled tasks are an operator's choice,
#: and stay; tasks in progress belong to their worker.
REDRIVE_STATES: Final = frozenset({READY, SCHEDULED, FAILED})


def redrive_target(
    task: Task, to: str | None, allowed: Collection[str] | None = None
) -> str | None:
    """Where a redrive moves the task: ``to`` when given, else the queue it came from (its
    dead_letter record); None when it has neither, would stay where it is, or would go to a
    queue not among ``allowed`` (None: any; a token scoped to some queues moves tasks to
    those only)."""
    target = to if to is not None else task.dead_letter.queue if task.dead_letter else None
    if target == task.queue or (allowed is not None and target not in allowed):
        return None
    return target


def redriven(task: Task, target: str, now: int) -> Task:
    """A task moved by a redrive to ``target``: queued there with fresh attempts; its error
    stays (as a retry's does), its dead_letter goes."""
    return moved(task, target, now, dead_letter=None)


def promote(task: Task, now: int) -> Task:
    """A scheduled task whose not-before time has come becomes claimable."""
    return replace(task, state=READY, run_at=None, updated_at=now)


def change_status(
    task: Task, status: str, now: int, waiting: bool = False, edit: Edit | None = None
) -> Task | None:
    """An operator's PATCH: cancel, pause, resume or retry a task.

    ``waiting``: the task names in ``after`` a task that is not finished yet (see
    the store looks): resumed or retried, it waits for it again (WAITING).

    ``edit`` (with "queued" only): an edit and retry (see :func:`edit_task`).

    Returns the new task, or None when the task already has that status (or, for a task in
    progress, already has its cancel requested). Cancelling a task in progress only
    records the request (``cancel_requested``): see :func:`apply_ack`. Only the
    transitions of the contract are allowed; any other raises :class:`IllegalTransition`.
    """
    if edit is not None:
        return edit_task(task, status, now, waiting, edit)
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
        # A task retried by an operator leaves its debounce (debounce_key): it was meant to
        # run, and a task of the key may have taken its place meanwhile.
        return archive(
            task,
            state=WAITING if waiting else READY,
            run_at=None,
            expires_at=None,
            debounce_key=None,
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


#: The states an edit and retry applies to: any but in progress and done.
EDITABLE: Final = frozenset({PAUSED, READY, SCHEDULED, WAITING, FAILED, CANCELLED})


def edit_task(task: Task, status: str, now: int, waiting: bool, edit: Edit) -> Task:
    """An edit and retry: the task, not in progress and not done, takes the edit's fields
    and runs again (``status`` must be "queued"): a failed or cancelled one is retried as
    change_status retries it, a paused one resumes, a queued one keeps its place in time
    (its delay, the tasks it waits for). Every edit gives a fresh set of attempts, as a
    retry does; the earlier deliveries stay in the history. In progress: a worker holds
    the task and its data (409, nothing changes). Done: the outcome stands (its children
    have its result); enqueue a new task instead (409)."""
    if status != "queued":
        raise ValidationError(
            'data, priority and key are changed with {"status": "queued"} only (edit and retry)',
            field="status",
        )
    if task.state not in EDITABLE:
        raise IllegalTransition(
            f"task {task.id} is {task.status!r}; only a paused, queued, failed or cancelled"
            " task can be edited and run again"
            + (" (a done task's outcome stands: enqueue a new task)" if task.state is DONE else ""),
            _id=str(task.id),
            status=task.status,
        )
    changes: dict[str, Any] = {"attempt_base": task.attempts, "updated_at": now}
    if edit.data is not None:
        changes["data"] = edit.data
    if edit.priority is not None:
        changes["priority"] = edit.priority
    if edit.key is not None:
        changes["key"] = edit.key
    if task.state is PAUSED:
        resumed = change_status(task, "queued", now, waiting)
        assert resumed is not None
        return replace(resumed, **changes)
    if task.state in (FAILED, CANCELLED):
        retried = change_status(task, "queued", now, waiting)
        assert retried is not None
        return replace(retried, **changes)
    return replace(task, **changes)


def is_final(task: Task) -> bool:
    """True once the task is done, failed or cancelled."""
    return task.state in FINAL_STATES


def ended(task: Task, old: State, origin: str | None) -> tuple[str, str] | None:
    """The completion-webhook event (katar.push.notify) a change makes, with the queue whose
    ``notify`` option hears it: (queue, event), or None when the change ends no task. A
    task ends "done", "failed" or "cancelled" in its queue when it comes to that state; a
    task in progress that moved (``origin``: the queue it left) was dead-lettered there. A
    move of a task at rest (a redrive) ends nothing."""
    if origin is not None:
        return (origin, "dead_lettered") if old is RUNNING else None
    state = task.state
    if state is not old and state in FINAL_STATES:
        return task.queue, task.status
    return None


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


def check_parents(
    tasks: Sequence[NewTask], found: Collection[int], waited: Mapping[int, int]
) -> None:
    """Refuse an enqueue that names by id a task that does not exist (not in ``found``,
    the ids the store found), or that would make too many wait for one (check_children),
    before anything is written."""
    for index, spec in enumerate(tasks):
        for parent_id in spec.after:
            if parent_id not in found:
                raise unknown_parent(f"tasks[{index}]", parent_id)
    check_children(tasks, waited)


def first_edge(
    state: State, result: bytes | None, error: str | None, run: bool
) -> tuple[bool, bytes | None]:
    """A new task's edge to a parent in ``state`` (with its ``result`` and ``error``), as
    it is when the task is enqueued: (done, what it holds). Done, with the parent's result,
    when the parent is done; for a task that runs whatever the outcome (``run``), done with
    the parent's outcome (outcome_of) when it has finished in any way; else pending."""
    if run and state in FINAL_STATES:
        return True, outcome_of(state, result, error)
    if state is DONE:
        return True, result
    return False, None


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


def depend(task: Task, parents: Sequence[tuple[int, State]], run: bool = False) -> Task:
    """A new task that names ``parents`` (their ids and states as it is enqueued): it waits
    (WAITING) while one is not done; it is cancelled at once if one already failed or was
    cancelled; a paused task stays paused (resumed, it waits: see change_status).

    ``run`` (after_failure "run"): it waits while one is not finished, whatever the way the
    others ended, and is never cancelled because of them."""
    task = replace(task, parents=len(parents))
    if run:
        if task.state in (READY, SCHEDULED) and any(s not in FINAL_STATES for _i, s in parents):
            return replace(task, state=WAITING)
        return task
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
    "failed", "was cancelled" or "was deleted" (``new`` None; cancel them, or release those
    that run whatever the outcome: after_failure "run"), or None (nothing yet: a retry, a
    heartbeat, a task that was already finished).

    The one place that decides how a parent ended. A change that takes a task out of its
    queue unsuccessfully by another way (a move to a dead-letter queue) ends it as
    "failed" for its children: the stores' ``settle`` takes that ``how`` directly."""
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


#: The status a child that runs whatever the outcome (after_failure "run") is told of a
#: parent, by how it ended (parent_end).
_OUTCOME_STATUS: Final = {
    "done": "done",
    "failed": "failed",
    "was cancelled": "cancelled",
    "was deleted": "cancelled",
}
#: The error it is told of a parent deleted before it ended (which has no error of its own).
DELETED_ERROR: Final = "deleted before it ended"


def outcome(how: str, parent: Task | None) -> bytes:
    """What a child with after_failure "run" keeps of a parent that ended (``how``, as
    parent_end says; ``parent`` its new version, None when deleted): the JSON object
    ``{"status", "result", "error"}`` its ``after`` holds for that parent."""
    if parent is None:
        return outcome_json(_OUTCOME_STATUS[how], None, DELETED_ERROR)
    result = None if parent.result is None else bytes(parent.result)
    return outcome_json(_OUTCOME_STATUS[how], result, None if how == "done" else parent.error)


def outcome_of(state: State, result: bytes | None, error: str | None) -> bytes:
    """:func:`outcome` of a parent already finished (in ``state``) when the child named it."""
    how = "done" if state is DONE else "failed" if state is FAILED else "was cancelled"
    return outcome_json(_OUTCOME_STATUS[how], result, None if state is DONE else error)


def outcome_json(status: str, result: bytes | None, error: str | None) -> bytes:
    """A parent's outcome as a run-anyway child's ``after`` holds it: the result spliced in
    as the worker sent it."""
    return b'{"status":"%b","result":%b,"error":%b}' % (
        status.encode(),
        result or b"null",
        msgspec.json.encode(error),
    )


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
