"""Completion webhooks from a real ``katar serve`` (its [push] allow opening loopback) to a real
receiver, set up with the ``katar notify`` command; the events of a receiver that is down are
kept in the SQLite store, with the tasks' ends, across a kill -9 of the server right after the
acks, and sent by the next one."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx

from katar.client import AsyncProducer
from tests.acceptance.conftest import KatarProcess
from tests.acceptance.test_cli_admin import katar
from tests.push.receiver import Receiver, serving


async def test_events_survive_a_kill_of_the_server(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    config = tmp_path / "katar.toml"
    # The queue is made over HTTP: one declared in the file would get the file's options
    # (without notify) again at the restart.
    config.write_text('[push]\nallow = ["127.0.0.1"]\n')
    args = ("--config", str(config), "--db", f"sqlite:///{tmp_path / 'k.db'}")
    with socket.socket() as probe:  # the receiver's port, nothing listening on it yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/events"
    first = await asyncio.to_thread(KatarProcess(tmp_path, *args).start)
    servers.append(first)
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
        (await http.put("/v1/queue/jobs", json={"persistent": True})).raise_for_status()
    made = await asyncio.to_thread(katar, first, "notify", "jobs", "--to", url, "--json")
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["secret"]
    async with AsyncProducer(first.url) as producer:
        ids = [(await producer.enqueue("jobs", {"n": n})).id for n in range(3)]
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
            taken = (await http.post("/v1/queue/jobs", json={"max": 3})).json()["tasks"]
            acks = [{"_id": t["_id"], "status": "done"} for t in taken]
            await http.post("/v1/queue/jobs", json={"tasks": acks, "max": 0})
        for task_id in ids:
            assert (await producer.get("jobs", task_id)).status == "done"
    # Killed at once: each event was kept in its task's transaction, before the ack's answer.
    await asyncio.to_thread(first.kill)
    receiver = Receiver()
    receiver.secrets.append(secret)
    async with serving(receiver, port):
        second = await asyncio.to_thread(KatarProcess(tmp_path, *args).start)
        servers.append(second)
        await receiver.wait_for(3, seconds=60)
    assert all(r.verified for r in receiver.received)
    assert sorted(r.task["task"]["_id"] for r in receiver.received) == sorted(str(i) for i in ids)
    assert {r.task["type"] for r in receiver.received} == {"task.done"}
    read = await asyncio.to_thread(katar, second, "notify", "jobs", "--secret")
    assert read.stdout.strip() == secret
    assert secret not in first.output() + second.output()  # never in a log line
