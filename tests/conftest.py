"""Fixtures shared by every suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from katar.store import Store, open_store

#: Every store the conformance suite runs against, by name.
STORE_KINDS = ["memory", "sqlite"]
#: The stores that keep their data when closed and opened again.
DURABLE_KINDS = ["sqlite"]


def store_url(kind: str, tmp_path: Path) -> str:
    """A URL for a fresh store of ``kind`` inside ``tmp_path``."""
    if kind == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'katar.db'}"


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
