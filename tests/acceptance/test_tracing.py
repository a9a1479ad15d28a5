"""``katar serve --otlp-endpoint`` (and OTEL_EXPORTER_OTLP_ENDPOINT): a real server exports
its spans over OTLP/HTTP to a loopback receiver, and flushes them when it stops; a bad
endpoint is a clear start-up error."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import KatarProcess, run_katar, wait_until
from tests.helpers.otlp import attributes, receiving

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_served_enqueue_poll_and_ack_are_exported(
    tmp_path: Path, servers: list[KatarProcess], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiving() as receiver:
        args: tuple[str, ...] = ("--db", "sqlite:///k.db")
        if how == "flag":
            args += ("--otlp-endpoint", receiver.url)
        else:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        server = KatarProcess(tmp_path, *args)
        servers.append(server.start())
        with httpx.Client(base_url=server.url) as http:
            http.put("/v1/queue/q", json={}).raise_for_status()
            created = http.post(
                "/v1/queue/q/tasks", json={"data": 1}, headers={"traceparent": PARENT}
            )
            task_id = created.json()["tasks"][0]["_id"]
            (task,) = http.post("/v1/queue/q", json={"max": 1}).json()["tasks"]
            assert task["trace"] == {"traceparent": PARENT}
            http.post("/v1/queue/q", json={"tasks": [{"_id": task_id, "status": "done"}]})
        assert server.terminate() == 0  # the spans still queued are exported on the way out
        wait_until(lambda: len(receiver.spans) >= 3, 10)
        names = sorted(span.name for span, _resource in receiver.spans)
        assert names == ["receive q", "send q", "settle q"]
        assert {span.trace_id.hex() for span, _r in receiver.spans} == {PARENT[3:35]}


def test_a_bad_endpoint_stops_the_start(tmp_path: Path) -> None:
    done = run_katar(tmp_path, "serve", "--port", "0", "--otlp-endpoint", "collector:4318")
    assert done.returncode != 0
    assert "http:// or https://" in done.stderr


class _Hooks(http.server.ThreadingHTTPServer):
    """A push endpoint on loopback: keeps each push's headers, answers 204."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.headers: list[dict[str, str]] = []


class _HookHandler(http.server.BaseHTTPRequestHandler):
    server: _Hooks

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.server.headers.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_served_push_runs_in_a_process_span_whose_context_it_carries(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    hooks = _Hooks()
    thread = threading.Thread(target=hooks.serve_forever, daemon=True)
    thread.start()
    try:
        with receiving() as receiver:
            config = tmp_path / "katar.toml"
            config.write_text(f'[push]\nallow = ["127.0.0.1:{hooks.server_address[1]}"]\n')
            server = KatarProcess(
                tmp_path, "--db", "sqlite:///k.db", "--config", str(config),
                "--otlp-endpoint", receiver.url,
            )  # fmt: skip
            servers.append(server.start())
            push = {"url": f"http://127.0.0.1:{hooks.server_address[1]}/hook"}
            with httpx.Client(base_url=server.url) as client:
                client.put("/v1/queue/hooks", json={"push": push}).raise_for_status()
                client.post(
                    "/v1/queue/hooks/tasks", json={"data": 1}, headers={"traceparent": PARENT}
                ).raise_for_status()
                wait_until(lambda: len(hooks.headers) >= 1, 20)
            assert server.terminate() == 0  # the spans still queued are exported on the way out
            wait_until(lambda: any(s.name == "settle hooks" for s, _r in receiver.spans), 10)
        # the tree: the enqueue, the claim, the push, its outcome; all in the producer's trace
        by_name = {span.name: span for span, _r in receiver.spans}
        assert sorted(by_name) == ["process hooks", "receive hooks", "send hooks", "settle hooks"]
        assert len(receiver.spans) == 4
        for span in by_name.values():
            assert span.trace_id.hex() == PARENT[3:35]
            assert span.parent_span_id.hex() == PARENT[36:52]
        assert attributes(by_name["settle hooks"])["messaging.operation.name"] == "done"
        process = by_name["process hooks"]
        assert process.parent_span_id.hex() == PARENT[36:52]
        (headers,) = hooks.headers
        assert headers["traceparent"] == f"00-{PARENT[3:35]}-{process.span_id.hex()}-01"
    finally:
        hooks.shutdown()
        hooks.server_close()
