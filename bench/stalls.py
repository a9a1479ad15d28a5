"""Stalls: how one client's heavy request, or a heavily loaded queue, slows everyone else.

A ``katar serve`` (SQLite, or PostgreSQL with ``--postgres``) is filled, then a prober polls
an unrelated queue (``probe``: one task a poll, the previous one acked "done") without a
pause, first alone, then while the attack runs. The figure is the prober's latency: its
median and its worst, alone and under the attack.

- ``after``: with ``--parents`` tasks on queue ``A``, one enqueue of ``--children`` tasks
  each naming ``--fan-in`` of them in ``after`` (all of them by default). Also printed: the
  enqueue's status and how long it took.
- ``keys``: queue ``K`` with ``key_concurrency`` 1 holds ``--keyed`` tasks on distinct
  keys, ``--leased`` of them in progress. The attack is a worker polling ``K`` without a
  pause (one task a poll, acked "done" at the next). Also printed: those polls' latency and
  ``GET /v1/queues``'s.

    python -m bench.stalls after [--parents 10000 --children 60 --fan-in 10000]
    python -m bench.stalls keys [--keyed 1000000 --leased 50000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from bench.common import katars, postgres_schema

BATCH = 10_000  # tasks per filling enqueue (the default max_tasks_per_enqueue)


@contextmanager
def server(postgres: str | None) -> Iterator[str]:
    if postgres is None:
        with katars("sqlite:///katar.db", 1) as servers:
            yield servers[0].url
        return
    import bench.common

    bench.common.POSTGRES_URL = postgres
    with postgres_schema() as url, katars(url, 1) as servers:
        yield servers[0].url


def fill(client: httpx.Client, queue: str, count: int, keyed: bool = False) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        tasks: list[dict[str, Any]] = [{"data": start + i} for i in range(size)]
        if keyed:
            for i, task in enumerate(tasks):
                task["key"] = f"k{start + i}"
        answer = client.post(f"/v1/queue/{queue}/tasks", json={"tasks": tasks})
        answer.raise_for_status()
        ids += [task["_id"] for task in answer.json()["tasks"]]
    return ids


class Prober(threading.Thread):
    """Polls a queue without a pause, one task at a time, acking the last; notes each
    poll's latency (seconds) in ``times`` while ``recording``."""

    def __init__(self, url: str, queue: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.stop = url, queue, stop
        self.times: list[float] = []
        self.recording = False

    def run(self) -> None:
        acks: list[dict[str, str]] = []
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                body: dict[str, Any] = {"max": 1}
                if acks:
                    body["tasks"] = acks
                start = time.perf_counter()
                answer = client.post(f"/v1/queue/{self.queue}", json=body)
                took = time.perf_counter() - start
                answer.raise_for_status()
                got = answer.json()["tasks"] if answer.status_code == 200 else []
                acks = [{"_id": task["_id"], "status": "done"} for task in got]
                if self.recording:
                    self.times.append(took)

    def window(
        self, seconds: float | None = None, until: Callable[[], bool] | None = None
    ) -> list[float]:
        """The latencies recorded for ``seconds``, or until ``until()`` is true."""
        self.times = []
        self.recording = True
        deadline = time.monotonic() + (seconds or 0)
        while (until is not None and not until()) or (
            until is None and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        self.recording = False
        return list(self.times)


def summary(times: list[float]) -> dict[str, Any]:
    if not times:
        return {"polls": 0}
    ordered = sorted(times)
    return {
        "polls": len(times),
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1 if len(ordered) > 1 else 0] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def after_attack(url: str, args: argparse.Namespace) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=600) as client:
        for queue in ("A", "probe"):
            client.put(f"/v1/queue/{queue}", json={"persistent": True}).raise_for_status()
        parents = fill(client, "A", args.parents)
        fill(client, "probe", 200_000)
        named = parents[: args.fan_in]
        body = {"tasks": [{"data": i, "after": named} for i in range(args.children)]}
        encoded = json.dumps(body).encode()
        stop = threading.Event()
        prober = Prober(url, "probe", stop)
        prober.start()
        alone = prober.window(3)
        outcome: dict[str, Any] = {}

        def attack() -> None:
            start = time.perf_counter()
            answer = client.post(
                "/v1/queue/A/tasks", content=encoded, headers={"content-type": "application/json"}
            )
            outcome["status"] = answer.status_code
            outcome["seconds"] = round(time.perf_counter() - start, 3)
            if answer.status_code >= 400:
                outcome["error"] = answer.json().get("error")

        attacker = threading.Thread(target=attack)
        attacker.start()
        during = prober.window(until=lambda: not attacker.is_alive())
        attacker.join()
        stop.set()
        prober.join()
    return {
        "attack": "after",
        "body_mb": round(len(encoded) / 1e6, 2),
        "edges": args.children * len(named),
        "enqueue": outcome,
        "probe_alone": summary(alone),
        "probe_during": summary(during),
    }


def keys_attack(url: str, args: argparse.Namespace) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=600) as client:
        client.put(
            "/v1/queue/K",
            json={
                "persistent": False,
                "key_concurrency": 1,
                "max_batch": 10_000,
                "timeout": 3_600_000,
            },
        ).raise_for_status()
        client.put("/v1/queue/probe", json={"persistent": False}).raise_for_status()
        started = time.perf_counter()
        fill(client, "K", args.keyed, keyed=True)
        fill(client, "probe", 200_000)
        filled = time.perf_counter() - started
        leased = 0
        while leased < args.leased:
            answer = client.post("/v1/queue/K", json={"max": min(10_000, args.leased - leased)})
            answer.raise_for_status()
            leased += len(answer.json()["tasks"])
        stop = threading.Event()
        prober = Prober(url, "probe", stop)
        prober.start()
        alone = prober.window(3)
        attacker = Prober(url, "K", stop)
        attacker.start()
        attacker.recording = True
        during = prober.window(5)
        listing: list[float] = []
        for _ in range(5):
            start = time.perf_counter()
            client.get("/v1/queues").raise_for_status()
            listing.append(time.perf_counter() - start)
        stop.set()
        prober.join()
        attacker.join()
    return {
        "attack": "keys",
        "keyed": args.keyed,
        "leased": args.leased,
        "fill_seconds": round(filled, 1),
        "poll_of_K": summary(attacker.times),
        "probe_alone": summary(alone),
        "probe_during": summary(during),
        "get_queues": summary(listing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attack", choices=("after", "keys"))
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server (else SQLite)")
    parser.add_argument("--parents", type=int, default=10_000)
    parser.add_argument("--children", type=int, default=60)
    parser.add_argument("--fan-in", type=int, default=None, help="default: every parent")
    parser.add_argument("--keyed", type=int, default=1_000_000)
    parser.add_argument("--leased", type=int, default=50_000)
    args = parser.parse_args()
    if args.fan_in is None:
        args.fan_in = args.parents
    with server(args.postgres) as url:
        run = after_attack if args.attack == "after" else keys_attack
        result = run(url, args)
    result["store"] = "postgresql" if args.postgres else "sqlite"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
