"""What a dead-letter move costs against a retry, at the store: the same failed acks, applied
to tasks that a queue with ``retry_failed`` queues again, and to tasks that a queue with a
``dead_letter`` option moves to its dead-letter queue.

Each round fills both queues with ``--tasks`` tasks, claims them in polls of ``--batch``,
then times the polls that ack them all "failed" in polls of ``--batch`` acks (the claims are
not timed). Rounds alternate retry and move, so that other load on the machine falls on both
alike; the figure is the median of ``--rounds`` rounds, in microseconds per failed ack, with
CPU time (this process) beside wall time (PostgreSQL's own work is in wall time only).

    python -m bench.dead_letters --store memory
    python -m bench.dead_letters --store sqlite --tasks 2000
    python -m bench.dead_letters --store postgres  # KATAR_TEST_POSTGRES_URL's database

``--instructions``: instead, each variant runs once in a process of its own under
callgrind, which counts the instructions of the failing acks alone (this process's, the
SQLite store's writer thread included; PostgreSQL's own work is not counted): a figure that
other load on the machine does not move. Prints instructions per failed ack.

    python -m bench.dead_letters --store sqlite --tasks 2000 --instructions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import msgspec

from katar.core.model import EVERY_TASK, Ack, NewTask, QueueOptions, Task
from katar.store import Store, open_store

RETRY = QueueOptions(persistent=True, max_attempts=3, retry_failed=True, retry_delay=0)
MOVE = QueueOptions(persistent=True, max_attempts=1, dead_letter="dead")
DEAD = QueueOptions(persistent=True)


def _callgrind(command: str) -> None:
    """Tell callgrind, which runs this process, to zero its counts ("-z") or dump them
    ("-d"); it has done so when this returns."""
    subprocess.run(
        ["callgrind_control", command, str(os.getpid())], check=True, capture_output=True
    )


async def _fail_all(
    store: Store,
    queue: str,
    options: QueueOptions,
    tasks: int,
    batch: int,
    now: int,
    counted: bool = False,
) -> tuple[float, float]:
    """Enqueue, claim and fail ``tasks`` tasks of ``queue``: the (wall, cpu) seconds of the
    failing acks alone (``counted``: and callgrind's counts of them)."""
    data = msgspec.Raw(b'{"n":1}')
    await store.enqueue(queue, [NewTask(data=data) for _ in range(tasks)], now)
    claimed: list[Task] = []
    while len(claimed) < tasks:
        claimed += (await store.poll(queue, options, [], batch, "w", now)).delivered
    wall = cpu = 0.0
    if counted:
        _callgrind("-z")
    for start in range(0, tasks, batch):
        acks = [
            Ack(task_id=str(task.id), status="failed", error="boom")
            for task in claimed[start : start + batch]
        ]
        began, began_cpu = time.perf_counter(), time.process_time()
        result = await store.poll(queue, options, acks, 0, "w", now + 1)
        wall += time.perf_counter() - began
        cpu += time.process_time() - began_cpu
        assert len(result.changes) == len(acks)
    if counted:
        _callgrind("-d")
    return wall, cpu


def _url(kind: str, folder: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{folder / 'bench.db'}"
    base = os.environ.get("KATAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    # No bound on a transaction's time: under callgrind, this process runs 50 times slower.
    return f"{base}?schema=bench_dlq_{uuid.uuid4().hex[:8]}&query_timeout=0"


def _drop_schema(url: str) -> None:
    """Drop the PostgreSQL schema this run made (``url``'s), if any."""
    if not url.startswith("postgresql"):
        return
    import psycopg

    query = dict(parse_qsl(urlsplit(url).query))
    base = os.environ.get("KATAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {query['schema']} CASCADE")


async def _main(kind: str, tasks: int, batch: int, rounds: int) -> dict[str, object]:
    figures: dict[str, list[tuple[float, float]]] = {"retry": [], "move": []}
    with tempfile.TemporaryDirectory() as folder:
        store = open_store(_url(kind, Path(folder)))
        await store.open()
        try:
            await store.save_queue("retry", RETRY)
            await store.save_queue("move", MOVE)
            await store.save_queue("dead", DEAD)
            now = 1_700_000_000_000
            for round_ in range(rounds + 1):
                for name, options in (("retry", RETRY), ("move", MOVE)):
                    spent = await _fail_all(store, name, options, tasks, batch, now)
                    if round_:  # the first round warms up (caches, plans, the WAL)
                        figures[name].append(spent)
                    await store.bulk(name, "delete", EVERY_TASK, now, 0, 1_000_000)
                await store.bulk("dead", "delete", EVERY_TASK, now, 0, 1_000_000)
                now += 1000
        finally:
            await store.close()
            _drop_schema(store.url)
    answer: dict[str, object] = {"store": kind, "tasks": tasks, "batch": batch, "rounds": rounds}
    for name, rounds_spent in figures.items():
        walls = [wall for wall, _cpu in rounds_spent]
        cpus = [cpu for _wall, cpu in rounds_spent]
        answer[f"{name}_wall_us"] = round(statistics.median(walls) / tasks * 1e6, 2)
        answer[f"{name}_cpu_us"] = round(statistics.median(cpus) / tasks * 1e6, 2)
    return answer


async def _counted(kind: str, variant: str, tasks: int, batch: int) -> None:
    """One variant's failing acks, counted by the callgrind that runs this process (after
    a warm-up round, as the timed rounds have)."""
    options = RETRY if variant == "retry" else MOVE
    with tempfile.TemporaryDirectory() as folder:
        store = open_store(_url(kind, Path(folder)))
        await store.open()
        try:
            await store.save_queue(variant, options)
            await store.save_queue("dead", DEAD)
            now = 1_700_000_000_000
            await _fail_all(store, variant, options, tasks, batch, now)
            await store.bulk(variant, "delete", EVERY_TASK, now, 0, 1_000_000)
            await store.bulk("dead", "delete", EVERY_TASK, now, 0, 1_000_000)
            await _fail_all(store, variant, options, tasks, batch, now + 1000, counted=True)
        finally:
            await store.close()
            _drop_schema(store.url)


def _instructions(kind: str, tasks: int, batch: int) -> dict[str, object]:
    """Each variant under callgrind, in a process of its own: instructions per failed ack."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    answer: dict[str, object] = {"store": kind, "tasks": tasks, "batch": batch}
    for variant in ("retry", "move"):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "callgrind.out"
            command = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.dead_letters",
                "--store",
                kind,
                "--tasks",
                str(tasks),
                "--batch",
                str(batch),
                "--counted",
                variant,
            ]
            env = {**os.environ, "PYTHONHASHSEED": "0"}
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{variant} under callgrind failed:\n{done.stderr[-3000:]}")
            dump = Path(f"{out}.1").read_text()
            total = next(
                int(line.split()[1]) for line in dump.splitlines() if line.startswith("summary:")
            )
            answer[f"{variant}_instructions"] = round(total / tasks)
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["memory", "sqlite", "postgres"], default="memory")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    parser.add_argument("--counted", choices=["retry", "move"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.counted:  # the process that callgrind runs (--instructions)
        asyncio.run(_counted(args.store, args.counted, args.tasks, args.batch))
    elif args.instructions:
        print(json.dumps(_instructions(args.store, args.tasks, args.batch)))
    else:
        print(json.dumps(asyncio.run(_main(args.store, args.tasks, args.batch, args.rounds))))


if __name__ == "__main__":
    main()
