"""The example workers in four languages, and the Python client's worker, against a live
``katar serve``.

A toolchain missing on the machine skips its example with the reason, unless
KATAR_REQUIRE_EXAMPLES=1 (as .ci/run sets): then it is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from katar.client import Job, Producer, Worker
from tests.acceptance.conftest import KatarProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# language -> (tools it needs, command line without the queue)
LANGUAGES = {
    "shell": (["bash", "curl", "jq"], ["bash", str(EXAMPLES / "shell" / "worker.sh")]),
    "node": (["node"], ["node", str(EXAMPLES / "node" / "worker.mjs")]),
    "python": ([], [sys.executable, str(EXAMPLES / "python" / "worker.py")]),
    "java": (["java"], ["java", str(EXAMPLES / "java" / "Worker.java")]),
}


def require(language: str) -> list[str]:
    """The example's command line, or a skip (a failure under KATAR_REQUIRE_EXAMPLES)."""
    tools, command = LANGUAGES[language]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        reason = f"the {language} example needs {', '.join(missing)}, missing on this machine"
        if os.environ.get("KATAR_REQUIRE_EXAMPLES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return command


class Example:
    def __init__(self, language: str, url: str, queue: str, log: Path) -> None:
        self.language = language
        self.log = log
        command = require(language)
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [*command, queue],
                env={**os.environ, "KATAR_URL": url},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def ready(self) -> bool:
        assert self.process.poll() is None, f"{self.language} exited:\n{self.log.read_text()}"
        return "ready" in self.log.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KatarProcess]:
    process = KatarProcess(tmp_path, "--db", "sqlite:///k.db").start()
    with httpx.Client(base_url=process.url) as client:
        body = {"persistent": True, "configuration": {"interval": 100}}
        client.put("/v1/queue/squares", json=body).raise_for_status()
    yield process
    process.kill()


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_each_example_drains_a_queue(language: str, server: KatarProcess, tmp_path: Path) -> None:
    example = Example(language, server.url, "squares", tmp_path / f"{language}.log")
    try:
        wait_until(example.ready)
        with Producer(server.url) as producer:
            producer.enqueue_many("squares", [{"n": n} for n in range(25)])

            def drained() -> bool:
                return len(producer.tasks("squares", "done")) == 25

            wait_until(drained)
            done = producer.tasks("squares", "done")
    finally:
        status = example.stop()
    assert status == 0, example.log.read_text()
    assert {t.result["by"] for t in done} == {language}
    assert all(t.result["square"] == t.data["n"] ** 2 for t in done)


def test_four_examples_and_the_python_worker_side_by_side(
    server: KatarProcess, tmp_path: Path
) -> None:
    examples = [
        Example(language, server.url, "squares", tmp_path / f"{language}.log")
        for language in LANGUAGES
    ]

    def square(task: Job) -> dict[str, object]:
        time.sleep(0.03)  # a little work, so that the others get their share
        return {"by": "katar.client", "square": task.data["n"] ** 2}

    worker = Worker(server.url, "squares", square, wait=5)
    thread = threading.Thread(target=worker.run)
    total = 100
    try:
        for example in examples:
            wait_until(example.ready)
        thread.start()
        with Producer(server.url) as producer:
            for n in range(total):  # a trickle, so that every worker polls while there is work
                producer.enqueue("squares", {"n": n})
                time.sleep(0.02)

            def drained() -> bool:
                return len(producer.tasks("squares", "done", limit=1000)) == total

            wait_until(drained)
            done = producer.tasks("squares", "done", limit=1000)
    finally:
        statuses = {example.language: example.stop() for example in examples}
        worker.stop()
        thread.join(30)
    assert statuses == dict.fromkeys(LANGUAGES, 0)
    assert not thread.is_alive()
    assert all(t.result["square"] == t.data["n"] ** 2 for t in done)
    by = Counter(t.result["by"] for t in done)
    assert set(by) == {*LANGUAGES, "katar.client"}, by
