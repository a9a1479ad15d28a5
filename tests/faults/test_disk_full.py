"""SQLite on a disk that fills up: writes are refused with 503 and change nothing, the
health check says so, and once space is freed the server serves again by itself."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.acceptance.conftest import KatarProcess, wait_until
from tests.faults.conftest import SmallDisk
from tests.faults.driver import Clients, Ledger, counts, records

BIG = "x" * (256 * 1024)  # a task large enough that the WAL must grow to take it


def fill_until_refused(client: httpx.Client, disk: SmallDisk, ledger: Ledger) -> httpx.Response:
    """Fill the disk, then enqueue until the store refuses: the refusal."""
    disk.fill()
    for _ in range(64):  # the WAL may hold a few tasks in space it already has
        before = counts(str(client.base_url), "full")
        answer = client.post("/v1/queue/full/tasks", json={"tasks": [{"data": BIG}] * 4})
        if answer.status_code == 201:
            ledger.created.update((task["_id"], 0) for task in answer.json()["tasks"])
            continue
        assert answer.status_code == 503, answer.text
        assert counts(str(client.base_url), "full") == before  # it changed nothing
        return answer
    raise AssertionError("a full disk never refused an enqueue")


def start(disk: SmallDisk, tmp_path: Path, servers: list[KatarProcess]) -> KatarProcess:
    server = KatarProcess(tmp_path, "--db", f"sqlite:///{disk.path / 'katar.db'}").start()
    servers.append(server)
    httpx.put(
        f"{server.url}/v1/queue/full", json={"persistent": True, "max_attempts": 0}, timeout=10
    ).raise_for_status()
    return server


def test_a_full_disk_refuses_writes_then_recovers(
    small_disk: SmallDisk, tmp_path: Path, servers: list[KatarProcess]
) -> None:
    server = start(small_disk, tmp_path, servers)
    ledger = Ledger()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for n in range(20):
            created = client.post("/v1/queue/full/tasks", json={"data": n})
            assert created.status_code == 201
            ledger.created[created.json()["tasks"][0]["_id"]] = 0
        refused = fill_until_refused(client, small_disk, ledger)
        assert "error" in refused.json()
        small_disk.free()

        def writable() -> bool:
            answer = client.post("/v1/queue/full/tasks", json={"data": "after"})
            if answer.status_code == 201:
                ledger.created[answer.json()["tasks"][0]["_id"]] = 0
                return True
            assert answer.status_code == 503, answer.text
            return False

        wait_until(writable, seconds=30)
    assert server.process is not None
    assert server.process.poll() is None
    clients = Clients(server.url, "full", ledger)
    try:
        clients.work("w", 10)

        def drained() -> bool:
            return counts(server.url, "full")["done"] == len(ledger.created)

        wait_until(drained, seconds=30)
    finally:
        clients.stop()
    ledger.check(records(server.url, "full"))


def test_the_health_check_reports_a_full_disk(
    small_disk: SmallDisk, tmp_path: Path, servers: list[KatarProcess]
) -> None:
    server = start(small_disk, tmp_path, servers)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        fill_until_refused(client, small_disk, Ledger())
        # Small writes may still fit in space the WAL already has; once one is refused too,
        # the health check must not say 200 while the next write is refused.
        for _ in range(500):
            if client.post("/v1/queue/full/tasks", json={"data": "small"}).status_code == 201:
                continue
            health = client.get("/healthz")
            if health.status_code == 503:
                break
            assert health.status_code == 200, health.text
            after = client.post("/v1/queue/full/tasks", json={"data": "small"})
            assert after.status_code == 201, f"/healthz said 200, then: {after.text}"
        else:
            raise AssertionError("a full disk never refused a small enqueue")
        assert "error" in health.json()
        small_disk.free()
        wait_until(lambda: client.get("/healthz").status_code == 200, seconds=30)
        assert client.post("/v1/queue/full/tasks", json={"data": "after"}).status_code == 201


def test_after_a_full_disk_the_wal_is_copied_back_before_new_tasks(
    small_disk: SmallDisk, tmp_path: Path, servers: list[KatarProcess]
) -> None:
    """Space freed must go first to copying the WAL back: new tasks written first could
    take it all and leave the WAL uncopyable and the store stuck. Meanwhile new tasks are
    refused, however small, and the outage is logged once, its end once."""
    server = start(small_disk, tmp_path, servers)
    wal = small_disk.path / "katar.db-wal"
    ledger = Ledger()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(2):  # a WAL of a few MB, that a checkpoint copies back but leaves
            created = client.post("/v1/queue/full/tasks", json={"tasks": [{"data": BIG}] * 4})
            assert created.status_code == 201, created.text
            ledger.created.update((task["_id"], 0) for task in created.json()["tasks"])
        grown = wal.stat().st_size
        assert grown > 2 * 1024 * 1024
        fill_until_refused(client, small_disk, ledger)
        # From the first refusal on, no new task is taken, not even a small one that the
        # WAL's file would still have room for.
        for n in range(20):
            refused = client.post("/v1/queue/full/tasks", json={"data": n})
            assert refused.status_code == 503, refused.text
        # Acks are applied meanwhile (their task's record is rewritten where the disk
        # has room): a worker's poll answers, though it may deliver nothing.
        assert client.get("/healthz").status_code == 503
        small_disk.free()

        def taken() -> bool:
            answer = client.post("/v1/queue/full/tasks", json={"data": "after"})
            if answer.status_code == 201:
                ledger.created[answer.json()["tasks"][0]["_id"]] = 0
                return True
            assert answer.status_code == 503, answer.text
            return False

        wait_until(taken, seconds=30)
        # The first new task came after the WAL was copied back and its file cut.
        assert wal.stat().st_size < grown // 2
        assert client.get("/healthz").status_code == 200
    # One line when the outage began and one when it ended, however many requests were
    # refused or answered meanwhile; the store's own pair says why.
    log = server.output()
    assert log.count("store unavailable") == 1, log
    assert log.count("store available again") == 1, log
    assert log.count("new tasks are refused") == 1, log
    assert log.count("new tasks are taken again") == 1, log
    clients = Clients(server.url, "full", ledger)
    try:
        clients.work("w", 10)
        wait_until(lambda: counts(server.url, "full")["done"] == len(ledger.created), 30)
    finally:
        clients.stop()
    ledger.check(records(server.url, "full"))
