"""The push's HTTP/1.1 client: keep-alive connections to one endpoint, on asyncio's
transports and httptools' response parser (the C parser the server already uses).

Why not httpx or httpcore: measured on the development machine, httpcore's pool over its
AnyIO backend cost about 4 ms of CPU per request (anyio's stream layer, and imports tried
on each request), twenty times what the push itself needs; and the outbound safety must
choose the address connected to, which httpx's client does not let one do. This client does
only what a push needs: POST with a Content-Length body, no redirects followed, an answer
read up to a bound, TLS with the URL's name (SNI and certificate check) on the address that
the outbound safety checked, and keep-alive connections reused in turn.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import httptools

from katar.push.safety import Address, Refused, literal_address, refused_address

#: The longest pause between tries of an endpoint that does not answer, and the longest
#: Retry-After honoured.
MAX_PAUSE_S: Final = 60.0
#: Seconds an idle keep-alive connection stays in the pool.
KEEPALIVE_S: Final = 30.0


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header: delta seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_PAUSE_S)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - now, 0.0), MAX_PAUSE_S)


class Unreachable(Exception):
    """No connection, or it broke before a whole answer came."""


@dataclass(slots=True)
class Answer:
    """An endpoint's answer: its status, headers (lower-case names), and its body up to the
    bound (``cut`` when there was more)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut: bool = False


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.open = True
        self.used = False  # whether a request already went through it
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._cut = False
        self._started = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection is not to be trusted
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Unreachable(f"a broken HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(Unreachable("the connection closed before the whole answer came"))

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        self._started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key in ("content-type", "retry-after"):  # the only ones the push reads
            self._headers[key] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self._cut:
            return
        self._size += len(body)
        if self._size > self.max_bytes:
            self._cut = True
            self._answer(keep=False)  # what came is enough; the rest is not read
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._cut:
            self._answer(keep=self.parser.should_keep_alive())

    # --

    def _answer(self, keep: bool) -> None:
        answer = Answer(
            self.parser.get_status_code(), self._headers, b"".join(self._body), self._cut
        )
        if not keep:
            self.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(answer)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _time_out(self) -> None:
        self._fail(TimeoutError())

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    async def request(self, message: bytes, deadline: float | None = None) -> Answer:
        """Send ``message``, wait for its answer: TimeoutError at ``deadline`` (the loop's
        time), if given (a timer of the loop's, lighter than asyncio.timeout's)."""
        assert self.transport is not None
        self._reset()
        self.used = True
        waiter: asyncio.Future[Answer] = self.loop.create_future()
        self.waiter = waiter
        timer = None if deadline is None else self.loop.call_at(deadline, self._time_out)
        self.transport.write(message)
        try:
            return await waiter
        except BaseException:
            self.close()  # cancelled, timed out or broken: never reused
            raise
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    @property
    def answering(self) -> bool:
        """Whether an answer had started to arrive (then a retry is not safe to hide)."""
        return self._started


class Endpoint:
    """Keep-alive connections to one push URL."""

    def __init__(self, url: str, *, opened: bool, max_idle: int, max_bytes: int) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = 443 if self.tls else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = name if self.port == default else f"{name}:{self.port}"
        #: Whether the allow list opens this endpoint (no check of its addresses).
        self.opened = opened
        self.max_idle = max_idle
        self.max_bytes = max_bytes
        self._idle: list[_Connection] = []
        self._tls_context: ssl.SSLContext | None = None

    def head(self, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        """A POST's request line, Host and ``headers``: what precedes the Content-Length
        header, the blank line and the body (see :meth:`send`)."""
        lines = [
            b"POST %s HTTP/1.1\r\nHost: %s\r\n"
            % (self.target.encode(), self.authority.encode("idna"))
        ]
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
        return b"".join(lines)

    def message(self, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
        """The request's bytes: a POST of ``body`` with ``headers``."""
        return b"%sContent-Length: %d\r\n\r\n%s" % (self.head(headers), len(body), body)

    async def post(self, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Answer:
        """POST; the caller bounds the time (asyncio.timeout). Raises Refused, Unreachable."""
        return await self.send(self.message(headers, body))

    async def send(self, message: bytes, seconds: float | None = None) -> Answer:
        """Send a whole request (see :meth:`message`); TimeoutError when no answer came
        within ``seconds``, if given. Raises Refused, Unreachable."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while self._idle:
            connection = self._idle.pop()
            if not connection.open or loop.time() - connection.idle_since > KEEPALIVE_S:
                connection.close()
                continue
            try:
                answer = await connection.request(message, deadline)
            except Unreachable:
                if connection.answering:
                    raise
                continue  # the endpoint closed the idle connection: a fresh one
            self._release(connection)
            return answer
        async with asyncio.timeout_at(deadline):
            connection = await self._connect()
            answer = await connection.request(message)
        self._release(connection)
        return answer

    def _release(self, connection: _Connection) -> None:
        if connection.open and len(self._idle) < self.max_idle:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        else:
            connection.close()

    async def _connect(self) -> _Connection:
        addresses = await self._resolve()
        if not self.opened:
            for address in addresses:
                why = refused_address(address)
                if why is not None:
                    raise Refused(
                        f"refused to connect to {self.host}: it resolves to {why} "
                        f"({address}); the configuration's [push] allow may open it"
                    )
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(self.max_bytes),
                    host=str(address),
                    port=self.port,
                    ssl=self._ssl() if self.tls else None,
                    server_hostname=self.host if self.tls else None,
                )
            except (OSError, ssl.SSLError) as exc:
                errors.append(
                    f"{address}: {exc.strerror or exc}"
                    if isinstance(exc, OSError)
                    else f"{address}: {exc}"
                )
                continue
            sock = connection.transport.get_extra_info("socket") if connection.transport else None
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return connection
        raise Unreachable(f"cannot connect to {self.host}:{self.port}: {'; '.join(errors)}")

    def _ssl(self) -> ssl.SSLContext:
        if self._tls_context is None:
            self._tls_context = ssl.create_default_context()
        return self._tls_context

    async def _resolve(self) -> list[Address]:
        literal = literal_address(self.host)
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Unreachable(f"cannot resolve {self.host}: {exc}") from None
        found: list[Address] = []
        for info in infos:
            address = literal_address(str(info[4][0]))
            if address is not None and address not in found:
                found.append(address)
        if not found:
            raise Unreachable(f"{self.host} resolves to no address")
        return found

    def close(self) -> None:
        """Close the idle connections (those in use close when their request ends)."""
        while self._idle:
            self._idle.pop().close()
