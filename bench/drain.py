"""First-drain benchmark: N tasks enqueued in bulk, then drained by a crowd of workers.

    .venv/bin/python bench/drain.py [--tasks 50000] [--batched-tasks 500000] [--repeats 3]

Needs wrk (Debian package ``wrk``). For each store it starts a real ``katar serve``,
enqueues the tasks 1,000 per request, then runs wrk with ``drain.lua`` (workers that
piggyback each ack on their next poll, as katar-worker-http workers do) until the queue is
empty, and reads the server's peak resident memory (VmHWM). The ceiling is a bare ASGI app
on the same HTTP server settings, measured in the same run; figures are medians of the
repeats, with their spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
QUEUE = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url: str, script: Path, seconds: float, connections: int, env: dict[str, str]) -> Any:
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )


def ceiling(connections: int, seconds: float) -> float:
    """Requests per second of the bare ASGI app."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "ceiling.py"), str(port)])
    try:
        wait_for_port(port)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write('wrk.method = "POST"\nwrk.body = "{}"\n')
            script.write('wrk.headers["Content-Type"] = "application/json"\n')
        run = wrk(
            f"http://127.0.0.1:{port}/v1/queue/bench", Path(script.name), seconds, connections, {}
        )
        output, _ = run.communicate()
        os.unlink(script.name)
        for line in output.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split()[1])
        raise RuntimeError(f"wrk printed no rate:\n{output}")
    finally:
        server.terminate()
        server.wait(10)


def drain(store: str, tasks: int, batch: int, connections: int) -> dict[str, float]:
    """Enqueue ``tasks`` in bulk, drain them; rates and the server's peak memory."""
    workdir = Path(tempfile.mkdtemp(prefix="katar-bench-"))
    url = "memory://" if store == "memory" else "sqlite:///katar.db"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "katar", "serve", "--port", str(port), "--db", url],
        cwd=workdir,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as client:
            client.put(f"/v1/queue/{QUEUE}", json={"max_batch": 100}).raise_for_status()
            started = time.perf_counter()
            for start in range(0, tasks, 1000):
                count = min(1000, tasks - start)
                body = {"tasks": [{"data": {"n": start + i}} for i in range(count)]}
                client.post(f"/v1/queue/{QUEUE}/tasks", json=body).raise_for_status()
            enqueue_rate = tasks / (time.perf_counter() - started)
            started = time.perf_counter()
            run = wrk(
                f"{base}/v1/queue/{QUEUE}",
                HERE / "drain.lua",
                600,
                connections,
                {"KATAR_MAX": str(batch)},
            )
            left = {"status": "queued,in progress", "limit": "1"}
            while client.get(f"/v1/queue/{QUEUE}/tasks", params=left).json()["tasks"]:
                time.sleep(0.02)
                if run.poll() is not None:
                    raise RuntimeError(f"wrk stopped early:\n{run.communicate()[0]}")
            elapsed = time.perf_counter() - started
            run.terminate()
            run.communicate()
        return {
            "tasks_per_s": tasks / elapsed,
            "enqueue_bulk_per_s": enqueue_rate,
            "peak_rss_mb": peak_rss_mb(server.pid),
        }
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=50_000, help="tasks per one-at-a-time drain")
    parser.add_argument(
        "--batched-tasks", type=int, default=500_000, help="tasks per max-100 drain"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--stores", default="sqlite,memory")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/drain.py needs wrk: apt-get install wrk")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "connections": args.connections,
    }
    results["ceiling_req_per_s"] = summary(
        [ceiling(args.connections, 5) for _ in range(args.repeats)]
    )
    rows = []
    for store in args.stores.split(","):
        for batch, tasks in ((1, args.tasks), (100, args.batched_tasks)):
            runs = [drain(store, tasks, batch, args.connections) for _ in range(args.repeats)]
            key = f"{store}_max{batch}"
            results[key] = {name: summary([run[name] for run in runs]) for name in runs[0]}
            results[key]["tasks"] = tasks
            rows.append((key, results[key]))
    args.out.mkdir(exist_ok=True)
    out = args.out / f"drain-{results['date'][:10]}.json"
    out.write_text(json.dumps(results, indent=2))
    ceiling_rate = results["ceiling_req_per_s"]["median"]
    print(f"{results['machine']}, {results['date']}, wrk -t2 -c{args.connections}")
    low, high = results["ceiling_req_per_s"]["min"], results["ceiling_req_per_s"]["max"]
    print(f"ceiling (bare ASGI): {ceiling_rate:,.0f} req/s [{low:,.0f} .. {high:,.0f}]")
    headings = ("tasks", "tasks/s", "spread", "vs ceiling", "bulk enqueue/s", "peak MB")
    widths = (9, 12, 22, 12, 16, 9)
    print(f"{'drain':<16}" + "".join(f"{h:>{w}}" for h, w in zip(headings, widths, strict=True)))
    for key, row in rows:
        rate = row["tasks_per_s"]
        spread = f"[{rate['min']:,.0f} .. {rate['max']:,.0f}]"
        print(
            f"{key:<16}{row['tasks']:>9,}{rate['median']:>12,.0f}{spread:>22}"
            f"{rate['median'] / ceiling_rate:>11.0%} "
            f"{row['enqueue_bulk_per_s']['median']:>15,.0f}{row['peak_rss_mb']['max']:>9.0f}"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
