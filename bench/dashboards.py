"""What open dashboards cost the server: its CPU while workers drain a steady load, with no
dashboard, then with N dashboards on the overview page, each making the requests the page
makes every 2 seconds (GET /v1/queues and GET /v1/throughput), with a token.

    python -m bench.dashboards [--dashboards 10] [--seconds 30]

The server's CPU is read from /proc (user + system time of its process) over each window.
docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import httpx

from bench.common import katars

TICKS = os.sysconf("SC_CLK_TCK")
QUEUES = ("emails", "reports", "thumbnails", "orders")
REFRESH = 2.0  # seconds, as the dashboard's pages refresh


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _load(url: str, stop: threading.Event) -> None:
    """A steady background load: 50 tasks a second enqueued and drained."""
    with httpx.Client(base_url=url, timeout=30) as client:
        n = 0
        while not stop.is_set():
            queue = QUEUES[n % len(QUEUES)]
            client.post(f"/v1/queue/{queue}/tasks", json={"tasks": [{"data": n}] * 5})
            taken = client.post(f"/v1/queue/{queue}", json={"worker": "w1", "max": 5})
            if taken.status_code == 200:
                acks = [{"_id": t["_id"], "status": "done"} for t in taken.json()["tasks"]]
                client.post(f"/v1/queue/{queue}", json={"tasks": acks, "max": 0})
            n += 1
            stop.wait(0.1)


def _dashboard(url: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            client.get("/v1/queues").raise_for_status()
            client.get("/v1/throughput?seconds=60").raise_for_status()
            stop.wait(REFRESH)


def window(pid: int, seconds: float) -> float:
    """The server's CPU over ``seconds``, as a percentage of one core."""
    before, started = _cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return 100 * (_cpu_seconds(pid) - before) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboards", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with katars("sqlite:///katar.db", 1) as (server,):
        with httpx.Client(base_url=server.url) as client:
            for queue in QUEUES:
                client.put(f"/v1/queue/{queue}", json={"persistent": True}).raise_for_status()
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(server.url, stop))
        load.start()
        try:
            time.sleep(2)
            alone = window(server.pid, args.seconds)
            viewers = [
                threading.Thread(target=_dashboard, args=(server.url, stop))
                for _ in range(args.dashboards)
            ]
            for viewer in viewers:
                viewer.start()
            time.sleep(REFRESH)
            watched = window(server.pid, args.seconds)
        finally:
            stop.set()
        print("| server CPU (% of one core) | figure |")
        print("|---|---|")
        print(f"| steady load, no dashboard | {alone:.1f} % |")
        print(f"| the same with {args.dashboards} dashboards | {watched:.1f} % |")
        print(f"| cost of a dashboard | {(watched - alone) / args.dashboards:.2f} % |")


if __name__ == "__main__":
    main()
