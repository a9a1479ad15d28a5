"""The producer's calls without I/O: what each one sends, and what it makes of the answers.

A call is a plan: a generator that yields each request to send (a :class:`Request`), is sent
the server's response to it (or thrown the TransportError of a request that got no answer),
and returns the call's result. The blocking and the asyncio producer (katar.client.producer)
are two drivers of the same plans: they sleep, send and hand back, and decide nothing. So the
checks of the arguments, the bodies and queries, the retries of an enqueue under one
``Idempotency-Key``, the long polls of an outcome wait and the reading of the answers are
written once, in the sans-I/O style of h11 and of httpx's models.

    plan = get("emails", "17")
    request = next(plan)                  # what to send
    plan.send(response)                   # StopIteration(value=the TaskRecord)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import httpx
import msgspec

from katar.client import _otel
from katar.client._base import backoff, check, is_transient, record, records, transport_error
from katar.errors import KatarError, TransportError, ValidationError
from katar.protocol import (
    IDEMPOTENCY_KEY_HEADER,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    BulkDone,
    EnqueueOptions,
    MoveJobRecord,
    PushSecret,
    PushStatus,
    QueueInfo,
    Queues,
    Redriven,
    ScheduleRecord,
    Schedules,
    TaskOptions,
    TaskRecord,
    Workers,
    WorkerSeen,
    check_enqueue_options,
)

T = TypeVar("T")

#: The server's longest outcome wait per request (its max_wait, 60 s by default).
LONGEST_WAIT = 60.0
#: Times an enqueue is sent again after a transient failure, by default.
RETRIES = 5
#: The longest pause between two tries of an enqueue, in seconds.
_RETRY_CAP = 5.0


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a call, relative to the producer's base URL."""

    method: str
    path: str
    json: Any = None
    params: Any = None
    headers: dict[str, str] | None = None
    #: Seconds the request may take; None for the producer's own timeout.
    timeout: float | None = None
    #: Seconds to sleep before sending it (a retry's backoff).
    pause: float = 0.0

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The request as the producer's client sends it (its base URL and headers added)."""
        timeout = httpx.USE_CLIENT_DEFAULT if self.timeout is None else self.timeout
        return http.build_request(
            self.method,
            self.path,
            json=self.json,
            params=self.params,
            headers=self.headers,
            timeout=timeout,
        )

    def failed(self, exc: httpx.TransportError) -> TransportError:
        """The error to throw into the plan for a request that got no answer."""
        error = transport_error(exc, self.method, self.path)
        error.__cause__ = exc
        return error


#: A call: yields requests, is sent their responses, returns the result.
Plan = Generator[Request, httpx.Response, T]


def _sent(request: Request) -> Generator[Request, httpx.Response, httpx.Response]:
    """Send ``request``; its response, or the error its status means (check)."""
    return check((yield request))


def _call(request: Request, read: Callable[[httpx.Response], T]) -> Plan[T]:
    """One request, its answer read by ``read``."""
    return read((yield from _sent(request)))


def _decoder(kind: type[T]) -> Callable[[httpx.Response], T]:
    """A reader of answers that hold a ``kind``."""
    decode = msgspec.json.Decoder(kind).decode
    return lambda response: decode(response.content)


_queue_list: Final = _decoder(Queues)
_bulk_done: Final = _decoder(BulkDone)
_workers: Final = _decoder(Workers)
_schedules: Final = _decoder(Schedules)
_schedule: Final = _decoder(ScheduleRecord)
_redriven: Final = _decoder(Redriven)
_move_job: Final = _decoder(MoveJobRecord)
_push_status: Final = _decoder(PushStatus)
_push_secret: Final = _decoder(PushSecret)


def _nothing(_response: httpx.Response) -> None:
    """The answer of a call that returns nothing."""


# -- enqueue -------------------------------------------------------------------------------


def task_options(options: EnqueueOptions) -> dict[str, Any]:
    """The per-task options of an enqueue's tasks, as the wire has them (the given ones)."""
    given = {name: options.get(name) for name in TaskOptions.__annotations__}
    return {name: value for name, value in given.items() if value is not None}


def _task_body(
    data: Any,
    priority: int | str | None,
    delay: float | None,
    paused: bool,
    run_at: datetime | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"data": data}
    if options:
        body.update(options)
    if priority is not None:
        body["priority"] = priority
    if delay:
        body["delay"] = delay
    if run_at is not None:
        if run_at.tzinfo is None:  # the server would read it as UTC: say which zone instead
            raise ValidationError("run_at needs a time zone, e.g. datetime.now(timezone.utc)")
        body["run_at"] = run_at.astimezone(UTC).isoformat()
    if paused:
        body["status"] = "paused"
    return body


def _many_body(
    items: Iterable[Any],
    options: EnqueueOptions,
    run_at: datetime | None = None,
    unique_keys: Sequence[str | None] | str | None = None,
    afters: Sequence[Sequence[str] | None] | None = None,
) -> Any:
    check_enqueue_options(options, "enqueue_many")
    own = task_options(options)
    priority, delay = options.get("priority"), options.get("delay")
    paused = options.get("paused", False)
    tasks = [_task_body(item, priority, delay, paused, run_at, own) for item in items]
    if not tasks:
        raise ValidationError("enqueue_many needs at least one task")
    if afters is not None:
        if len(afters) != len(tasks):
            raise ValidationError("afters needs one list of task ids (or None) per task")
        for task, after in zip(tasks, afters, strict=True):
            if after is not None:
                task["after"] = list(after)
    after_failure = options.get("after_failure")
    if after_failure is not None:
        waiting = [task for task in tasks if "after" in task]
        if not waiting:
            raise ValidationError("after_failure needs after (the tasks to wait for)")
        for task in waiting:
            task["after_failure"] = after_failure
    if isinstance(unique_keys, str):
        unique_keys = [unique_keys] * len(tasks)
    if unique_keys is not None:
        if len(unique_keys) != len(tasks):
            raise ValidationError("unique_keys needs one key (or None) per task")
        for task, key in zip(tasks, unique_keys, strict=True):
            if key is not None:
                task["unique_key"] = key
    return {"tasks": tasks}


def _retry_in(exc: KatarError, attempt: int, retries: int) -> float | None:
    """Seconds to wait before sending an enqueue again after ``exc``, or None to give up."""
    if attempt > retries or not is_transient(exc):
        return None
    return backoff(attempt, cap=_RETRY_CAP)


def _trace_headers(options: EnqueueOptions) -> dict[str, str]:
    """The enqueue's trace context headers: the ``traceparent`` (and ``tracestate``) given,
    else the current OpenTelemetry context (where it is installed)."""
    traceparent = options.get("traceparent")
    if traceparent is None:
        if options.get("tracestate") is not None:
            raise ValidationError("tracestate needs a traceparent")
        return _otel.context_headers()
    headers = {TRACEPARENT_HEADER: traceparent}
    tracestate = options.get("tracestate")
    if tracestate is not None:
        headers[TRACESTATE_HEADER] = tracestate
    return headers


def enqueue_many(
    queue: str,
    items: Iterable[Any],
    options: EnqueueOptions,
    run_at: datetime | None,
    unique_keys: Sequence[str | None] | str | None,
    afters: Sequence[Sequence[str] | None] | None,
    retries: int,
) -> Plan[list[TaskRecord]]:
    """Put the tasks on the queue in one request, sent again after no answer or a transient
    error, up to ``retries`` times with backoff, under one ``Idempotency-Key`` (the
    caller's, or a fresh one for this call): the server creates the tasks once."""
    body = _many_body(items, options, run_at, unique_keys, afters)
    key = options.get("idempotency_key") or str(uuid.uuid4())
    # The caller's trace context, where OpenTelemetry is installed (katar.client._otel):
    # taken now, when the call starts in the caller's context.
    headers = {IDEMPOTENCY_KEY_HEADER: key, **_trace_headers(options)}
    request = Request("POST", f"/v1/queue/{queue}/tasks", body, headers=headers)
    attempt = 0
    while True:
        try:
            return records((yield from _sent(request)))
        except KatarError as exc:
            attempt += 1
            pause = _retry_in(exc, attempt, retries)
            if pause is None:
                raise
        request = replace(request, pause=pause)


def enqueue(
    queue: str,
    data: Any,
    options: EnqueueOptions,
    run_at: datetime | None,
    unique_key: str | None,
    after: Sequence[str] | None,
    retries: int,
) -> Plan[TaskRecord]:
    """Put one task on the queue, as :func:`enqueue_many` does."""
    unique_keys = None if unique_key is None else [unique_key]
    afters = None if after is None else [after]
    (task,) = yield from enqueue_many(queue, [data], options, run_at, unique_keys, afters, retries)
    return task


# -- tasks ---------------------------------------------------------------------------------


def _list_params(
    status: str | Iterable[str] | None,
    limit: int,
    after: str | None,
    key: str | None = None,
    worker: str | None = None,
    error: str | None = None,
) -> Any:
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status if isinstance(status, str) else ",".join(status)
    for name, value in (("after", after), ("key", key), ("worker", worker), ("error", error)):
        if value is not None:
            params[name] = value
    return params


def get(queue: str, task_id: str) -> Plan[TaskRecord]:
    """The task's record."""
    return _call(Request("GET", f"/v1/queue/{queue}/tasks/{task_id}"), record)


#: ``data`` not given (None is a task's data too: JSON null).
UNSET: Any = object()


def retry(
    queue: str, task_id: str, data: Any, priority: int | str | None, key: str | None
) -> Plan[TaskRecord]:
    """The PATCH of a retry: "queued", and the fields an edit gives."""
    body: dict[str, Any] = {"status": "queued"}
    if data is not UNSET:
        body["data"] = data
    if priority is not None:
        body["priority"] = priority
    if key is not None:
        body["key"] = key
    return _call(Request("PATCH", f"/v1/queue/{queue}/tasks/{task_id}", body), record)


def cancel(queue: str, task_id: str) -> Plan[TaskRecord]:
    """Cancel the task; its record."""
    path = f"/v1/queue/{queue}/tasks/{task_id}"
    return _call(Request("PATCH", path, {"status": "cancelled"}), record)


def tasks(
    queue: str,
    status: str | Iterable[str] | None,
    limit: int,
    after: str | None,
    key: str | None,
    worker: str | None,
    error: str | None,
) -> Plan[list[TaskRecord]]:
    """A page of the queue's tasks by id."""
    params = _list_params(status, limit, after, key, worker, error)
    return _call(Request("GET", f"/v1/queue/{queue}/tasks", params=params), records)


def linked(
    queue: str, task_id: str, kind: str, limit: int, after: str | None
) -> Plan[list[TaskRecord]]:
    """A page of the task's ``kind``: its "children" or its "parents"."""
    path = f"/v1/queue/{queue}/tasks/{task_id}/{kind}"
    return _call(Request("GET", path, params=_list_params(None, limit, after)), records)


def _filter(
    status: str | Iterable[str] | None,
    ids: Iterable[str] | None,
    key: str | None,
    worker: str | None,
    error: str | None,
    before: datetime | None,
    after: datetime | None,
) -> dict[str, Any]:
    """A bulk action's or a redrive's filter: the conditions given."""
    selected: dict[str, Any] = {}
    if status is not None:
        selected["status"] = [status] if isinstance(status, str) else list(status)
    if ids is not None:
        selected["ids"] = list(ids)
    for name, text in (("key", key), ("worker", worker), ("error", error)):
        if text is not None:
            selected[name] = text
    for name, when in (("before", before), ("after", after)):
        if when is not None:
            if when.tzinfo is None:
                raise ValidationError(f"{name} needs a time zone, e.g. datetime.now(UTC)")
            selected[name] = when.astimezone(UTC).isoformat()
    return selected


def bulk(
    queue: str,
    action: str,
    status: str | Iterable[str] | None,
    ids: Iterable[str] | None,
    key: str | None,
    worker: str | None,
    error: str | None,
    before: datetime | None,
    after: datetime | None,
) -> Plan[BulkDone]:
    """Apply ``action`` to every task of the queue that the filter selects: the action, and
    the filter of the conditions given."""
    body = {"action": action, "filter": _filter(status, ids, key, worker, error, before, after)}
    return _call(Request("POST", f"/v1/queue/{queue}/tasks/bulk", body), _bulk_done)


def _redrive_body(to: str | None, rate: float | None, selected: dict[str, Any]) -> Any:
    """A redrive's body: the queue to move to (None: each task's origin), the rate (None:
    at once), and the filter."""
    body: dict[str, Any] = {"filter": selected}
    if to is not None:
        body["to"] = to
    if rate is not None:
        body["rate"] = rate
    return body


def redrive(
    queue: str,
    to: str | None,
    rate: float | None,
    status: str | Iterable[str] | None,
    ids: Iterable[str] | None,
    key: str | None,
    error: str | None,
    before: datetime | None,
    after: datetime | None,
) -> Plan[Any]:
    """Move the waiting tasks that the filter selects: at once (the answer a Redriven), or
    at ``rate`` tasks a second (the answer the move job's MoveJobRecord)."""
    selected = _filter(status, ids, key, None, error, before, after)
    body = _redrive_body(to, rate, selected)
    return _call(
        Request("POST", f"/v1/queue/{queue}/redrive", body),
        _redriven if rate is None else _move_job,
    )


def move_job(queue: str, method: str) -> Plan[MoveJobRecord]:
    """The queue's redrive at a rate (GET), or its cancellation (DELETE)."""
    return _call(Request(method, f"/v1/queue/{queue}/redrive"), _move_job)


def wait(queue: str, task_id: str, timeout: float) -> Plan[TaskRecord]:
    """Wait up to ``timeout`` seconds for the task to finish, in long polls of at most
    LONGEST_WAIT seconds each; its record then, finished or not."""
    deadline = time.monotonic() + timeout
    path = f"/v1/queue/{queue}/tasks/{task_id}"
    while True:
        left = max(0.0, min(deadline - time.monotonic(), LONGEST_WAIT))
        request = Request("GET", path, params={"wait": left}, timeout=left + 30)
        task = record((yield from _sent(request)))
        if task.finished or time.monotonic() >= deadline:
            return task


# -- queues, workers, schedules ------------------------------------------------------------


def queues() -> Plan[list[QueueInfo]]:
    """Every queue the token may see."""
    return _call(Request("GET", "/v1/queues"), lambda answer: _queue_list(answer).queues)


def set_paused(queue: str, paused: bool) -> Plan[None]:
    """Pause or resume the queue."""
    return _call(Request("PATCH", f"/v1/queue/{queue}", {"paused": paused}), _nothing)


def workers() -> Plan[list[WorkerSeen]]:
    """The workers seen in the last hour on the token's queues."""
    return _call(Request("GET", "/v1/workers"), lambda answer: _workers(answer).workers)


def schedules() -> Plan[list[ScheduleRecord]]:
    """Every schedule the token may see."""
    return _call(Request("GET", "/v1/schedules"), lambda answer: _schedules(answer).schedules)


def schedule(
    name: str,
    cron: str,
    queue: str,
    data: Any,
    timezone: str,
    priority: int,
    overlap: str,
    catch_up: bool,
    paused: bool,
) -> Plan[ScheduleRecord]:
    """Create or replace the schedule ``name``."""
    body = {
        "cron": cron,
        "queue": queue,
        "data": data,
        "timezone": timezone,
        "priority": priority,
        "overlap": overlap,
        "catch_up": catch_up,
        "paused": paused,
    }
    return _call(Request("PUT", f"/v1/schedules/{name}", body), _schedule)


def pause_schedule(name: str, paused: bool) -> Plan[ScheduleRecord]:
    """Pause or resume the schedule."""
    return _call(Request("PATCH", f"/v1/schedules/{name}", {"paused": paused}), _schedule)


def delete_schedule(name: str) -> Plan[None]:
    """Remove the schedule."""
    return _call(Request("DELETE", f"/v1/schedules/{name}"), _nothing)


# -- push queues ---------------------------------------------------------------------------


def _new_secret(response: httpx.Response, option: str = "push") -> str | None:
    """The secret a queue's answer shows: only when the request made one."""
    signer = msgspec.json.decode(response.content).get("options", {}).get(option) or {}
    secret = signer.get("secret")
    return secret if isinstance(secret, str) else None


def _new_notify_secret(response: httpx.Response) -> str | None:
    return _new_secret(response, "notify")


def set_push(
    queue: str, url: str, timeout_ms: int | None, headers: dict[str, str] | None
) -> Plan[str | None]:
    """Make the queue a push queue: the signing secret when this call made one."""
    push: dict[str, Any] = {"url": url}
    if timeout_ms is not None:
        push["timeout"] = timeout_ms
    if headers:
        push["headers"] = headers
    return _call(Request("PATCH", f"/v1/queue/{queue}", {"push": push}), _new_secret)


def remove_push(queue: str) -> Plan[None]:
    """Make a push queue an ordinary one again."""
    return _call(Request("PATCH", f"/v1/queue/{queue}", {"push": None}), _nothing)


def push_status(queue: str) -> Plan[PushStatus]:
    """A push queue's endpoint and the answering server's last pushes to it."""
    return _call(Request("GET", f"/v1/queue/{queue}/push"), _push_status)


def push_secret(queue: str) -> Plan[PushSecret]:
    """A push queue's signing secrets."""
    return _call(Request("GET", f"/v1/queue/{queue}/push/secret"), _push_secret)


def rotate_push_secret(queue: str, grace: float) -> Plan[PushSecret]:
    """A new signing secret; the old one signs too for ``grace`` seconds."""
    body = {"grace": grace}
    return _call(Request("POST", f"/v1/queue/{queue}/push/rotate", body), _push_secret)


# -- completion webhooks (notify) ----------------------------------------------------------


def set_notify(queue: str, url: str, events: Sequence[str] | None) -> Plan[str | None]:
    """Give the queue completion webhooks: the signing secret when this call made one."""
    notify: dict[str, Any] = {"url": url}
    if events is not None:
        notify["events"] = list(events)
    return _call(Request("PATCH", f"/v1/queue/{queue}", {"notify": notify}), _new_notify_secret)


def remove_notify(queue: str) -> Plan[None]:
    """Stop the queue's completion webhooks."""
    return _call(Request("PATCH", f"/v1/queue/{queue}", {"notify": None}), _nothing)


def notify_secret(queue: str) -> Plan[PushSecret]:
    """The secrets that sign the queue's completion webhooks."""
    return _call(Request("GET", f"/v1/queue/{queue}/notify/secret"), _push_secret)


def rotate_notify_secret(queue: str, grace: float) -> Plan[PushSecret]:
    """A new secret for the completion webhooks; the old one signs too for ``grace`` s."""
    body = {"grace": grace}
    return _call(Request("POST", f"/v1/queue/{queue}/notify/rotate", body), _push_secret)
