"""Servers sharing one PostgreSQL schema agree on the queues' options, whatever happens to
the notifications that carry their changes: a listener that drops reloads until it succeeds,
and a periodic check finds a change that no notification announced."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import psycopg
import pytest

from katar.core.engine import Engine
from katar.core.model import NewTask, QueueOptions
from katar.store import open_store
from katar.store.postgres import PostgresStore, parse_url
from tests.conftest import store_url

#: Seconds within which every server must agree (the check runs every 2 s).
DEADLINE = 30.0


async def until(condition: Callable[[], bool], seconds: float = DEADLINE) -> None:
    async with asyncio.timeout(seconds):
        # ASYNC110: the engine's options change with no event to wait on.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.fixture
async def url(tmp_path: Path) -> str:
    return store_url("postgres", tmp_path)


@pytest.fixture
async def engines(url: str) -> AsyncIterator[Callable[[], Engine]]:
    """Open engines on the one schema of ``url``, as servers sharing it (closed after)."""
    async with AsyncExitStack() as stack:
        made: list[Engine] = []

        def make() -> Engine:
            engine = Engine(open_store(url))
            made.append(engine)
            stack.push_async_callback(engine.close)
            return engine

        yield make


async def listeners(url: str) -> set[int]:
    """The backends listening on the schema's channel."""
    conninfo, _pool, schema = parse_url(url)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query = %s", (f"LISTEN katar_{schema}",)
        )
        return {row[0] for row in await cursor.fetchall()}


async def test_a_server_whose_listener_drops_gets_the_changes_made_meanwhile(
    url: str, engines: Callable[[], Engine], caplog: pytest.LogCaptureFixture
) -> None:
    a = engines()
    await a.open({"q": QueueOptions(persistent=True)})
    (listener,) = await listeners(url)
    b = engines()
    await b.open()
    conninfo, _pool, _schema = parse_url(url)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (listener,))
    # As when PostgreSQL restarts: A's requests also find it gone, so the reload that
    # follows the listener's return meets a store still reconnecting (and fails).
    store = a.store
    assert isinstance(store, PostgresStore)
    store._db.down()
    await b.patch_queue("q", {"paused": True, "concurrency": 1})
    await until(lambda: a.options("q").paused and a.options("q").concurrency == 1)
    await b.patch_queue("q", {"paused": False})
    await until(lambda: not a.options("q").paused)
    tracebacks = [r for r in caplog.records if r.exc_info and r.name == "katar"]
    assert tracebacks == []  # an outage is no error: said in one line, not a traceback


async def test_a_change_that_no_notification_announced_is_found(
    url: str, engines: Callable[[], Engine]
) -> None:
    a = engines()
    await a.open({"q": QueueOptions(persistent=True), "r": QueueOptions()})
    conninfo, _pool, schema = parse_url(url)
    paused = msgspec.json.encode(QueueOptions(persistent=True, paused=True, concurrency=3))
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        # Written as a server would, but without its NOTIFY: as if the notification was lost.
        await admin.execute(f"UPDATE {schema}.queues SET options = %s WHERE name = 'q'", (paused,))
    await until(lambda: a.options("q").paused and a.options("q").concurrency == 3)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        await admin.execute(f"DELETE FROM {schema}.queues WHERE name = 'r'")
    await until(lambda: "r" not in a.queue_options())
    # In step again: the digest the check reads is the one of the options loaded, so that
    # it reloads nothing more while nothing changes.
    store = a.store
    assert isinstance(store, PostgresStore)
    async with store._transaction(writes=False) as conn:
        row = await (await conn.execute(store._sql.options_digest)).fetchone()
    assert row is not None
    assert row[0] == store._options_digest


async def test_a_notification_katar_did_not_send_is_ignored(
    url: str, engines: Callable[[], Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="katar")
    a = engines()
    await a.open({"q": QueueOptions()})
    b = engines()
    await b.open()
    before = await listeners(url)
    conninfo, _pool, schema = parse_url(url)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as other:
        for payload in ("r:x:q", "r:1", "r:99999999999:q", "zz", "q:", "s:x", ""):
            await other.execute("SELECT pg_notify(%s, %s)", (f"katar_{schema}", payload))
    # Still listening on the same connections: a long poll on A wakes for B's enqueue.
    poll = asyncio.ensure_future(a.poll("q", wait=DEADLINE, worker="w"))
    await asyncio.sleep(0.1)
    await b.enqueue("q", [NewTask(data=msgspec.Raw(b"1"))])
    (task,) = await asyncio.wait_for(poll, DEADLINE)
    assert msgspec.json.decode(task.data) == 1
    assert await listeners(url) == before
    said = [r.getMessage() for r in caplog.records if "did not send" in r.getMessage()]
    assert len(said) == 2  # once per server, not once per notification
    assert not any("notifications lost" in r.getMessage() for r in caplog.records)
