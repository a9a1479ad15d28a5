"""The domain's data: task states, tasks, acks and queue options.

Task data and results are kept as the JSON bytes the client sent (``msgspec.Raw``), so a
task's payload is never decoded or re-encoded on its way from producer to worker.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Final

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


class Task(msgspec.Struct, kw_only=True, frozen=True):
    """One task as stored. Rules derive new versions with :func:`msgspec.structs.replace`."""

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
    #: The W3C trace context it was enqueued with, as delivered: the JSON object
    #: ``{"traceparent": ..., "tracestate": ...}`` (tracestate absent when none), kept as
    #: bytes so that a delivery splices it in. None for a task enqueued without one.
    trace: msgspec.Raw | None = None
    #: Not stored: set on an enqueue's answer when the task is an existing one that held the
    #: unique_key asked for (nothing was created for it).
    duplicate: bool = False
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

    @property
    def status(self) -> str:
        """The public status: one of :data:`STATUSES`."""
        return PUBLIC_STATUS[self.state]


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
    #: The tasks it waits for: ids of existing tasks, and ``refs``, the places (0-based) of
    #: earlier tasks of the same enqueue ("$n" on the wire), each before its own place.
    after: tuple[int, ...] = ()
    refs: tuple[int, ...] = ()
    #: The W3C trace context to store with it (Task.trace's JSON object), or None.
    trace: msgspec.Raw | None = None


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
    #: Among ready tasks of equal priority, deliveries rotate between keys.
    fair: bool = False
    #: How long finished tasks are kept (retention); see Keep.
    keep: Keep = Keep()
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
    return {
        "key": body.key,
        "timeout": body.timeout,
        "max_attempts": body.max_attempts,
        "expires_in_ms": None if body.expires_in is None else _ms(body.expires_in),
        "unique_key": body.unique_key,
        "unique_for_ms": None if body.unique_for is None else _ms(body.unique_for),
        "trace": None
        if body.trace is None
        else trace_context(body.trace.traceparent, body.trace.tracestate),
    }


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
    fields are; the None ones are left out."""
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


def parse_after(after: Sequence[str | int], where: str) -> dict[str, Any]:
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
    return {"after": tuple(ids), "refs": tuple(refs)}


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
    for i, ack in enumerate(acks):
        if ack.error is not None and "\x00" in ack.error:
            where = f"tasks[{i}].error"
            raise ValidationError(f"{where} must not contain NUL (\\u0000)", field=where, ack=i)
