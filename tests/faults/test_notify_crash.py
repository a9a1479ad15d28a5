"""kill -9 of a server while its workers' acks stream in, on a queue with completion webhooks
(``notify``) whose endpoint is down: every task the store holds as done after the restart has
its event sent by the next server. The event is kept in the transaction that ends the task,
so no commit of a task's end, however close to the kill, goes without its event."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx

from tests.acceptance.conftest import KatarProcess
from tests.faults.conftest import free_port
from tests.push.receiver import Receiver, serving

TOTAL = 400
WORKERS = 4
#: Acks answered before the kill: the kill comes with acks still arriving.
KILL_AFTER = 120


async def work(http: httpx.AsyncClient, url: str, acked: list[str]) -> None:
    """A worker: take one task, ack it done, again, until the server goes."""
    with contextlib.suppress(httpx.HTTPError):
        while True:
            answer = await http.post(f"{url}/v1/queue/jobs", json={"max": 1})
            tasks = answer.json()["tasks"] if answer.status_code == 200 else []
            if not tasks:
                return
            ack = [{"_id": tasks[0]["_id"], "status": "done"}]
            done = await http.post(f"{url}/v1/queue/jobs", json={"tasks": ack, "max": 0})
            if done.status_code in (200, 204):
                acked.append(tasks[0]["_id"])


async def test_kill_9_amid_acks_loses_no_event(tmp_path: Path, servers: list[KatarProcess]) -> None:
    config = tmp_path / "katar.toml"
    config.write_text('[push]\nallow = ["127.0.0.1"]\n')
    args = ("--config", str(config), "--db", f"sqlite:///{tmp_path / 'katar.db'}")
    port = free_port()  # the receiver's, nothing listening on it until the restart
    first = await asyncio.to_thread(KatarProcess(tmp_path, *args).start)
    servers.append(first)
    acked: list[str] = []
    async with httpx.AsyncClient(timeout=10) as http:
        options = {"persistent": True, "notify": {"url": f"http://127.0.0.1:{port}/events"}}
        made = await http.put(f"{first.url}/v1/queue/jobs", json=options)
        assert made.status_code == 200, made.text
        secret = made.json()["options"]["notify"]["secret"]
        tasks = [{"data": n} for n in range(TOTAL)]
        enqueued = await http.post(f"{first.url}/v1/queue/jobs/tasks", json={"tasks": tasks})
        assert enqueued.status_code in (200, 201), enqueued.text
        workers = [asyncio.create_task(work(http, first.url, acked)) for _ in range(WORKERS)]
        async with asyncio.timeout(60):
            while len(acked) < KILL_AFTER:  # noqa: ASYNC110 (the workers append)
                await asyncio.sleep(0.001)
        await asyncio.to_thread(first.kill)
        await asyncio.gather(*workers)
        receiver = Receiver()
        receiver.secrets.append(secret)
        async with serving(receiver, port):
            second = await asyncio.to_thread(KatarProcess(tmp_path, *args).start)
            servers.append(second)
            listing = await http.get(
                f"{second.url}/v1/queue/jobs/tasks", params={"status": "done", "limit": TOTAL}
            )
            done = {record["_id"] for record in listing.json()["tasks"]}
            assert done >= set(acked)  # every ack answered was committed
            assert len(done) < TOTAL  # the kill came amid the acks
            # Events held by the killed server's sender wait for their hold to end (30 s).
            async with asyncio.timeout(90):
                while {r.task["task"]["_id"] for r in receiver.received} < done:
                    await receiver.wait_for(len(receiver.received) + 1, seconds=90)
    assert all(r.verified for r in receiver.received)
    assert {r.task["type"] for r in receiver.received} == {"task.done"}
    assert {r.task["task"]["_id"] for r in receiver.received} == done
