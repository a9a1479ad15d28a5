"""Long polls: dispatch latency, and what idle long polls cost the server.

A bare HTTP/1.1 client on asyncio streams, so that the client adds as little as possible to
what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: katar\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        data = await self.reader.readexactly(length) if length else b""
        return status, json.loads(data) if data else None

    def close(self) -> None:
        self.writer.close()


def raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def dispatch(
    port: int,
    waiting: int = 100,
    tasks: int = 300,
    *,
    producer: int | None = None,
    wait: float = 10,
    pace: float = 0.01,
) -> dict[str, float]:
    """``waiting`` workers hold long polls (``wait`` seconds) on an empty queue of the
    server on ``port``; tasks are enqueued one by one, ``pace`` seconds apart, on the server
    on ``producer`` (the same one by default; another that shares its store tests the
    store's wake-ups across servers). The time, in ms, from each enqueue's answer to a
    worker's receipt of the task (``p50_ms``, ``p99_ms``), and from the enqueue's send
    (``p50_send_ms``, ``p99_send_ms``, which adds the enqueue's own round trip)."""
    setup = await Connection.open(producer or port)
    await setup.request("PUT", "/v1/queue/latency", {})
    received: dict[str, float] = {}
    stop = asyncio.Event()

    async def worker(connection: Connection) -> None:
        acks: list[dict[str, str]] = []
        while not stop.is_set():
            status, body = await connection.request(
                "POST", "/v1/queue/latency", {"tasks": acks, "wait": wait}
            )
            now = time.perf_counter()
            acks = []
            if status == 200:
                for task in body["tasks"]:
                    received[task["_id"]] = now
                    acks.append({"_id": task["_id"], "status": "done"})

    connections = [await Connection.open(port) for _ in range(waiting)]
    workers = [asyncio.create_task(worker(c)) for c in connections]
    await asyncio.sleep(1.0)  # every worker is parked
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    for n in range(tasks):
        before = time.perf_counter()
        _, body = await setup.request("POST", "/v1/queue/latency/tasks", {"data": n})
        answered[body["tasks"][0]["_id"]] = time.perf_counter()
        sent[body["tasks"][0]["_id"]] = before
        await asyncio.sleep(pace)
    deadline = time.perf_counter() + 30
    # ASYNC110: polling a flag set by another thread or process, which cannot set an asyncio event.
    while len(received) < tasks and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    stop.set()
    await setup.request("POST", "/v1/queue/latency/tasks", {"tasks": [{"data": 0}] * waiting})
    await asyncio.wait(workers, timeout=15)
    for connection in [setup, *connections]:
        connection.close()
    lost = [i for i in answered if i not in received]
    if lost:
        raise RuntimeError(f"{len(lost)} of {tasks} tasks reached no worker within 30 s")
    figures: dict[str, float] = {}
    for name, start in (("", answered), ("_send", sent)):
        # A task may reach a worker before its enqueue's answer reaches the producer.
        latencies = sorted(max(0.0, received[i] - start[i]) * 1000 for i in start)
        figures[f"p50{name}_ms"] = statistics.median(latencies)
        figures[f"p99{name}_ms"] = latencies[int(len(latencies) * 0.99)]
    return figures


def cpu_seconds(pid: int) -> float:
    """The CPU time of all the process's threads, from the scheduler's own count
    (schedstat, in ns): utime and stime are sampled at each clock tick, too coarse for a
    process that wakes briefly a few times a second."""
    tasks = Path(f"/proc/{pid}/task")
    total = 0
    for task in tasks.iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


async def idle_cpu(port: int, pid: int, polls: int = 1000, seconds: float = 10.0) -> float:
    """The server's CPU, in % of one core, while ``polls`` long polls wait on an empty queue."""
    raise_file_limit(polls + 100)
    setup = await Connection.open(port)
    await setup.request("PUT", "/v1/queue/idle", {})
    connections = [await Connection.open(port) for _ in range(polls)]
    pending = [
        asyncio.create_task(c.request("POST", "/v1/queue/idle", {"wait": 60})) for c in connections
    ]
    await asyncio.sleep(2.0)  # all parked
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    used = cpu_seconds(pid) - before
    for task in pending:
        task.cancel()
    for connection in [setup, *connections]:
        connection.close()
    return used / seconds * 100
