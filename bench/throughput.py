"""Throughput with wrk: the ceiling, worker drains, enqueues."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import (
    HERE,
    Server,
    free_port,
    katar,
    katars,
    lua,
    peak_rss_mb,
    postgres_schema,
    wait_for_port,
    wrk,
    wrk_rate,
)

QUEUE = "bench"
POST_EMPTY = (
    'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["Content-Type"] = "application/json"\n'
)


def ceiling(connections: int, seconds: float) -> float:
    """Requests per second of a bare ASGI app on the HTTP server settings Katar uses."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.ceiling", str(port)], cwd=HERE.parent)
    script = lua(POST_EMPTY)
    try:
        wait_for_port(port)
        return wrk_rate(
            wrk(f"http://127.0.0.1:{port}/v1/queue/bench", script, seconds, connections)
        )
    finally:
        server.terminate()
        server.wait(10)
        script.unlink()


def floor(connections: int, seconds: float) -> float:
    """Requests per second of ``katar serve`` answering what needs no store: a worker's
    ``GET /v1/queue/{queue}`` (its configuration). The floor of Katar's own HTTP protocol
    and routing, beside the ASGI ceiling."""
    script = lua('wrk.method = "GET"\n')
    try:
        with katar("sqlite") as server:
            httpx.put(f"{server.url}/v1/queue/{QUEUE}", json={}).raise_for_status()
            return wrk_rate(wrk(f"{server.url}/v1/queue/{QUEUE}", script, seconds, connections))
    finally:
        script.unlink()


NGINX = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{{"tasks":[{{"_id":"1","data":{{"n":1}},"attempt":1}}]}}';
        }}
    }}
}}
"""


def load_generator_ceiling(connections: int, seconds: float) -> float | None:
    """What wrk with the drain script can send: against one nginx process that answers
    every poll with a task from memory. None when nginx is not installed."""
    if shutil.which("nginx") is None:
        return None
    workdir = Path(tempfile.mkdtemp(prefix="katar-nginx-"))
    port = free_port()
    (workdir / "nginx.conf").write_text(NGINX.format(dir=workdir, port=port))
    server = subprocess.Popen(
        ["nginx", "-c", str(workdir / "nginx.conf")], stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        run = wrk(f"http://127.0.0.1:{port}/", HERE / "drain.lua", seconds, connections)
        return wrk_rate(run)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


#: What a bench task carries beside its data (a key, a unique key), from its number.
Extra = Callable[[int], dict[str, object]]


def fill(
    client: httpx.Client,
    tasks: int,
    options: dict[str, object] | None = None,
    extra: Extra | None = None,
) -> float:
    """Enqueue ``tasks`` tasks 1,000 per request, on a queue with ``options``, each with
    ``extra(n)``'s fields; tasks per second."""
    body_options = {"max_batch": 100, **(options or {})}
    client.put(f"/v1/queue/{QUEUE}", json=body_options).raise_for_status()
    started = time.perf_counter()
    for start in range(0, tasks, 1000):
        count = min(1000, tasks - start)
        body = {
            "tasks": [
                {"data": {"n": n}, **(extra(n) if extra else {})}
                for n in range(start, start + count)
            ]
        }
        client.post(f"/v1/queue/{QUEUE}/tasks", json=body).raise_for_status()
    return tasks / (time.perf_counter() - started)


def drain(store: str, tasks: int, batch: int, connections: int) -> dict[str, float]:
    """Enqueue ``tasks`` in bulk, then drain them with wrk workers that piggyback each ack
    on their next poll (drain.lua) asking for ``batch`` tasks; tasks per second."""
    with katar(store) as server:
        return drain_servers([server], tasks, batch, connections)


def drain_minimal(tasks: int, batch: int, connections: int) -> dict[str, float]:
    """The same against bench/minimal.py: the raw ASGI and SQLite drain that the targets
    were set against (no validation, no leases, no fencing), served as the ceiling is."""
    workdir = Path(tempfile.mkdtemp(prefix="katar-minimal-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.minimal", str(port), str(workdir / "minimal.db")],
        cwd=HERE.parent,
    )
    try:
        wait_for_port(port)
        return drain_servers([Server(port, server.pid)], tasks, batch, connections)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def drain_postgres(servers: int, tasks: int, batch: int, connections: int) -> dict[str, float]:
    """The same on PostgreSQL, with ``servers`` Katar processes sharing the database and
    the connections shared among them (one wrk per server)."""
    with postgres_schema() as url, katars(url, servers) as running:
        return drain_servers(running, tasks, batch, connections)


def drain_servers(
    servers: list[Server],
    tasks: int,
    batch: int,
    connections: int,
    options: dict[str, object] | None = None,
    extra: Extra | None = None,
    cpu: Callable[[], float] | None = None,
) -> dict[str, float]:
    """Fill the queue through the first server, then drain it with one wrk per server, the
    ``connections`` split among them, all started together; the clock stops when no task
    is queued or in progress. Fails unless the wrk runs were handed ``tasks`` tasks between
    them, so that a task lost or delivered twice gives no figure. ``cpu``, if given, is read
    at the drain's start and end: its difference is ``drain_cpu_s``."""
    with httpx.Client(base_url=servers[0].url, timeout=60) as client:
        filled = fill(client, tasks, options, extra)
        cpu_before = cpu() if cpu else 0.0
        started = time.perf_counter()
        runs = [
            wrk(
                f"{server.url}/v1/queue/{QUEUE}",
                HERE / "drain.lua",
                600,
                connections // len(servers),
                {"KATAR_MAX": str(batch)},
            )
            for server in servers
        ]
        left = {"status": "queued,in progress", "limit": "1"}
        try:
            while client.get(f"/v1/queue/{QUEUE}/tasks", params=left).json()["tasks"]:
                time.sleep(0.02)
                for run in runs:
                    if run.poll() is not None:
                        raise RuntimeError(f"wrk stopped early:\n{run.communicate()[0]}")
            elapsed = time.perf_counter() - started
            cpu_used = cpu() - cpu_before if cpu else 0.0
        finally:
            outputs = []
            for run in runs:
                run.send_signal(signal.SIGINT)  # wrk then prints its summary and the count
                outputs.append(run.communicate(timeout=30)[0])
        delivered = [
            int(line.split()[1])
            for output in outputs
            for line in output.splitlines()
            if line.startswith("delivered:")
        ]
        if len(delivered) != len(runs) or sum(delivered) != tasks:
            raise RuntimeError(f"{sum(delivered)} deliveries for {tasks} tasks:\n{outputs}")
        return {
            "tasks_per_s": tasks / elapsed,
            "enqueued_per_s": filled,
            "peak_rss_mb": max(peak_rss_mb(server.pid) for server in servers),
            "drain_cpu_s": cpu_used,
        }


def enqueue(store: str, per_request: int, connections: int, seconds: float) -> float:
    """Tasks per second enqueued by wrk, ``per_request`` tasks in each request."""
    body: dict[str, object]
    if per_request == 1:
        body = {"data": {"n": 1}}
    else:
        body = {"tasks": [{"data": {"n": n}} for n in range(per_request)]}
    script = lua(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{json.dumps(body)}]]\n"
    )
    try:
        with katar(store) as server:
            httpx.put(f"{server.url}/v1/queue/{QUEUE}", json={}).raise_for_status()
            url = f"{server.url}/v1/queue/{QUEUE}/tasks"
            return wrk_rate(wrk(url, script, seconds, connections)) * per_request
    finally:
        script.unlink()
