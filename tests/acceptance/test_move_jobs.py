"""A redrive at a rate outlives its server: killed (kill -9) while the job runs, the server
started again on the same store takes the job over once its lease has passed, and finishes
it, its counts exact (each step wrote them with its moves)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from katar.client import Producer
from tests.acceptance.conftest import KatarProcess
from tests.conftest import store_url

TASKS = 6
DEADLINE = 60.0


def job_of(base: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}/v1/queue/src/redrive")
    answer.raise_for_status()
    job: dict[str, Any] = answer.json()
    return job


def wait_for(base: str, done: Any) -> dict[str, Any]:
    """Poll the queue's move job until ``done(job)``; the job (failing after DEADLINE)."""
    deadline = time.monotonic() + DEADLINE
    while not done(job := job_of(base)):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_move_job_killed_with_its_server_finishes_after_a_restart(
    kind: str, tmp_path: Path
) -> None:
    url = store_url(kind, tmp_path)
    server = KatarProcess(tmp_path, "--db", url).start()
    try:
        for queue in ("src", "dst"):
            httpx.put(
                f"{server.url}/v1/queue/{queue}", json={"persistent": True}
            ).raise_for_status()
        with Producer(server.url) as producer:
            producer.enqueue_many("src", list(range(TASKS)))
        started = httpx.post(f"{server.url}/v1/queue/src/redrive", json={"to": "dst", "rate": 1})
        assert started.status_code == 202, started.text
        wait_for(server.url, lambda job: job["moved"] >= 1)
    finally:
        server.kill()  # kill -9: the job stays running in the store, its lease held
    server = KatarProcess(tmp_path, "--db", url).start()
    try:
        assert job_of(server.url)["state"] == "running"
        job = wait_for(server.url, lambda job: job["state"] != "running")
        assert (job["state"], job["matched"], job["moved"], job["remaining"]) == (
            "completed",
            TASKS,
            TASKS,
            0,
        )
        counts = {
            q["name"]: q["counts"]["queued"]
            for q in httpx.get(f"{server.url}/v1/queues").json()["queues"]
        }
        assert counts == {"src": 0, "dst": TASKS}
    finally:
        server.kill()
