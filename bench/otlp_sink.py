"""A cheap OTLP/HTTP traces receiver for the traced benchmarks: it takes every POST (answered
200, kept alive), counts the spans in it without keeping them, and answers ``GET /count`` with
the spans counted so far, so that a bench can check that its spans were exported.

    python -m bench.otlp_sink PORT

The spans are counted by walking the protobuf's fields (ExportTraceServiceRequest: field 1,
ResourceSpans; in it field 2, ScopeSpans; in it field 2, a Span), without decoding a span.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes, start: int, end: int, number: int) -> list[tuple[int, int]]:
    """The (start, end) of each length-delimited field ``number`` in data[start:end]."""
    found = []
    at = start
    while at < end:
        key, at = _varint(data, at)
        kind = key & 7
        if kind == 0:
            _value, at = _varint(data, at)
        elif kind == 1:
            at += 8
        elif kind == 5:
            at += 4
        elif kind == 2:
            length, at = _varint(data, at)
            if key >> 3 == number:
                found.append((at, at + length))
            at += length
        else:
            raise ValueError(f"wire type {kind}")
    return found


def count_spans(body: bytes) -> int:
    """The spans in an ExportTraceServiceRequest."""
    spans = 0
    for resource in _fields(body, 0, len(body), 1):
        for scope in _fields(body, *resource, 2):
            spans += len(_fields(body, *scope, 2))
    return spans


class Sink(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.spans = 0
        self.requests = 0
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: Sink
    protocol_version = "HTTP/1.1"  # the exporter keeps its connection open

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        spans = count_spans(body)
        with self.server.lock:
            self.server.spans += spans
            self.server.requests += 1
        self._answer(b"")

    def do_GET(self) -> None:
        with self.server.lock:
            counted = b'{"spans": %d, "requests": %d}' % (self.server.spans, self.server.requests)
        self._answer(counted)

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    Sink(int(sys.argv[1])).serve_forever()


if __name__ == "__main__":
    main()
