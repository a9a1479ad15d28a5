"""Hypothesis on Katar's HTTP protocol: requests whole, broken, mixed with garbage and cut
anywhere. The protocol never raises, never answers 5xx, and every answer is well formed."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.server import ServerState

from katar import Katar
from katar.http import App, Limits
from katar.http.connection import HttpProtocol
from tests.fuzz import fuzz_settings

# Its tests share module-wide fixtures: pytest-xdist runs them in one process (--dist
# loadgroup), which makes those once.
pytestmark = pytest.mark.xdist_group("fuzz-protocol")

STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class Transport(asyncio.Transport):
    """Collects what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # everything is "sent" at once

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


targets = st.sampled_from(
    ["/healthz", "/v1/queue/q", "/v1/queue/q/tasks", "/v1/queue/q/tasks/1", "/v1/queues", "/x"]
) | st.text(max_size=12).map(lambda text: "/" + text)
# No HEAD: its answers carry a length and no body (tests/http/test_protocol.py checks it),
# and here every answer's framing is checked.
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW"])
bodies = st.sampled_from(
    [b"", b"{}", b'{"data": 1}', b'{"max": 2}', b'{"tasks":[{"_id":"1","status":"done"}]}']
) | st.binary(max_size=64)
extra_headers = st.lists(
    st.sampled_from(
        [
            "Expect: 100-continue",
            "Connection: close",
            "Connection: keep-alive",
            "Connection: Upgrade",
            "Upgrade: h2c",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip, chunked",
            "Content-Length: 5",
            "Content-Length: -1",
            "Content-Length: 99999999999999999999",
            "Content-Type: application/json",
            "X: \x00",
        ]
    ),
    max_size=3,
)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """Requests, some corrupted, as the chunks they arrive in."""
    data = b""
    for _ in range(draw(st.integers(1, 4))):
        body = draw(bodies)
        lines = [f"{draw(methods)} {draw(targets)} HTTP/{draw(st.sampled_from(['1.1', '1.0']))}"]
        lines.append("Host: katar")
        lines += draw(extra_headers)
        if draw(st.booleans()):
            lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace") + body
        if draw(st.integers(0, 4)) == 0:  # corrupt it
            at = draw(st.integers(0, len(request)))
            request = request[:at] + draw(st.binary(min_size=1, max_size=8)) + request[at:]
        data += request
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if a < b]


class Harness:
    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.katar = Katar("memory://", reap_interval=3600)
        self.katar.queue("q", persistent=True)
        self.runner.run(self.katar.open())
        app = App(self.katar.engine, limits=Limits(max_body_bytes=1024, max_wait=0.05))
        self.config = uvicorn.Config(app, http=HttpProtocol, loop="none")
        self.state = ServerState()

    def feed(self, chunks: list[bytes], stalled: bool = False) -> bytes:
        """The answers to ``chunks``; with ``stalled``, the client reads none of them until
        every chunk is sent (the transport asks to pause writing first)."""

        async def run() -> bytes:
            protocol = HttpProtocol(self.config, self.state, {})
            transport = Transport()
            protocol.connection_made(transport)
            if stalled:
                protocol.pause_writing()
            for chunk in chunks:
                if transport.closed:
                    break
                protocol.data_received(chunk)
                await asyncio.sleep(0)
            if stalled:
                for _ in range(100):  # the answer begun before the pause, if any
                    if not self.state.tasks:
                        break
                    await asyncio.sleep(0.005)
                protocol.resume_writing()
            for _ in range(100):  # let the answers be written
                if not self.state.tasks:
                    break
                await asyncio.sleep(0.005)
            assert not self.state.tasks, "an answer hangs"
            protocol.connection_lost(None)
            return bytes(transport.written)

        return self.runner.run(run())

    def close(self) -> None:
        self.runner.run(self.katar.close())
        self.runner.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    instance = Harness()
    yield instance
    instance.close()


@fuzz_settings(300)
@given(chunks=streams(), stalled=st.booleans())
def test_any_bytes_get_well_formed_answers_and_never_a_5xx(
    harness: Harness, chunks: list[bytes], stalled: bool
) -> None:
    answers = harness.feed(chunks, stalled).replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    while answers:  # each answer: a status line, headers, and exactly its body
        head, separator, answers = answers.partition(b"\r\n\r\n")
        assert separator, head
        match = STATUS.match(head)
        assert match is not None, head
        assert int(match.group(1)) < 500, head
        lengths = re.findall(rb"\r\ncontent-length: (\d+)", head)
        length = int(lengths[0]) if lengths else 0
        assert len(lengths) == 1 or (not lengths and int(match.group(1)) == 204), head
        assert len(answers) >= length, head
        answers = answers[length:]
