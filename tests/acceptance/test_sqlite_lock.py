"""One ``katar serve`` per SQLite file: a second one refuses to start, and the lock ends
with the process that held it, however it ended."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.acceptance.conftest import KatarProcess, run_katar


def test_a_second_server_on_the_same_file_refuses_to_start(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    db = ("--db", "sqlite:///katar.db")
    first = KatarProcess(tmp_path, *db).start()
    servers.append(first)
    httpx.put(f"{first.url}/v1/queue/jobs", json={}, timeout=10).raise_for_status()

    second = run_katar(tmp_path, "serve", "--port", "0", *db)
    assert second.returncode != 0
    assert "'katar.db' is in use by another Katar server" in second.stderr
    assert "serving on" not in second.stderr
    # The first one is not disturbed.
    answer = httpx.post(f"{first.url}/v1/queue/jobs/tasks", json={"data": 1}, timeout=10)
    assert answer.status_code == 201

    first.kill()  # kill -9: no clean-up runs, the kernel drops the lock
    third = KatarProcess(tmp_path, *db).start()
    servers.append(third)
    listed = httpx.get(f"{third.url}/v1/queue/jobs/tasks", timeout=10)
    assert listed.status_code == 200
    assert [task["data"] for task in listed.json()["tasks"]] == [1]
