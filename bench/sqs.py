"""The SQS API's cost, in one run: the SDKs' send / receive / delete loops against ``katar
serve`` and against moto's SQS server, and a wrk drain of a full queue in batches of 10.

**Loops.** Each is sequential, one client on one keep-alive connection: send ``batch``
messages (SendMessage, or SendMessageBatch of 10), receive them (ReceiveMessage with
MaxNumberOfMessages = batch), delete them (DeleteMessage, or DeleteMessageBatch). The
clients: boto3, and the JavaScript SDK v3 (bench/node/sqs.mjs; skipped until ``npm ci`` in
bench/node). Beside them, the native protocol's same three requests with httpx: an enqueue,
a poll (``max`` = batch), and a poll that carries the acks "done". The servers: Katar on
SQLite, in memory (as moto keeps its queues), on PostgreSQL (boto3 only; skipped when the
server does not answer), and moto's server (skipped when moto is not installed). Each
repeat measures every loop once, in turn, so that the machine's load weighs on Katar's and
moto's figures alike; a figure is the median of ``--repeats`` runs of ``--messages``
messages, and the ratios are of those medians.
Beside each loop's messages a second, the server's CPU time per message over that loop (its
process and any children, from the kernel's count: the clients' own CPU left out), so that
the servers compare with the same clients whatever bounds the loop; on PostgreSQL the
backends' CPU is given apart. Each ratio is Katar's over moto's: throughput (higher is
better for Katar) and moto's CPU per message over Katar's (likewise).

**Drain.** A queue on SQLite filled with ``--drain-messages`` messages, then drained by wrk
(bench/sqs_drain.lua, ``--connections``): each response to a ReceiveMessage of 10 is
followed by one DeleteMessageBatch of its receipt handles. The clock stops when no message
is left; the figure is messages received and deleted a second, and the server's CPU
seconds per 10,000. Beside it in the same server, the native protocol's drain
(bench/drain.lua: a poll of 10 that carries the previous poll's acks).

wrk sends unsigned requests: the server is open (no tokens, no credentials), as on loopback.

    python -m bench.sqs                                  # everything
    python -m bench.sqs --messages 1000 --repeats 5 --drain-messages 200000
    python -m bench.sqs --only drain
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx

from bench.common import (
    HERE,
    Server,
    free_port,
    katar,
    katars,
    postgres_available,
    postgres_cpu,
    postgres_schema,
    wait_for_port,
    wrk,
)
from bench.latency import cpu_seconds
from bench.throughput import drain_servers

#: Messages a second of one run of ``messages`` messages, and the messages it handled in
#: all (a Node run's warm-up too), for the server's CPU per message.
Run = Callable[[int], tuple[float, int]]
Loop = Callable[[int], None]
NODE = HERE / "node"
TARGET = "AmazonSQS."


def timed(loop: Loop) -> Run:
    """A Python loop as a run: warmed up once (100 messages), then timed."""
    loop(100)

    def run(messages: int) -> tuple[float, int]:
        began = time.perf_counter()
        loop(messages)
        return messages / (time.perf_counter() - began), messages

    return run


def process_cpu(pid: int) -> float:
    """The CPU seconds a server's process and its children (their threads too) have spent:
    the kernel's count (cpu_seconds), read before and after a loop."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that has just ended
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    total += process_cpu(int(child))
    return total


def sqs_loop(url: str, batch: int) -> Loop:
    """boto3's loop against an SQS endpoint: send, receive, delete ``batch`` at a time."""
    sqs = boto3.client(
        "sqs",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE000000",
        aws_secret_access_key="any",
    )
    queue = sqs.create_queue(QueueName=f"bench-{batch}")["QueueUrl"]

    def run(messages: int) -> None:
        for _ in range(messages // batch):
            if batch == 1:
                sqs.send_message(QueueUrl=queue, MessageBody='{"n": 1}')
            else:
                sqs.send_message_batch(
                    QueueUrl=queue,
                    Entries=[{"Id": str(i), "MessageBody": '{"n": 1}'} for i in range(batch)],
                )
            got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=batch)["Messages"]
            assert len(got) == batch, got
            if batch == 1:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=got[0]["ReceiptHandle"])
            else:
                sqs.delete_message_batch(
                    QueueUrl=queue,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(got)
                    ],
                )

    return run


def native_loop(url: str, batch: int) -> Loop:
    """The native protocol's equivalent: enqueue, poll, ack (three requests a round)."""
    http = httpx.Client(base_url=url, timeout=30)
    queue = f"native-{batch}"
    # The options CreateQueue gives a queue (SQS's 30 s visibility, no attempt limit).
    http.put(f"/v1/queue/{queue}", json={"timeout": 30_000, "max_attempts": 0}).raise_for_status()

    def run(messages: int) -> None:
        for _ in range(messages // batch):
            if batch == 1:
                http.post(f"/v1/queue/{queue}/tasks", json={"data": {"n": 1}}).raise_for_status()
            else:
                http.post(
                    f"/v1/queue/{queue}/tasks", json={"tasks": [{"data": {"n": 1}}] * batch}
                ).raise_for_status()
            got = http.post(f"/v1/queue/{queue}", json={"max": batch})
            got.raise_for_status()
            tasks = got.json()["tasks"]
            assert len(tasks) == batch, tasks
            # Fenced by attempt, as an SQS receipt handle names one delivery.
            acks = [{"_id": t["_id"], "status": "done", "attempt": t["attempt"]} for t in tasks]
            http.post(f"/v1/queue/{queue}", json={"max": 0, "tasks": acks}).raise_for_status()

    return run


def node_ready() -> bool:
    return shutil.which("node") is not None and (NODE / "node_modules/@aws-sdk/client-sqs").is_dir()


def node_run(url: str, batch: int) -> Run:
    """The JavaScript SDK's loop (bench/node/sqs.mjs), one Node process a run (it warms up
    with 100 messages, then times the run)."""

    def run(messages: int) -> tuple[float, int]:
        output = subprocess.run(
            [
                "node",
                str(NODE / "sqs.mjs"),
                f"--url={url}",
                f"--batch={batch}",
                f"--messages={messages}",
                "--repeats=1",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
        rate: float = json.loads(output.strip().splitlines()[-1])["rates"][0]
        return rate, messages + min(messages, 100)

    return run


@contextmanager
def moto_server() -> Iterator[Server | None]:
    """moto's server on a loopback port (None when moto is not installed)."""
    program = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(program).exists():
        yield None
        return
    port = free_port()
    process = subprocess.Popen(
        [program, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield Server(port, process.pid)
    finally:
        process.terminate()
        process.wait(10)


def loops(args: argparse.Namespace) -> dict[str, Any]:
    """Every loop against every server, each repeat running each loop once in turn."""
    figures: dict[str, Any] = {}
    with ExitStack() as stack:
        servers: dict[str, Server] = {"Katar SQLite": stack.enter_context(katar("sqlite"))}
        # In memory, as moto keeps its queues: the servers' CPU compared without a store's.
        servers["Katar memory"] = stack.enter_context(katar("memory"))
        backends: dict[str, Callable[[], float]] = {}
        if not args.no_postgres and postgres_available():
            url = stack.enter_context(postgres_schema())
            servers["Katar PostgreSQL"] = stack.enter_context(katars(url, 1))[0]
            backends["Katar PostgreSQL"] = lambda: postgres_cpu(url)
        moto = stack.enter_context(moto_server())
        if moto is not None:
            servers["moto"] = moto
        runs: dict[str, tuple[Run, Server]] = {}
        for batch in (1, 10):
            for name, server in servers.items():
                if name != "moto":
                    runs[f"native, {name}, {batch}"] = (
                        timed(native_loop(server.url, batch)),
                        server,
                    )
                runs[f"boto3, {name}, {batch}"] = (timed(sqs_loop(server.url, batch)), server)
                if node_ready() and name != "Katar PostgreSQL":
                    runs[f"JS SDK, {name}, {batch}"] = (node_run(server.url, batch), server)
        rates: dict[str, list[float]] = {key: [] for key in runs}
        cpus: dict[str, list[float]] = {key: [] for key in runs}
        backend_cpus: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(args.repeats):
            for key, (run, server) in runs.items():
                backend = backends.get(key.split(", ")[1])
                cpu_before = process_cpu(server.pid)
                backend_before = backend() if backend else 0.0
                rate, handled = run(args.messages)
                rates[key].append(rate)
                cpus[key].append((process_cpu(server.pid) - cpu_before) / handled * 1e6)
                if backend:
                    backend_cpus[key].append((backend() - backend_before) / handled * 1e6)
    medians = {key: statistics.median(values) for key, values in rates.items()}
    cpu_medians = {key: statistics.median(values) for key, values in cpus.items()}
    for key, value in medians.items():
        figures[key] = {
            "median": round(value),
            "runs": [round(v) for v in rates[key]],
            "server CPU us/msg": round(cpu_medians[key], 1),
        }
        if backend_cpus[key]:
            figures[key]["PostgreSQL backends CPU us/msg"] = round(
                statistics.median(backend_cpus[key]), 1
            )
    for key, value in medians.items():
        client, server_name, size = key.split(", ")
        peer = f"{client}, moto, {size}"
        if server_name != "moto" and client != "native" and medians.get(peer):
            figures[f"{client}, {server_name} / moto, {size}"] = {
                "throughput": round(value / medians[peer], 2),
                "server CPU per message (moto / Katar)": round(
                    cpu_medians[peer] / cpu_medians[key], 2
                ),
            }
    if not node_ready():
        figures["JS SDK"] = "skipped: run npm ci in bench/node"
    return figures


def sqs_call(client: httpx.Client, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """One unsigned AWS JSON 1.0 call."""
    answer = client.post(
        "/",
        json=params,
        headers={"X-Amz-Target": TARGET + action, "Content-Type": "application/x-amz-json-1.0"},
    )
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


def sqs_drain(server: Server, messages: int, connections: int) -> dict[str, float]:
    """Fill an SQS queue with ``messages`` messages, then drain it with wrk
    (bench/sqs_drain.lua): receive 10, delete them in one batch. Fails unless wrk received
    and deleted each message once."""
    queue = "sqs-drain"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        url = sqs_call(client, "CreateQueue", {"QueueName": queue})["QueueUrl"]
        # Filled natively, 1,000 a request: a task whose data is a JSON string is the
        # message SendMessage makes of that body (no attributes).
        for start in range(0, messages, 1000):
            count = min(1000, messages - start)
            client.post(
                f"/v1/queue/{queue}/tasks", json={"tasks": [{"data": '{"n": 1}'}] * count}
            ).raise_for_status()
        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        run = wrk(
            f"{server.url}/", HERE / "sqs_drain.lua", 600, connections, {"KATAR_SQS_QUEUE_URL": url}
        )
        left = {"status": "queued,in progress", "limit": "1"}
        try:
            while client.get(f"/v1/queue/{queue}/tasks", params=left).json()["tasks"]:
                time.sleep(0.02)
                if run.poll() is not None:
                    raise RuntimeError(f"wrk stopped early:\n{run.communicate()[0]}")
            elapsed = time.perf_counter() - started
            cpu_used = cpu_seconds(server.pid) - cpu_before
        finally:
            run.send_signal(signal.SIGINT)  # wrk then prints its summary and the counts
            output = run.communicate(timeout=30)[0]
    counts = {
        line.split(":")[0]: int(line.split(":")[1])
        for line in output.splitlines()
        if line.split(":")[0] in ("received", "deleted", "empty receives", "failed")
    }
    if counts.get("received") != messages or counts.get("deleted") != messages:
        raise RuntimeError(f"{counts} for {messages} messages:\n{output}")
    if counts.get("failed"):
        raise RuntimeError(f"failed requests:\n{output}")
    return {
        "messages_per_s": round(messages / elapsed),
        "server_cpu_s_per_10k": round(cpu_used / messages * 10_000, 3),
        "empty_receives": counts.get("empty receives", 0),
    }


def drains(args: argparse.Namespace) -> dict[str, Any]:
    """The SQS drain and the native one on one SQLite server, in turn, ``--repeats``
    times."""
    sqs: list[dict[str, float]] = []
    native: list[dict[str, float]] = []
    for _ in range(args.drain_repeats):
        with katar("sqlite") as server:
            sqs.append(sqs_drain(server, args.drain_messages, args.connections))
        with katar("sqlite") as server:
            native.append(
                drain_servers(
                    [server],
                    args.drain_messages,
                    10,
                    args.connections,
                    cpu=lambda: cpu_seconds(server.pid),
                )
            )
    sqs_rate = statistics.median(r["messages_per_s"] for r in sqs)
    native_rate = statistics.median(r["tasks_per_s"] for r in native)
    return {
        "drain messages": args.drain_messages,
        "wrk connections": args.connections,
        "SQS drain (receive 10, delete batch), msg/s": {
            "median": round(sqs_rate),
            "runs": [r["messages_per_s"] for r in sqs],
            "server CPU s per 10k": [r["server_cpu_s_per_10k"] for r in sqs],
        },
        "native drain (poll 10, acks on the next poll), tasks/s": {
            "median": round(native_rate),
            "runs": [round(r["tasks_per_s"]) for r in native],
            "server CPU s per 10k": [
                round(r["drain_cpu_s"] / args.drain_messages * 10_000, 3) for r in native
            ],
        },
        "SQS / native drain": round(sqs_rate / native_rate, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drain-messages", type=int, default=100_000)
    parser.add_argument("--drain-repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--only", choices=["loops", "drain"])
    args = parser.parse_args()
    figures: dict[str, Any] = {"messages": args.messages, "repeats": args.repeats}
    if args.only != "drain":
        figures.update(loops(args))
    if args.only != "loops":
        figures.update(drains(args))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
