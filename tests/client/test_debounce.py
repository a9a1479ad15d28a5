"""Debounce (debounce_key) from the Python client, the embedded API and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from katar import Katar, cli
from katar.client import AsyncProducer
from katar.errors import RequestRejected, ValidationError
from katar.http import App
from tests.http.conftest import served

URL = "http://katar"


@pytest.fixture
async def katar() -> AsyncIterator[Katar]:
    instance = Katar("memory://")
    instance.queue("q", persistent=True)
    async with instance:
        yield instance


@pytest.fixture
async def producer(katar: Katar) -> AsyncIterator[AsyncProducer]:
    transport = httpx.ASGITransport(app=App(katar.engine))
    async with AsyncProducer(URL, transport=transport) as client:
        yield client


async def test_the_producer_debounces(producer: AsyncProducer) -> None:
    first = await producer.enqueue("q", {"v": 1}, delay=60, debounce_key="doc-1")
    assert first.debounce_key == "doc-1"
    assert not first.debounced
    later = datetime.now(UTC) + timedelta(minutes=5)
    second = await producer.enqueue("q", {"v": 2}, run_at=later, debounce_key="doc-1")
    assert second.debounced
    assert (second.id, second.data) == (first.id, {"v": 2})
    assert second.run_at is not None
    assert second.run_at > (first.run_at or "")
    many = await producer.enqueue_many("q", [3, 4, 5], delay=30, debounce_key="doc-2")
    assert [t.debounced for t in many] == [False, True, True]
    assert len({t.id for t in many}) == 1
    assert [t.data for t in await producer.tasks("q")] == [{"v": 2}, 5]
    with pytest.raises(RequestRejected, match=r"422 .*debounce_key needs a delay"):
        await producer.enqueue("q", 6, debounce_key="doc-3")
    with pytest.raises(RequestRejected, match=r"422 .*debounce_key or unique_key"):
        await producer.enqueue("q", 6, delay=1, debounce_key="doc-3", unique_key="u")


async def test_the_embedded_api_debounces_and_checks(katar: Katar) -> None:
    queue = katar.queue("q")
    first = await queue.enqueue(1, delay=60, debounce_key="k")
    second = await queue.enqueue(2, delay=30, debounce_key="k", priority="high")
    assert second.debounced
    assert (second.id, second.priority) == (first.id, 10)
    assert [t.id for t in await queue.tasks()] == [first.id]
    with pytest.raises(ValidationError, match="needs a delay"):
        await queue.enqueue(3, debounce_key="k")
    with pytest.raises(ValidationError, match="not both"):
        await queue.enqueue(3, delay=1, debounce_key="k", unique_key="k")
    for bad in ("", "x" * 256, "a\nb"):
        with pytest.raises(ValidationError):
            await queue.enqueue(3, delay=1, debounce_key=bad)


async def test_the_cli_debounces(katar: Katar, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(App(katar.engine)) as url:
        base = ["enqueue", "--url", url, "--queue", "q", "--debounce-key", "doc"]
        assert await asyncio.to_thread(cli.main, [*base, "--delay", "60", '"v1"']) == 0
        first = capsys.readouterr().out.strip()
        assert await asyncio.to_thread(cli.main, [*base, "--delay", "90", '"v2"']) == 0
        assert capsys.readouterr().out.strip() == first  # debounced: the same task's id
        assert await asyncio.to_thread(cli.main, [*base, '"v3"']) != 0  # no delay
        assert "--debounce-key needs --delay or --run-at" in capsys.readouterr().err
    record = await katar.queue("q").get(first)
    assert msgspec.json.decode(record.data) == "v2"
    assert record.debounce_key == "doc"
    assert record.run_at is not None
    assert record.run_at >= record.created_at + 90_000
