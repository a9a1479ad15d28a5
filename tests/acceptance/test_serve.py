"""``katar serve`` as users run it: a real process, driven over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from katar.client import Job, Producer, TaskRecord, Worker
from tests.acceptance.conftest import KatarProcess, run_katar, wait_until
from tests.helpers.drain import Drain

CONFIG = """
[store]
url = "sqlite:///data/katar.db"

[queues.emails]
persistent = true
timeout = 5000
max_attempts = 10

[queues.emails.configuration]
interval = 1000
smtp_host = "mail.internal"
"""


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "katar.toml"
    path.write_text(text)
    return path


def test_quick_start(tmp_path: Path, servers: list[KatarProcess]) -> None:
    server = KatarProcess(tmp_path).start()
    servers.append(server)
    assert "store sqlite:///katar.db" in server.output()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.put("/v1/queue/emails", json={"persistent": True}).status_code == 200
        created = client.post("/v1/queue/emails/tasks", json={"data": {"to": "a@example.com"}})
        assert created.status_code == 201
        task = client.post("/v1/queue/emails", json={}).json()["tasks"][0]
        assert task["data"] == {"to": "a@example.com"}
        ack = {"tasks": [{"_id": task["_id"], "status": "done"}]}
        assert client.post("/v1/queue/emails", json=ack).status_code == 204
        assert client.get(f"/v1/queue/emails/tasks/{task['_id']}").json()["status"] == "done"
    assert (tmp_path / "katar.db").exists()


def test_configuration_file_declares_queues_that_persist(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    config = write_config(tmp_path)
    server = KatarProcess(tmp_path, "--config", str(config)).start()
    servers.append(server)
    assert "queues: emails" in server.output()
    expected = {"configuration": {"interval": 1000, "smtp_host": "mail.internal"}}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/v1/queue/emails").json() == expected
        client.put("/v1/queue/images", json={"timeout": 1234})
    assert server.terminate() == 0
    # Restarted without the file (same store): both queues are still there.
    again = KatarProcess(tmp_path, "--db", "sqlite:///data/katar.db").start()
    servers.append(again)
    with httpx.Client(base_url=again.url, timeout=10) as client:
        assert client.get("/v1/queue/emails").json() == expected
        queues = {q["name"]: q for q in client.get("/v1/queues").json()["queues"]}
        assert queues["images"]["options"]["timeout"] == 1234


def test_sigterm_releases_long_polls_and_exits_cleanly(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    server = KatarProcess(tmp_path, "--db", "sqlite:///k.db").start()
    servers.append(server)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.put("/v1/queue/q", json={"persistent": True})
        (record,) = client.post("/v1/queue/q/tasks", json={"data": 1}).json()["tasks"]
        client.post("/v1/queue/q", json={})
    results: list[int] = []

    def long_poll() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            results.append(client.post("/v1/queue/q", json={"wait": 25}).status_code)

    poller = threading.Thread(target=long_poll, daemon=True)
    poller.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert server.terminate() == 0, server.output()
    poller.join(10)
    assert results == [204]
    assert time.monotonic() - started < 10  # released, not held for its 25 s
    # The store was closed cleanly and keeps the task, still leased.
    again = KatarProcess(tmp_path, "--db", "sqlite:///k.db").start()
    servers.append(again)
    with httpx.Client(base_url=again.url, timeout=10) as client:
        assert client.get(f"/v1/queue/q/tasks/{record['_id']}").json()["status"] == "in progress"


def test_kill_9_mid_drain_loses_nothing(tmp_path: Path, servers: list[KatarProcess]) -> None:
    config = write_config(tmp_path)
    server = KatarProcess(tmp_path, "--config", str(config)).start()
    servers.append(server)
    total = 3000
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for start in range(0, total, 500):
            body = {"tasks": [{"data": i} for i in range(start, start + 500)]}
            assert client.post("/v1/queue/emails/tasks", json=body).status_code == 201
    drain = Drain(server.url, "emails")
    with ThreadPoolExecutor(8) as pool, drain:
        for n in range(8):
            pool.submit(drain.work, f"w{n}", 1 if n < 6 else 5)
        wait_until(lambda: len(drain.confirmed) >= total // 3)
        server.kill()
        restarted = KatarProcess(tmp_path, "--config", str(config)).start()
        servers.append(restarted)
        drain.url = restarted.url

        def all_done() -> bool:
            stats = httpx.get(f"{restarted.url}/v1/queues", timeout=10).json()["queues"]
            return bool(stats[0]["counts"]["done"] == total)

        wait_until(all_done, seconds=90)
        drain.stop.set()
    assert drain.errors == []
    first_confirmed: dict[str, int] = {}
    for seq, task_id, _attempt in drain.confirmed:
        first_confirmed.setdefault(task_id, seq)
    assert len(first_confirmed) == total
    redelivered_after_done = [
        (seq, task_id)
        for seq, task_id, _attempt in drain.deliveries
        if seq > first_confirmed[task_id]
    ]
    assert redelivered_after_done == []
    delivered = {task_id for _seq, task_id, _attempt in drain.deliveries}
    assert len(delivered) == total


def test_concurrent_workers_never_get_a_leased_task_twice(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    server = KatarProcess(tmp_path, "--db", "sqlite:///k.db").start()
    servers.append(server)
    total = 2000
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.put("/v1/queue/q", json={"timeout": 600000})
        body = {"tasks": [{"data": i} for i in range(total)]}
        assert client.post("/v1/queue/q/tasks", json=body).status_code == 201
    drain = Drain(server.url, "q")
    with ThreadPoolExecutor(16) as pool, drain:
        for n in range(16):
            pool.submit(drain.work, f"w{n}", 1 + n % 3)

        def drained() -> bool:
            return len(drain.confirmed) >= total

        wait_until(drained, seconds=60)
        drain.stop.set()
    ids = [task_id for _seq, task_id, _attempt in drain.deliveries]
    assert len(ids) == len(set(ids)) == total
    assert drain.errors == []


def test_startup_errors_are_clear(tmp_path: Path) -> None:
    bad_toml = write_config(tmp_path, "[queues.emails]\npersistent = tru\n")
    result = run_katar(tmp_path, "serve", "--config", str(bad_toml))
    assert result.returncode == 2
    assert "invalid TOML" in result.stderr
    assert "line 2" in result.stderr

    unknown = write_config(tmp_path, "[queues.emails]\npersistent = true\ntimeot = 5\n")
    result = run_katar(tmp_path, "serve", "--config", str(unknown))
    assert result.returncode == 2
    assert "line 3" in result.stderr
    assert "[queues.emails] timeot" in result.stderr

    result = run_katar(tmp_path, "serve", "--db", "sqlite:///no/such/dir/k.db", "--port", "0")
    assert result.returncode == 1
    assert "cannot open SQLite database" in result.stderr

    result = run_katar(tmp_path, "serve", "--db", "mysql://x")
    assert result.returncode == 2
    assert "unknown store scheme 'mysql'" in result.stderr

    result = run_katar(tmp_path, "serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--insecure" in result.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_katar(tmp_path, "serve", "--db", "memory://", "--port", port)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr

    missing = run_katar(tmp_path, "serve", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "cannot read the configuration file" in missing.stderr


def drain_across_a_restart(
    tmp_path: Path, servers: list[KatarProcess], *, kill: bool
) -> tuple[Counter[int], list[TaskRecord]]:
    """Drain 300 tasks with the Python client's worker while the server restarts (SIGTERM,
    or kill -9) on the same port; how often each task ran, and the final records."""
    timeout = 2000 if kill else 600000
    config = write_config(tmp_path, CONFIG.replace("timeout = 5000", f"timeout = {timeout}"))
    server = KatarProcess(tmp_path, "--config", str(config)).start()
    servers.append(server)
    total = 300
    runs: Counter[int] = Counter()
    lock = threading.Lock()

    def handler(task: Job) -> int:
        with lock:
            runs[task.data] += 1
        time.sleep(0.005)
        return int(task.data)

    with Producer(server.url) as producer:
        producer.enqueue_many("emails", list(range(total)))
    worker = Worker(server.url, "emails", handler, concurrency=4, wait=5)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: worker.processed >= total // 3)
        assert worker.processed < total  # the restart comes in the middle of the drain
        if kill:
            server.kill()
        else:
            assert server.terminate() == 0
        restarted = KatarProcess(tmp_path, "--config", str(config), "--port", str(server.port))
        servers.append(restarted.start())
        with Producer(restarted.url) as producer:
            wait_until(lambda: len(producer.tasks("emails", "done", limit=1000)) == total, 60)
            done = producer.tasks("emails", "done", limit=1000)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    return runs, done


def test_the_python_worker_loses_no_ack_across_a_restart(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    runs, done = drain_across_a_restart(tmp_path, servers, kill=False)
    assert sorted(t.result for t in done) == list(range(300))
    # The lease is 10 minutes: a lost ack would leave its task in progress, not done; and
    # no task ran twice.
    assert set(runs.values()) == {1}


def test_the_python_worker_rides_out_a_kill_9(tmp_path: Path, servers: list[KatarProcess]) -> None:
    runs, done = drain_across_a_restart(tmp_path, servers, kill=True)
    assert sorted(t.result for t in done) == list(range(300))
    # At least once: a task runs again only after a delivery was lost with the server.
    for task in done:
        assert runs[task.data] <= task.attempts
