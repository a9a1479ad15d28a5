"""``katar serve --otlp-endpoint`` (and OTEL_EXPORTER_OTLP_ENDPOINT): a real server exports
its spans over OTLP/HTTP to a loopback receiver, and flushes them when it stops; a bad
endpoint is a clear start-up error."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import KatarProcess, run_katar, wait_until
from tests.helpers.otlp import receiving

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
