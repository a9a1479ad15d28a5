"""The export of spans (katar.tracing's export thread), which speaks HTTP/1.1 itself: against
a collector on loopback that answers in each of the ways HTTP allows (a length, chunks, the
connection's end), keeps its connection open or not, closes it unannounced, or refuses."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from katar.core.model import State, Task, trace_context
from katar.tracing import Tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

#: An answer to the n-th request (from 0): its bytes, and whether the collector then closes
#: the connection.
Answer = Callable[[int], tuple[bytes, bool]]


@dataclass
class Request:
    connection: int  # the collector's count of connections, from 0
    line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Collector:
    url: str
    requests: list[Request] = field(default_factory=list)


def _read_request(stream: socket.socket, buffered: bytearray) -> tuple[str, dict[str, str], bytes]:
    while b"\r\n\r\n" not in buffered:
        data = stream.recv(65536)
        if not data:
            raise EOFError
        buffered += data
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for header in lines:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(rest) < length:
        data = stream.recv(65536)
        if not data:
            raise EOFError
        rest += data
    buffered[:] = rest[length:]
    return line, headers, rest[:length]


@contextlib.contextmanager
def collecting(answer: Answer) -> Iterator[Collector]:
    """A collector on loopback, serving one connection at a time in a thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    collector = Collector(f"http://127.0.0.1:{listener.getsockname()[1]}")
    stop = threading.Event()

    def serve() -> None:
        connections = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                buffered = bytearray()
                while True:
                    try:
                        line, headers, body = _read_request(conn, buffered)
                    except (EOFError, OSError):
                        break
                    n = len(collector.requests)
                    collector.requests.append(Request(connections, line, headers, body))
                    data, close = answer(n)
                    conn.sendall(data)
                    if close:
                        break
            connections += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _task(task_id: int) -> Task:
    return Task(
        id=task_id,
        queue="q",
        state=State.READY,
        priority=0,
        data=msgspec.Raw(b"1"),
        created_at=0,
        updated_at=0,
        trace=trace_context(PARENT, None),
    )


def _export(collector: Collector, times: int) -> Tracing:
    """``times`` exports of one send span each, one after the other; then the shutdown."""
    tracing = Tracing(collector.url, export_every=3600)
    for n in range(times):
        tracing.send("q", [_task(n + 1)], time.time_ns())
        tracing.flush()
    tracing.shutdown()
    return tracing


def _spans(request: Request) -> list[str]:
    decoded = ExportTraceServiceRequest()
    decoded.ParseFromString(request.body)
    return [
        span.name
        for resource_spans in decoded.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def test_the_exports_keep_one_connection_open() -> None:
    with collecting(lambda n: (OK, False)) as collector:
        tracing = _export(collector, 3)
    assert tracing.dropped == 0
    assert [r.connection for r in collector.requests] == [0, 0, 0]
    for request in collector.requests:
        assert request.line == "POST /v1/traces HTTP/1.1"
        assert request.headers["content-type"] == "application/x-protobuf"
        assert request.headers["host"] == collector.url.removeprefix("http://")
        assert _spans(request) == ["send q"]


def test_a_collector_that_closes_each_connection_is_connected_to_again() -> None:
    answer = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"  # HTTP/1.0: no keep-alive
    with collecting(lambda n: (answer, True)) as collector:
        tracing = _export(collector, 3)
    assert tracing.dropped == 0
    assert [r.connection for r in collector.requests] == [0, 1, 2]


def test_chunked_answers_and_answers_that_end_with_the_connection() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    unframed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}"
    answers = [(chunked, False), (unframed, True), (OK, False)]
    with collecting(lambda n: answers[n]) as collector:
        tracing = _export(collector, 3)
    assert tracing.dropped == 0
    # the chunked answer read to its end: the next request on the same connection
    assert [r.connection for r in collector.requests] == [0, 0, 1]


def test_a_connection_the_collector_closed_unannounced_is_opened_again_at_once() -> None:
    """It answered as if it kept it open (an idle connection's timeout, say): the next
    export finds it closed, and goes on a new one, neither waiting nor dropping a span."""
    with collecting(lambda n: (OK, n == 0)) as collector:
        tracing = _export(collector, 2)
    assert tracing.dropped == 0
    assert [r.connection for r in collector.requests] == [0, 1]
    assert [_spans(r) for r in collector.requests] == [["send q"], ["send q"]]


def test_an_answer_of_error_drops_the_spans_and_only_some_are_tried_again() -> None:
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    refused = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno"
    answers = [(unavailable, False), (OK, False), (refused, False)]
    with collecting(lambda n: answers[n]) as collector:
        tracing = _export(collector, 2)
    # the first export: 503, then 200 (tried again); the second: 400, not tried again
    assert len(collector.requests) == 3
    assert collector.requests[0].body == collector.requests[1].body
    assert tracing.dropped == 1


def test_the_standard_variables_add_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%20cret,bad name=x,x-two=2")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=traces,x-bad=a%0D%0Ab")
    with collecting(lambda n: (OK, False)) as collector:
        _export(collector, 1)
    (request,) = collector.requests
    # the traces' variable over the general one; a header HTTP cannot carry left out
    assert request.headers["api-key"] == "traces"
    assert "x-two" not in request.headers
    assert "x-bad" not in request.headers
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    with collecting(lambda n: (OK, False)) as collector:
        _export(collector, 1)
    (request,) = collector.requests
    assert request.headers["api-key"] == "s cret"
    assert request.headers["x-two"] == "2"
    assert not any(" " in name for name in request.headers)
