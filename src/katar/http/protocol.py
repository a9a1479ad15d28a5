"""Katar's own HTTP/1.1 protocol: how ``katar serve`` hands requests to the :class:`App`.

uvicorn still runs the server (sockets, TLS, signals, graceful shutdown) and httptools
(llhttp) still parses; what this replaces is the ASGI layer between them and the app. ASGI
costs a scope dictionary, an event, four messages, a cycle object and two writes per request:
on the development machine, 11 of the 15 microseconds uvicorn spends on a bare ASGI
request, as much as everything else Katar does for a worker's poll (docs/architecture.md).
Here a request's head is routed and its token checked as soon as it is parsed
(:meth:`App.admit`: a refused request's body is never kept), its body is gathered within
``limits.max_body_bytes``, and its answer is written in one piece.

Connections keep alive, and answer pipelined requests in order; a client too slow to send a
request's head or body is answered 408 and cut off, an idle one closed quietly
(:func:`sweep`). Requests to upgrade (to h2c, websockets) are answered in HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import deque
from typing import Any, Final, cast
from urllib.parse import unquote

import httptools
import uvicorn
from uvicorn.server import ServerState

from katar.errors import (
    HeadTooLarge,
    InvalidRequest,
    KatarError,
    RequestTimeout,
)
from katar.http.app import (
    BODY_METHODS,
    Admission,
    App,
    body_too_large,
    check_declared_length,
)
from katar.http.responses import JSON_HEADERS, Response, error_response

log = logging.getLogger("katar")

_STATUS_LINES: Final = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}
_JSON_HEAD: Final = b"".join(name + b": " + value + b"\r\n" for name, value in JSON_HEADERS)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Complete requests a connection may hold behind the one being answered; beyond, it stops
#: parsing and reading until the queue shortens.
_PIPELINE: Final = 16
#: Bytes parsed at a time, so that a burst of pipelined requests is not all parsed at once:
#: between slices the queue's bound is checked, and the rest waits, unparsed, for room.
#: (Small enough that one slice holds a few hundred tiny requests at most; large enough that
#: a big body costs few calls.)
_SLICE: Final = 16 * 1024
#: Bytes of a request's line and headers; beyond, 431 (llhttp itself sets no bound).
MAX_HEAD: Final = 64 * 1024

#: A complete request awaiting its answer: method, path, admission, query string, body,
#: and whether the connection stays open afterwards.
_Item = tuple[str, str, Admission, bytes, bytes, bool]


def _head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    if headers is JSON_HEADERS:
        return line + _JSON_HEAD
    return line + b"".join(name + b": " + value + b"\r\n" for name, value in headers)


class HttpProtocol(asyncio.Protocol):
    """One client connection to ``katar serve``. uvicorn makes one per connection
    (``uvicorn.Config(http=HttpProtocol)``); the config's app must be an :class:`App`."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        app = config.app
        if not isinstance(app, App):
            raise TypeError("katar.http.protocol.HttpProtocol serves a katar.http.App only")
        self.app = app
        self.limit = app.limits.max_body_bytes
        self.server_state = server_state
        self.loop = _loop or asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        # Answer the requests before a "Connection: close" one, then close (as uvicorn does).
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        # The request being parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.expect_continue = False
        self.upgrading = False  # the request asks to upgrade: it is parsed again without
        self.method = ""
        self.path = ""
        self.query = b""
        self.admission: Admission | None = None
        self.keep_body = False  # False: the body is not the app's (refused, or a GET's)
        self.chunks: list[bytes] = []
        self.size = 0
        # Requests complete and not yet answered, the first being answered when `answering`.
        self.pending: deque[_Item] = deque()
        self.queued = 0  # bytes of the bodies in `pending`, bounded like one body
        self.unparsed = b""  # received, not parsed yet: the queue was full (reading paused)
        self.answering = False
        self.last = False  # no request after those pending (a bad request, an upgrade)
        self.final: Response | None = None  # the answer to a bad request, after those pending
        self.stopping = False  # the server shuts down: close after the current answer
        self.reading = True
        self.write_paused = False
        #: loop.time() since when the client has read nothing of its answers (writing is
        #: paused and the buffer does not shrink): past the body timeout, the connection is
        #: dropped (:func:`sweep`). `stalled_size` is the buffer's size then.
        self.stalled_since: float | None = None
        self.stalled_size = 0
        self.lost: asyncio.Future[None] | None = None
        self.gone = False
        #: loop.time() when the connection began waiting for the client; None while
        #: answering. What it waits for: a request's head (`in_message` and not
        #: `waiting_for_body`), its body, or, idle after an answer, the next request.
        self.waiting_since: float | None = None
        self.in_message = False
        self.waiting_for_body = False
        self.answered = False  # idle after an answer, as opposed to a silent new connection

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.waiting_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.gone = True
        self.pending.clear()
        self.unparsed = b""
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def hang_up(self) -> asyncio.Future[None]:
        """A future that completes when the client hangs up (for a long poll)."""
        if self.lost is None:
            self.lost = self.loop.create_future()
            if self.gone:
                self.lost.set_result(None)
        return self.lost

    def data_received(self, data: bytes) -> None:
        if self.last:
            return
        if self.unparsed:  # arrived as reading was being paused: parsed after the rest
            self.unparsed += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` a slice at a time; when the queue of requests is full, keep the
        rest unparsed (and reading paused) until it shortens (:meth:`_next`). Iterative, not
        recursive, and without copying ``data``: a pipeline of upgrade requests is re-parsed
        in this loop."""
        start = 0
        head = b""  # an upgrade request's head, rewritten, to parse before its body
        while not self.last:
            if head:
                piece, head = head, b""
            elif start < len(data):
                if len(self.pending) >= _PIPELINE or self.queued > self.limit:
                    self.unparsed = data[start:]
                    self._read()  # paused until the queue shortens
                    return
                whole = not start and len(data) <= _SLICE  # the usual case: no copy
                piece = data if whole else data[start : start + _SLICE]
                start += len(piece)
            else:
                break
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade as upgrade:
                # Katar speaks HTTP/1.1 only, and may ignore an Upgrade (RFC 9110, 7.8);
                # llhttp stops at the head, leaving the body unread. Parse the request again
                # without it (a Java HttpClient asks for h2c on every request by default):
                # its head rewritten, then its body from where llhttp stopped.
                start -= len(piece) - upgrade.args[0]
                head = self._head_without_upgrade()
                self.parser = httptools.HttpRequestParser(self)
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
            except httptools.HttpParserError as exc:
                cause = exc.__context__  # what a callback raised
                if isinstance(cause, KatarError):
                    self._end(cause)
                elif isinstance(exc, httptools.HttpParserCallbackError) and cause is not None:
                    log.error("internal error reading a request", exc_info=cause)
                    self._end(KatarError("internal server error; see the server's log"))
                else:
                    self._end(InvalidRequest(f"invalid HTTP request: {exc}"))
                return

    def pause_writing(self) -> None:
        self.write_paused = True
        self.stalled_since = self.loop.time()
        self.stalled_size = self.transport.get_write_buffer_size() if self.transport else 0
        self._read()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.stalled_since = None
        if self.pending:
            self._next()  # an answer held back while the client was not reading
        self._read()

    def check_stalled(self, now: float, limit: float) -> None:
        """Drop the connection if its client has read nothing of its answers for ``limit``
        seconds: what is buffered for it is freed (closing would wait for the client to read
        it). A client that reads, however slowly, is not stalled."""
        since, transport = self.stalled_since, self.transport
        if since is None or transport is None:
            return
        size = transport.get_write_buffer_size()
        if size < self.stalled_size:
            self.stalled_since, self.stalled_size = now, size
        elif now - since > limit:
            self.stalled_since = None
            transport.abort()

    def shutdown(self) -> None:
        """Graceful shutdown (called by uvicorn): close once the current answer is out."""
        self.stopping = True
        if not self.answering and self.transport is not None:
            self.transport.close()

    def cut_off(self, seconds: float) -> None:
        """Answer 408 and close: the client took more than ``seconds`` to send."""
        what = "request body" if self.waiting_for_body else "request line and headers"
        self.waiting_since = None
        self._end(RequestTimeout(f"the {what} did not arrive within {seconds:g} seconds"))

    def close_idle(self) -> None:
        """Close a connection idle after an answer (its keep-alive ran out)."""
        self.waiting_since = None
        if self.transport is not None:
            self.transport.close()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.method = ""
        self.admission = None
        if self.waiting_since is None or self.answered:
            self.waiting_since = self.loop.time()  # the head's time starts now
        self.answered = False
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_HEAD:
            raise HeadTooLarge(f"the request's target is over {MAX_HEAD} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            raise HeadTooLarge(f"the request's headers are over {MAX_HEAD} bytes")
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            # llhttp takes any list ending in chunked as chunked, but Katar decodes no
            # content coding (gzip...): such a body would reach the app still encoded.
            raise InvalidRequest(
                f"Transfer-Encoding {value.decode('latin-1')!r} is not supported: send the "
                "body as it is, with Content-Length or Transfer-Encoding: chunked alone"
            )
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.method = method = self.parser.get_method().decode("ascii")
        if method == "CONNECT":
            raise InvalidRequest("CONNECT is not supported: Katar is not a proxy")
        if self.parser.should_upgrade():
            self.upgrading = True  # see data_received: the request is parsed again
            return
        try:
            url = httptools.parse_url(self.url)
            path = url.path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            raise InvalidRequest("the request's target is not a valid URL path") from None
        if "%" in path:
            path = unquote(path)
        self.path = path
        self.query = url.query or b""
        self.admission = admission = self.app.admit(method, path, self.headers)
        self.keep_body = admission.refusal is None and method in BODY_METHODS
        self.chunks = []
        self.size = 0
        if self.keep_body:
            check_declared_length(self.headers, self.limit)
        if self.expect_continue and not self.answering and not self.pending:
            assert self.transport is not None
            self.transport.write(_CONTINUE)
        self.waiting_for_body = True
        self.waiting_since = self.loop.time()

    def on_body(self, body: bytes) -> None:
        if self.keep_body:
            self.size += len(body)
            if self.size > self.limit:
                raise body_too_large(self.limit)
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.upgrading:
            return
        self.in_message = self.waiting_for_body = False
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        assert self.admission is not None
        keep_alive = self.parser.should_keep_alive()
        item = (self.method, self.path, self.admission, self.query, body, keep_alive)
        self.admission = None
        if not keep_alive:
            self.last = True
        if self.answering or self.write_paused or self.pending:
            self.pending.append(item)
            self.queued += len(body)
            self._read()
        else:
            self._answer(item)

    def _head_without_upgrade(self) -> bytes:
        """The head of the request being parsed, without its Upgrade and the Connection
        options that name it."""
        self.upgrading = False
        version = self.parser.get_http_version()
        lines = [b"%s %s HTTP/%s" % (self.method.encode(), self.url, version.encode())]
        for name, value in self.headers:
            if name in (b"upgrade", b"http2-settings"):
                continue
            if name == b"connection":
                options = [o.strip() for o in value.split(b",")]
                value = b", ".join(
                    o for o in options if o.lower() not in (b"upgrade", b"http2-settings")
                )
                if not value:
                    continue
            lines.append(name + b": " + value)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    # -- answers ---------------------------------------------------------------------------

    def _answer(self, item: _Item) -> None:
        self.answering = True
        self.waiting_since = None
        task = self.loop.create_task(self._respond(item))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _respond(self, item: _Item) -> None:
        method, path, admission, query, body, keep_alive = item
        try:
            response = await self.app.respond(method, path, admission, query, body, self.hang_up)
        except BaseException:  # cancelled (a forced shutdown): the app answers all else
            self._close()
            raise
        keep_alive = keep_alive and not self.stopping
        self._write(response, method, keep_alive)
        self.server_state.total_requests += 1
        self.answering = False
        if not keep_alive:
            self._close()
        else:
            self._next()

    def _next(self) -> None:
        """After an answer: answer the next request queued, unless the client is not reading
        its answers (then :meth:`resume_writing` does, so that answers never pile up in the
        transport's buffer); or send the final answer; or wait for a request."""
        if self.answering:
            return
        if self.pending:
            if self.write_paused:
                return
            item = self.pending.popleft()
            self.queued -= len(item[4])
            self._answer(item)
            if self.unparsed:  # room in the queue: parse what waited for it
                data, self.unparsed = self.unparsed, b""
                self._feed(data)
            self._read()
        elif self.final is not None:
            self._write(self.final, self.method, keep_alive=False)
            self._close()
        elif self.last:
            self._close()
        else:
            self.answered = not self.in_message
            self.waiting_since = self.loop.time()

    def _write(self, response: Response, method: str, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        status = response.status
        parts = [_head(status, response.headers)]
        for name, value in self.server_state.default_headers:  # the date
            parts.append(name + b": " + value + b"\r\n")
        body = response.body
        if status != 204:
            parts.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive and (b"connection", b"close") not in response.headers:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if method != "HEAD":
            parts.append(body)
        transport.write(b"".join(parts))

    def _end(self, answer: KatarError | Response) -> None:
        """Answer a request that cannot be parsed or finished with ``answer`` once the
        earlier ones are answered, and close: the connection cannot be read further."""
        response = error_response(answer) if isinstance(answer, KatarError) else answer
        self.last = True
        self.waiting_since = None
        self._read()
        template = self.admission.template if self.admission is not None else "other"
        self.app.count(self.method or "-", template, response.status)
        if self.answering or self.pending:
            self.final = response  # after the requests that came before it
            return
        self._write(response, self.method, keep_alive=False)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _read(self) -> None:
        """Pause reading while the client does not read its answers, or has too many
        requests queued. (Once no more requests will be read, reading goes on, and what
        comes is dropped: a hang-up must still end a long poll.)"""
        want = not (self.write_paused or self.unparsed or len(self.pending) >= _PIPELINE)
        if want != self.reading and self.transport is not None and not self.gone:
            self.reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()


async def sweep(
    connections: set[Any], head_timeout: float, body_timeout: float, keep_alive: float
) -> None:
    """Cut off connections whose client is too slow to send a request's head or body (408),
    and close those idle after an answer for ``keep_alive`` seconds. One timestamp per
    connection and one sweep for all costs far less than a timer per request (~2 us each, a
    tenth of a poll's budget)."""
    loop = asyncio.get_running_loop()
    period = min(1.0, head_timeout / 4, body_timeout / 4, keep_alive / 4)
    while True:
        await asyncio.sleep(period)
        now = loop.time()
        for connection in list(connections):
            if connection.stalled_since is not None:
                connection.check_stalled(now, body_timeout)
                continue
            since = connection.waiting_since
            if since is None:
                continue
            if connection.answered:
                if now - since > keep_alive:
                    connection.close_idle()
                continue
            limit = body_timeout if connection.waiting_for_body else head_timeout
            if now - since > limit:
                connection.cut_off(limit)
