"""Migrated PostgreSQL schemas that tests reuse instead of migrating a new one each.

Running every migration takes a new schema most of a PostgreSQL test's set-up time (and
dropping it some more). A test's schema is instead given back at its end, emptied and kept
for the next test when it is still exactly what the migrations make: the same tables,
columns, indexes, constraints, functions, rights and versions. A test that changed any of
them (an old schema upgraded, a right granted, a version written) has its schema dropped,
as before. The emptied schema is as a new one: no rows, and the sequences start again, so
that the first task is still 1.

Tests that must start from no schema at all (the migrations' own tests) call
``tests.conftest.store_url``, which still names a schema that does not exist.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

#: What makes a schema: its objects with their definitions and rights, the schema's own
#: name replaced so that two schemas of one shape compare equal.
_SHAPE = """
SELECT md5(string_agg(replace(part, %(schema)s, '<schema>'), E'\\n' ORDER BY part)) FROM (
    SELECT 'schema ' || coalesce(n.nspacl::text, '') || ' ' || n.nspowner::regrole::text
        FROM pg_namespace n WHERE n.oid = %(oid)s
    UNION ALL
    SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '')
        || ' ' || c.relowner::regrole::text
        FROM pg_class c WHERE c.relnamespace = %(oid)s
    UNION ALL
    SELECT 'column ' || c.relname || '.' || a.attname || ' '
        || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' '
        || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = %(oid)s
    UNION ALL
    SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = %(oid)s
    UNION ALL
    SELECT 'function ' || pg_get_functiondef(p.oid) || ' ' || coalesce(p.proacl::text, '')
        || ' ' || p.proowner::regrole::text
        FROM pg_proc p WHERE p.pronamespace = %(oid)s
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(oid)s AND NOT t.tgisinternal
    UNION ALL
    SELECT 'type ' || t.typname FROM pg_type t WHERE t.typnamespace = %(oid)s
) AS parts(part)
"""


class SchemaPool:
    """This process's PostgreSQL schemas for the tests, free ones first.

    A schema leased is either one that does not exist yet (the test's store makes it) or one
    that is empty and exactly as the migrations make it. One pool per process: under
    pytest-xdist each worker has its own, with names of its own."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._free: list[str] = []
        self._made: set[str] = set()
        self._shape: str | None = None  # _SHAPE of a schema just migrated
        self._versions: list[int] = []  # and its schema_version rows
        self._empty_sql = ""  # the statements that empty a schema, "<schema>" for its name

    def lease(self) -> str:
        self._connection()  # the first lease is the schema migrated to learn the shape
        if self._free:
            return self._free.pop()
        schema = f"katar_test_{uuid.uuid4().hex[:12]}"
        self._made.add(schema)
        return schema

    def give_back(self, schema: str) -> None:
        """Keep ``schema`` for another test, emptied, if it has the migrations' shape; else
        drop it. Called when the test has closed its stores."""
        conn = self._connection()
        try:
            if self._reusable(conn, schema):
                conn.execute(self._empty_sql.replace("<schema>", schema))
                self._free.append(schema)
                return
        except Exception:
            conn.rollback()
        try:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except Exception:
            return  # still locked by what the test left: dropped at the end of the run
        self._made.discard(schema)

    def close(self) -> None:
        if self._conn is None:
            return
        self._conn.execute("SET lock_timeout = 0")
        for schema in sorted(self._made):
            self._conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self._conn.close()
        self._conn = None

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None:
            import psycopg

            self._conn = psycopg.connect(self._url, autocommit=True)
            # A test that left a connection in a transaction on its schema must not block
            # the run: the schema is dropped instead (or left to the end, if that blocks too).
            self._conn.execute("SET lock_timeout = '5s'")
            self._learn_shape()
        return self._conn

    def _reusable(self, conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> bool:
        row = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if row is None:
            return True  # never made (the test opened no store): still a new schema
        if self._shape_of(conn, schema, row[0]) != self._shape:
            return False
        versions = conn.execute(f"SELECT version FROM {schema}.schema_version ORDER BY 1")
        return [v for (v,) in versions.fetchall()] == self._versions

    @staticmethod
    def _shape_of(conn: psycopg.Connection[tuple[Any, ...]], schema: str, oid: int) -> str:
        row = conn.execute(_SHAPE, {"schema": schema, "oid": oid}).fetchone()
        assert row is not None
        shape: str = row[0]
        return shape

    def _learn_shape(self) -> None:
        """Migrate a schema as a store does, and learn from it what the migrations make and
        how to empty it; it is the pool's first free schema."""
        assert self._conn is not None
        schema = self.lease()
        _migrate(schema)
        conn = self._conn
        (oid,) = conn.execute("SELECT %s::regnamespace::oid", (schema,)).fetchone() or (0,)
        self._shape = self._shape_of(conn, schema, oid)
        versions = conn.execute(f"SELECT version FROM {schema}.schema_version ORDER BY 1")
        self._versions = [v for (v,) in versions.fetchall()]
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <>"
            " 'schema_version' ORDER BY 1",
            (schema,),
        ).fetchall()
        sequences = conn.execute(
            "SELECT sequencename, start_value FROM pg_sequences WHERE schemaname = %s ORDER BY 1",
            (schema,),
        ).fetchall()
        # One round trip: DELETE rather than TRUNCATE, which costs more on tables this small.
        statements = [f"DELETE FROM <schema>.{table}" for (table,) in tables]
        statements += [
            f"SELECT setval('<schema>.{name}', {start}, false)" for name, start in sequences
        ]
        self._empty_sql = "; ".join(statements)
        self._free.append(schema)


def _migrate(schema: str) -> None:
    """Open and close a PostgreSQL store on ``schema``: its migrations run. In a thread of
    its own, as a test's event loop may already be running in this one."""
    from katar.store import open_store
    from tests.conftest import postgres_url

    async def run() -> None:
        store = open_store(postgres_url(schema))
        await store.open()
        await store.close()

    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="katar-test-migrate")
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"the migrations of {schema} took over 60 s"
    if failure:
        raise failure[0]
