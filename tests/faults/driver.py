"""A producer and workers over HTTP that record what the server answered, and the check of
the two promises that every fault must keep: nothing answered 201 is lost, and nothing
acknowledged done is delivered again."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

#: The statuses a store fault may cause: the store is unavailable (503), or it cannot tell
#: whether a write committed (the outcome is unknown: 503, or 504 where the server tells that
#: case apart). Any other 5xx is a bug.
FAULT_STATUSES = frozenset({503, 504})


@dataclass
class Ledger:
    """What the clients saw, stamped with one logical clock. A stamp taken before a request
    is sent and one taken after its answer arrives order the server's work: a request sent
    after another's answer arrived was handled after it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Iterator[int] = field(default_factory=itertools.count)
    #: id -> the stamp of the 201 that created it.
    created: dict[str, int] = field(default_factory=dict)
    #: Tasks sent in enqueues that got no 201 (a fault status, or no answer): they may or
    #: may not exist.
    unconfirmed: int = 0
    #: (stamp when the poll was sent, id, attempt) for every task delivered.
    deliveries: list[tuple[int, str, int]] = field(default_factory=list)
    #: (stamp when the answer arrived, id, attempt) for every "done" ack answered 2xx.
    acked: list[tuple[int, str, int]] = field(default_factory=list)
    #: The stamps when polls were sent that got a fault status or no answer: such a poll may
    #: have claimed tasks that no worker saw (a 504, or an answer lost on the way).
    lost_polls: list[int] = field(default_factory=list)
    #: Answers that no fault explains (a 4xx, or a 5xx outside FAULT_STATUSES).
    errors: list[str] = field(default_factory=list)
    #: How many requests got a fault status or no answer.
    faults: int = 0
    #: The queue's lease in seconds, when the test knows it: an ack answered that long after
    #: the poll that got its delivery was sent may have come after the lease ran out, when the contract lets it
    #: change nothing (the task goes back to the queue and is delivered again).
    lease: float | None = None
    #: (id, attempt) -> when (time.monotonic) the poll that got the delivery was sent (its
    #: lease began no earlier: an answer delayed by the outage arrives late, with the lease
    #: already running); (id, attempt) -> when its ack's answer arrived.
    received: dict[tuple[str, int], float] = field(default_factory=dict)
    answered_at: dict[tuple[str, int], float] = field(default_factory=dict)

    def stamp(self) -> int:
        with self.lock:
            return next(self.clock)

    def unexpected(self, response: httpx.Response) -> None:
        with self.lock:
            self.errors.append(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {response.text[:300]}"
            )

    def check(self, records: dict[str, dict[str, Any]]) -> None:
        """Assert the promises, given every task record of the queue (by id) at the end,
        once every task was acknowledged done."""
        assert self.errors == []
        lost = sorted(set(self.created) - set(records))
        assert lost == [], f"{len(lost)} tasks answered 201 are gone: {lost[:10]}"
        not_done = {i: records[i]["status"] for i in self.created if records[i]["status"] != "done"}
        assert not_done == {}, f"tasks answered 201 not done: {list(not_done.items())[:10]}"
        # Tasks beyond those answered 201 may only come from enqueues that got no 201.
        assert len(records) - len(self.created) <= self.unconfirmed
        last_sent: dict[tuple[str, int], int] = {}
        for sent, task_id, attempt in self.deliveries:
            last_sent[(task_id, attempt)] = max(sent, last_sent.get((task_id, attempt), -1))
        highest: dict[str, int] = {}
        for _sent, task_id, attempt in self.deliveries:
            highest[task_id] = max(attempt, highest.get(task_id, 0))
        for answered, task_id, attempt in self.acked:
            if self._maybe_stale(last_sent, answered, task_id, attempt):
                continue  # a no-op by the contract: the outcome that stands is checked below
            # The next delivery was handed out after this ack was carried out: the server
            # handed out a task it had acknowledged done.
            again = [
                (later, sent)
                for (other, later), sent in last_sent.items()
                if other == task_id and later > attempt
            ]
            assert again == [], (
                f"task {task_id} acknowledged done (attempt {attempt}) was delivered again: {again}"
            )
        # The outcome that stands is the last delivery's: an ack of an earlier one, whose
        # lease had run out, changed nothing.
        wrong = {
            task_id: (record["attempts"], highest.get(task_id))
            for task_id, record in records.items()
            if task_id in self.created and record["attempts"] != highest.get(task_id)
        }
        assert wrong == {}, f"attempts of the final record vs the last delivery seen: {wrong}"

    def _maybe_stale(
        self, last_sent: dict[tuple[str, int], int], answered: int, task_id: str, attempt: int
    ) -> bool:
        """Whether the ack of ``attempt`` answered at ``answered`` may have come after the
        next delivery (its lease had run out): the next attempt went out on a poll sent
        before the ack was answered, seen, or unseen on a poll that got no answer."""
        sent = last_sent.get((task_id, attempt + 1))
        if sent is not None and sent < answered:
            return True
        if self.lease is not None:
            received = self.received.get((task_id, attempt))
            acked = self.answered_at.get((task_id, attempt))
            if received is not None and acked is not None and acked - received >= self.lease:
                return True  # the lease may have run out before the ack arrived
        if sent is not None:
            return False
        return any(lost < answered for lost in self.lost_polls)


class Clients:
    """A producer and workers on one queue, each in a thread, until :meth:`stop`."""

    def __init__(self, url: str, queue: str, ledger: Ledger, timeout: float = 20.0) -> None:
        self.url = url
        self.queue = queue
        self.ledger = ledger
        self.timeout = timeout
        self._stop = threading.Event()
        self._producing = threading.Event()
        self._threads: list[threading.Thread] = []

    def produce(self, total: int, batch: int = 20) -> None:
        """Enqueue ``total`` tasks, ``batch`` at a time, retrying what got no 201."""
        self._start(self._produce, total, batch)

    def work(self, name: str, batch: int, drop_every: int = 0) -> None:
        """A worker that acks what it gets on its next poll; with ``drop_every`` n, it
        forgets every n-th task it gets, as a worker that dies with it would."""
        self._start(self._work, name, batch, drop_every)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 10)
        assert not any(thread.is_alive() for thread in self._threads)

    @property
    def produced(self) -> bool:
        return self._producing.is_set()

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _post(self, client: httpx.Client, path: str, body: Any) -> httpx.Response | None:
        """The answer, or None when there was none or it was a fault status."""
        try:
            response = client.post(f"{self.url}{path}", json=body)
        except httpx.TransportError:
            response = None
        if response is None or response.status_code in FAULT_STATUSES:
            with self.ledger.lock:
                self.ledger.faults += 1
            time.sleep(0.05)
            return None
        return response

    def _produce(self, total: int, batch: int) -> None:
        ledger = self.ledger
        with httpx.Client(timeout=self.timeout) as client:
            sent = 0
            while sent < total and not self._stop.is_set():
                count = min(batch, total - sent)
                body = {"tasks": [{"data": {"n": sent + i}} for i in range(count)]}
                response = self._post(client, f"/v1/queue/{self.queue}/tasks", body)
                if response is None:
                    with ledger.lock:
                        ledger.unconfirmed += count
                    continue  # a producer retries: the tasks go again
                if response.status_code != 201:
                    ledger.unexpected(response)
                    return
                answered = ledger.stamp()
                with ledger.lock:
                    for record in response.json()["tasks"]:
                        ledger.created[record["_id"]] = answered
                sent += count
        self._producing.set()

    def _work(self, name: str, batch: int, drop_every: int) -> None:
        ledger = self.ledger
        acks: list[dict[str, Any]] = []
        got = itertools.count(1)
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                sent = ledger.stamp()
                sent_at = time.monotonic()
                body = {"tasks": acks, "max": batch, "worker": name}
                response = self._post(client, f"/v1/queue/{self.queue}", body)
                if response is None:
                    with ledger.lock:
                        ledger.lost_polls.append(sent)
                    continue  # keep the acks, and send them again
                if response.status_code == 409 and self._drop_refused(acks, response):
                    continue  # the rest of the acks go again
                if response.status_code not in (200, 204):
                    ledger.unexpected(response)
                    time.sleep(0.05)
                    continue
                answered = ledger.stamp()
                now = time.monotonic()
                tasks = response.json()["tasks"] if response.status_code == 200 else []
                with ledger.lock:
                    ledger.acked.extend((answered, a["_id"], a["attempt"]) for a in acks)
                    ledger.deliveries.extend((sent, t["_id"], t["attempt"]) for t in tasks)
                    for a in acks:
                        ledger.answered_at[(a["_id"], a["attempt"])] = now
                    for t in tasks:
                        ledger.received[(t["_id"], t["attempt"])] = sent_at
                acks = [
                    {"_id": t["_id"], "status": "done", "attempt": t["attempt"]}
                    for t in tasks
                    if not drop_every or next(got) % drop_every
                ]
                if not tasks:
                    time.sleep(0.02)

    @staticmethod
    def _drop_refused(acks: list[dict[str, Any]], response: httpx.Response) -> bool:
        """Drop the ack that a 409 names: its task's lease ran out while the server was
        away and another worker holds it now, so this ack may change nothing. False when
        the 409 names none of the acks."""
        refused = response.json().get("_id")
        kept = [ack for ack in acks if ack["_id"] != refused]
        if len(kept) == len(acks):
            return False
        acks[:] = kept
        return True


def records(url: str, queue: str) -> dict[str, dict[str, Any]]:
    """Every task record of the queue, by id."""
    found: dict[str, dict[str, Any]] = {}
    after = "0"
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:
            response = client.get(
                f"/v1/queue/{queue}/tasks", params={"limit": 1000, "after": after}
            )
            response.raise_for_status()
            page = response.json()
            found.update((task["_id"], task) for task in page["tasks"])
            if page["next"] is None:
                return found
            after = page["next"]


def counts(url: str, queue: str) -> dict[str, int]:
    """The queue's task counts by status."""
    response = httpx.get(f"{url}/v1/queues", timeout=30)
    response.raise_for_status()
    for entry in response.json()["queues"]:
        if entry["name"] == queue:
            found: dict[str, int] = entry["counts"]
            return found
    raise AssertionError(f"no queue {queue!r}")
