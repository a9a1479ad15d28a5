"""``katar serve`` for the tests of real SQS clients, on the store a test is parametrized with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import KatarProcess
from tests.conftest import store_url


@pytest.fixture(params=["sqlite", "postgres"])
def sql_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KatarProcess]:
    """``katar serve`` on a SQLite file or a PostgreSQL schema of this test's own (PostgreSQL
    skips, saying why, without KATAR_TEST_POSTGRES_URL)."""
    process = KatarProcess(tmp_path, "--db", store_url(request.param, tmp_path)).start()
    yield process
    process.kill()
