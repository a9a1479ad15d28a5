"""Workers for the acceptance tests that drain a queue over HTTP from threads, as many
servers' workers do, and record what each of them saw."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import httpx


class Drain:
    """Workers that drain a queue the way katar-worker-http workers do, with acks piggybacked
    on the next poll, and a record of what each of them saw."""

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue
        self.lock = threading.Lock()
        self.seq = itertools.count()
        self.deliveries: list[tuple[int, str, int]] = []  # (seq, id, attempt)
        self.confirmed: list[tuple[int, str, int]] = []  # acks answered by the server
        self.errors: list[str] = []
        self.stop = threading.Event()

    def __enter__(self) -> Drain:
        return self

    def __exit__(self, *exc: object) -> None:
        # Inside the pool's block, so that a failed check stops the workers before the
        # pool's exit waits for them (else it waits for ever).
        self.stop.set()

    def work(self, name: str, batch: int) -> None:
        acks: list[dict[str, Any]] = []
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                body = {"tasks": acks, "max": batch, "worker": name}
                try:
                    response = client.post(f"{self.url}/v1/queue/{self.queue}", json=body)
                except httpx.TransportError:
                    time.sleep(0.05)  # the server is down: keep the acks, try again
                    continue
                if response.status_code not in (200, 204):
                    with self.lock:
                        self.errors.append(f"{response.status_code} {response.text}")
                    time.sleep(0.05)
                    continue
                tasks = response.json()["tasks"] if response.status_code == 200 else []
                with self.lock:
                    seq = next(self.seq)
                    self.confirmed.extend((seq, a["_id"], a["attempt"]) for a in acks)
                    self.deliveries.extend((seq, t["_id"], t["attempt"]) for t in tasks)
                acks = [{"_id": t["_id"], "status": "done", "attempt": t["attempt"]} for t in tasks]
                if not tasks:
                    time.sleep(0.02)
