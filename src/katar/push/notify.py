"""Completion webhooks: each end of a task (done, failed, cancelled, dead_lettered) of a queue
with a ``notify`` option is POSTed to its URL, signed per Standard Webhooks as pushes are, as
``{"type": "task.<event>", "task": <the task's record, as GET gives it>}``.

How an event travels:

1. While some queue has a notify option, the engine decides which changes are events
   (``Engine.notify_with``: rules.ended and the queues' options) and the stores keep them in
   their outbox (the memory store's list, a table on SQLite and PostgreSQL) in the very
   transaction that ends the task (``Store.notify``): a task's end is never committed without
   its event, whatever happens to the server after.
2. The sender takes events from the outbox (``Engine.outbox_take``): the first of each task
   only, held for LEASE_MS, so that a task's next event waits until this one is sent and one
   server sends a task's events, in order (on PostgreSQL, FOR UPDATE SKIP LOCKED between
   servers). It POSTs each, deletes it on a 2xx answer, and on any other outcome leaves it
   for later: a pause that doubles from 1 s to MAX_PAUSE_S per queue while its endpoint does
   not answer 2xx (Retry-After on 429 and 503 honoured). A server killed mid-send leaves the
   event held until its hold ends; another send then repeats it: at least once, receivers
   deduplicate by ``webhook-id`` (``notify_<event id>``, unique per event).

The outbox keeps at most NOTIFY_KEPT events per queue: the sender drops the oldest past it
(``Engine.outbox_trim``, at every look, at least every LOOK_S: a burst may pass the bound for
that long), with a warning and ``katar_notify_total{outcome="dropped"}``. Events of a queue
whose notify option is gone are dropped too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from katar.core.counters import NotifyAnswer
from katar.core.engine import Engine
from katar.core.model import NOTIFY_KEPT, NotifyOptions, OutboxRow, QueueOptions, Task
from katar.errors import KatarError
from katar.http.responses import encode, task_record
from katar.push import signing
from katar.push.client import MAX_PAUSE_S, Endpoint, Unreachable, retry_after
from katar.push.safety import Allow, Refused

log = logging.getLogger("katar.push")

#: Seconds an endpoint has to answer an event.
TIMEOUT_S: Final = 10.0
#: How long a taken event is held by its sender (ms): past its timeout, with a margin.
LEASE_MS: Final = 30_000
#: Events taken at once.
BATCH: Final = 100
#: Seconds between two looks at the outbox when nothing woke the sender: events that
#: another server wrote, or whose pause ended.
LOOK_S: Final = 1.0
#: The most an answer is read.
MAX_ANSWER_BYTES: Final = 16 * 1024
#: Idle keep-alive connections kept per endpoint.
MAX_IDLE: Final = 8


def event_body(event: str, task: Task) -> bytes:
    """What an event sends: its type and the task's record."""
    return b'{"type":"task.%s","task":%s}' % (event.encode(), encode(task_record(task)))


def _event_type(body: bytes) -> str:
    """The type an event's body names (event_body writes it first)."""
    start = body.find(b'"type":"')
    if start < 0:
        return ""
    start += len(b'"type":"')
    return body[start : body.find(b'"', start)].decode(errors="replace")


class Notifier:
    """This server's completion webhooks: it has the engine keep the events in the outbox
    while some queue has a notify option (``Engine.notify_with``), and sends them."""

    def __init__(self, engine: Engine, allow: Allow | None = None) -> None:
        self.engine = engine
        self.allow = allow if allow is not None else Allow()
        self._written = asyncio.Event()  # events were written: the sender looks
        self._endpoints: dict[str, Endpoint] = {}
        #: Per queue: failed sends in a row, and until when its events wait.
        self._failures: dict[str, int] = {}
        self._paused: dict[str, float] = {}
        self._jobs: list[asyncio.Task[None]] = []
        self._started = False
        #: Queues given a notify option that the engine may not list yet (its put_queue
        #: checks before it stores): sync keeps the events on for them.
        self._coming: set[str] = set()
        #: When the sender last dropped the events past the outbox's bound (monotonic s).
        self._trimmed = 0.0

    # -- the engine's side --

    def check(self, name: str, options: QueueOptions) -> None:
        """The engine's check of a queue's new options (Engine.option_checks): a notify URL
        known not to be allowed is bad input (422); a queue that sets one is heard from now
        on, before its first change."""
        if options.notify is not None:
            self.allow.check(options.notify.url, "notify")
            self._coming.add(name)
            self._hear()

    def _hear(self) -> None:
        engine = self.engine
        if engine.notifier is None:
            engine.outbox_written = self._written.set
            engine.notify_with(event_body)
        if self._started and not self._jobs:
            self._jobs = [asyncio.create_task(self._send_all(), name="katar-notify-send")]

    def sync(self) -> None:
        """Keep events while some queue has a notify option (another server may have set
        one: the dispatcher's look at the queues calls this)."""
        queues = self.engine.queue_options()
        self._coming = {name for name in self._coming if name not in queues}
        if self._coming or any(o.notify is not None for o in queues.values()):
            self._hear()
        elif self.engine.notifier is not None:
            self.engine.notify_with(None)

    def start(self) -> None:
        """Start (after the engine is open): events left in the outbox are sent."""
        self._started = True
        self.sync()

    async def stop(self) -> None:
        """Stop sending. The events go on being kept (by the operations of a server that
        drains): the next server to start sends them."""
        self._started = False  # a queue given notify while the server drains starts nothing
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        for endpoint in self._endpoints.values():
            endpoint.close()

    # -- the sender --

    async def _trim(self) -> None:
        """Drop the events past the outbox's bound, at most once every LOOK_S."""
        now = time.monotonic()
        if now - self._trimmed < LOOK_S:
            return
        self._trimmed = now
        dropped = await self.engine.outbox_trim(NOTIFY_KEPT)
        for queue, count in dropped.items():
            log.warning(
                "notify queue %s: %d event(s) dropped, unsent: the outbox keeps %d per queue",
                queue,
                count,
                NOTIFY_KEPT,
            )
            self.engine.counters.notified(queue, "dropped", count)

    async def _send_all(self) -> None:
        while True:
            try:
                await self._trim()
                rows = await self.engine.outbox_take(BATCH, LEASE_MS)
            except KatarError as exc:
                log.warning("notify: cannot take events: %s", exc.message)
                rows = []
            if rows:
                await asyncio.gather(*(self._send(row) for row in rows))
                continue
            self._written.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOOK_S):
                    await self._written.wait()

    def _endpoint(self, queue: str, url: str) -> Endpoint:
        endpoint = self._endpoints.get(queue)
        if endpoint is None or endpoint.url != url:
            if endpoint is not None:
                endpoint.close()
            endpoint = Endpoint(
                url,
                opened=self.allow.permits(url),
                max_idle=MAX_IDLE,
                max_bytes=MAX_ANSWER_BYTES,
            )
            self._endpoints[queue] = endpoint
        return endpoint

    async def _send(self, row: OutboxRow) -> None:
        engine = self.engine
        options = engine.queue_options().get(row.queue)
        notify = None if options is None else options.notify
        try:
            if notify is None:
                log.warning(
                    "notify queue %s: event %d dropped: no notify option", row.queue, row.id
                )
                engine.counters.notified(row.queue, "dropped")
                await engine.outbox_delete([row.id])
                return
            pause = self._paused.get(row.queue, 0.0) - time.monotonic()
            if pause > 0:  # the endpoint failed just now: this event waits with the others
                await engine.outbox_retry(row.id, int(pause * 1000))
                return
            started = time.monotonic()
            at = engine.clock.now_ms()
            outcome, later, status, error = await self._post(row, notify)
            answer = NotifyAnswer(
                at,
                outcome,
                status,
                round((time.monotonic() - started) * 1000),
                row.task_id,
                _event_type(row.body),
                error,
            )
            engine.counters.notify_answered(row.queue, answer)
            if outcome == "sent":
                self._failures.pop(row.queue, None)
                self._paused.pop(row.queue, None)
                await engine.outbox_delete([row.id])
                return
            failures = self._failures[row.queue] = self._failures.get(row.queue, 0) + 1
            pause = min(2.0 ** min(failures - 1, 20), MAX_PAUSE_S)
            if later is not None:
                pause = max(pause, later)
            self._paused[row.queue] = time.monotonic() + pause
            await engine.outbox_retry(row.id, int(pause * 1000))
        except KatarError as exc:  # the store is out: the event's hold ends, it is sent again
            log.warning("notify queue %s: event %d: %s", row.queue, row.id, exc.message)

    async def _post(
        self, row: OutboxRow, notify: NotifyOptions
    ) -> tuple[str, float | None, int | None, str | None]:
        """POST the event: its outcome (sent, failed, refused), a Retry-After's seconds, the
        answer's status (None without one) and what went wrong, in words."""
        msg_id = f"notify_{row.id}"
        headers = [
            (b"Content-Type", b"application/json"),
            (b"User-Agent", b"katar-notify"),
            *signing.headers(
                notify.secrets(self.engine.clock.now_ms()), msg_id, int(time.time()), row.body
            ),
        ]
        why = self.allow.refused_without_dns(notify.url)
        error: str | None
        if why is not None:
            error, outcome = f"the URL {why}; see [push] allow", "refused"
        else:
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    answer = await self._endpoint(row.queue, notify.url).post(headers, row.body)
            except TimeoutError:
                error, outcome = f"no answer within {TIMEOUT_S:g} s", "failed"
            except Refused as exc:
                error, outcome = str(exc), "refused"
            except (Unreachable, OSError) as exc:
                error, outcome = str(exc), "failed"
            else:
                if 200 <= answer.status < 300:
                    return "sent", None, answer.status, None
                later = None
                if answer.status in (429, 503):
                    later = retry_after(answer.headers.get("retry-after"), time.time())
                log.info("notify queue %s: event %d answered %d", row.queue, row.id, answer.status)
                return "failed", later, answer.status, f"answered {answer.status}"
        log.info("notify queue %s: event %d not sent: %s", row.queue, row.id, error)
        return outcome, None, None, error
