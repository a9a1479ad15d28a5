"""Where Katar's time and round trips go on PostgreSQL: four phases on one ``katar serve``
each (one task enqueued a request, 1,000 a request, the seed drain one task a poll, the
batched drain up to 100 a poll), measured twice.

    bench/.venv/bin/python -m bench.pgprofile [--tasks 5000] [--out bench/results]

- Counted: the server runs with every PostgreSQL connection traced by libpq (psycopg's
  ``pgconn.trace``, installed by this module's ``serve`` mode before Katar starts, so
  nothing in Katar changes): statements executed, transactions, round trips (each
  ReadyForQuery ends one), rows of each statement text, per request and per task.
- Timed: the same phases untraced, with py-spy sampling the server (its top frames), the
  server's CPU and that of its database's backends (/proc), and the database's and cluster's
  counters (pg_stat_database for Katar's own database, pg_stat_wal for the whole cluster:
  other clients of a shared server show in the WAL figure).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from bench.common import HERE, Server, free_port, wait_for_port, wrk
from bench.pgpeers import database
from bench.throughput import QUEUE, fill

DB = "bench_katar_profile"  # its own: pg_stat_database and the WAL filter are per database
#: py-spy from bench/.venv beside this interpreter, else from the PATH.
_BESIDE = Path(sys.executable).parent / "py-spy"
PY_SPY = str(_BESIDE) if _BESIDE.exists() else "py-spy"
CONNECTIONS = 32


def _traced_serve(trace_dir: str, argv: list[str]) -> int:
    """Run ``katar`` with every psycopg connection traced to a file of its own."""
    import psycopg
    from psycopg import pq

    original = psycopg.AsyncConnection.connect.__func__  # type: ignore[attr-defined]
    files = []

    async def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        conn = await original(cls, *args, **kwargs)
        # Opened once per connection, before the server serves anything.
        trace = open(Path(trace_dir) / f"{uuid.uuid4().hex}.trace", "w")  # noqa: SIM115, ASYNC230
        files.append(trace)  # open for the connection's life
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        return conn

    psycopg.AsyncConnection.connect = classmethod(connect)  # type: ignore[assignment,method-assign]
    from katar.cli import main

    return main(argv)


def _sizes(trace_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in trace_dir.glob("*.trace")}


STATEMENT = re.compile(r'^F\t\d+\t(Query|Parse|Bind|Execute)\t "([^"]*)"(?: "((?:[^"]|"")*)")?')


def count(trace_dir: Path, since: dict[Path, int], names: dict[str, str]) -> dict[str, Any]:
    """Statements, transactions and round trips traced after ``since``; ``names`` maps
    prepared statements' names to their text (filled as Parse messages go by)."""
    totals: collections.Counter[str] = collections.Counter()
    texts: collections.Counter[str] = collections.Counter()
    for path in trace_dir.glob("*.trace"):
        with path.open() as trace:
            trace.seek(since.get(path, 0))
            pending = ""
            for line in trace:
                if line.startswith("B\t") and "\tReadyForQuery\t" in line:
                    totals["round_trips"] += 1
                    continue
                match = STATEMENT.match(line)
                if not match:
                    continue
                kind, first, second = match.groups()
                if kind == "Query":
                    sql = first.strip().upper()
                    if sql.startswith("BEGIN"):
                        totals["transactions"] += 1
                    elif sql not in ("COMMIT", "ROLLBACK"):
                        totals["statements"] += 1
                        texts[_short(first)] += 1
                elif kind == "Parse":
                    names[first] = second or ""
                    pending = second or ""
                    totals["parses"] += 1
                elif kind == "Bind":
                    pending = names.get(second or "", pending)
                elif kind == "Execute":
                    totals["statements"] += 1
                    texts[_short(pending)] += 1
    return {**totals, "statement_mix": texts.most_common(12)}


def _short(sql: str) -> str:
    return " ".join(sql.split())[:110]


@contextmanager
def server(traced: Path | None) -> Iterator[Server]:
    schema = f"katar_profile_{uuid.uuid4().hex[:8]}"
    url = f"{database(DB)}?schema={schema}&pool_size=20"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="katar-profile-")
    argv = ["serve", "--port", str(port), "--db", url]
    if traced:
        command = [sys.executable, "-m", "bench.pgprofile", "--serve-traced", str(traced), *argv]
    else:
        command = [sys.executable, "-m", "katar", *argv]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    process = subprocess.Popen(command, cwd=workdir, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield Server(port, process.pid)
    finally:
        process.terminate()
        process.wait(60)
        import psycopg

        with psycopg.connect(database(DB), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_counters() -> dict[str, float]:
    import psycopg

    with psycopg.connect(database(DB), autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched"
            " FROM pg_stat_database WHERE datname = %s",
            (DB,),
        ).fetchone()
        wal = conn.execute("SELECT wal_records, wal_bytes FROM pg_stat_wal").fetchone()
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (DB,),
            )
        ]
    assert row is not None
    assert wal is not None
    backend_cpu = 0.0
    for pid in pids:
        with suppress(OSError):  # a backend that ended meanwhile
            backend_cpu += cpu_seconds(pid)
    names = ("commits", "inserted", "updated", "deleted", "fetched", "wal_records", "wal_bytes")
    return {
        **dict(zip(names, [float(x) for x in (*row, *wal)], strict=True)),
        "backend_cpu": backend_cpu,
    }


def wal_lsn() -> str:
    import psycopg

    with psycopg.connect(database(DB), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def katar_wal(start: str, end: str) -> dict[str, float]:
    """The WAL written for Katar's database between two positions, from pg_walinspect (no
    preloading needed, unlike pg_stat_statements): the records that touch its relations and
    the commit records of their transactions; the rest of a shared server's WAL left out."""
    import psycopg

    with psycopg.connect(database(DB), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        row = conn.execute(
            "WITH r AS (SELECT * FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)),"
            " ours AS (SELECT * FROM r WHERE block_ref LIKE %s),"
            " commits AS (SELECT * FROM r WHERE resource_manager = 'Transaction'"
            "  AND xid IN (SELECT xid FROM ours))"
            " SELECT (SELECT coalesce(sum(record_length), 0) FROM ours),"
            " (SELECT coalesce(sum(fpi_length), 0) FROM ours), (SELECT count(*) FROM ours),"
            " (SELECT coalesce(sum(record_length), 0) FROM commits),"
            " (SELECT count(*) FROM commits)",
            (start, end, f"%rel %/{_database_oid(conn)}/%"),
        ).fetchone()
    assert row is not None
    names = ("wal_bytes", "wal_fpi_bytes", "wal_records", "commit_bytes", "commit_records")
    return dict(zip(names, [float(x) for x in row], strict=True))


def _database_oid(conn: Any) -> int:
    row = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
    return int(row[0])


def drain(srv: Server, tasks: int, batch: int) -> int:
    """Drain the queue with wrk; the requests it made."""
    run = wrk(
        f"{srv.url}/v1/queue/{QUEUE}",
        HERE / "drain.lua",
        600,
        CONNECTIONS,
        {"KATAR_MAX": str(batch)},
    )
    left = {"status": "queued,in progress", "limit": "1"}
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        while client.get(f"/v1/queue/{QUEUE}/tasks", params=left).json()["tasks"]:
            time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    output = run.communicate(timeout=30)[0]
    found = re.search(r"(\d+) requests in", output)
    return int(found.group(1)) if found else 0


def enqueue_single(srv: Server, tasks: int) -> int:
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        client.put(f"/v1/queue/{QUEUE}", json={}).raise_for_status()
        for n in range(tasks):
            client.post(f"/v1/queue/{QUEUE}/tasks", json={"data": {"n": n}}).raise_for_status()
    return tasks


def enqueue_bulk(srv: Server, tasks: int) -> int:
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        fill(client, tasks)
    return tasks // 1000


#: (name, tasks a phase as a multiple of --tasks, what to do before, the phase itself)
Phase = tuple[str, int, Callable[[Server, int], object], Callable[[Server, int], int]]
PHASES: list[Phase] = [
    ("enqueue, 1 a request", 1, lambda s, n: None, enqueue_single),
    ("enqueue, 1,000 a request", 4, lambda s, n: None, enqueue_bulk),
    ("seed drain, 1 a poll", 1, lambda s, n: enqueue_bulk(s, n), lambda s, n: drain(s, n, 1)),
    (
        "batched drain, up to 100 a poll",
        4,
        lambda s, n: enqueue_bulk(s, n),
        lambda s, n: drain(s, n, 100),
    ),
]


def counted(tasks: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, scale, before, phase in PHASES:
        n = tasks * scale
        with (
            tempfile.TemporaryDirectory(prefix="katar-trace-") as trace_dir,
            server(Path(trace_dir)) as srv,
        ):
            before(srv, n)
            since = _sizes(Path(trace_dir))
            requests = phase(srv, n)
            figures = count(Path(trace_dir), since, names)
        figures.update(tasks=n, requests=requests)
        results[name] = figures
        brief = {k: v for k, v in figures.items() if k != "statement_mix"}
        print(f"counted: {name}: {json.dumps(brief)}", file=sys.stderr)
    return results


def timed(tasks: int, out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, scale, before, phase in PHASES:
        n = tasks * scale
        with server(None) as srv:
            before(srv, n)
            flame = out / f"pyspy-{re.sub(r'[^a-z0-9]+', '-', name)}.txt"
            spy = subprocess.Popen(
                [
                    PY_SPY,
                    "record",
                    "--pid",
                    str(srv.pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(flame),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            counters, lsn = pg_counters(), wal_lsn()
            cpu, started = cpu_seconds(srv.pid), time.perf_counter()
            requests = phase(srv, n)
            elapsed = time.perf_counter() - started
            after, cpu_after, lsn_after = pg_counters(), cpu_seconds(srv.pid), wal_lsn()
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        delta = {key: after[key] - counters[key] for key in counters}
        delta["cluster_wal_bytes"] = delta.pop("wal_bytes")
        delta["cluster_wal_records"] = delta.pop("wal_records")
        delta.update(katar_wal(lsn, lsn_after))
        results[name] = {
            "tasks": n,
            "requests": requests,
            "tasks_per_s": n / elapsed,
            "server_cpu_s": cpu_after - cpu,
            **delta,
            "top": top_frames(flame),
        }
        print(f"timed: {name}: {n / elapsed:,.0f} tasks/s", file=sys.stderr)
    return results


def top_frames(path: Path, limit: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive shares of the samples, by function, from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return {"self": [], "inclusive": []}
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        weight = int(samples)
        total += weight
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += weight
        for frame in set(frames):
            inclusive[frame] += weight

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * w / total, 1)) for f, w in counter.most_common(limit)]

    return {"self": share(own), "inclusive": share(inclusive)}


def _frame(frame: str) -> str:
    """``function (path/to/module.py:line)`` as ``module.function``."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    function, path = match.groups()
    parts = Path(path).with_suffix("").parts
    tail = parts[parts.index("katar") :] if "katar" in parts else parts[-2:]
    return f"{'.'.join(tail)}.{function}"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-traced":
        sys.exit(_traced_serve(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--skip-timed", action="store_true")
    parser.add_argument("--skip-counted", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    results = {} if args.skip_counted else {"counted": counted(args.tasks)}
    if not args.skip_timed:
        results["timed"] = timed(args.tasks, args.out)
    path = args.out / "pgprofile.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
