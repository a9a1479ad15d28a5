"""The throughput history behind ``GET /v1/throughput``: enqueued, done and failed tasks per
second, per queue, over the last ten minutes, for the dashboard's charts.

A background task of the app reads the engine's counters (katar.core.counters) every
INTERVAL seconds into a ring buffer of the last SAMPLES readings; an answer is the
differences between consecutive readings. An idle server costs a wake-up every two seconds
and a look at each queue's three counts; a reading equal to the one before is not kept
twice (the ring holds the same object).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from katar.core.counters import Counters
from katar.protocol import Rates, Throughput, ThroughputSample

#: Seconds between two readings.
INTERVAL: Final = 2
#: Readings kept: ten minutes' worth.
SAMPLES: Final = 300
#: The longest history an answer covers, in seconds.
MAX_SECONDS: Final = INTERVAL * SAMPLES

#: One reading: per queue, the counts (enqueued, done, failed) since the server started.
Reading = dict[str, tuple[int, int, int]]


def read(counters: Counters) -> Reading:
    """The counts now."""
    enqueued, done, failed = counters.enqueued, counters.done, counters.failed
    return {
        queue: (enqueued.get(queue, 0), done.get(queue, 0), failed.get(queue, 0))
        for queue in {**enqueued, **done, **failed}
    }


class Sampler:
    """The ring buffer of readings, and the task that fills it."""

    def __init__(self, counters: Counters, now: Callable[[], float]) -> None:
        self._counters = counters
        self._now = now  # seconds since the epoch
        self._readings: deque[tuple[float, Reading]] = deque(maxlen=SAMPLES + 1)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Take a reading (the background task does it every INTERVAL seconds)."""
        reading = read(self._counters)
        if self._readings and self._readings[-1][1] == reading:
            reading = self._readings[-1][1]  # idle: share the last one
        self._readings.append((self._now(), reading))

    def start(self) -> None:
        """Start sampling (with the app)."""
        if self._task is None:
            self.sample()
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop sampling (with the app)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            self.sample()

    def history(self, seconds: float, visible: Callable[[str], bool]) -> Throughput:
        """The rates over the last ``seconds`` (at most MAX_SECONDS), oldest first, of the
        queues for which ``visible`` answers True."""
        readings = list(self._readings)
        samples: list[ThroughputSample] = []
        if not readings:
            return Throughput(INTERVAL, samples)
        cutoff = readings[-1][0] - seconds
        for (started, before), (at, after) in itertools.pairwise(readings):
            if at <= cutoff:
                continue
            span = at - started
            queues = {}
            for queue, counts in after.items():
                if visible(queue):
                    old = before.get(queue, _NONE)
                    rates = (_rate(n, o, span) for n, o in zip(counts, old, strict=True))
                    queues[queue] = Rates(*rates)
            samples.append(ThroughputSample(_iso(at), queues))
        return Throughput(INTERVAL, samples)


_NONE: Final = (0, 0, 0)


def _rate(new: int, old: int, span: float) -> float:
    """Per second; a count that went down (its queue deleted and made again) counts from 0."""
    if span <= 0:
        return 0.0
    return round((new - old if new >= old else new) / span, 3)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
