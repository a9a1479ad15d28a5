"""Katar's exceptions: one root, a tree that callers can catch precisely.

    KatarError
    ├── ConfigError            a bad configuration file, option or store URL (start-up)
    ├── InvalidRequest         the caller's request is malformed or breaks a limit (4xx)
    │   ├── ValidationError    well-formed JSON with a wrong field (422)
    │   ├── PayloadTooLarge    a body over the size limit (413)
    │   └── HeadTooLarge       a request line and headers over the size limit (431)
    ├── AccessDenied           the request's token does not allow it
    │   ├── Unauthenticated    no token, or one the server does not know (401)
    │   └── Forbidden          a known token whose role or queues forbid this (403)
    ├── TooManyRequests        a server-wide limit is reached for now (429)
    ├── RequestTimeout         the client sent its request too slowly (408)
    ├── NotFound               (404)
    │   ├── QueueNotFound
    │   ├── TaskNotFound
    │   └── ScheduleNotFound
    ├── Conflict               the task's state does not allow the request (409)
    │   └── IllegalTransition
    ├── ShuttingDown           the server is draining (503)
    ├── StoreError             the store failed (500: a bug)
    │   └── StoreUnavailable   the store cannot be reached right now (503)
    │       └── OutcomeUnknown the connection was lost while committing: done or not (504)
    └── ClientError            raised by katar.client, never by the server
        ├── TransportError     no answer: connection refused or reset, time-out (transient)
        └── APIError           the server answered with an error status
            ├── RequestRejected    4xx: a mistake in the request; retrying will not help
            └── ServerUnavailable  5xx, 408 or 429: the server cannot answer now (transient)

The HTTP layer maps these to statuses in one table (katar.http.responses); every other
layer only raises them. Each class's docstring is its default message.
"""

from __future__ import annotations

from typing import Any


class KatarError(Exception):
    """Katar failed."""

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        #: Extra JSON-safe fields that tell the caller where the problem is.
        self.details = details
        super().__init__(self.message)


class ConfigError(KatarError):
    """The configuration is invalid."""


class InvalidRequest(KatarError):
    """The request is invalid."""


class ValidationError(InvalidRequest):
    """A field of the request is invalid."""


class PayloadTooLarge(InvalidRequest):
    """The request body is too large."""


class HeadTooLarge(InvalidRequest):
    """The request line and headers are too large."""


class AccessDenied(KatarError):
    """Access denied."""


class Unauthenticated(AccessDenied):
    """This server requires a token: send the header Authorization: Bearer <token>."""


class Forbidden(AccessDenied):
    """This token does not allow the request."""


class TooManyRequests(KatarError):
    """The server is at a limit; try again shortly."""


class RequestTimeout(KatarError):
    """The request was not received in time."""


class NotFound(KatarError):
    """Not found."""


class QueueNotFound(NotFound):
    """Queue not found"""


class TaskNotFound(NotFound):
    """Task not found"""

    @classmethod
    def named(cls, task_id: object, queue: str, **details: Any) -> TaskNotFound:
        """The error for a task id that the queue does not hold (``details`` locate it)."""
        return cls(f"no task {str(task_id)!r} in queue {queue!r}", _id=str(task_id), **details)


class ScheduleNotFound(NotFound):
    """Schedule not found"""


class Conflict(KatarError):
    """The request conflicts with the task's current state."""


class IllegalTransition(Conflict):
    """The task's status does not allow this transition."""


class ShuttingDown(KatarError):
    """The server is shutting down."""


class StoreError(KatarError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The store is unavailable."""


class OutcomeUnknown(StoreUnavailable):
    """The connection to the store was lost while it committed the change: it may or may not
    have been made. Retrying an enqueue with the same Idempotency-Key is safe (it creates
    nothing twice); acks are idempotent."""

    def __init__(self, message: str | None = None, **details: Any) -> None:
        # The answer says so in a field of its own, not only in prose, for clients to test.
        super().__init__(message or " ".join((self.__doc__ or "").split()), **details)
        self.details["outcome"] = "unknown"


class ClientError(KatarError):
    """The Katar client failed."""


class TransportError(ClientError):
    """The server could not be reached or did not answer."""


class APIError(ClientError):
    """The server answered with an error status."""

    def __init__(self, message: str | None = None, *, status: int, **details: Any) -> None:
        super().__init__(message, **details)
        #: The HTTP status of the answer.
        self.status = status


class RequestRejected(APIError):
    """The server rejected the request (4xx): fix the request, do not retry it."""


class ServerUnavailable(APIError):
    """The server cannot answer now (5xx, 408, 429): try again later."""
