"""What ``katar serve`` prints: no password, ever; the start and stop lines; JSON lines;
the access log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.acceptance.conftest import KatarProcess, run_katar
from tests.conftest import store_url

SECRET = "s3cretpassw0rd"


def with_password(url: str, password: str = SECRET) -> str:
    """``url`` with ``password`` in its user part (PostgreSQL on trust ignores it)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    where = f"{user}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, where, parts.path, parts.query, ""))


def test_a_password_in_the_store_url_is_never_printed(tmp_path: Path) -> None:
    url = with_password(store_url("postgres", tmp_path))
    migrated = run_katar(tmp_path, "migrate", "--db", url)
    assert migrated.returncode == 0
    assert ":***@" in migrated.stderr
    assert SECRET not in migrated.stderr + migrated.stdout
    server = KatarProcess(tmp_path, "--db", url, "--access-log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            client.put("/v1/queue/q", json={}).raise_for_status()
            client.post("/v1/queue/q/tasks", json={"data": 1}).raise_for_status()
        assert server.terminate() == 0
    finally:
        server.kill()
    output = server.output()
    assert SECRET not in output
    assert ":***@" in output  # the start line names the store, masked
    for expected in ("serving on", "queue q created", "POST /v1/queue/{queue}/tasks 201"):
        assert expected in output
    assert output.rstrip().endswith("katar stopped")


def test_start_up_errors_never_print_the_password(tmp_path: Path) -> None:
    unreachable = f"postgresql://someone:{SECRET}@127.0.0.1:1/nothing"
    for args in (
        ("serve", "--port", "0", "--db", unreachable),
        ("serve", "--port", "0", "--db", f"postgresql://u:{SECRET}@h/d?pool_size=x"),
        ("serve", "--port", "0", "--db", f"mysql://u:{SECRET}@h/d"),
        ("serve", "--port", "0", "--db", f"sqlite://u:{SECRET}@h/d.db"),
    ):
        result = run_katar(tmp_path, *args)
        assert result.returncode != 0, result.stderr
        assert "katar: error:" in result.stderr
        assert SECRET not in result.stderr + result.stdout


def test_json_lines(tmp_path: Path) -> None:
    server = KatarProcess(tmp_path, "--db", "memory://", "--log-format", "json", "--access-log")
    server.start()
    try:
        httpx.get(f"{server.url}/v1/queue/missing", timeout=10)
        assert server.terminate() == 0
    finally:
        server.kill()
    lines = [json.loads(line) for line in server.output().splitlines()]
    assert all({"time", "level", "message"} <= line.keys() for line in lines)
    (access,) = [line for line in lines if line["logger"] == "katar.access"]
    assert access["method"] == "GET"
    assert access["route"] == "/v1/queue/{queue}"
    assert access["status"] == 404
    assert access["bytes"] > 0
    assert access["duration_ms"] >= 0
    assert lines[-1]["message"] == "katar stopped"


SERVER_FROM_PYTHON = """
from katar import Katar, WorkerServer

katar = Katar("memory://")
katar.queue("emails", persistent=False)
WorkerServer(katar=katar, port=0, host="127.0.0.1").run()
"""


def test_a_server_started_from_python_says_where_it_serves(tmp_path: Path) -> None:
    # WorkerServer.run() in a program that configures no logging started in silence.
    (tmp_path / "serve.py").write_text(SERVER_FROM_PYTHON)
    server = KatarProcess(tmp_path, katar=(sys.executable, "serve.py")).start()
    try:
        assert httpx.get(f"{server.url}/v1/queue/emails").status_code == 200
    finally:
        assert server.terminate() == 0
    assert "queues: emails" in server.output()
    assert "katar stopped" in server.output()
