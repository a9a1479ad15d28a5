"""Katar's own HTTP/1.1 protocol on the wire: what the app's tests, made through a client
library, do not send (pipelines, chunked and oversized bodies, Expect, HTTP/1.0, garbage,
hang-ups, idle connections)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from katar import Katar
from katar.http import App, Limits
from katar.http.auth import Role, Token, digest
from katar.http.connection import MAX_HEAD
from tests.http.conftest import eventually, opened, served

LIMIT = 2048


@pytest.fixture
async def katar() -> AsyncIterator[Katar]:
    instance = Katar("memory://")
    instance.queue("q", persistent=True)
    async with opened(instance):
        yield instance


@pytest.fixture
async def app(katar: Katar) -> App:
    return App(katar.engine, limits=Limits(max_body_bytes=LIMIT, max_wait=5))


@pytest.fixture
async def port(app: App) -> AsyncIterator[int]:
    async with served(app) as url:
        yield int(url.rsplit(":", 1)[1])


class Wire:
    """A raw connection: bytes out, HTTP answers parsed back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """The next answer: status, headers (lower-case names), body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = dict(line.lower().split(": ", 1) for line in lines)
        length = 0 if head_only else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bool:
        """True when the server closes the connection with nothing more to say."""
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def wire(port: int) -> AsyncIterator[Wire]:
    connection = Wire(*await asyncio.open_connection("127.0.0.1", port))
    yield connection
    connection.close()


def request(method: str, target: str, body: bytes = b"", *extra: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: katar", *extra]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_pipelined_requests_are_answered_in_order(wire: Wire) -> None:
    await wire.send(
        request("POST", "/v1/queue/q/tasks", b'{"data": 1}')
        + request("POST", "/v1/queue/q", b"{}")
        + request("GET", "/v1/queue/q/tasks/1")
        + request("POST", "/v1/queue/q", b'{"tasks": [{"_id": "1", "status": "done"}]}')
        + request("GET", "/v1/queue/q/tasks/1")
    )
    statuses = []
    bodies = []
    for _ in range(5):
        status, _headers, body = await wire.answer()
        statuses.append(status)
        bodies.append(json.loads(body) if body else {})
    assert statuses == [201, 200, 200, 204, 200]
    assert bodies[1] == {"tasks": [{"_id": "1", "data": 1, "attempt": 1}]}
    assert bodies[2]["status"] == "in progress"
    assert bodies[4]["status"] == "done"


async def test_a_long_pipeline_is_read_in_turns_and_answered_whole(wire: Wire) -> None:
    # More than a connection holds queued (16): it stops reading, then reads on.
    await wire.send(b"".join(request("GET", f"/v1/queue/q/tasks/{n}") for n in range(1, 41)))
    for n in range(1, 41):
        status, _headers, body = await wire.answer()
        assert status == 404
        assert f"'{n}'" in json.loads(body)["error"]


async def test_answers_carry_a_date_and_their_length_and_204s_no_length(wire: Wire) -> None:
    await wire.send(request("POST", "/v1/queue/q", b"{}"))
    status, headers, _body = await wire.answer()
    assert status == 204
    assert "content-length" not in headers
    assert "date" in headers
    await wire.send(request("GET", "/healthz"))
    status, headers, body = await wire.answer()
    assert status == 200
    assert int(headers["content-length"]) == len(body) > 0
    assert headers["content-type"] == "application/json"


async def test_a_chunked_body_is_read_whole(wire: Wire, katar: Katar) -> None:
    body = b'{"tasks": [{"data": "chunked"}]}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
    await wire.send(
        b"POST /v1/queue/q/tasks HTTP/1.1\r\nHost: katar\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"0\r\n\r\n"
    )
    status, _headers, _body = await wire.answer()
    assert status == 201
    assert bytes((await katar.queue("q").tasks())[0].data) == b'"chunked"'


async def test_expect_100_continue_is_answered_before_the_body(wire: Wire) -> None:
    body = b'{"data": 1}'
    head = request("POST", "/v1/queue/q/tasks", body, "Expect: 100-continue")
    await wire.send(head[: -len(body)])
    line = await asyncio.wait_for(wire.reader.readuntil(b"\r\n\r\n"), 10)
    assert line == b"HTTP/1.1 100 Continue\r\n\r\n"
    await wire.send(body)
    status, _headers, _body = await wire.answer()
    assert status == 201


async def test_a_body_over_the_limit_is_413_closed_and_changes_nothing(
    port: int, katar: Katar
) -> None:
    declared = Wire(*await asyncio.open_connection("127.0.0.1", port))
    big = json.dumps({"data": "x" * LIMIT}).encode()
    await declared.send(request("POST", "/v1/queue/q/tasks", big))
    status, headers, body = await declared.answer()
    assert status == 413
    assert headers["connection"] == "close"
    assert f"over the limit of {LIMIT} bytes" in json.loads(body)["error"]
    assert await declared.closed()
    declared.close()

    chunked = Wire(*await asyncio.open_connection("127.0.0.1", port))
    await chunked.send(
        b"POST /v1/queue/q/tasks HTTP/1.1\r\nHost: katar\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for start in range(0, len(big), 500):
        part = big[start : start + 500]
        await chunked.send(b"%x\r\n%s\r\n" % (len(part), part))
    status, _headers, _body = await chunked.answer()
    assert status == 413
    assert await chunked.closed()
    chunked.close()
    assert await katar.queue("q").tasks() == []


async def test_a_refused_request_keeps_the_connection_in_step(wire: Wire) -> None:
    await wire.send(request("POST", "/v1/nowhere", b'{"data": "ignored"}'))
    status, _headers, _body = await wire.answer()
    assert status == 404
    await wire.send(request("GET", "/healthz"))
    status, _headers, _body = await wire.answer()
    assert status == 200


async def test_garbage_is_400_and_closed(wire: Wire) -> None:
    await wire.send(b"HELLO\x00 there\r\n\r\n")
    status, headers, body = await wire.answer()
    assert status == 400
    assert headers["connection"] == "close"
    assert "invalid HTTP request" in json.loads(body)["error"]
    assert await wire.closed()


async def test_head_answers_without_a_body(wire: Wire) -> None:
    await wire.send(request("HEAD", "/healthz"))
    status, headers, _ = await wire.answer(head_only=True)
    assert status == 405
    assert int(headers["content-length"]) > 0
    await wire.send(request("GET", "/healthz"))  # the next answer starts right after the head
    status, _headers, body = await wire.answer()
    assert status == 200
    assert json.loads(body)["status"] == "ok"


async def test_http_1_0_and_connection_close_end_the_connection(port: int) -> None:
    for head in (
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: katar\r\nConnection: close\r\n\r\n",
    ):
        wire = Wire(*await asyncio.open_connection("127.0.0.1", port))
        await wire.send(head)
        status, headers, _body = await wire.answer()
        assert status == 200
        assert headers["connection"] == "close"
        assert await wire.closed()
        wire.close()


@pytest.mark.parametrize("last", [False, True], ids=["keep-alive", "connection-close"])
async def test_a_long_poll_ends_when_its_client_hangs_up(
    port: int, app: App, katar: Katar, last: bool
) -> None:
    wire = Wire(*await asyncio.open_connection("127.0.0.1", port))
    close = ["Connection: close"] if last else []
    await wire.send(request("POST", "/v1/queue/q", b'{"wait": 5}', *close))
    for _ in range(500):
        if app.long_polls == 1:
            break
        await asyncio.sleep(0.01)
    assert app.long_polls == 1
    wire.close()
    for _ in range(200):
        if app.long_polls == 0:
            break
        await asyncio.sleep(0.01)
    assert app.long_polls == 0  # well before the 5 s wait is over
    # The poll is gone: a task enqueued now waits for the next worker.
    task = await katar.queue("q").enqueue({"n": 1})
    assert (await katar.queue("q").get(task.id)).status == "queued"


async def test_idle_connections_are_closed_and_silent_ones_cut_off(app: App) -> None:
    async with served(app, (0.4, 0.4, 0.2)) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = Wire(*await asyncio.open_connection("127.0.0.1", port))
        await idle.send(request("GET", "/healthz"))
        assert (await idle.answer())[0] == 200
        assert await idle.closed()  # quietly, once the keep-alive ran out
        idle.close()

        silent = Wire(*await asyncio.open_connection("127.0.0.1", port))
        head = await asyncio.wait_for(silent.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408 ")
        assert head.count(b"connection: close") == 1
        assert b"request line and headers did not arrive" in await silent.reader.read()
        silent.close()


async def test_an_upgrade_is_ignored_and_the_request_answered_with_its_body(
    wire: Wire, katar: Katar
) -> None:
    # What a Java HttpClient sends by default: every request asks for h2c.
    upgrade = ("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAEAAAA")
    await wire.send(request("POST", "/v1/queue/q/tasks", b'{"data": "up"}', *upgrade))
    status, _headers, body = await wire.answer()
    assert status == 201
    assert json.loads(body)["tasks"][0]["data"] == "up"
    await wire.send(request("POST", "/v1/queue/q", b"{}", *upgrade) + request("GET", "/healthz"))
    status, _headers, body = await wire.answer()
    assert status == 200
    assert json.loads(body)["tasks"][0]["data"] == "up"
    assert (await wire.answer())[0] == 200  # the connection goes on in HTTP/1.1


async def test_connect_is_400(wire: Wire) -> None:
    await wire.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    status, _headers, body = await wire.answer()
    assert status == 400
    assert "not a proxy" in json.loads(body)["error"]
    assert await wire.closed()


async def test_a_head_over_the_limit_is_431_and_closed(port: int) -> None:
    for head in (
        b"GET /" + b"x" * (MAX_HEAD + 1) + b" HTTP/1.1\r\nHost: katar\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: katar\r\n" + b"X-Big: " + b"y" * MAX_HEAD + b"\r\n\r\n",
    ):
        wire = Wire(*await asyncio.open_connection("127.0.0.1", port))
        await wire.send(head)
        status, headers, body = await wire.answer()
        assert status == 431
        assert headers["connection"] == "close"
        assert f"over {MAX_HEAD} bytes" in json.loads(body)["error"]
        assert await wire.closed()
        wire.close()


async def _raw_client(port: int) -> socket.socket:
    """A blocking-free raw client socket with a small receive buffer: a client that does not
    read its answers fills it soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def test_a_client_that_does_not_read_holds_a_bounded_amount_of_memory(app: App) -> None:
    # Thousands of pipelined requests for a large answer, never read: the server stops
    # answering once its writes are paused and stops parsing once a few requests queue, so
    # what it holds for the connection stays near one transport buffer plus one answer.
    one = request("GET", "/openapi.json")
    requests = one * 3000
    answer = len(app.openapi_json)
    sets: list[set[Any]] = []
    async with served(app, connections=sets) as url:
        sock = await _raw_client(int(url.rsplit(":", 1)[1]))
        # Sent aside: the server may stop reading before all of it is in.
        sending = asyncio.create_task(asyncio.get_running_loop().sock_sendall(sock, requests))
        try:
            await eventually(lambda: _true(bool(sets[0])))
            (connection,) = sets[0]

            async def held_back() -> bool:
                return connection.write_paused and not connection.answering

            await eventually(held_back)
            for _ in range(5):  # and it stays so: nothing more is answered meanwhile
                buffered = connection.transport.get_write_buffer_size()
                assert buffered <= 64 * 1024 + 2 * answer
                # The queue's bound (16), and what one slice of parsing (16 KiB) holds.
                assert len(connection.pending) <= 16 + 16 * 1024 // len(one)
                assert len(connection.unparsed) <= len(requests)
                await asyncio.sleep(0.05)
            answered = app.requests[("GET", "/openapi.json", 200)]
            assert answered < 3000
            assert answered * answer < 4 * 1024 * 1024 + buffered
        finally:
            sending.cancel()
            sock.close()


async def test_a_stalled_reader_is_dropped_after_the_body_timeout(app: App) -> None:
    sets: list[set[Any]] = []
    async with served(app, (5, 0.3, 5), connections=sets) as url:
        sock = await _raw_client(int(url.rsplit(":", 1)[1]))
        requests = request("GET", "/openapi.json") * 3000
        sending = asyncio.create_task(asyncio.get_running_loop().sock_sendall(sock, requests))
        try:
            await eventually(lambda: _true(bool(sets[0])))
            await eventually(lambda: _true(not sets[0]))  # gone: its buffers freed
        finally:
            sending.cancel()
            sock.close()


async def _true(value: bool) -> bool:
    return value


async def test_a_long_pipeline_in_one_piece_is_answered_in_order(wire: Wire) -> None:
    # Far more requests than one slice of parsing and the queue hold: parsed in turns.
    count = 3000
    await wire.send(b"".join(request("GET", f"/v1/queue/q/tasks/{n}") for n in range(count)))
    for n in range(count):
        status, _headers, body = await wire.answer()
        assert status == 404
        assert f"'{n}'" in json.loads(body)["error"]


async def test_pipelined_upgrade_requests_do_not_recurse(wire: Wire) -> None:
    upgrade = ("Connection: Upgrade", "Upgrade: h2c")
    count = 3000
    await wire.send(request("GET", "/healthz", b"", *upgrade) * count)
    for _ in range(count):
        status, _headers, body = await wire.answer()
        assert status == 200
        assert json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("coding", ["gzip, chunked", "chunked, chunked", "deflate,chunked"])
async def test_a_transfer_coding_other_than_chunked_is_400(
    wire: Wire, katar: Katar, coding: str
) -> None:
    await wire.send(
        f"POST /v1/queue/q/tasks HTTP/1.1\r\nHost: katar\r\nTransfer-Encoding: {coding}\r\n\r\n"
        'b\r\n{"data": 1}\r\n0\r\n\r\n'.encode()
    )
    status, headers, body = await wire.answer()
    assert status == 400
    assert headers["connection"] == "close"
    assert "Transfer-Encoding" in json.loads(body)["error"]
    assert await katar.queue("q").tasks() == []


async def test_a_request_queued_behind_a_long_poll_is_not_cut_off(app: App) -> None:
    # The head timeout is the client's to meet: a request whose head and body arrived whole
    # waits for the long poll before it without a clock running on it.
    async with served(app, (0.3, 5, 5)) as url:
        wire = Wire(*await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1])))
        try:
            poll = request("POST", "/v1/queue/q", b'{"wait": 1}')
            await wire.send(poll + request("GET", "/healthz"))
            assert (await wire.answer())[0] == 204
            assert (await wire.answer())[0] == 200
            await wire.send(request("GET", "/healthz"))
            status, headers, _ = await wire.answer()
            assert status == 200  # not the 408 of a head that "did not arrive"
            assert "connection" not in headers
        finally:
            wire.close()


async def test_expect_100_continue_is_not_answered_for_a_refused_request(katar: Katar) -> None:
    # A token is checked before a body is invited: the refusal comes at once, no
    # "100 Continue" first, and the connection closes (the client may send the body anyway).
    token = Token(sha256=digest("secret"), role=Role.WORKER, queues=frozenset({"q"}))
    guarded = App(katar.engine, tokens=[token])
    async with served(guarded) as url:
        connection = Wire(*await asyncio.open_connection("127.0.0.1", int(url.rsplit(":")[-1])))
        body = b'{"data": 1}'
        head = request("POST", "/v1/queue/q/tasks", body, "Expect: 100-continue")
        await connection.send(head[: -len(body)])
        status, headers, answer = await connection.answer()
        assert status == 401
        assert headers["connection"] == "close"
        assert b"Authorization" in answer or b"token" in answer
        assert await connection.closed()
        connection.close()
    assert await katar.queue("q").tasks() == []


async def test_an_escaped_slash_is_part_of_a_segment_not_a_separator(
    wire: Wire, katar: Katar
) -> None:
    await katar.queue("q").enqueue({"n": 1})
    # /v1/queue/q%2Ftasks names the queue "q/tasks" (none), not the task list of "q".
    await wire.send(request("GET", "/v1/queue/q%2Ftasks"))
    status, _headers, body = await wire.answer()
    assert status == 404
    assert json.loads(body) == {"error": "Queue not found", "queue": "q/tasks"}
    await wire.send(request("GET", "/v1/queue/q/tasks/1%2Fchildren"))
    status, _headers, _body = await wire.answer()
    assert status == 404
    # Other escapes are decoded in their segment: %71 is "q".
    await wire.send(request("GET", "/v1/queue/%71/tasks"))
    status, _headers, body = await wire.answer()
    assert status == 200
    assert len(json.loads(body)["tasks"]) == 1
