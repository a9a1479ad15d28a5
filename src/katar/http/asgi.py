"""The ASGI adapter of the HTTP application: for any ASGI server (uvicorn's own, in tests)
and for in-process clients (httpx's ASGITransport). ``katar serve`` does not go through it:
its own HTTP/1.1 protocol (katar.http.connection) hands whole requests to the application.

The adapter turns an ASGI request into the application's two steps, :meth:`admit` before the
body is read (a refused request's body is never buffered) and :meth:`respond` once it has
arrived, and runs the lifespan: the application's start-up and shut-down, and its throughput
sampler's. It knows the application through :class:`Application` only, so that the
application can hold it without an import circle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import quote

from katar.errors import InvalidRequest, KatarError
from katar.http.request import Admission, HangUp, Headers, body_too_large, check_declared_length
from katar.http.responses import Response, error_response
from katar.http.routes import BODY_METHODS
from katar.http.sites import SiteHeaders
from katar.http.throughput import Sampler
from katar.limits import Limits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Application(Protocol):
    """What the adapter needs of the application (katar.http.app.App)."""

    def admit(
        self, method: str, path: str, headers: Headers, site: SiteHeaders | None = None
    ) -> Admission: ...

    async def respond(
        self,
        method: str,
        path: str,
        admission: Admission,
        query_string: bytes,
        body: bytes,
        hang_up: HangUp,
    ) -> Response: ...

    def count(
        self,
        method: str,
        template: str,
        status: int,
        size: int = -1,
        admission: Admission | None = None,
    ) -> None: ...


class Asgi:
    """An application's ASGI entry: ``await Asgi(...)(scope, receive, send)``."""

    def __init__(
        self,
        app: Application,
        *,
        limits: Limits,
        throughput: Sampler,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self.app = app
        self.limits = limits
        #: Started once the application has started, stopped before it shuts down.
        self.throughput = throughput
        self.startup = startup
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry."""
        kind = scope["type"]
        if kind == "http":
            method = scope["method"]
            path = _raw_path(scope)
            admission = self.app.admit(method, path, scope["headers"])
            hang_up = _AsgiHangUp(receive)
            body = b""
            try:
                if admission.refusal is None and method in BODY_METHODS:
                    body = await self._read_body(scope, receive)
                response = await self.app.respond(
                    method,
                    path,
                    admission,
                    scope.get("query_string", b""),
                    body,
                    hang_up,
                )
            except KatarError as exc:  # the body, refused as it came
                response = error_response(exc)
                self.app.count(method, admission.template, response.status, -1, admission)
            finally:
                hang_up.close()
            headers = response.headers
            if response.status != 204:
                headers = [*headers, (b"content-length", b"%d" % len(response.body))]
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": response.body})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.throughput.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.throughput.stop()
                try:
                    await self.shutdown()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """An ASGI request's body, refused (PayloadTooLarge) as soon as it is over the limit."""
        limit = self.limits.max_body_bytes
        check_declared_length(scope["headers"], limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("the client disconnected before sending its body")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _raw_path(scope: Scope) -> str:
    """An ASGI request's path as sent, %-escapes and all (App.admit splits it before it
    decodes it); from its decoded path, escaped again, when the server gives no raw one."""
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).partition(b"?")[0].decode("latin-1")
    return quote(scope["path"], safe="/:@!$&'()*+,;=-._~")


class _AsgiHangUp:
    """An ASGI request's hang-up future, made on first use (a long poll's) and cancelled
    when the request is answered."""

    __slots__ = ("future", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.future: asyncio.Future[Any] | None = None

    def __call__(self) -> asyncio.Future[Any]:
        if self.future is None:
            self.future = asyncio.ensure_future(self._disconnected())
        return self.future

    async def _disconnected(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    def close(self) -> None:
        if self.future is not None:
            self.future.cancel()
