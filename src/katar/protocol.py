"""The wire model: what goes over HTTP between Katar and its clients, defined once.

The bodies and answers (as msgspec structs), header names, statuses, defaults and bounds.
The server decodes requests with these types (katar.http.parse) and encodes answers with
them (katar.http.responses); the Python client sends and reads them (katar.client); the
OpenAPI document is generated from them (katar.http.openapi). So this module imports msgspec
and nothing of the server: a worker host loads it without the server's modules.

Types named here are the contract: a change to one is a change to the protocol.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Final, Literal, TypedDict, get_args

import msgspec

# -- headers (lower case: HTTP names are case-insensitive, and servers see them so) ----------

#: On ``GET /v1/queue/{queue}``: the queue's lease in ms, so a worker knows when to heartbeat.
LEASE_HEADER: Final = "katar-lease-timeout"
#: On an enqueue: makes a retry safe (the server creates the tasks once per key).
IDEMPOTENCY_KEY_HEADER: Final = "idempotency-key"
#: On an enqueue: the caller's W3C trace context, stored on every task it creates.
TRACEPARENT_HEADER: Final = "traceparent"
TRACESTATE_HEADER: Final = "tracestate"

# -- statuses -------------------------------------------------------------------------------

Status = Literal["paused", "queued", "in progress", "done", "failed", "cancelled"]
AckStatus = Literal["done", "failed", "in progress"]
PatchStatus = Literal["cancelled", "paused", "queued"]
NewTaskStatus = Literal["queued", "paused"]
#: What the failure (or cancellation) of a task a task waits for does to it: cancel it, or
#: run it once every task it waits for has ended (section 14).
AfterFailure = Literal["cancel", "run"]
RoleName = Literal["worker", "producer", "admin"]
PriorityName = Literal["high", "normal", "low"]
#: A task's six public statuses.
STATUSES: Final[tuple[str, ...]] = get_args(Status)
#: What a worker may report on a delivered task.
ACK_STATUSES: Final[tuple[str, ...]] = get_args(AckStatus)
#: What an operator may set a task to.
PATCH_STATUSES: Final[tuple[str, ...]] = get_args(PatchStatus)
#: The statuses a task does not leave by itself.
FINAL_STATUSES: Final = frozenset({"done", "failed", "cancelled"})
#: The most tasks one task may wait for (``after``): a fan-in of this many parents.
MAX_AFTER: Final = 1_000
#: The most dependencies one enqueue may create over all its tasks (the entries of their
#: ``after`` lists), so that one request's work in the store stays small: a store writes
#: them in the enqueue's one transaction.
MAX_AFTER_PER_REQUEST: Final = 1_000
#: The most tasks that may wait for one task over its life (those that name it while it is
#: unfinished): its end settles them all in one transaction.
MAX_CHILDREN: Final = 10_000
#: GET /v1/queues counts under this key, apart from "queued", the queued tasks that wait
#: for others (``after``); their own status stays "queued", with ``waiting_for`` non-empty.
WAITING_COUNT: Final = "waiting"
#: The events a queue's ``notify`` option may send (completion webhooks).
NOTIFY_EVENTS: Final = ("done", "failed", "cancelled", "dead_lettered")

# -- defaults and bounds ----------------------------------------------------------------------

#: A queue's lease when its options name none (and what a worker assumes until it knows).
DEFAULT_LEASE_MS: Final = 60000
#: The worker configuration every queue gives, under its own.
DEFAULT_CONFIGURATION: Final = {"interval": 30000}
#: The longest poll interval a queue's configuration may give workers, in ms: what a
#: 32-bit timer holds (about 24.8 days), and so what any worker can wait.
MAX_INTERVAL: Final = 2**31 - 1
#: The longest delay a task may be given, in seconds: ten years, beyond any schedule, and well
#: inside what timestamps (and ISO dates) can represent.
MAX_DELAY: Final = 10 * 366 * 24 * 3600
PRIORITY_NAMES: Final = {"high": 10, "normal": 0, "low": -10}
PRIORITY_MIN: Final = -(2**31)
PRIORITY_MAX: Final = 2**31 - 1
#: The longest worker name a poll may give.
MAX_WORKER_NAME: Final = 200
#: The longest Idempotency-Key, in characters.
MAX_IDEMPOTENCY_KEY: Final = 255
#: An Idempotency-Key: 1 to MAX_IDEMPOTENCY_KEY printable ASCII characters.
IDEMPOTENCY_KEY_PATTERN: Final = f"^[\\x20-\\x7e]{{1,{MAX_IDEMPOTENCY_KEY}}}$"

#: The longest unique_key of a task, in characters.
#: A task id as the records write it: canonical decimal, no leading zero, under 2**63.
TASK_ID_PATTERN: Final = "^[1-9][0-9]{0,17}$"
MAX_UNIQUE_KEY: Final = 255
#: The longest debounce_key of a task, in characters (as a unique_key).
MAX_DEBOUNCE_KEY: Final = MAX_UNIQUE_KEY
#: A unique_key: printable characters (no control character).
UNIQUE_KEY_PATTERN: Final = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"

#: A W3C traceparent of version 00 (https://www.w3.org/TR/trace-context/): version,
#: trace id, parent id and flags in lower-case hex. One that does not match, or that
#: INVALID_TRACEPARENT matches (version ff, an all-zero id), is ignored, as the W3C says a
#: receiver does: the task is enqueued without trace context.
TRACEPARENT_PATTERN: Final = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
INVALID_TRACEPARENT: Final = "^(ff-|.{3}0{32}-|.{36}0{16}-)"
#: A tracestate kept with its traceparent: printable ASCII, at most MAX_TRACESTATE
#: characters (the W3C's bound); another is left out, and the traceparent kept.
TRACESTATE_PATTERN: Final = "^[ -~]*$"
MAX_TRACESTATE: Final = 512

NULL: Final = msgspec.Raw(b"null")
#: The longest task key (a group such as a customer), in characters.
MAX_TASK_KEY: Final = 255


# Factories rather than defaults for the Raw fields: the JSON Schema generator cannot write a
# Raw default (and an absent result means null, absent data means "missing", not a value).
# Both are built-in callables, not functions in Python: every ack of every poll calls them.
_null: Final = itertools.repeat(NULL).__next__  # the one null, shared (a Raw is immutable)
_absent: Final = msgspec.Raw  # an empty Raw: absent


Count = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Attempt = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Priority = Annotated[
    Annotated[int, msgspec.Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)] | PriorityName,
    msgspec.Meta(description="Higher runs first; high is 10, normal 0, low -10."),
]
Time = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
TaskKey = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_TASK_KEY,
        pattern="^[^\\x00-\\x1f]+$",
        description="The task's group (a customer, an account): key_concurrency, key_rate and"
        f" fair count by it. 1 to {MAX_TASK_KEY} characters, no control characters.",
    ),
]
#: Any JSON value, passed on verbatim (the server never decodes a task's data or result).
AnyJson = Annotated[Any, msgspec.Meta(description="Any JSON value, null included.")]
WorkerConfiguration = Annotated[
    dict[str, Any],
    msgspec.Meta(
        description="The queue's worker configuration, over {interval: 30000}.",
        extra_json_schema={
            "required": ["interval"],
            "properties": {"interval": {"type": "integer", "minimum": 0, "maximum": MAX_INTERVAL}},
        },
    ),
]


class TraceContext(msgspec.Struct, frozen=True, omit_defaults=True):
    """A W3C trace context: the ``traceparent`` and ``tracestate`` headers' values. On an
    enqueue, a traceparent that is not W3C's is ignored (the task carries none); a task
    delivered carries the one it was enqueued with, ``tracestate`` absent when none."""

    traceparent: Annotated[
        str,
        msgspec.Meta(
            max_length=256, description="A W3C traceparent: 00-<trace id>-<parent id>-<flags>."
        ),
    ]
    tracestate: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


class MessageAttributeValue(msgspec.Struct, frozen=True, omit_defaults=True):
    """A message attribute as the SQS API writes it: its type (``String``, ``Number``,
    ``Binary``, with an optional ``.suffix``) and its value, ``BinaryValue`` in base64."""

    DataType: str
    StringValue: str | None = None
    BinaryValue: str | None = None  # base64


class MessageAttributes(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a send over the SQS API (katar.sqs) keeps with its task: its message attributes,
    its system attributes (``AWSTraceHeader``) and, on a FIFO queue, its deduplication id.
    Each is absent when the send gave none."""

    MessageAttributes: dict[str, MessageAttributeValue] = {}
    MessageSystemAttributes: dict[str, MessageAttributeValue] = {}
    MessageDeduplicationId: str | None = None


class TaskAttributes(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """The message attributes a native enqueue gives a task, as a send over the SQS API
    does: up to 10 ``MessageAttributes`` and the system attribute ``AWSTraceHeader``,
    checked by SQS's rules (names, types, values) and counted towards the task's size as
    SQS counts them (names, types and values). An SQS receive returns them."""

    MessageAttributes: dict[str, MessageAttributeValue] = {}
    MessageSystemAttributes: dict[str, MessageAttributeValue] = {}


# -- the task options of an enqueue call -------------------------------------------------------


class TaskOptions(TypedDict, total=False):
    """A task's own options as the Python enqueue calls take them (keywords), under the
    wire's names: ``timeout`` (its lease in ms), ``max_attempts`` (0: no limit),
    ``expires_in`` and ``unique_for`` (seconds), ``key`` (its group). None: not given."""

    timeout: int | None
    max_attempts: int | None
    expires_in: float | None
    unique_for: float | None
    key: str | None
    #: While a task of the queue with this key waits, never delivered, an enqueue of the
    #: key replaces it (its data, options and due time): the latest wins. Needs a delay.
    debounce_key: str | None
    #: The tasks' SQS message attributes: {"MessageAttributes": {name: {"DataType",
    #: "StringValue" | "BinaryValue"}}, "MessageSystemAttributes": {"AWSTraceHeader": ...}}.
    attributes: dict[str, Any] | None


class EnqueueOptions(TaskOptions, total=False):
    """What every enqueue call takes beside its tasks (``Producer.enqueue``,
    ``Katar.queue(...).enqueue`` and their ``enqueue_many``): where the tasks go in the
    queue, whether the call may be repeated safely, and the tasks' own options."""

    priority: int | str | None
    delay: float | None  # seconds
    paused: bool
    idempotency_key: str | None
    #: The W3C trace context the tasks carry (section 17), instead of the current
    #: OpenTelemetry context (taken when the SDK is installed and neither is given).
    traceparent: str | None
    tracestate: str | None
    #: With afters: "run" makes the tasks that wait for others run once those have all
    #: ended, whatever the outcome (section 14); "cancel" (the default) cancels them.
    after_failure: AfterFailure | None


def check_enqueue_options(options: EnqueueOptions, call: str) -> None:
    """Refuse a keyword ``call`` does not take, as a signature would (the type checker
    catches it too, but not every caller is checked)."""
    unknown = sorted(options.keys() - EnqueueOptions.__optional_keys__)
    if unknown:
        raise TypeError(f"{call}() got an unexpected keyword argument {unknown[0]!r}")


# -- requests ---------------------------------------------------------------------------------


class Ack(msgspec.Struct, kw_only=True, frozen=True):
    """A worker's report on a delivered task (an element of a poll's ``tasks``)."""

    task_id: str | int = msgspec.field(name="_id")
    status: AckStatus
    error: str | None = None
    #: With "done": the worker's JSON, verbatim; null if none.
    result: Annotated[msgspec.Raw, msgspec.Meta(description="With done: any JSON.")] = (
        msgspec.field(default_factory=_null)
    )
    attempt: Attempt | None = None  # the delivery acked
    retry: bool | None = None  # with "failed": None means the queue's retry_failed
    #: With "in progress": the worker's JSON, verbatim, kept in the task's record; absent
    #: (empty) when the heartbeat carries none.
    progress: Annotated[
        msgspec.Raw, msgspec.Meta(description="With in progress: any JSON, the task's progress.")
    ] = msgspec.field(default_factory=_absent)
    #: With "in progress": the lease's new end, in ms from now, instead of the task's lease
    #: (0 gives the task back to the queue at once, not counted as a failure).
    lease: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=2**31 - 1,
                description="With in progress: the lease's end in ms from now; 0 releases the"
                " task to the queue at once, not counted as a failed attempt.",
            ),
        ]
        | None
    ) = None


class Poll(msgspec.Struct, frozen=True):
    """A worker's poll: acks to apply, then how many tasks to take and how long to wait."""

    tasks: list[Ack] = []
    max: Count = 1
    wait: Seconds = 0.0
    worker: Annotated[str, msgspec.Meta(max_length=MAX_WORKER_NAME)] | None = None


class NewTaskBody(msgspec.Struct, frozen=True):
    """A task to enqueue. ``data`` is required (the server says so when it is missing)."""

    data: Annotated[msgspec.Raw, msgspec.Meta(description="Any JSON value, null included.")] = (
        msgspec.field(default_factory=_absent)
    )
    priority: Priority = 0
    delay: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0,
                le=MAX_DELAY,
                description="Seconds before the task may run (ten years at most).",
            ),
        ]
        | None
    ) = None
    run_at: (
        Annotated[
            Time,
            msgspec.Meta(
                description="Time before which the task may not run, instead of delay (UTC when "
                "it names no zone; a past time means now)."
            ),
        ]
        | None
    ) = None
    status: NewTaskStatus = "queued"
    key: TaskKey | None = None
    timeout: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=2**31 - 1,
                description="This task's lease in ms, instead of the queue's timeout.",
            ),
        ]
        | None
    ) = None
    max_attempts: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=2**31 - 1,
                description="Deliveries before this task fails for good, instead of the "
                "queue's max_attempts; 0: no limit.",
            ),
        ]
        | None
    ) = None
    expires_in: (
        Annotated[
            float,
            msgspec.Meta(
                gt=0,
                le=MAX_DELAY,
                description="Seconds: a task not delivered within this time is cancelled.",
            ),
        ]
        | None
    ) = None
    unique_key: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=MAX_UNIQUE_KEY,
                pattern=UNIQUE_KEY_PATTERN,
                description="While a task of the queue with this key is paused, queued or in "
                "progress, an enqueue of the key creates nothing and answers that task.",
            ),
        ]
        | None
    ) = None
    unique_for: (
        Annotated[
            float,
            msgspec.Meta(
                gt=0,
                le=MAX_DELAY,
                description="Seconds after its creation that the task holds its unique_key "
                "whatever its status (needs unique_key).",
            ),
        ]
        | None
    ) = None
    debounce_key: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=MAX_DEBOUNCE_KEY,
                pattern=UNIQUE_KEY_PATTERN,
                description="With a delay or run_at: while a task of the queue with this key "
                "waits and was never delivered, an enqueue of the key replaces its data and "
                "options and moves its due time (answered 200, debounced true): the latest "
                "wins. Not with unique_key or after.",
            ),
        ]
        | None
    ) = None
    after: (
        Annotated[
            list[str],
            msgspec.Meta(
                max_length=MAX_AFTER,
                description='Tasks this one waits for: ids of existing tasks, and in a batch "$n" '
                "for the n-th task of the same request (0-based, an earlier one). It is "
                "delivered once all are done, with their results; cancelled if one fails. "
                f"At most {MAX_AFTER_PER_REQUEST:,} over all the tasks of one request, and "
                f"at most {MAX_CHILDREN:,} tasks may wait for one task (422 beyond).",
            ),
        ]
        | None
    ) = None
    after_failure: (
        Annotated[
            AfterFailure,
            msgspec.Meta(
                description="With after: what a parent that fails or is cancelled does to "
                'this task: "cancel" it (the default), or "run": the task waits until every task '
                "it names has ended, whatever the outcome, and is delivered with after holding, "
                'per parent, {"status", "result", "error"}.'
            ),
        ]
        | None
    ) = None
    trace: (
        Annotated[
            TraceContext,
            msgspec.Meta(
                description="This task's W3C trace context, instead of the request's "
                "traceparent and tracestate headers."
            ),
        ]
        | None
    ) = None
    attributes: (
        Annotated[
            TaskAttributes,
            msgspec.Meta(
                description="SQS message attributes kept with the task, as SendMessage's: "
                "an SQS receive returns them (with MD5OfMessageAttributes)."
            ),
        ]
        | None
    ) = None


BulkAction = Literal["retry", "cancel", "delete"]
#: What a bulk action may do: retry (failed or cancelled tasks), cancel (paused or queued
#: ones), delete (any task not in progress).
BULK_ACTIONS: Final[tuple[str, ...]] = get_args(BulkAction)
#: The longest ``error`` substring a listing or a bulk filter may search for.
MAX_ERROR_FILTER: Final = 1000


#: Text that holds no NUL: no task's key, worker or error does (none is stored with one).
NO_NUL: Final = "^[^\\x00]*$"
NoNul = Annotated[str, msgspec.Meta(pattern=NO_NUL)]


class TaskFilterQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which tasks of a queue a bulk action (or a listing) selects: every condition given
    must hold. ``before`` and ``after`` bound the time the task was created."""

    status: list[Status] | None = None
    ids: (
        Annotated[
            list[Annotated[str, msgspec.Meta(pattern=TASK_ID_PATTERN)]],
            msgspec.Meta(max_length=10_000),
        ]
        | None
    ) = None
    key: NoNul | None = None
    worker: NoNul | None = None
    error: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=MAX_ERROR_FILTER,
                pattern=NO_NUL,
                description="A substring of the task's error (case-sensitive).",
            ),
        ]
        | None
    ) = None
    before: Time | None = None
    after: Time | None = None


class Bulk(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An action on every task of a queue that a filter selects."""

    action: BulkAction
    filter: TaskFilterQuery = TaskFilterQuery()
    #: Count only: ``matched`` and how many the action would change; nothing changes.
    dry_run: bool = False


class RedriveBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Move the waiting tasks (queued or failed) that a filter selects to another queue,
    with fresh attempts: to ``to``, or each back to the queue it came from (its
    ``dead_letter`` record). With ``rate``, at most that many tasks a second, in the
    background (202: a move job)."""

    to: str | None = None
    filter: TaskFilterQuery = TaskFilterQuery()
    rate: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] | None = None


class Enqueue(NewTaskBody, frozen=True):
    # NewTask: NewTaskBody's name in the OpenAPI document, which shows this docstring.
    """One task (the fields of :class:`NewTask`) or many (``tasks``), not both."""

    tasks: list[NewTaskBody] | None = None


class Patch(msgspec.Struct, frozen=True):
    """An operator's change to a task's status. With ``"status": "queued"``, ``data``,
    ``priority`` and ``key`` edit the task as it runs again (edit and retry): a paused,
    queued, failed or cancelled task takes them and a fresh set of attempts; a task in
    progress is a 409 that changes nothing, and so is a done one."""

    status: PatchStatus
    data: Annotated[
        msgspec.Raw,
        msgspec.Meta(description="With status queued: the task's new data (any JSON value)."),
    ] = msgspec.field(default_factory=_absent)
    priority: Priority | None = None
    key: TaskKey | None = None


# -- answers ----------------------------------------------------------------------------------


#: "released": a heartbeat with ``lease`` 0 gave the task back to the queue (not a failure).
DeliveryOutcome = Literal["done", "failed", "expired", "cancelled", "released"]
#: The most deliveries a task record's ``history`` shows (the last ones).
HISTORY_LENGTH: Final = 20


class DeliveryRecord(msgspec.Struct, frozen=True):
    """One delivery of a task: to whom, when, and how it ended (``outcome`` null while it
    runs; "expired": its lease ran out without an ack)."""

    attempt: int
    worker: str | None
    started_at: Time
    ended_at: Time | None = None
    outcome: DeliveryOutcome | None = None
    error: str | None = None


class DeadLetterRecord(msgspec.Struct, frozen=True):
    """Where a task in a dead-letter queue failed for good: that queue, its last error, the
    deliveries it had there, and when it moved."""

    queue: str
    error: str | None
    attempts: int
    at: Time


class TaskRecord(msgspec.Struct, frozen=True):
    """A task as the server describes it. The server fills ``data`` and ``result`` with the
    JSON it stored (``msgspec.Raw``); a client reads them as Python values."""

    id: str = msgspec.field(name="_id")
    queue: str
    status: Status
    priority: int
    data: AnyJson
    attempts: int
    error: str | None = None
    result: AnyJson = None
    worker: str | None = None
    created_at: Time | None = None
    updated_at: Time | None = None
    run_at: Time | None = None
    lease_expires_at: Time | None = None
    key: str | None = None
    #: The worker's last reported progress (from a heartbeat); null when none.
    progress: AnyJson = None
    #: An operator asked to cancel the task while it ran (PATCH answered 202).
    cancel_requested: bool = False
    timeout: int | None = None  # the task's own lease in ms, when it has one
    max_attempts: int | None = None  # the task's own max_attempts, when it has one
    expires_at: Time | None = None  # when a task never delivered is cancelled
    unique_key: str | None = None
    unique_until: Time | None = None  # the unique_key is held until then, whatever the status
    schedule: str | None = None  # the schedule that made the task, if one did
    scheduled_for: Time | None = None  # the tick of that schedule it was made for
    #: In an enqueue's answer: true when this is an existing task, which held the
    #: unique_key asked for (nothing was created for it); false otherwise.
    duplicate: bool = False
    #: The last deliveries (at most HISTORY_LENGTH), oldest first.
    history: list[DeliveryRecord] = []
    #: The ids of the tasks it waits for that are not done yet (``after`` at enqueue).
    waiting_for: list[str] = []
    #: The results of the tasks it waited for that are done, by id; null for a task that
    #: waits for none: a JSON object ``{"<id>": <result>, ...}``.
    after: AnyJson = None
    #: The tasks it waited for whose results ``after`` leaves out, for the answer would
    #: pass the server's max_answer_bytes: read them from those tasks' own records.
    after_omitted: list[str] = []
    #: For a task that failed for good in a queue with a dead_letter option and moved here:
    #: where from and why. Null for other tasks.
    dead_letter: DeadLetterRecord | None = None
    debounce_key: str | None = None
    #: In an enqueue's answer: true when this is an existing task, which waited with the
    #: debounce_key asked for and took this enqueue's data, options and due time.
    debounced: bool = False
    #: The W3C trace context it was enqueued with; null when none.
    trace: TraceContext | None = None
    #: What a send over the SQS API, or an enqueue with ``attributes``, kept with it (its
    #: message attributes); null for other tasks.
    attributes: MessageAttributes | None = None

    @property
    def finished(self) -> bool:
        """True once the task is done, failed or cancelled."""
        return self.status in FINAL_STATUSES


class BulkDone(msgspec.Struct, frozen=True):
    """What a bulk action did: the tasks its filter selected, and those it changed (with
    ``dry_run``: would change)."""

    matched: int
    changed: int


class Redriven(msgspec.Struct, frozen=True):
    """What a redrive did: the tasks the filter selected among those it may move (queued or
    failed), those it moved, and those it left where they are because they have no queue to
    go to (no ``to``, and no ``dead_letter`` record naming where they came from)."""

    matched: int
    moved: int
    no_origin: int


class MoveJobRecord(msgspec.Struct, frozen=True):
    """A redrive at a rate (a move job) as it stands, as the store keeps it: the same on
    every server sharing the store."""

    queue: str
    to: str | None  # null: each task back to the queue it came from
    rate: float  # tasks a second
    #: "running", "completed", "cancelled" (DELETE) or "failed" (see error)
    state: Literal["running", "completed", "cancelled", "failed"]
    matched: int
    moved: int
    no_origin: int
    #: The tasks still to look at, as the count when it started tells.
    remaining: int
    started_at: Time
    ended_at: Time | None = None
    error: str | None = None
    #: The job's id in the store (it grows: a later job has a higher one).
    id: int = 0
    #: The server that runs it, or ran it last ("host:pid:random"); another takes it over
    #: when that one stops.
    runner: str | None = None


class WorkerSeen(msgspec.Struct, frozen=True):
    """A worker that polled in the last hour (by the name its polls give)."""

    name: str
    queues: list[str]
    last_poll: Time
    in_progress: int


class Workers(msgspec.Struct, frozen=True):
    """The workers seen (GET /v1/workers)."""

    workers: list[WorkerSeen]


class ScheduleRecord(msgspec.Struct, frozen=True):
    """A schedule: its fields, its next ticks, and its last tick and task."""

    name: str
    cron: str
    timezone: str
    queue: str
    data: AnyJson
    priority: int
    overlap: str
    catch_up: bool
    paused: bool
    #: The next ticks (at most 5), as UTC times; none while paused.
    next_ticks: list[Time]
    last_tick: Time | None
    last_task: str | None
    #: Why the schedule cannot run (it fires nothing until it is PUT again), or null.
    error: str | None = None


class Schedules(msgspec.Struct, frozen=True):
    """Every schedule the caller may see, by name."""

    schedules: list[ScheduleRecord]


class ScheduleDeleted(msgspec.Struct, frozen=True):
    """A schedule removed (the tasks it made stay)."""

    deleted: str


class SchedulePause(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Pause or resume a schedule: while paused, its ticks pass without a task."""

    paused: bool


class Tasks(msgspec.Struct, frozen=True):
    """Tasks: those an enqueue created, or a page of a list (with its cursor)."""

    tasks: list[TaskRecord]
    #: The next page's cursor; a page may end early to keep its answer within the server's
    #: max_answer_bytes. Absent from an enqueue's answer.
    next: str | None = None


class DeliveredTask(msgspec.Struct, frozen=True):
    """A task delivered to a worker."""

    id: str = msgspec.field(name="_id")
    data: AnyJson = None
    attempt: Attempt = 1
    #: The task's own lease in ms, when it has one (else the queue's, LEASE_HEADER): the
    #: worker heartbeats it within that time.
    timeout: Annotated[int, msgspec.Meta(ge=1)] | None = None
    #: For a task that waited for others (``after``): their results, a JSON object
    #: ``{"<id>": <result>, ...}`` (fan-in). Absent for other tasks.
    after: AnyJson = None
    #: The tasks it waited for whose results ``after`` leaves out, for the answer would
    #: pass the server's max_answer_bytes: read them from those tasks' own records. Absent
    #: when none.
    after_omitted: list[str] = []
    #: For a task made by a schedule: the schedule's name and the tick the task was made
    #: for. Absent for other tasks.
    schedule: str | None = None
    scheduled_for: Time | None = None
    #: The W3C trace context the task was enqueued with. Absent for other tasks.
    trace: TraceContext | None = None
    #: What a send over the SQS API, or an enqueue with ``attributes``, kept with it (its
    #: message attributes). Absent for other tasks.
    attributes: MessageAttributes | None = None


class Deliveries(msgspec.Struct, frozen=True):
    """A poll's answer when it delivers tasks, or tells the worker to stop some."""

    tasks: list[DeliveredTask]
    #: Tasks whose heartbeat in this poll found them cancelled by an operator: the worker
    #: stops them and sends nothing more for them. Absent when none.
    cancel: list[str] = []


class QueueLimits(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where a queue with flow-control options stands against them."""

    in_progress: int  # tasks in progress now, on every server
    concurrency: int | None = None  # the queue's concurrency option
    #: Whole deliveries the rate limit allows now (its bucket's tokens).
    tokens: float | None = None
    #: Keys with key_concurrency tasks in progress: their other tasks wait.
    keys_at_limit: int | None = None
    #: Keys whose key_rate bucket holds no whole token now: their tasks wait for one.
    keys_rate_limited: int | None = None


class QueueInfo(msgspec.Struct, frozen=True):
    """A queue as GET /v1/queues lists it: its options, its tasks by status and, when it has
    flow-control options, where it stands against them."""

    name: str
    # Plain data, so that a client reads the options a newer server adds: the server fills
    # it from its checked QueueOptions, whose schema the OpenAPI document gives here.
    options: dict[str, Any]
    counts: dict[str, int]
    limits: QueueLimits | None = None
    #: Seconds the task at the queue's head (the next a poll takes) has been ready; null
    #: when no task is ready.
    oldest_queued_age: float | None = None
    #: The queues whose dead_letter option names this one (they send it their dead).
    dead_letter_sources: list[str] = []

    @property
    def paused(self) -> bool:
        """Whether the queue is paused (its polls take nothing)."""
        return bool(self.options.get("paused", False))


class Queues(msgspec.Struct, frozen=True):
    """Every queue the caller may see."""

    queues: list[QueueInfo]


#: The client's name for a listed queue (katar.client exports it).
QueueSummary = QueueInfo


class Rates(msgspec.Struct, frozen=True):
    """A queue's tasks per second over one interval of the throughput history."""

    enqueued: float
    done: float
    failed: float


class ThroughputSample(msgspec.Struct, frozen=True):
    """Each queue's rates over the interval that ends at ``at``."""

    at: Time
    queues: dict[str, Rates]


class Throughput(msgspec.Struct, frozen=True):
    """GET /v1/throughput: tasks per second of the token's queues, sampled every
    ``interval`` seconds, oldest first."""

    interval: int
    samples: list[ThroughputSample]


class Configuration(msgspec.Struct, frozen=True):
    """A queue's worker configuration (its lease rides in :data:`LEASE_HEADER`)."""

    configuration: WorkerConfiguration


class Health(msgspec.Struct, frozen=True):
    """What /healthz answers: ``ok`` with the version, or ``unavailable`` with the error."""

    status: Literal["ok", "unavailable"]
    version: str | None = None
    error: str | None = None


class PushSecret(msgspec.Struct, frozen=True):
    """A push queue's signing secrets (admin only): the current one, and the one it
    replaced while the rotation's grace period runs (both sign until then)."""

    secret: str
    previous_secret: str | None = None
    #: When the previous secret stops signing (RFC 3339, UTC).
    previous_until: str | None = None


class PushRotate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rotation of a push queue's secret: how long the old one keeps signing."""

    grace: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=30 * 86_400,
            description="Seconds the old secret keeps signing (default a day).",
        ),
    ] = 86_400.0


class PushAnswerRecord(msgspec.Struct, frozen=True):
    """One push of the queue by this server, and how its endpoint answered."""

    at: str  # when the push started (RFC 3339, UTC)
    outcome: Literal["done", "failed", "timeout", "unreachable", "refused"]
    status: int | None  # the HTTP status; null without an answer
    ms: int
    error: str | None = None


class PushStatus(msgspec.Struct, frozen=True):
    """A push queue's endpoint and this server's last pushes to it."""

    url: str
    timeout: int
    #: This server's pushes since it started, by outcome.
    counts: dict[str, int]
    #: The share of the last answers that were not 2xx (0 to 1); null before any push.
    error_rate: float | None
    #: This server's last pushes, newest first.
    recent: list[PushAnswerRecord]


class NotifyAnswerRecord(msgspec.Struct, frozen=True):
    """One send of a completion-webhook event by this server, and how its endpoint answered."""

    at: str  # when the send started (RFC 3339, UTC)
    outcome: Literal["sent", "failed", "refused"]
    status: int | None  # the HTTP status; null without an answer
    ms: int
    #: The task whose end it tells, and the event's type (task.done, ...).
    task: str
    type: str
    error: str | None = None


class NotifyStatus(msgspec.Struct, frozen=True):
    """A queue's completion-webhook endpoint, its outbox, and this server's last sends."""

    url: str
    events: list[str]
    #: The queue's events kept in the outbox, not yet answered 2xx (over every server).
    pending: int
    #: Of those, the ones whose send failed at least once (they wait for their next try).
    failing: int
    #: This server's sends since it started, by outcome (and "dropped": past the bound).
    counts: dict[str, int]
    #: The share of the last answers that were not 2xx (0 to 1); null before any send.
    error_rate: float | None
    #: This server's last sends, newest first.
    recent: list[NotifyAnswerRecord]


class QueueDeleted(msgspec.Struct, frozen=True):
    """A removed queue, and how many tasks went with it."""

    deleted: str
    tasks: int


class TokenInfo(msgspec.Struct, frozen=True):
    """What the caller's token may do (``GET /v1/token``), so that a client such as the
    dashboard shows only what it may use. Without tokens on the server: admin of every queue,
    and ``auth`` false."""

    role: RoleName
    queues: list[str]  # ["*"] for every queue
    name: str  # the token's label in the configuration file ("" if none)
    auth: bool  # whether the server asks for tokens at all


class TaskDeleted(msgspec.Struct, frozen=True):
    """A removed task."""

    id: str = msgspec.field(name="_id")
    deleted: bool = True


class Error(msgspec.Struct, frozen=True):
    """Every 4xx and 5xx answer: what is wrong and what to send; some errors add details."""

    error: Annotated[str, msgspec.Meta(description="What is wrong and what to send.")]
    ack: Annotated[int, msgspec.Meta(description="The index of the faulty ack.")] | None = None
    id: str | None = msgspec.field(name="_id", default=None)
    queue: str | None = None
    status: str | None = None
