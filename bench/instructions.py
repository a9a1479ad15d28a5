"""Instructions ``katar serve`` executes to drain a queue, counted by callgrind: a figure that
other load on the machine does not move, for A/B comparisons of two checkouts.

The server runs under ``valgrind --tool=callgrind`` with ``--src`` first on its PYTHONPATH
(this checkout's src by default; another checkout's to compare). The queue is filled in bulk
first; counting starts once it is full (``callgrind_control -z``) and ends once it is drained
(``callgrind_control -d``). ``--connections`` workers poll in turn for ``--batch`` tasks
each, with the previous answer's acks on each poll, as bench/drain.lua does. Prints one JSON
line: the instructions in all, per task and per poll.

    python -m bench.instructions --store sqlite --batch 100
    python -m bench.instructions --src ../other/src --store sqlite --batch 100
    python -m bench.instructions --store memory --keys 1000 \
        --options '{"key_rate": {"limit": 1000000, "period": 1000}}'

``--options`` (JSON) adds queue options; ``--keys N`` gives the tasks N keys, in turn.

    python -m bench.instructions --store sqlite --batch 100 --traced

``--traced``: the server exports spans (``--otlp-endpoint``) to a collector that this process
runs on loopback (it answers every export 200 and keeps nothing), and every task is enqueued
with a ``traceparent``, so that every poll and ack makes its spans: what tracing costs, the
export thread included (callgrind counts every thread).

    python -m bench.instructions --store sqlite --batch 100 --context

``--context``: every task enqueued with a ``traceparent``, as ``--traced``, on a server
without an endpoint: the same run as ``--traced`` without the spans.

A traced server exports its spans as soon as 512 wait, or every 5 s. Under callgrind the
server runs some 50 times slower, so the 5 s export would come 50 times as often for the
same work as in a real drain (where 512 spans wait long before 5 s): each export's own cost
(a request) would then weigh on each task 50 times as much, and more the busier the machine.
So a ``--traced`` run sets OTEL_BSP_SCHEDULE_DELAY to ``--schedule-delay`` (250 s, the 5 s
stretched as callgrind stretches the rest); ``--schedule-delay 5000`` counts with the 5 s.

    python -m bench.instructions --store sqlite --batch 1 --traced --profile traced.out
    callgrind_annotate traced.out | head -60

``--profile FILE``: keep callgrind's output of the drain, per function, in FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.common import HERE, free_port

QUEUE = "bench"


def _wait_for_server(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=5).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _worker(url: str, batch: int, tasks: int, drained: list[int], lock: threading.Lock) -> None:
    acks: list[dict[str, str]] = []
    with httpx.Client(base_url=url, timeout=600) as client:
        while True:
            body: dict[str, Any] = {"max": batch}
            if acks:
                body["tasks"] = acks
            response = client.post(f"/v1/queue/{QUEUE}", json=body)
            response.raise_for_status()
            got = response.json()["tasks"] if response.status_code == 200 else []
            with lock:
                drained[0] += len(got)
                drained[1] += 1
                done = drained[0] >= tasks
            acks = [{"_id": task["_id"], "status": "done"} for task in got]
            if not acks and done:
                return


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that takes every export and keeps nothing, on a connection
    kept open as a collector's is (HTTP/1.0 would count a connection made per export)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


#: The producer's context of a traced run: sampled, so that every span is exported.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def count(
    src: Path,
    store: str,
    tasks: int,
    batch: int,
    connections: int,
    options: dict[str, Any] | None = None,
    keys: int = 0,
    traced: bool = False,
    context: bool = False,
    profile: Path | None = None,
    schedule_delay: int = 250_000,
) -> dict[str, Any]:
    """Instructions the server spends on the drain."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="katar-instructions-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = workdir / "callgrind.out"
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"}
    db = "memory://" if store == "memory" else "sqlite:///katar.db"
    extra: list[str] = []
    headers: dict[str, str] = {}
    sink = None
    if traced:
        sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        extra = ["--otlp-endpoint", f"http://127.0.0.1:{sink.server_address[1]}"]
        env["OTEL_BSP_SCHEDULE_DELAY"] = str(schedule_delay)
        headers = {"traceparent": TRACEPARENT}
    if context:
        headers = {"traceparent": TRACEPARENT}
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "katar",
            "serve",
            "--port",
            str(port),
            "--db",
            db,
            *extra,
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "server.log").open("wb"),
    )
    try:
        try:
            _wait_for_server(url, 300)
        except httpx.HTTPError:
            log = (workdir / "server.log").read_text(errors="replace")
            raise SystemExit(f"the server did not start:\n{log[-2000:]}") from None
        with httpx.Client(base_url=url, timeout=600) as client:
            queue = {"max_batch": max(batch, 1), **(options or {})}
            client.put(f"/v1/queue/{QUEUE}", json=queue).raise_for_status()
            for start in range(0, tasks, 1000):
                n = min(1000, tasks - start)
                made: list[dict[str, Any]] = [{"data": {"n": start + i}} for i in range(n)]
                if keys:
                    for i, task in enumerate(made):
                        task["key"] = f"customer-{(start + i) % keys}"
                body = {"tasks": made}
                client.post(
                    f"/v1/queue/{QUEUE}/tasks", json=body, headers=headers
                ).raise_for_status()
            if traced:
                # One export before the count: the first one connects, and the first
                # connection of a process loads the resolver's libraries, a cost once per
                # process that is not the drain's. An export starts when 512 spans wait.
                client.put("/v1/queue/warm-up", json={}).raise_for_status()
                for _ in range(520):
                    client.post(
                        "/v1/queue/warm-up/tasks", json={"data": 0}, headers=headers
                    ).raise_for_status()
        time.sleep(2 if traced else 1)  # the fill's last group commit (and its spans' export)
        control = ["callgrind_control"]
        subprocess.run([*control, "-z", str(server.pid)], check=True, capture_output=True)
        drained = [0, 0]
        lock = threading.Lock()
        workers = [
            threading.Thread(target=_worker, args=(url, batch, tasks, drained, lock))
            for _ in range(connections)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        subprocess.run([*control, "-d", str(server.pid)], check=True, capture_output=True)
        dump = Path(f"{out}.1")
        total = next(
            int(line.split()[1])
            for line in dump.read_text().splitlines()
            if line.startswith("summary:")
        )
        if profile is not None:
            shutil.copyfile(dump, profile)
        return {
            "src": str(src),
            "store": store,
            "tasks": tasks,
            "batch": batch,
            "options": options or {},
            "keys": keys,
            "traced": traced,
            **({"schedule_delay_ms": schedule_delay} if traced else {}),
            "context": traced or context,
            "polls": drained[1],
            "instructions": total,
            "per_task": round(total / tasks),
            "per_poll": round(total / drained[1]),
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        if sink is not None:
            sink.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=HERE.parent / "src")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100, help="max of each poll")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--options", type=json.loads, default={}, help="queue options (JSON)")
    parser.add_argument("--keys", type=int, default=0, help="give the tasks this many keys")
    parser.add_argument(
        "--traced", action="store_true", help="tasks with a traceparent, spans exported"
    )
    parser.add_argument(
        "--context", action="store_true", help="tasks with a traceparent, no endpoint"
    )
    parser.add_argument(
        "--profile", type=Path, help="keep callgrind's output of the drain in this file"
    )
    parser.add_argument(
        "--schedule-delay",
        type=int,
        default=250_000,
        help="ms between a traced server's exports (OTEL_BSP_SCHEDULE_DELAY), see above",
    )
    args = parser.parse_args()
    figures = count(
        args.src,
        args.store,
        args.tasks,
        args.batch,
        args.connections,
        args.options,
        args.keys,
        args.traced,
        args.context,
        args.profile,
        args.schedule_delay,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
