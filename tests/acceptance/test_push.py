"""Push delivery from a real ``katar serve`` (its [push] allow opening loopback) to a real
receiver, set up and inspected through the Python client and the ``katar push`` command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from katar.client import AsyncProducer, Producer
from tests.acceptance.conftest import KatarProcess
from tests.acceptance.test_cli_admin import katar
from tests.push.receiver import Answer, Receiver, serving


async def test_push_through_the_client_and_the_command(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    config = tmp_path / "katar.toml"
    config.write_text('[push]\nallow = ["127.0.0.1"]\n\n[queues.hooks]\npersistent = true\n')
    receiver = Receiver()
    receiver.script = lambda received: (
        Answer(503, headers=[(b"retry-after", b"0")])
        if len(receiver.received) == 1
        else Answer(200, b'{"ok": true}')
    )
    async with serving(receiver):
        args = ("--config", str(config), "--db", f"sqlite:///{tmp_path / 'k.db'}")
        server = await asyncio.to_thread(KatarProcess(tmp_path, *args).start)
        servers.append(server)
        url = f"http://127.0.0.1:{receiver.port}/in"
        made = await asyncio.to_thread(
            katar, server, "push", "hooks", "--to", url, "--header", "X-Env: test", "--json"
        )
        assert made.returncode == 0, made.stderr
        secret = json.loads(made.stdout)["secret"]
        receiver.secrets.append(secret)
        async with AsyncProducer(server.url) as producer:
            assert await producer.set_push("hooks", url, headers={"X-Env": "test"}) is None
            record = await producer.enqueue("hooks", {"n": 1})
            done = await producer.wait("hooks", record.id, timeout=30)
            assert done.status == "done"
            assert done.result == {"ok": True}
            status = await producer.push_status("hooks")
        assert status.url == url
        assert [a.outcome for a in status.recent] == ["done", "failed"]
        assert status.recent[1].status == 503
        assert status.error_rate == 0.5
        assert all(r.verified and r.headers["x-env"] == "test" for r in receiver.received)
        shown = await asyncio.to_thread(katar, server, "push", "hooks")
        assert shown.returncode == 0, shown.stderr
        assert f"hooks pushes to {url}" in shown.stdout
        assert "503" in shown.stdout
        read = await asyncio.to_thread(katar, server, "push", "hooks", "--secret")
        assert read.stdout.strip() == secret
        rotated = await asyncio.to_thread(
            katar, server, "push", "hooks", "--rotate", "--grace", "60", "--json"
        )
        assert json.loads(rotated.stdout)["previous_secret"] == secret
        polled = await asyncio.to_thread(katar, server, "push", "hooks", "--remove")
        assert polled.returncode == 0, polled.stderr
        with Producer(server.url) as producer:
            [queue] = [q for q in producer.queues() if q.name == "hooks"]
            assert "push" not in queue.options or queue.options["push"] is None
        output = server.output()
        assert secret not in output  # never in a log line


def test_a_push_url_refused_without_allow(tmp_path: Path, servers: list[KatarProcess]) -> None:
    server = KatarProcess(tmp_path, "--db", f"sqlite:///{tmp_path / 'k.db'}").start()
    servers.append(server)
    httpx.put(f"{server.url}/v1/queue/plain", json={}).raise_for_status()
    refused = katar(server, "push", "plain", "--to", "http://127.0.0.1:9/in")
    assert refused.returncode == 1
    assert "[push] allow" in refused.stderr
