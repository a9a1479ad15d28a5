"""What the producer and the worker share: records (katar.protocol's), errors from
answers, backoff."""

from __future__ import annotations

import random
import ssl
from typing import Final, TypedDict
from urllib.parse import urlsplit

import httpx
import msgspec

from katar.errors import RequestRejected, ServerUnavailable, TransportError
from katar.protocol import TaskRecord, Tasks

# 4xx answers that say "not now" rather than "not this": too slow, too many long polls.
_TRY_AGAIN: Final = frozenset({408, 429})

#: What a client verifies the server's certificate with: True for the system's CAs, a CA
#: bundle's path (PEM), an ssl.SSLContext, or False (never outside tests).
Verify = bool | str | ssl.SSLContext


def server_url(url: str) -> str:
    """The server's base URL as clients use it: ``http://`` added to a bare ``HOST:PORT``
    (as curl reads one), anything but http and https refused with a ValueError that says
    what is expected."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"the server's URL must be http://HOST:PORT or https://HOST:PORT, not {url!r}"
        )
    return text.rstrip("/")


def tls(verify: Verify) -> bool | ssl.SSLContext:
    """httpx's ``verify`` for a :data:`Verify`."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


class Settings(TypedDict):
    """An httpx client's settings for one server (the producers' two kinds share them)."""

    base_url: str
    headers: dict[str, str]
    verify: bool | ssl.SSLContext
    timeout: float


def settings(url: str, token: str | None, verify: Verify, timeout: float) -> Settings:
    """The settings of a client of the server at ``url``, with ``token``."""
    return Settings(
        base_url=server_url(url), headers=headers(token), verify=tls(verify), timeout=timeout
    )


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
    """A Katar error for a request that got no answer, naming the server it was sent to
    (its whole URL: the path alone does not say which server is down)."""
    try:
        where = str(exc.request.url)
    except RuntimeError:  # no request attached (raised before it was built)
        where = path
    return TransportError(f"{method} {where}: no answer ({type(exc).__name__}: {exc or '-'})")


def is_transient(exc: BaseException) -> bool:
    """True for a failure that may pass by itself: no answer, or a 5xx."""
    return isinstance(exc, TransportError | ServerUnavailable)


def backoff(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): capped exponential
    backoff with full jitter, so that many workers do not retry in step."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))
