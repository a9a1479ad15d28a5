"""Katar beside the job queues that run on PostgreSQL or Redis, in one run, on the same
PostgreSQL and Redis, measured the same way.

    bench/.venv/bin/python -m bench.pgpeers [--jobs 20000] [--repeats 3] [--only NAME,...]

Each system: N jobs added by one client one at a time, then N added by one client in calls
of 1,000 where it has such a call, then the N drained by its workers doing nothing per job.
Every drain checks that each job ran once (the workers' own counts), so no figure is taken
of a broken run. Katar is measured on SQLite and PostgreSQL, drained by wrk (bench/drain.lua,
32 connections) one task a poll and up to 100 a poll; on PostgreSQL also by two servers
on the same schema (16 connections each, drained together), with the dispatch latency
from an enqueue on one server to a long poll held on the other; beside Katar on SQLite,
bench/minimal.py's drain, the yardstick of its batched figure. The Node peers run from
bench/node (``npm ci`` there), the Python ones from bench/.venv. Prints a markdown table
of the figures, and one of issue 17's targets with whether each is met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import latency
from bench.common import HERE, katars
from bench.run import machine
from bench.throughput import QUEUE, drain_minimal, drain_servers

PG = os.environ.get("KATAR_BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("KATAR_BENCH_REDIS_PEERS", "redis://127.0.0.1:6379/14")
NODE = HERE / "node"
#: Worker processes for every peer, and jobs at once in each (graphile-worker's documented
#: high-throughput setting is 24 a process); Katar's drain has 32 connections.
PROCESSES, CONCURRENCY, CONNECTIONS = 2, 24, 32

Figures = dict[str, float]


def database(name: str) -> str:
    """The URL of the database ``name`` on the shared server, created if missing."""
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG}/{name}"


def node(script: str, url: str, jobs: int, *extra: str) -> Figures:
    """Run a driver of bench/node; its figures."""
    command = ["node", str(NODE / script), "--url", url, "--jobs", str(jobs), *extra]
    done = subprocess.run(command, cwd=NODE, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    figures: Figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def graphile(mode: str) -> Callable[[int], Figures]:
    def measure(jobs: int) -> Figures:
        return node(
            "graphile.mjs",
            database("bench_graphile"),
            jobs,
            "--mode",
            mode,
            "--processes",
            str(PROCESSES),
            "--concurrency",
            str(CONCURRENCY),
        )

    return measure


def pgboss(jobs: int) -> Figures:
    # 8 fetch loops a process, 100 jobs a fetch: see bench/node/pgboss.mjs.
    url = database("bench_pgboss")
    return node("pgboss.mjs", url, jobs, "--processes", str(PROCESSES), "--concurrency", "8")


def bullmq(jobs: int) -> Figures:
    return node(
        "bullmq.mjs", REDIS, jobs, "--processes", str(PROCESSES), "--concurrency", str(CONCURRENCY)
    )


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HERE.parent), "KATAR_BENCH_WORKER": "1", **extra}


def procrastinate(jobs: int) -> Figures:
    import psycopg

    from bench import pg_peer_tasks

    url = database("bench_procrastinate")
    os.environ["KATAR_BENCH_PROCRASTINATE"] = url
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0]:  # type: ignore[index]
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "procrastinate",
                    "--app",
                    "bench.pg_peer_tasks.PROCRASTINATE",
                    "schema",
                    "--apply",
                ],
                env=_env(KATAR_BENCH_PROCRASTINATE=url),
                cwd=HERE.parent,
                check=True,
                capture_output=True,
            )
        clear = "TRUNCATE procrastinate_jobs, procrastinate_events RESTART IDENTITY CASCADE"
        conn.execute(clear)
        app = pg_peer_tasks.make_procrastinate()
        with app.open():
            task = app.tasks["noop"]
            started = time.perf_counter()
            for n in range(jobs):
                task.defer(n=n)
            single = jobs / (time.perf_counter() - started)
            conn.execute(clear)
            started = time.perf_counter()
            for start in range(0, jobs, 1000):
                task.batch_defer(*({"n": n} for n in range(start, min(jobs, start + 1000))))
            batch = jobs / (time.perf_counter() - started)
        workers = _start(
            [
                sys.executable,
                "-m",
                "procrastinate",
                "--app",
                "bench.pg_peer_tasks.PROCRASTINATE",
                "worker",
                "--concurrency",
                str(CONCURRENCY),
            ],
            _env(KATAR_BENCH_PROCRASTINATE=url),
        )
        left = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        elapsed = _until(lambda: conn.execute(left).fetchone()[0] == 0, workers)  # type: ignore[index]
        _stop(workers)
        ran = conn.execute(
            "SELECT count(*) FROM procrastinate_events WHERE type = 'started'"
        ).fetchone()[0]  # type: ignore[index]
        succeeded = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        ).fetchone()[0]  # type: ignore[index]
    _check("procrastinate", jobs, ran, succeeded)
    return {"enqueue_per_s": single, "enqueue_batch_per_s": batch, "drain_per_s": jobs / elapsed}


def celery(jobs: int) -> Figures:
    import redis

    from bench import pg_peer_tasks

    os.environ["KATAR_BENCH_CELERY_REDIS"] = REDIS
    store = redis.Redis.from_url(REDIS)
    store.flushdb()
    app = pg_peer_tasks.make_celery()
    task = app.tasks["noop"]
    started = time.perf_counter()
    for n in range(jobs):
        task.delay(n)
    single = jobs / (time.perf_counter() - started)
    # Celery has no call that adds many jobs in one message (a group is N messages).
    workers = _start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.pg_peer_tasks.CELERY",
            "worker",
            "--concurrency",
            str(2 * PROCESSES),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        _env(KATAR_BENCH_CELERY_REDIS=REDIS),
    )
    elapsed = _until(lambda: int(store.get(pg_peer_tasks.CELERY_RUNS) or 0) >= jobs, workers)
    time.sleep(0.5)  # a job run twice would show here
    _stop(workers)
    ran = int(store.get(pg_peer_tasks.CELERY_RUNS) or 0)
    _check("Celery", jobs, ran, ran)
    store.flushdb()
    return {"enqueue_per_s": single, "drain_per_s": jobs / elapsed}


def _start(command: list[str], env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [
        # Their logs are per job; a lost or repeated job shows in the counts instead.
        subprocess.Popen(
            command,
            cwd=HERE.parent,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(1 if "celery" in command else PROCESSES)
    ]


def _until(done: Callable[[], bool], workers: list[subprocess.Popen[bytes]]) -> float:
    """Seconds from now until ``done()``; fails if a worker dies first."""
    started = time.perf_counter()
    while not done():
        for worker in workers:
            if worker.poll() is not None:
                raise RuntimeError(f"a worker stopped early ({worker.args!r})")
        time.sleep(0.02)
    return time.perf_counter() - started


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(60)


def _check(name: str, jobs: int, ran: int, finished: int) -> None:
    if ran != jobs or finished != jobs:
        raise RuntimeError(f"{name}: {ran} runs and {finished} finished for {jobs} jobs")


@contextmanager
def katar_url(store: str) -> Iterator[str]:
    """A store URL for a fresh Katar: SQLite in the server's folder, or its own PostgreSQL
    schema (dropped afterwards) in the database bench_katar."""
    if store == "sqlite":
        yield "sqlite:///katar.db"
        return
    import psycopg

    base = database("bench_katar")
    schema = f"katar_bench_{uuid.uuid4().hex[:10]}"
    try:
        yield f"{base}?schema={schema}&pool_size=20"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def katar_enqueue(store: str, jobs: int) -> float:
    """Tasks per second that one client adds one per request."""
    with (
        katar_url(store) as url,
        katars(url, 1) as servers,
        httpx.Client(base_url=servers[0].url, timeout=60) as client,
    ):
        client.put(f"/v1/queue/{QUEUE}", json={}).raise_for_status()
        started = time.perf_counter()
        for n in range(jobs):
            client.post(f"/v1/queue/{QUEUE}/tasks", json={"data": {"n": n}}).raise_for_status()
        return jobs / (time.perf_counter() - started)


def katar_drain(store: str, jobs: int, batch: int, servers: int = 1) -> Figures:
    """Fill ``servers`` Katar processes on one store 1,000 tasks a request, drain them with
    wrk asking for ``batch`` a poll, the connections split among them; checks that wrk was
    handed each task once."""
    with katar_url(store) as url, katars(url, servers) as running:
        figures = drain_servers(running, jobs, batch, CONNECTIONS)
    return {"enqueue_batch_per_s": figures["enqueued_per_s"], "drain_per_s": figures["tasks_per_s"]}


def katar(store: str, batch: int) -> Callable[[int], Figures]:
    def measure(jobs: int) -> Figures:
        figures = katar_drain(store, jobs, batch)
        figures["enqueue_per_s"] = katar_enqueue(store, jobs)
        return figures

    return measure


def katar_two(batch: int) -> Callable[[int], Figures]:
    """The drain on two ``katar serve`` processes sharing one PostgreSQL schema, wrk's 32
    connections 16 on each (the enqueue rows are one server's, so they are not repeated)."""

    def measure(jobs: int) -> Figures:
        return {"drain_per_s": katar_drain("postgres", jobs, batch, servers=2)["drain_per_s"]}

    return measure


#: The cross-server dispatch: tasks enqueued, their pace (s) and the workers' long polls.
DISPATCH_TASKS, DISPATCH_PACE, DISPATCH_POLLS, DISPATCH_WAIT = 300, 0.02, 50, 30


def katar_dispatch(jobs: int) -> Figures:
    """Two ``katar serve`` on one PostgreSQL schema: workers hold long polls on the first,
    a producer enqueues one task at a time on the second; the latency from the enqueue's
    answer to a worker's receipt (bench/latency.py). A fixed number of tasks, not ``jobs``:
    the pace, not the count, is what is measured."""
    with katar_url("postgres") as url, katars(url, 2) as (workers, producer):
        return asyncio.run(
            latency.dispatch(
                workers.port,
                DISPATCH_POLLS,
                DISPATCH_TASKS,
                producer=producer.port,
                wait=DISPATCH_WAIT,
                pace=DISPATCH_PACE,
            )
        )


def minimal(jobs: int) -> Figures:
    """bench/minimal.py's drain, up to 100 a poll, measured as bench/run.py measures it and
    as Katar's drains are here: the yardstick of Katar's SQLite batched drain."""
    return {"drain_per_s": drain_minimal(jobs, 100, CONNECTIONS)["tasks_per_s"]}


#: (key, label, measure): every system of the table, in its order.
SYSTEMS: list[tuple[str, str, Callable[[int], Figures]]] = [
    ("katar_pg_1", "Katar, PostgreSQL, 1 task a poll", katar("postgres", 1)),
    ("katar_pg_100", "Katar, PostgreSQL, up to 100 a poll", katar("postgres", 100)),
    ("katar_pg2_1", "Katar, PostgreSQL, 2 servers, 1 task a poll", katar_two(1)),
    ("katar_pg2_100", "Katar, PostgreSQL, 2 servers, up to 100 a poll", katar_two(100)),
    ("katar_pg_dispatch", "Katar, PostgreSQL, dispatch across 2 servers", katar_dispatch),
    ("katar_sqlite_1", "Katar, SQLite, 1 task a poll", katar("sqlite", 1)),
    ("katar_sqlite_100", "Katar, SQLite, up to 100 a poll", katar("sqlite", 100)),
    ("minimal_100", "minimal drain (bench/minimal.py, SQLite), up to 100 a poll", minimal),
    ("graphile_defaults", "graphile-worker, defaults (PostgreSQL)", graphile("defaults")),
    ("graphile_batched", "graphile-worker, batched (PostgreSQL)", graphile("batched")),
    ("pgboss", "pg-boss, 100 a fetch (PostgreSQL)", pgboss),
    ("procrastinate", "procrastinate (PostgreSQL)", procrastinate),
    ("bullmq", "BullMQ (Redis)", bullmq),
    ("celery", "Celery (Redis)", celery),
]


def measure_all(
    jobs: int, repeats: int, only: set[str] | None, save: Callable[[dict[str, Any]], object]
) -> dict[str, Any]:
    """Every system's figures, the medians of ``repeats`` runs; ``save`` is given the
    results so far after each system (a long run interrupted keeps what it measured)."""
    results: dict[str, Any] = {}
    for key, label, measure in SYSTEMS:
        if only and key not in only:
            continue
        print(f"{label} ...", file=sys.stderr, flush=True)
        runs = [measure(jobs) for _ in range(repeats)]
        results[key] = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
        results[key]["runs"] = runs
        save(results)
    return results


def table(results: dict[str, Any]) -> str:
    """One markdown table; ratios are to Katar on PostgreSQL (drains: the same poll size's
    figure for Katar's rows, the batched one for the peers)."""
    reference = results.get("katar_pg_100", {})

    def cell(row: dict[str, Any], name: str, against: dict[str, Any]) -> str:
        if name not in row:
            return "-"
        value = row[name]
        ratio = f" ({value / against[name]:.2f}x)" if name in against else ""
        return f"{value:,.0f}{ratio}"

    lines = [
        "| system | enqueue, 1 a call, /s | enqueue, 1,000 a call, /s | drain, /s |",
        "|---|---:|---:|---:|",
    ]
    columns = ("enqueue_per_s", "enqueue_batch_per_s", "drain_per_s")
    for key, label, _ in SYSTEMS:
        # The dispatch latency has no rate: it is in targets().
        if key in results and any(name in results[key] for name in columns):
            row = results[key]
            lines.append(
                f"| {label} | {cell(row, 'enqueue_per_s', reference)} "
                f"| {cell(row, 'enqueue_batch_per_s', reference)} "
                f"| {cell(row, 'drain_per_s', reference)} |"
            )
    return "\n".join(lines)


#: (figure, Katar's key, the reference's key, the rate compared): each met at >= 1.0x.
RATIOS = [
    (
        "seed drain (1 a poll) vs graphile-worker defaults",
        "katar_pg_1",
        "graphile_defaults",
        "drain_per_s",
    ),
    (
        "batched drain (max 100) vs graphile-worker batched",
        "katar_pg_100",
        "graphile_batched",
        "drain_per_s",
    ),
    (
        "enqueue 1,000 a request vs graphile-worker add_jobs",
        "katar_pg_100",
        "graphile_batched",
        "enqueue_batch_per_s",
    ),
    ("two servers, 1 a poll, vs one server", "katar_pg2_1", "katar_pg_1", "drain_per_s"),
    ("two servers, max 100, vs one server", "katar_pg2_100", "katar_pg_100", "drain_per_s"),
    (
        "SQLite batched drain vs the minimal drain (max 100)",
        "katar_sqlite_100",
        "minimal_100",
        "drain_per_s",
    ),
]
#: The dispatch latency's target: p99, in ms, from the enqueue's answer.
DISPATCH_P99_MS = 10.0


def targets(results: dict[str, Any]) -> str:
    """Issue 17's targets, each met when the figure is at least 1.0x its reference in the
    same run (drains; the bulk enqueue), or under its bound (the dispatch latency)."""
    lines = [
        "| target (same run) | Katar | reference | measured | wanted | met |",
        "|---|---:|---:|---:|---|---|",
    ]

    def row(label: str, ours: str, theirs: str, measured: str, wanted: str, met: bool) -> None:
        lines.append(
            f"| {label} | {ours} | {theirs} | {measured} | {wanted} | {'yes' if met else 'no'} |"
        )

    for label, ours, theirs, name in RATIOS:
        if ours in results and theirs in results:
            a, b = results[ours][name], results[theirs][name]
            row(label, f"{a:,.0f}/s", f"{b:,.0f}/s", f"{a / b:.2f}x", ">= 1.00x", a >= b)
    if "katar_pg_dispatch" in results:
        d = results["katar_pg_dispatch"]
        row(
            f"dispatch p99, {DISPATCH_POLLS} long polls on one server, a task every "
            f"{DISPATCH_PACE * 1000:.0f} ms enqueued on another (from the enqueue's answer; "
            f"from its send: p50 {d['p50_send_ms']:.1f} ms, p99 {d['p99_send_ms']:.1f} ms)",
            f"p50 {d['p50_ms']:.1f} ms",
            "-",
            f"{d['p99_ms']:.1f} ms",
            f"<= {DISPATCH_P99_MS:.0f} ms",
            d["p99_ms"] <= DISPATCH_P99_MS,
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", help="comma-separated keys: " + ", ".join(k for k, _, _ in SYSTEMS)
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.mkdir(exist_ok=True)
    path = args.out / f"pgpeers-{date[:10]}"

    def save(results: dict[str, Any]) -> str:
        text = (
            f"{machine()}; {date}; N = {args.jobs:,}, median of {args.repeats}\n\n"
            f"{table(results)}\n\n{targets(results)}"
        )
        figures = {"date": date, "jobs": args.jobs, "repeats": args.repeats, **results}
        path.with_suffix(".json").write_text(json.dumps(figures, indent=2))
        path.with_suffix(".md").write_text(text + "\n")
        return text

    only = set(args.only.split(",")) if args.only else None
    print(save(measure_all(args.jobs, args.repeats, only, save)))


if __name__ == "__main__":
    main()
