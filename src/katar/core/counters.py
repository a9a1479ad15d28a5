"""What this process has done since it started, per queue: the counters and histograms that
``GET /metrics`` and the throughput history read.

The histograms are written here rather than taken from a Prometheus client library: the
engine observes one on every delivery and every ack, so a poll's observations must cost a
bisect into a fixed list of bounds per distinct duration and a few additions; and the
exposition is a few lines of text (katar.http.metrics). A library would also keep a second,
global registry of figures beside the engine's own.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Final, Protocol

#: Upper bounds of the histograms' buckets, in seconds (Prometheus's ``le``), from a
#: millisecond to a day: a task's wait and run time span that range. ``+Inf`` is implicit.
BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    21600.0,
    86400.0,
)
_BOUNDS_MS: Final = tuple(bound * 1000 for bound in BUCKETS)

#: From how many durations Histogram.observe counts them by value first.
_GROUPED: Final = 16

#: The most deliveries whose start a server remembers for katar_run_seconds: past that many
#: unacknowledged deliveries still in their lease, new ones go unmeasured (their acks still
#: count).
MAX_TIMED_DELIVERIES: Final = 100_000

#: Why a limit held a poll back (katar_limited_polls_total's ``reason``).
LIMIT_REASONS: Final = ("rate", "concurrency", "paused", "key_rate")


class Histogram:
    """Observations of a duration, in buckets (counts per bucket, not yet cumulative)."""

    __slots__ = ("count", "counts", "sum_ms")

    def __init__(self) -> None:
        #: Per bucket of BUCKETS, then one for what is above the last bound.
        self.counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.sum_ms = 0

    def observe(self, durations: Sequence[int]) -> None:
        """Count durations in milliseconds (a negative one, from a clock that stepped back,
        counts as 0): those of a poll's tasks at once, this being on every poll's path."""
        counts = self.counts
        if len(durations) < _GROUPED:  # one by one: a Counter costs more than it saves
            for ms in durations:
                if ms < 0:
                    ms = 0
                counts[bisect_left(_BOUNDS_MS, ms)] += 1
                self.sum_ms += ms
            self.count += len(durations)
            return
        # Counted by value first (in C): a poll's tasks mostly share one duration (they were
        # delivered together, or enqueued together), so the loop runs a few times.
        total = 0
        for ms, times in Counter(durations).items():
            if ms < 0:
                ms = 0
            counts[bisect_left(_BOUNDS_MS, ms)] += times
            total += ms * times
        self.count += len(durations)
        self.sum_ms += total

    def cumulative(self) -> list[int]:
        """The count at or below each bound of BUCKETS, then the total (``+Inf``)."""
        total, result = 0, []
        for count in self.counts:
            total += count
            result.append(total)
        return result


#: A push's outcomes: answered 2xx; answered otherwise; no answer in time; no connection
#: (refused, reset, unresolvable); refused by the outbound safety before connecting.
PUSH_OUTCOMES: Final = ("done", "failed", "timeout", "unreachable", "refused")
#: The answers of a push queue's endpoint kept for the dashboard.
PUSH_ANSWERS_KEPT: Final = 50


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """One push and how its endpoint answered."""

    at: int  # ms since the epoch, when the push started
    outcome: str  # one of PUSH_OUTCOMES
    status: int | None  # the HTTP status, None without an answer
    ms: int  # how long it took
    error: str | None = None  # what went wrong, in words


#: A completion-webhook event's send outcomes (katar.push.notify): answered 2xx; not (an
#: answer other than 2xx, no answer in time, no connection); refused by the outbound safety.
NOTIFY_OUTCOMES: Final = ("sent", "failed", "refused")


@dataclass(frozen=True, slots=True)
class NotifyAnswer:
    """One send of a completion-webhook event and how its endpoint answered."""

    at: int  # ms since the epoch, when the send started
    outcome: str  # one of NOTIFY_OUTCOMES
    status: int | None  # the HTTP status, None without an answer
    ms: int  # how long it took
    task_id: int  # the task whose end it tells
    event: str  # its type: task.done, ...
    error: str | None = None  # what went wrong, in words


def _add(counter: dict[str, int], queue: str, n: int = 1) -> None:
    counter[queue] = counter.get(queue, 0) + n


@dataclass(slots=True)
class Counters:
    """What this process has done since it started, per queue (for /metrics)."""

    enqueued: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    #: "done" acks this server applied.
    done: dict[str, int] = field(default_factory=dict)
    #: "failed" acks this server applied, the task retried or not.
    failed: dict[str, int] = field(default_factory=dict)
    #: Tasks queued again: after a failed ack or an expired lease, or by an operator.
    retries: dict[str, int] = field(default_factory=dict)
    #: Deliveries whose lease ran out without an ack.
    lease_expiries: dict[str, int] = field(default_factory=dict)
    #: Tasks that became cancelled (by an operator, an expiry, a dependency).
    cancellations: dict[str, int] = field(default_factory=dict)
    #: Tasks that failed for good here and moved to the queue's dead-letter queue, by the
    #: queue they failed in.
    dead_lettered: dict[str, int] = field(default_factory=dict)
    #: Tasks a redrive moved out of the queue.
    redriven: dict[str, int] = field(default_factory=dict)
    #: Polls a limit held back, per (queue, reason of LIMIT_REASONS).
    limited_polls: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Seconds from enqueue (or the end of a delay) to the first delivery.
    wait: dict[str, Histogram] = field(default_factory=dict)
    #: Seconds from a delivery to the ack that ended it (done or failed).
    run: dict[str, Histogram] = field(default_factory=dict)
    #: Pushes this server made (katar.push), per (queue, outcome of PUSH_OUTCOMES).
    pushes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Completion webhooks' events by (queue, outcome): sent, failed (a send to retry),
    #: dropped (past the outbox's bound), refused (the outbound safety).
    notifies: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Seconds from a push's start to its answer (or its failure).
    push_latency: dict[str, Histogram] = field(default_factory=dict)
    #: The last answers of each push queue's endpoint, newest last (for the dashboard).
    push_answers: dict[str, deque[PushAnswer]] = field(default_factory=dict)
    #: The last answers of each notify queue's endpoint, newest last (for the dashboard).
    notify_answers: dict[str, deque[NotifyAnswer]] = field(default_factory=dict)

    def notified(self, queue: str, outcome: str, count: int = 1) -> None:
        """Count completion-webhook events by outcome."""
        key = (queue, outcome)
        self.notifies[key] = self.notifies.get(key, 0) + count

    def notify_answered(self, queue: str, answer: NotifyAnswer) -> None:
        """Count an event's send by outcome and keep its answer among the last."""
        self.notified(queue, answer.outcome)
        answers = self.notify_answers.get(queue)
        if answers is None:
            answers = self.notify_answers[queue] = deque(maxlen=PUSH_ANSWERS_KEPT)
        answers.append(answer)

    def pushed(self, queue: str, answer: PushAnswer) -> None:
        """Count a push's outcome, observe its latency, keep its answer among the last."""
        key = (queue, answer.outcome)
        self.pushes[key] = self.pushes.get(key, 0) + 1
        self.observe(self.push_latency, queue, (answer.ms,))
        answers = self.push_answers.get(queue)
        if answers is None:
            answers = self.push_answers[queue] = deque(maxlen=PUSH_ANSWERS_KEPT)
        answers.append(answer)

    def add(self, counter: dict[str, int], queue: str, n: int = 1) -> None:
        """Add ``n`` to the queue's count in ``counter`` (one of this object's)."""
        _add(counter, queue, n)

    def limited(self, queue: str, reason: str) -> None:
        """Count a poll that a limit held back."""
        key = (queue, reason)
        self.limited_polls[key] = self.limited_polls.get(key, 0) + 1

    def observe(self, histograms: dict[str, Histogram], queue: str, ms: Sequence[int]) -> None:
        """Observe durations in the queue's histogram of ``histograms`` (wait or run)."""
        histogram = histograms.get(queue)
        if histogram is None:
            histogram = histograms[queue] = Histogram()
        histogram.observe(ms)

    def forget(self, queue: str) -> None:
        """Drop a deleted queue's figures (a queue created again starts from zero)."""
        for counter in (
            self.enqueued,
            self.delivered,
            self.done,
            self.failed,
            self.retries,
            self.lease_expiries,
            self.cancellations,
            self.dead_lettered,
            self.redriven,
        ):
            counter.pop(queue, None)
        for histograms in (self.wait, self.run, self.push_latency):
            histograms.pop(queue, None)
        self.push_answers.pop(queue, None)
        self.notify_answers.pop(queue, None)
        for pairs in (self.limited_polls, self.pushes, self.notifies):
            for key in [key for key in pairs if key[0] == queue]:
                del pairs[key]


class Leased(Protocol):
    """What DeliveryStarts reads of a delivered task (katar.core.model.Task has it)."""

    @property
    def id(self) -> int: ...
    @property
    def lease_until(self) -> int | None: ...


_id: Final = attrgetter("id")
_lease_until: Final = attrgetter("lease_until")


class DeliveryStarts:
    """When this process delivered each task it leased, for katar_run_seconds: the ack that
    ends the delivery takes its start (ms) out, by the task's id as the wire writes it.

    The "done" fast path of the stores builds no task, so the ack's own id is what finds the
    start; keyed by the string, an ack's id finds it without being parsed again (what these
    metrics cost a poll: docs/benchmarks.md, "Batched drain A/B").

    An entry may never meet its ack here: on a store that servers share, the ack, or the
    reap of an expired lease, may go through another server. So an entry also goes when the
    delivery's lease has run out as this process knows it (a heartbeat acked here extends
    it), and there are at most ``limit`` entries: what is held is bounded by the deliveries
    in their lease, whoever acks them. A delivery acked here after its lease was extended
    through another server is not timed.
    """

    __slots__ = ("_prune_at", "_starts", "limit")

    def __init__(self, limit: int = MAX_TIMED_DELIVERIES) -> None:
        self.limit = limit
        #: Per task id: (start, lease end), both ms. Insertion order is about lease order
        #: (one timeout per queue), which _prune walks from the front. The tasks of one
        #: large claim share one tuple.
        self._starts: dict[str, tuple[int, int]] = {}
        #: The front entry's lease end: no pruning is due before (None: empty).
        self._prune_at: int | None = None

    def __len__(self) -> int:
        return len(self._starts)

    def started(self, tasks: Sequence[Leased], now: int) -> None:
        """Remember the start of the deliveries of ``tasks``, made at ``now``."""
        starts = self._starts
        if self._prune_at is not None and self._prune_at <= now:
            self._prune(now)
        if len(starts) + len(tasks) > self.limit:
            return
        if len(tasks) < _GROUPED:  # one by one: the fewest steps for the seed's one-task poll
            for task in tasks:
                if task.lease_until is not None:
                    starts[str(task.id)] = (now, task.lease_until)
        else:
            self._started_many(tasks, now)
        if self._prune_at is None and starts:
            self._prune_at = next(iter(starts.values()))[1]

    def _started_many(self, tasks: Sequence[Leased], now: int) -> None:
        """started for a large claim: its tasks mostly share one lease (their queue's
        timeout), and then one entry, written in C, without a step per task in Python."""
        starts = self._starts
        ends = set(map(_lease_until, tasks))
        if len(ends) == 1:
            (until,) = ends
            if until is not None:
                starts.update(zip(map(str, map(_id, tasks)), repeat((now, until))))
            return
        stamp: tuple[int, int] | None = None
        for task in tasks:
            until = task.lease_until
            if until is None:
                continue
            if stamp is None or stamp[1] != until:  # a task with a timeout of its own
                stamp = (now, until)
            starts[str(task.id)] = stamp

    def extended(self, task_id: str, now: int) -> None:
        """A heartbeat for the task was applied here at ``now``: its lease runs as long again
        from now (the entry moves to the end, with the leases made now)."""
        stamp = self._starts.pop(task_id, None)
        if stamp is not None:
            start, until = stamp
            # As long as the delivery's own lease: the task's timeout, or its queue's.
            self._starts[task_id] = (start, now + (until - start))
            if self._prune_at is None or len(self._starts) == 1:
                self._prune_at = next(iter(self._starts.values()))[1]

    def ended(self, task_id: str) -> int | None:
        """The start of the task's delivery, forgotten; None if not known here."""
        stamp = self._starts.pop(task_id, None)
        if not self._starts:
            self._prune_at = None
        return None if stamp is None else stamp[0]

    def ran(self, task_ids: Iterable[str | int], now: int) -> list[int]:
        """How long (ms, to ``now``) the deliveries of the tasks ran, those known here, each
        forgotten: ended for a poll's acks at once (ids as the wire or the store has them)."""
        starts = self._starts
        ran = []
        for key in task_ids:
            stamp = starts.pop(key if isinstance(key, str) else str(key), None)
            if stamp is not None:
                ran.append(now - stamp[0])
        if not starts:
            self._prune_at = None
        return ran

    def _prune(self, now: int) -> None:
        """Forget the deliveries from the front whose lease has run out by ``now``."""
        starts = self._starts
        expired = []
        for task_id, (_, until) in starts.items():
            if until > now:
                self._prune_at = until
                break
            expired.append(task_id)
        else:
            self._prune_at = None
        for task_id in expired:
            del starts[task_id]
