"""Fixtures of the Python client's tests: a Katar in memory, and the client's way to it
through the ASGI app, in process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from katar import Katar
from katar.client import AsyncProducer, AsyncWorker
from katar.http import App

URL = "http://katar"


#: The queues of the Katar that the tests talk to, with their options. A test module that
#: wants others states them in a ``QUEUES`` of its own, of the same form.
QUEUES: dict[str, dict[str, Any]] = {
    "q": {"persistent": True, "max_attempts": 3, "retry_delay": 0},
    "short": {"persistent": True, "timeout": 300},
}


@pytest.fixture
async def katar(request: pytest.FixtureRequest) -> AsyncIterator[Katar]:
    instance = Katar("memory://", reap_interval=0.02)
    for name, options in getattr(request.module, "QUEUES", QUEUES).items():
        instance.queue(name, **options)
    async with instance:
        yield instance


@pytest.fixture
def transport(katar: Katar) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=App(katar.engine))


@pytest.fixture
async def producer(transport: httpx.ASGITransport) -> AsyncIterator[AsyncProducer]:
    async with AsyncProducer(URL, transport=transport) as client:
        yield client


async def drain(worker: AsyncWorker, producer: AsyncProducer, queue: str, count: int) -> None:
    """Run the worker until ``count`` tasks of the queue are finished, then stop it."""
    running = asyncio.create_task(worker.run())

    async def finished() -> None:
        # ASYNC110: polling a flag set by another thread or process, which cannot set an asyncio event.
        while len(await producer.tasks(queue, ["done", "failed"], limit=1000)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(finished(), 20)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
