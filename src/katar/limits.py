"""Bounds on what one request may ask of a server (the configuration's ``[limits]``).

Not an HTTP concept alone: the configuration reads them and the HTTP layer enforces them, so
they live below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from katar.core.model import MAX_QUEUE_NAME
from katar.errors import ConfigError, PayloadTooLarge

#: A delivery's bytes beside its data: {"_id":"<19 digits>","data":,"attempt":<10 digits>},
_DELIVERY_BYTES: Final = 64
#: What max_answer_bytes holds beyond one task's data, at least (one task record).
_ANSWER_MARGIN: Final = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds on what one request may ask; each breach is answered with a clear 4xx."""

    max_body_bytes: int = 10 * 1024 * 1024  # a request body; 413 above it
    max_task_bytes: int = 1024 * 1024  # one task's data, as JSON; 413 above it
    max_tasks_per_enqueue: int = 10_000  # tasks in one POST .../tasks; 422 above it
    max_wait: float = 60.0  # seconds a long poll or an outcome wait may hold; 422 above it
    #: Long polls (and outcome waits, GET .../tasks/{id}?wait=) held at once by this server;
    #: 429 above it. The two below are the shares of it one queue and one token may hold, so
    #: that the polls of one scope never leave another's none.
    max_long_polls: int = 10_000
    max_long_polls_per_queue: int = 2_500
    max_long_polls_per_token: int = 5_000
    max_list: int = 1000  # tasks in one page of GET .../tasks; 422 above it
    #: Bytes of one answer's body: a page of tasks ends early (its "next" says where to go
    #: on), a poll takes fewer tasks, so that the answer fits.
    max_answer_bytes: int = 128 * 1024 * 1024
    max_queue_name: int = 128  # characters in a new queue's name; 422 above it
    head_timeout: float = 10.0  # seconds to send a request's line and headers; 408, closed
    body_timeout: float = 30.0  # seconds to send a request's body; 408, closed

    def __post_init__(self) -> None:
        if not 1 <= self.max_queue_name <= MAX_QUEUE_NAME:
            raise ConfigError(f"max_queue_name must be from 1 to {MAX_QUEUE_NAME}")
        if self.max_answer_bytes < self.max_task_bytes + _ANSWER_MARGIN:
            raise ConfigError(
                f"max_answer_bytes must hold one task: at least max_task_bytes + {_ANSWER_MARGIN}"
            )

    @property
    def max_poll(self) -> int:
        """The most tasks one poll takes, so that its answer fits in max_answer_bytes with
        tasks of max_task_bytes: the cut is made before tasks are leased."""
        return max(1, (self.max_answer_bytes - 16) // (self.max_task_bytes + _DELIVERY_BYTES))


def task_too_large(
    where: str, size: int, max_task_bytes: int, attributes: int = 0
) -> PayloadTooLarge:
    """The error for a task's data of ``size`` bytes of JSON, with ``attributes`` bytes of
    message attributes, over ``max_task_bytes`` (the caller compares): for an enqueue's
    task, and for a schedule, whose ticks make tasks of its data. ``where`` names it, e.g.
    "tasks[3]" or "schedule"."""
    if attributes:
        return PayloadTooLarge(
            f"{where}: data ({size} bytes of JSON) and attributes ({attributes} bytes: names, "
            f"types and values) are {size + attributes} bytes, over the limit of "
            f"{max_task_bytes}; store large payloads elsewhere and enqueue a reference to them"
        )
    return PayloadTooLarge(
        f"{where}: data is {size} bytes of JSON, over the limit of {max_task_bytes}; "
        "store large payloads elsewhere and enqueue a reference to them"
    )
