"""kill -9 of a server in the middle of its pushes (SQLite; and one of three servers on
PostgreSQL): every task is pushed at least once and done once; the pushes in flight at the kill are pushed again once their lease runs
out, to a real receiver that checks each signature with the ``standardwebhooks`` library."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.acceptance.conftest import KatarProcess
from tests.conftest import store_url
from tests.push.receiver import Answer, Receiver, serving

TOTAL = 40
PG_TOTAL = 300


async def all_done(http: httpx.AsyncClient, url: str, total: int, seconds: float) -> None:
    """Wait until the queue "crash" has ``total`` tasks done."""
    async with asyncio.timeout(seconds):
        while True:
            listing = (await http.get(f"{url}/v1/queues")).json()
            [queue] = [q for q in listing["queues"] if q["name"] == "crash"]
            if queue["counts"].get("done") == total:
                return
            await asyncio.sleep(0.2)


async def test_kill_9_mid_push_then_restart(tmp_path: Path, servers: list[KatarProcess]) -> None:
    config = tmp_path / "katar.toml"
    config.write_text('[push]\nallow = ["127.0.0.1"]\n')
    args = ("--config", str(config), "--db", f"sqlite:///{tmp_path / 'katar.db'}")
    receiver = Receiver()
    receiver.script = lambda received: Answer(200, delay=0.2)
    async with serving(receiver), httpx.AsyncClient(timeout=10) as http:
        server = await asyncio.to_thread(KatarProcess(tmp_path, *args).start)
        servers.append(server)
        # A lease of 2 s that covers a push of at most 1 s: a push cut by the kill comes
        # back 2 s after it started.
        options = {
            "persistent": True,
            "timeout": 2000,
            "max_attempts": 0,
            "concurrency": 4,
            "push": {"url": f"http://127.0.0.1:{receiver.port}/in", "timeout": 1000},
        }
        made = await http.put(f"{server.url}/v1/queue/crash", json=options)
        assert made.status_code == 200, made.text
        receiver.secrets.append(made.json()["options"]["push"]["secret"])
        tasks = [{"data": n} for n in range(TOTAL)]
        enqueued = await http.post(f"{server.url}/v1/queue/crash/tasks", json={"tasks": tasks})
        ids = {record["_id"] for record in enqueued.json()["tasks"]}
        await receiver.wait_for(TOTAL // 4)
        await asyncio.to_thread(server.kill)  # pushes in flight: their answers are lost
        restarted = await asyncio.to_thread(KatarProcess(tmp_path, *args).start)
        servers.append(restarted)
        await all_done(http, restarted.url, TOTAL, 60)
        done = await http.get(
            f"{restarted.url}/v1/queue/crash/tasks", params={"status": "done", "limit": 100}
        )
        assert {record["_id"] for record in done.json()["tasks"]} == ids
    pushed = [received.task for received in receiver.received]
    assert {task["_id"] for task in pushed} == ids  # each at least once
    assert all(received.verified for received in receiver.received)
    # The kill cut some pushes: those tasks were pushed again, as a later attempt.
    assert any(task["attempt"] > 1 for task in pushed)


async def test_three_servers_on_postgres_push_each_task_and_survive_a_kill(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    url = store_url("postgres", tmp_path)
    config = tmp_path / "katar.toml"
    config.write_text('[push]\nallow = ["127.0.0.1"]\n')
    receiver = Receiver()
    receiver.script = lambda received: Answer(200, delay=0.1)
    async with serving(receiver), httpx.AsyncClient(timeout=10) as http:
        started = [
            await asyncio.to_thread(
                KatarProcess(tmp_path, "--config", str(config), "--db", url).start
            )
            for _ in range(3)
        ]
        servers.extend(started)
        options = {
            "persistent": True,
            "timeout": 2000,
            "max_attempts": 0,
            # No concurrency: each server pushes up to 32 at once (with one, the server whose
            # pushes end claims the freed room first, and may keep it all).
            "push": {"url": f"http://127.0.0.1:{receiver.port}/in", "timeout": 1000},
        }
        made = await http.put(f"{started[0].url}/v1/queue/crash", json=options)
        assert made.status_code == 200, made.text
        receiver.secrets.append(made.json()["options"]["push"]["secret"])
        tasks = [{"data": n} for n in range(PG_TOTAL)]
        enqueued = await http.post(f"{started[0].url}/v1/queue/crash/tasks", json={"tasks": tasks})
        ids = {record["_id"] for record in enqueued.json()["tasks"]}
        await receiver.wait_for(PG_TOTAL // 4)
        await asyncio.to_thread(started[1].kill)
        await all_done(http, started[0].url, PG_TOTAL, 90)
        for survivor in (started[0], started[2]):  # every server pushes
            status = (await http.get(f"{survivor.url}/v1/queue/crash/push")).json()
            assert status["counts"].get("done", 0) > 0, status
    assert {received.task["_id"] for received in receiver.received} == ids
    assert all(received.verified for received in receiver.received)
    deliveries = {(r.task["_id"], r.task["attempt"]) for r in receiver.received}
    assert len(deliveries) == len(receiver.received)  # no delivery pushed twice
