"""The example workers in five languages, and the Python client's worker, against a live
``katar serve``.

A toolchain missing on the machine skips its example with the reason, unless
KATAR_REQUIRE_EXAMPLES=1 (as .ci/run sets): then it is a failure. The Node.js and Go examples
use the clients of clients/typescript and clients/go: they are built first, once per process
(the TypeScript client under a file lock, since test processes share its dist/).
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from katar.client import Job, Producer, Worker
from katar.http.auth import digest, new_token
from tests.acceptance.conftest import KatarProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

CLIENTS = ROOT / "clients"
GO_EXAMPLE = Path(tempfile.mkdtemp(prefix="katar-go-example-")) / "worker"

# language -> (tools it needs, command line without the queue)
LANGUAGES = {
    "shell": (["bash", "curl", "jq"], ["bash", str(EXAMPLES / "shell" / "worker.sh")]),
    "node": (["node", "npm"], ["node", str(EXAMPLES / "node" / "worker.mjs")]),
    "python": ([], [sys.executable, str(EXAMPLES / "python" / "worker.py")]),
    "java": (["java"], ["java", str(EXAMPLES / "java" / "Worker.java")]),
    "go": (["go"], [str(GO_EXAMPLE)]),
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
    _build(language)
    return command


@functools.cache
def _build(language: str) -> None:
    """Builds the client an example uses (once per process)."""
    if language == "node":
        client = CLIENTS / "typescript"
        # One build at a time, and none while dist/ is current: the test processes share
        # node_modules and dist/, which another process's example may be reading.
        with (client / ".build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            built = client / "dist" / "index.js"
            sources = [*(client / "src").glob("*.ts"), client / "package-lock.json"]
            if built.exists() and all(
                source.stat().st_mtime <= built.stat().st_mtime for source in sources
            ):
                return
            if not (client / "node_modules" / ".bin" / "tsc").exists():
                _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], client)
            else:
                _run(["npm", "run", "--silent", "build"], client)
    elif language == "go":
        _run(["go", "build", "-o", str(GO_EXAMPLE), "."], EXAMPLES / "go")


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"


class Example:
    def __init__(
        self,
        language: str,
        url: str,
        queue: str,
        log: Path,
        token: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.language = language
        self.log = log
        command = require(language)
        env = {k: v for k, v in os.environ.items() if k not in ("KATAR_TOKEN", "KATAR_CONCURRENCY")}
        if token is not None:
            env["KATAR_TOKEN"] = token
        if concurrency is not None:
            env["KATAR_CONCURRENCY"] = str(concurrency)
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [*command, queue],
                env={**env, "KATAR_URL": url},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def ready(self) -> bool:
        assert self.process.poll() is None, f"{self.language} exited:\n{self.log.read_text()}"
        return "ready" in self.log.read_text()

    def stop(self) -> int:
        """SIGTERM, then its exit status; killed if it has not stopped within 30 s (the
        status then says so: -9), so that no example outlives its test."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def exit_status(self) -> int:
        """Its status once it stops by itself (killed after 30 s if it does not)."""
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"{self.language} did not stop:\n{self.log.read_text()}") from None


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

            wait_until(drained, seconds=90)  # a jq per field: slow on a busy machine
            done = producer.tasks("squares", "done")
    finally:
        status = example.stop()
    assert status == 0, example.log.read_text()
    assert {t.result["by"] for t in done} == {language}
    assert all(t.result["square"] == t.data["n"] ** 2 for t in done)


def test_every_example_and_the_python_worker_side_by_side(
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
    # A daemon: should the worker ever fail to stop, the test fails and pytest still exits.
    thread = threading.Thread(target=worker.run, daemon=True)
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
        worker.stop()
        statuses = {example.language: example.stop() for example in examples}
        thread.join(30)
    assert statuses == dict.fromkeys(LANGUAGES, 0)
    assert not thread.is_alive()
    assert all(t.result["square"] == t.data["n"] ** 2 for t in done)
    by = Counter(t.result["by"] for t in done)
    assert set(by) == {*LANGUAGES, "katar.client"}, by


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_each_example_long_polls_runs_tasks_side_by_side_and_heartbeats(
    language: str, server: KatarProcess, tmp_path: Path
) -> None:
    # The examples took one task at a time and slept `interval` between polls. Here the
    # interval is ten minutes, so only a long poll picks the tasks up; the tasks take longer
    # than their lease, so only heartbeats keep them from being delivered again. The lease
    # leaves a heartbeat (sent every third of it) six seconds of slack: the shell example
    # runs a jq per field, slow on a loaded machine.
    with httpx.Client(base_url=server.url) as client:
        body = {"persistent": True, "timeout": 9000, "configuration": {"interval": 600_000}}
        client.put("/v1/queue/slow", json=body).raise_for_status()
    example = Example(language, server.url, "slow", tmp_path / "log", concurrency=3)
    try:
        wait_until(example.ready)
        with Producer(server.url) as producer:
            tasks = producer.enqueue_many("slow", [{"n": n, "ms": 12000} for n in range(3)])

            def running() -> int:
                return next(q for q in producer.queues() if q.name == "slow").counts["in progress"]

            wait_until(lambda: running() == 3)  # three at once, from one worker
            wait_until(lambda: len(producer.tasks("slow", "done")) == 3, seconds=60)
            done = [producer.get("slow", task.id) for task in tasks]
    finally:
        status = example.stop()
    assert status == 0, example.log.read_text()
    assert [t.attempts for t in done] == [1, 1, 1], example.log.read_text()
    assert [t.result["square"] for t in done] == [0, 1, 4]


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_each_example_drops_a_task_an_operator_cancels(
    language: str, server: KatarProcess, tmp_path: Path
) -> None:
    # The answer to a heartbeat names the cancelled task: the example sends nothing more
    # for it, and goes on with the others.
    with httpx.Client(base_url=server.url) as client:
        client.put("/v1/queue/slow", json={"persistent": True, "timeout": 6000}).raise_for_status()
    example = Example(language, server.url, "slow", tmp_path / "log", concurrency=2)
    try:
        wait_until(example.ready)
        with Producer(server.url) as producer:
            doomed, kept = producer.enqueue_many(
                "slow", [{"n": 2, "ms": 9000}, {"n": 3, "ms": 2000}]
            )
            wait_until(lambda: producer.get("slow", doomed.id).status == "in progress")
            assert producer.cancel("slow", doomed.id).status == "in progress"  # 202: requested
            wait_until(lambda: f"task {doomed.id} was cancelled" in example.log.read_text())
            wait_until(lambda: producer.get("slow", kept.id).status == "done", seconds=60)
            cancelled = producer.get("slow", doomed.id)
    finally:
        status = example.stop()
    assert status == 0, example.log.read_text()
    assert cancelled.status == "cancelled"
    assert [d.outcome for d in cancelled.history] == ["cancelled"]


class Scripted(http.server.ThreadingHTTPServer):
    """A stand-in for Katar that answers as a test needs: queue "q" with one lease, two tasks
    for the first poll, a 404 for any ack of task "1" (as for a task deleted meanwhile), and
    long polls held until the worker hangs up. It records the acks it accepted."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Script)
        self.accepted: list[dict[str, object]] = []
        self.long_polls = 0
        self.given = False
        self.closing = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Script(http.server.BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: object = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Katar-Lease-Timeout", "60000")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200, {"configuration": {"interval": 100}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        acks = body.get("tasks", [])
        ids = [ack["_id"] for ack in acks]
        script = self.server
        if "1" in ids:
            index = ids.index("1")
            return self._answer(
                404, {"error": "no task '1' in queue 'q'", "_id": "1", "ack": index}
            )
        with script.lock:
            script.accepted.extend(acks)
            give = not script.given and body.get("max", 1) >= 2
            script.given = script.given or give
        if give:
            tasks = [{"_id": str(i), "data": {"n": i + 1}, "attempt": 1} for i in (1, 2)]
            return self._answer(200, {"tasks": tasks})
        if body.get("wait") and not acks:
            with script.lock:
                script.long_polls += 1
            script.closing.wait(60)  # held: the worker must hang up to stop
            return None
        self._answer(204)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_a_faulty_ack_is_dropped_and_the_others_are_sent(
    language: str, scripted: Scripted, tmp_path: Path
) -> None:
    # The node example exited on any 404, also a 404 for one ack, which docs/workers.md says
    # to drop and carry on: the error's "ack" is the index of the faulty ack in "tasks".
    example = Example(language, scripted.url, "q", tmp_path / "log", concurrency=2)
    try:
        wait_until(example.ready)

        def sent_the_good_one() -> bool:
            with scripted.lock:
                return any(a["_id"] == "2" and a["status"] == "done" for a in scripted.accepted)

        wait_until(sent_the_good_one)
        wait_until(lambda: scripted.long_polls > 0)  # carried on: polling for more
    finally:
        status = example.stop()
    log = example.log.read_text()
    assert status == 0, log
    good = next(a for a in scripted.accepted if a["_id"] == "2" and a["status"] == "done")
    assert good["result"] == {"by": language, "square": 9}
    assert "no task '1'" in log


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_a_stop_during_a_long_poll_ends_it(
    language: str, scripted: Scripted, tmp_path: Path
) -> None:
    scripted.given = True  # no task: the example only long-polls
    example = Example(language, scripted.url, "q", tmp_path / "log")
    try:
        wait_until(example.ready)
        wait_until(lambda: scripted.long_polls > 0)
    finally:
        # The scripted server never answers a long poll: an example that waits for its answer
        # before it stops is killed after 30 s (status -9).
        status = example.stop()
    assert status == 0, example.log.read_text()


# The examples that docs/workers.md's error table is checked on.
STRICT = list(LANGUAGES)


@pytest.mark.parametrize("language", STRICT)
@pytest.mark.parametrize(
    "status",
    [
        pytest.param(401, id="no token"),
        pytest.param(403, id="another queue's token"),
        pytest.param(404, id="no such queue"),
    ],
)
def test_a_setup_mistake_stops_the_example_with_a_clear_message(
    language: str, status: int, tmp_path: Path
) -> None:
    secret = new_token()
    (tmp_path / "katar.toml").write_text(
        f'[queues.squares]\n[queues.other]\n\n[[tokens]]\ntoken_sha256 = "{digest(secret).hex()}"\n'
        'role = "worker"\nqueues = ["other", "nosuch"]\n'
    )
    server = KatarProcess(tmp_path, "--config", "katar.toml").start()
    try:
        token, queue = {
            401: (None, "squares"),
            403: (secret, "squares"),
            404: (secret, "nosuch"),
        }[status]
        example = Example(language, server.url, queue, tmp_path / "log", token=token)
        assert example.exit_status() == 1
    finally:
        server.kill()
    log = example.log.read_text()
    assert "stopping: " in log, log
    assert f"({status} " in log, log
    assert "trying again" not in log


@pytest.mark.parametrize("language", STRICT)
def test_a_queue_deleted_under_a_running_example_stops_it(
    language: str, server: KatarProcess, tmp_path: Path
) -> None:
    example = Example(language, server.url, "squares", tmp_path / "log")
    try:
        wait_until(example.ready)
        httpx.delete(f"{server.url}/v1/queue/squares").raise_for_status()
        assert example.exit_status() == 1
    finally:
        if example.process.poll() is None:
            example.process.kill()
            example.process.wait(10)
    assert "has no queue squares" in example.log.read_text()


@pytest.mark.parametrize("language", STRICT)
def test_the_example_backs_off_while_the_server_is_down_then_resumes(
    language: str, server: KatarProcess, tmp_path: Path
) -> None:
    example = Example(language, server.url, "squares", tmp_path / "log")
    restarted: KatarProcess | None = None
    try:
        wait_until(example.ready)
        server.kill()

        def retries() -> int:
            return example.log.read_text().count("no answer from the server")

        wait_until(lambda: retries() >= 2)
        before = retries()
        time.sleep(1)
        # Backing off, not spinning: a loop without a pause makes dozens of tries a second.
        assert retries() - before <= 3, example.log.read_text()
        assert example.process.poll() is None
        restarted = KatarProcess(server.cwd, "--db", "sqlite:///k.db", "--port", str(server.port))
        restarted.start()
        with Producer(restarted.url) as producer:
            producer.enqueue_many("squares", [{"n": n} for n in range(5)])
            wait_until(lambda: len(producer.tasks("squares", "done")) == 5, seconds=60)
        assert example.stop() == 0, example.log.read_text()
    finally:
        if example.process.poll() is None:
            example.process.kill()
            example.process.wait(10)
        if restarted is not None:
            restarted.kill()
