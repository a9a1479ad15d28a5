"""The domain's data: task states, tasks, acks and queue options.

Task data and results are kept as the JSON bytes the client sent (``msgspec.Raw``), so a
task's payload is never decoded or re-encoded on its way from producer to worker.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from katar import protocol
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


class State(enum.IntEnum):
    """A task's stored state. Public statuses are coarser: see :data:`PUBLIC_STATUS`."""

    PAUSED = 0
    READY = 1  # queued and due: the only state a claim looks at
    SCHEDULED = 2  # queued with a not-before time in the future (delay or retry backoff)
    RUNNING = 3  # "in progress": leased to a worker until lease_until
    DONE = 4
    FAILED = 5
    CANCELLED = 6


#: The public statuses (katar.protocol.STATUSES) of the stored states; READY and SCHEDULED
#: are both "queued".
PUBLIC_STATUS: Final[dict[State, Status]] = {
    State.PAUSED: "paused",
    State.READY: "queued",
    State.SCHEDULED: "queued",
    State.RUNNING: "in progress",
    State.DONE: "done",
    State.FAILED: "failed",
    State.CANCELLED: "cancelled",
}
STATES_OF_STATUS: Final = {
    status: tuple(s for s, name in PUBLIC_STATUS.items() if name == status) for status in STATUSES
}
FINAL_STATES: Final = frozenset({State.DONE, State.FAILED, State.CANCELLED})


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

    @property
    def status(self) -> str:
        """The public status: one of :data:`STATUSES`."""
        return PUBLIC_STATUS[self.state]


class NewTask(msgspec.Struct, kw_only=True, frozen=True):
    """A task to enqueue."""

    data: msgspec.Raw
    priority: int = 0
    delay_ms: int = 0
    run_at: int | None = None  # not before this time (ms since the epoch), instead of a delay
    paused: bool = False


class QueueOptions(msgspec.Struct, kw_only=True, frozen=True):
    """A queue's options: the keys of a ``[queues.NAME]`` table, with their defaults."""

    persistent: bool = False  # keep done and failed tasks as history
    timeout: int = DEFAULT_LEASE_MS  # lease in ms
    max_attempts: int = 5  # deliveries before a task fails for good; 0 = no limit
    retry_failed: bool = False  # a "failed" ack re-queues the task while attempts remain
    max_batch: int = 100  # the most tasks one poll may take with "max"
    retry_delay: int = 1000  # ms before the first retry of a failed task; doubles each time
    retry_delay_max: int = 3_600_000  # ms: the backoff's ceiling
    configuration: dict[str, Any] = msgspec.field(default_factory=dict)

    def worker_configuration(self) -> dict[str, Any]:
        """The configuration sent to workers: the custom one merged over the default."""
        return {**DEFAULT_CONFIGURATION, **self.configuration}


#: The integer options' bounds, in QueueOptions's order.
OPTION_LIMITS: Final = {
    "timeout": (1, 2**31 - 1),
    "max_attempts": (0, 2**31 - 1),
    "max_batch": (1, 10_000),
    "retry_delay": (0, 2**31 - 1),
    "retry_delay_max": (0, 2**31 - 1),
}
_BOOL_OPTIONS: Final = ("persistent", "retry_failed")
OPTION_NAMES: Final = (*_BOOL_OPTIONS, *OPTION_LIMITS, "configuration")


def _whole(value: Any) -> Any:
    """A float with no fraction as an int: JSON has one number type, so 30000.0 is 30000."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def parse_queue_options(raw: Any) -> QueueOptions:
    """Validate a mapping of queue options (from JSON, TOML or keyword arguments).

    Raises :class:`ValidationError` whose ``details["option"]`` names the faulty key.
    """
    if not isinstance(raw, dict):
        raise ValidationError('queue options must be a JSON object, e.g. {"timeout": 30000}')
    raw = {key: _whole(value) for key, value in raw.items()}
    for key, value in raw.items():
        if key not in OPTION_NAMES:
            raise ValidationError(
                f"unknown queue option {key!r}; expected one of {', '.join(OPTION_NAMES)}",
                option=key,
            )
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise ValidationError(f"queue option {key!r} must be true or false", option=key)
        if key in OPTION_LIMITS:
            low, high = OPTION_LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValidationError(
                    f"queue option {key!r} must be an integer from {low} to {high}", option=key
                )
        if key == "configuration":
            if not isinstance(value, dict):
                raise ValidationError(
                    "queue option 'configuration' must be an object, e.g. {\"interval\": 1000}",
                    option=key,
                )
            if "interval" in value:
                value = raw[key] = {**value, "interval": _whole(value["interval"])}
            interval = value.get("interval", 0)
            if (
                isinstance(interval, bool)
                or not isinstance(interval, int)
                or not 0 <= interval <= MAX_INTERVAL
            ):
                raise ValidationError(
                    "configuration.interval must be a whole number of milliseconds from 0 to "
                    f"{MAX_INTERVAL}",
                    option=key,
                )
            try:
                msgspec.json.encode(value)
            except (TypeError, msgspec.EncodeError) as exc:
                raise ValidationError(
                    f"configuration must hold JSON values only: {exc}", option=key
                ) from exc
    return QueueOptions(**raw)


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
