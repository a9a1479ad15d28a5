"""One ``katar serve`` against two on one PostgreSQL: the drain's rate, and the CPU a task
costs the servers and the whole machine, to tell contention between servers (more CPU per
task, or less of the machine busy) from a machine with no core to spare.

    bench/.venv/bin/python -m bench.pgservers [--jobs 20000] [--repeats 3]

Each run drains N tasks with wrk's 32 connections (bench/throughput.py's drain_servers: 16
and 16 on two servers), one task a poll and up to 100. The machine's CPU is read from
/proc/stat (every process: servers, PostgreSQL, wrk), the servers' from their schedstat.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from bench.common import katars
from bench.latency import cpu_seconds
from bench.pgpeers import katar_url
from bench.throughput import drain_servers


def machine_busy_s() -> float:
    """CPU seconds the machine has spent busy (every core, every process) since boot."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run(servers: int, batch: int, jobs: int) -> dict[str, float]:
    with katar_url("postgres") as url, katars(url, servers) as started:
        marks: list[float] = []  # the servers' CPU at the drain's start and end

        def meter() -> float:
            marks.append(sum(cpu_seconds(server.pid) for server in started))
            return machine_busy_s()

        figures = drain_servers(started, jobs, batch, 32, cpu=meter)
    seconds = jobs / figures["tasks_per_s"]
    return {
        "tasks_per_s": figures["tasks_per_s"],
        "machine_busy": figures["drain_cpu_s"] / seconds / (os.cpu_count() or 1),
        "machine_cpu_ms_per_task": figures["drain_cpu_s"] * 1000 / jobs,
        "servers_cpu_ms_per_task": (marks[1] - marks[0]) * 1000 / jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        "| drain | servers | tasks/s | machine busy | machine CPU ms / task"
        " | servers' CPU ms / task |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for batch in (1, 100):
        for servers in (1, 2):
            runs = [run(servers, batch, args.jobs) for _ in range(args.repeats)]
            median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            print(
                f"| {batch} a poll | {servers} | {median['tasks_per_s']:,.0f} |"
                f" {median['machine_busy']:.0%} | {median['machine_cpu_ms_per_task']:.3f} |"
                f" {median['servers_cpu_ms_per_task']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
