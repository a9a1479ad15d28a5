"""What key_rate costs a batched drain, measured in-process: the store's poll called directly
(8 polls of 100 at a time, each with the acks of the tasks the last one got), 20,000 tasks
over 1,000 keys, on a queue without key_rate and on the same queue with a key_rate that does
not bind, alternating, median of the repeats. The figure is tasks per CPU-second of this
process (the SQLite store's writer thread included), which other load on a shared machine
moves far less than a wall-clock rate.

    python -m bench.key_rate [--store memory|sqlite|postgres] [--repeats R]

On PostgreSQL, the rate per CPU-second of PostgreSQL's backends that served the drain is
printed too (bench.common.postgres_cpu: PostgreSQL must run on this machine), and the
wall-clock rate. docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import msgspec

from bench.common import fresh_store, postgres_cpu
from katar.core.model import Ack, NewTask, QueueOptions, parse_queue_options
from katar.store import open_store

T0 = 1_700_000_000_000
KEYS = 1000
VARIANTS: dict[str, QueueOptions] = {
    f"no key_rate, {KEYS} keys": QueueOptions(),
    f"key_rate (not binding), {KEYS} keys": parse_queue_options(
        {"key_rate": {"limit": 1_000_000, "period": 1000}}
    ),
}


async def drain(
    url: str, options: QueueOptions, tasks: int, polls: int = 8
) -> tuple[float, float, float | None]:
    """Tasks per CPU-second of this process, per wall-clock second, and on PostgreSQL per
    CPU-second of its backends, of the drain."""
    postgres = url.startswith("postgresql")
    store = open_store(url)
    await store.open()
    try:
        await store.save_queue("q", options)
        data = msgspec.Raw(b'{"n": 1}')
        specs = [NewTask(data=data, key=f"customer-{n % KEYS}") for n in range(tasks)]
        for start in range(0, tasks, 1000):
            await store.enqueue("q", specs[start : start + 1000], T0)
        acks: list[list[Ack]] = [[] for _ in range(polls)]
        drained = step = 0
        server = postgres_cpu(url) if postgres else 0.0
        cpu, wall = time.process_time(), time.perf_counter()
        while drained < tasks or any(acks):
            step += 1
            results = await asyncio.gather(
                *(store.poll("q", options, acks[i], 100, None, T0 + step) for i in range(polls))
            )
            for i, result in enumerate(results):
                acks[i] = [Ack(task_id=str(t.id), status="done") for t in result.delivered]
                drained += len(result.delivered)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        served = tasks / (postgres_cpu(url) - server) if postgres else None
        return tasks / cpu, tasks / wall, served
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["memory", "sqlite", "postgres"], default="memory")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    server: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):  # alternating, so that a noisy moment hits both
        for name, options in VARIANTS.items():
            sqlite = f"sqlite:///{tempfile.mkdtemp(prefix='katar-bench-')}/katar.db"
            with fresh_store(args.store, sqlite) as url:
                by_cpu, by_wall, by_server = asyncio.run(drain(url, options, args.tasks))
            cpu[name].append(by_cpu)
            wall[name].append(by_wall)
            if by_server is not None:
                server[name].append(by_server)
    columns = {"tasks per CPU-second": cpu}
    if args.store == "postgres":
        columns["tasks per CPU-second of PostgreSQL"] = server
    columns["tasks/s (wall)"] = wall
    print(f"store {args.store}, {args.tasks} tasks, median of {args.repeats}")
    print("| variant | " + " | ".join(f"{column} | vs none" for column in columns) + " |")
    print("|---|" + "---|---|" * len(columns))
    first = next(iter(VARIANTS))
    for name in VARIANTS:
        cells = []
        for runs in columns.values():
            median, base = statistics.median(runs[name]), statistics.median(runs[first])
            cells.append(f"{median:,.0f} | {median / base:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
