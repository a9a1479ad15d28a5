"""A worker process for the SIGSTOP test: it takes one task and prints it, waits for a line
on its standard input (the test sends it while the process is stopped), then acks the task
done the two ways a worker may (as the original protocol does, with no attempt; and naming
its delivery) and prints each answer's status.

    python -m tests.faults.stopped_worker URL QUEUE
"""

from __future__ import annotations

import json
import sys

import httpx


def main(url: str, queue: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post(f"/v1/queue/{queue}", json={"worker": "frozen", "wait": 10})
        answer.raise_for_status()
        task = answer.json()["tasks"][0]
        print(json.dumps(task), flush=True)
        sys.stdin.readline()
        acks = [
            {"_id": task["_id"], "status": "done"},
            {"_id": task["_id"], "status": "done", "attempt": task["attempt"], "result": "late"},
        ]
        for ack in acks:
            late = client.post(f"/v1/queue/{queue}", json={"tasks": [ack], "worker": "frozen"})
            print(json.dumps({"status": late.status_code, "body": late.text}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
