"""The Python API: ``Katar`` and its queues, as in the original katar.

katar = Katar()                                  # sqlite:///katar.db
queue = katar.queue("emails", persistent=False)
katar.on("emails.done", lambda task: print(task.id))

async with katar:                                # or let WorkerServer.run() open it
    task = await queue.enqueue({"to": "a@example.com"}, priority="high")
    print((await queue.get(task.id)).status)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Unpack

import msgspec
from msgspec.structs import replace

from katar import _context
from katar._defaults import DEFAULT_STORE
from katar.attributes import check_native
from katar.core.clock import Clock
from katar.core.engine import Engine, Listener
from katar.core.model import (
    STATES_OF_STATUS,
    Edit,
    MoveJob,
    NewTask,
    QueueOptions,
    Task,
    TaskFilter,
    check_queue_name,
    check_run_at,
    parse_after,
    parse_priority,
    parse_queue_options,
    parse_task_id,
    parse_task_options,
    states_of,
    trace_context,
)
from katar.core.moves import Redrive
from katar.core.schedule import Schedule, ScheduleSpec, check_name, parse_schedule
from katar.errors import KatarError, TaskNotFound, ValidationError
from katar.protocol import EnqueueOptions, check_enqueue_options
from katar.store import open_store

#: ``data`` not given to a retry (None is a task's data too: JSON null).
_UNSET: Any = object()


def _raw(value: Any) -> msgspec.Raw:
    try:
        return msgspec.Raw(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(f"task data must be JSON-serialisable: {exc}") from exc


class Katar:
    """A queue server's state: a store and its queues.

    ``store`` is a URL: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``memory://``. Declare queues with :meth:`queue` before it opens; :class:`WorkerServer`
    opens it, or use ``async with katar:`` to work with it directly. ``clock`` is where the
    time comes from (the system's by default; tests pass a FakeClock); ``reap_interval`` is
    how long, in seconds, lease expiry waits before trying again after the store failed it.
    """

    def __init__(
        self,
        store: str = DEFAULT_STORE,
        *,
        reap_interval: float = 0.25,
        clock: Clock | None = None,
    ) -> None:
        self.store_url = store
        self.engine = Engine(open_store(store), reap_interval=reap_interval, clock=clock)
        self._declared: dict[str, QueueOptions] = {}
        self._schedules: dict[str, ScheduleSpec] = {}
        self._open = False

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._open

    def queue(self, name: str, **options: Any) -> Queue:
        """Declare a queue with options (see QueueOptions), or get one declared or stored.

        Declared queues are created, or their stored options replaced, when Katar opens:
        the code (or the configuration file) is the authority on the queues it declares.
        """
        check_queue_name(name)
        if options or (name not in self._declared and not self._open):
            if self._open:
                raise KatarError(
                    f"declare queue {name!r} before Katar opens, or change it at run time "
                    "with await katar.put_queue(...)"
                )
            self._declared[name] = parse_queue_options(options)
        return Queue(self, name)

    def declare(self, name: str, options: QueueOptions) -> None:
        """Declare a queue with ready-made options (before Katar opens)."""
        check_queue_name(name)
        if self._open:
            raise KatarError(f"declare queue {name!r} before Katar opens")
        self._declared[name] = options

    def declared(self, name: str) -> QueueOptions | None:
        """The options declared for the queue, if any."""
        return self._declared.get(name)

    async def put_queue(self, name: str, **options: Any) -> Queue:
        """Create a queue or replace its options while Katar is open."""
        await self.engine.put_queue(name, parse_queue_options(options))
        return Queue(self, name)

    def configure(self, name: str, configuration: dict[str, Any]) -> None:
        """Set the worker configuration of a queue (declaring it if need be)."""
        options = (
            self._declared.get(name) or self.engine.queue_options().get(name) or QueueOptions()
        )
        raw = {**msgspec.structs.asdict(options), "configuration": configuration}
        self.declare(name, replace(options, configuration=parse_queue_options(raw).configuration))

    def schedule(self, name: str, cron: str, queue: str, **fields: Any) -> None:
        """Declare a schedule (before Katar opens): a task on ``queue`` at each tick of
        ``cron`` (five fields), with the other fields of a ``[schedules.NAME]`` table
        (timezone, data, priority, overlap, catch_up, paused). Created, or its stored spec
        replaced, when Katar opens; at run time, use :meth:`put_schedule`."""
        check_name(name)
        if self._open:
            raise KatarError(f"declare schedule {name!r} before Katar opens, or use put_schedule")
        self._schedules[name] = parse_schedule({"cron": cron, "queue": queue, **fields})

    def declare_schedule(self, name: str, spec: ScheduleSpec) -> None:
        """Declare a schedule with a ready-made spec (before Katar opens)."""
        check_name(name)
        if self._open:
            raise KatarError(f"declare schedule {name!r} before Katar opens")
        self._schedules[name] = spec

    def declared_schedules(self) -> dict[str, ScheduleSpec]:
        """The schedules declared so far, by name."""
        return dict(self._schedules)

    async def put_schedule(self, name: str, cron: str, queue: str, **fields: Any) -> Schedule:
        """Create a schedule or replace it while Katar is open (see :meth:`schedule`)."""
        spec = parse_schedule({"cron": cron, "queue": queue, **fields})
        return await self.engine.put_schedule(name, spec)

    async def schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        return await self.engine.list_schedules()

    async def pause_schedule(self, name: str, paused: bool = True) -> Schedule:
        """Pause a schedule (its ticks pass without a task), or resume it with False."""
        return await self.engine.patch_schedule(name, {"paused": paused})

    async def delete_schedule(self, name: str) -> None:
        """Remove a schedule; the tasks it made stay."""
        await self.engine.delete_schedule(name)

    def on(self, event: str, listener: Listener) -> None:
        """Call ``listener(task)`` on each ``"<queue>.<status>"`` change (``*`` for any queue)."""
        self.engine.on(event, listener)

    async def open(self) -> None:
        """Open the store and create or update the declared queues and schedules."""
        if not self._open:
            await self.engine.open(self._declared, self._schedules)
            self._open = True

    async def close(self) -> None:
        """Release long polls and close the store."""
        if self._open:
            self._open = False
            await self.engine.close()

    async def __aenter__(self) -> Katar:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _trace(traceparent: str | None, tracestate: str | None) -> msgspec.Raw | None:
    """The trace context an enqueue's tasks store: the one given (ValidationError when it
    is not W3C's: a caller's argument, not a header to ignore), else the current
    OpenTelemetry context."""
    if traceparent is None:
        if tracestate is not None:
            raise ValidationError("tracestate needs a traceparent")
        current = _context.context_headers()
        traceparent, tracestate = current.get("traceparent"), current.get("tracestate")
        if traceparent is None:
            return None
        return trace_context(traceparent, tracestate)
    trace = trace_context(traceparent, tracestate)
    if trace is None:
        raise ValidationError(
            f"traceparent {traceparent[:100]!r} is not a W3C traceparent "
            "(00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>)"
        )
    if tracestate is not None and b"tracestate" not in bytes(trace):
        raise ValidationError("tracestate is not a W3C tracestate (at most 512 characters)")
    return trace


class Queue:
    """A handle on one queue of a :class:`Katar`; its methods need Katar open."""

    def __init__(self, katar: Katar, name: str) -> None:
        self.katar = katar
        self.name = name

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    @property
    def options(self) -> QueueOptions:
        """The queue's options: as stored once open, as declared before."""
        if self.katar.is_open:
            return self.katar.engine.options(self.name)
        return self.katar.declared(self.name) or QueueOptions()

    def _id(self, raw: int | str) -> int:
        task_id = parse_task_id(raw)
        if task_id is None:
            raise TaskNotFound.named(raw, self.name)
        return task_id

    def on(self, status: str, listener: Listener) -> None:
        """Call ``listener(task)`` whenever a task of this queue takes ``status``."""
        self.katar.on(f"{self.name}.{status}", listener)

    async def enqueue(
        self,
        data: Any = None,
        *,
        unique_key: str | None = None,
        after: Sequence[int | str] | None = None,
        run_at: datetime | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Task:
        """Add one task; ``delay`` in seconds, or ``run_at`` (an aware datetime); returns
        the stored task. The task's own options are those of :meth:`enqueue_many`; while a
        task of the queue holds ``unique_key``, nothing is created and that task is
        returned, ``duplicate`` true. ``after``: the ids of the tasks (of any queue) it
        waits for (see enqueue_many)."""
        (task,) = await self.enqueue_many(
            [data],
            unique_keys=None if unique_key is None else [unique_key],
            afters=None if after is None else [after],
            run_at=run_at,
            **options,
        )
        return task

    async def enqueue_many(
        self,
        items: Iterable[Any],
        *,
        unique_keys: Sequence[str | None] | None = None,
        afters: Sequence[Sequence[int | str] | None] | None = None,
        run_at: datetime | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> list[Task]:
        """Add many tasks in one transaction; returns them in order. With an
        ``idempotency_key`` used on this queue in the last 24 hours (and the same tasks),
        create nothing and return the tasks that enqueue created: retrying after an
        OutcomeUnknown (a lost PostgreSQL commit) is then safe.

        Each task's own options: ``timeout`` (its lease in ms), ``max_attempts`` (0: no
        limit), ``expires_in`` (seconds), as the HTTP fields of the same names;
        ``unique_keys``, one key (or None) per task, and ``unique_for`` (seconds); ``key``,
        the tasks' group, which the queue's ``key_concurrency``, ``key_rate`` and ``fair``
        count by;
        ``afters``, one list (or None) per task of the ids of the tasks it waits for, where
        ``"$n"`` names the n-th task of this call (an earlier one): it runs once they are
        all done, with their results in its ``after``, and is cancelled if one fails.
        ``delay`` (seconds) or ``run_at`` (an aware datetime; one that has passed means
        now) hold the tasks back until then.

        ``debounce_key`` (with a ``delay`` or ``run_at``): while a task of the queue with
        that key waits,
        never delivered, the task replaces it (its data, options and due time) and is
        answered with ``debounced`` true; the latest enqueue of a key wins, within a call
        too.

        ``traceparent`` (and ``tracestate``): the W3C trace context the tasks carry to their
        workers (protocol section 17); without one, the current OpenTelemetry context
        where OpenTelemetry is installed, else none.

        ``attributes``: SQS message attributes the tasks carry, as SendMessage's
        (``{"MessageAttributes": {name: {"DataType", "StringValue" | "BinaryValue"}},
        "MessageSystemAttributes": {"AWSTraceHeader": ...}}``), checked by SQS's rules
        (a ValidationError names the first breach); an SQS receive returns them."""
        check_enqueue_options(options, "enqueue_many")
        trace = _trace(options.get("traceparent"), options.get("tracestate"))
        delay = options.get("delay") or 0
        if delay < 0:
            raise ValidationError("delay must be >= 0 seconds")
        at = None if run_at is None else self._run_at(run_at, delay)
        level = parse_priority(options.get("priority") or 0)
        items = list(items)
        keys = [None] * len(items) if unique_keys is None else list(unique_keys)
        if len(keys) != len(items):
            raise ValidationError("unique_keys needs one key (or None) per task")
        waits = [None] * len(items) if afters is None else list(afters)
        if len(waits) != len(items):
            raise ValidationError("afters needs one list of task ids (or None) per task")
        after_failure = options.get("after_failure")
        if after_failure is not None and not any(waits):
            raise ValidationError("after_failure needs afters (the tasks to wait for)")
        new = [
            NewTask(
                data=_raw(item),
                priority=level,
                delay_ms=round(delay * 1000),
                run_at=at,
                paused=options.get("paused", False),
                **parse_task_options(
                    timeout=options.get("timeout"),
                    max_attempts=options.get("max_attempts"),
                    expires_in=options.get("expires_in"),
                    unique_key=unique,
                    unique_for=options.get("unique_for"),
                    key=options.get("key"),
                    debounce_key=options.get("debounce_key"),
                    delay=options.get("delay"),  # debounce_key needs one, or a run_at
                    run_at=None if run_at is None else run_at.isoformat(),
                ),
                **(parse_after(wait, f"tasks[{i}]", after_failure) if wait else {}),
            )
            for i, (item, unique, wait) in enumerate(zip(items, keys, waits, strict=True))
        ]
        if trace is not None:
            new = [replace(task, trace=trace) for task in new]
        given = options.get("attributes")
        if given is not None:
            attributes, _ = check_native(given)  # no size bound here, as on the data
            if attributes is not None:
                new = [replace(task, attributes=attributes) for task in new]
        return await self.katar.engine.enqueue(self.name, new, options.get("idempotency_key"))

    def _run_at(self, run_at: datetime, delay: float) -> int:
        """``run_at`` in ms since the epoch, checked as the HTTP field is."""
        if delay:
            raise ValidationError("give delay or run_at, not both")
        if run_at.tzinfo is None:  # a naive time's zone is a guess: make the caller say it
            raise ValidationError("run_at needs a time zone, e.g. datetime.now(timezone.utc)")
        return check_run_at(round(run_at.timestamp() * 1000), self.katar.engine.clock.now_ms())

    async def get(self, task_id: int | str, wait: float = 0) -> Task:
        """The task; with ``wait``, wait up to that many seconds for it to finish."""
        return await self.katar.engine.get_task(self.name, self._id(task_id), wait)

    async def tasks(
        self, status: str | Sequence[str] | None = None, limit: int = 100, after: int = 0
    ) -> list[Task]:
        """Tasks by id, optionally of some statuses."""
        statuses = [status] if isinstance(status, str) else status
        where = TaskFilter(states=states_of(statuses))
        return await self.katar.engine.list_tasks(self.name, where, limit, after)

    async def cancel(self, task_id: int | str) -> Task:
        """Cancel a paused or queued task; or ask to cancel one in progress, which stays in
        progress with ``cancel_requested`` until its worker hears of it (its next heartbeat
        or ack) or its lease ends."""
        return await self.katar.engine.set_status(self.name, self._id(task_id), "cancelled")

    async def pause(self, task_id: int | str) -> Task:
        """Pause a queued task."""
        return await self.katar.engine.set_status(self.name, self._id(task_id), "paused")

    async def resume(self, task_id: int | str) -> Task:
        """Queue a paused task again, or retry a failed or cancelled one."""
        return await self.katar.engine.set_status(self.name, self._id(task_id), "queued")

    async def retry(
        self,
        task_id: int | str,
        *,
        data: Any = _UNSET,
        priority: int | str | None = None,
        key: str | None = None,
    ) -> Task:
        """Run a task again: a failed or cancelled one is retried, a paused one resumed,
        with a fresh set of attempts. With ``data``, ``priority`` or ``key`` (edit and
        retry), it runs with those instead, and a queued task takes them too. A task in
        progress or done: IllegalTransition, nothing changes."""
        edit = None
        if data is not _UNSET or priority is not None or key is not None:
            edit = Edit(
                data=None if data is _UNSET else _raw(data),
                priority=None if priority is None else parse_priority(priority),
                key=parse_task_options(key=key).get("key"),
            )
        return await self.katar.engine.set_status(self.name, self._id(task_id), "queued", edit)

    async def delete(self, task_id: int | str) -> None:
        """Remove a task."""
        await self.katar.engine.delete_task(self.name, self._id(task_id))

    async def redrive(
        self,
        to: str | None = None,
        *,
        status: str | Sequence[str] | None = None,
        ids: Sequence[int | str] | None = None,
        key: str | None = None,
        error: str | None = None,
    ) -> Redrive:
        """Move this queue's waiting tasks (queued or failed; those the filter selects) to
        ``to``, or each back to the queue it was dead-lettered from, queued with fresh
        attempts, in steps of bounded size (protocol section 14)."""
        where = self._filter(status, ids, key, error)
        return await self.katar.engine.redrive(self.name, to, where)

    async def start_redrive(
        self,
        rate: float,
        to: str | None = None,
        *,
        status: str | Sequence[str] | None = None,
        key: str | None = None,
        error: str | None = None,
    ) -> MoveJob:
        """:meth:`redrive` at ``rate`` tasks a second, in the background: the move job,
        kept by the store (every server sharing it sees it, and one of them finishes it
        should this one stop), which :meth:`redrive_job` follows and
        :meth:`cancel_redrive` stops."""
        where = self._filter(status, None, key, error)
        return await self.katar.engine.start_redrive(self.name, rate, to, where)

    async def redrive_job(self) -> MoveJob:
        """The queue's last redrive at a rate, as it stands; NotFound when none."""
        return await self.katar.engine.move_job(self.name)

    async def cancel_redrive(self) -> MoveJob:
        """Stop the queue's redrive at a rate; what it moved stays moved."""
        return await self.katar.engine.cancel_redrive(self.name)

    def _filter(
        self,
        status: str | Sequence[str] | None,
        ids: Sequence[int | str] | None,
        key: str | None,
        error: str | None,
    ) -> TaskFilter:
        statuses = [status] if isinstance(status, str) else status
        unknown = sorted(set(statuses or ()) - STATES_OF_STATUS.keys())
        if unknown:
            raise ValidationError(
                f"unknown status {unknown[0]!r}: one of {', '.join(STATES_OF_STATUS)}"
            )
        return TaskFilter(
            states=states_of(statuses),
            ids=None if ids is None else tuple(self._id(i) for i in ids),
            key=key,
            error=error,
        )
