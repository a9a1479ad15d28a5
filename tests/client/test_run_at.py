"""The producers' run_at: an aware datetime, sent as an ISO 8601 UTC time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from katar import Katar
from katar.client import AsyncProducer, Producer
from katar.errors import ValidationError
from katar.http import App


@pytest.fixture
async def app() -> AsyncIterator[App]:
    katar = Katar("memory://")
    katar.queue("q")
    async with katar:
        yield App(katar.engine)


async def test_async_producer_sends_run_at(app: App) -> None:
    transport = httpx.ASGITransport(app=app)
    paris = timezone(timedelta(hours=1))
    later = datetime(2030, 1, 31, 10, 0, tzinfo=paris)
    async with AsyncProducer("http://katar", transport=transport) as producer:
        task = await producer.enqueue("q", "x", run_at=later)
        assert task.run_at == "2030-01-31T09:00:00.000Z"
        (past,) = await producer.enqueue_many("q", ["y"], run_at=datetime(2001, 1, 1, tzinfo=UTC))
        assert past.run_at is None
        assert past.status == "queued"


def test_a_naive_run_at_is_refused_before_sending() -> None:
    with Producer("http://127.0.0.1:9") as producer, pytest.raises(ValidationError, match="zone"):
        producer.enqueue("q", "x", run_at=datetime(2030, 1, 31, 10, 0))
