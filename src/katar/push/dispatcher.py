"""The push dispatcher: the server itself delivers a push queue's tasks to its endpoint.

Every ``katar serve`` process runs one, beside the HTTP front, on the engine's public
operations only: a pusher per push queue claims tasks through ``Engine.poll`` (so the
queue's concurrency, rate, key_concurrency, key_rate and fair apply exactly as to a poll,
and on PostgreSQL the claim keeps two servers from holding one task), POSTs each, signed,
over a keep-alive connection pool of its own, and acks it from the answer through
``Engine.poll`` again: 2xx is ``done`` (a JSON body is the result), anything else a failed
attempt retried with the queue's backoff. The lease covers the push in flight (the push
never waits past the lease, less a margin), so a server killed mid-push leaves the task to
be pushed again when the lease runs out.

An endpoint that does not answer is not hammered: after a failure the pusher claims one
task at a time (a probe) and waits before each, doubling from the queue's retry_delay up to
MAX_PAUSE_S, and longer when a 429 or 503 asks so with ``Retry-After``; a success ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from katar.core.counters import PushAnswer
from katar.core.engine import Engine
from katar.core.model import Ack, PushOptions, QueueOptions, Task
from katar.errors import KatarError, QueueNotFound
from katar.http.responses import delivery
from katar.protocol import TraceContext
from katar.push import signing
from katar.push.client import MAX_PAUSE_S, Endpoint, Unreachable, retry_after
from katar.push.notify import Notifier
from katar.push.safety import Allow, Refused

if TYPE_CHECKING:
    from katar.tracing import Tracing

log = logging.getLogger("katar.push")

#: Pushes in flight at once per queue and server when the queue sets no concurrency.
DEFAULT_IN_FLIGHT: Final = 32
#: A busy pusher claims once this share of its room (1/n) is free.
CLAIM_SHARE: Final = 4
#: The longest an ended push's ack waits for a claim to carry it before it is sent alone.
ACK_DELAY_S: Final = 0.05
#: Seconds a pusher's claim waits for a task (a long poll: woken as soon as one is ready).
CLAIM_WAIT_S: Final = 10.0
#: The most an endpoint's answer may hold; beyond it the answer is cut (and not a result).
MAX_ANSWER_BYTES: Final = 64 * 1024
#: The push stops this long before its lease ends, so that its ack finds the lease held.
LEASE_MARGIN_MS: Final = 1_000
#: Seconds between two looks at the queues' options (push queues made or removed).
WATCH_INTERVAL_S: Final = 1.0
#: Seconds a graceful stop lets the pushes in flight end (else their leases run out).
STOP_GRACE_S: Final = 10.0
#: Seconds an idle keep-alive connection to an endpoint stays open.
KEEPALIVE_S: Final = 30.0

_trace_decoder: Final = msgspec.json.Decoder(TraceContext)
#: The headers of every push before the queue's own (the request line and Host precede them).
_CONSTANT_HEADERS: Final = ((b"Content-Type", b"application/json"), (b"User-Agent", b"katar-push"))
#: The result of a push whose 2xx answer holds no JSON.
_NO_RESULT: Final = msgspec.Raw(b"null")


def trace_headers(trace: bytes | msgspec.Raw | None) -> dict[str, str]:
    """The ``traceparent`` and ``tracestate`` headers of a task's stored context (Task.trace),
    as it was enqueued with: what a push carries when the server makes no span of its own."""
    if trace is None:
        return {}
    stored = _trace_decoder.decode(bytes(trace))
    headers = {"traceparent": stored.traceparent}
    if stored.tracestate is not None:
        headers["tracestate"] = stored.tracestate
    return headers


@dataclass(slots=True)
class Outcome:
    """How one push went: the ack to send and what the dashboard and metrics keep."""

    ack: Ack
    answer: PushAnswer
    #: Seconds the endpoint asked to be left alone (Retry-After), or None.
    retry_after: float | None = None


class QueuePusher:
    """The pushes of one queue on this server: claims, pushes, acks."""

    def __init__(
        self,
        engine: Engine,
        queue: str,
        push: PushOptions,
        allow: Allow,
        tracing: Tracing | None = None,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.push = push
        self.allow = allow
        #: The server's spans (a ``process <queue>`` span around each traced push), or None.
        self.tracing = tracing
        self.in_flight: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._stopping = False
        #: The hang-up futures of the claims under way (Engine.poll's ``gone``).
        self._gones: set[asyncio.Future[None]] = set()
        #: Failed pushes in a row: while any, one push at a time, after a pause.
        self.failures = 0
        self._pause_until = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        #: Acks of ended pushes, sent with the next claim; whether a claim is under way.
        self._acks: list[Ack] = []
        self._waiting = 0  # claimers waiting for room
        self._acks_since = 0.0  # when the oldest of self._acks ended
        #: Room that the claims under way asked for, not yet pushes in flight.
        self._reserved = 0
        #: Claims under way that do not park (the queue had tasks at the last look): the
        #: acks of the pushes that end meanwhile wait for the next claim, which comes soon.
        self._claiming = 0
        #: Whether the last claim took tasks: the next then takes what is ready without
        #: waiting, and parks (a long poll) only once one found nothing.
        self._busy = False
        self.endpoint = self._endpoint(push)
        self._prepare(push)
        # On a store that servers share, a claim is a round trip to the database: two
        # claimers keep one under way while the other's tasks are pushed.
        claimers = 2 if engine.store.shared else 1
        self.runners = [
            asyncio.create_task(self._run(), name=f"katar-push-{queue}") for _ in range(claimers)
        ]

    def _endpoint(self, push: PushOptions) -> Endpoint:
        return Endpoint(
            push.url,
            opened=self.allow.permits(push.url),
            max_idle=self._capacity(self.engine.queue_options().get(self.queue)),
            max_bytes=MAX_ANSWER_BYTES,
        )

    def _prepare(self, push: PushOptions) -> None:
        """Make once what every push with these options sends alike: the request's head
        (request line, Host, the constant headers and the queue's own), the body's start,
        the secrets' keyed HMACs, and whether the allow list refuses the URL outright (the
        list is the server's, fixed while it runs)."""
        endpoint = self.endpoint
        self._refused = self.allow.refused_without_dns(push.url)
        self._custom = [
            (name.lower(), b"%s: %s\r\n" % (name.encode(), value.encode()))
            for name, value in push.headers.items()
        ]
        self._bare_head = endpoint.head(_CONSTANT_HEADERS)
        self._head = self._bare_head + b"".join(line for _, line in self._custom)
        self._body_start = b'{"queue":' + msgspec.json.encode(self.queue) + b","
        self._keyed = {
            secret: signing.Keyed(secret)
            for secret in (push.secret, push.previous_secret)
            if secret is not None
        }

    @staticmethod
    def _capacity(options: QueueOptions | None) -> int:
        if options is None or options.concurrency is None:
            return DEFAULT_IN_FLIGHT
        return min(options.concurrency, 1024)

    def update(self, push: PushOptions) -> None:
        """The queue's push option changed (its URL, headers, timeout, secret)."""
        if push.url != self.push.url:
            old = self.endpoint
            self.endpoint = self._endpoint(push)
            self._close_later(old)
        self._prepare(push)
        self.push = push
        self.failures = 0
        self._pause_until = 0.0
        self._room.set()
        self._interrupt()

    def _close_later(self, endpoint: Endpoint) -> None:
        async def close() -> None:
            if self.in_flight:  # those that use the old endpoint end first
                await asyncio.wait(list(self.in_flight), timeout=STOP_GRACE_S)
            endpoint.close()

        job = asyncio.create_task(close())
        self._closing.add(job)
        job.add_done_callback(self._closing.discard)

    def halt(self) -> None:
        """Claim no more, from now on (the parked claim takes nothing when woken)."""
        self._stopping = True
        self._interrupt()

    async def stop(self) -> None:
        """Claim no more; let the pushes in flight end for a while, then drop them (their
        leases run out and the tasks are pushed again)."""
        self.halt()
        self._room.set()
        for runner in self.runners:
            runner.cancel()
        for runner in self.runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self.in_flight:
            _, pending = await asyncio.wait(self.in_flight, timeout=STOP_GRACE_S)
            for job in pending:
                job.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._flush()
        self.endpoint.close()

    async def _run(self) -> None:
        engine = self.engine
        while not self._stopping and not engine.draining:
            options = engine.queue_options().get(self.queue)
            if options is None or options.push is None:
                return
            capacity = self._capacity(options)
            room = capacity - len(self.in_flight) - self._reserved
            if self.failures:
                room = min(room, 1 - len(self.in_flight) - self._reserved)  # a probe, alone
                pause = self._pause_until - time.monotonic()
                if pause > 0 and room > 0:
                    await self._flush()
                    await asyncio.sleep(pause)
                    continue
            # Under load, claim for a few ended pushes at once rather than for each: one
            # store transaction then carries their acks and the next tasks.
            busy = self.in_flight or self._reserved
            if room <= 0 or (room < capacity // CLAIM_SHARE and busy):
                await self._wait_for_room()
                continue
            # The acks of the pushes that ended ride on the claim: one store transaction.
            acks, self._acks = self._acks, []
            gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._gones.add(gone)
            self._reserved += room
            # A busy queue's claim takes what is ready and comes back: the pushes that end
            # meanwhile leave their acks to the next claim. Only a claim that found nothing
            # is followed by a long poll, which the acks do not wait for.
            parks = not self._busy
            if not parks:
                self._claiming += 1
            start = time.time_ns()
            try:
                tasks = await engine.poll(
                    self.queue, acks, room, CLAIM_WAIT_S if parks else 0.0, "katar-push", gone
                )
            except QueueNotFound:
                return
            except KatarError as exc:  # the store is out: try again in a moment
                log.warning("push queue %s: cannot claim: %s", self.queue, exc.message)
                self._acks[:0] = acks  # sent again (acks are idempotent)
                self._busy = False
                await asyncio.sleep(1.0)
                continue
            finally:
                self._reserved -= room
                self._gones.discard(gone)
                if not parks:
                    self._claiming -= 1
            self._busy = bool(tasks)
            if self.tracing is not None and tasks:  # the claim: a receive span
                self.tracing.receive(self.queue, tasks, start, name="claim")
            for task in tasks:
                job = asyncio.create_task(self._deliver(task))
                self.in_flight.add(job)
                job.add_done_callback(self._ended)

    async def _wait_for_room(self) -> None:
        """Wait until a push ends; and send the acks that wait for a claim once the oldest
        has waited ACK_DELAY_S (their leases run: no claim may hold them back long)."""
        self._room.clear()
        self._waiting += 1
        try:
            if not self._acks:
                await self._room.wait()
                return
            left = self._acks_since + ACK_DELAY_S - time.monotonic()
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    await self._room.wait()
            except TimeoutError:
                await self._flush()
        finally:
            self._waiting -= 1

    def _interrupt(self) -> None:
        """End the claim parked in a long poll without taking anything (Engine.poll's
        ``gone``): the pusher looks again at its room and its pause."""
        for gone in self._gones:
            if not gone.done():
                gone.set_result(None)

    def _ended(self, job: asyncio.Task[None]) -> None:
        self.in_flight.discard(job)
        self._room.set()
        if not job.cancelled() and job.exception() is not None:
            log.error("push queue %s: a push failed", self.queue, exc_info=job.exception())

    async def _deliver(self, task: Task) -> None:
        outcome = await (self._push(task, {}) if task.trace is None else self._traced_push(task))
        if self.tracing is not None:  # the push's outcome settles the delivery
            ack = outcome.ack
            self.tracing.settle(self.queue, [(task.id, ack.status)], time.time_ns(), tasks=[task])
        answer = outcome.answer
        self.engine.counters.pushed(self.queue, answer)
        if answer.outcome == "done":
            self.failures = 0
        else:
            self.failures += 1
            options = self.engine.queue_options().get(self.queue)
            first = (options.retry_delay if options is not None else 1000) / 1000
            pause = min(first * 2 ** min(self.failures - 1, 20), MAX_PAUSE_S)
            if outcome.retry_after is not None:
                pause = max(pause, outcome.retry_after)
            self._pause_until = time.monotonic() + pause
            self._interrupt()  # a claim parked for many tasks takes none: probes now
            log.info(
                "push queue %s: task %d delivery %d %s: %s",
                self.queue,
                task.id,
                task.attempts,
                answer.outcome,
                answer.error,
            )
        if (self._waiting or self._claiming) and not self._stopping:
            # A claimer waits for room, or a claim that does not park is under way: the
            # next claim sends the ack, or the claimer alone after ACK_DELAY_S.
            if not self._acks:
                self._acks_since = time.monotonic()
            self._acks.append(outcome.ack)
            return
        await self._send((outcome.ack,))

    async def _flush(self) -> None:
        """Send the acks that wait for a claim, when no claim comes soon."""
        if self._acks:
            acks, self._acks = self._acks, []
            await self._send(acks)

    async def _send(self, acks: Sequence[Ack]) -> None:
        """Apply acks now, retrying a while when the store is out."""
        for wait in (0.1, 0.5, 2.0, 5.0, None):
            try:
                await self.engine.poll(self.queue, acks, 0, 0.0, "katar-push")
                return
            except QueueNotFound:
                return
            except KatarError as exc:  # the store is out: the lease keeps the task safe
                if wait is None:
                    log.warning(
                        "push queue %s: cannot ack %d task(s) (their leases will run out "
                        "and they will be pushed again): %s",
                        self.queue,
                        len(acks),
                        exc.message,
                    )
                    return
                await asyncio.sleep(wait)

    async def _traced_push(self, task: Task) -> Outcome:
        """The push, carrying the task's trace context: in a ``process <queue>`` span (whose
        context the request carries) when the server exports spans, else as enqueued."""
        tracing = self.tracing
        if task.trace is None:
            return await self._push(task, {})
        if tracing is None:
            return await self._push(task, trace_headers(task.trace))
        with tracing.process(self.queue, task) as span:
            outcome = await self._push(task, tracing.inject(span))
            if span is not None:
                answer = outcome.answer
                if answer.status is not None:
                    span.set_attribute("http.response.status_code", answer.status)
                if answer.outcome != "done":
                    span.set_error(answer.error)
            return outcome

    async def _push(self, task: Task, trace: dict[str, str]) -> Outcome:
        push = self.push
        started = time.monotonic()
        at = self.engine.clock.now_ms()
        timeout_ms = push.timeout
        if task.lease_until is not None:
            timeout_ms = min(timeout_ms, task.lease_until - at - LEASE_MARGIN_MS)
        seconds = max(timeout_ms, 100) / 1000
        why = self._refused
        if why is not None:
            error = f"push refused: the URL {why}; see [push] allow"
            return self._failed(task, at, started, "refused", error)
        # What a push sends: the task as a poll delivers it, plus its queue's name.
        body = self._body_start + delivery(task)[1:]
        msg_id = b"%d-%d" % (task.id, task.attempts)
        timestamp = int(time.time())
        keyed = self._keyed
        signature = signing.signed([keyed[s] for s in push.secrets(at)], msg_id, timestamp, body)
        head = self._head
        if trace:  # the task's context wins over the queue's headers of the same name
            head = b"".join(
                (
                    self._bare_head,
                    *(line for name, line in self._custom if name not in trace),
                    *(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in trace.items()),
                )
            )
        message = b"".join(
            (
                head,
                b"Content-Length: %d\r\nwebhook-id: %s\r\nwebhook-timestamp: %d\r\n"
                b"webhook-signature: %s\r\n\r\n" % (len(body), msg_id, timestamp, signature),
                body,
            )
        )
        try:
            answer = await self.endpoint.send(message, seconds)
        except TimeoutError:
            error = f"push timed out: no answer within {seconds:g} s"
            return self._failed(task, at, started, "timeout", error)
        except Refused as exc:
            return self._failed(task, at, started, "refused", f"push refused: {exc}")
        except Unreachable as exc:
            return self._failed(task, at, started, "unreachable", f"push failed: {exc}")
        except OSError as exc:
            error = f"push failed: cannot reach {push.url}: {exc}"
            return self._failed(task, at, started, "unreachable", error)
        status = answer.status
        ms = int((time.monotonic() - started) * 1000)
        if 200 <= status < 300:
            result = _NO_RESULT
            content = answer.body
            if (
                content
                and not answer.cut
                and "json" in answer.headers.get("content-type", "")
                and content.strip()
            ):
                try:
                    msgspec.json.decode(content)
                    result = msgspec.Raw(content)
                except msgspec.DecodeError:
                    pass
            ack = Ack(task_id=task.id, status="done", result=result, attempt=task.attempts)
            return Outcome(ack, PushAnswer(at, "done", status, ms))
        later = None
        if status in (429, 503):
            later = retry_after(answer.headers.get("retry-after"), time.time())
        text = answer.body[:200].decode("utf-8", "replace").strip()
        error = f"push answered {status}" + (f": {text}" if text else "")
        outcome = self._failed(task, at, started, "failed", error, status)
        outcome.retry_after = later
        return outcome

    @staticmethod
    def _failed(
        task: Task, at: int, started: float, outcome: str, error: str, status: int | None = None
    ) -> Outcome:
        """A failed push's outcome: a failed attempt, retried with the queue's backoff."""
        ms = int((time.monotonic() - started) * 1000)
        ack = Ack(task_id=task.id, status="failed", error=error, attempt=task.attempts, retry=True)
        return Outcome(ack, PushAnswer(at, outcome, status, ms, error))


class Dispatcher:
    """Every push queue's pusher on this server, started and stopped as queues come and
    go (a look at the engine's queues every WATCH_INTERVAL_S)."""

    def __init__(
        self, engine: Engine, allow: Allow | None = None, tracing: Tracing | None = None
    ) -> None:
        self.engine = engine
        self.allow = allow if allow is not None else Allow()
        #: The server's spans (katar.tracing), or None; set before start (katar serve makes
        #: its Tracing in the process that serves).
        self.tracing = tracing
        self.pushers: dict[str, QueuePusher] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        #: The completion webhooks (katar.push.notify), started and stopped with the pushes.
        self.notifier = Notifier(engine, self.allow)

    def check(self, name: str, options: QueueOptions) -> None:
        """The engine's check of a queue's new options (Engine.option_checks): a push URL
        known not to be allowed is bad input (422); a queue that stops being a push queue
        stops its pusher now, before the change wakes the pusher's parked claim."""
        self.notifier.check(name, options)
        if options.push is not None:
            self.allow.check(options.push.url)
        elif name in self.pushers:
            self._retire(name)

    def _retire(self, name: str) -> None:
        pusher = self.pushers.pop(name)
        pusher.halt()
        job = asyncio.create_task(pusher.stop())
        self._stopping.add(job)
        job.add_done_callback(self._stopping.discard)

    def start(self) -> None:
        """Start pushing (after the engine is open)."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="katar-push")
            self.notifier.start()

    async def stop(self) -> None:
        """Stop claiming; let the pushes in flight end (see QueuePusher.stop)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        pushers, self.pushers = list(self.pushers.values()), {}
        await asyncio.gather(
            *(pusher.stop() for pusher in pushers), *self._stopping, self.notifier.stop()
        )

    async def _watch(self) -> None:
        while True:
            self.sync()
            await asyncio.sleep(WATCH_INTERVAL_S)

    def sync(self) -> None:
        """Start a pusher for each push queue, update or stop the others."""
        self.notifier.sync()
        queues = self.engine.queue_options()
        for name, options in queues.items():
            push = options.push
            if push is None:
                continue
            pusher = self.pushers.get(name)
            if pusher is None:
                self.pushers[name] = QueuePusher(self.engine, name, push, self.allow, self.tracing)
            elif pusher.push != push:
                pusher.update(push)
        for name in [n for n in self.pushers if n not in queues or queues[n].push is None]:
            self._retire(name)
