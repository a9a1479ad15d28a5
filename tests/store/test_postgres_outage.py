"""How the PostgreSQL store notes an outage and comes back from it, on the shared server:
a connection is ended from inside (as a restart ends every session), never the server."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from katar.errors import ConfigError, StoreUnavailable
from katar.store.postgres import PostgresStore
from tests.conftest import store_url


async def test_a_lost_connection_fails_fast_then_the_store_comes_back(tmp_path: Path) -> None:
    store = PostgresStore(store_url("postgres", tmp_path))
    await store.open()
    try:
        with pytest.raises(StoreUnavailable):
            async with store._transaction() as conn:
                await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        # Known down: the next request does not wait for a connection, it fails at once.
        with pytest.raises(StoreUnavailable, match="reconnecting"):
            await store.ping()
        async with asyncio.timeout(30):
            while True:
                try:
                    await store.ping()
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
        assert await store.load_queues() == {}
    finally:
        await store.close()


async def test_a_cancelled_statement_is_no_outage(tmp_path: Path) -> None:
    store = PostgresStore(store_url("postgres", tmp_path))
    await store.open()
    try:
        # PT012: the error comes from the second statement; the first sets it up inside the same context.
        with pytest.raises(StoreUnavailable):  # noqa: PT012
            async with store._transaction() as conn:
                await conn.execute("SET LOCAL statement_timeout = 1")
                await conn.execute("SELECT pg_sleep(1)")
        await store.ping()  # the connection is fine: no fail-fast period
    finally:
        await store.close()


async def test_a_transaction_past_its_time_is_cut_and_the_store_comes_back(
    tmp_path: Path,
) -> None:
    store = PostgresStore(store_url("postgres", tmp_path) + "&query_timeout=0.5")
    await store.open()
    try:
        # PostgreSQL cancels a statement past query_timeout itself: no outage.
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            async with store._transaction(writes=False) as conn:
                await conn.execute("SELECT pg_sleep(30)")
        await store.ping()
        # A server that answers nothing (here: told to wait without limit) is cut off by
        # the watchdog a second later, as a lost connection; the store then fails fast.
        # PT012: the error comes from the second statement; the first sets it up.
        with pytest.raises(StoreUnavailable, match=r"did not answer within 1\.5s"):  # noqa: PT012
            async with store._transaction(writes=False) as conn:
                await conn.execute("SET LOCAL statement_timeout = 0")
                await conn.execute("SELECT pg_sleep(30)")
        with pytest.raises(StoreUnavailable, match="reconnecting"):
            await store.ping()
        async with asyncio.timeout(30):
            while True:
                try:
                    await store.ping()
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "query", ["query_timeout=x", "query_timeout=-1", "health_timeout=0", "health_timeout=1e9"]
)
def test_a_time_out_that_is_no_number_of_seconds_is_refused(query: str) -> None:
    with pytest.raises(ConfigError, match=query.split("=")[0]):
        PostgresStore(f"postgresql://u@localhost/db?{query}")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"path": "/katar_no_such_database"}, 'database "katar_no_such_database" does not exist'),
        ({"user": "katar_no_such_role"}, 'role "katar_no_such_role" does not exist'),
        ({"port": "free"}, "Connection refused"),
    ],
    ids=["database", "role", "port"],
)
async def test_a_mistake_in_the_url_is_said_at_once_with_its_cause(
    tmp_path: Path, change: dict[str, str], says: str
) -> None:
    parts = urlsplit(store_url("postgres", tmp_path))
    user, host, port, path = parts.username, parts.hostname, parts.port, parts.path
    if "port" in change:
        with socket.socket() as sock:  # a port that nothing listens on
            sock.bind(("127.0.0.1", 0))
            host, port = "127.0.0.1", sock.getsockname()[1]
    user, path = change.get("user", user), change.get("path", path)
    url = urlunsplit((parts.scheme, f"{user}@{host}:{port}", path, parts.query, ""))
    store = PostgresStore(url)
    # Well within the pool's own wait (10 s), which ended in a message without the cause.
    async with asyncio.timeout(8):
        with pytest.raises(StoreUnavailable, match=says):
            await store.open()
