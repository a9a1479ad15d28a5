"""Katar installed as users install it: a fresh virtual environment, `pip install .` with no
extras, then the `katar` command it puts in the venv's bin: serve, enqueue, worker.

Slow (pip builds and installs Katar and its dependencies): one test, with a generous bound.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from katar.client import Producer
from tests.acceptance.conftest import KatarProcess, wait_until
from tests.unit.test_imports import SERVER_MODULES

ROOT = Path(__file__).resolve().parents[2]

JOBS = "def square(task):\n    return task.data['n'] ** 2\n"


def run(*command: str | Path, cwd: Path, timeout: float = 60) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.timeout(600)
def test_pip_install_gives_serve_enqueue_and_worker(tmp_path: Path) -> None:
    # A copy of what the package is built from, so that the build leaves nothing in the clone.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    bin_ = venv / "bin"
    run(bin_ / "python", "-m", "pip", "install", "--quiet", source, cwd=tmp_path, timeout=540)

    # A worker host: the client loads none of the server's modules.
    shown = "import json, sys, katar.client; print(json.dumps(sorted(sys.modules)))"
    modules = json.loads(run(bin_ / "python", "-c", shown, cwd=tmp_path))
    assert "httpx" in modules
    assert not [m for m in modules if m.split(".")[0] in {"uvicorn", "httptools"}]
    assert not [m for m in modules if m.startswith(SERVER_MODULES)]

    work = tmp_path / "work"
    work.mkdir()
    (work / "jobs.py").write_text(JOBS)
    server = KatarProcess(work, "--db", "sqlite:///k.db", katar=[str(bin_ / "katar")]).start()
    try:
        httpx.put(f"{server.url}/v1/queue/jobs", json={"persistent": True}).raise_for_status()
        # The dashboard's files ship in the package.
        for asset in ("/ui", "/ui/app.mjs", "/ui/preact.mjs", "/ui/style.css"):
            assert httpx.get(f"{server.url}{asset}").status_code == 200, asset
        ids = run(
            bin_ / "katar", "enqueue", "--url", server.url, "--queue", "jobs", '{"n": 7}', cwd=work
        )
        assert ids.split() == ["1"]
        worker = subprocess.Popen(
            [
                bin_ / "katar",
                "worker",
                "--url",
                server.url,
                "--queue",
                "jobs",
                "--wait",
                "1",
                "jobs:square",
            ],
            cwd=work,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with Producer(server.url) as producer:
                wait_until(lambda: producer.get("jobs", "1").status == "done")
                assert producer.get("jobs", "1").result == 49
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
    finally:
        server.kill()
