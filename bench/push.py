"""Push throughput: a push queue drained by the server itself into a trivial local receiver,
beside the seed drain (one task a poll, by concurrent pollers) of the same server in the
same run, with the server's CPU per task of each.

    python -m bench.push [--store sqlite|postgres] [--tasks N] [--concurrency C]

The receiver is its own process (uvicorn, httptools, a raw ASGI app answering 204); the
pollers of the seed drain are threads of this process, ``C`` of them, as many as the push
queue's pushes in flight (its ``concurrency``). Prints tasks per second and the server's
CPU milliseconds per task for both. docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import free_port, postgres_schema, wait_for_port


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The trivial receiver: reads the push, answers 204."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _receiver(port: int) -> None:
    import uvicorn

    uvicorn.run(_answer, host="127.0.0.1", port=port, log_level="error", http="httptools")


def _cpu_ms(pid: int) -> float:
    """The process's user and system CPU time so far, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _processes(store_url: str) -> Iterator[tuple[str, int, int]]:
    """A katar serve allowed to push to loopback, and the receiver: (url, pid, port)."""
    workdir = Path(tempfile.mkdtemp(prefix="katar-bench-push-"))
    (workdir / "katar.toml").write_text('[push]\nallow = ["127.0.0.1"]\n')
    port, receiver_port = free_port(), free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench.push", "--receiver", str(receiver_port)],
        stderr=subprocess.DEVNULL,
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "katar",
            "serve",
            "--config",
            str(workdir / "katar.toml"),
            "--port",
            str(port),
            "--db",
            store_url,
        ],
        cwd=workdir,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        wait_for_port(receiver_port)
        yield f"http://127.0.0.1:{port}", server.pid, receiver_port
    finally:
        for process in (server, receiver):
            process.terminate()
        for process in (server, receiver):
            process.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)


def _fill(http: httpx.Client, url: str, queue: str, total: int) -> None:
    for start in range(0, total, 500):
        batch = [{"data": {"n": n}} for n in range(start, min(start + 500, total))]
        http.post(f"{url}/v1/queue/{queue}/tasks", json={"tasks": batch}).raise_for_status()


def _done(http: httpx.Client, url: str, queue: str) -> int:
    for info in http.get(f"{url}/v1/queues").json()["queues"]:
        if info["name"] == queue:
            return int(info["counts"].get("done", 0))
    return 0


def push_run(
    url: str, pid: int, receiver: int, total: int, concurrency: int
) -> tuple[float, float]:
    """Tasks per second and server CPU ms per task of a push queue's drain."""
    with httpx.Client(timeout=30) as http:
        options = {
            "persistent": True,
            "paused": True,
            "concurrency": concurrency,
            "push": {"url": f"http://127.0.0.1:{receiver}/in"},
        }
        http.put(f"{url}/v1/queue/pushed", json=options).raise_for_status()
        _fill(http, url, "pushed", total)
        time.sleep(1.5)  # the dispatcher has seen the queue
        cpu, start = _cpu_ms(pid), time.perf_counter()
        http.patch(f"{url}/v1/queue/pushed", json={"paused": False}).raise_for_status()
        while _done(http, url, "pushed") < total:
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        return total / elapsed, (_cpu_ms(pid) - cpu) / total


def seed_run(url: str, pid: int, total: int, pollers: int) -> tuple[float, float]:
    """Tasks per second and server CPU ms per task of the seed drain: each poll acks the
    task before and takes the next, one task a poll."""
    with httpx.Client(timeout=30) as http:
        http.put(f"{url}/v1/queue/polled", json={"persistent": True}).raise_for_status()
        _fill(http, url, "polled", total)
    remaining = [total]
    lock = threading.Lock()

    def poller() -> None:
        with httpx.Client(timeout=30) as client:
            acks: list[dict[str, Any]] = []
            while True:
                answer = client.post(f"{url}/v1/queue/polled", json={"tasks": acks})
                if answer.status_code == 204:
                    return
                acks = [{"_id": t["_id"], "status": "done"} for t in answer.json()["tasks"]]
                with lock:
                    remaining[0] -= len(acks)

    cpu, start = _cpu_ms(pid), time.perf_counter()
    threads = [threading.Thread(target=poller) for _ in range(pollers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return total / elapsed, (_cpu_ms(pid) - cpu) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.receiver:
        _receiver(args.receiver)
        return
    schema = (
        postgres_schema()
        if args.store == "postgres"
        else contextlib.nullcontext("sqlite:///katar.db")
    )
    with schema as store_url, _processes(store_url) as (url, pid, receiver):
        seed = seed_run(url, pid, args.tasks, args.concurrency)
        pushed = push_run(url, pid, receiver, args.tasks, args.concurrency)
    print(f"store {args.store}, {args.tasks} tasks, {args.concurrency} in flight")
    print(f"{'drain':<28} {'tasks/s':>10} {'server CPU ms/task':>20}")
    print(f"{'seed drain (1 task a poll)':<28} {seed[0]:>10.0f} {seed[1]:>20.3f}")
    print(f"{'push to a local receiver':<28} {pushed[0]:>10.0f} {pushed[1]:>20.3f}")


if __name__ == "__main__":
    main()
