"""The Python client: workers and producers over Katar's HTTP protocol, on httpx.

Blocking and asyncio flavours with the same methods: :class:`Worker` / :class:`AsyncWorker`,
:class:`Producer` / :class:`AsyncProducer`. Errors come from one root,
:class:`katar.errors.KatarError`: :class:`~katar.errors.TransportError` (no answer),
:class:`~katar.errors.RequestRejected` (4xx), :class:`~katar.errors.ServerUnavailable` (5xx).
"""

from katar.client.producer import AsyncProducer, Producer
from katar.client.worker import AsyncWorker, Fail, Job, Retry, Worker
from katar.errors import (
    APIError,
    ClientError,
    RequestRejected,
    ServerUnavailable,
    TransportError,
)
from katar.protocol import (
    BulkDone,
    DeadLetterRecord,
    EnqueueOptions,
    MoveJobRecord,
    QueueInfo,
    QueueSummary,
    Redriven,
    ScheduleRecord,
    TaskOptions,
    TaskRecord,
    WorkerSeen,
)

__all__ = [
    "APIError",
    "AsyncProducer",
    "AsyncWorker",
    "BulkDone",
    "ClientError",
    "DeadLetterRecord",
    "EnqueueOptions",
    "Fail",
    "Job",
    "MoveJobRecord",
    "Producer",
    "QueueInfo",
    "QueueSummary",
    "Redriven",
    "RequestRejected",
    "Retry",
    "ScheduleRecord",
    "ServerUnavailable",
    "TaskOptions",
    "TaskRecord",
    "TransportError",
    "Worker",
    "WorkerSeen",
]
