"""Producers: put tasks on queues, look at them, wait for their outcome.

``Producer`` blocks; ``AsyncProducer`` has the same methods, to be awaited.

Every enqueue carries an ``Idempotency-Key`` (a fresh uuid4 per call, or the caller's own)
and is sent again with the same key when it got no answer or a transient error (5xx, 408,
429), up to ``retries`` times with backoff: the server creates its tasks once however many
times the request arrives, so a lost answer never makes duplicates.

    with Producer("http://127.0.0.1:3000") as producer:
        task = producer.enqueue("emails", {"to": "a@example.com"}, priority="high")
        outcome = producer.wait("emails", task.id, timeout=60)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Unpack

import httpx
import msgspec

from katar.client._base import (
    Verify,
    backoff,
    check,
    headers,
    is_transient,
    record,
    records,
    server_url,
    tls,
    transport_error,
)
from katar.errors import KatarError, ValidationError
from katar.protocol import (
    IDEMPOTENCY_KEY_HEADER,
    BulkDone,
    EnqueueOptions,
    PushSecret,
    PushStatus,
    QueueInfo,
    Queues,
    ScheduleRecord,
    Schedules,
    TaskOptions,
    TaskRecord,
    Workers,
    WorkerSeen,
    check_enqueue_options,
)

#: The server's longest outcome wait per request (its max_wait, 60 s by default).
LONGEST_WAIT = 60.0
#: Times an enqueue is sent again after a transient failure, by default.
RETRIES = 5
#: The longest pause between two tries of an enqueue, in seconds.
_RETRY_CAP = 5.0


def _key(idempotency_key: str | None) -> dict[str, str]:
    """The headers of one logical enqueue: its key, the same on every retry."""
    return {IDEMPOTENCY_KEY_HEADER: idempotency_key or str(uuid.uuid4())}


def _retry_in(exc: KatarError, attempt: int, retries: int) -> float | None:
    """Seconds to wait before sending an enqueue again after ``exc``, or None to give up."""
    if attempt > retries or not is_transient(exc):
        return None
    return backoff(attempt, cap=_RETRY_CAP)


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
    unique_key: str | None = None,
) -> Any:
    body: dict[str, Any] = {"data": data}
    if options:
        body.update(options)
    if unique_key is not None:
        body["unique_key"] = unique_key
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


def _linked(
    queue: str, task_id: str, kind: str, limit: int, after: str | None
) -> tuple[str, None, Any]:
    """The path, no body, and the query of a page of a task's children or parents."""
    return f"/v1/queue/{queue}/tasks/{task_id}/{kind}", None, _list_params(None, limit, after)


def _bulk_body(
    action: str,
    status: str | Iterable[str] | None,
    ids: Iterable[str] | None,
    key: str | None,
    worker: str | None,
    error: str | None,
    before: datetime | None,
    after: datetime | None,
) -> Any:
    """A bulk action's body: the action, and the filter of the conditions given."""
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
    return {"action": action, "filter": selected}


_queue_list: Final = msgspec.json.Decoder(Queues)
_bulk_done: Final = msgspec.json.Decoder(BulkDone)
_workers: Final = msgspec.json.Decoder(Workers)
_push_status: Final = msgspec.json.Decoder(PushStatus)
_push_secret: Final = msgspec.json.Decoder(PushSecret)
_schedules: Final = msgspec.json.Decoder(Schedules)
_schedule: Final = msgspec.json.Decoder(ScheduleRecord)


def _schedule_body(
    cron: str,
    queue: str,
    data: Any,
    timezone: str,
    priority: int,
    overlap: str,
    catch_up: bool,
    paused: bool,
) -> dict[str, Any]:
    return {
        "cron": cron,
        "queue": queue,
        "data": data,
        "timezone": timezone,
        "priority": priority,
        "overlap": overlap,
        "catch_up": catch_up,
        "paused": paused,
    }


def _push_body(url: str, timeout: int | None, headers: dict[str, str] | None) -> dict[str, Any]:
    push: dict[str, Any] = {"url": url}
    if timeout is not None:
        push["timeout"] = timeout
    if headers:
        push["headers"] = headers
    return {"push": push}


def _new_secret(answer: bytes) -> str | None:
    """The secret a queue's answer shows: only when the request made one."""
    push = msgspec.json.decode(answer).get("options", {}).get("push") or {}
    secret = push.get("secret")
    return secret if isinstance(secret, str) else None


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
    if isinstance(unique_keys, str):
        unique_keys = [unique_keys] * len(tasks)
    if unique_keys is not None:
        if len(unique_keys) != len(tasks):
            raise ValidationError("unique_keys needs one key (or None) per task")
        for task, key in zip(tasks, unique_keys, strict=True):
            if key is not None:
                task["unique_key"] = key
    return {"tasks": tasks}


class Producer:
    """A blocking client for the producer routes. ``transport`` is for tests (httpx)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        verify: Verify = True,
        timeout: float = 30.0,
        retries: int = RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        #: Times an enqueue is sent again after no answer or a 5xx, 408 or 429.
        self.retries = retries
        self._http = httpx.Client(
            base_url=server_url(url),
            headers=headers(token),
            verify=tls(verify),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise transport_error(exc, method, path) from exc
        return check(response)

    def _enqueue(self, queue: str, body: Any, idempotency_key: str | None) -> list[TaskRecord]:
        key, attempt = _key(idempotency_key), 0
        while True:
            try:
                return records(self._send("POST", f"/v1/queue/{queue}/tasks", body, None, key))
            except KatarError as exc:
                attempt += 1
                pause = _retry_in(exc, attempt, self.retries)
                if pause is None:
                    raise
            time.sleep(pause)

    def enqueue(
        self,
        queue: str,
        data: Any,
        *,
        run_at: datetime | None = None,
        unique_key: str | None = None,
        after: Sequence[str] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> TaskRecord:
        """Put one task on the queue; its record. ``delay`` (seconds) or ``run_at`` (an
        aware datetime) hold it back until then; see :meth:`enqueue_many` for
        ``idempotency_key`` and the task's own options. While another task of the queue
        holds ``unique_key``, nothing is created: the record is that task's, with
        ``duplicate`` true. ``after``: ids of tasks (of any queue) this one waits for: it is
        delivered once they are all done, with their results (``Job.after``), and
        cancelled if one of them fails or is cancelled."""
        (task,) = self.enqueue_many(
            queue,
            [data],
            run_at=run_at,
            unique_keys=None if unique_key is None else [unique_key],
            afters=None if after is None else [after],
            **options,
        )
        return task

    def enqueue_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        run_at: datetime | None = None,
        unique_keys: Sequence[str | None] | str | None = None,
        afters: Sequence[Sequence[str] | None] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> list[TaskRecord]:
        """Put many tasks on the queue in one request (one transaction); their records.
        ``delay`` (seconds) or ``run_at`` (an aware datetime) hold them back until then.

        Sent again after a transient failure, under one ``Idempotency-Key``: a fresh one
        per call, or ``idempotency_key`` (1 to 255 printable ASCII characters) to make a
        later call with the same key and tasks, within 24 hours, create nothing again.

        Each task's own options: ``timeout`` (its lease in ms, instead of the queue's),
        ``max_attempts`` (instead of the queue's; 0: no limit), ``expires_in`` (seconds: a
        task not delivered by then is cancelled). ``unique_keys``: one key (or None) per
        task, or one key for all (then the first is created, the others are its
        duplicates); ``unique_for`` (seconds) holds each key that long whatever the task's
        status. ``key``: the tasks' group (a customer, an account), which the queue's
        ``key_concurrency`` and ``fair`` count by. ``afters``: for each task, the ids of the
        tasks it waits for (or None), where ``"$n"`` names the n-th task of this call
        (0-based, an earlier one): e.g. ``[None, None, ["$0", "$1"]]`` for a fan-in."""
        body = _many_body(items, options, run_at, unique_keys, afters)
        return self._enqueue(queue, body, options.get("idempotency_key"))

    def get(self, queue: str, task_id: str) -> TaskRecord:
        """The task's record."""
        return record(self._send("GET", f"/v1/queue/{queue}/tasks/{task_id}"))

    def cancel(self, queue: str, task_id: str) -> TaskRecord:
        """Cancel the task; its record. A paused or queued task is cancelled at once; one in
        progress is cancelled when its worker next hears from the server (the record shows
        ``cancel_requested`` until then: see :meth:`wait`). A finished one: RequestRejected
        (409), except one already cancelled."""
        path = f"/v1/queue/{queue}/tasks/{task_id}"
        return record(self._send("PATCH", path, {"status": "cancelled"}))

    def tasks(
        self,
        queue: str,
        status: str | Iterable[str] | None = None,
        limit: int = 100,
        after: str | None = None,
        *,
        key: str | None = None,
        worker: str | None = None,
        error: str | None = None,
    ) -> list[TaskRecord]:
        """A page of the queue's tasks by id; pass the last id as ``after`` for the next.
        ``key``, ``worker`` and ``error`` (a substring of the task's error) filter it."""
        params = _list_params(status, limit, after, key, worker, error)
        return records(self._send("GET", f"/v1/queue/{queue}/tasks", params=params))

    def children(
        self, queue: str, task_id: str, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """A page of the task's children: the tasks, of any queue the token may use, that
        named it in their ``after``, by id; pass the last id as ``after`` for the next."""
        return records(self._send("GET", *_linked(queue, task_id, "children", limit, after)))

    def parents(
        self, queue: str, task_id: str, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """A page of the task's parents: the tasks, of any queue the token may use, that it
        named in its ``after`` and that are still there, by id (see :meth:`children`)."""
        return records(self._send("GET", *_linked(queue, task_id, "parents", limit, after)))

    def queues(self) -> list[QueueInfo]:
        """Every queue the token may see, with its options and task counts by status."""
        return _queue_list.decode(self._send("GET", "/v1/queues").content).queues

    def bulk(
        self,
        queue: str,
        action: str,
        *,
        status: str | Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
        key: str | None = None,
        worker: str | None = None,
        error: str | None = None,
        before: datetime | None = None,
        after: datetime | None = None,
    ) -> BulkDone:
        """Apply ``action`` ("retry", "cancel" or "delete") to every task of the queue that
        the filter selects (every condition given must hold; ``before`` and ``after`` bound
        the task's creation). How many matched, and how many it changed."""
        body = _bulk_body(action, status, ids, key, worker, error, before, after)
        return _bulk_done.decode(self._send("POST", f"/v1/queue/{queue}/tasks/bulk", body).content)

    def pause(self, queue: str) -> None:
        """Pause the queue: its polls take nothing until :meth:`resume`."""
        self._send("PATCH", f"/v1/queue/{queue}", {"paused": True})

    def resume(self, queue: str) -> None:
        """Resume a paused queue."""
        self._send("PATCH", f"/v1/queue/{queue}", {"paused": False})

    def set_push(
        self,
        queue: str,
        url: str,
        *,
        timeout_ms: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> str | None:
        """Make the queue a push queue (an admin token): the server POSTs its tasks to
        ``url``, waiting ``timeout_ms`` for each answer, with ``headers``. The signing secret
        when this call made one (the first time: keep it), else None."""
        answer = self._send("PATCH", f"/v1/queue/{queue}", _push_body(url, timeout_ms, headers))
        return _new_secret(answer.content)

    def remove_push(self, queue: str) -> None:
        """Make a push queue an ordinary one again: workers poll it."""
        self._send("PATCH", f"/v1/queue/{queue}", {"push": None})

    def push_status(self, queue: str) -> PushStatus:
        """A push queue's endpoint and the server's last pushes to it."""
        return _push_status.decode(self._send("GET", f"/v1/queue/{queue}/push").content)

    def push_secret(self, queue: str) -> PushSecret:
        """A push queue's signing secrets (an admin token)."""
        return _push_secret.decode(self._send("GET", f"/v1/queue/{queue}/push/secret").content)

    def rotate_push_secret(self, queue: str, grace: float = 86_400.0) -> PushSecret:
        """A new signing secret; the old one signs too for ``grace`` seconds."""
        answer = self._send("POST", f"/v1/queue/{queue}/push/rotate", {"grace": grace})
        return _push_secret.decode(answer.content)

    def workers(self) -> list[WorkerSeen]:
        """The workers seen in the last hour on the token's queues."""
        return _workers.decode(self._send("GET", "/v1/workers").content).workers

    def schedules(self) -> list[ScheduleRecord]:
        """Every schedule the token may see (an admin token), with its next ticks."""
        return _schedules.decode(self._send("GET", "/v1/schedules").content).schedules

    def schedule(
        self,
        name: str,
        cron: str,
        queue: str,
        data: Any = None,
        *,
        timezone: str = "UTC",
        priority: int = 0,
        overlap: str = "allow",
        catch_up: bool = False,
        paused: bool = False,
    ) -> ScheduleRecord:
        """Create or replace the schedule ``name``: a task on ``queue`` with ``data`` at
        each tick of the five-field ``cron`` in ``timezone`` (docs/schedules.md)."""
        body = _schedule_body(cron, queue, data, timezone, priority, overlap, catch_up, paused)
        return _schedule.decode(self._send("PUT", f"/v1/schedules/{name}", body).content)

    def pause_schedule(self, name: str, paused: bool = True) -> ScheduleRecord:
        """Pause the schedule (its ticks pass without a task), or resume it (``paused``
        False)."""
        answer = self._send("PATCH", f"/v1/schedules/{name}", {"paused": paused})
        return _schedule.decode(answer.content)

    def delete_schedule(self, name: str) -> None:
        """Remove the schedule; the tasks it made stay."""
        self._send("DELETE", f"/v1/schedules/{name}")

    def wait(self, queue: str, task_id: str, timeout: float = 60.0) -> TaskRecord:
        """Wait up to ``timeout`` seconds for the task to finish; its record then (finished
        or not: check ``record.finished``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, min(deadline - time.monotonic(), LONGEST_WAIT))
            path = f"/v1/queue/{queue}/tasks/{task_id}"
            try:
                response = self._http.get(path, params={"wait": left}, timeout=left + 30)
            except httpx.TransportError as exc:
                raise transport_error(exc, "GET", path) from exc
            task = record(check(response))
            if task.finished or time.monotonic() >= deadline:
                return task


class AsyncProducer:
    """The same as :class:`Producer`, for asyncio."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        verify: Verify = True,
        timeout: float = 30.0,
        retries: int = RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        #: Times an enqueue is sent again after no answer or a 5xx, 408 or 429.
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=server_url(url),
            headers=headers(token),
            verify=tls(verify),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method, path, json=json, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            raise transport_error(exc, method, path) from exc
        return check(response)

    async def _enqueue(
        self, queue: str, body: Any, idempotency_key: str | None
    ) -> list[TaskRecord]:
        key, attempt = _key(idempotency_key), 0
        while True:
            try:
                answer = await self._send("POST", f"/v1/queue/{queue}/tasks", body, None, key)
                return records(answer)
            except KatarError as exc:
                attempt += 1
                pause = _retry_in(exc, attempt, self.retries)
                if pause is None:
                    raise
            await asyncio.sleep(pause)

    async def enqueue(
        self,
        queue: str,
        data: Any,
        *,
        run_at: datetime | None = None,
        unique_key: str | None = None,
        after: Sequence[str] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> TaskRecord:
        """Put one task on the queue; its record. ``delay`` (seconds) or ``run_at`` (an
        aware datetime) hold it back until then; see :meth:`enqueue_many` for
        ``idempotency_key`` and the task's own options. While another task of the queue
        holds ``unique_key``, nothing is created: the record is that task's, with
        ``duplicate`` true. ``after``: ids of tasks (of any queue) this one waits for: it is
        delivered once they are all done, with their results (``Job.after``), and
        cancelled if one of them fails or is cancelled."""
        tasks = await self.enqueue_many(
            queue,
            [data],
            run_at=run_at,
            unique_keys=None if unique_key is None else [unique_key],
            afters=None if after is None else [after],
            **options,
        )
        return tasks[0]

    async def enqueue_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        run_at: datetime | None = None,
        unique_keys: Sequence[str | None] | str | None = None,
        afters: Sequence[Sequence[str] | None] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> list[TaskRecord]:
        """Put many tasks on the queue in one request (one transaction); their records
        (see Producer.enqueue_many)."""
        body = _many_body(items, options, run_at, unique_keys, afters)
        return await self._enqueue(queue, body, options.get("idempotency_key"))

    async def get(self, queue: str, task_id: str) -> TaskRecord:
        """The task's record."""
        return record(await self._send("GET", f"/v1/queue/{queue}/tasks/{task_id}"))

    async def cancel(self, queue: str, task_id: str) -> TaskRecord:
        """Cancel the task; its record (see :meth:`Producer.cancel`)."""
        path = f"/v1/queue/{queue}/tasks/{task_id}"
        return record(await self._send("PATCH", path, {"status": "cancelled"}))

    async def tasks(
        self,
        queue: str,
        status: str | Iterable[str] | None = None,
        limit: int = 100,
        after: str | None = None,
        *,
        key: str | None = None,
        worker: str | None = None,
        error: str | None = None,
    ) -> list[TaskRecord]:
        """A page of the queue's tasks by id (see :meth:`Producer.tasks`)."""
        params = _list_params(status, limit, after, key, worker, error)
        return records(await self._send("GET", f"/v1/queue/{queue}/tasks", params=params))

    async def children(
        self, queue: str, task_id: str, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """A page of the task's children (see :meth:`Producer.children`)."""
        page = _linked(queue, task_id, "children", limit, after)
        return records(await self._send("GET", *page))

    async def parents(
        self, queue: str, task_id: str, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """A page of the task's parents (see :meth:`Producer.parents`)."""
        page = _linked(queue, task_id, "parents", limit, after)
        return records(await self._send("GET", *page))

    async def queues(self) -> list[QueueInfo]:
        """Every queue the token may see, with its options and task counts by status."""
        return _queue_list.decode((await self._send("GET", "/v1/queues")).content).queues

    async def bulk(
        self,
        queue: str,
        action: str,
        *,
        status: str | Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
        key: str | None = None,
        worker: str | None = None,
        error: str | None = None,
        before: datetime | None = None,
        after: datetime | None = None,
    ) -> BulkDone:
        """Apply ``action`` to every task the filter selects (see :meth:`Producer.bulk`)."""
        body = _bulk_body(action, status, ids, key, worker, error, before, after)
        answer = await self._send("POST", f"/v1/queue/{queue}/tasks/bulk", body)
        return _bulk_done.decode(answer.content)

    async def pause(self, queue: str) -> None:
        """Pause the queue: its polls take nothing until :meth:`resume`."""
        await self._send("PATCH", f"/v1/queue/{queue}", {"paused": True})

    async def resume(self, queue: str) -> None:
        """Resume a paused queue."""
        await self._send("PATCH", f"/v1/queue/{queue}", {"paused": False})

    async def set_push(
        self,
        queue: str,
        url: str,
        *,
        timeout_ms: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> str | None:
        """Make the queue a push queue (see :meth:`Producer.set_push`)."""
        body = _push_body(url, timeout_ms, headers)
        return _new_secret((await self._send("PATCH", f"/v1/queue/{queue}", body)).content)

    async def remove_push(self, queue: str) -> None:
        """Make a push queue an ordinary one again: workers poll it."""
        await self._send("PATCH", f"/v1/queue/{queue}", {"push": None})

    async def push_status(self, queue: str) -> PushStatus:
        """A push queue's endpoint and the server's last pushes to it."""
        answer = await self._send("GET", f"/v1/queue/{queue}/push")
        return _push_status.decode(answer.content)

    async def push_secret(self, queue: str) -> PushSecret:
        """A push queue's signing secrets (an admin token)."""
        answer = await self._send("GET", f"/v1/queue/{queue}/push/secret")
        return _push_secret.decode(answer.content)

    async def rotate_push_secret(self, queue: str, grace: float = 86_400.0) -> PushSecret:
        """A new signing secret; the old one signs too for ``grace`` seconds."""
        answer = await self._send("POST", f"/v1/queue/{queue}/push/rotate", {"grace": grace})
        return _push_secret.decode(answer.content)

    async def workers(self) -> list[WorkerSeen]:
        """The workers seen in the last hour on the token's queues."""
        return _workers.decode((await self._send("GET", "/v1/workers")).content).workers

    async def schedules(self) -> list[ScheduleRecord]:
        """Every schedule the token may see (an admin token), with its next ticks."""
        return _schedules.decode((await self._send("GET", "/v1/schedules")).content).schedules

    async def schedule(
        self,
        name: str,
        cron: str,
        queue: str,
        data: Any = None,
        *,
        timezone: str = "UTC",
        priority: int = 0,
        overlap: str = "allow",
        catch_up: bool = False,
        paused: bool = False,
    ) -> ScheduleRecord:
        """Create or replace the schedule ``name``: a task on ``queue`` with ``data`` at
        each tick of the five-field ``cron`` in ``timezone`` (docs/schedules.md)."""
        body = _schedule_body(cron, queue, data, timezone, priority, overlap, catch_up, paused)
        return _schedule.decode((await self._send("PUT", f"/v1/schedules/{name}", body)).content)

    async def pause_schedule(self, name: str, paused: bool = True) -> ScheduleRecord:
        """Pause the schedule (its ticks pass without a task), or resume it (``paused``
        False)."""
        answer = await self._send("PATCH", f"/v1/schedules/{name}", {"paused": paused})
        return _schedule.decode(answer.content)

    async def delete_schedule(self, name: str) -> None:
        """Remove the schedule; the tasks it made stay."""
        await self._send("DELETE", f"/v1/schedules/{name}")

    # ASYNC109: a public API: the wait is the caller's, spread over several long polls.
    async def wait(self, queue: str, task_id: str, timeout: float = 60.0) -> TaskRecord:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the task to finish; its record then (finished
        or not: check ``record.finished``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, min(deadline - time.monotonic(), LONGEST_WAIT))
            path = f"/v1/queue/{queue}/tasks/{task_id}"
            try:
                response = await self._http.get(path, params={"wait": left}, timeout=left + 30)
            except httpx.TransportError as exc:
                raise transport_error(exc, "GET", path) from exc
            task = record(check(response))
            if task.finished or time.monotonic() >= deadline:
                return task
