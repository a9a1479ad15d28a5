"""Fixtures shared by every suite."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from katar.store import Store, open_store
from tests.helpers.schemas import SchemaPool

#: Every store the conformance suite runs against, by name.
STORE_KINDS = ["memory", "sqlite", "postgres"]
#: The stores that keep their data when closed and opened again.
DURABLE_KINDS = ["sqlite", "postgres"]

#: A PostgreSQL server for the tests, e.g. postgresql://postgres@127.0.0.1:5432/test.
#: Without it the PostgreSQL tests skip; with KATAR_REQUIRE_POSTGRES=1 (CI) they fail.
POSTGRES_URL = os.environ.get("KATAR_TEST_POSTGRES_URL", "")
_schemas: list[str] = []


def store_url(kind: str, tmp_path: Path) -> str:
    """A URL for a fresh store of ``kind``: a file in ``tmp_path``, or a new schema (one that
    does not exist yet: opening the store makes it and runs every migration)."""
    if kind == "memory":
        return "memory://"
    if kind == "postgres":
        require_postgres()
        schema = f"katar_test_{uuid.uuid4().hex[:12]}"
        _schemas.append(schema)
        return postgres_url(schema)
    return f"sqlite:///{tmp_path / 'katar.db'}"


def require_postgres() -> None:
    """Skip the test when no PostgreSQL is given to the tests (fail in CI)."""
    if not POSTGRES_URL:
        reason = "set KATAR_TEST_POSTGRES_URL to run the PostgreSQL tests"
        if os.environ.get("KATAR_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def postgres_url(schema: str) -> str:
    """The test server's URL with Katar's tables in ``schema``."""
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}schema={schema}&pool_size=4"


@pytest.fixture
async def shared_stores(store_kind: str, make_url: Callable[[], str]) -> AsyncIterator[list[Store]]:
    """Three stores open on one PostgreSQL schema, as three servers sharing a database; a
    test that asks for them skips on the stores that only one server can use."""
    if store_kind != "postgres":
        pytest.skip("only PostgreSQL is shared by servers")
    url = make_url()
    stores = [open_store(url) for _ in range(3)]
    try:
        for store in stores:
            await store.open()
        yield stores
    finally:
        for store in stores:
            await store.close()


@contextlib.contextmanager
def tmpfs(directory: Path, size: str, unavailable: Callable[[str], NoReturn]) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "8m") mounted on the empty ``directory`` for a disk-full
    test, unmounted after. Where this process may not mount one (not root, a sandbox),
    ``unavailable`` is called with the reason (pytest.skip, or a failure in CI)."""
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]
    try:
        mounted = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        unavailable(f"cannot mount a tmpfs here: {exc}")
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, timeout=30)


@pytest.fixture(autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    """Each PostgreSQL test works in a schema of its own, dropped after it."""
    yield
    if _schemas:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            while _schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {_schemas.pop()} CASCADE")


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``storeless`` runs on the memory store only (its parametrization by
    ``store_kind`` narrowed before the fixture's own applies): what it checks is decided
    before any store is asked (a request refused by its parsing, a route unknown), so the
    other stores would only repeat it. Every other test runs on every store."""
    if (
        metafunc.definition.get_closest_marker("storeless")
        and "store_kind" in metafunc.fixturenames
    ):
        metafunc.definition.add_marker(pytest.mark.parametrize("store_kind", ["memory"]))


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture(scope="session")
def schema_pool() -> Iterator[SchemaPool]:
    """This process's migrated PostgreSQL schemas, dropped at the end of the run."""
    pool = SchemaPool(POSTGRES_URL)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def make_url(
    store_kind: str, tmp_path: Path, schema_pool: SchemaPool
) -> Iterator[Callable[[], str]]:
    """Makes the URL of an empty store of ``store_kind``, a new one at each call. On
    PostgreSQL the schema is one that an earlier test left and that was emptied (see
    SchemaPool): the same as a new one, without running every migration again."""
    if store_kind != "postgres":
        yield lambda: store_url(store_kind, tmp_path)
        return
    leased: list[str] = []

    def make() -> str:
        require_postgres()
        leased.append(schema_pool.lease())
        return postgres_url(leased[-1])

    yield make
    for schema in leased:  # after the fixtures that opened stores on it have closed them
        schema_pool.give_back(schema)


@pytest.fixture
async def store(make_url: Callable[[], str]) -> AsyncIterator[Store]:
    opened = open_store(make_url())
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# -- no test may leave a thread that keeps pytest from exiting ---------------------------------

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """A worker thread that a test forgot to stop (a client retrying a server that the test
    has killed) would keep the interpreter alive for ever after the last test: the run would
    hang until CI's own limit. Name such threads and end the run as failed instead."""
    import sys
    import threading
    import time
    import traceback

    deadline = time.monotonic() + 15
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not left:
        return
    frames = sys._current_frames()
    sys.stderr.write(f"\n!!! tests left {len(left)} thread(s) running; ending the run:\n")
    for thread in left:
        sys.stderr.write(f"--- {thread.name}\n")
        frame = frames.get(thread.ident or 0)
        if frame is not None:
            sys.stderr.write("".join(traceback.format_stack(frame)))
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(_exit_status[0] if _exit_status and _exit_status[0] else 1)
