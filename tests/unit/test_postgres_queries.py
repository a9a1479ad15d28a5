"""The PostgreSQL store's statements (katar.store.postgres.queries), built for a schema
without a server: what the store and its group commit rely on in their text."""

from __future__ import annotations

import dataclasses
import re

from katar.store.postgres.queries import T_COLUMNS, queries

SCHEMA = "k_schema"
# Katar's tables and sequence: each must be named in the store's schema, or a server would
# read or write another schema's (or public's) tables of the same name.
UNQUALIFIED = re.compile(
    r"\b(?:FROM|JOIN|UPDATE|INTO|nextval\(')\s*(?:tasks_id_seq|tasks|queues|deps|schedules|idempotency_keys)\b"
)


def test_every_table_a_statement_names_is_in_the_stores_schema() -> None:
    sql = queries(SCHEMA)
    unqualified = {
        field.name: found
        for field in dataclasses.fields(sql)
        if (found := UNQUALIFIED.findall(getattr(sql, field.name)))
    }
    assert unqualified == {}
    other = queries("other")
    # Every statement but the advisory lock of unique keys (no table) depends on the schema.
    same = [
        f.name for f in dataclasses.fields(sql) if getattr(sql, f.name) == getattr(other, f.name)
    ]
    assert same == ["lock_keys"]


def test_the_done_statements_without_watchers_differ_only_in_what_they_return() -> None:
    # Done.edges reads (id, parents, children) from these: were the replace in queries() to
    # miss (the columns returned changed), they would return every column instead.
    sql = queries(SCHEMA)
    for full, ids in ((sql.done_keep, sql.done_keep_ids), (sql.done_drop, sql.done_drop_ids)):
        assert full.endswith(f"RETURNING {T_COLUMNS}")
        assert ids == full.removesuffix(T_COLUMNS) + "t.id, t.parents, t.children"
