"""Soak: minutes of steady mixed load against ``katar serve``, watching what must stay flat.

A producer enqueues at a steady rate (some tasks delayed), two workers drain with batches
and carry their acks on their next poll (some acks are failures, retried with backoff).
Every ``--interval`` seconds it samples the server: the SQLite WAL's size, its resident
memory (VmRSS) and open file descriptors from /proc, the tasks done and waiting, and the
latency of the enqueues and polls made since the last sample (p50 and p99). On PostgreSQL
it also samples the size of the tasks table (with its indexes and TOAST). Then it stops
the server (SIGTERM), timing the graceful stop, and reads the WAL that remains.

With ``--servers 2`` (PostgreSQL), two servers share the store and each worker sends every
poll to the other server than its last: each server's deliveries are acknowledged through
the other, so neither sees the acks that end its own deliveries.

    .venv/bin/python -m bench.soak                      # 10 minutes on each store
    .venv/bin/python -m bench.soak --duration 1 --store sqlite
    .venv/bin/python -m bench.soak --store postgres --servers 2 --duration 30 --rate 500

The targets: the WAL stays under 64 MB, RSS grows by at most 10 MB after the warm-up, and
the tasks table's size stops growing after the warm-up.
Prints a table per store and writes JSON to bench/results/soak-<date>.json. PostgreSQL is
$KATAR_BENCH_POSTGRES (default the local server), skipped when it does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import HERE, Server, katars, postgres_available, postgres_schema
from bench.latency import Connection

QUEUE = "soak"
#: No history (done tasks are deleted, as on a busy production queue), three attempts, and a
#: short backoff so that the failed tasks come back within the run.
OPTIONS = {"persistent": False, "max_attempts": 3, "retry_delay": 500, "timeout": 30000}
MB = 1024 * 1024


@dataclass
class Load:
    """What the clients did since the last sample."""

    enqueue_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    enqueued: int = 0
    done: int = 0
    failed: int = 0
    errors: int = 0
    wal_peak_mb: float | None = None  # the WAL's largest size seen, read twice a second
    #: Tasks enqueued and not yet acknowledged, over the whole run (a failed ack counts as
    #: an end, though the task may come back: an estimate from below).
    outstanding: int = 0

    def take(self) -> Load:
        """This window's figures, and start a new window."""
        window = Load(self.enqueue_ms, self.poll_ms, self.enqueued, self.done, self.failed)
        window.errors, window.outstanding = self.errors, self.outstanding
        window.wal_peak_mb = self.wal_peak_mb
        self.wal_peak_mb = None
        self.enqueue_ms, self.poll_ms = [], []
        self.enqueued = self.done = self.failed = self.errors = 0
        return window


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def proc_status(pid: int, key: str) -> float:
    """A /proc/PID/status figure in kB, as MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def file_mb(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return path.stat().st_size / MB
    except FileNotFoundError:
        return 0.0


async def produce(port: int, load: Load, args: argparse.Namespace, stop: asyncio.Event) -> None:
    """Enqueue ``args.rate`` tasks a second in batches of ``args.batch``, one in ten delayed
    1 to 3 s; slower when the workers fall behind, so that the backlog stays under
    ``args.backlog`` (a soak, not an overload: a queue that grows for ever measures that)."""
    rate, batch = args.rate, args.batch
    connection = await Connection.open(port)
    rng = random.Random(1)
    period = batch / rate
    next_at = time.perf_counter()
    serial = 0
    try:
        while not stop.is_set():
            if load.outstanding > args.backlog:
                await asyncio.sleep(0.05)
                next_at = time.perf_counter()
                continue
            tasks: list[dict[str, Any]] = []
            for _ in range(batch):
                task: dict[str, Any] = {"data": {"n": serial, "pad": "x" * 64}}
                if rng.random() < 0.1:
                    task["delay"] = rng.uniform(1, 3)
                tasks.append(task)
                serial += 1
            started = time.perf_counter()
            status, _ = await connection.request(
                "POST", f"/v1/queue/{QUEUE}/tasks", {"tasks": tasks}
            )
            load.enqueue_ms.append((time.perf_counter() - started) * 1000)
            if status == 201:
                load.enqueued += batch
                load.outstanding += batch
            else:
                load.errors += 1
            next_at += period
            delay = next_at - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                next_at = time.perf_counter()  # behind: do not burst to catch up
    finally:
        connection.close()


async def work(ports: list[int], load: Load, batch: int, seed: int, stop: asyncio.Event) -> None:
    """A worker that asks for ``batch`` tasks (long polling 1 s) and acks them on its next
    poll: done, or one in twenty failed (retried with the queue's backoff). With several
    servers, each poll goes to the next one: the acks to another than the delivery's."""
    connections = [await Connection.open(port) for port in ports]
    rng = random.Random(seed)
    acks: list[dict[str, Any]] = []
    polls = 0
    try:
        while not stop.is_set():
            connection = connections[polls % len(connections)]
            polls += 1
            body = {"tasks": acks, "max": batch, "wait": 1, "worker": f"soak-{seed}"}
            started = time.perf_counter()
            status, answer = await connection.request("POST", f"/v1/queue/{QUEUE}", body)
            load.poll_ms.append((time.perf_counter() - started) * 1000)
            if status not in (200, 204):
                load.errors += 1
                await asyncio.sleep(0.1)  # keep the acks, send them again
                continue
            done = sum(1 for ack in acks if ack["status"] == "done")
            load.done += done
            load.failed += len(acks) - done
            load.outstanding -= len(acks)
            acks = []
            for task in answer["tasks"] if status == 200 else []:
                ack: dict[str, Any] = {"_id": task["_id"], "attempt": task["attempt"]}
                if rng.random() < 0.05:
                    ack.update(status="failed", error="soak: a planned failure", retry=True)
                else:
                    ack["status"] = "done"
                acks.append(ack)
    finally:
        for connection in connections:
            connection.close()


async def watch_wal(wal: Path, load: Load, stop: asyncio.Event) -> None:
    """Keep the WAL's peak size between two samples: a sample alone would miss it."""
    while not stop.is_set():
        size = file_mb(wal)
        if size is not None and (load.wal_peak_mb is None or size > load.wal_peak_mb):
            load.wal_peak_mb = size
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def backlog(port: int) -> dict[str, int]:
    """The queue's task counts (on a connection of its own: an idle one would be closed
    between samples)."""
    connection = await Connection.open(port)
    try:
        _, answer = await connection.request("GET", "/v1/queues")
    finally:
        connection.close()
    for queue in answer["queues"]:
        if queue["name"] == QUEUE:
            counts: dict[str, int] = queue["counts"]
            return counts
    return {}


def table_mb(url: str) -> float | None:
    """The size of the tasks table of the PostgreSQL store ``url`` (its schema's), with its
    indexes and TOAST; None on SQLite."""
    if not url.startswith("postgres"):
        return None
    import psycopg

    base, _, query = url.partition("?")
    schema = dict(part.split("=", 1) for part in query.split("&") if "=" in part)["schema"]
    with psycopg.connect(base, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass)", (f"{schema}.tasks",)
        ).fetchone()
    return None if row is None else row[0] / MB


async def soak(
    servers: list[Server], url: str, wal: Path | None, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Run the load for ``args.duration`` minutes; a sample every ``args.interval`` s."""
    server = servers[0]
    ports = [each.port for each in servers]
    setup = await Connection.open(server.port)
    status, _ = await setup.request("PUT", f"/v1/queue/{QUEUE}", OPTIONS)
    setup.close()
    assert status == 200, status
    load = Load()
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(produce(server.port, load, args, stop)),
        asyncio.create_task(work(ports, load, 10, 1, stop)),
        asyncio.create_task(work(ports[::-1], load, 50, 2, stop)),
    ]
    if wal is not None:
        clients.append(asyncio.create_task(watch_wal(wal, load, stop)))
    samples = []
    start = last = time.perf_counter()
    end = start + args.duration * 60
    try:
        while time.perf_counter() < end:
            await asyncio.sleep(min(args.interval, max(0.0, end - time.perf_counter())))
            for client in clients:
                if client.done():
                    client.result()  # a client failed: say why
            now = time.perf_counter()
            window, seconds, last = load.take(), now - last, now
            counts = await backlog(server.port)
            wal_now = file_mb(wal)
            peak = window.wal_peak_mb or 0.0
            samples.append(
                {
                    "t_s": round(now - start),
                    "wal_mb": wal_now,
                    "wal_peak_mb": None if wal_now is None else max(peak, wal_now),
                    # The largest server's, and each one's.
                    "rss_mb": max(proc_status(each.pid, "VmRSS") for each in servers),
                    "rss_each_mb": [proc_status(each.pid, "VmRSS") for each in servers],
                    "table_mb": await asyncio.to_thread(table_mb, url),
                    "fds": open_fds(server.pid),
                    "enqueued_per_s": window.enqueued / seconds,
                    "done_per_s": window.done / seconds,
                    "failed_acks": window.failed,
                    "waiting": counts.get("queued", 0) + counts.get("scheduled", 0),
                    "in_progress": counts.get("in progress", 0),
                    "enqueue_p50_ms": percentile(window.enqueue_ms, 0.5),
                    "enqueue_p99_ms": percentile(window.enqueue_ms, 0.99),
                    "poll_p50_ms": percentile(window.poll_ms, 0.5),
                    "poll_p99_ms": percentile(window.poll_ms, 0.99),
                    "errors": window.errors,
                }
            )
            print(row(samples[-1]), flush=True)
    finally:
        stop.set()
        await asyncio.wait(clients, timeout=10)
    return samples


COLUMNS = (
    ("t_s", "t (s)", "{:.0f}"),
    ("wal_mb", "WAL MB", "{:.1f}"),
    ("wal_peak_mb", "WAL peak", "{:.1f}"),
    ("rss_mb", "RSS MB", "{:.1f}"),
    ("fds", "fds", "{:.0f}"),
    ("table_mb", "table MB", "{:.1f}"),
    ("enqueued_per_s", "enq/s", "{:,.0f}"),
    ("done_per_s", "done/s", "{:,.0f}"),
    ("waiting", "waiting", "{:,.0f}"),
    ("enqueue_p50_ms", "enq p50", "{:.2f}"),
    ("enqueue_p99_ms", "enq p99", "{:.2f}"),
    ("poll_p50_ms", "poll p50", "{:.2f}"),
    ("poll_p99_ms", "poll p99", "{:.2f}"),
    ("errors", "errors", "{:.0f}"),
)


def header() -> str:
    return " | ".join(title for _, title, _ in COLUMNS)


def row(sample: dict[str, Any]) -> str:
    cells = []
    for key, _, form in COLUMNS:
        value = sample.get(key)
        cells.append("-" if value is None else form.format(value))
    return " | ".join(cells)


def summary(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """The figures the targets are about."""
    settled = [s for s in samples if s["t_s"] >= warmup] or samples[-1:]
    wal = [s["wal_peak_mb"] for s in samples if s["wal_peak_mb"] is not None]
    table = [s["table_mb"] for s in settled if s.get("table_mb") is not None]
    return {
        "wal_max_mb": max(wal) if wal else None,
        "rss_after_warmup_mb": settled[0]["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_growth_after_warmup_mb": max(s["rss_mb"] for s in settled) - settled[0]["rss_mb"],
        "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)],
        "table_after_warmup_mb": table[0] if table else None,
        "table_max_mb": max(table) if table else None,
        "table_last_mb": table[-1] if table else None,
        "done_per_s": statistics.mean(s["done_per_s"] for s in samples),
        "enqueue_p99_ms_max": max(s["enqueue_p99_ms"] for s in samples),
        "poll_p99_ms_max": max(s["poll_p99_ms"] for s in samples),
        "errors": sum(s["errors"] for s in samples),
    }


@contextmanager
def store(kind: str, directory: Path) -> Iterator[tuple[str, Path | None]]:
    """The store URL for ``kind``, and its WAL file (SQLite's)."""
    if kind == "sqlite":
        database = directory / "katar.db"
        yield f"sqlite:///{database}", database.with_name("katar.db-wal")
    else:
        with postgres_schema() as url:
            yield url, None


def run_store(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="katar-soak-"))
    try:
        with store(kind, directory) as (url, wal):
            count = args.servers if kind == "postgres" else 1
            print(
                f"\n{kind}: {args.duration:g} min, {count} server(s), "
                f"a sample every {args.interval:g} s"
            )
            print(header(), flush=True)
            with katars(url, count) as servers:
                samples = asyncio.run(soak(servers, url, wal, args))
                stopping = time.perf_counter()
            stop_s = time.perf_counter() - stopping  # SIGTERM until the process exited
            result = {
                "samples": samples,
                "summary": summary(samples, args.warmup),
                "graceful_stop_s": stop_s,
                "wal_after_stop_mb": file_mb(wal),
            }
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10, help="minutes per store (10)")
    parser.add_argument("--interval", type=float, default=30, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=60, help="seconds before RSS growth is counted (60)"
    )
    parser.add_argument("--rate", type=float, default=2000, help="tasks enqueued a second")
    parser.add_argument("--batch", type=int, default=20, help="tasks per enqueue request")
    parser.add_argument(
        "--backlog", type=int, default=5000, help="the producer waits while more are unacked"
    )
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="servers sharing the PostgreSQL store; the acks go through another (1)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "queue_options": OPTIONS,
        "stores": {},
    }
    for kind in kinds:
        if kind == "postgres" and not postgres_available():
            print("\npostgres: skipped, PostgreSQL does not answer ($KATAR_BENCH_POSTGRES)")
            continue
        figures["stores"][kind] = run_store(kind, args)
    print()
    for kind, result in figures["stores"].items():
        print(f"{kind}: {json.dumps(result['summary'])}")
        print(
            f"{kind}: graceful stop {result['graceful_stop_s']:.2f} s, "
            f"WAL after stop {result['wal_after_stop_mb']} MB"
        )
    args.out.mkdir(exist_ok=True)
    path = args.out / f"soak-{figures['date'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(figures, indent=2))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
