"""kill -9 of the server in the middle of a drain, on each durable store."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import KatarProcess, wait_until
from tests.conftest import store_url
from tests.faults.driver import Clients, Ledger, counts, records

TOTAL = 600


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_kill_9_mid_drain_then_restart(
    kind: str, tmp_path: Path, servers: list[KatarProcess]
) -> None:
    url = store_url(kind, tmp_path)
    server = KatarProcess(tmp_path, "--db", url).start()
    servers.append(server)
    # A short lease, so that what was delivered but never acknowledged (its answer died with
    # the server) comes back soon after the restart.
    options = {"persistent": True, "timeout": 1000, "max_attempts": 0}
    httpx.put(f"{server.url}/v1/queue/crash", json=options, timeout=10).raise_for_status()
    ledger = Ledger(lease=options["timeout"] / 1000)
    clients = Clients(server.url, "crash", ledger)
    try:
        clients.produce(TOTAL, batch=25)
        for n in range(3):
            clients.work(f"w{n}", 1 + 4 * n)
        clients.work("careless", 2, drop_every=10)
        wait_until(lambda: len(ledger.acked) >= TOTAL // 4 and len(ledger.created) >= TOTAL // 2)
        server.kill()
        restarted = KatarProcess(tmp_path, "--db", url).start()
        servers.append(restarted)
        clients.url = restarted.url  # the clients keep their unsent acks and tasks

        def drained() -> bool:
            now = counts(restarted.url, "crash")
            idle = now["queued"] == now["in progress"] == 0
            return clients.produced and idle and now["done"] >= len(ledger.created)

        wait_until(drained, seconds=60)
    finally:
        clients.stop()
    assert ledger.faults > 0  # the clients did meet the outage
    # What was dropped came back once its lease ran out.
    assert any(attempt > 1 for _sent, _id, attempt in ledger.deliveries)
    ledger.check(records(restarted.url, "crash"))
