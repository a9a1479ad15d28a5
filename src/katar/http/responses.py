"""Responses, and the one table that maps Katar's errors to HTTP statuses."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, cast

import msgspec

from katar import errors
from katar.core import rules
from katar.core.model import PUBLIC_STATUS, DeadLetter, QueueOptions, Task
from katar.core.schedule import Schedule, upcoming
from katar.protocol import LEASE_HEADER as LEASE_HEADER_NAME
from katar.protocol import (
    DeadLetterRecord,
    DeliveryRecord,
    MessageAttributes,
    ScheduleRecord,
    TaskRecord,
    TraceContext,
    WorkerConfiguration,
)

#: Every answer of the API carries these: answers hold tasks and tokens' rights, so no cache
#: (a browser's, a proxy's) keeps them; and a browser takes them for what their
#: Content-Type says, never for a page or a script.
API_HEADERS: Final = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
JSON_HEADERS: Final = [(b"content-type", b"application/json"), *API_HEADERS]
LEASE_HEADER: Final = LEASE_HEADER_NAME.encode()

# Looked up along the exception's class hierarchy, most specific first.
STATUS_OF_ERROR: Final[dict[type[errors.KatarError], int]] = {
    errors.PayloadTooLarge: 413,
    errors.HeadTooLarge: 431,
    errors.ValidationError: 422,
    errors.InvalidRequest: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.RequestTimeout: 408,
    errors.TooManyRequests: 429,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.ShuttingDown: 503,
    # Not 503, which says that nothing was done: like a gateway whose upstream did not
    # answer, Katar cannot tell whether the store committed.
    errors.OutcomeUnknown: 504,
    errors.StoreUnavailable: 503,
    errors.StoreError: 500,
    errors.ConfigError: 422,
    errors.KatarError: 500,
}

# Headers an error's answer carries beside its JSON body (RFC 6750 for the bearer challenge).
HEADERS_OF_ERROR: Final[dict[type[errors.KatarError], list[tuple[bytes, bytes]]]] = {
    errors.Unauthenticated: [*JSON_HEADERS, (b"www-authenticate", b'Bearer realm="katar"')],
    errors.TooManyRequests: [*JSON_HEADERS, (b"retry-after", b"1")],
    errors.RequestTimeout: [*JSON_HEADERS, (b"connection", b"close")],
}

_encoder: Final = msgspec.json.Encoder()
encode: Final = _encoder.encode


class Response:
    """A complete HTTP response: status, headers and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else (JSON_HEADERS if body else API_HEADERS)


NO_CONTENT: Final = Response(204)


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON response."""
    return Response(status, encode(payload))


def error_status(exc: errors.KatarError) -> int:
    """The HTTP status for a Katar error."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF_ERROR:
            return STATUS_OF_ERROR[cls]
    return 500


def error_response(exc: errors.KatarError) -> Response:
    """The JSON error response for a Katar error: ``{"error": message, ...details}``."""
    body = encode({"error": exc.message, **exc.details})
    return Response(error_status(exc), body, HEADERS_OF_ERROR.get(type(exc)))


def iso(ms: int | None) -> str | None:
    """A stored time (ms since the epoch) as ISO 8601 in UTC."""
    return None if ms is None else _iso(ms)


@functools.lru_cache(maxsize=4096)
def _iso(ms: int) -> str:
    # Cached: the tasks of one enqueue, or of one page, share their times.
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class QueueCreated(msgspec.Struct, frozen=True):
    """A queue created or changed: its options, and the configuration workers get."""

    name: str
    options: QueueOptions
    configuration: WorkerConfiguration


def schedule_record(schedule: Schedule, now: int) -> ScheduleRecord:
    """The public JSON record of a schedule, its next ticks counted from ``now``."""
    spec = schedule.spec
    ticks = upcoming(schedule, now)
    return ScheduleRecord(
        schedule.name,
        spec.cron,
        spec.timezone,
        spec.queue,
        spec.data,
        int(spec.priority),
        spec.overlap,
        spec.catch_up,
        spec.paused,
        [_iso(tick) for tick in ticks],
        iso(schedule.last_tick),
        None if schedule.last_task is None else str(schedule.last_task),
        schedule.error,
    )


def task_record(task: Task, omitted: list[str] | None = None) -> TaskRecord:
    """The public JSON record of a task; ``omitted``: the parents whose results its
    ``after`` leaves out (see fit_results)."""
    # Positional, in TaskRecord's field order: a struct built from keywords costs twice as
    # much, and an enqueue's answer builds one record per task.
    return TaskRecord(
        str(task.id),
        task.queue,
        PUBLIC_STATUS[task.state],
        task.priority,
        task.data,
        task.attempts,
        task.error,
        task.result,
        task.worker,
        _iso(task.created_at),
        _iso(task.updated_at),
        None if task.run_at is None else _iso(task.run_at),
        None if task.lease_until is None else _iso(task.lease_until),
        task.key,
        task.progress,
        task.cancel_requested,
        task.timeout,
        task.max_attempts,
        None if task.expires_at is None else _iso(task.expires_at),
        task.unique_key,
        None if task.unique_until is None else _iso(task.unique_until),
        task.schedule,
        None if task.scheduled_for is None else _iso(task.scheduled_for),
        task.duplicate,
        _history(task) if task.started_at is not None or task.history is not None else [],
        [str(parent_id) for parent_id in task.waiting_for] if task.waiting_for else [],
        task.after,
        omitted or [],
        None if task.dead_letter is None else _dead_letter(task.dead_letter),
        task.debounce_key,
        task.debounced,
        # The stored JSON object, spliced in as it is (a TraceContext encoded).
        cast("TraceContext | None", task.trace),
        # The stored JSON object (a MessageAttributes encoded), spliced in too.
        cast("MessageAttributes | None", task.attributes),
    )


def _dead_letter(record: DeadLetter) -> DeadLetterRecord:
    return DeadLetterRecord(record.queue, record.error, record.attempts, _iso(record.at))


def task_records(tasks: Sequence[Task], max_bytes: int) -> list[bytes]:
    """The tasks' records, encoded, for one answer: with the commas between them they take
    at most ``max_bytes``, their parents' results cut as fit_results says."""
    return fit_results(tasks, max_bytes, lambda task, omitted: encode(task_record(task, omitted)))


def record_body(task: Task, max_bytes: int) -> bytes:
    """An answer that is a task's record: at most ``max_bytes`` (see fit_results)."""
    return task_records([task], max_bytes)[0]


#: A task's ``after`` as the stores build it (rules.after_json): results by parent id.
_results_decoder: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])


def fit_results(
    tasks: Sequence[Task], max_bytes: int, encoded: Callable[[Task, list[str]], bytes]
) -> list[bytes]:
    """Each task encoded (a record or a delivery) by ``encoded(task, omitted)``, so that
    together, with a comma between each, they take at most ``max_bytes``.

    Only the parents' results (``after``, fan-in) give way: a task that waited for many
    others may carry more than any answer may hold (40 results of 4 MB). Then the results
    go in task after task, and by parent id within a task, while they fit; the rest are left
    out, their parents' ids in the task's ``after_omitted``, where a worker or a reader
    finds which to fetch from the parents' own records. The rest of the answer is bounded
    by the requests that made the tasks (max_task_bytes, max_poll)."""
    parts = [encoded(task, []) for task in tasks]
    if sum(map(len, parts)) + len(parts) - 1 <= max_bytes:
        return parts  # the common case: a length check
    # Every result left out, then put back, first come first served, while they fit. A
    # task's part only shrinks as its results go back in less its ids in after_omitted.
    bare = [_cut_results(task, 0) for task in tasks]
    parts = [encoded(task, omitted) for task, omitted in bare]
    room = max_bytes - (sum(map(len, parts)) + len(parts) - 1)
    for index, task in enumerate(tasks):
        if task.after is None or not bare[index][1] or room <= 0:
            continue
        cut, omitted = _cut_results(task, room)
        part = encoded(cut, omitted)
        room -= len(part) - len(parts[index])
        parts[index] = part
    return parts


def _cut_results(task: Task, room: int) -> tuple[Task, list[str]]:
    """The task with the results of its ``after`` that fit in ``room`` more bytes than an
    empty object, by parent id; and the ids of the parents whose results are left out."""
    if task.after is None:
        return task, []
    results = sorted(_results_decoder.decode(task.after).items(), key=lambda kv: int(kv[0]))
    kept: list[bytes] = []
    size = 0
    for index, (parent, result) in enumerate(results):
        part = b'"%b":%b' % (parent.encode(), bytes(result))
        size += len(part) + (1 if kept else 0)
        if size > room:
            after = msgspec.Raw(b"{" + b",".join(kept) + b"}")
            omitted = [parent for parent, _result in results[index:]]
            return msgspec.structs.replace(task, after=after), omitted
        kept.append(part)
    return task, []


def _history(task: Task) -> list[DeliveryRecord]:
    return [
        DeliveryRecord(
            d.attempt,
            d.worker,
            _iso(d.started_at or 0),
            None if d.ended_at is None else _iso(d.ended_at),
            d.outcome,  # type: ignore[arg-type]  # rules.archive writes only the four
            d.error,
        )
        for d in rules.deliveries(task)
    ]


def iso_time(ms: int) -> str:
    """A time in ms since the epoch as the records write it (ISO 8601, UTC, in ms)."""
    return _iso(ms)


#: A katar.protocol.DeliveredTask, as a template: the fastest way to build one (the hot path).
_DELIVERY: Final = b'{"_id":"%d","data":%b,"attempt":%d}'
#: The same for a task with a lease of its own (its timeout).
_DELIVERY_TIMEOUT: Final = b'{"_id":"%d","data":%b,"attempt":%d,"timeout":%d}'


def _delivery(task: Task, omitted: list[str] | None = None) -> bytes:
    if (
        task.after is not None
        or task.schedule is not None
        or task.trace is not None
        or task.attributes is not None
    ):
        return _delivery_more(task, omitted)
    if task.timeout is None:
        return _DELIVERY % (task.id, task.data, task.attempts)
    return _DELIVERY_TIMEOUT % (task.id, task.data, task.attempts, task.timeout)


def delivery(task: Task) -> bytes:
    """A delivered task's JSON object, exactly as a poll gives it (the push dispatcher
    sends it, with the queue's name)."""
    return _delivery(task)


def _delivery_more(task: Task, omitted: list[str] | None = None) -> bytes:
    """The delivery of a task made by a schedule (its name and tick), that waited for
    others (their results: fan-in, and the parents whose results are left out, see
    fit_results), or that carries a trace context or message attributes (a send over SQS).
    Each field is there only when set."""
    more = b"" if task.timeout is None else b',"timeout":%d' % task.timeout
    if task.schedule is not None:
        more += b',"schedule":%b' % encode(task.schedule)
        if task.scheduled_for is not None:
            more += b',"scheduled_for":"%b"' % _iso(task.scheduled_for).encode()
    if task.after is not None:
        more += b',"after":%b' % task.after
    if omitted:
        more += b',"after_omitted":%b' % encode(omitted)
    if task.trace is not None:
        more += b',"trace":%b' % task.trace
    if task.attributes is not None:
        more += b',"attributes":%b' % task.attributes
    return b'{"_id":"%d","data":%b,"attempt":%d%b}' % (task.id, task.data, task.attempts, more)


def deliveries(tasks: list[Task], max_bytes: int, cancel: list[int] | None = None) -> bytes:
    """The body of a poll that delivers tasks: the data is spliced in as the producer sent it.
    With ``cancel``, the ids of the tasks the worker must stop (katar.protocol.Deliveries).
    At most ``max_bytes``, the tasks' parents' results cut as fit_results says (a poll takes
    no more tasks than fit with their data: Limits.max_poll)."""
    if cancel:
        end = b'],"cancel":[' + b",".join(b'"%d"' % task_id for task_id in cancel) + b"]}"
    else:
        end = b"]}"
    if len(tasks) == 1:  # the seed protocol's poll: no list to build and join
        body = b'{"tasks":[' + _delivery(tasks[0]) + end
    else:
        body = b'{"tasks":[' + b",".join([_delivery(task) for task in tasks]) + end
    if len(body) <= max_bytes:
        return body
    parts = fit_results(tasks, max_bytes - len(end) - 10, _delivery)
    return b'{"tasks":[' + b",".join(parts) + end
