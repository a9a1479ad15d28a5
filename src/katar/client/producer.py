"""Producers: put tasks on queues, look at them, wait for their outcome.

``Producer`` blocks; ``AsyncProducer`` has the same methods, to be awaited.

    with Producer("http://127.0.0.1:3000") as producer:
        task = producer.enqueue("emails", {"to": "a@example.com"}, priority="high")
        outcome = producer.wait("emails", task.id, timeout=60)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import httpx

from katar.client._base import (
    TaskRecord,
    Verify,
    check,
    headers,
    record,
    records,
    tls,
    transport_error,
)
from katar.errors import ValidationError

#: The server's longest outcome wait per request (its max_wait, 60 s by default).
LONGEST_WAIT = 60.0


def _task_body(
    data: Any,
    priority: int | str | None,
    delay: float | None,
    paused: bool,
    run_at: datetime | None = None,
) -> Any:
    body: dict[str, Any] = {"data": data}
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


def _list_params(status: str | Iterable[str] | None, limit: int, after: str | None) -> Any:
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status if isinstance(status, str) else ",".join(status)
    if after is not None:
        params["after"] = after
    return params


def _many_body(
    items: Iterable[Any],
    priority: int | str | None,
    delay: float | None,
    paused: bool,
    run_at: datetime | None = None,
) -> Any:
    tasks = [_task_body(item, priority, delay, paused, run_at) for item in items]
    if not tasks:
        raise ValidationError("enqueue_many needs at least one task")
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=url,
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

    def _send(self, method: str, path: str, json: Any = None, params: Any = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise transport_error(exc, method, path) from exc
        return check(response)

    def enqueue(
        self,
        queue: str,
        data: Any,
        *,
        priority: int | str | None = None,
        delay: float | None = None,
        paused: bool = False,
        run_at: datetime | None = None,
    ) -> TaskRecord:
        """Put one task on the queue; its record. ``delay`` (seconds) or ``run_at`` (an
        aware datetime) hold it back until then."""
        (task,) = self.enqueue_many(
            queue, [data], priority=priority, delay=delay, paused=paused, run_at=run_at
        )
        return task

    def enqueue_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        priority: int | str | None = None,
        delay: float | None = None,
        paused: bool = False,
        run_at: datetime | None = None,
    ) -> list[TaskRecord]:
        """Put many tasks on the queue in one request (one transaction); their records."""
        body = _many_body(items, priority, delay, paused, run_at)
        return records(self._send("POST", f"/v1/queue/{queue}/tasks", body))

    def get(self, queue: str, task_id: str) -> TaskRecord:
        """The task's record."""
        return record(self._send("GET", f"/v1/queue/{queue}/tasks/{task_id}"))

    def tasks(
        self,
        queue: str,
        status: str | Iterable[str] | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[TaskRecord]:
        """A page of the queue's tasks by id; pass the last id as ``after`` for the next."""
        params = _list_params(status, limit, after)
        return records(self._send("GET", f"/v1/queue/{queue}/tasks", params=params))

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url,
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
        self, method: str, path: str, json: Any = None, params: Any = None
    ) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise transport_error(exc, method, path) from exc
        return check(response)

    async def enqueue(
        self,
        queue: str,
        data: Any,
        *,
        priority: int | str | None = None,
        delay: float | None = None,
        paused: bool = False,
        run_at: datetime | None = None,
    ) -> TaskRecord:
        """Put one task on the queue; its record (see Producer.enqueue)."""
        tasks = await self.enqueue_many(
            queue, [data], priority=priority, delay=delay, paused=paused, run_at=run_at
        )
        return tasks[0]

    async def enqueue_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        priority: int | str | None = None,
        delay: float | None = None,
        paused: bool = False,
        run_at: datetime | None = None,
    ) -> list[TaskRecord]:
        """Put many tasks on the queue in one request (one transaction); their records."""
        body = _many_body(items, priority, delay, paused, run_at)
        return records(await self._send("POST", f"/v1/queue/{queue}/tasks", body))

    async def get(self, queue: str, task_id: str) -> TaskRecord:
        """The task's record."""
        return record(await self._send("GET", f"/v1/queue/{queue}/tasks/{task_id}"))

    async def tasks(
        self,
        queue: str,
        status: str | Iterable[str] | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[TaskRecord]:
        """A page of the queue's tasks by id; pass the last id as ``after`` for the next."""
        params = _list_params(status, limit, after)
        return records(await self._send("GET", f"/v1/queue/{queue}/tasks", params=params))

    async def wait(self, queue: str, task_id: str, timeout: float = 60.0) -> TaskRecord:
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
