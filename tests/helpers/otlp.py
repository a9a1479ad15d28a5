"""An OTLP/HTTP collector's traces endpoint for the tests: a loopback server that decodes
what it is sent (ExportTraceServiceRequest, with opentelemetry-proto) and keeps the spans."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP collector's traces endpoint: POST /v1/traces, protobuf; over HTTPS with
    ``tls`` (a server context holding its certificate)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tls = tls
        self.spans: list[tuple[Span, dict[str, Any]]] = []
        self.paths: list[str] = []
        #: Each export request's headers, names in lower case.
        self.headers: list[dict[str, str]] = []

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            # A handshake the client refuses raises an OSError here, which the server
            # takes as a connection lost, and serves on.
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused handshake: the exporter's side is what the tests look at

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.paths.append(self.path)
        self.server.headers.append({k.lower(): v for k, v in self.headers.items()})
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend((span, resource) for span in scope_spans.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def receiving(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """A :class:`Receiver` serving, in a thread, while the block runs."""
    server = Receiver(tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def attributes(span: Span) -> dict[str, Any]:
    """A span's attributes, strings and integers, by name."""
    return {
        a.key: a.value.string_value if a.value.HasField("string_value") else a.value.int_value
        for a in span.attributes
    }


async def wait_for_spans(receiver: Receiver, names: int = 1, seconds: float = 10.0) -> None:
    """Wait until ``receiver`` holds spans of at least ``names`` names (the batch processor
    exports every second, from its thread), then a moment for the rest of that export; or
    ``seconds`` at most (the test then sees what came, or nothing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if len({span.name for span, _resource in receiver.spans}) >= names:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
