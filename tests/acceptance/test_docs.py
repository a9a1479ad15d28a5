"""The recipes of README.md and docs/*.md, run as a newcomer would type them.

Each test takes the shell blocks of one section, exactly as the Markdown has them, and runs
them with bash against a real ``katar serve``. Two things are changed, and only these: the
port (3000 may be taken on the machine: a free one is used), and ``--host 0.0.0.0``, which
becomes the loopback address (tests listen on loopback only). A recipe fails the test when a
command fails (``set -e``) or when an answer holds an ``"error"`` the recipe does not expect.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.conftest import KatarProcess

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^(#+ [^\n]*)$|^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(document: str, heading: str, language: str = "sh") -> list[str]:
    """The ``language`` blocks under ``heading`` (a whole heading line) in ``document``."""
    found, current = [], ""
    for match in BLOCK.finditer((ROOT / document).read_text()):
        if match.group(1):
            current = match.group(1)
        elif current == heading and match.group(2) == language:
            found.append(match.group(3))
    assert found, f"no {language} block under {heading!r} in {document}"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run(script: str, cwd: Path, port: int) -> tuple[str, str]:
    """Run the recipe with bash in ``cwd``: its standard output, and its standard error
    (where the servers it starts log)."""
    script = (
        script.replace("localhost:3000", f"localhost:{port}")
        .replace("scripts/serve", f"katar serve --port {port}")
        .replace("--host 0.0.0.0", "--host 127.0.0.1")
    )
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "KATAR_URL": f"http://127.0.0.1:{port}"}
    env.pop("KATAR_TOKEN", None)
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout, done.stderr


def errors(output: str) -> list[str]:
    return re.findall(r'\{"error": ?"[^"]*"', output)


def test_the_quick_start(tmp_path: Path) -> None:
    (quick_start, *_) = blocks("README.md", "## Quick start")
    output, _ = run(quick_start + "kill %1; wait\n", tmp_path, free_port())
    assert errors(output) == []
    assert '"_id":"1","queue":"emails","status":"done"' in output


def test_the_server_with_tokens(tmp_path: Path) -> None:
    # Once, the curls named https://queue.internal (the certificate made holds localhost
    # only) without --cacert, and the server's [queues.emails] reset the queue in silence.
    if shutil.which("openssl") is None:
        pytest.skip("the recipe needs openssl")
    port = free_port()
    (quick_start, *_) = blocks("README.md", "## Quick start")
    run(quick_start + "kill %1; wait\n", tmp_path, port)
    certificate, tokens = blocks("README.md", "### With tokens")
    output, log = run(certificate + tokens, tmp_path, port)
    assert "replaces its stored options" not in log  # the file keeps the queue's options
    # The one error is the one the recipe shows: a producer may not change a queue.
    assert errors(output) == [
        '{"error":"a producer token may not do this; it needs an admin token"'
    ]
    assert '"status":"queued"' in output  # the producer's enqueue
    (row,) = [line for line in output.splitlines() if line.startswith("emails ")]
    assert row.split()[1:3] == ["active", "0"]


def test_the_schedule_in_the_readme_starts(tmp_path: Path) -> None:
    # It named a queue the file did not declare: `katar serve` refused to start.
    (table,) = blocks("README.md", "### Schedules", "toml")
    (tmp_path / "katar.toml").write_text(table)
    server = KatarProcess(tmp_path, "--config", "katar.toml", "--db", "memory://").start()
    server.kill()
    assert "queues: reports" in server.output()


@pytest.fixture
def server(tmp_path: Path) -> KatarProcess:
    return KatarProcess(tmp_path, "--db", "sqlite:///k.db")


def test_the_fan_in_of_the_pipelines_page(tmp_path: Path, server: KatarProcess) -> None:
    # Its first command failed (no queue "count"), and the children of a parent in a queue
    # without history could not be listed.
    server.start()
    try:
        fan_in = blocks("docs/pipelines.md", "## A fan-in, with curl")
        following = blocks("docs/pipelines.md", "## Following a pipeline")
        output, _ = run("\n".join(fan_in + following), tmp_path, server.port)
    finally:
        server.kill()
    assert errors(output) == []
    assert '"after":{"1":{"rows": 2},"2":{"rows": 2},"3":{"rows": 4}}' in output
    assert '"queue":"merge","status":"in progress"' in output  # the children of task 1
    assert '"_id":"1","queue":"count","status":"done"' in output  # the parents of task 4


def test_the_schedule_over_http(tmp_path: Path, server: KatarProcess) -> None:
    server.start()
    try:
        (recipe,) = blocks("docs/schedules.md", "# Schedules")
        output, _ = run(recipe, tmp_path, server.port)
    finally:
        server.kill()
    assert errors(output) == []
    assert "schedule nightly-report paused" in output
