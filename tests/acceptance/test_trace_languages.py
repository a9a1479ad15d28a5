"""One trace across languages: a Python producer (katar.client, with an OpenTelemetry SDK
tracer provider) enqueues a task inside a span, and a TypeScript worker (clients/typescript)
and a Go worker (clients/go), each a process of its own against a live ``katar serve``,
receive it with that span's trace context.

node or go missing on the machine skips its case with the reason, unless
KATAR_REQUIRE_EXAMPLES=1 (as .ci/run sets): then it is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from katar.client import Producer
from tests.acceptance.conftest import KatarProcess
from tests.acceptance.test_examples import CLIENTS, _build

WORKERS = Path(__file__).resolve().parent / "trace_workers"
#: The longest a worker may take to receive its task and stop.
WORKER_SECONDS = 60


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    """The application's tracer provider, as an application with OpenTelemetry sets it
    (once per process: the API keeps the first)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KatarProcess]:
    process = KatarProcess(tmp_path_factory.mktemp("katar"), "--db", "memory://").start()
    yield process
    process.kill()


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        reason = f"this case needs {tool}, missing on this machine"
        if os.environ.get("KATAR_REQUIRE_EXAMPLES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def node_worker(url: str, queue: str) -> list[str]:
    need("node")
    need("npm")
    _build("node")  # clients/typescript's dist/, as the examples' tests build it
    index = (CLIENTS / "typescript" / "dist" / "index.js").as_uri()
    return ["node", str(WORKERS / "worker.mjs"), index, url, queue]


def go_worker(url: str, queue: str) -> list[str]:
    need("go")
    binary = Path(tempfile.mkdtemp(prefix="katar-trace-go-")) / "worker"
    built = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=WORKERS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, f"go build failed:\n{built.stdout}{built.stderr}"
    return [str(binary), url, queue]


def run_worker(command: list[str]) -> dict[str, Any]:
    """Run the worker until it has taken one task and stopped (killed, by its PID, after
    WORKER_SECONDS); what it printed of that task."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=WORKER_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"{command[0]} took no task in time:\n{out}{err}") from None
    assert process.returncode == 0, f"{command[0]} exited {process.returncode}:\n{out}{err}"
    lines = out.splitlines()
    assert len(lines) == 1, f"{command[0]} printed:\n{out}{err}"
    printed: dict[str, Any] = json.loads(lines[0])
    return printed


@pytest.mark.parametrize("language", ["typescript", "go"])
def test_a_worker_receives_the_producers_trace(language: str, server: KatarProcess) -> None:
    queue = f"traced-{language}"
    command = (node_worker if language == "typescript" else go_worker)(server.url, queue)
    with httpx.Client(base_url=server.url) as http:
        http.put(f"/v1/queue/{queue}", json={"persistent": True}).raise_for_status()
    tracer = trace.get_tracer("katar.tests")
    producer = Producer(server.url)
    try:
        with tracer.start_as_current_span("checkout") as span:
            context = span.get_span_context()
            task = producer.enqueue(queue, {"order": 42})
    finally:
        producer.close()
    trace_id = format(context.trace_id, "032x")
    printed = run_worker(command)
    assert printed["id"] == task.id
    traceparent = printed["trace"]["traceparent"]
    assert traceparent.split("-")[1] == trace_id
    # the producer's span is the task's parent: the worker's span joins the checkout
    span_id, flags = format(context.span_id, "016x"), format(context.trace_flags, "02x")
    assert traceparent == f"00-{trace_id}-{span_id}-{flags}"
    with httpx.Client(base_url=server.url) as http:
        record = http.get(f"/v1/queue/{queue}/tasks/{task.id}").json()
    assert record.get("trace") == printed["trace"], record
    assert record["status"] == "done"  # the worker acked it before it stopped
