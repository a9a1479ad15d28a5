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

A connection (:class:`HttpProtocol`) owns what outlives a request: the transport, the parser,
the queue of requests received and not yet answered, flow control and keep-alive; where it is
is one :class:`Phase`. Each request is a :class:`katar.http.cycle.Cycle`, with its own
:class:`katar.http.cycle.Stage`.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
from collections import deque
from typing import Any, Final, cast

import httptools
import uvicorn
from uvicorn.server import ServerState

from katar.errors import HeadTooLarge, InvalidRequest, KatarError, RequestTimeout
from katar.http.app import App
from katar.http.cycle import BODY as STAGE_BODY
from katar.http.cycle import MAX_HEAD, UPGRADE, Cycle, Refused
from katar.http.request import body_too_large
from katar.http.responses import API_HEADERS, JSON_HEADERS, Response, error_response
from katar.http.sites import SITE_HEADERS

__all__ = ["MAX_HEAD", "HttpProtocol", "Phase", "sweep"]

log = logging.getLogger("katar")

_STATUS_LINES: Final = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}
_JSON_HEAD: Final = b"".join(name + b": " + value + b"\r\n" for name, value in JSON_HEADERS)
_API_HEAD: Final = b"".join(name + b": " + value + b"\r\n" for name, value in API_HEADERS)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The request headers that on_header reads, beside keeping them all.
_NOTED: Final = frozenset({b"expect", b"transfer-encoding", *SITE_HEADERS})
#: Complete requests a connection may hold behind the one being answered; beyond, it stops
#: parsing and reading until the queue shortens.
_PIPELINE: Final = 16
#: Bytes parsed at a time, so that a burst of pipelined requests is not all parsed at once:
#: between slices the queue's bound is checked, and the rest waits, unparsed, for room.
#: (Small enough that one slice holds a few hundred tiny requests at most; large enough that
#: a big body costs few calls.)
_SLICE: Final = 16 * 1024


def _head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    if headers is JSON_HEADERS:
        return line + _JSON_HEAD
    if headers is API_HEADERS:  # a 204: an idle poll's answer
        return line + _API_HEAD
    return line + b"".join(name + b": " + value + b"\r\n" for name, value in headers)


class Phase(enum.Enum):
    """Where a connection is: what it waits for its client to send, or how far it has got
    in ending. Every change is :meth:`HttpProtocol._to`'s.

    While it waits (HEAD, BODY, IDLE) a clock runs for :func:`sweep`. A connection that
    ends goes one way only: LAST, then STOPPING, then CLOSING, then CLOSED, any of them
    skipped; once it ends, it reads no more requests (what arrives is dropped).
    """

    # name = (label, rank: 0 while open, then in the order a connection ends; clock runs)
    HEAD = ("head", 0, True)  # a request's line and headers: a connection's first, or one begun
    BODY = ("body", 0, True)  # the body of the request being parsed
    BUSY = ("busy", 0, False)  # nothing: its requests are being answered, or wait, queued
    IDLE = ("idle", 0, True)  # kept alive after its answers: the next request
    LAST = ("last", 1, False)  # no more requests (the last said close, or the input is
    # broken): those received are answered, then `final` if any, then it closes
    STOPPING = ("stopping", 2, False)  # the server shuts down: it closes after this answer
    CLOSING = ("closing", 3, False)  # the server closed (or aborted) the transport
    CLOSED = ("closed", 4, False)  # the transport is gone

    rank: int
    timed: bool

    def __init__(self, label: str, rank: int, timed: bool) -> None:
        self.rank = rank
        self.timed = timed


# Enum members through their class cost a lookup in the metaclass on every use (3.11):
# the protocol changes phase several times a request.
HEAD: Final = Phase.HEAD
BODY: Final = Phase.BODY
BUSY: Final = Phase.BUSY
IDLE: Final = Phase.IDLE
LAST: Final = Phase.LAST
STOPPING: Final = Phase.STOPPING
CLOSING: Final = Phase.CLOSING
CLOSED: Final = Phase.CLOSED


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
            raise TypeError("katar.http.connection.HttpProtocol serves a katar.http.App only")
        self.app = app
        self.limit = app.limits.max_body_bytes
        self.server_state = server_state
        self.loop = _loop or asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        # Answer the requests before a "Connection: close" one, then close (as uvicorn does).
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        self.phase = HEAD
        #: loop.time() when the phase's clock started (HEAD, BODY, IDLE).
        self.since = 0.0
        #: The request being parsed, or the last one parsed.
        self.cycle = Cycle()
        #: The request being answered.
        self.answering: Cycle | None = None
        #: Requests complete and not yet answered, in order.
        self.pending: deque[Cycle] = deque()
        self.queued = 0  # bytes of the bodies in `pending`, bounded like one body
        self.unparsed = b""  # received, not parsed yet: the queue was full (reading paused)
        self.final: Response | None = None  # the answer to a bad request, after those pending
        # Flow control, set by the transport and orthogonal to the phase: `write_paused`
        # between pause_writing and resume_writing; `reading` mirrors the transport's own
        # reading state, so that it is paused and resumed once each.
        self.write_paused = False
        self.reading = True
        #: loop.time() since when the client has read nothing of its answers (writing is
        #: paused and the buffer does not shrink): past the body timeout, the connection is
        #: dropped (:meth:`overdue`). `stalled_size` is the buffer's size then.
        self.stalled_since: float | None = None
        self.stalled_size = 0
        self.lost: asyncio.Future[None] | None = None

    def _to(self, phase: Phase) -> None:
        """The one place the phase changes. Entering a waiting phase starts its clock (again);
        a connection that ends does not wait any more, nor goes back."""
        current = self.phase
        if current.rank and phase.rank <= current.rank:
            return
        self.phase = phase
        if phase.timed:
            self.since = self.loop.time()

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self._to(HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._to(CLOSED)
        self.pending.clear()
        self.unparsed = b""
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def hang_up(self) -> asyncio.Future[None]:
        """A future that completes when the client hangs up (for a long poll)."""
        if self.lost is None:
            self.lost = self.loop.create_future()
            if self.phase is CLOSED:
                self.lost.set_result(None)
        return self.lost

    def data_received(self, data: bytes) -> None:
        if self.phase.rank:
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
        while not self.phase.rank:
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
                head = self.cycle.head_without_upgrade(self.parser.get_http_version())
                self.parser = httptools.HttpRequestParser(self)
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
            except httptools.HttpParserError as exc:
                cause = exc.__context__  # what a callback raised
                if isinstance(cause, KatarError):
                    self._end(cause)
                elif isinstance(cause, Refused):
                    self._end(cause.response)
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

    def overdue(self, now: float, head: float, body: float, keep_alive: float) -> None:
        """Act on the connection's clock (called by :func:`sweep`): cut off a client that
        took more than ``head`` seconds to send a request's line and headers, or ``body``
        its body (408); close one idle for ``keep_alive`` seconds; drop one that read none of
        its answers for ``body`` seconds."""
        if self.stalled_since is not None:
            self.check_stalled(now, body)
            return
        phase = self.phase
        if not phase.timed:
            return
        if phase is IDLE:
            if now - self.since > keep_alive:
                self.close_idle()
            return
        limit = body if phase is BODY else head
        if now - self.since > limit:
            self.cut_off(limit)

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
            self._to(CLOSING)
            transport.abort()

    def shutdown(self) -> None:
        """Graceful shutdown (called by uvicorn): close once the current answer is out."""
        self._to(STOPPING)
        if self.answering is None:
            self._close()

    def cut_off(self, seconds: float) -> None:
        """Answer 408 and close: the client took more than ``seconds`` to send."""
        what = "request body" if self.phase is BODY else "request line and headers"
        self._end(RequestTimeout(f"the {what} did not arrive within {seconds:g} seconds"))

    def close_idle(self) -> None:
        """Close a connection idle after an answer (its keep-alive ran out)."""
        self._close()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.cycle = Cycle()
        if self.phase is not HEAD:  # a new connection's clock runs from its start
            self._to(HEAD)

    def on_url(self, url: bytes) -> None:
        cycle = self.cycle
        cycle.url += url
        if len(cycle.url) > MAX_HEAD:
            raise HeadTooLarge(f"the request's target is over {MAX_HEAD} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        cycle = self.cycle
        cycle.head_size += len(name) + len(value) + 4
        if cycle.head_size > MAX_HEAD:
            raise HeadTooLarge(f"the request's headers are over {MAX_HEAD} bytes")
        name = name.lower()
        if name in _NOTED:  # one lookup for each of the others, which need nothing more
            if name == b"expect":
                if value.lower() == b"100-continue":
                    cycle.expect_continue = True
            elif name == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    # llhttp takes any list ending in chunked as chunked, but Katar decodes
                    # no content coding (gzip...): such a body would reach the app still
                    # encoded.
                    raise InvalidRequest(
                        f"Transfer-Encoding {value.decode('latin-1')!r} is not supported: "
                        "send the body as it is, with Content-Length or Transfer-Encoding: "
                        "chunked alone"
                    )
            else:
                cycle.site[name] = value
        cycle.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser, cycle = self.parser, self.cycle
        method = parser.get_method().decode("ascii")
        cycle.admit(method, parser.should_upgrade(), self.app, self.limit)
        if cycle.stage is UPGRADE:
            return  # see _feed: the request is parsed again
        if cycle.expect_continue:
            refusal = cycle.admission.refusal if cycle.admission is not None else None
            if refusal is not None:
                # Refused (its route, its token): the body it holds back is never invited.
                # Answered now, and the connection closed, since whether the client sends
                # the body anyway cannot be known (RFC 9110, 10.1.1).
                raise Refused(refusal)
            if self.answering is None and not self.pending:
                assert self.transport is not None
                self.transport.write(_CONTINUE)
        self._to(BODY)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle.keep_body:
            cycle.size += len(body)
            if cycle.size > self.limit:
                raise body_too_large(self.limit)
            cycle.chunks.append(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle.stage is UPGRADE:
            return
        cycle.complete(self.parser.should_keep_alive())
        if not cycle.keep_alive:
            self._to(LAST)
        if self.answering is not None or self.write_paused or self.pending:
            self.pending.append(cycle)
            self.queued += len(cycle.body)
            self._to(BUSY)  # the client is not waited for: its request is whole
            self._read()
        else:
            self._answer(cycle)

    # -- answers ---------------------------------------------------------------------------

    def _answer(self, cycle: Cycle) -> None:
        self.answering = cycle
        cycle.start()
        self._to(BUSY)
        task = self.loop.create_task(self._respond(cycle))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _respond(self, cycle: Cycle) -> None:
        method, admission = cycle.method, cycle.admission
        assert admission is not None
        try:
            response = await self.app.respond(
                method, cycle.path, admission, cycle.query, cycle.body, self.hang_up
            )
        except BaseException:  # cancelled (a forced shutdown): the app answers all else
            self._close()
            raise
        keep_alive = cycle.keep_alive and self.phase is not STOPPING
        self._write(response, method, keep_alive)
        self.server_state.total_requests += 1
        cycle.finish()
        self.answering = None
        if not keep_alive:
            self._close()
        else:
            self._next()

    def _next(self) -> None:
        """After an answer: answer the next request queued, unless the client is not reading
        its answers (then :meth:`resume_writing` does, so that answers never pile up in the
        transport's buffer); or send the final answer; or wait for a request."""
        if self.answering is not None:
            return
        if self.pending:
            if self.write_paused:
                return
            cycle = self.pending.popleft()
            self.queued -= len(cycle.body)
            self._answer(cycle)
            if self.unparsed:  # room in the queue: parse what waited for it
                data, self.unparsed = self.unparsed, b""
                self._feed(data)
            self._read()
        elif self.final is not None:
            self._write(self.final, self.cycle.method, keep_alive=False)
            self._close()
        elif self.phase is LAST:
            self._close()
        else:
            # Idle; or, if a request began meanwhile, its clock starts again now.
            self._to(IDLE if self.phase is BUSY else self.phase)

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
        cycle = self.cycle
        self._to(LAST)
        self._read()
        admission = cycle.admission if cycle.stage is STAGE_BODY else None
        template = admission.template if admission is not None else "other"
        self.app.count(cycle.method or "-", template, response.status)
        if self.answering is not None or self.pending:
            self.final = response  # after the requests that came before it
            return
        self._write(response, cycle.method, keep_alive=False)
        self._close()

    def _close(self) -> None:
        self._to(CLOSING)
        if self.transport is not None:
            self.transport.close()

    def _read(self) -> None:
        """Pause reading while the client does not read its answers, or has too many
        requests queued. (Once no more requests will be read, reading goes on, and what
        comes is dropped: a hang-up must still end a long poll.)"""
        want = not (self.write_paused or self.unparsed or len(self.pending) >= _PIPELINE)
        if want != self.reading and self.transport is not None and self.phase is not CLOSED:
            self.reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()


async def sweep(
    connections: set[Any], head_timeout: float, body_timeout: float, keep_alive: float
) -> None:
    """Cut off connections whose client is too slow to send a request's head or body (408),
    and close those idle after an answer for ``keep_alive`` seconds
    (:meth:`HttpProtocol.overdue`). One timestamp per connection and one sweep for all costs
    far less than a timer per request (~2 us each, a tenth of a poll's budget)."""
    loop = asyncio.get_running_loop()
    period = min(1.0, head_timeout / 4, body_timeout / 4, keep_alive / 4)
    while True:
        await asyncio.sleep(period)
        now = loop.time()
        for connection in list(connections):
            connection.overdue(now, head_timeout, body_timeout, keep_alive)
