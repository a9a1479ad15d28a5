"""`katar enqueue` and `katar worker`, as the README runs them."""

from __future__ import annotations

import os
import signal
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
    assert "404 Queue not found" in err
    no_module = katar(server, "worker", "--queue", "jobs", "nowhere:f")
    _, err = no_module.communicate(timeout=30)
    assert no_module.returncode == 2
    assert "cannot import 'nowhere'" in err
    wrong_queue = katar(server, "worker", "--queue", "nope", "jobs:square")
    _, err = wrong_queue.communicate(timeout=30)
    assert wrong_queue.returncode == 1
    assert "404 Queue not found" in err
