"""An in-process client against the ASGI app, over every store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from katar import Katar
from katar.http import App, Limits


@pytest.fixture
async def katar(make_url: Callable[[], str]) -> AsyncIterator[Katar]:
    instance = Katar(make_url(), reap_interval=0.02)
    instance.queue("q", persistent=True)
    instance.queue("history", persistent=True, timeout=200, max_attempts=2)
    instance.queue("plain")  # the original katar's dummy queue: no history
    async with opened(instance):
        yield instance


@pytest.fixture
async def client(katar: Katar) -> AsyncIterator[httpx.AsyncClient]:
    app = App(katar.engine, limits=Limits(max_wait=5, max_body_bytes=64 * 1024))
    async with asgi_client(app) as http:
        yield http


@contextlib.asynccontextmanager
async def opened(katar: Katar) -> AsyncIterator[Katar]:
    """``katar`` opened (declare its queues first), and closed at the end."""
    await katar.open()
    try:
        yield katar
    finally:
        await katar.close()


@contextlib.asynccontextmanager
async def asgi_client(app: App) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that calls ``app`` in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://katar") as http:
        yield http


async def enqueue(client: httpx.AsyncClient, queue: str, *tasks: dict[str, Any]) -> list[str]:
    """Enqueue tasks; their ids."""
    body = {"tasks": list(tasks)}
    response = await client.post(f"/v1/queue/{queue}/tasks", json=body)
    assert response.status_code == 201, response.text
    return [record["_id"] for record in response.json()["tasks"]]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait until ``check()`` is true; fail after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
