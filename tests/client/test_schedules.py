"""The producers' schedule calls (schedule, schedules, pause_schedule, delete_schedule)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from katar import Katar
from katar.client import AsyncProducer, RequestRejected, ScheduleRecord
from katar.http import App

URL = "http://katar"


@pytest.fixture
async def producer() -> AsyncIterator[AsyncProducer]:
    katar = Katar("memory://")
    katar.queue("reports", persistent=True)
    async with katar:
        transport = httpx.ASGITransport(app=App(katar.engine))
        async with AsyncProducer(URL, transport=transport) as client:
            yield client


async def test_a_schedule_made_listed_paused_and_deleted(producer: AsyncProducer) -> None:
    made = await producer.schedule(
        "nightly", "30 2 * * mon-fri", "reports", {"kind": "sales"}, timezone="Europe/Paris"
    )
    assert isinstance(made, ScheduleRecord)
    assert (made.name, made.cron, made.timezone, made.queue) == (
        "nightly",
        "30 2 * * mon-fri",
        "Europe/Paris",
        "reports",
    )
    assert made.data == {"kind": "sales"}
    assert len(made.next_ticks) == 5
    assert not made.paused
    (listed,) = await producer.schedules()
    assert listed.name == "nightly"
    paused = await producer.pause_schedule("nightly")
    assert paused.paused
    assert paused.next_ticks == []
    assert not (await producer.pause_schedule("nightly", paused=False)).paused
    await producer.delete_schedule("nightly")
    assert await producer.schedules() == []


async def test_a_bad_schedule_is_refused_with_the_servers_reason(producer: AsyncProducer) -> None:
    with pytest.raises(RequestRejected, match="cron"):
        await producer.schedule("broken", "every day", "reports")
    with pytest.raises(RequestRejected, match="404"):
        await producer.schedule("lost", "* * * * *", "nowhere")
