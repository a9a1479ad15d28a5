"""A request on its way through the HTTP interface: admitted (routed, its token checked)
before its body is read, then handed to its route's handler. Shared by the application
(katar.http.app), its route table (katar.http.routes) and both ways in: ``katar serve``'s own
protocol (katar.http.cycle, katar.http.connection) and ASGI (katar.http.asgi).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl

from katar.core.model import parse_task_id
from katar.errors import PayloadTooLarge, TaskNotFound
from katar.http.auth import Token
from katar.http.responses import Response

Headers = list[tuple[bytes, bytes]]
#: Returns a future that completes when the request's client hangs up (for long polls).
HangUp = Callable[[], "asyncio.Future[Any]"]


class Request:
    """What a handler gets: the route's parameters, the query string and the body."""

    __slots__ = ("body", "hang_up", "headers", "params", "query_string", "token")

    def __init__(
        self,
        params: tuple[str, ...],
        query_string: bytes,
        body: bytes,
        token: Token | None,
        hang_up: HangUp,
        headers: Headers,
    ) -> None:
        self.params = params
        self.query_string = query_string
        self.body = body
        #: The caller's token; None when the server has no tokens (or the route is open).
        self.token = token
        #: A future that completes when the client hangs up.
        self.hang_up = hang_up
        #: The request's headers, names in lower case.
        self.headers = headers

    @property
    def queue(self) -> str:
        return self.params[0]

    @property
    def task_id(self) -> int:
        raw = self.params[1]
        task_id = parse_task_id(raw)
        if task_id is None:
            raise TaskNotFound.named(raw, self.queue)
        return task_id

    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True))


Handler = Callable[[Request], Awaitable[Response]]


def body_too_large(limit: int) -> PayloadTooLarge:
    """The refusal of a request body over ``limit`` bytes."""
    return PayloadTooLarge(f"the request body is over the limit of {limit} bytes")


def check_declared_length(headers: Headers, limit: int) -> None:
    """Refuse a body whose Content-Length is over ``limit`` before any of it is read: no
    "100 Continue" invites a body that is too big."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise body_too_large(limit)


_NO_HEADERS: Final[Headers] = []


class Admission:
    """A request routed and its token checked (App.admit): the handler to call, or the
    answer that refuses it."""

    __slots__ = ("handler", "headers", "params", "refusal", "started", "template", "token")

    def __init__(
        self,
        template: str,
        handler: Handler | None,
        params: tuple[str, ...],
        token: Token | None,
        refusal: Response | None,
        started: float | None = None,
        headers: Headers = _NO_HEADERS,
    ) -> None:
        #: The request's headers, for the handler (none kept for a refused request).
        self.headers = headers
        #: The route's template, for the metrics ("other" when no route matched).
        self.template = template
        self.handler = handler
        self.params = params
        self.token = token
        #: The answer when the request is refused (no route or method, a bad token).
        self.refusal = refusal
        #: When the request's head arrived (time.perf_counter()), if the access log is on.
        self.started = started
