"""What the producer and the worker share: records (katar.protocol's), errors from
answers, backoff."""

from __future__ import annotations

import random
import ssl
from typing import Final

import httpx
import msgspec

from katar.errors import RequestRejected, ServerUnavailable, TransportError
from katar.protocol import TaskRecord, Tasks

# 4xx answers that say "not now" rather than "not this": too slow, too many long polls.
_TRY_AGAIN: Final = frozenset({408, 429})

#: What a client verifies the server's certificate with: True for the system's CAs, a CA
#: bundle's path (PEM), an ssl.SSLContext, or False (never outside tests).
Verify = bool | str | ssl.SSLContext


def tls(verify: Verify) -> bool | ssl.SSLContext:
    """httpx's ``verify`` for a :data:`Verify`."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


_records: Final = msgspec.json.Decoder(Tasks)
_record: Final = msgspec.json.Decoder(TaskRecord)


def records(response: httpx.Response) -> list[TaskRecord]:
    """The ``tasks`` of an answer."""
    return _records.decode(response.content).tasks


def record(response: httpx.Response) -> TaskRecord:
    """The task record an answer holds."""
    return _record.decode(response.content)


def headers(token: str | None) -> dict[str, str]:
    """The headers every request carries."""
    result = {"user-agent": "katar-client"}
    if token:
        result["authorization"] = f"Bearer {token}"
    return result


def check(response: httpx.Response) -> httpx.Response:
    """The response, or the error its status means."""
    if response.status_code < 400:
        return response
    try:
        payload = response.json()
        message = payload.pop("error") if isinstance(payload, dict) else response.text
        details = payload if isinstance(payload, dict) else {}
    except ValueError:
        message, details = response.text or response.reason_phrase, {}
    where = f"{response.request.method} {response.request.url.path}"
    transient = response.status_code >= 500 or response.status_code in _TRY_AGAIN
    error = ServerUnavailable if transient else RequestRejected
    # The details may name the task's "status" (a 409 of PATCH): kept beside the HTTP one.
    failure = error(f"{where}: {response.status_code} {message}", status=response.status_code)
    failure.details.update(details)
    raise failure


def transport_error(exc: httpx.TransportError, method: str, path: str) -> TransportError:
    """A Katar error for a request that got no answer."""
    return TransportError(f"{method} {path}: {type(exc).__name__}: {exc or 'no answer'}")


def is_transient(exc: BaseException) -> bool:
    """True for a failure that may pass by itself: no answer, or a 5xx."""
    return isinstance(exc, TransportError | ServerUnavailable)


def backoff(attempt: int, base: float = 0.1, cap: float = 30.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): capped exponential
    backoff with full jitter, so that many workers do not retry in step."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))
