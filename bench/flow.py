"""Flow control's cost: the seed drain (one task a poll) and the batched drain (100 a poll)
on queues with flow-control options that do not bind, each beside the same drain on a plain
queue, in the same run, alternating, on one store.

    python -m bench.flow [--store sqlite|postgres|memory] [--tasks N] [--repeats R]

Prints a table of tasks per second and each variant's ratio to the plain drain (the median
of the repeats). docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import fresh_store, katars
from bench.throughput import Extra, drain_servers

KEYS = 1000


def _keyed(n: int) -> dict[str, object]:
    return {"key": f"customer-{n % KEYS}"}


def _unique(n: int) -> dict[str, object]:
    return {"unique_key": f"order-{n}"}


#: name -> (queue options, each task's extra fields)
VARIANTS: dict[str, tuple[dict[str, object], Extra | None]] = {
    "plain": ({}, None),
    "concurrency (not binding)": ({"concurrency": 100_000}, None),
    "rate (not binding)": ({"rate": {"limit": 1_000_000, "period": 1000}}, None),
    f"key_concurrency 1, {KEYS} keys": ({"key_concurrency": 1}, _keyed),
    # key_rate beside the same keyed tasks on a queue without it (what it costs by itself).
    f"keys only, {KEYS} keys": ({}, _keyed),
    f"key_rate (not binding), {KEYS} keys": (
        {"key_rate": {"limit": 1_000_000, "period": 1000}},
        _keyed,
    ),
    f"fair, {KEYS} keys": ({"fair": True}, _keyed),
    "unique_key on every task": ({}, _unique),
}


def measure(store: str, tasks: int, batch: int, connections: int, name: str) -> tuple[float, float]:
    """The drain's tasks per second, and the bulk enqueue's before it (1,000 a request)."""
    options, extra = VARIANTS[name]
    with fresh_store(store) as url, katars(url, 1) as servers:
        figures = drain_servers(servers, tasks, batch, connections, options, extra)
        return figures["tasks_per_s"], figures["enqueued_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "memory"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--only", nargs="*", default=[], help="variants whose name starts so (plain always)"
    )
    parser.add_argument("--batch", type=int, choices=[1, 100], help="one drain only")
    args = parser.parse_args()
    variants = (
        [name for name in VARIANTS if name == "plain" or any(name.startswith(o) for o in args.only)]
        if args.only
        else list(VARIANTS)
    )
    print(f"store {args.store}, {args.tasks} tasks, {args.connections} connections")
    print(
        f"| drain | variant | tasks/s (median of {args.repeats}) | vs plain"
        " | bulk enqueue tasks/s | vs plain |"
    )
    print("|---|---|---|---|---|---|")
    for batch, label in ((1, "seed (1 a poll)"), (100, "batched (100 a poll)")):
        if args.batch is not None and batch != args.batch:
            continue
        figures: dict[str, list[float]] = {name: [] for name in variants}
        filled: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):  # alternating, so that a noisy moment hits them all
            for name in variants:
                drained, enqueued = measure(args.store, args.tasks, batch, args.connections, name)
                figures[name].append(drained)
                filled[name].append(enqueued)
        plain = statistics.median(figures["plain"])
        plain_fill = statistics.median(filled["plain"])
        for name, runs in figures.items():
            median = statistics.median(runs)
            fill = statistics.median(filled[name])
            print(
                f"| {label} | {name} | {median:,.0f} | {median / plain:.2f}"
                f" | {fill:,.0f} | {fill / plain_fill:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
