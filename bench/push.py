"""Push throughput: a push queue drained by the server itself into a trivial local receiver,
beside the seed drain (one task a poll, by concurrent pollers) of the same server in the
same run, with the server's CPU per task of each.

    python -m bench.push [--store sqlite|postgres] [--tasks N] [--concurrency C]

The receiver is its own process (uvloop and httptools, answering 204 to each request); the
seed drain is bench.throughput's (wrk, ``C`` connections: wrk must be installed), as many as
the push queue's pushes in flight (32 by default: the server's own bound for a queue without a
``concurrency``, which then takes the claim's fast path; another ``C`` sets the queue's
``concurrency``). Prints tasks per second and the server's
CPU milliseconds per task for both. docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import httpx
import uvloop

from bench.common import Server, free_port, postgres_schema, wait_for_port
from bench.throughput import drain_servers
from katar.push.dispatcher import DEFAULT_IN_FLIGHT


class _Answer(asyncio.Protocol):
    """The trivial receiver: an HTTP/1.1 keep-alive connection that answers each request
    204 as soon as it is whole (httptools parses it), so that the receiver is not what
    bounds the figure."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


def _receiver(port: int) -> None:
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


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


def push_run(
    url: str, pid: int, receiver: int, total: int, concurrency: int
) -> tuple[float, float]:
    """Tasks per second and server CPU ms per task of a push queue's drain."""
    with httpx.Client(timeout=30) as http:
        options: dict[str, Any] = {  # as the seed drain's queue: max_batch 100, no history
            "max_batch": 100,
            "paused": True,
            "push": {"url": f"http://127.0.0.1:{receiver}/in"},
        }
        if concurrency != DEFAULT_IN_FLIGHT:  # else the server's own bound, on the fast path
            options["concurrency"] = concurrency
        http.put(f"{url}/v1/queue/pushed", json=options).raise_for_status()
        _fill(http, url, "pushed", total)
        time.sleep(1.5)  # the dispatcher has seen the queue
        cpu, start = _cpu_ms(pid), time.perf_counter()
        http.patch(f"{url}/v1/queue/pushed", json={"paused": False}).raise_for_status()
        left = {"status": "queued,in progress", "limit": "1"}
        while http.get(f"{url}/v1/queue/pushed/tasks", params=left).json()["tasks"]:
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        return total / elapsed, (_cpu_ms(pid) - cpu) / total


def seed_run(url: str, pid: int, total: int, connections: int) -> tuple[float, float]:
    """Tasks per second and server CPU ms per task of the seed drain: wrk pollers that ack
    each task on their next poll and take one task a poll (bench.throughput's drain)."""
    port = int(url.rsplit(":", 1)[1])
    figures = drain_servers(
        [Server(port, pid)], total, 1, connections, cpu=lambda: _cpu_ms(pid) / 1000
    )
    return figures["tasks_per_s"], figures["drain_cpu_s"] * 1000 / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_IN_FLIGHT)
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
