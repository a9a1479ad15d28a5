"""Exactly one task per tick: three ``katar serve`` processes on one PostgreSQL schema fire a
schedule that ticks every second, and one of them is killed (-9) between ticks.

Seconds in a cron are for tests only: the servers run with KATAR_TEST_SECOND_TICKS=1, which
no configuration file, request or API call can set (see katar.core.schedule)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import KatarProcess, wait_until
from tests.conftest import store_url

CONFIG = """
[queues.ticks]
persistent = true

[schedules.each-second]
cron = "* * * * * *"
queue = "ticks"
data = { "from" = "cron" }
"""


@pytest.fixture
def three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[KatarProcess]]:
    database = store_url("postgres", tmp_path)
    monkeypatch.setenv("KATAR_TEST_SECOND_TICKS", "1")
    config = tmp_path / "katar.toml"
    config.write_text(CONFIG)
    servers = [KatarProcess(tmp_path, "--db", database, "--config", str(config)) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:  # all at once: they declare the schedule together
        list(pool.map(lambda server: server.start(), servers))
    yield servers
    for server in servers:
        server.kill()


def ticks(url: str) -> list[int]:
    """The scheduled_for of every task the schedule made, as whole seconds, in id order."""
    answer = httpx.get(f"{url}/v1/queue/ticks/tasks", params={"limit": 1000}, timeout=10)
    answer.raise_for_status()
    records = answer.json()["tasks"]
    assert {r["schedule"] for r in records} <= {"each-second"}
    assert all(r["data"] == {"from": "cron"} for r in records)
    seconds = [datetime.fromisoformat(r["scheduled_for"]).timestamp() for r in records]
    assert all(s == int(s) for s in seconds)
    return [int(s) for s in seconds]


def test_one_task_per_tick_with_three_servers_and_one_killed(
    three: list[KatarProcess],
) -> None:
    first, second, third = three
    wait_until(lambda: len(ticks(first.url)) >= 4, seconds=20)
    # Between two ticks: just after one was fired.
    before = len(ticks(first.url))
    wait_until(lambda: len(ticks(first.url)) > before, seconds=10)
    time.sleep(0.2)
    second.kill()
    at_kill = len(ticks(first.url))
    wait_until(lambda: len(ticks(third.url)) >= at_kill + 4, seconds=20)
    made = ticks(third.url)
    # One task per tick, and no tick left out: a task for each second since the first.
    # (A tick's task is inserted only once the previous tick's is committed: the cursor's
    # compare-and-set orders them, so ids follow ticks.)
    assert made == list(range(made[0], made[0] + len(made)))
    assert len(made) >= at_kill + 4 >= 9
    assert ticks(first.url)[: len(made)] == made
    assert first.terminate() == 0
    assert third.terminate() == 0
