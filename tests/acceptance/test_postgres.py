"""Several ``katar serve`` processes on one PostgreSQL database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import KatarProcess, wait_until
from tests.conftest import store_url
from tests.helpers.drain import Drain


@pytest.fixture
def database(tmp_path: Path) -> str:
    """A PostgreSQL URL with a schema of this test's own (skips without PostgreSQL)."""
    return store_url("postgres", tmp_path)


@pytest.fixture
def three(tmp_path: Path, database: str) -> Iterator[list[KatarProcess]]:
    """Three servers on one database, started at the same moment (their migrations meet
    on the advisory lock)."""
    servers = [KatarProcess(tmp_path, "--db", database) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda server: server.start(), servers))
    yield servers
    for server in servers:
        server.kill()


def test_three_servers_share_the_work(three: list[KatarProcess]) -> None:
    total = 20_000
    with httpx.Client(base_url=three[0].url, timeout=60) as client:
        client.put("/v1/queue/shared", json={"timeout": 600000}).raise_for_status()
        for start in range(0, total, 1000):
            body = {"tasks": [{"data": n} for n in range(start, start + 1000)]}
            client.post("/v1/queue/shared/tasks", json=body).raise_for_status()
    drains = [Drain(server.url, "shared") for server in three]
    with ThreadPoolExecutor(12) as pool:
        for n in range(12):
            pool.submit(drains[n % 3].work, f"w{n}", 1 + n % 4)

        def finished() -> bool:
            return sum(len(d.confirmed) for d in drains) >= total

        try:
            wait_until(finished, seconds=120)
        finally:  # on a failure too: the pool's exit waits for its threads
            for drain in drains:
                drain.stop.set()
    assert [d.errors for d in drains] == [[], [], []]
    delivered = [task_id for d in drains for _seq, task_id, _attempt in d.deliveries]
    # The lease is 10 minutes: a task delivered twice would have been handed out twice
    # while leased.
    assert len(delivered) == len(set(delivered)) == total
    assert all(d.deliveries for d in drains)  # every server took its share
    stats = httpx.get(f"{three[2].url}/v1/queues", timeout=10).json()["queues"]
    assert stats[0]["counts"]["queued"] == 0
    assert stats[0]["counts"]["in progress"] == 0


def test_a_long_poll_wakes_for_an_enqueue_on_another_server(three: list[KatarProcess]) -> None:
    first, second, _ = three
    httpx.put(f"{first.url}/v1/queue/wake", json={}, timeout=10).raise_for_status()
    answers: list[httpx.Response] = []

    def long_poll() -> None:
        answers.append(httpx.post(f"{first.url}/v1/queue/wake", json={"wait": 20}, timeout=30))

    poller = threading.Thread(target=long_poll, daemon=True)
    poller.start()
    time.sleep(0.5)  # parked on the first server
    created = httpx.post(f"{second.url}/v1/queue/wake/tasks", json={"data": "hi"}, timeout=10)
    poller.join(30)
    assert answers
    assert answers[0].status_code == 200
    assert answers[0].json()["tasks"][0]["_id"] == created.json()["tasks"][0]["_id"]


def test_a_queue_made_on_one_server_is_known_to_the_others(three: list[KatarProcess]) -> None:
    first, second, third = three
    body = {"configuration": {"interval": 5}}
    httpx.put(f"{first.url}/v1/queue/later", json=body, timeout=10).raise_for_status()

    def known() -> bool:
        answer = httpx.get(f"{third.url}/v1/queue/later", timeout=10)
        return answer.status_code == 200 and answer.json()["configuration"]["interval"] == 5

    wait_until(known, seconds=10)
    httpx.delete(f"{second.url}/v1/queue/later", timeout=10).raise_for_status()
    wait_until(lambda: httpx.get(f"{third.url}/v1/queue/later").status_code == 404, 10)


def test_a_concurrency_limit_holds_across_three_servers(three: list[KatarProcess]) -> None:
    total = 300
    with httpx.Client(base_url=three[0].url, timeout=60) as client:
        options = {"timeout": 600000, "concurrency": 2, "key_concurrency": 1}
        client.put("/v1/queue/narrow", json=options).raise_for_status()
        body = {"tasks": [{"data": n, "key": f"k{n % 5}"} for n in range(total)]}
        client.post("/v1/queue/narrow/tasks", json=body).raise_for_status()
    drains = [Drain(server.url, "narrow") for server in three]
    seen: list[dict[str, int]] = []

    def sample(stop: threading.Event) -> None:
        with httpx.Client(base_url=three[1].url, timeout=10) as client:
            while not stop.is_set():
                (queue,) = client.get("/v1/queues").json()["queues"]
                seen.append(queue["limits"])

    stop = threading.Event()
    with ThreadPoolExecutor(10) as pool:
        sampler = pool.submit(sample, stop)
        for n in range(9):
            pool.submit(drains[n % 3].work, f"w{n}", 2)

        def finished() -> bool:
            return sum(len(d.confirmed) for d in drains) >= total

        try:
            wait_until(finished, seconds=120)
        finally:
            stop.set()
            for drain in drains:
                drain.stop.set()
        sampler.result()
    assert [d.errors for d in drains] == [[], [], []]
    delivered = [task_id for d in drains for _seq, task_id, _attempt in d.deliveries]
    assert len(delivered) == len(set(delivered)) == total
    assert seen
    # Every sample, from the database's point of view: never a third task in progress, so
    # never more than two keys holding their one task.
    assert max(s["in_progress"] for s in seen) <= 2
    assert max(s["keys_at_limit"] for s in seen) <= 2
