"""Poll latency against queue depth, and the server's memory with a deep queue.

Sequential polls on one keep-alive connection, each acking the task the previous one
delivered (the seed protocol), with the queue holding ``depth`` tasks.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time

from bench.common import katar, peak_rss_mb


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: object) -> bytes:
    conn.request(method, path, json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300 and response.status != 204:
        raise RuntimeError(f"{method} {path}: {response.status} {data!r}")
    return data


def measure(depth: int, polls: int = 2000) -> dict[str, float]:
    """Median and p99 poll latency (ms) with ``depth`` tasks queued; peak memory (MB)."""
    with katar("sqlite") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        _request(conn, "PUT", "/v1/queue/deep", {})
        for start in range(0, depth + polls, 5000):
            count = min(5000, depth + polls - start)
            tasks = [{"data": {"n": start + i}} for i in range(count)]
            _request(conn, "POST", "/v1/queue/deep/tasks", {"tasks": tasks})
        latencies = []
        acks: list[dict[str, str]] = []
        for _ in range(polls):
            started = time.perf_counter()
            body = _request(conn, "POST", "/v1/queue/deep", {"tasks": acks})
            latencies.append(time.perf_counter() - started)
            acks = [{"_id": json.loads(body)["tasks"][0]["_id"], "status": "done"}]
        conn.close()
        latencies.sort()
        return {
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "peak_rss_mb": peak_rss_mb(server.pid),
        }
