"""A push to a Node receiver (examples/push/node, plain http) that verifies the signature with
the unmodified ``standardwebhooks`` npm package."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from katar import Katar
from katar.core.model import parse_queue_options
from katar.push import Allow, Dispatcher

NODE_RECEIVER = Path(__file__).parents[2] / "examples" / "push" / "node"


@pytest.fixture
def store_kind() -> str:
    return "sqlite"


def _installed() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the Node receiver")
    if not (NODE_RECEIVER / "node_modules" / "standardwebhooks").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_RECEIVER,
            check=True,
            timeout=300,
        )
    return NODE_RECEIVER


async def test_a_node_receiver_verifies_each_push(katar: Katar) -> None:
    folder = _installed()
    pusher = Dispatcher(katar.engine, Allow(["127.0.0.1"]))
    katar.engine.option_checks.append(pusher.check)
    made = await katar.engine.put_queue(
        "hooks",
        parse_queue_options(
            {"persistent": True, "push": {"url": "http://127.0.0.1:9/placeholder"}}
        ),
    )
    assert made.push is not None
    assert made.push.secret is not None
    node = await asyncio.create_subprocess_exec(
        "node",
        "receiver.mjs",
        cwd=folder,
        env={**os.environ, "KATAR_SECRET": made.push.secret, "PORT": "0"},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert node.stdout is not None
        first = json.loads(await asyncio.wait_for(node.stdout.readline(), 30))
        url = f"http://127.0.0.1:{first['listening']}/in"
        await katar.engine.patch_queue("hooks", {"push": {"url": url}})  # the secret stays
        pusher.start()
        ids = [(await katar.queue("hooks").enqueue({"n": n})).id for n in range(3)]
        lines = [json.loads(await asyncio.wait_for(node.stdout.readline(), 30)) for _ in ids]
        lines.sort(key=lambda line: int(line["id"]))  # pushed at once: in any order
        assert lines == [{"verified": True, "id": str(i), "attempt": 1} for i in ids]
        for task_id in ids:
            task = await katar.engine.get_task("hooks", task_id, wait=10)
            assert task.status == "done"
            assert task.result is not None
            assert json.loads(bytes(task.result))["handledBy"] == "node"
    finally:
        await pusher.stop()
        node.terminate()
        await node.wait()
