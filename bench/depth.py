"""Poll latency against queue depth, and the server's memory with deep queues.

    .venv/bin/python bench/depth.py [--depths 1000,100000,1000000] [--polls 2000]

For each depth it starts a real ``katar serve`` on SQLite, enqueues that many tasks in bulk,
then makes ``--polls`` sequential polls on one keep-alive connection, each acking the task
the previous one delivered (the seed protocol), and reports the median and p99 latency and
the server's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.drain import free_port, peak_rss_mb, wait_for_port


def request(conn: http.client.HTTPConnection, method: str, path: str, body: object) -> bytes:
    conn.request(method, path, json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300 and response.status != 204:
        raise RuntimeError(f"{method} {path}: {response.status} {data!r}")
    return data


def measure(depth: int, polls: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="katar-depth-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "katar", "serve", "--port", str(port)],
        cwd=workdir,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        request(conn, "PUT", "/v1/queue/deep", {})
        for start in range(0, depth + polls, 5000):
            count = min(5000, depth + polls - start)
            tasks = [{"data": {"n": start + i}} for i in range(count)]
            request(conn, "POST", "/v1/queue/deep/tasks", {"tasks": tasks})
        latencies = []
        acks: list[dict[str, str]] = []
        for _ in range(polls):
            started = time.perf_counter()
            body = request(conn, "POST", "/v1/queue/deep", {"tasks": acks})
            latencies.append(time.perf_counter() - started)
            task_id = json.loads(body)["tasks"][0]["_id"]
            acks = [{"_id": task_id, "status": "done"}]
        latencies.sort()
        return {
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "peak_rss_mb": peak_rss_mb(server.pid),
        }
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depths", default="1000,100000,1000000")
    parser.add_argument("--polls", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'queued':>10}{'poll p50 ms':>13}{'poll p99 ms':>13}{'peak MB':>9}")
    for depth in (int(d) for d in args.depths.split(",")):
        row = measure(depth, args.polls)
        print(f"{depth:>10,}{row['p50_ms']:>13.3f}{row['p99_ms']:>13.3f}{row['peak_rss_mb']:>9.0f}")


if __name__ == "__main__":
    main()
