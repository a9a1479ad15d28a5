"""``GET /metrics``: Prometheus's text exposition format (version 0.0.4).

Written by hand: the format is a few lines of text, and the figures already live in the
engine and the application, so a client library would only add a second set of counters.
Counters are this process's since it started (Prometheus handles restarts); the task gauges
come from the store, so every server of a PostgreSQL cluster reports the same totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from katar._version import __version__
from katar.core.engine import Counters

CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(
    stats: Mapping[str, Mapping[str, int]],
    counters: Counters,
    requests: Mapping[tuple[str, str, int], int],
    long_polls: int,
) -> bytes:
    """The metrics page."""
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
    for name, text, values in (
        ("enqueued", "Tasks enqueued through this server", counters.enqueued),
        ("delivered", "Task deliveries to workers by this server", counters.delivered),
    ):
        lines += [f"# HELP katar_{name}_total {text}.", f"# TYPE katar_{name}_total counter"]
        for queue, count in sorted(values.items()):
            lines.append(f'katar_{name}_total{{queue="{_label(queue)}"}} {count}')
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
