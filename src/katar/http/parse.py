"""Request bodies: decoding and validating JSON into the domain's objects.

msgspec decodes and validates in one pass; its messages name the faulty field by path
(``$.tasks[0].status``), and a hint for the field says what to send instead.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from katar import protocol
from katar.attributes import InvalidAttribute, check_native
from katar.core.model import (
    Ack,
    Edit,
    NewTask,
    TaskFilter,
    check_after_failure,
    check_queue_name,
    check_run_at,
    now_ms,
    parse_after,
    parse_priority,
    parse_task_id,
    states_of,
    task_options,
)
from katar.errors import InvalidRequest, ValidationError
from katar.limits import task_too_large
from katar.protocol import (
    MAX_DEBOUNCE_KEY,
    MAX_DELAY,
    MAX_ERROR_FILTER,
    MAX_UNIQUE_KEY,
    STATUSES,
    Enqueue,
    NewTaskBody,
    Patch,
    Poll,
)

_HINTS: Final = {
    "status": "an ack's status is one of done, failed, in progress",
    "_id": "each ack needs the _id of a delivered task, as a string",
    "worker": "worker is the worker's name, a string of up to 200 characters",
    "max": "max is the number of tasks to take, an integer >= 0 (0 only applies the acks)",
    "wait": "wait is the long poll's length in seconds, a number >= 0",
    "attempt": "attempt is the delivery number the worker received, an integer >= 1",
    "priority": "priority is an integer or one of high, normal, low",
    "delay": f"delay is a number of seconds from 0 to {MAX_DELAY} (ten years)",
    "run_at": "run_at is an ISO 8601 time, e.g. 2030-01-31T09:00:00Z (UTC when it names no zone)",
    "timeout": "timeout is the task's lease in ms, an integer from 1 to 2147483647",
    "max_attempts": "max_attempts is an integer from 0 (no limit) to 2147483647",
    "expires_in": f"expires_in is a number of seconds above 0, at most {MAX_DELAY}",
    "unique_key": f"unique_key is a string of 1 to {MAX_UNIQUE_KEY} printable characters",
    "unique_for": f"unique_for is a number of seconds above 0, at most {MAX_DELAY}",
    "debounce_key": f"debounce_key is a string of 1 to {MAX_DEBOUNCE_KEY} printable characters",
    "attributes": 'attributes is {"MessageAttributes": {name: {"DataType", "StringValue" or '
    '"BinaryValue"}}, "MessageSystemAttributes": {"AWSTraceHeader": {...}}}',
}
# Where a field's name means something else: an enqueue's "status" is a new task's.
_HINTS_OF: Final[dict[type, dict[str, str]]] = {
    Enqueue: {**_HINTS, "status": "a new task's status is queued (the default) or paused"},
    Patch: {"status": "a task's status can be set to cancelled, paused or queued"},
    protocol.Bulk: {
        "action": "action is one of retry, cancel, delete",
        "ids": 'filter.ids is a list of task ids, each a string of digits such as "42"',
        "status": "filter.status is a list of statuses: paused, queued, in progress, done,"
        " failed, cancelled",
    },
}

#: How deeply arrays and objects may nest in a task's data, in a result, and in any other
#: request body (counted from the body's own object). Beyond, a consumer's parser may run
#: out of stack (Python's gives up near 1000 levels, and sooner on a deep call stack).
MAX_DEPTH: Final = 64
_TO_SQUARE: Final = bytes.maketrans(b"{}", b"[]")
_NOT_SKELETON: Final = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_STEPS: Final = bytes.maketrans(b"[]", b"\x01\xff")
_PASSES: Final = 8
#: JSON this short cannot nest over MAX_DEPTH levels (each takes two bytes): the callers
#: look no further, so that small tasks and results cost one comparison.
SHALLOW: Final = 2 * MAX_DEPTH

_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def too_deep(json: bytes | msgspec.Raw) -> bool:
    """Whether JSON text nests arrays and objects over :data:`MAX_DEPTH` levels. Cheap when
    it is short (a level takes two bytes) or has few brackets; otherwise byte-level
    operations that run in C, and a loop in Python only for what is left after a few levels
    are peeled off."""
    if len(json) <= SHALLOW:
        return False
    text = bytes(json)
    if text.count(b"[") + text.count(b"{") <= MAX_DEPTH:
        return False
    if b"\\" in text:  # drop escapes, so that an escaped quote does not end a string
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Quotes and brackets only. Adjacent quotes go (strings without brackets, or the end of
    # one and the start of the next: nothing between them counts); then the brackets
    # between quotes, those inside strings.
    nesting = text.translate(_TO_SQUARE, _NOT_SKELETON).replace(b'""', b"")
    if b'"' in nesting:
        nesting = b"".join(nesting.split(b'"')[::2])
    # Each pass removes the innermost level: shallow JSON is empty after a few.
    for _ in range(_PASSES):
        if b"[]" not in nesting:
            return False  # nothing left, or brackets that do not match: the parser says so
        nesting = nesting.replace(b"[]", b"")
    left = MAX_DEPTH - _PASSES
    if b"[" * (left + 1) in nesting:
        return True
    return max(itertools.accumulate(memoryview(nesting.translate(_STEPS)).cast("b"))) > left


def _nesting_error(what: str) -> str:
    return f"{what} nests arrays and objects over {MAX_DEPTH} levels deep"


def decode(body: bytes, kind: type[Any]) -> Any:
    """Decode ``body`` as ``kind``; an empty body is an empty object.

    msgspec passes a task's data and a result on unread: the body's bytes are checked to be
    UTF-8 here, and the callers check how deep those values nest (:func:`too_deep`)."""
    if not body.isascii():  # the common case costs one scan; only other text is decoded
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                f"the request body is not valid UTF-8 (byte {exc.start})"
            ) from None
    decoder = _decoders.get(kind)
    if decoder is None:
        # Lax, as pydantic is: 932.0 and "932" are the number 932 (JSON has one number type).
        decoder = _decoders[kind] = msgspec.json.Decoder(kind, strict=False)
    try:
        return decoder.decode(body or b"{}")
    except msgspec.ValidationError as exc:
        message = str(exc)
        if "`$" not in message:
            raise ValidationError(f"the request body must be a JSON object ({message})") from None
        field = message.rpartition("`")[0].rpartition(".")[2]
        hint = _HINTS_OF.get(kind, _HINTS).get(field.split("[")[0])
        suffix = f" ({hint})" if hint else ""
        raise ValidationError(f"invalid request body: {message}{suffix}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # nested far deeper than MAX_DEPTH
        raise InvalidRequest(_nesting_error("the request body")) from None


def parse_poll(body: bytes, max_wait: float) -> tuple[list[Ack], int, float, str | None]:
    """A worker's poll: its acks, how many tasks it takes, how long it waits, who it is."""
    poll: Poll = decode(body, Poll)
    if poll.wait > max_wait:
        raise ValidationError(f"wait must be at most {max_wait:g} seconds")
    acks = poll.tasks
    for i, ack in enumerate(acks):
        if len(ack.result) > SHALLOW and too_deep(ack.result):
            raise InvalidRequest(_nesting_error(f"tasks[{i}].result"), ack=i)
        if len(ack.progress) > SHALLOW and too_deep(ack.progress):
            raise InvalidRequest(_nesting_error(f"tasks[{i}].progress"), ack=i)
    return acks, poll.max, poll.wait, poll.worker


def _new_task(body: NewTaskBody, where: str, max_bytes: int) -> NewTask:
    size = len(body.data)
    if not size:
        raise ValidationError(f"{where}: data is required (any JSON value, null included)")
    attributes = None
    extra = 0
    if body.attributes is not None:
        attributes, extra = _attributes(body.attributes, where)
    if size + extra > max_bytes:
        raise task_too_large(where, size, max_bytes, extra)
    if size > SHALLOW and too_deep(body.data):
        raise InvalidRequest(_nesting_error(f"{where}: data"))
    try:
        priority = parse_priority(body.priority)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc.message}") from None
    delay_ms = round(body.delay * 1000) if body.delay is not None else 0
    run_at = None if body.run_at is None else _run_at(body, where)
    paused = body.status == "paused"
    if (
        body.key is None
        and body.unique_key is None
        and body.timeout is None
        and body.max_attempts is None
        and body.expires_in is None
        and body.unique_for is None
        and body.after is None
        and body.debounce_key is None
        and body.after_failure is None
        and body.trace is None
        and attributes is None
    ):  # most tasks: no option of their own, nothing more to convert
        return NewTask(
            data=body.data, priority=priority, delay_ms=delay_ms, run_at=run_at, paused=paused
        )
    check_after_failure(body.after, body.after_failure, where)
    return NewTask(
        data=body.data,
        priority=priority,
        delay_ms=delay_ms,
        run_at=run_at,
        paused=paused,
        attributes=attributes,
        **task_options(body, where),
        **(parse_after(body.after, where, body.after_failure) if body.after else {}),
    )


def _attributes(given: protocol.TaskAttributes, where: str) -> tuple[msgspec.Raw | None, int]:
    """A task's ``attributes`` checked by SQS's rules (katar.attributes), as the task keeps
    them (None when they hold none), and the bytes they count towards its size."""
    try:
        return check_native(msgspec.to_builtins(given))
    except InvalidAttribute as exc:
        raise ValidationError(f"{where}: attributes: {exc.message}", field="attributes") from None


def _run_at(body: NewTaskBody, where: str) -> int:
    """A task's run_at in ms since the epoch; a time that has passed is kept (it means now)."""
    if body.delay is not None:
        raise ValidationError(f"{where}: give delay or run_at, not both")
    assert body.run_at is not None
    return check_run_at(parse_time(body.run_at, "run_at", where), now_ms(), where)


def parse_time(text: str, name: str, where: str = "") -> int:
    """An ISO 8601 time (UTC when it names no zone) in ms since the epoch; ``name`` and
    ``where`` say which, when it is not one."""
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return round(when.timestamp() * 1000)
    except (ValueError, OverflowError):
        hint = "use an ISO 8601 time, e.g. 2030-01-31T09:00:00Z (UTC when it names no zone)"
        prefix = f"{where}: " if where else ""
        raise ValidationError(f"{prefix}invalid {name} {text[:64]!r}: {hint}") from None


def task_filter(raw: protocol.TaskFilterQuery) -> TaskFilter:
    """The domain's filter from the wire's (a bulk body's, a listing's query)."""
    ids = None
    if raw.ids is not None:
        ids = tuple(parse_task_id(text) or _no_id(text) for text in raw.ids)
    return TaskFilter(
        states=states_of(raw.status),
        ids=ids,
        key=raw.key,
        worker=raw.worker,
        error=raw.error,
        before=None if raw.before is None else parse_time(raw.before, "filter.before"),
        after=None if raw.after is None else parse_time(raw.after, "filter.after"),
    )


def _no_id(text: str) -> int:
    raise ValidationError(f"filter.ids: {text[:40]!r} is not a task id", field="filter.ids")


def parse_bulk(body: bytes) -> tuple[str, TaskFilter, bool]:
    """A bulk action's body: (action, filter, dry_run)."""
    bulk: protocol.Bulk = decode(body, protocol.Bulk)
    return bulk.action, task_filter(bulk.filter), bulk.dry_run


def parse_redrive(body: bytes) -> tuple[str | None, TaskFilter, float | None]:
    """A redrive's body: (to, filter, rate). An empty body moves every waiting task back
    to where it came from, at once."""
    redrive: protocol.RedriveBody = decode(body or b"{}", protocol.RedriveBody)
    if redrive.to is not None:
        check_queue_name(redrive.to)
    return redrive.to, task_filter(redrive.filter), redrive.rate


def parse_listing(query: dict[str, str]) -> TaskFilter:
    """A listing's filter from its query string: status (commas), key, worker, error,
    created_before and created_after (``after`` is the listing's cursor)."""
    error = query.get("error") or None
    if error is not None and len(error) > MAX_ERROR_FILTER:
        raise ValidationError(f"error must be at most {MAX_ERROR_FILTER} characters")
    raw = protocol.TaskFilterQuery(
        status=parse_statuses(query.get("status")),  # type: ignore[arg-type]
        key=query.get("key") or None,
        worker=query.get("worker") or None,
        error=error,
        before=query.get("created_before") or None,
        after=query.get("created_after") or None,
    )
    return task_filter(raw)


def parse_enqueue(body: bytes, max_tasks: int, max_task_bytes: int) -> list[NewTask]:
    """One task ``{"data": ...}`` or many ``{"tasks": [...]}``."""
    parsed: Enqueue = decode(body, Enqueue)
    if parsed.tasks is None:
        return [_new_task(parsed, "task", max_task_bytes)]
    if parsed.data:
        raise ValidationError("send either one task (data, ...) or tasks: [...], not both")
    if not parsed.tasks:
        raise ValidationError("tasks must hold at least one task")
    if len(parsed.tasks) > max_tasks:
        raise ValidationError(f"at most {max_tasks} tasks per request; split the batch")
    return [_new_task(task, f"tasks[{i}]", max_task_bytes) for i, task in enumerate(parsed.tasks)]


def parse_object(body: bytes) -> dict[str, Any]:
    """Any JSON object (an empty body is an empty object)."""
    if too_deep(body):
        raise InvalidRequest(_nesting_error("the request body"))
    parsed: dict[str, Any] = decode(body, dict[str, Any])
    return parsed


def parse_patch(body: bytes, max_task_bytes: int) -> tuple[str, Edit | None]:
    """The status a PATCH asks for, and the edit that goes with "queued" (edit and retry:
    new data, priority or key; None when it carries none). The data is held to
    max_task_bytes, as an enqueue's."""
    patch: Patch = decode(body, Patch)
    if not patch.data and patch.priority is None and patch.key is None:
        return patch.status, None
    size = len(patch.data)
    if size > max_task_bytes:
        raise task_too_large("data", size, max_task_bytes)
    if size > SHALLOW and too_deep(patch.data):
        raise InvalidRequest(_nesting_error("data"))
    priority = None if patch.priority is None else parse_priority(patch.priority)
    return patch.status, Edit(data=patch.data or None, priority=priority, key=patch.key)


def parse_statuses(raw: str | None) -> list[str] | None:
    """``?status=queued,failed`` as a list of statuses."""
    if raw is None or raw == "":
        return None
    statuses = [part.strip() for part in raw.split(",")]
    for status in statuses:
        if status not in STATUSES:
            raise ValidationError(
                f"unknown status {status!r}; use one or more of {', '.join(STATUSES)}, "
                "separated by commas"
            )
    return statuses


def parse_number(raw: str | None, name: str, default: float, low: float, high: float) -> float:
    """A number from the query string, within bounds (absent: ``default``; given empty, as
    ``?limit=``, it is no number)."""
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise ValidationError(f"{name} must be from {_bound(low)} to {_bound(high)}")
    return value


def _bound(value: float) -> str:
    """A bound as a user would write it: 4611686018427387904, not 4.61169e+18."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
