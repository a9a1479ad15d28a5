"""A SQLite store that raises an unexpected exception in the middle of a group commit:
every request of the group is answered (5xx) and changes nothing, and the next requests
work."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from katar import Katar
from katar.http import App
from katar.store.sqlite import SQLiteStore
from tests.http.conftest import app_client, opened


class FaultyConnection:
    """The store's writing connection, which raises (an exception that is not SQLite's)
    at the first statement of the kind ``where`` names once armed: "write" (the first
    write made with execute, after a group's enqueues have inserted), or "commit"."""

    def __init__(self, conn: sqlite3.Connection, where: str) -> None:
        self._conn = conn
        self.where = where
        self.armed = False
        self.groups = 0  # transactions begun since armed
        self.raised = 0

    def execute(self, sql: str, *args: Any) -> Any:
        statement = sql.lstrip().upper()
        if self.armed and statement.startswith("BEGIN"):
            self.groups += 1
        hit = (
            statement == "COMMIT"
            if self.where == "commit"
            else (statement.startswith(("INSERT", "UPDATE", "DELETE")))
        )
        if self.armed and hit:
            self.armed = False
            self.raised += 1
            raise RuntimeError("injected fault in the middle of a group commit")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.mark.parametrize("where", ["write", "commit"])
async def test_an_exception_inside_a_group(where: str, tmp_path: Path) -> None:
    # No lease reaping meanwhile: its writes would make groups of their own.
    katar = Katar(f"sqlite:///{tmp_path / 'katar.db'}", reap_interval=3600)
    katar.queue("q", persistent=True)
    async with opened(katar):
        store = katar.engine.store
        assert isinstance(store, SQLiteStore)
        faulty = FaultyConnection(store._writer._conn, where)  # type: ignore[arg-type]
        store._writer._conn = faulty  # type: ignore[assignment]
        async with app_client(App(katar.engine), "asgi") as client:
            seeded = await client.post("/v1/queue/q/tasks", json={"tasks": [{"data": 0}] * 3})
            assert seeded.status_code == 201
            before = await queue_counts(client)

            faulty.armed = True
            requests = [
                client.post("/v1/queue/q/tasks", json={"data": 1}),
                client.post("/v1/queue/q/tasks", json={"tasks": [{"data": 2}, {"data": 3}]}),
                client.post("/v1/queue/q", json={"worker": "a"}),
                client.post("/v1/queue/q", json={"max": 2}),
            ]
            answers = await asyncio.wait_for(asyncio.gather(*requests), 5)
            assert (faulty.raised, faulty.groups) == (1, 1)  # one group, that failed
            assert [a.status_code >= 500 for a in answers] == [True] * 4, [
                (a.status_code, a.text) for a in answers
            ]
            assert all("error" in a.json() for a in answers)
            assert await queue_counts(client) == before  # nothing changed

            # The next requests work.
            created = await client.post("/v1/queue/q/tasks", json={"data": "next"})
            assert created.status_code == 201
            polled = await asyncio.wait_for(client.post("/v1/queue/q", json={"max": 10}), 10)
            assert polled.status_code == 200
            tasks = polled.json()["tasks"]
            assert sorted(str(t["data"]) for t in tasks) == ["0", "0", "0", "next"]
            acks = [{"_id": t["_id"], "status": "done"} for t in tasks]
            finished = await client.post("/v1/queue/q", json={"tasks": acks})
            assert finished.status_code == 204
            counts = (await client.get("/v1/queues")).json()["queues"][0]["counts"]
            assert counts["done"] == 4
            assert counts["queued"] == counts["in progress"] == 0


async def queue_counts(client: httpx.AsyncClient) -> list[tuple[str, dict[str, int]]]:
    """Each queue's counts (the listing's ages move with the clock)."""
    answer = (await client.get("/v1/queues")).json()
    return [(queue["name"], queue["counts"]) for queue in answer["queues"]]
