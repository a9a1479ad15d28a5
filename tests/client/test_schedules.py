"""The producers' schedule calls (schedule, schedules, pause_schedule, delete_schedule), and
a scheduled task as a worker receives it (``Job.schedule``, ``Job.scheduled_for``)."""

from __future__ import annotations

import httpx
import pytest

from katar import Katar
from katar.client import AsyncProducer, AsyncWorker, Job, RequestRejected, ScheduleRecord
from katar.core.clock import FakeClock
from katar.http import App
from tests.client.conftest import drain

URL = "http://katar"


#: The queues of this module's Katar (see conftest.py).
QUEUES = {"reports": {"persistent": True}}


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


async def test_a_worker_knows_the_schedule_and_tick_of_its_task() -> None:
    clock = FakeClock(start_ms=1_700_000_000_000)  # 2023-11-14T22:13:20Z
    katar = Katar("memory://", clock=clock)
    katar.queue("reports", persistent=True)
    async with katar:
        transport = httpx.ASGITransport(app=App(katar.engine))
        async with AsyncProducer(URL, transport=transport) as producer:
            await producer.enqueue("reports", "by hand")
            await producer.schedule("minutely", "* * * * *", "reports", {"kind": "sales"})
            await clock.advance(60_000)
            seen: list[tuple[object, str | None, str | None]] = []

            def handler(job: Job) -> None:
                seen.append((job.data, job.schedule, job.scheduled_for))

            worker = AsyncWorker(URL, "reports", handler, transport=transport, wait=0.2)
            await drain(worker, producer, "reports", 2)
    assert seen == [
        ("by hand", None, None),
        ({"kind": "sales"}, "minutely", "2023-11-14T22:14:00.000Z"),
    ]
