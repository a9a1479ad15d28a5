"""PostgreSQL's transactional enqueue (contract section 12): the SQL function
``<schema>.enqueue(queue, data, priority, delay_s)`` that an application calls inside its own
transaction. The task exists exactly when that transaction commits, and the long polls wake."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
import pytest

from katar import Katar
from katar.core.model import State
from katar.http import App
from katar.store.postgres import parse_url
from tests.conftest import store_url
from tests.http.conftest import app_client, opened


@pytest.fixture
async def katar(tmp_path: Path) -> AsyncIterator[Katar]:
    instance = Katar(store_url("postgres", tmp_path))
    instance.queue("emails", persistent=True)
    async with opened(instance):
        yield instance


def schema_of(katar: Katar) -> tuple[str, str]:
    conninfo, _pool, schema = parse_url(katar.engine.store.url)
    return conninfo, schema


async def test_a_task_enqueued_in_a_transaction_exists_at_its_commit(katar: Katar) -> None:
    conninfo, schema = schema_of(katar)
    poll = asyncio.ensure_future(katar.engine.poll("emails", wait=30, worker="w1"))
    async with await psycopg.AsyncConnection.connect(conninfo) as app:
        async with app.transaction():
            await app.execute("CREATE TEMP TABLE orders (id int)")  # the application's work
            row = await (
                await app.execute(
                    f"SELECT {schema}.enqueue('emails', %s::jsonb, 5)", ('{"to": "a@b.c"}',)
                )
            ).fetchone()
            assert row is not None
            task_id = row[0]
            await asyncio.sleep(0.2)
            assert not poll.done()  # not before the commit
            assert await katar.engine.store.get_task("emails", task_id) is None
        (task,) = await asyncio.wait_for(poll, 30)  # the commit woke the long poll
    assert task.id == task_id
    assert task.priority == 5
    assert bytes(task.data) == b'{"to": "a@b.c"}'
    assert task.state is State.RUNNING


async def test_a_rolled_back_transaction_enqueues_nothing(katar: Katar) -> None:
    conninfo, schema = schema_of(katar)
    async with await psycopg.AsyncConnection.connect(conninfo) as app:
        await app.execute(f"SELECT {schema}.enqueue('emails', '1')")
        await app.rollback()  # the application's work failed
    assert (await katar.engine.stats())["emails"]["queued"] == 0


async def test_a_delay_schedules_the_task(katar: Katar) -> None:
    conninfo, schema = schema_of(katar)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as app:
        cursor = await app.execute(f"SELECT {schema}.enqueue('emails', '[1, 2]', 0, 3600)")
        row = await cursor.fetchone()
    assert row is not None
    task = await katar.engine.store.get_task("emails", row[0])
    assert task is not None
    assert task.state is State.SCHEDULED
    assert task.run_at is not None
    assert task.run_at - task.created_at == 3_600_000


@pytest.mark.parametrize(
    ("call", "says"),
    [
        ("enqueue('nowhere', '1')", "no queue nowhere"),
        ("enqueue('emails', NULL)", "not SQL NULL"),
        ("enqueue('emails', '1', 0, -1)", "delay_s must be from 0"),
        ("enqueue('emails', 'not json')", "invalid input syntax for type json"),
    ],
)
async def test_bad_calls_fail_the_transaction_with_a_clear_message(
    katar: Katar, call: str, says: str
) -> None:
    conninfo, schema = schema_of(katar)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as app:
        with pytest.raises(psycopg.Error, match=says):
            await app.execute(f"SELECT {schema}.{call}")
    assert (await katar.engine.stats())["emails"]["queued"] == 0


@contextlib.asynccontextmanager
async def role(katar: Katar, *grants: str) -> AsyncIterator[str]:
    """A role of the test's own that may log in, given ``grants`` ({s}: Katar's schema); its
    connection string. Dropped at the end, with what it was granted."""
    conninfo, schema = schema_of(katar)
    name = f"katar_test_role_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        database = (await (await admin.execute("SELECT current_database()")).fetchone() or [""])[0]
        # The database's privileges are one catalog row that every test process's GRANT and
        # DROP OWNED rewrite: done at once by two of them, one fails ("tuple concurrently
        # updated"). An advisory lock takes them in turn, across processes.
        async with _catalog_lock(admin):
            await admin.execute(f"CREATE ROLE {name} LOGIN")
            await admin.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {name}')
        try:
            for grant in grants:
                await admin.execute(grant.format(s=schema, role=name))
            parts = urlsplit(conninfo)
            host = parts.netloc.rpartition("@")[2]
            yield urlunsplit((parts.scheme, f"{name}@{host}", parts.path, parts.query, ""))
        finally:
            async with _catalog_lock(admin):
                await admin.execute(f"DROP OWNED BY {name}")
                await admin.execute(f"DROP ROLE {name}")


@contextlib.asynccontextmanager
async def _catalog_lock(admin: psycopg.AsyncConnection[tuple[object, ...]]) -> AsyncIterator[None]:
    """Hold the tests' advisory lock on the shared catalog while the block runs."""
    await admin.execute("SELECT pg_advisory_lock(%s)", (_CATALOG_LOCK,))
    try:
        yield
    finally:
        await admin.execute("SELECT pg_advisory_unlock(%s)", (_CATALOG_LOCK,))


#: The advisory lock's key: any fixed number no other program of the test server uses.
_CATALOG_LOCK = 0x6B61746172  # "katar"


_EXECUTE = "GRANT EXECUTE ON FUNCTION {s}.enqueue(text, jsonb, integer, double precision) TO {role}"
_USAGE = "GRANT USAGE ON SCHEMA {s} TO {role}"


async def test_a_role_that_may_only_execute_the_function_enqueues_and_writes_nothing_else(
    katar: Katar,
) -> None:
    _conninfo, schema = schema_of(katar)
    async with (
        role(katar, _USAGE, _EXECUTE) as conninfo,
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as app,
    ):
        # A search path of the caller's own cannot change what the function's names mean.
        await app.execute("SET search_path = pg_temp, public")
        row = await (
            await app.execute(f"SELECT {schema}.enqueue('emails', '{{\"a\": 1}}', 3)")
        ).fetchone()
        assert row is not None
        for statement in (
            f"INSERT INTO {schema}.tasks (queue_id, state, priority, data, created_at,"
            " updated_at) VALUES (1, 1, 0, 'x', 0, 0)",
            f"UPDATE {schema}.queues SET options = 'x'",
            f"SELECT data FROM {schema}.tasks",
            f"SELECT nextval('{schema}.tasks_id_seq')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await app.execute(statement)
    (task,) = await katar.engine.poll("emails", worker="w")
    assert (task.id, task.priority, bytes(task.data)) == (row[0], 3, b'{"a": 1}')


async def test_a_role_without_execute_cannot_enqueue(katar: Katar) -> None:
    _conninfo, schema = schema_of(katar)
    async with (
        role(katar, _USAGE) as conninfo,
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as app,
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await app.execute(f"SELECT {schema}.enqueue('emails', '1')")
    assert (await katar.engine.stats())["emails"]["queued"] == 0


async def test_a_role_that_may_only_connect_cannot_disturb_the_listeners(
    katar: Katar,
) -> None:
    _conninfo, schema = schema_of(katar)
    async with (
        role(katar) as conninfo,
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as other,
    ):
        await other.execute(f"NOTIFY katar_{schema}, 'r:x:A'")
        await other.execute(f"NOTIFY katar_{schema}, 'r:1:emails'")  # a wake-up: harmless
    # The listener carries on: a long poll wakes at the next enqueue's notification, which
    # comes from the SQL function (not from this server's own enqueue).
    conninfo, _ = schema_of(katar)
    poll = asyncio.ensure_future(katar.engine.poll("emails", wait=30, worker="w"))
    await asyncio.sleep(0.2)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as app:
        await app.execute(f"SELECT {schema}.enqueue('emails', '7')")
    (task,) = await asyncio.wait_for(poll, 30)
    assert bytes(task.data) == b"7"


async def test_rows_written_around_katar_are_never_sent_as_broken_json(katar: Katar) -> None:
    conninfo, schema = schema_of(katar)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        queue_id = (
            await (
                await admin.execute(f"SELECT id FROM {schema}.queues WHERE name = 'emails'")
            ).fetchone()
            or [0]
        )[0]
        for data, result in ((b"not json {{{", b'"\xff"'), (b'{"a": 1} trailing', None)):
            await admin.execute(
                f"INSERT INTO {schema}.tasks (queue_id, state, priority, data, result,"
                " created_at, updated_at) VALUES (%s, 1, 0, %s, %s, 0, 0)",
                (queue_id, data, result),
            )
    app = App(katar.engine)
    async with app_client(app, "asgi") as http:
        listed = await http.get("/v1/queue/emails/tasks")
        assert listed.status_code == 200
        records = listed.json()["tasks"]  # parses: valid JSON
        assert [r["data"] for r in records] == ["not json {{{", '{"a": 1} trailing']
        assert records[0]["result"] == '"\ufffd"'  # the text, as a string
        polled = await http.post("/v1/queue/emails", json={"max": 2})
        assert polled.status_code == 200
        assert [t["data"] for t in polled.json()["tasks"]] == ["not json {{{", '{"a": 1} trailing']


_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (f"'{_PARENT}', 'rojo=1'", {"traceparent": _PARENT, "tracestate": "rojo=1"}),
        (f"'{_PARENT}'", {"traceparent": _PARENT}),
        (f"'{_PARENT}', NULL", {"traceparent": _PARENT}),
        (f"'{_PARENT}', E'bad\\x01'", {"traceparent": _PARENT}),
        ("'not a traceparent', 'a=b'", None),
        (f"'{_PARENT.replace('0af7', '0AF7')}'", None),
        ("NULL", None),
    ],
)
async def test_the_function_takes_a_trace_context(
    katar: Katar, args: str, expected: dict[str, str] | None
) -> None:
    # The six-parameter enqueue: the context checked as the HTTP enqueue checks it (a
    # traceparent that is not W3C's is ignored), then delivered with the task.
    conninfo, schema = schema_of(katar)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as app:
        await app.execute(f"SELECT {schema}.enqueue('emails', '1', 0, 0, {args})")
        # the four-parameter call is still the old function's
        await app.execute(f"SELECT {schema}.enqueue('emails', '2')")
    first, second = await katar.engine.poll("emails", limit=2, worker="w1")
    assert (None if first.trace is None else msgspec.json.decode(first.trace)) == expected
    assert second.trace is None
