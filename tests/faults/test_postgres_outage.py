"""PostgreSQL goes away under load and comes back: the server answers 503 meanwhile, then
serves again by itself, without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.acceptance.conftest import KatarProcess, wait_until
from tests.faults.conftest import PrivatePostgres
from tests.faults.driver import FAULT_STATUSES, Clients, Ledger, counts, records

TOTAL = 600
#: Seconds: how long an answer may take while PostgreSQL is down, and how long the server
#: may take to serve again once it is back (generous for loaded CI machines).
OUTAGE_ANSWER = 8.0


def test_postgres_restart_under_load(
    private_postgres: PrivatePostgres, tmp_path: Path, servers: list[KatarProcess]
) -> None:
    url = f"{private_postgres.url}?pool_size=4"
    server = KatarProcess(tmp_path, "--db", url).start()
    servers.append(server)
    options = {"persistent": True, "timeout": 2000, "max_attempts": 0}
    httpx.put(f"{server.url}/v1/queue/pg", json=options, timeout=10).raise_for_status()
    # The outage outlasts the lease: an ack held up by it may arrive once the task is queued
    # again, and then changes nothing (the contract), the task being delivered once more.
    ledger = Ledger(lease=options["timeout"] / 1000)
    clients = Clients(server.url, "pg", ledger)
    try:
        clients.produce(TOTAL, batch=10)
        clients.work("w0", 1)
        clients.work("w1", 5)
        wait_until(lambda: len(ledger.acked) >= 50)

        private_postgres.stop("fast")  # every session ends, as in a restart
        # An outage answers fast: within a load balancer's health time-out (a few seconds),
        # far below the pool's 10 s wait for a connection, on every request while it lasts.
        with httpx.Client(base_url=server.url, timeout=OUTAGE_ANSWER) as client:
            for _ in range(3):
                health = client.get("/healthz")
                assert health.status_code == 503, health.text
                assert "unavailable" in health.json()["error"]
                enqueue = client.post("/v1/queue/pg/tasks", json={"data": "during the outage"})
                assert enqueue.status_code in FAULT_STATUSES, enqueue.text
                assert "error" in enqueue.json()
                time.sleep(1.0)  # the clients meet the outage too, and leases run out
            private_postgres.start()

            # Back promptly: the server does not wait out a reconnection backoff.
            wait_until(lambda: client.get("/healthz").status_code == 200, OUTAGE_ANSWER)
            assert client.post("/v1/queue/pg/tasks", json={"data": "after"}).status_code == 201
            ledger.unconfirmed += 4  # those tasks are not the drain's to check: extras

        def drained() -> bool:
            now = counts(server.url, "pg")
            idle = now["queued"] == now["in progress"] == 0
            return clients.produced and idle and now["done"] >= len(ledger.created)

        wait_until(drained, seconds=60)
    finally:
        clients.stop()
    assert server.process is not None
    assert server.process.poll() is None
    ledger.check(records(server.url, "pg"))


def test_a_postgres_that_answers_nothing_is_an_outage_within_bounds(
    private_postgres: PrivatePostgres, tmp_path: Path, servers: list[KatarProcess]
) -> None:
    # A server that hangs (SIGSTOP: connections accepted, nothing answered) is noticed by
    # the time-outs: /healthz's, and each transaction's.
    url = f"{private_postgres.url}?pool_size=4&query_timeout=2&health_timeout=1"
    server = KatarProcess(tmp_path, "--db", url).start()
    servers.append(server)
    with httpx.Client(base_url=server.url, timeout=OUTAGE_ANSWER) as client:
        client.put("/v1/queue/pg", json={"persistent": True}).raise_for_status()
        assert client.post("/v1/queue/pg/tasks", json={"data": 1}).status_code == 201
        # Every answer comes within the client's time-out (a hang would raise instead).
        for first in ("/healthz", "/v1/queue/pg/tasks"):  # which one meets the hang
            private_postgres.freeze()
            try:
                if first == "/healthz":
                    health = client.get("/healthz")
                    assert health.status_code == 503, health.text
                    assert "did not answer within 1s" in health.json()["error"]
                enqueue = client.post("/v1/queue/pg/tasks", json={"data": "frozen"})
                assert enqueue.status_code in FAULT_STATUSES, enqueue.text
                if first != "/healthz":  # cut while it committed: it may exist, or not
                    assert enqueue.status_code == 504, enqueue.text
                    assert enqueue.json()["outcome"] == "unknown"
                    assert "did not answer within 3s" in enqueue.json()["cause"]
                assert client.get("/healthz").status_code == 503
                poll = client.post("/v1/queue/pg", json={"max": 1})
                assert poll.status_code in FAULT_STATUSES, poll.text
            finally:
                private_postgres.thaw()
            wait_until(lambda: client.get("/healthz").status_code == 200, OUTAGE_ANSWER * 4)
        assert client.post("/v1/queue/pg/tasks", json={"data": 2}).status_code == 201
    assert server.process is not None
    assert server.process.poll() is None
    log = server.output()
    # One line when each outage begins, one when it ends; no traceback.
    assert log.count("store unavailable") == 2, log
    assert log.count("store available again") == 2, log
    assert "Traceback" not in log, log


def test_a_restart_of_postgres_is_two_lines_in_the_log(
    private_postgres: PrivatePostgres, tmp_path: Path, servers: list[KatarProcess]
) -> None:
    url = f"{private_postgres.url}?pool_size=4"
    server = KatarProcess(tmp_path, "--db", url).start()
    servers.append(server)
    with httpx.Client(base_url=server.url, timeout=OUTAGE_ANSWER) as client:
        # What runs in the background meets the outage too: the reaper, the scheduler, the
        # listener and the reload of the queues that follows its return.
        client.put("/v1/queue/pg", json={"persistent": True}).raise_for_status()
        schedule = {"cron": "* * * * *", "queue": "pg"}
        client.put("/v1/schedules/every-minute", json=schedule).raise_for_status()
        assert client.post("/v1/queue/pg/tasks", json={"data": 1}).status_code == 201
        for _ in range(2):  # two outages: two pairs of lines
            private_postgres.stop("fast")
            wait_until(lambda: client.get("/healthz").status_code == 503, OUTAGE_ANSWER)
            for _ in range(4):  # requests during the outage: no line each
                assert client.post("/v1/queue/pg", json={"max": 1}).status_code == 503
                time.sleep(0.5)
            private_postgres.start()
            wait_until(lambda: client.get("/healthz").status_code == 200, OUTAGE_ANSWER * 4)
            assert client.post("/v1/queue/pg/tasks", json={"data": 2}).status_code == 201
            wait_until(lambda: "store available again" in server.output(), OUTAGE_ANSWER)
    log = server.output()
    said = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(said) == 4, log
    assert [("unavailable" in line, "available again" in line) for line in said] == [
        (True, False),
        (False, True),
    ] * 2, log
    assert "Traceback" not in log, log
