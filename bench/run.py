"""Katar's benchmark suite: every figure in one sitting, one table, a JSON file and a chart.

    bench/run [--repeats 3] [--quick]

Server and load generator share the machine, so throughput is also given as a ratio to a
ceiling measured in the same run (a bare ASGI app on uvicorn with the settings that
``katar serve`` uses: uvloop, httptools, no access log), and each figure is the median of
the repeats with its spread. ``katar serve`` answers through its own HTTP protocol rather
than ASGI; its floor (a route that needs no store) is measured beside the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import depth, latency, peers, throughput
from bench.common import HERE, katar, postgres_available

Figures = dict[str, Any]


def spread(measure: Callable[[], float], repeats: int) -> dict[str, float]:
    values = [measure() for _ in range(repeats)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def measure_all(args: argparse.Namespace) -> Figures:
    r, c = args.repeats, args.connections
    seconds = 3.0 if args.quick else 5.0
    figures: Figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": f"wrk -t2 -c{c}",
        "tasks": {
            "seed": args.tasks,
            "batched": args.batched_tasks,
            "beanstalkd": args.tasks,
            "huey": args.tasks,
            "rq": args.rq_tasks,
        },
    }
    step = print
    step("ceiling ...", flush=True)
    figures["ceiling"] = spread(lambda: throughput.ceiling(c, seconds), r)
    step("katar floor ...", flush=True)
    figures["katar_floor"] = spread(lambda: throughput.floor(c, seconds), r)
    step("load generator ...", flush=True)
    if throughput.load_generator_ceiling(c, 1) is not None:
        figures["load_generator"] = spread(
            lambda: throughput.load_generator_ceiling(c, seconds) or 0.0, r
        )
    for store in ("sqlite", "memory"):
        for name, tasks, batch in (("seed", args.tasks, 1), ("batched", args.batched_tasks, 100)):
            step(f"drain {store} {name} ...", flush=True)
            runs = [throughput.drain(store, tasks, batch, c) for _ in range(r)]
            figures[f"drain_{name}_{store}"] = {
                "median": statistics.median(x["tasks_per_s"] for x in runs),
                "min": min(x["tasks_per_s"] for x in runs),
                "max": max(x["tasks_per_s"] for x in runs),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
            }
    for name, tasks, batch in (("seed", args.tasks, 1), ("batched", args.batched_tasks, 100)):
        step(f"drain minimal {name} ...", flush=True)
        rates = [throughput.drain_minimal(tasks, batch, c)["tasks_per_s"] for _ in range(r)]
        figures[f"drain_{name}_minimal"] = {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
        }
    if postgres_available():
        for servers in (1, 2):
            for name, tasks, batch in (("seed", args.tasks // 2, 1), ("batched", 100_000, 100)):
                step(f"drain postgres {name}, {servers} server(s) ...", flush=True)
                runs = [throughput.drain_postgres(servers, tasks, batch, c) for _ in range(r)]
                rates = [run["tasks_per_s"] for run in runs]
                figures[f"drain_{name}_postgres_{servers}"] = {
                    "median": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                }
    step("enqueue ...", flush=True)
    figures["enqueue_single_sqlite"] = spread(
        lambda: throughput.enqueue("sqlite", 1, c, seconds), r
    )
    figures["enqueue_bulk_sqlite"] = spread(
        lambda: throughput.enqueue("sqlite", 1000, min(c, 8), seconds), r
    )
    step("dispatch latency ...", flush=True)
    runs = []
    for _ in range(r):
        with katar("sqlite") as server:
            runs.append(asyncio.run(latency.dispatch(server.port)))
    figures["dispatch"] = {
        "p50_ms": statistics.median(x["p50_ms"] for x in runs),
        "p99_ms": statistics.median(x["p99_ms"] for x in runs),
        "p99_max_ms": max(x["p99_ms"] for x in runs),
    }
    step("depth ...", flush=True)
    depths = (1000, 100_000) if args.quick else (1000, 100_000, 1_000_000)
    figures["depth"] = {str(d): depth.measure(d) for d in depths}
    step("idle long polls ...", flush=True)
    with katar("sqlite") as server:
        figures["idle_cpu_percent"] = asyncio.run(latency.idle_cpu(server.port, server.pid))
    step("peers ...", flush=True)
    for name, run, count in (
        ("beanstalkd", peers.beanstalkd, args.tasks),
        ("huey", peers.huey, args.tasks),
        ("rq", peers.rq, args.rq_tasks),
    ):
        step(f"  {name} ...", flush=True)
        runs = [run(count) for _ in range(r)]
        figures[name] = {
            key: {
                "median": statistics.median(x[key] for x in runs),
                "min": min(x[key] for x in runs),
                "max": max(x[key] for x in runs),
            }
            for key in runs[0]
        }
    return figures


def targets(f: Figures) -> list[tuple[str, str, str, bool]]:
    """(figure, measured, target, met) for every target of the speed issue."""
    ceiling = f["ceiling"]["median"]
    seed = f["drain_seed_sqlite"]["median"]
    batched = f["drain_batched_sqlite"]["median"]
    bulk = f["enqueue_bulk_sqlite"]["median"]
    single = f["enqueue_single_sqlite"]["median"]
    bean = f["beanstalkd"]["drain_per_s"]["median"]
    depths = f["depth"]
    deepest = max(depths, key=int)
    minimal = f.get("drain_seed_minimal", {}).get("median")
    versus = f", {seed / minimal:.2f}x minimal" if minimal else ""
    rows = [
        (
            "seed drain, SQLite",
            f"{seed:,.0f}/s = {seed / ceiling:.0%} of ceiling{versus}",
            ">= 50% of ceiling",
            seed >= 0.5 * ceiling,
        ),
        (
            "batched drain, SQLite",
            f"{batched:,.0f}/s = {batched / bean:.1f}x beanstalkd",
            ">= 100,000/s and 3x beanstalkd",
            batched >= 100_000 and batched >= 3 * bean,
        ),
        ("bulk enqueue", f"{bulk:,.0f}/s", ">= 100,000/s", bulk >= 100_000),
        (
            "single enqueue",
            f"{single:,.0f}/s = {single / ceiling:.0%} of ceiling",
            ">= 40% of ceiling",
            single >= 0.4 * ceiling,
        ),
        (
            "dispatch p99",
            f"{f['dispatch']['p99_ms']:.2f} ms",
            "<= 5 ms",
            f["dispatch"]["p99_ms"] <= 5,
        ),
        (
            f"poll at {int(deepest):,} queued",
            f"{depths[deepest]['p50_ms'] / depths['1000']['p50_ms']:.2f}x the latency at 1,000",
            "<= 1.5x",
            depths[deepest]["p50_ms"] <= 1.5 * depths["1000"]["p50_ms"],
        ),
        (
            f"peak memory, {int(deepest):,} queued",
            f"{depths[deepest]['peak_rss_mb']:.0f} MB",
            "<= 150 MB",
            depths[deepest]["peak_rss_mb"] <= 150,
        ),
        (
            "CPU, 1,000 idle long polls",
            f"{f['idle_cpu_percent']:.2f}% of a core",
            "<= 2%",
            f["idle_cpu_percent"] <= 2,
        ),
    ]
    for peer in ("huey", "rq"):
        drains_ok = min(seed, batched) > f[peer]["drain_per_s"]["median"]
        enqueue_ok = min(single, bulk) > f[peer]["enqueue_per_s"]["median"]
        rows.append(
            (
                f"vs {peer}",
                "every drain and enqueue figure higher"
                if drains_ok and enqueue_ok
                else "not on every figure",
                "faster on all",
                drains_ok and enqueue_ok,
            )
        )
    return rows


def table(f: Figures) -> str:
    ceiling = f["ceiling"]["median"]

    def rate(key: str, sub: str | None = None) -> str:
        value = f[key][sub] if sub else f[key]
        return (
            f"{value['median']:>12,.0f}  [{value['min']:,.0f} .. {value['max']:,.0f}]"
            f"  {value['median'] / ceiling:>6.0%}"
        )

    lines = [
        f"{f['machine']}; {f['date']}; {f['load']}",
        f"{'figure':<44}{'per second':>12}  spread, ratio to the ceiling",
        f"{'ceiling: bare ASGI, req/s':<44}{rate('ceiling')}",
    ]
    if "katar_floor" in f:
        lines.append(f"{'floor: katar serve, GET configuration':<44}{rate('katar_floor')}")
    if "load_generator" in f:
        lines.append(f"{'load generator: wrk + drain.lua vs nginx':<44}{rate('load_generator')}")
    for store in ("sqlite", "memory"):
        lines.append(f"{f'drain, seed protocol, {store}':<44}{rate(f'drain_seed_{store}')}")
        lines.append(f"{f'drain, max 100, {store}':<44}{rate(f'drain_batched_{store}')}")
    for name, label in (("seed", "seed protocol"), ("batched", "max 100")):
        key = f"drain_{name}_minimal"
        if key in f:
            lines.append(f"{f'minimal raw ASGI+SQLite drain, {label}':<44}{rate(key)}")
    for servers in (1, 2):
        for name, label in (("seed", "seed protocol"), ("batched", "max 100")):
            key = f"drain_{name}_postgres_{servers}"
            if key in f:
                lines.append(f"{f'drain, {label}, postgres, {servers} server(s)':<44}{rate(key)}")
    lines.append(f"{'enqueue, 1 per request, sqlite':<44}{rate('enqueue_single_sqlite')}")
    lines.append(f"{'enqueue, 1,000 per request, sqlite':<44}{rate('enqueue_bulk_sqlite')}")
    for peer in ("beanstalkd", "huey", "rq"):
        lines.append(f"{f'{peer}: enqueue':<44}{rate(peer, 'enqueue_per_s')}")
        lines.append(f"{f'{peer}: drain (4 consumers)':<44}{rate(peer, 'drain_per_s')}")
    d = f["dispatch"]
    lines.append(
        f"dispatch latency, 100 long polls: p50 {d['p50_ms']:.2f} ms, "
        f"p99 {d['p99_ms']:.2f} ms (worst run {d['p99_max_ms']:.2f} ms)"
    )
    for queued, row in f["depth"].items():
        lines.append(
            f"poll with {int(queued):>9,} queued: p50 {row['p50_ms']:.3f} ms, "
            f"p99 {row['p99_ms']:.3f} ms, peak memory {row['peak_rss_mb']:.0f} MB"
        )
    lines.append(f"CPU with 1,000 idle long polls: {f['idle_cpu_percent']:.2f}% of one core")
    lines.append("")
    lines.append(f"{'target':<34}{'measured':<44}{'wanted':<32}met")
    for name, measured, wanted, met in targets(f):
        lines.append(f"{name:<34}{measured:<44}{wanted:<32}{'yes' if met else 'NO'}")
    return "\n".join(lines)


def chart(f: Figures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        ("Katar drain, max 100 (SQLite)", f["drain_batched_sqlite"], "katar"),
        ("Katar drain, 1/request (SQLite)", f["drain_seed_sqlite"], "katar"),
        ("Katar enqueue, 1,000/request", f["enqueue_bulk_sqlite"], "katar"),
        ("minimal raw drain, max 100", f["drain_batched_minimal"], "ceiling"),
        ("minimal raw drain, 1/request", f["drain_seed_minimal"], "ceiling"),
        ("Katar enqueue, 1/request", f["enqueue_single_sqlite"], "katar"),
        ("beanstalkd drain", f["beanstalkd"]["drain_per_s"], "peer"),
        ("beanstalkd put", f["beanstalkd"]["enqueue_per_s"], "peer"),
        ("Huey (SQLite) drain", f["huey"]["drain_per_s"], "peer"),
        ("Huey (SQLite) enqueue", f["huey"]["enqueue_per_s"], "peer"),
        ("RQ (Redis) drain", f["rq"]["drain_per_s"], "peer"),
        ("RQ (Redis) enqueue", f["rq"]["enqueue_per_s"], "peer"),
        ("ceiling: bare ASGI, req/s", f["ceiling"], "ceiling"),
        ("floor: katar serve, GET config, req/s", f["katar_floor"], "ceiling"),
    ]
    colours = {"katar": "#2a7ab0", "peer": "#999999", "ceiling": "#e0a030"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    names = [b[0] for b in bars][::-1]
    medians = [b[1]["median"] for b in bars][::-1]
    errors = [
        [b[1]["median"] - b[1]["min"] for b in bars][::-1],
        [b[1]["max"] - b[1]["median"] for b in bars][::-1],
    ]
    ax.barh(names, medians, xerr=errors, color=[colours[b[2]] for b in bars][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("tasks (or requests) per second, log scale; whiskers: spread of the repeats")
    ax.set_title(f"Katar and its peers, {f['date'][:10]}, {f['machine'].split(' (')[0]}")
    for y, value in enumerate(medians):
        ax.text(value * 1.05, y, f"{value:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--tasks", type=int, default=20_000, help="tasks per seed-protocol drain, and per peer run"
    )
    parser.add_argument("--batched-tasks", type=int, default=500_000)
    parser.add_argument(
        "--rq-tasks",
        type=int,
        default=5_000,
        help="jobs per RQ run: RQ drains about 300 jobs/s here (20,000: a minute a repeat)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a try-out")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.tasks, args.batched_tasks, args.rq_tasks = 1, 5000, 100_000, 1000
    figures = measure_all(args)
    args.out.mkdir(exist_ok=True)
    stem = args.out / f"bench-{figures['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(figures, indent=2))
    chart(figures, stem.with_suffix(".png"))
    text = table(figures)
    stem.with_suffix(".txt").write_text(text + "\n")
    print(text)
    print(f"\nwritten: {stem}.json, .png, .txt")


if __name__ == "__main__":
    main()
