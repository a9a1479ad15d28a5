"""A worker frozen (SIGSTOP) past its lease: the task goes to another worker, and the frozen
one's ack, once it thaws (SIGCONT), changes nothing."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import KatarProcess

ROOT = Path(__file__).resolve().parents[2]


class Lines:
    """The JSON lines a process prints, read by a thread so that a wait is bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.process = process
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.put(line)
        self.lines.put("")

    def next(self, timeout: float = 20) -> Any:
        line = self.lines.get(timeout=timeout)
        assert line, f"the worker stopped (status {self.process.wait(10)})"
        return json.loads(line)


@pytest.fixture
def worker_process() -> Iterator[list[Lines]]:
    """A list to put started worker processes in; each is killed at the end of the test."""
    started: list[Lines] = []
    yield started
    for printed in started:
        process = printed.process
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait(10)
        printed.reader.join(10)
        if process.stdin is not None:
            process.stdin.close()


def test_a_worker_stopped_past_its_lease(
    tmp_path: Path, servers: list[KatarProcess], worker_process: list[Lines]
) -> None:
    server = KatarProcess(tmp_path, "--db", "sqlite:///katar.db").start()
    servers.append(server)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.put("/v1/queue/q", json={"persistent": True, "timeout": 1000}).raise_for_status()
        created = client.post("/v1/queue/q/tasks", json={"data": "work"})
        assert created.status_code == 201
        task_id = created.json()["tasks"][0]["_id"]

        frozen = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.stopped_worker", server.url, "q"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        printed = Lines(frozen)
        worker_process.append(printed)
        first = printed.next()
        assert (first["_id"], first["attempt"]) == (task_id, 1)
        os.kill(frozen.pid, signal.SIGSTOP)
        assert frozen.stdin is not None
        frozen.stdin.write("ack\n")  # read once it runs again
        frozen.stdin.flush()

        # Another worker, long polling, gets the task once the frozen one's lease ran out.
        body = {"worker": "rescuer", "wait": 20}
        second = client.post("/v1/queue/q", json=body)
        assert second.status_code == 200
        again = second.json()["tasks"][0]
        assert (again["_id"], again["attempt"]) == (task_id, 2)
        ack = {"_id": task_id, "status": "done", "attempt": 2, "result": "rescued"}
        assert (
            client.post("/v1/queue/q", json={"tasks": [ack], "worker": "rescuer"}).status_code
            == 204
        )
        finished = client.get(f"/v1/queue/q/tasks/{task_id}").json()

        os.kill(frozen.pid, signal.SIGCONT)
        late = [printed.next() for _ in range(2)]
        assert frozen.wait(20) == 0
        # A stale ack is not an error (acks are idempotent), or it is refused as another
        # worker's task (409): either way it changes nothing.
        assert [answer["status"] for answer in late if answer["status"] not in (204, 409)] == []
        assert client.get(f"/v1/queue/q/tasks/{task_id}").json() == finished
        assert finished["status"] == "done"
        assert finished["result"] == "rescued"
        assert finished["attempts"] == 2
        # Not delivered again.
        assert client.post("/v1/queue/q", json={"worker": "rescuer"}).status_code == 204
