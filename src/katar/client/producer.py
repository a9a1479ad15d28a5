"""Producers: put tasks on queues, look at them, wait for their outcome.

``Producer`` blocks; ``AsyncProducer`` has the same methods, to be awaited. Both only send
and sleep: what each call sends, checks and reads, and when it tries again, is written once,
without I/O, in katar.client._calls.

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
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar, Unpack

import httpx

from katar.client import _calls as calls
from katar.client._base import Verify, settings
from katar.client._calls import LONGEST_WAIT, RETRIES, Plan, task_options
from katar.protocol import (
    BulkDone,
    EnqueueOptions,
    MoveJobRecord,
    PushSecret,
    PushStatus,
    QueueInfo,
    Redriven,
    ScheduleRecord,
    TaskRecord,
    WorkerSeen,
)

__all__ = ["LONGEST_WAIT", "RETRIES", "AsyncProducer", "Producer", "task_options"]

T = TypeVar("T")


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
        self._http = httpx.Client(**settings(url, token, verify, timeout), transport=transport)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _run(self, plan: Plan[T]) -> T:
        """Carry out a call (katar.client._calls): send its requests, each after its pause,
        and hand it their responses, or the error of one that got no answer."""
        try:
            request = next(plan)
            while True:
                if request.pause:
                    time.sleep(request.pause)
                try:
                    response = self._http.send(request.build(self._http))
                except httpx.TransportError as exc:
                    request = plan.throw(request.failed(exc))
                else:
                    request = plan.send(response)
        except StopIteration as done:
            result: T = done.value
            return result

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
        cancelled if one of them fails or is cancelled. ``debounce_key`` (with ``delay`` or
        ``run_at``): while a task of the queue with that key waits, never delivered, this
        enqueue replaces its data, options and due time: the record is that task's, with
        ``debounced`` true (the latest enqueue wins, where ``unique_key``'s first wins)."""
        plan = calls.enqueue(queue, data, options, run_at, unique_key, after, self.retries)
        return self._run(plan)

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
        status. ``debounce_key`` (needs ``delay`` or ``run_at``): each task replaces the
        task of the queue with that key that waits, never delivered (the last of this call
        wins). ``key``: the tasks' group (a customer, an account), which the queue's
        ``key_concurrency``, ``key_rate`` and ``fair`` count
        by. ``afters``: for each task, the ids of the
        tasks it waits for (or None), where ``"$n"`` names the n-th task of this call
        (0-based, an earlier one): e.g. ``[None, None, ["$0", "$1"]]`` for a fan-in."""
        plan = calls.enqueue_many(queue, items, options, run_at, unique_keys, afters, self.retries)
        return self._run(plan)

    def get(self, queue: str, task_id: str) -> TaskRecord:
        """The task's record."""
        return self._run(calls.get(queue, task_id))

    def retry(
        self,
        queue: str,
        task_id: str,
        *,
        data: Any = calls.UNSET,
        priority: int | str | None = None,
        key: str | None = None,
    ) -> TaskRecord:
        """Run the task again; its record. A failed or cancelled task is retried, a paused
        one resumed, with a fresh set of attempts. With ``data``, ``priority`` or ``key``
        (edit and retry), it runs with those instead, and a queued task takes them too. In
        progress, or done: RequestRejected (409), nothing changes."""
        return self._run(calls.retry(queue, task_id, data, priority, key))

    def cancel(self, queue: str, task_id: str) -> TaskRecord:
        """Cancel the task; its record. A paused or queued task is cancelled at once; one in
        progress is cancelled when its worker next hears from the server (the record shows
        ``cancel_requested`` until then: see :meth:`wait`). A finished one: RequestRejected
        (409), except one already cancelled."""
        return self._run(calls.cancel(queue, task_id))

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
        return self._run(calls.tasks(queue, status, limit, after, key, worker, error))

    def children(
        self, queue: str, task_id: str, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """A page of the task's children: the tasks, of any queue the token may use, that
        named it in their ``after``, by id; pass the last id as ``after`` for the next."""
        return self._run(calls.linked(queue, task_id, "children", limit, after))

    def parents(
        self, queue: str, task_id: str, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """A page of the task's parents: the tasks, of any queue the token may use, that it
        named in its ``after`` and that are still there, by id (see :meth:`children`)."""
        return self._run(calls.linked(queue, task_id, "parents", limit, after))

    def queues(self) -> list[QueueInfo]:
        """Every queue the token may see, with its options and task counts by status."""
        return self._run(calls.queues())

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
        plan = calls.bulk(queue, action, status, ids, key, worker, error, before, after)
        return self._run(plan)

    def redrive(
        self,
        queue: str,
        *,
        to: str | None = None,
        status: str | Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
        key: str | None = None,
        error: str | None = None,
        before: datetime | None = None,
        after: datetime | None = None,
    ) -> Redriven:
        """Move the waiting tasks (queued or failed) of the queue that the filter selects
        to ``to``, or each back to the queue it came from (its ``dead_letter`` record),
        with fresh attempts; at once. How many matched, moved, and had nowhere to go."""
        plan = calls.redrive(queue, to, None, status, ids, key, error, before, after)
        result: Redriven = self._run(plan)
        return result

    def start_redrive(
        self,
        queue: str,
        rate: float,
        *,
        to: str | None = None,
        status: str | Iterable[str] | None = None,
        key: str | None = None,
        error: str | None = None,
    ) -> MoveJobRecord:
        """:meth:`redrive` at ``rate`` tasks a second, in the background on the server:
        the move job, which :meth:`redrive_job` follows and :meth:`cancel_redrive` stops."""
        plan = calls.redrive(queue, to, rate, status, None, key, error, None, None)
        job: MoveJobRecord = self._run(plan)
        return job

    def redrive_job(self, queue: str) -> MoveJobRecord:
        """The queue's last redrive at a rate, as it stands (every server sharing the store
        answers the same)."""
        return self._run(calls.move_job(queue, "GET"))

    def cancel_redrive(self, queue: str) -> MoveJobRecord:
        """Stop the queue's redrive at a rate; what it moved stays moved."""
        return self._run(calls.move_job(queue, "DELETE"))

    def pause(self, queue: str) -> None:
        """Pause the queue: its polls take nothing until :meth:`resume`."""
        self._run(calls.set_paused(queue, True))

    def resume(self, queue: str) -> None:
        """Resume a paused queue."""
        self._run(calls.set_paused(queue, False))

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
        secret: str | None = self._run(calls.set_push(queue, url, timeout_ms, headers))
        return secret

    def remove_push(self, queue: str) -> None:
        """Make a push queue an ordinary one again: workers poll it."""
        self._run(calls.remove_push(queue))

    def push_status(self, queue: str) -> PushStatus:
        """A push queue's endpoint and the server's last pushes to it."""
        return self._run(calls.push_status(queue))

    def push_secret(self, queue: str) -> PushSecret:
        """A push queue's signing secrets (an admin token)."""
        return self._run(calls.push_secret(queue))

    def rotate_push_secret(self, queue: str, grace: float = 86_400.0) -> PushSecret:
        """A new signing secret; the old one signs too for ``grace`` seconds."""
        return self._run(calls.rotate_push_secret(queue, grace))

    def set_notify(
        self, queue: str, url: str, *, events: Sequence[str] | None = None
    ) -> str | None:
        """Give the queue completion webhooks (an admin token): each of ``events`` (done,
        failed, cancelled, dead_lettered; all by default) of its tasks is POSTed to ``url``.
        The signing secret when this call made one (the first time: keep it), else None."""
        secret: str | None = self._run(calls.set_notify(queue, url, events))
        return secret

    def remove_notify(self, queue: str) -> None:
        """Stop the queue's completion webhooks."""
        self._run(calls.remove_notify(queue))

    def notify_secret(self, queue: str) -> PushSecret:
        """The secrets that sign the queue's completion webhooks (an admin token)."""
        return self._run(calls.notify_secret(queue))

    def rotate_notify_secret(self, queue: str, grace: float = 86_400.0) -> PushSecret:
        """A new secret for the completion webhooks; the old one signs too for ``grace`` s."""
        return self._run(calls.rotate_notify_secret(queue, grace))

    def workers(self) -> list[WorkerSeen]:
        """The workers seen in the last hour on the token's queues."""
        return self._run(calls.workers())

    def schedules(self) -> list[ScheduleRecord]:
        """Every schedule the token may see (an admin token), with its next ticks."""
        return self._run(calls.schedules())

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
        plan = calls.schedule(
            name, cron, queue, data, timezone, priority, overlap, catch_up, paused
        )
        return self._run(plan)

    def pause_schedule(self, name: str, paused: bool = True) -> ScheduleRecord:
        """Pause the schedule (its ticks pass without a task), or resume it (``paused``
        False)."""
        return self._run(calls.pause_schedule(name, paused))

    def delete_schedule(self, name: str) -> None:
        """Remove the schedule; the tasks it made stay."""
        self._run(calls.delete_schedule(name))

    def wait(self, queue: str, task_id: str, timeout: float = 60.0) -> TaskRecord:
        """Wait up to ``timeout`` seconds for the task to finish; its record then (finished
        or not: check ``record.finished``)."""
        return self._run(calls.wait(queue, task_id, timeout))


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
        self._http = httpx.AsyncClient(**settings(url, token, verify, timeout), transport=transport)

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _run(self, plan: Plan[T]) -> T:
        """Carry out a call, as :meth:`Producer._run` does, on the event loop."""
        try:
            request = next(plan)
            while True:
                if request.pause:
                    await asyncio.sleep(request.pause)
                try:
                    response = await self._http.send(request.build(self._http))
                except httpx.TransportError as exc:
                    request = plan.throw(request.failed(exc))
                else:
                    request = plan.send(response)
        except StopIteration as done:
            result: T = done.value
            return result

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
        """Put one task on the queue; its record (see :meth:`Producer.enqueue`)."""
        plan = calls.enqueue(queue, data, options, run_at, unique_key, after, self.retries)
        return await self._run(plan)

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
        plan = calls.enqueue_many(queue, items, options, run_at, unique_keys, afters, self.retries)
        return await self._run(plan)

    async def get(self, queue: str, task_id: str) -> TaskRecord:
        """The task's record."""
        return await self._run(calls.get(queue, task_id))

    async def retry(
        self,
        queue: str,
        task_id: str,
        *,
        data: Any = calls.UNSET,
        priority: int | str | None = None,
        key: str | None = None,
    ) -> TaskRecord:
        """Run the task again, edited or not; its record (see :meth:`Producer.retry`)."""
        return await self._run(calls.retry(queue, task_id, data, priority, key))

    async def cancel(self, queue: str, task_id: str) -> TaskRecord:
        """Cancel the task; its record (see :meth:`Producer.cancel`)."""
        return await self._run(calls.cancel(queue, task_id))

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
        return await self._run(calls.tasks(queue, status, limit, after, key, worker, error))

    async def children(
        self, queue: str, task_id: str, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """A page of the task's children (see :meth:`Producer.children`)."""
        return await self._run(calls.linked(queue, task_id, "children", limit, after))

    async def parents(
        self, queue: str, task_id: str, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """A page of the task's parents (see :meth:`Producer.parents`)."""
        return await self._run(calls.linked(queue, task_id, "parents", limit, after))

    async def queues(self) -> list[QueueInfo]:
        """Every queue the token may see, with its options and task counts by status."""
        return await self._run(calls.queues())

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
        plan = calls.bulk(queue, action, status, ids, key, worker, error, before, after)
        return await self._run(plan)

    async def redrive(
        self,
        queue: str,
        *,
        to: str | None = None,
        status: str | Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
        key: str | None = None,
        error: str | None = None,
        before: datetime | None = None,
        after: datetime | None = None,
    ) -> Redriven:
        """Move waiting tasks back where they came from (see :meth:`Producer.redrive`)."""
        plan = calls.redrive(queue, to, None, status, ids, key, error, before, after)
        result: Redriven = await self._run(plan)
        return result

    async def start_redrive(
        self,
        queue: str,
        rate: float,
        *,
        to: str | None = None,
        status: str | Iterable[str] | None = None,
        key: str | None = None,
        error: str | None = None,
    ) -> MoveJobRecord:
        """A redrive at a rate (see :meth:`Producer.start_redrive`)."""
        plan = calls.redrive(queue, to, rate, status, None, key, error, None, None)
        job: MoveJobRecord = await self._run(plan)
        return job

    async def redrive_job(self, queue: str) -> MoveJobRecord:
        """The queue's last redrive at a rate (see :meth:`Producer.redrive_job`)."""
        return await self._run(calls.move_job(queue, "GET"))

    async def cancel_redrive(self, queue: str) -> MoveJobRecord:
        """Stop the queue's redrive at a rate (see :meth:`Producer.cancel_redrive`)."""
        return await self._run(calls.move_job(queue, "DELETE"))

    async def pause(self, queue: str) -> None:
        """Pause the queue: its polls take nothing until :meth:`resume`."""
        await self._run(calls.set_paused(queue, True))

    async def resume(self, queue: str) -> None:
        """Resume a paused queue."""
        await self._run(calls.set_paused(queue, False))

    async def set_push(
        self,
        queue: str,
        url: str,
        *,
        timeout_ms: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> str | None:
        """Make the queue a push queue (see :meth:`Producer.set_push`)."""
        secret: str | None = await self._run(calls.set_push(queue, url, timeout_ms, headers))
        return secret

    async def remove_push(self, queue: str) -> None:
        """Make a push queue an ordinary one again: workers poll it."""
        await self._run(calls.remove_push(queue))

    async def push_status(self, queue: str) -> PushStatus:
        """A push queue's endpoint and the server's last pushes to it."""
        return await self._run(calls.push_status(queue))

    async def push_secret(self, queue: str) -> PushSecret:
        """A push queue's signing secrets (an admin token)."""
        return await self._run(calls.push_secret(queue))

    async def rotate_push_secret(self, queue: str, grace: float = 86_400.0) -> PushSecret:
        """A new signing secret; the old one signs too for ``grace`` seconds."""
        return await self._run(calls.rotate_push_secret(queue, grace))

    async def set_notify(
        self, queue: str, url: str, *, events: Sequence[str] | None = None
    ) -> str | None:
        """Give the queue completion webhooks (see :meth:`Producer.set_notify`)."""
        secret: str | None = await self._run(calls.set_notify(queue, url, events))
        return secret

    async def remove_notify(self, queue: str) -> None:
        """Stop the queue's completion webhooks."""
        await self._run(calls.remove_notify(queue))

    async def notify_secret(self, queue: str) -> PushSecret:
        """The secrets that sign the queue's completion webhooks (an admin token)."""
        return await self._run(calls.notify_secret(queue))

    async def rotate_notify_secret(self, queue: str, grace: float = 86_400.0) -> PushSecret:
        """A new secret for the completion webhooks; the old one signs too for ``grace`` s."""
        return await self._run(calls.rotate_notify_secret(queue, grace))

    async def workers(self) -> list[WorkerSeen]:
        """The workers seen in the last hour on the token's queues."""
        return await self._run(calls.workers())

    async def schedules(self) -> list[ScheduleRecord]:
        """Every schedule the token may see (an admin token), with its next ticks."""
        return await self._run(calls.schedules())

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
        """Create or replace the schedule ``name`` (see :meth:`Producer.schedule`)."""
        plan = calls.schedule(
            name, cron, queue, data, timezone, priority, overlap, catch_up, paused
        )
        return await self._run(plan)

    async def pause_schedule(self, name: str, paused: bool = True) -> ScheduleRecord:
        """Pause the schedule (its ticks pass without a task), or resume it (``paused``
        False)."""
        return await self._run(calls.pause_schedule(name, paused))

    async def delete_schedule(self, name: str) -> None:
        """Remove the schedule; the tasks it made stay."""
        await self._run(calls.delete_schedule(name))

    # ASYNC109: a public API: the wait is the caller's, spread over several long polls.
    async def wait(self, queue: str, task_id: str, timeout: float = 60.0) -> TaskRecord:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the task to finish; its record then (finished
        or not: check ``record.finished``)."""
        return await self._run(calls.wait(queue, task_id, timeout))
