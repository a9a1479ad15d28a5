"""Wall-clock drains of two versions of Katar in one sitting, alternating, beside their
yardsticks: the SQLite batched drain (``max`` 100, wrk) against the minimal raw-ASGI +
SQLite drain, the seed drain (one task a poll) against a bare ASGI app's requests per
second, and the batched drain with a deeper queue.

    git archive <commit> src | tar -x -C /tmp/base
    python -m bench.wallclock_ab --before /tmp/base/src --after src [--rounds 3]

Each ``katar serve`` runs the tree it is given (``PYTHONPATH``, so the path must hold
``katar/``); the yardsticks run from this checkout. Prints one JSON line a measure and a
summary of medians and ratios at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import throughput


@contextmanager
def running(src: Path) -> Iterator[None]:
    """Servers started inside run the Katar of ``src``."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src.resolve())
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the older tree's src/")
    parser.add_argument("--after", type=Path, required=True, help="the newer tree's src/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batched-tasks", type=int, default=1_250_000)
    parser.add_argument("--deep-tasks", type=int, default=2_800_000)
    parser.add_argument("--seed-tasks", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-deep", action="store_true", help="skip the deep-queue drains")
    args = parser.parse_args()
    c = args.connections
    results: dict[str, list[float]] = {}

    def record(name: str, measure: Callable[[], float]) -> None:
        value = measure()
        results.setdefault(name, []).append(value)
        print(json.dumps({"measure": name, "value": round(value, 1)}), flush=True)

    versions = {"before": args.before, "after": args.after}
    for round_ in range(args.rounds):
        # Alternate which version goes first, so that a drift of the machine's load
        # during a round does not favour one of them.
        order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
        record(
            "minimal_batched",
            lambda: throughput.drain_minimal(args.batched_tasks, 100, c)["tasks_per_s"],
        )
        record("ceiling", lambda: throughput.ceiling(c, args.seconds))
        for name in order:
            with running(versions[name]):
                record(
                    f"{name}_batched",
                    lambda: throughput.drain("sqlite", args.batched_tasks, 100, c)["tasks_per_s"],
                )
                record(
                    f"{name}_seed",
                    lambda: throughput.drain("sqlite", args.seed_tasks, 1, c)["tasks_per_s"],
                )
    if not args.no_deep:
        for name in versions:
            with running(versions[name]):
                record(
                    f"{name}_deep",
                    lambda: throughput.drain("sqlite", args.deep_tasks, 100, c)["tasks_per_s"],
                )
    medians = {name: statistics.median(values) for name, values in results.items()}
    summary: dict[str, float] = {}
    for name in versions:
        summary[f"{name}_batched_vs_minimal"] = (
            medians[f"{name}_batched"] / medians["minimal_batched"]
        )
        summary[f"{name}_seed_vs_ceiling"] = medians[f"{name}_seed"] / medians["ceiling"]
        if f"{name}_deep" in medians:
            summary[f"{name}_deep_vs_batched"] = (
                medians[f"{name}_deep"] / medians[f"{name}_batched"]
            )
    print(json.dumps({"medians": medians, "ratios": summary, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
