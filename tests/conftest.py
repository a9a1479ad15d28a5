"""Fixtures shared by every suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from katar.store import Store, open_store

#: Every store the conformance suite runs against, by name.
STORE_KINDS = ["memory", "sqlite", "postgres"]
#: The stores that keep their data when closed and opened again.
DURABLE_KINDS = ["sqlite", "postgres"]

#: A PostgreSQL server for the tests, e.g. postgresql://postgres@127.0.0.1:5432/test.
#: Without it the PostgreSQL tests skip; with KATAR_REQUIRE_POSTGRES=1 (CI) they fail.
POSTGRES_URL = os.environ.get("KATAR_TEST_POSTGRES_URL", "")
_schemas: list[str] = []


def store_url(kind: str, tmp_path: Path) -> str:
    """A URL for a fresh store of ``kind``: a file in ``tmp_path``, or a new schema."""
    if kind == "memory":
        return "memory://"
    if kind == "postgres":
        if not POSTGRES_URL:
            reason = "set KATAR_TEST_POSTGRES_URL to run the PostgreSQL tests"
            if os.environ.get("KATAR_REQUIRE_POSTGRES") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        schema = f"katar_test_{uuid.uuid4().hex[:12]}"
        _schemas.append(schema)
        separator = "&" if "?" in POSTGRES_URL else "?"
        return f"{POSTGRES_URL}{separator}schema={schema}&pool_size=4"
    return f"sqlite:///{tmp_path / 'katar.db'}"


@pytest.fixture(autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    """Each PostgreSQL test works in a schema of its own, dropped after it."""
    yield
    if _schemas:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            while _schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {_schemas.pop()} CASCADE")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_url(store_kind: str, tmp_path: Path) -> Callable[[], str]:
    return lambda: store_url(store_kind, tmp_path)


@pytest.fixture
async def store(make_url: Callable[[], str]) -> AsyncIterator[Store]:
    opened = open_store(make_url())
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
