"""The SQS API's cost: boto3's send / receive / delete loops against ``katar serve``, beside
the native protocol's equivalent loops against the same server in the same run, and the
same boto3 loops against moto's SQS server (a peer, when moto is installed).

Each loop is sequential, one client on one keep-alive connection: send ``batch`` messages
(SendMessage, or SendMessageBatch of 10), receive them (ReceiveMessage with
MaxNumberOfMessages = batch), delete them (DeleteMessage, or DeleteMessageBatch). The native
loop does the same three requests: an enqueue (``POST /v1/queue/<q>/tasks``), a poll
(``max`` = batch), and a poll that carries the acks "done" (``max`` 0). Figures are messages
a second through the whole loop (median of ``--repeats`` runs), and the SQS loops' ratio to
the native one.

    python -m bench.sqs                       # SQLite, 2,000 messages a loop
    python -m bench.sqs --store memory --messages 5000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx

from bench.common import free_port, katar, wait_for_port

Loop = Callable[[int], None]


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


def measure(loop: Loop, messages: int, repeats: int) -> float:
    """Messages a second through ``loop`` (its median over ``repeats`` runs, after one
    short warm-up run)."""
    loop(min(messages, 100))
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        loop(messages)
        rates.append(messages / (time.perf_counter() - began))
    return statistics.median(rates)


@contextmanager
def moto_server() -> Iterator[str | None]:
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
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["memory", "sqlite"], default="sqlite")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, Any] = {"store": args.store, "messages": args.messages}
    with katar(args.store) as server:
        for batch in (1, 10):
            native = measure(native_loop(server.url, batch), args.messages, args.repeats)
            sqs = measure(sqs_loop(server.url, batch), args.messages, args.repeats)
            figures[f"native, {batch} a request"] = round(native)
            figures[f"SQS (boto3), {batch} a request"] = round(sqs)
            figures[f"SQS / native, {batch} a request"] = round(sqs / native, 2)
    with moto_server() as moto:
        if moto is not None:
            for batch in (1, 10):
                rate = measure(sqs_loop(moto, batch), args.messages, args.repeats)
                figures[f"moto (boto3), {batch} a request"] = round(rate)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
