"""The domain's data: task states, tasks, acks and queue options.

Task data and results are kept as the JSON bytes the client sent (``msgspec.Raw``), so a
task's payload is never decoded or re-encoded on its way from producer to worker.
"""

from __future__ import annotations

import base64
import enum
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Final, Literal, NamedTuple

import msgspec

from katar import protocol
from katar.core import typed
from katar.errors import ValidationError
from katar.protocol import Status

# The wire model's names that the domain shares (the rules, the engine and the stores take
# them from here): defined once, in katar.protocol.
Ack = protocol.Ack
DEFAULT_CONFIGURATION: Final = protocol.DEFAULT_CONFIGURATION
DEFAULT_LEASE_MS: Final = protocol.DEFAULT_LEASE_MS
MAX_DELAY: Final = protocol.MAX_DELAY
MAX_INTERVAL: Final = protocol.MAX_INTERVAL
NULL: Final = protocol.NULL
PRIORITY_MAX: Final = protocol.PRIORITY_MAX
PRIORITY_MIN: Final = protocol.PRIORITY_MIN
PRIORITY_NAMES: Final = protocol.PRIORITY_NAMES
STATUSES: Final = protocol.STATUSES
WAITING_COUNT: Final = protocol.WAITING_COUNT
AfterFailure = protocol.AfterFailure


class State(enum.IntEnum):
    """A task's stored state. Public statuses are coarser: see :data:`PUBLIC_STATUS`."""

    PAUSED = 0
    READY = 1  # queued and due: the only state a claim looks at
    SCHEDULED = 2  # queued with a not-before time in the future (delay or retry backoff)
    RUNNING = 3  # "in progress": leased to a worker until lease_until
    DONE = 4
    FAILED = 5
    CANCELLED = 6
    #: queued, but some task it names in ``after`` is not done yet: no claim looks at it
    #: (its public status stays "queued"; GET /v1/queues counts it apart, as "waiting")
    WAITING = 7


# The states by themselves, for the hot paths: on CPython 3.11 every ``State.X`` goes through
# the enum's metaclass (its __getattr__ hook builds a method wrapper each time), a few hundred
# instructions, and the rules and stores name states several times a task.
PAUSED: Final = State.PAUSED
READY: Final = State.READY
SCHEDULED: Final = State.SCHEDULED
RUNNING: Final = State.RUNNING
DONE: Final = State.DONE
FAILED: Final = State.FAILED
CANCELLED: Final = State.CANCELLED
WAITING: Final = State.WAITING


#: The public statuses (katar.protocol.STATUSES) of the stored states; READY and SCHEDULED
#: and WAITING are all "queued".
PUBLIC_STATUS: Final[dict[State, Status]] = {
    State.PAUSED: "paused",
    State.READY: "queued",
    State.SCHEDULED: "queued",
    State.RUNNING: "in progress",
    State.DONE: "done",
    State.FAILED: "failed",
    State.CANCELLED: "cancelled",
    State.WAITING: "queued",
}
STATES_OF_STATUS: Final = {
    status: tuple(s for s, name in PUBLIC_STATUS.items() if name == status) for status in STATUSES
}
FINAL_STATES: Final = frozenset({State.DONE, State.FAILED, State.CANCELLED})
#: The states of a task that waits or runs: paused, queued or in progress.
UNFINISHED: Final = frozenset(State) - FINAL_STATES


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch: the unit of every stored time."""
    return time.time_ns() // 1_000_000


class Task(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One task as stored. Rules derive new versions with :func:`msgspec.structs.replace`.

    Not tracked by the garbage collector (``gc=False``): its fields are scalars, bytes,
    tuples of them and a DeadLetter, none of which can lead back to a task, so no task is
    ever part of a reference cycle; untracked, each version made (two per delivery, at
    least) costs less to make and to free, and a store of many tasks adds nothing to the
    collector's passes."""

    id: int  # grows monotonically per store; shown to clients as a string
    queue: str
    state: State
    priority: int
    data: msgspec.Raw  # the producer's JSON, verbatim
    attempts: int = 0  # deliveries so far; the current delivery's number while RUNNING
    attempt_base: int = 0  # attempts at the last manual retry: max_attempts counts from here
    error: str | None = None
    result: msgspec.Raw | None = None  # the worker's JSON, verbatim, with "done"
    worker: str | None = None  # who holds (or last held) the lease
    created_at: int  # ms since the epoch
    updated_at: int
    run_at: int | None = None  # not before this time (delay, retry backoff)
    lease_until: int | None = None  # while RUNNING: when the lease runs out
    key: str | None = None  # the group (a customer, an account) key_concurrency counts by
    #: An operator asked to cancel the task while it ran: the lease holder's next heartbeat
    #: (or ack, or the lease's end) cancels it. Stays True once it is cancelled.
    cancel_requested: bool = False
    progress: msgspec.Raw | None = None  # the worker's JSON, verbatim, from its last heartbeat
    timeout: int | None = None  # this task's lease in ms, over the queue's timeout
    max_attempts: int | None = None  # this task's max_attempts, over the queue's
    #: until then (ms), a task never delivered may wait; then it is cancelled (rules.expire)
    expires_at: int | None = None
    unique_key: str | None = None  # while this task holds it, its queue takes no other
    unique_until: int | None = None  # the key is held until then whatever the status (ms)
    #: When the current (or last) delivery started (ms); None once that delivery is in
    #: ``history``, and for a task never delivered. See rules.deliveries.
    started_at: int | None = None
    #: The earlier deliveries, as stored (rules.archive): a JSON array of Delivery arrays,
    #: kept as bytes so that reading a task never decodes it. None when there are none.
    history: msgspec.Raw | None = None
    schedule: str | None = None  # the schedule that made the task, if one did
    scheduled_for: int | None = None  # the tick (ms) of that schedule it was made for
    #: Message attributes (the SQS API's, katar.sqs): a JSON object kept verbatim; None
    #: for most tasks.
    attributes: msgspec.Raw | None = None
    #: The W3C trace context it was enqueued with, as delivered: the JSON object
    #: ``{"traceparent": ..., "tracestate": ...}`` (tracestate absent when none), kept as
    #: bytes so that a delivery splices it in. None for a task enqueued without one.
    trace: msgspec.Raw | None = None
    #: Not stored: set on an enqueue's answer when the task is an existing one that held the
    #: unique_key asked for (nothing was created for it).
    duplicate: bool = False
    #: While the task waits and was never delivered (rules.holds_debounce), an enqueue of
    #: this key in its queue replaces it (rules.debounce) instead of creating a task.
    debounce_key: str | None = None
    #: Not stored: set on an enqueue's answer when the task is an existing one that the
    #: enqueue debounced (it took the enqueue's data, options and due time).
    debounced: bool = False
    #: How many tasks it named in ``after`` (its parents): 0 for most tasks, which then
    #: never look at the dependencies' table.
    parents: int = 0
    #: Whether some task names it in ``after`` and waits for it: its end must release or
    #: cancel them.
    children: bool = False
    #: Not stored (read from the dependencies with the task, when it has parents): the ids
    #: of its parents not done yet, and the results of those done, as a JSON object
    #: ``{"<id>": <result>, ...}`` (the bytes as the workers sent them).
    waiting_for: tuple[int, ...] = ()
    after: msgspec.Raw | None = None
    #: Not stored as such (each edge keeps its parent's queue when it is not the task's):
    #: the parents that are tasks of other queues, each with its queue. A reader whose
    #: token may not use that queue sees neither their ids nor their results.
    foreign: tuple[tuple[int, str], ...] = ()
    #: Where the task came from when it failed for good in a queue with a ``dead_letter``
    #: option and moved here (rules.dead_lettered); None for other tasks.
    dead_letter: DeadLetter | None = None

    @property
    def status(self) -> str:
        """The public status: one of :data:`STATUSES`."""
        return PUBLIC_STATUS[self.state]


class DeadLetter(msgspec.Struct, frozen=True, gc=False):  # scalars only: see Task
    """Why a task is in a dead-letter queue: the queue it failed in for good, its last error,
    the deliveries it had there, and when it moved (ms)."""

    queue: str
    error: str | None
    attempts: int
    at: int


_dead_letter_decoder: Final = msgspec.json.Decoder(DeadLetter)


def encode_dead_letter(record: DeadLetter | None) -> bytes | None:
    """A task's dead_letter as the SQL stores keep it (JSON), None for none."""
    return None if record is None else msgspec.json.encode(record)


def decode_dead_letter(stored: bytes | None) -> DeadLetter | None:
    """A task's dead_letter from its stored JSON."""
    return None if stored is None else _dead_letter_decoder.decode(stored)


class Delivery(msgspec.Struct, frozen=True, array_like=True):
    """One delivery of a task that has ended (times in ms): how a task's ``history`` is
    stored, as arrays, since every task record carries it."""

    attempt: int
    worker: str | None
    started_at: int | None
    ended_at: int | None
    outcome: str | None  # katar.protocol.DeliveryOutcome; None while it runs
    error: str | None


class TaskFilter(msgspec.Struct, kw_only=True, frozen=True):
    """The tasks of a queue that a listing or a bulk action selects: every condition given
    holds. ``before`` and ``after`` bound ``created_at`` (ms; before is exclusive, after
    inclusive)."""

    states: tuple[State, ...] | None = None
    ids: tuple[int, ...] | None = None
    key: str | None = None
    worker: str | None = None
    error: str | None = None  # a substring of the error
    before: int | None = None
    after: int | None = None

    def __post_init__(self) -> None:
        # No store keeps NUL in a key, a worker's name or an error (see check_text), and
        # PostgreSQL cannot even compare text with one: refused alike on every store.
        for name, value in (("key", self.key), ("worker", self.worker), ("error", self.error)):
            if value is not None and "\x00" in value:
                raise ValidationError(f"{name} must not contain NUL (\\u0000)", field=name)

    def matches(self, task: Task) -> bool:
        """Whether ``task`` is one of those selected (for the stores that filter in Python;
        the SQL stores write the same conditions)."""
        return (
            (self.states is None or task.state in self.states)
            and (self.ids is None or task.id in self.ids)
            and (self.key is None or task.key == self.key)
            and (self.worker is None or task.worker == self.worker)
            and (self.error is None or (task.error is not None and self.error in task.error))
            and (self.before is None or task.created_at < self.before)
            and (self.after is None or task.created_at >= self.after)
        )


EVERY_TASK: Final = TaskFilter()


MoveState = Literal["running", "completed", "cancelled", "failed"]


class MoveJob(msgspec.Struct, kw_only=True, frozen=True):
    """A redrive at a rate (katar.core.moves), as the store keeps it: every server sharing
    the store lists it, cancels it, and takes it over when its runner's lease has passed.
    Times in ms."""

    #: The store's id (0 before the store has kept it).
    id: int = 0
    queue: str
    to: str | None
    where: TaskFilter
    #: The queues the job may move tasks to (a token limited to some queues); None: any.
    allowed: tuple[str, ...] | None = None
    rate: float
    state: MoveState = "running"
    #: The tasks the filter selected when the job started (those it may move).
    total: int = 0
    matched: int = 0
    moved: int = 0
    no_origin: int = 0
    #: The highest task id its steps have looked at: the next step starts after it.
    after: int = 0
    started_at: int
    ended_at: int | None = None
    #: Why the job failed (state "failed"), or None.
    error: str | None = None
    #: The server that runs it (katar.core.moves.runner_name), while it is running.
    runner: str | None = None
    #: Until then the runner holds it; after, another server may take it over.
    lease_until: int = 0

    @property
    def remaining(self) -> int:
        """The tasks still to look at, as far as the count at the start tells."""
        return max(self.total - self.matched, 0)


def advanced(
    job: MoveJob, matched: int, moved: int, last: int, limit: int, now: int, lease_until: int
) -> MoveJob:
    """``job`` after a step of at most ``limit`` tasks that selected ``matched`` and moved
    ``moved``, the highest id it looked at ``last``: completed when the step found fewer
    than its limit (none left), else held by its runner until ``lease_until``. Each store
    writes it in the step's own transaction, so that the counts are exact after a crash."""
    done = matched < limit
    return msgspec.structs.replace(
        job,
        matched=job.matched + matched,
        moved=job.moved + moved,
        no_origin=job.no_origin + matched - moved,
        after=max(job.after, last),
        state="completed" if done else job.state,
        ended_at=now if done else job.ended_at,
        lease_until=lease_until,
    )


def runs_on(job: MoveJob | None, runner: str) -> bool:
    """Whether a step of ``job`` by ``runner`` may run: it is running there."""
    return job is not None and job.state == "running" and job.runner == runner


def move_end_state(state: str) -> MoveState:
    """The state an end (Store.move_end) writes: "failed", or "cancelled"."""
    return "failed" if state == "failed" else "cancelled"


def states_of(statuses: Iterable[str] | None) -> tuple[State, ...] | None:
    """The stored states of some public statuses (None: every state)."""
    if statuses is None:
        return None
    return tuple(state for status in statuses for state in STATES_OF_STATUS[status])


class NewTask(msgspec.Struct, kw_only=True, frozen=True):
    """A task to enqueue."""

    data: msgspec.Raw
    priority: int = 0
    delay_ms: int = 0
    run_at: int | None = None  # not before this time (ms since the epoch), instead of a delay
    paused: bool = False
    key: str | None = None
    timeout: int | None = None  # the lease of this task's deliveries, in ms
    max_attempts: int | None = None  # deliveries before it fails for good; 0 = no limit
    expires_in_ms: int | None = None  # cancelled if not delivered within this time
    unique_key: str | None = None
    unique_for_ms: int | None = None  # the key stays taken this long after creation
    debounce_key: str | None = None  # a waiting task of the key takes this one's place
    #: The tasks it waits for: ids of existing tasks, and ``refs``, the places (0-based) of
    #: earlier tasks of the same enqueue ("$n" on the wire), each before its own place.
    after: tuple[int, ...] = ()
    refs: tuple[int, ...] = ()
    #: What the end of a parent that is not done does to it: "cancel" it (the default), or
    #: "run" it once every parent has ended, whatever the outcome (rules.parent_end).
    after_failure: AfterFailure = "cancel"
    #: Message attributes (the SQS API's, katar.sqs): a JSON object kept verbatim.
    attributes: msgspec.Raw | None = None

    #: The W3C trace context to store with it (Task.trace's JSON object), or None.
    trace: msgspec.Raw | None = None


class Edit(msgspec.Struct, kw_only=True, frozen=True):
    """What an edit and retry (a PATCH to "queued" with fields) changes of a task: each
    field given replaces the task's (None: kept)."""

    data: msgspec.Raw | None = None
    priority: int | None = None
    key: str | None = None


#: Milliseconds, or counts, that a 32-bit signed integer holds: what every worker can use.
_INT32: Final = 2**31 - 1

Interval = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_INTERVAL,
        description=f"a whole number of milliseconds from 0 to {MAX_INTERVAL}",
    ),
]


class WorkerConfiguration(msgspec.Struct, kw_only=True, frozen=True):
    """The keys of a queue's configuration that Katar reads itself. The others are the
    queue's own, sent to workers as they are: a conversion to this struct ignores them."""

    #: ms a worker waits between polls that found no task
    interval: Interval = DEFAULT_CONFIGURATION["interval"]


class Rate(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A queue's rate limit: ``limit`` deliveries per ``period`` ms on average, from a
    bucket of ``limit`` tokens that starts full and refills evenly over ``period``."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    period: Annotated[int, msgspec.Meta(ge=1, le=_INT32)]  # ms


_DAY: Final = 86_400_000
_RETENTION_MAX: Final = 100 * 366 * _DAY  # a century, in ms: beyond any need, within int64
Retention = Annotated[int, msgspec.Meta(ge=0, le=_RETENTION_MAX)] | None


class Keep(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How long (ms) a queue keeps its finished tasks after they finished, by status; None
    keeps them for ever. Done and failed tasks stay only in a persistent queue (or while
    they hold a unique_key); cancelled ones in every queue. The defaults bound a busy
    queue's store: a day of done tasks, a week of failed and cancelled ones to look into."""

    done: Retention = _DAY
    failed: Retention = 7 * _DAY
    cancelled: Retention = 7 * _DAY

    def of(self, state: State) -> int | None:
        """The retention of finished tasks in ``state``."""
        return self.done if state is DONE else self.failed if state is FAILED else self.cancelled


#: A push's answer timeout (ms) when the option names none.
PUSH_TIMEOUT_MS: Final = 30_000
#: Added to the push timeout for the lease of a queue whose options name no ``timeout``:
#: the lease outlasts the push, so a server killed mid-push leaves the task to another.
PUSH_LEASE_MARGIN_MS: Final = 5_000
#: The prefix of a Standard Webhooks secret, and the bytes of a generated one.
SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32
#: Headers a push sets itself, which a queue's ``push.headers`` may not name.
PUSH_OWN_HEADERS: Final = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "host",
        "connection",
        "transfer-encoding",
    }
)
_SECRET_RE: Final = re.compile(r"^whsec_[A-Za-z0-9+/]{16,}={0,2}$")
_HEADER_NAME_RE: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")


class PushOptions(
    msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A push queue's endpoint: the server POSTs each task to ``url`` (see katar.push).

    ``secret`` signs the pushes (Standard Webhooks); generated when the option is set
    without one, kept across PUTs and PATCHes that name none. ``previous_secret`` signs
    too until ``previous_until`` (ms since the epoch): the grace period of a rotation.
    The secrets are never shown but to an admin (see public_options)."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    timeout: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = PUSH_TIMEOUT_MS
    headers: dict[str, Annotated[str, msgspec.Meta(max_length=4096)]] = msgspec.field(
        default_factory=dict
    )
    secret: str | None = None
    previous_secret: str | None = None
    previous_until: int | None = None

    def secrets(self, now: int) -> list[str]:
        """The secrets that sign a push made at ``now``: the current one first."""
        kept = [self.secret] if self.secret is not None else []
        if (
            self.previous_secret is not None
            and self.previous_until is not None
            and now < self.previous_until
        ):
            kept.append(self.previous_secret)
        return kept


def new_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` and base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_push(push: PushOptions) -> None:
    """Refuse a push option that can never work; raises typed.Invalid under ``push``."""
    parts = urllib.parse.urlsplit(push.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typed.Invalid(
            ("push", "url"), "invalid", "", reason="must be an http:// or https:// URL with a host"
        )
    if parts.username is not None or parts.password is not None:
        raise typed.Invalid(
            ("push", "url"),
            "invalid",
            "",
            reason="must not carry credentials; send them in push.headers",
        )
    try:
        parts.port  # noqa: B018 (a port out of range raises)
    except ValueError:
        raise typed.Invalid(("push", "url"), "invalid", "", reason="has an invalid port") from None
    for name, value in push.headers.items():
        if not _HEADER_NAME_RE.match(name) or name.lower() in PUSH_OWN_HEADERS:
            raise typed.Invalid(
                ("push", "headers", name),
                "invalid",
                "",
                reason="must be a header name the push does not set itself "
                f"(not one of {', '.join(sorted(PUSH_OWN_HEADERS))})",
            )
        if "\r" in value or "\n" in value:
            raise typed.Invalid(
                ("push", "headers", name), "invalid", "", reason="must not hold a line break"
            )
    for field in ("secret", "previous_secret"):
        value = getattr(push, field)
        if value is not None and not _SECRET_RE.match(value):
            raise typed.Invalid(
                ("push", field),
                "invalid",
                "",
                reason="must be whsec_ followed by base64 of at least 12 bytes",
            )


#: The events a queue's ``notify`` option may ask for (completion webhooks).
NOTIFY_EVENTS: Final = protocol.NOTIFY_EVENTS


class NotifyOptions(
    msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A queue's completion webhooks: each of ``events`` of a task of the queue is POSTed
    to ``url``, signed as pushes are (see katar.push.notify). ``secret`` and its rotation
    work as PushOptions's: generated when the option is set, shown once, kept across PUTs
    and PATCHes that name none, never shown but to an admin."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    events: list[str] = msgspec.field(default_factory=lambda: list(NOTIFY_EVENTS))
    secret: str | None = None
    previous_secret: str | None = None
    previous_until: int | None = None

    def secrets(self, now: int) -> list[str]:
        """The secrets that sign an event sent at ``now``: the current one first."""
        kept = [self.secret] if self.secret is not None else []
        if (
            self.previous_secret is not None
            and self.previous_until is not None
            and now < self.previous_until
        ):
            kept.append(self.previous_secret)
        return kept


def check_notify(notify: NotifyOptions) -> None:
    """Refuse a notify option that can never work; raises typed.Invalid under ``notify``."""
    parts = urllib.parse.urlsplit(notify.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typed.Invalid(
            ("notify", "url"),
            "invalid",
            "",
            reason="must be an http:// or https:// URL with a host",
        )
    if parts.username is not None or parts.password is not None:
        raise typed.Invalid(("notify", "url"), "invalid", "", reason="must not carry credentials")
    try:
        parts.port  # noqa: B018 (a port out of range raises)
    except ValueError:
        raise typed.Invalid(
            ("notify", "url"), "invalid", "", reason="has an invalid port"
        ) from None
    for i, event in enumerate(notify.events):
        if event not in NOTIFY_EVENTS:
            raise typed.Invalid(
                ("notify", "events", str(i)),
                "invalid",
                "",
                reason=f"must be one of {', '.join(NOTIFY_EVENTS)}, not {event!r}",
            )
    for field in ("secret", "previous_secret"):
        value = getattr(notify, field)
        if value is not None and not _SECRET_RE.match(value):
            raise typed.Invalid(
                ("notify", field),
                "invalid",
                "",
                reason="must be whsec_ followed by base64 of at least 12 bytes",
            )


#: The most completion-webhook events kept per queue (the outbox's bound): past it the oldest
#: are dropped, with a warning and katar_notify_total{outcome="dropped"}.
NOTIFY_KEPT: Final = 10_000


class OutboxRow(NamedTuple):
    """A completion-webhook event waiting to be sent (the stores' outbox): ``body`` is the
    JSON sent; ``id`` grows with each event a store keeps, never reused."""

    id: int
    queue: str
    task_id: int
    body: bytes
    #: The failed sends so far (the backoff between them doubles).
    attempts: int = 0


class QueueOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A queue's options: the keys of a ``[queues.NAME]`` table and of a ``PUT`` body, with
    their defaults and bounds. Build one from plain data with :func:`parse_queue_options`,
    which checks the bounds (the constructor does not)."""

    persistent: bool = False  # keep done and failed tasks as history
    timeout: Annotated[int, msgspec.Meta(ge=1, le=_INT32)] = DEFAULT_LEASE_MS  # lease in ms
    #: deliveries before a task fails for good; 0 = no limit
    max_attempts: Annotated[int, msgspec.Meta(ge=0, le=_INT32)] = 5
    retry_failed: bool = False  # a "failed" ack re-queues the task while attempts remain
    #: the most tasks one poll may take with "max"
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    #: ms before the first retry of a failed task; doubles each time
    retry_delay: Annotated[int, msgspec.Meta(ge=0, le=_INT32)] = 1000
    retry_delay_max: Annotated[int, msgspec.Meta(ge=0, le=_INT32)] = 3_600_000  # the ceiling
    #: While true, polls take nothing (long polls wait); acks and enqueues still work.
    paused: bool = False
    #: At most this many tasks of the queue in progress at once, over every server.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=_INT32)] | None = None
    #: At most rate.limit deliveries per rate.period ms, over every server.
    rate: Rate | None = None
    #: At most this many tasks of one key in progress at once.
    key_concurrency: Annotated[int, msgspec.Meta(ge=1, le=_INT32)] | None = None
    #: At most key_rate.limit deliveries of one key per key_rate.period ms, over every
    #: server: a bucket per key, as ``rate`` has one per queue. Tasks without a key are
    #: not bound by it (``rate`` still counts them).
    key_rate: Rate | None = None
    #: Among ready tasks of equal priority, deliveries rotate between keys.
    fair: bool = False
    #: How long finished tasks are kept (retention); see Keep.
    keep: Keep = Keep()
    #: A queue name: a task that fails for good here (attempts spent, or a "failed" ack
    #: not retried) moves to that queue as queued (rules.dead_lettered). Checked by the
    #: engine (check_dead_letter): a valid queue name, not the queue itself.
    dead_letter: str | None = None
    #: ms: the expires_in of the queue's tasks that give none of their own (a task not
    #: delivered within this time is cancelled); None: tasks wait for ever.
    expires: Annotated[int, msgspec.Meta(ge=1, le=MAX_DELAY * 1000)] | None = None
    #: The server POSTs the queue's tasks to this endpoint (katar.push); workers do not
    #: poll a push queue.
    push: PushOptions | None = None
    #: Completion webhooks: the server POSTs the queue's tasks' ends to this endpoint
    #: (katar.push.notify), from an outbox the stores keep.
    notify: NotifyOptions | None = None
    #: Sent to workers merged over DEFAULT_CONFIGURATION; its WorkerConfiguration keys are
    #: checked by parse_queue_options.
    configuration: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description='an object, e.g. {"interval": 1000}',
            extra_json_schema={"properties": {"interval": msgspec.json.schema(Interval)}},
        ),
    ] = msgspec.field(default_factory=dict)

    @property
    def limited(self) -> bool:
        """Whether a claim must count before it takes (see rules.claim_allowance): a
        queue with none of these options takes the claim's fast path."""
        return (
            self.paused
            or self.concurrency is not None
            or self.rate is not None
            or self.key_concurrency is not None
            or self.key_rate is not None
        )

    @property
    def custom_claim(self) -> bool:
        """Whether a claim takes another path than "the first ready tasks in order": a
        limited queue's, or a fair one's (its own order, see rules.fair_seq)."""
        return self.limited or self.fair

    def worker_configuration(self) -> dict[str, Any]:
        """The configuration sent to workers: the custom one merged over the default."""
        return {**DEFAULT_CONFIGURATION, **self.configuration}


def queue_options(raw: Any) -> QueueOptions:
    """Queue options from plain data (decoded JSON or TOML, keyword arguments), checked
    against QueueOptions's types and bounds. Raises :class:`typed.Invalid`."""
    options = typed.convert(raw, QueueOptions)
    if options.notify is not None:
        check_notify(options.notify)
    if options.push is not None:
        check_push(options.push)
        if isinstance(raw, dict) and "timeout" not in raw:
            # The lease covers the push in flight: the push's timeout and a margin.
            lease = options.push.timeout + PUSH_LEASE_MARGIN_MS
            options = msgspec.structs.replace(options, timeout=lease)
    configuration = options.configuration
    if not configuration:
        return options
    try:
        known = typed.convert(configuration, WorkerConfiguration)
    except typed.Invalid as exc:
        exc.path = ("configuration", *exc.path)
        raise
    try:
        msgspec.json.encode(configuration)
    except (TypeError, msgspec.EncodeError) as exc:
        raise typed.Invalid(
            ("configuration",), "invalid", "", reason=f"must hold JSON values only: {exc}"
        ) from exc
    if "interval" in configuration:  # 1000.0 was taken as 1000: workers get the integer
        configuration = {**configuration, "interval": known.interval}
        options = msgspec.structs.replace(options, configuration=configuration)
    return options


def option_error(exc: typed.Invalid) -> str:
    """The message for queue options that :func:`queue_options` refused."""
    if not exc.path:
        return 'queue options must be a JSON object, e.g. {"timeout": 30000}'
    name = ".".join(str(step) for step in exc.path)
    if exc.problem == "unknown":
        return f"unknown queue option {name!r}; expected one of {', '.join(exc.choices)}"
    return f"queue option {name!r} {exc.must()}"


def parse_queue_options(raw: Any) -> QueueOptions:
    """Queue options from plain data, as :func:`queue_options`, for a request or a call:
    raises :class:`ValidationError` whose ``details["option"]`` names the faulty option."""
    try:
        return queue_options(raw)
    except typed.Invalid as exc:
        details = {"option": str(exc.path[0])} if exc.path else {}
        raise ValidationError(option_error(exc), **details) from None


def options_dict(options: QueueOptions) -> dict[str, Any]:
    """The options as a plain JSON-ready mapping."""
    return msgspec.structs.asdict(options)


def check_dead_letter(name: str, options: QueueOptions) -> None:
    """Refuse a ``dead_letter`` option that is no valid queue name, or names the queue
    itself (its dead would move into the queue they failed in, for ever)."""
    target = options.dead_letter
    if target is None:
        return
    if len(target) > MAX_QUEUE_NAME or not QUEUE_NAME.fullmatch(target):
        raise ValidationError(
            f"queue option 'dead_letter' must be a queue name (1 to {MAX_QUEUE_NAME} letters,"
            " digits, '.', '_', ':' or '-', starting with a letter or digit)",
            option="dead_letter",
        )
    if target == name:
        raise ValidationError(
            f"queue option 'dead_letter' of queue {name!r} names the queue itself; name"
            f" another queue, e.g. {name + '.dead'!r}",
            option="dead_letter",
        )


def parse_priority(value: Any) -> int:
    """An integer priority from an integer or one of "high", "normal", "low"."""
    if isinstance(value, str):
        try:
            return PRIORITY_NAMES[value]
        except KeyError:
            raise ValidationError(
                f"priority {value!r} is unknown; use an integer or one of high, normal, low"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("priority must be an integer or one of high, normal, low")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValidationError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    return value


def task_options(body: protocol.NewTaskBody, where: str = "task") -> dict[str, Any]:
    """The per-task options of a task to enqueue, as :class:`NewTask` fields, from the wire's
    (``key``, ``timeout`` ms, ``max_attempts``, ``expires_in`` and ``unique_for`` seconds,
    ``unique_key``), whose types and bounds :class:`katar.protocol.NewTaskBody` checks."""
    if body.unique_for is not None and body.unique_key is None:
        raise ValidationError(f"{where}: unique_for needs a unique_key", field="unique_for")
    if body.debounce_key is not None:
        check_debounce(
            where,
            delayed=bool(body.delay) or body.run_at is not None,
            unique=body.unique_key is not None,
            after=bool(body.after),
        )
    return {
        "key": body.key,
        "timeout": body.timeout,
        "max_attempts": body.max_attempts,
        "expires_in_ms": None if body.expires_in is None else _ms(body.expires_in),
        "unique_key": body.unique_key,
        "unique_for_ms": None if body.unique_for is None else _ms(body.unique_for),
        "debounce_key": body.debounce_key,
        "trace": None
        if body.trace is None
        else trace_context(body.trace.traceparent, body.trace.tracestate),
    }


def check_run_at(run_at: int, now: int, where: str = "") -> int:
    """A task's ``run_at`` (ms since the epoch), refused more than ten years (MAX_DELAY)
    after ``now``; one that has passed is kept (it means now)."""
    if run_at > now + MAX_DELAY * 1000:
        prefix = f"{where}: " if where else ""
        raise ValidationError(f"{prefix}run_at must be at most ten years ahead")
    return run_at


def check_debounce(where: str, *, delayed: bool, unique: bool, after: bool) -> None:
    """Refuse a debounce_key without the time the task waits for more of its key (a delay
    or run_at), or beside an option it contradicts: a unique_key (the first enqueue wins
    there, the latest here) and ``after`` (a debounced task's due time is its own)."""
    if not delayed:
        raise ValidationError(
            f"{where}: debounce_key needs a delay (above 0 seconds) or a run_at: how long "
            "the task waits for a later enqueue of its key to replace it",
            field="debounce_key",
        )
    if unique:
        raise ValidationError(
            f"{where}: give debounce_key or unique_key, not both (with unique_key the first "
            "enqueue wins, with debounce_key the latest)",
            field="debounce_key",
        )
    if after:
        raise ValidationError(
            f"{where}: a task with a debounce_key cannot wait for others (after): its due "
            "time is its delay or run_at",
            field="debounce_key",
        )


_TRACEPARENT: Final = re.compile(protocol.TRACEPARENT_PATTERN)
_INVALID_TRACEPARENT: Final = re.compile(protocol.INVALID_TRACEPARENT)
_TRACESTATE: Final = re.compile(protocol.TRACESTATE_PATTERN)


def trace_context(traceparent: str | None, tracestate: str | None) -> msgspec.Raw | None:
    """The trace context a task stores and its deliveries carry (Task.trace), from the W3C
    ``traceparent`` and ``tracestate``; None when the traceparent is absent or not W3C's:
    the W3C Trace Context says a receiver ignores a traceparent it cannot parse (and then
    the tracestate with it), rather than refuse the request. A tracestate that is not
    printable ASCII or is over its 512 characters is left out, the traceparent kept. Both
    are stored as given (the PostgreSQL function ``enqueue`` applies the same checks)."""
    if (
        traceparent is None
        or _TRACEPARENT.match(traceparent) is None
        or _INVALID_TRACEPARENT.match(traceparent) is not None
    ):
        return None
    if (
        tracestate is None
        or len(tracestate) > protocol.MAX_TRACESTATE
        or _TRACESTATE.match(tracestate) is None
    ):
        return msgspec.Raw(b'{"traceparent":"%s"}' % traceparent.encode())
    return msgspec.Raw(msgspec.json.encode({"traceparent": traceparent, "tracestate": tracestate}))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))  # above 0 s: never 0 ms


def parse_task_options(**raw: Any) -> dict[str, Any]:
    """:func:`task_options` from keyword arguments (the Python API's), checked as a request's
    fields are; the None ones are left out. A ``delay`` given is checked, and says that the
    task has one (a debounce_key needs it), but is not among the options returned."""
    given = {name: value for name, value in raw.items() if value is not None}
    try:
        body = msgspec.convert(given, protocol.NewTaskBody)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid task option: {exc}") from None
    return task_options(body)


def unknown_parent(where: str, parent_id: int | str) -> ValidationError:
    """The refusal of an ``after`` that names no task this server's store holds (or none
    the caller's token may see: the same words, so that they tell nothing)."""
    return ValidationError(
        f"{where}.after: task {parent_id} not found; a task can only wait for tasks that exist",
        field="after",
        _id=str(parent_id),
    )


def parse_after(
    after: Sequence[str | int], where: str, after_failure: AfterFailure | None = None
) -> dict[str, Any]:
    """A task's ``after`` as :class:`NewTask` fields: the ids it names (``after``) and its
    "$n" references to earlier tasks of the same enqueue (``refs``, whose order the engine
    checks). An item that can be neither is refused as an unknown task."""
    ids: list[int] = []
    refs: list[int] = []
    for item in after:
        if isinstance(item, str) and item.startswith("$") and 1 < len(item) < 8:
            digits = item[1:]
            if digits.isascii() and digits.isdigit():
                refs.append(int(digits))
                continue
        task_id = parse_task_id(item)
        if task_id is None:
            raise unknown_parent(where, str(item)[:64])
        ids.append(task_id)
    parsed: dict[str, Any] = {"after": tuple(ids), "refs": tuple(refs)}
    if after_failure is not None:
        parsed["after_failure"] = after_failure
    return parsed


def check_after_failure(after: Sequence[Any] | None, after_failure: str | None, where: str) -> None:
    """Refuse an ``after_failure`` without a task to wait for: it says what the end of a
    parent does, and a task without ``after`` has none (422, rather than ignored)."""
    if after_failure is not None and not after:
        raise ValidationError(
            f"{where}: after_failure needs after (the tasks to wait for)", field="after_failure"
        )


# A queue's name: its characters are fixed, for a name travels in URLs, file keys and
# PostgreSQL notifications.
QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
#: The longest queue name any server accepts; [limits] max_queue_name may lower it.
MAX_QUEUE_NAME: Final = 255


def check_queue_name(name: str, max_length: int = MAX_QUEUE_NAME) -> str:
    """Return ``name`` if it is a valid queue name of at most ``max_length`` characters
    (a server's [limits] max_queue_name for new queues), else raise ValidationError."""
    if len(name) > max_length or not QUEUE_NAME.fullmatch(name):
        raise ValidationError(
            f"invalid queue name {name[: max_length + 10]!r}: use 1 to {max_length} letters, "
            "digits, '.', '_', ':' or '-', starting with a letter or digit",
            queue=name[: max_length + 10],
        )
    return name


def parse_task_id(task_id: str | int) -> int | None:
    """The store id behind a client's task id, or None when it cannot be one of ours."""
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        return task_id if 0 < task_id < 2**63 else None
    if (
        isinstance(task_id, str)
        and task_id.isascii()
        and task_id.isdigit()
        and task_id[0] != "0"  # ids are written in canonical decimal: "01" is no id of ours
        and len(task_id) < 19
    ):
        return int(task_id)
    return None


def check_text(worker: str | None, acks: Sequence[Ack]) -> None:
    """Refuse NUL in the text a poll would store (the worker's name, a failure's error): one
    store (PostgreSQL) cannot keep it in text, so no store takes it. Task data and results
    are JSON kept as bytes, and hold any character."""
    if worker is not None and "\x00" in worker:
        raise ValidationError("worker must not contain NUL (\\u0000)", field="worker")
    for ack in acks:  # the index is looked for only when one is refused
        if ack.error is not None and "\x00" in ack.error:
            i = next(i for i, other in enumerate(acks) if other is ack)
            where = f"tasks[{i}].error"
            raise ValidationError(f"{where} must not contain NUL (\\u0000)", field=where, ack=i)


#: The options that sign what they send with a secret of their own (Standard Webhooks).
_SIGNED: Final = ("push", "notify")


def settle_push(old: QueueOptions | None, new: QueueOptions) -> QueueOptions:
    """The options to keep when ``new`` replaces ``old``: a push or notify option that names
    no secret keeps the queue's (and its rotation's grace), or gets a fresh one when it had
    none."""
    for name in _SIGNED:
        signer = getattr(new, name)
        if signer is None or signer.secret is not None:
            continue
        before = None if old is None else getattr(old, name)
        if before is not None and before.secret is not None:
            signer = msgspec.structs.replace(
                signer,
                secret=before.secret,
                previous_secret=before.previous_secret,
                previous_until=before.previous_until,
            )
        else:
            signer = msgspec.structs.replace(signer, secret=new_secret())
        new = msgspec.structs.replace(new, **{name: signer})
    return new


def rotated(options: QueueOptions, now: int, grace_ms: int, name: str = "push") -> QueueOptions:
    """The options with a fresh secret for their ``name`` option ("push" or "notify"); the
    old one signs too for ``grace_ms``."""
    signer = getattr(options, name)
    if signer is None:
        raise ValidationError(f"the queue has no {name} option: it has no secret to rotate")
    signer = msgspec.structs.replace(
        signer,
        secret=new_secret(),
        previous_secret=signer.secret if grace_ms > 0 else None,
        previous_until=now + grace_ms if grace_ms > 0 else None,
    )
    return msgspec.structs.replace(options, **{name: signer})


def public_options(
    options: QueueOptions, show_secret: bool = False, show_notify: bool = False
) -> QueueOptions:
    """The options as anyone who may read the queue sees them: the push secrets left out
    (``show_secret`` keeps the current one, for the answer that made it; ``show_notify``
    the notify option's)."""
    for name, show in (("push", show_secret), ("notify", show_notify)):
        signer = getattr(options, name)
        if signer is None:
            continue
        signer = msgspec.structs.replace(
            signer,
            secret=signer.secret if show else None,
            previous_secret=None,
            previous_until=None,
        )
        options = msgspec.structs.replace(options, **{name: signer})
    return options
