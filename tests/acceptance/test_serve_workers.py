"""``katar serve --workers N``: several processes on one port, on PostgreSQL only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import store_url


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def test_three_processes_serve_one_port_and_stop_together(tmp_path: Path) -> None:
    url = store_url("postgres", tmp_path)
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "katar",
            "serve",
            "--db",
            url,
            "--port",
            str(port),
            "--workers",
            "3",
        ],
        cwd=tmp_path,
        stderr=log,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        children = children_of(server.pid)
        assert len(children) == 3
        with httpx.Client(base_url=base, timeout=10) as client:
            client.put("/v1/queue/q", json={}).raise_for_status()
            for n in range(30):  # each request may reach any process
                client.post("/v1/queue/q/tasks", json={"data": n}).raise_for_status()
            taken = 0
            while taken < 30:
                answer = client.post("/v1/queue/q", json={"max": 7})
                assert answer.status_code == 200, answer.text
                taken += len(answer.json()["tasks"])
            assert taken == 30  # every task once, whichever process served the poll
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    finally:
        if server.poll() is None:
            for pid in children_of(server.pid):
                os.kill(pid, signal.SIGKILL)
            server.kill()
            server.wait(10)
        log.close()
    assert "serving with 3 processes" in (tmp_path / "serve.log").read_text()


@pytest.mark.parametrize("db", ["sqlite:///katar.db", "memory://"])
def test_workers_need_postgresql(tmp_path: Path, db: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "katar", "serve", "--db", db, "--port", "0", "--workers", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers needs the PostgreSQL store" in done.stderr
