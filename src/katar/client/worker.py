"""Workers: run a Python function on the tasks of a queue.

    def send_email(task: Job) -> dict:
        ...                          # task.data is the producer's JSON, decoded
        return {"sent": True}        # stored as the task's result

    Worker("http://127.0.0.1:3000", "emails", send_email, concurrency=4).run()

The loop: read the queue's configuration, then poll, carrying the acks of the tasks just
finished on the same call; long-poll when idle instead of sleeping; take as many tasks as
there is free capacity; run sync handlers in threads and async ones as tasks; send
heartbeats for tasks that run longer than a third of the lease (the task's own timeout when
its delivery carries one, else the queue's). A handler that returns
reports ``done`` with the return value as ``result``; one that raises reports ``failed`` with
the exception's text (:class:`Retry` asks for another attempt, :class:`Fail` for none, any
other exception leaves it to the queue's ``retry_failed``).

Long-running work: a handler reports progress with ``job.progress(value)`` (any JSON; the
next heartbeat carries the latest). When an operator cancels a task in progress, the server
says so in the answer to its next heartbeat: the worker then cancels an async handler's
asyncio task, sets ``job.cancelled`` (and ``job.cancel_event``) for a sync handler to see,
stops heartbeating the task, and sends no ack for it (the server has ended it).

No answer, or a 5xx, is retried with exponential backoff and jitter, capped at 5 s (so that
a worker is back within seconds of a server's restart) and started again at the first
answer; the log names the server's URL. The acks owed are kept until the server has them;
a request that may have claimed tasks is never sent again (the acks are resent with ``max``
0). A 4xx is a mistake in the worker's code or setup: it stops the worker with
:class:`~katar.errors.RequestRejected`.

SIGTERM or SIGINT stops taking tasks, lets the running ones finish (for up to ``grace``
seconds; past that they are abandoned and the server delivers them again when their lease
runs out), sends the last acks and returns. A second signal exits the process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import httpx
import msgspec

from katar.client import _otel
from katar.client._base import (
    Verify,
    backoff,
    check,
    headers,
    is_transient,
    server_url,
    tls,
    transport_error,
)
from katar.errors import ClientError, KatarError, RequestRejected
from katar.protocol import DEFAULT_LEASE_MS, LEASE_HEADER, Deliveries, TraceContext

log = logging.getLogger("katar.client")

_NO_PROGRESS: Final = object()


class Job:
    """A task delivered to this worker: ``id``, ``data`` (the producer's JSON, decoded),
    ``attempt`` (the delivery's number, from 1), ``after`` (the results of the tasks it
    waited for, by id; None for a task that waited for none; ``after_omitted`` lists those
    whose results did not fit in the server's answer, to read from their own records), and
    ``schedule`` and
    ``scheduled_for`` (the schedule that made it and the tick, ISO 8601 UTC; None for a task
    no schedule made), ``trace`` (the W3C trace context it was enqueued with, or None; with
    OpenTelemetry installed the handler runs in a ``process <queue>`` span of that trace,
    current while it runs); and the handler's line to the worker while it runs:
    :meth:`progress`, :attr:`cancelled`, :attr:`cancel_event`."""

    __slots__ = (
        "_lock",
        "_progress",
        "after",
        "after_omitted",
        "attempt",
        "cancel_event",
        "data",
        "id",
        "schedule",
        "scheduled_for",
        "timeout",
        "trace",
    )

    def __init__(
        self,
        id: str,
        data: Any = None,
        attempt: int = 1,
        timeout: int | None = None,
        after: dict[str, Any] | None = None,
        schedule: str | None = None,
        scheduled_for: str | None = None,
        after_omitted: list[str] | None = None,
        trace: TraceContext | None = None,
    ) -> None:
        self.id = id
        self.data = data
        self.attempt = attempt
        #: The results of the tasks it waited for (``after`` at enqueue), by id: a fan-in.
        self.after = after
        #: The tasks it waited for whose results ``after`` leaves out (the server's answers
        #: are bounded): read each from its own record (``Producer.get``).
        self.after_omitted = after_omitted or []
        #: The schedule that made the task, and the tick it was made for.
        self.schedule = schedule
        self.scheduled_for = scheduled_for
        #: The task's own lease in ms, when its delivery carries one (else the queue's).
        self.timeout = timeout
        #: The W3C trace context the task was enqueued with (traceparent, tracestate).
        self.trace = trace
        #: Set once an operator has cancelled the task: a sync handler may wait on it, or
        #: test :attr:`cancelled` between steps, and return early (its result is not sent).
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._progress: Any = _NO_PROGRESS

    @property
    def cancelled(self) -> bool:
        """True once an operator has cancelled the task while it ran."""
        return self.cancel_event.is_set()

    def progress(self, value: Any) -> None:
        """Report progress, any JSON value (e.g. ``{"done": 40, "of": 100}``): the next
        heartbeat carries the latest value, and the task's record shows it. Thread-safe;
        raises TypeError when ``value`` is not JSON."""
        try:
            # A copy, made now: the handler may change its object afterwards.
            snapshot = msgspec.json.decode(msgspec.json.encode(value))
        except (TypeError, msgspec.EncodeError) as exc:
            raise TypeError(f"progress must be a JSON value: {exc}") from None
        with self._lock:
            self._progress = snapshot

    def _heartbeat(self) -> dict[str, Any]:
        """The heartbeat ack of this delivery, with the latest progress if any."""
        beat = {"_id": self.id, "status": "in progress", "attempt": self.attempt}
        with self._lock:
            if self._progress is not _NO_PROGRESS:
                beat["progress"] = self._progress
        return beat

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, data={self.data!r}, attempt={self.attempt!r})"


class Retry(Exception):
    """Raise from a handler: the task failed; try it again later, while attempts remain."""


class Fail(Exception):
    """Raise from a handler: the task failed for good; do not try it again."""


Handler = Callable[[Job], Any]
_deliveries: Final = msgspec.json.Decoder(Deliveries)


@dataclass
class _Running:
    job: Job
    beat_at: float  # loop time of the delivery or the last heartbeat


def _ack(job: Job, outcome: BaseException | None, result: Any) -> dict[str, Any]:
    if outcome is None:
        try:
            msgspec.json.encode(result)
        except (TypeError, msgspec.EncodeError) as exc:
            outcome = Fail(f"the handler's result is not JSON: {exc}")
        else:
            return {"_id": job.id, "status": "done", "attempt": job.attempt, "result": result}
    ack = {
        "_id": job.id,
        "status": "failed",
        "attempt": job.attempt,
        # The server refuses NUL in text: an odd exception message must not get the ack
        # refused (and the task redelivered until its attempts run out).
        "error": f"{type(outcome).__name__}: {outcome}".replace("\x00", "\\x00"),
    }
    if isinstance(outcome, Retry | Fail):
        ack["retry"] = isinstance(outcome, Retry)
    return ack


class AsyncWorker:
    """Runs ``handler`` on the tasks of ``queue``; see the module's documentation.

    ``transport`` is for tests: an httpx transport such as ``httpx.ASGITransport(app)``.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        handler: Handler,
        *,
        token: str | None = None,
        verify: Verify = True,
        concurrency: int = 1,
        wait: float = 20.0,
        grace: float = 30.0,
        name: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        summary_interval: float = 60.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.url = server_url(url)
        self.queue = queue
        #: Whether handlers run in spans: only where OpenTelemetry is installed.
        self._traced = _otel.installed()
        self.handler = handler
        self.concurrency = concurrency
        self.wait = wait
        self.grace = grace
        self.name = name or f"{socket.gethostname()}/{os.getpid()}"
        self._token = token
        self._verify = tls(verify)
        self._transport = transport
        self._is_async = inspect.iscoroutinefunction(handler)
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[asyncio.Future[None], _Running] = {}
        self._acks: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_deadline = 0.0
        self._poll_task: asyncio.Task[httpx.Response] | None = None
        self._long_polling = False
        # Polls in a row that got no answer: the backoff grows with it, so that a server that
        # is down is tried less and less often, and it starts again at the first answer.
        self._failures = 0
        #: The queue's worker configuration, once read.
        self.configuration: dict[str, Any] = {}
        self.lease = DEFAULT_LEASE_MS / 1000
        #: Tasks finished (acknowledged to the server) since the worker started.
        self.processed = 0
        #: Handlers that returned, and that raised, since the worker started.
        self.done = 0
        self.failed = 0
        #: Tasks an operator cancelled while their handler ran, since the worker started.
        self.cancelled = 0
        self.summary_interval = summary_interval
        self._summarized = (0, 0, time.monotonic())  # done, failed, when: the last summary

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking tasks; finish the running ones (within ``grace``), then return."""
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = asyncio.get_running_loop().time() + self.grace
            log.info("stopping: finishing %d running task(s)", len(self._running))
            if self._poll_task is not None and self._long_polling:
                self._poll_task.cancel()  # a long poll would only bring tasks we do not want
            self._wake.set()

    def _on_signal(self) -> None:
        if self._stopping:
            log.warning("second signal: exiting at once")
            os._exit(130)
        self.stop()

    async def run(self) -> None:
        """Work until stopped (SIGTERM, SIGINT or :meth:`stop`)."""
        loop = asyncio.get_running_loop()
        signals = threading.current_thread() is threading.main_thread()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        if not self._is_async:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="katar-worker")
        summaries = asyncio.ensure_future(self._summarize())
        try:
            async with httpx.AsyncClient(
                base_url=self.url,
                headers=headers(self._token),
                verify=self._verify,
                timeout=httpx.Timeout(30.0, read=self.wait + 30.0),
                transport=self._transport,
            ) as http:
                await self._work(http)
        finally:
            summaries.cancel()
            self._summary()  # the last one, as the worker stops
            for future in self._running:
                future.cancel()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            if signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    # -- the loop --------------------------------------------------------------------------

    async def _work(self, http: httpx.AsyncClient) -> None:
        if self._stopping:  # stopped before it started: nothing to finish, nothing to ask
            return
        await self._read_configuration(http)
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            if self._stopping:
                if not self._running and not self._acks:
                    return
                if self._running and now >= self._stop_deadline:
                    log.warning(
                        "grace period over: abandoning %d task(s); the server will deliver "
                        "them again when their lease runs out",
                        len(self._running),
                    )
                    for future in self._running:
                        future.cancel()
                    self._running.clear()
            free = 0 if self._stopping else self.concurrency - len(self._running)
            beats = [
                r
                for r in self._running.values()
                if now - r.beat_at >= self._beat_every(r) and not r.job.cancelled
            ]
            acks = self._acks[:]
            if not acks and not beats and free == 0:
                await self._sleep(self._until_next_beat(now))
                continue
            idle = not self._running and not acks and not beats
            wait = self.wait if idle and not self._stopping else 0.0
            sent = acks + [r.job._heartbeat() for r in beats]
            try:
                jobs = await self._poll(http, sent, free, wait)
            except asyncio.CancelledError:
                if self._stopping and self._poll_task is not None and self._poll_task.cancelled():
                    continue  # our own long poll, cut short by stop()
                raise
            except KatarError as exc:
                if not is_transient(exc):
                    raise
                await self._recover(http, sent, exc)
                continue
            finally:
                self._poll_task = None
            self._failures = 0
            self._sent(acks)
            for running in beats:
                running.beat_at = now
            for job in jobs:
                self._start(job)
            if jobs or self._stopping:
                continue
            if self._running:  # busy: wait for a task to finish, or a heartbeat to fall due
                await self._sleep(min(self._interval(), self._until_next_beat(loop.time())))
            elif idle and wait == 0:  # long polls are off: honour the queue's interval
                await self._sleep(self._interval())
            # else: the acks are sent and nothing runs: the next turn long-polls at once

    async def _read_configuration(self, http: httpx.AsyncClient) -> None:
        path = f"/v1/queue/{self.queue}"
        attempt = 0
        while True:
            try:
                try:
                    response = check(await http.get(path))
                except httpx.TransportError as exc:
                    raise transport_error(exc, "GET", path) from exc
            except ClientError as exc:
                if not is_transient(exc) or self._stopping:
                    raise
                attempt += 1
                delay = backoff(attempt)
                log.warning("%s; trying again in %.1fs", exc, delay)
                await self._sleep(delay)
                continue
            self.configuration = response.json()["configuration"]
            self.lease = int(response.headers.get(LEASE_HEADER, DEFAULT_LEASE_MS)) / 1000
            log.info(
                "worker %s on %s%s: configuration %s",
                self.name,
                self.url,
                path,
                self.configuration,
            )
            return

    async def _poll(
        self, http: httpx.AsyncClient, acks: list[dict[str, Any]], take: int, wait: float
    ) -> list[Job]:
        """Send a poll; the jobs it delivers. The tasks its answer says to stop (an
        operator cancelled them) are stopped here."""
        body: dict[str, Any] = {"tasks": acks, "max": take, "worker": self.name}
        if wait:
            body["wait"] = wait
        path = f"/v1/queue/{self.queue}"
        self._long_polling = wait > 0
        self._poll_task = asyncio.ensure_future(http.post(path, json=body))
        try:
            response = check(await self._poll_task)
        except httpx.TransportError as exc:
            raise transport_error(exc, "POST", path) from exc
        if response.status_code == 204:
            return []
        answer = _deliveries.decode(response.content)
        if answer.cancel:
            self._cancel(answer.cancel)
        return [
            Job(
                task.id,
                task.data,
                task.attempt,
                task.timeout,
                task.after,
                task.schedule,
                task.scheduled_for,
                task.after_omitted,
                task.trace,
            )
            for task in answer.tasks
        ]

    def _cancel(self, ids: list[str]) -> None:
        """Stop the handlers of tasks an operator cancelled: an async one's asyncio task is
        cancelled, a sync one sees ``job.cancelled``. No heartbeat and no ack is sent for
        them any more (the server has ended them)."""
        stop = set(ids)
        for future, running in self._running.items():
            job = running.job
            if job.id in stop and not job.cancelled:
                job.cancel_event.set()
                self.cancelled += 1
                log.info("task %s (attempt %d) cancelled by an operator", job.id, job.attempt)
                if self._is_async:
                    future.cancel()

    async def _recover(
        self, http: httpx.AsyncClient, acks: list[dict[str, Any]], failure: KatarError
    ) -> None:
        """After a poll got no answer: send its acks again, claiming nothing, until the
        server has them (the lost poll may have claimed tasks: those come back when their
        lease runs out)."""
        while True:
            self._failures += 1
            delay = backoff(self._failures)
            log.warning("%s; trying again in %.1fs (%d ack(s) kept)", failure, delay, len(acks))
            await self._sleep(delay)
            if self._stopping and asyncio.get_running_loop().time() >= self._stop_deadline:
                log.error("giving up on %d ack(s): the server is unreachable", len(acks))
                self._acks.clear()
                self._running.clear()
                return
            if not acks:
                return
            try:
                await self._poll(http, acks, 0, 0.0)
            except KatarError as exc:
                if not is_transient(exc):
                    raise
                failure = exc
                continue
            finally:
                self._poll_task = None
            self._failures = 0
            self._sent([a for a in acks if a["status"] != "in progress"])
            return

    def _sent(self, acks: list[dict[str, Any]]) -> None:
        """The server has these acks: forget them."""
        if acks:
            settled = {id(a) for a in acks}
            self._acks = [a for a in self._acks if id(a) not in settled]
            self.processed += len(acks)

    # -- running handlers ------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        future = asyncio.ensure_future(self._execute(job))
        self._running[future] = _Running(job, loop.time())
        future.add_done_callback(self._finished)

    async def _execute(self, job: Job) -> None:
        try:
            if self._traced:
                result = await self._run_traced(job)
            elif self._is_async:
                result = await self.handler(job)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, self.handler, job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if job.cancelled:  # stopped early because it was cancelled: nothing to report
                return
            ack = _ack(job, exc, None)
            # A Retry or Fail is the handler's own verdict: its message says it all. Any
            # other exception is unexpected: its traceback is what the operator needs.
            trace = None if isinstance(exc, Retry | Fail) else exc
            self._failure(job, ack, trace)
        else:
            if job.cancelled:  # the server has ended it: nothing to report
                return
            ack = _ack(job, None, result)
            if ack["status"] == "failed":  # a result that is not JSON
                self._failure(job, ack, None)
            else:
                self.done += 1
        self._acks.append(ack)

    async def _run_traced(self, job: Job) -> Any:
        """The handler in a ``process <queue>`` span (katar.client._otel), current in the
        task of an async handler and in the pool's thread of a sync one."""
        with _otel.processing(self.queue, job.id, job.trace) as span:
            if self._is_async:
                return await self.handler(job)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, _otel.in_span, span, functools.partial(self.handler, job)
            )

    def _failure(self, job: Job, ack: dict[str, Any], trace: BaseException | None) -> None:
        self.failed += 1
        log.warning(
            "task %s failed (attempt %d): %s", job.id, job.attempt, ack["error"], exc_info=trace
        )

    async def _summarize(self) -> None:
        """Every ``summary_interval`` seconds, a summary line (see :meth:`_summary`)."""
        while True:
            await asyncio.sleep(self.summary_interval)
            self._summary()

    def _summary(self) -> None:
        """Tasks done and failed since the last summary, and the rate; and since the start.
        Nothing when nothing happened: an idle worker stays quiet."""
        now = time.monotonic()
        done, failed = self.done - self._summarized[0], self.failed - self._summarized[1]
        elapsed = max(now - self._summarized[2], 1e-3)
        self._summarized = (self.done, self.failed, now)
        if done or failed:
            log.info(
                "worker %s: %d done, %d failed in the last %.0fs (%.1f tasks/s); "
                "%d done, %d failed since it started",
                self.name,
                done,
                failed,
                elapsed,
                (done + failed) / elapsed,
                self.done,
                self.failed,
            )

    def _finished(self, future: asyncio.Future[None]) -> None:
        self._running.pop(future, None)
        self._wake.set()

    # -- time --------------------------------------------------------------------------------

    def _interval(self) -> float:
        interval = self.configuration.get("interval", 30000)
        return max(float(interval) / 1000, 0.01) if isinstance(interval, int | float) else 30.0

    def _until_next_beat(self, now: float) -> float:
        if not self._running:
            return self._interval()
        due = min(r.beat_at + self._beat_every(r) for r in self._running.values())
        return max(due - now, 0.0)

    def _beat_every(self, running: _Running) -> float:
        """Seconds between two heartbeats of a task: a third of its lease, which is the
        task's own timeout when its delivery carries one, else the queue's."""
        timeout = running.job.timeout
        return (self.lease if timeout is None else timeout / 1000) / 3

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake as soon as a task finishes or the worker is told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


class Worker:
    """The blocking flavour of :class:`AsyncWorker`, with the same arguments and methods:
    ``Worker(url, queue, handler).run()`` works until SIGTERM or SIGINT."""

    def __init__(self, url: str, queue: str, handler: Handler, **options: Any) -> None:
        self._options = options
        self._args = (url, queue, handler)
        self._worker: AsyncWorker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # stop() may come from another thread before run() has made its loop: it is kept
        # here, under the lock, and run() honours it as soon as the worker exists.
        self._lock = threading.Lock()
        self._stop_requested = False

    @property
    def processed(self) -> int:
        """Tasks finished (acknowledged to the server) so far."""
        return self._worker.processed if self._worker is not None else 0

    def run(self) -> None:
        """Work until stopped."""

        async def main() -> None:
            worker = AsyncWorker(*self._args, **self._options)
            with self._lock:
                self._loop = asyncio.get_running_loop()
                self._worker = worker
                if self._stop_requested:
                    worker.stop()
            await worker.run()

        asyncio.run(main())

    def stop(self) -> None:
        """Stop gracefully; may be called from any thread, also before :meth:`run` has
        started (the worker then stops as soon as it starts)."""
        with self._lock:
            self._stop_requested = True
            if self._loop is not None and self._worker is not None:
                self._loop.call_soon_threadsafe(self._worker.stop)


def run_worker(worker: AsyncWorker | Worker) -> int:
    """Run a worker as a command; its exit status."""
    try:
        if isinstance(worker, Worker):
            worker.run()
        else:
            asyncio.run(worker.run())
    except RequestRejected as exc:
        log.error("the server rejected the worker's request (a bug or a setup error): %s", exc)
        return 1
    return 0


__all__ = ["AsyncWorker", "Fail", "Job", "Retry", "Worker", "run_worker"]
