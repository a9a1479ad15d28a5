"""`katar queues`, `tasks`, `retry`, `pause`, `resume`, `workers` against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from katar.auth import digest, new_token
from katar.client import Producer
from tests.acceptance.conftest import KatarProcess

# Its tests share module-wide fixtures: pytest-xdist runs them in one process (--dist
# loadgroup), which makes those once.
pytestmark = pytest.mark.xdist_group("cli-admin")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KatarProcess]:
    cwd: Path = tmp_path_factory.mktemp("admin")
    process = KatarProcess(cwd, "--db", "sqlite:///k.db").start()
    httpx.put(f"{process.url}/v1/queue/jobs", json={"persistent": True}).raise_for_status()
    with Producer(process.url) as producer:
        producer.enqueue_many("jobs", [1, 2, 3], key="acme")
    # Two tasks fail for good, one is done, by a worker named "w1".
    poll = httpx.post(f"{process.url}/v1/queue/jobs", json={"max": 3, "worker": "w1"})
    ids = [task["_id"] for task in poll.json()["tasks"]]
    acks = [{"_id": ids[0], "status": "done"}]
    acks += [{"_id": i, "status": "failed", "error": "SMTP refused\nthe mail"} for i in ids[1:]]
    body = {"tasks": acks, "max": 0, "worker": "w1"}
    httpx.post(f"{process.url}/v1/queue/jobs", json=body).raise_for_status()
    yield process
    process.kill()


def katar(server: KatarProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "katar", *args],
        cwd=server.cwd,
        env={**os.environ, "KATAR_URL": server.url},
        text=True,
        capture_output=True,
        timeout=60,
    )


def test_queues_as_a_table_and_as_json(server: KatarProcess) -> None:
    table = katar(server, "queues")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["QUEUE", "STATE", "PAUSED"]
    assert row.split() == ["jobs", "active", "0", "0", "0", "1", "2", "0", "0"]  # last: waiting
    assert header.index("FAILED") + len("FAILED") == row.index("2") + 1  # right-aligned
    listed = json.loads(katar(server, "queues", "--json").stdout)
    assert [q["name"] for q in listed] == ["jobs"]
    assert listed[0]["counts"]["failed"] == 2


def test_tasks_filtered_by_status_and_error(server: KatarProcess) -> None:
    table = katar(server, "tasks", "jobs", "--status", "failed", "--error", "SMTP")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID",
        "STATUS",
        "PRIORITY",
        "ATTEMPTS",
        "AGE",
        "KEY",
        "WORKER",
        "ERROR",
    ]
    assert len(rows) == 2
    assert all("failed" in row and "acme" in row and "SMTP refused the mail" in row for row in rows)
    listed = json.loads(katar(server, "tasks", "jobs", "--status", "done", "--json").stdout)
    assert [t["status"] for t in listed] == ["done"]


def test_pause_and_resume(server: KatarProcess) -> None:
    paused = katar(server, "pause", "jobs")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "queue jobs paused"
    assert "paused" in katar(server, "queues").stdout.splitlines()[1].split()[1]
    resumed = katar(server, "resume", "jobs", "--json")
    assert json.loads(resumed.stdout) == {"queue": "jobs", "paused": False}
    assert katar(server, "queues").stdout.splitlines()[1].split()[1] == "active"


def test_workers(server: KatarProcess) -> None:
    table = katar(server, "workers")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:2] == ["WORKER", "QUEUES"]
    assert row.split()[:2] == ["w1", "jobs"]
    (seen,) = json.loads(katar(server, "workers", "--json").stdout)
    assert seen["name"] == "w1"
    assert seen["in_progress"] == 0


def test_retry_the_failed_tasks(server: KatarProcess) -> None:
    retried = katar(server, "retry", "jobs", "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"matched": 2, "changed": 2}
    again = katar(server, "retry", "jobs")
    assert again.stdout.strip() == "retried 0 of the 0 task(s) that matched"
    with Producer(server.url) as producer:
        assert len(producer.tasks("jobs", "queued")) == 2
    # The retried tasks keep their last error and worker: the table says they are old news.
    _, *rows = katar(server, "tasks", "jobs", "--status", "queued").stdout.splitlines()
    assert len(rows) == 2
    assert all("(earlier attempt) w1" in row for row in rows)
    assert all("(earlier attempt) SMTP refused the mail" in row for row in rows)


def test_retry_one_task_with_new_data(server: KatarProcess) -> None:
    with Producer(server.url) as producer:
        task = producer.enqueue("jobs", {"to": "typo"}, paused=True)
    edited = katar(server, "retry", "jobs", "--id", task.id, "--data", '{"to": "fixed"}')
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.strip() == f"task {task.id} is queued (attempts so far: 0)"
    with Producer(server.url) as producer:
        assert producer.get("jobs", task.id).data == {"to": "fixed"}
        producer.cancel("jobs", task.id)
    bad = katar(server, "retry", "jobs", "--id", task.id, "--data", "{oops")
    assert bad.returncode == 2
    assert "--data must be JSON" in bad.stderr
    alone = katar(server, "retry", "jobs", "--data", "1")
    assert alone.returncode == 2
    assert "give its --id" in alone.stderr
    # Gone again: the other tests count the queue's tasks.
    httpx.delete(f"{server.url}/v1/queue/jobs/tasks/{task.id}").raise_for_status()


def test_clear_errors(server: KatarProcess) -> None:
    missing = katar(server, "tasks", "nope")
    assert missing.returncode == 1
    assert f"no queue 'nope' on {server.url}: create it with PUT /v1/queue/nope" in missing.stderr
    usage = katar(server, "tasks", "jobs", "--status", "lost")
    assert usage.returncode == 2
    assert "invalid choice: 'lost'" in usage.stderr
    bad_limit = katar(server, "tasks", "jobs", "--limit", "0")
    assert bad_limit.returncode == 2
    assert "--limit must be at least 1" in bad_limit.stderr
    no_queue = katar(server, "pause")
    assert no_queue.returncode == 2


def test_a_reader_that_goes_away_ends_the_output_quietly(server: KatarProcess) -> None:
    # `katar queues --json | head` ended in a BrokenPipeError traceback.
    process = subprocess.Popen(
        [sys.executable, "-m", "katar", "tasks", "jobs", "--json"],
        env={**os.environ, "KATAR_URL": server.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()  # gone before the command writes anything
    _, err = process.communicate(timeout=60)
    assert process.returncode == 141
    assert err == ""


def test_a_missing_or_unknown_token_is_told_in_flags(tmp_path: Path) -> None:
    # The 401 said to send an HTTP header; the command line has --token and KATAR_TOKEN.
    secret = new_token()
    (tmp_path / "katar.toml").write_text(
        f'[[tokens]]\ntoken_sha256 = "{digest(secret).hex()}"\nrole = "admin"\nqueues = ["*"]\n'
    )
    process = KatarProcess(tmp_path, "--db", "memory://", "--config", "katar.toml").start()
    try:
        missing = katar(process, "queues")
        assert missing.returncode == 1
        assert (
            f"{process.url} needs a token: pass --token TOKEN or set KATAR_TOKEN" in missing.stderr
        )
        unknown = katar(process, "queues", "--token", "katar_unknown")
        assert unknown.returncode == 1
        assert "does not accept this token (from --token or KATAR_TOKEN)" in unknown.stderr
        good = katar(process, "queues", "--token", secret)
        assert good.returncode == 0, good.stderr
    finally:
        process.kill()


def test_redrive_moves_dead_letters_back(server: KatarProcess) -> None:
    base = server.url
    options = {"persistent": True, "max_attempts": 1, "dead_letter": "mail.dead"}
    httpx.put(f"{base}/v1/queue/mail", json=options).raise_for_status()
    with Producer(base) as producer:
        producer.enqueue_many("mail", [1, 2, 3])
        producer.enqueue("mail.dead", "from nowhere")
    poll = httpx.post(f"{base}/v1/queue/mail", json={"max": 3, "worker": "w1"})
    acks = [{"_id": t["_id"], "status": "failed"} for t in poll.json()["tasks"]]
    httpx.post(f"{base}/v1/queue/mail", json={"tasks": acks, "max": 0}).raise_for_status()
    moved = katar(server, "redrive", "mail.dead")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.splitlines() == [
        "moved 3 of the 4 task(s) that matched back to their origin",
        "1 task(s) stayed: no origin to go back to (name one with --to)",
    ]
    told = katar(server, "redrive", "mail.dead", "--to", "jobs", "--json")
    assert json.loads(told.stdout) == {"matched": 1, "moved": 1, "no_origin": 0}
    rated = katar(server, "redrive", "mail", "--to", "mail.dead", "--rate", "100", "--json")
    assert rated.returncode == 0, rated.stderr
    job = json.loads(rated.stdout)
    assert (job["queue"], job["to"], job["rate"], job["state"]) == (
        "mail",
        "mail.dead",
        100,
        "running",
    )
    wrong = katar(server, "redrive", "mail", "--status", "done")
    assert wrong.returncode == 2
    nowhere = katar(server, "redrive", "mail", "--to", "nope")
    assert nowhere.returncode == 1
    assert "nope" in nowhere.stderr
