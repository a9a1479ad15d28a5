"""What ``katar serve`` writes to its log: the formats, the access log, store outages.

Every line goes through :func:`mask_credentials` on its way out, whatever wrote
it (Katar, a driver, a traceback), so that a password in a store URL is never printed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, Final
from urllib.parse import unquote, urlsplit

log = logging.getLogger("katar")
#: The access log's logger: one line per answered request, when enabled.
access_log: Final = logging.getLogger("katar.access")

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("text", "json")

# The attributes every LogRecord has; any other one was given with ``extra`` and is a field.
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


# A URL's "user:password@" (the password runs to the last "@" before a space, "?" or "#",
# so that one holding a raw "@" or "/" is masked whole), and a "password=" parameter.
_USERINFO: Final = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:)[^\s?#]*@")
_PARAMETER: Final = re.compile(r"(?i)(\b(?:ssl)?password=)[^&\s#'\"]*")
_MASK: Final = "***"


def mask_credentials(text: str, url: str | None = None) -> str:
    """``text`` (a store URL, a message or a log line) with every password masked:
    ``user:password@`` becomes ``user:***@`` and ``password=...`` becomes ``password=***``.
    With ``url``, its password is also masked wherever it appears verbatim (as a driver's
    message might quote it). Everything Katar prints about a store goes through here."""
    masked = _PARAMETER.sub(r"\1" + _MASK, _USERINFO.sub(r"\1" + _MASK + "@", text))
    if url is not None:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        for secret in {password, unquote(password or "")}:
            if secret and len(secret) >= 4:  # shorter, it would mangle the text, not hide
                masked = masked.replace(secret, _MASK)
    return masked


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, credentials masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the fields given with ``extra``, and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return mask_credentials(json.dumps(line, default=str, ensure_ascii=False))


def configure(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send every logger's lines at ``level`` and above to ``stream`` (standard error), as
    ``fmt`` ("text" or "json"). Replaces the handlers a previous call installed."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        if getattr(old, "katar", False):
            root.removeHandler(old)
    handler.katar = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries' chatter per request or per reconnection attempt: only their errors, unless
    # debugging. (Katar says once when the store goes away and once when it is back.)
    quiet = logging.DEBUG if level == "debug" else logging.ERROR
    for name in ("httpx", "httpcore", "psycopg.pool"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger(name).level))


def log_access(
    method: str,
    route: str,
    status: int,
    size: int,
    started: float | None,
    trace_id: str | None = None,
) -> None:
    """One access-log line: the route's template (never the path's values, the query or a
    header, so no token or secret), the status, the time taken and the body's size; and
    ``trace_id``, the W3C trace id of the request's traceparent, when it has one (so that a
    log line is found from a trace, and back)."""
    duration = None if started is None else round((time.perf_counter() - started) * 1000, 3)
    shown = "-" if duration is None else f"{duration}ms"
    access_log.info(
        "%s %s %d %s %s",
        method,
        route,
        status,
        shown,
        "-" if size < 0 else f"{size}B",
        extra={
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration,
            "bytes": None if size < 0 else size,
            **({} if trace_id is None else {"trace_id": trace_id}),
        },
    )


class Outages:
    """Says once when the store becomes unavailable and once when it is back, however many
    requests fail in between (each of them is answered 503).

    ``failing`` tells why the store still cannot serve every request though some succeed
    (a SQLite disk that refused writes still serves reads and acks): while it gives a
    reason, a request that succeeds does not end the outage, so that reads and writes that
    alternate during it do not log a pair of lines each time."""

    def __init__(self, failing: Callable[[], str | None] | None = None) -> None:
        #: When the current outage began (time.monotonic()), None while the store answers.
        self.since: float | None = None
        self.failures = 0
        self._failing = failing

    def down(self, reason: str) -> None:
        """A request or a background job found the store unavailable."""
        if self.since is None:
            self.since = time.monotonic()
            self.failures = 0
            log.warning("store unavailable: %s; answering 503 until it is back", reason)
        self.failures += 1

    def up(self) -> None:
        """The store answered."""
        if self.since is not None:
            if self._failing is not None and self._failing() is not None:
                return  # it answered this one, not yet every one
            lasted = time.monotonic() - self.since
            log.warning(
                "store available again after %.1fs (%d operation(s) failed meanwhile)",
                lasted,
                self.failures,
            )
            self.since = None
