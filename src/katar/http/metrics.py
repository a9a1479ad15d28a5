"""``GET /metrics``: Prometheus's text exposition format (version 0.0.4).

Written by hand: the format is a few lines of text, and the figures already live in the
engine (katar.core.counters) and the application, so a client library would only add a
second set of counters. Counters and histograms are this process's since it started
(Prometheus handles restarts); the task gauges come from the store, so every server of a
PostgreSQL cluster reports the same totals. docs/operations.md describes each metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from katar._version import __version__
from katar.core.counters import BUCKETS, Counters, Histogram

CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"

#: The per-queue counters: (name, help, the Counters field).
_COUNTERS: Final = (
    ("katar_tasks_enqueued_total", "Tasks enqueued through this server.", "enqueued"),
    ("katar_tasks_delivered_total", "Task deliveries to workers by this server.", "delivered"),
    ("katar_tasks_done_total", '"done" acks this server applied.', "done"),
    (
        "katar_tasks_failed_total",
        '"failed" acks this server applied, the task retried or not.',
        "failed",
    ),
    (
        "katar_retries_total",
        "Tasks queued again: after a failed ack or an expired lease, or by an operator.",
        "retries",
    ),
    (
        "katar_lease_expiries_total",
        "Deliveries whose lease ran out without an ack, found by this server.",
        "lease_expiries",
    ),
    (
        "katar_cancellations_total",
        "Tasks cancelled through this server (by an operator, an expiry, a dependency).",
        "cancellations",
    ),
    (
        "katar_dead_lettered_total",
        "Tasks that failed for good in the queue and moved to its dead-letter queue.",
        "dead_lettered",
    ),
    ("katar_redriven_total", "Tasks a redrive moved out of the queue.", "redriven"),
)
_LE: Final = (*tuple(f"{bound:g}" for bound in BUCKETS), "+Inf")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _histogram(lines: list[str], name: str, text: str, values: Mapping[str, Histogram]) -> None:
    lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
    for queue, histogram in sorted(values.items()):
        label = _label(queue)
        for le, count in zip(_LE, histogram.cumulative(), strict=True):
            lines.append(f'{name}_bucket{{queue="{label}",le="{le}"}} {count}')
        lines.append(f'{name}_sum{{queue="{label}"}} {histogram.sum_ms / 1000}')
        lines.append(f'{name}_count{{queue="{label}"}} {histogram.count}')


def render(
    stats: Mapping[str, Mapping[str, int]],
    counters: Counters,
    requests: Mapping[tuple[str, str, int], int],
    long_polls: int,
    oldest_queued: Mapping[str, int],
    now_ms: int,
) -> bytes:
    """The metrics page. ``oldest_queued``: per queue, when (ms) its oldest ready task
    became ready; ``now_ms`` the time to measure its age against."""
    lines = [
        "# HELP katar_info The server's version.",
        "# TYPE katar_info gauge",
        f'katar_info{{version="{_label(__version__)}"}} 1',
        "# HELP katar_tasks Tasks in the store, by queue and status.",
        "# TYPE katar_tasks gauge",
    ]
    for queue, counts in sorted(stats.items()):
        for status, count in counts.items():
            lines.append(f'katar_tasks{{queue="{_label(queue)}",status="{status}"}} {count}')
    lines += [
        "# HELP katar_oldest_queued_seconds Age of the oldest task ready to run, by queue"
        " (0 when none is).",
        "# TYPE katar_oldest_queued_seconds gauge",
    ]
    for queue in sorted(stats):
        since = oldest_queued.get(queue)
        age = 0.0 if since is None else max(now_ms - since, 0) / 1000
        lines.append(f'katar_oldest_queued_seconds{{queue="{_label(queue)}"}} {age:g}')
    for name, text, attribute in _COUNTERS:
        values: dict[str, int] = getattr(counters, attribute)
        lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
        for queue, count in sorted(values.items()):
            lines.append(f'{name}{{queue="{_label(queue)}"}} {count}')
    lines += [
        "# HELP katar_limited_polls_total Polls that took fewer tasks than asked because a"
        " limit (rate, concurrency, paused, key_rate) allowed no more.",
        "# TYPE katar_limited_polls_total counter",
    ]
    for (queue, reason), count in sorted(counters.limited_polls.items()):
        lines.append(
            f'katar_limited_polls_total{{queue="{_label(queue)}",reason="{reason}"}} {count}'
        )
    _histogram(
        lines,
        "katar_wait_seconds",
        "Time from enqueue to first delivery, by queue.",
        counters.wait,
    )
    _histogram(
        lines,
        "katar_run_seconds",
        "Time from a delivery to the ack that ended it (done or failed), by queue.",
        counters.run,
    )
    lines += [
        "# HELP katar_push_total Pushes this server made to push queues' endpoints, by"
        " outcome (done, failed, timeout, unreachable, refused).",
        "# TYPE katar_push_total counter",
    ]
    for (queue, outcome), count in sorted(counters.pushes.items()):
        lines.append(f'katar_push_total{{queue="{_label(queue)}",outcome="{outcome}"}} {count}')
    lines += [
        "# HELP katar_notify_total Completion-webhook events of queues with a notify option,"
        " by outcome (sent, failed: a send retried later, refused, dropped: past the bound"
        " of events kept).",
        "# TYPE katar_notify_total counter",
    ]
    for (queue, outcome), count in sorted(counters.notifies.items()):
        lines.append(f'katar_notify_total{{queue="{_label(queue)}",outcome="{outcome}"}} {count}')
    _histogram(
        lines,
        "katar_push_seconds",
        "Time from a push's start to its endpoint's answer (or its failure), by queue.",
        counters.push_latency,
    )
    lines += [
        "# HELP katar_long_polls Long polls this server holds now.",
        "# TYPE katar_long_polls gauge",
        f"katar_long_polls {long_polls}",
        "# HELP katar_http_requests_total HTTP requests answered, by route and status.",
        "# TYPE katar_http_requests_total counter",
    ]
    for (method, route, code), count in sorted(requests.items()):
        lines.append(
            f'katar_http_requests_total{{method="{_label(method)}",route="{_label(route)}",'
            f'status="{code}"}} {count}'
        )
    return ("\n".join(lines) + "\n").encode()
