"""Bulk actions on many tasks: enqueue N tasks (1,000 a request), cancel them all with one
bulk request, then retry them all with another, against a real ``katar serve``; also how
long a poll waits while a bulk action runs (the steps let polls in between).

    python -m bench.bulk [--store sqlite|postgres] [--tasks N]

Prints the seconds each bulk request took and its tasks per second. docs/benchmarks.md keeps
the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Iterator

import httpx

from bench.common import katars, postgres_schema

BATCH = 1000


@contextlib.contextmanager
def _store(store: str) -> Iterator[str]:
    if store == "postgres":
        with postgres_schema() as url:
            yield url
    else:
        yield "sqlite:///katar.db"


def _fill(client: httpx.Client, tasks: int) -> float:
    started = time.perf_counter()
    body = {"tasks": [{"data": {"n": n}} for n in range(BATCH)]}
    for _ in range(tasks // BATCH):
        response = client.post("/v1/queue/bulk/tasks", json=body)
        response.raise_for_status()
    return time.perf_counter() - started


def _bulk(client: httpx.Client, action: str, status: str, tasks: int) -> float:
    started = time.perf_counter()
    body = {"action": action, "filter": {"status": [status]}}
    response = client.post("/v1/queue/bulk/tasks/bulk", json=body, timeout=3600)
    response.raise_for_status()
    answer = response.json()
    assert answer == {"matched": tasks, "changed": tasks}, answer
    return time.perf_counter() - started


def _poll_waits(url: str, stop: threading.Event, waits: list[float]) -> None:
    """Polls of another queue, one after another, while the bulk action runs."""
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.post("/v1/queue/other", json={"max": 1})
            waits.append(time.perf_counter() - started)


def run(store: str, tasks: int) -> dict[str, float]:
    with _store(store) as url, katars(url, 1) as (server,):
        with httpx.Client(base_url=server.url, timeout=120) as client:
            client.put("/v1/queue/bulk", json={"persistent": True}).raise_for_status()
            client.put("/v1/queue/other", json={}).raise_for_status()
            fill = _fill(client, tasks)
            stop = threading.Event()
            waits: list[float] = []
            poller = threading.Thread(target=_poll_waits, args=(server.url, stop, waits))
            poller.start()
            try:
                cancel = _bulk(client, "cancel", "queued", tasks)
                retry = _bulk(client, "retry", "cancelled", tasks)
            finally:
                stop.set()
                poller.join()
        waits.sort()
        return {
            "enqueue_s": fill,
            "cancel_s": cancel,
            "retry_s": retry,
            "poll_p50_ms": waits[len(waits) // 2] * 1000,
            "poll_p99_ms": waits[int(len(waits) * 0.99)] * 1000,
            "poll_max_ms": waits[-1] * 1000,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    figures = run(args.store, args.tasks)
    n = args.tasks
    print(f"| {args.store} | {n:,} tasks | figure |")
    print("|---|---|---|")
    fill = figures["enqueue_s"]
    print(f"| enqueue (1,000 a request) | {fill:.1f} s | {n / fill:,.0f} tasks/s |")
    for action in ("cancel", "retry"):
        seconds = figures[f"{action}_s"]
        print(f"| bulk {action}, one request | {seconds:.1f} s | {n / seconds:,.0f} tasks/s |")
    print(
        f"| a poll of another queue meanwhile | p50 {figures['poll_p50_ms']:.1f} ms |"
        f" p99 {figures['poll_p99_ms']:.1f} ms, max {figures['poll_max_ms']:.1f} ms |"
    )


if __name__ == "__main__":
    main()
