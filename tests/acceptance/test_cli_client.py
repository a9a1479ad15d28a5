"""`katar enqueue` and `katar worker`, as the README runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from katar.client import Producer
from tests.acceptance.conftest import KatarProcess, wait_until

JOBS = """
import time

def square(task):
    return task.data["n"] ** 2

def forever(task):
    print("started", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KatarProcess]:
    process = KatarProcess(tmp_path, "--db", "sqlite:///k.db").start()
    httpx.put(f"{process.url}/v1/queue/jobs", json={"persistent": True}).raise_for_status()
    (tmp_path / "jobs.py").write_text(JOBS)
    yield process
    process.kill()


def katar(server: KatarProcess, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "katar", *args],
        cwd=server.cwd,
        env={**os.environ, "KATAR_URL": server.url},
        text=True,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_enqueue_then_work(server: KatarProcess) -> None:
    one = katar(server, "enqueue", "--queue", "jobs", "--priority", "high", '{"n": 7}')
    out, err = one.communicate(timeout=30)
    assert one.returncode == 0, err
    assert out.split() == ["1"]
    lines = "".join(f'{{"n": {n}}}\n' for n in range(20))
    many = katar(server, "enqueue", "--queue", "jobs", "-", stdin=subprocess.PIPE)
    out, err = many.communicate(lines, timeout=30)
    assert many.returncode == 0, err
    assert len(out.split()) == 20
    worker = katar(server, "worker", "--queue", "jobs", "--concurrency", "3", "jobs:square")
    try:
        with Producer(server.url) as producer:
            wait_until(lambda: len(producer.tasks("jobs", "done")) == 21)
            results = sorted(t.result for t in producer.tasks("jobs", "done"))
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert results == sorted([49, *(n * n for n in range(20))])


def test_enqueue_takes_a_trace_context(server: KatarProcess) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    one = katar(
        server, "enqueue", "--queue", "jobs", "--traceparent", traceparent,
        "--tracestate", "rojo=1", '{"n": 1}',
    )  # fmt: skip
    out, err = one.communicate(timeout=30)
    assert one.returncode == 0, err
    with Producer(server.url) as producer:
        record = producer.get("jobs", out.strip())
    assert record.trace is not None
    assert (record.trace.traceparent, record.trace.tracestate) == (traceparent, "rojo=1")
    bad = katar(server, "enqueue", "--queue", "jobs", "--traceparent", "00-nope", "1")
    _, err = bad.communicate(timeout=30)
    assert bad.returncode != 0
    assert "not a W3C traceparent" in err


def test_enqueue_takes_attributes(server: KatarProcess) -> None:
    given = {"MessageAttributes": {"lang": {"DataType": "String", "StringValue": "en"}}}
    one = katar(server, "enqueue", "--queue", "jobs", "--attributes", json.dumps(given), "1")
    out, err = one.communicate(timeout=30)
    assert one.returncode == 0, err
    with Producer(server.url) as producer:
        record = producer.get("jobs", out.strip())
    assert record.attributes is not None
    assert record.attributes.MessageAttributes["lang"].StringValue == "en"
    # The server checks them: an attribute SQS refuses is a 422, said on stderr.
    bad = {"MessageAttributes": {"AWS.lang": {"DataType": "String", "StringValue": "en"}}}
    refused = katar(server, "enqueue", "--queue", "jobs", "--attributes", json.dumps(bad), "1")
    _, err = refused.communicate(timeout=30)
    assert refused.returncode != 0
    assert "Message attribute name 'AWS.lang' is invalid" in err
    not_object = katar(server, "enqueue", "--queue", "jobs", "--attributes", "[1]", "1")
    _, err = not_object.communicate(timeout=30)
    assert not_object.returncode != 0
    assert "--attributes: a JSON object" in err


def test_a_second_signal_stops_the_worker_at_once(server: KatarProcess) -> None:
    katar(server, "enqueue", "--queue", "jobs", '{"n": 1}').communicate(timeout=30)
    worker = katar(server, "worker", "--queue", "jobs", "jobs:forever")
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "started"
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert worker.poll() is None  # the first signal waits for the running task
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=10)
    assert worker.returncode == 130
    assert "exiting at once" in err


def test_clear_errors(server: KatarProcess) -> None:
    bad = katar(server, "enqueue", "--queue", "jobs", "not json")
    _, err = bad.communicate(timeout=30)
    assert bad.returncode == 2
    assert "DATA is not JSON" in err
    missing = katar(server, "enqueue", "--queue", "nope", "1")
    _, err = missing.communicate(timeout=30)
    assert missing.returncode == 1
    assert f"no queue 'nope' on {server.url}: create it with PUT /v1/queue/nope" in err
    no_module = katar(server, "worker", "--queue", "jobs", "nowhere:f")
    _, err = no_module.communicate(timeout=30)
    assert no_module.returncode == 2
    assert "cannot import 'nowhere'" in err
    wrong_queue = katar(server, "worker", "--queue", "nope", "jobs:square")
    _, err = wrong_queue.communicate(timeout=30)
    assert wrong_queue.returncode == 1
    assert "no queue 'nope'" in err
    assert "[queues.nope]" in err
    assert "Traceback" not in err


def test_a_url_without_a_scheme_is_http(server: KatarProcess) -> None:
    # "--url 127.0.0.1:3951" retried for ever, "localhost:3951" said "unsupported protocol".
    bare = f"127.0.0.1:{server.port}"
    enqueued = katar(server, "enqueue", "--queue", "jobs", "--url", bare, '{"n": 2}')
    out, err = enqueued.communicate(timeout=30)
    assert enqueued.returncode == 0, err
    worker = katar(server, "worker", "--queue", "jobs", "--url", bare, "jobs:square")
    try:
        with Producer(server.url) as producer:
            wait_until(lambda: producer.get("jobs", out.strip()).status == "done")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert worker.returncode == 0


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:21", "http://", "localhost:port"])
def test_a_url_that_is_not_a_server_is_a_usage_error(server: KatarProcess, url: str) -> None:
    for args, env in ((["--url", url], {}), ([], {"KATAR_URL": url})):
        command = [sys.executable, "-m", "katar", "enqueue", "--queue", "jobs", *args, "1"]
        done = subprocess.run(
            command, env={**os.environ, **env}, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2
        assert "must be http://HOST:PORT or https://HOST:PORT" in done.stderr
        assert "from --url or $KATAR_URL" in done.stderr


def test_a_worker_that_cannot_connect_names_the_server(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "jobs.py").write_text(JOBS)
    log = tmp_path / "worker.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as stderr:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "katar",
                "worker",
                "--url",
                url,
                "--queue",
                "jobs",
                "jobs:square",
            ],
            cwd=tmp_path,
            stderr=stderr,
            text=True,
        )
        try:
            wait_until(lambda: log.read_text().count("no answer") >= 2)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    assert f"GET {url}/v1/queue/jobs: no answer (ConnectError" in log.read_text()
