"""Clients of the app over every store, and both ways in: through ASGI (in-process), and
through Katar's own HTTP protocol on a loopback socket (as ``katar serve`` answers)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn

from katar import Katar
from katar.http import App, Limits
from katar.http.connection import HttpProtocol, sweep


@pytest.fixture
async def katar(make_url: Callable[[], str]) -> AsyncIterator[Katar]:
    instance = Katar(make_url(), reap_interval=0.02)
    instance.queue("q", persistent=True)
    instance.queue("history", persistent=True, timeout=200, max_attempts=2)
    instance.queue("plain")  # the original katar's dummy queue: no history
    async with opened(instance):
        yield instance


@pytest.fixture(params=["asgi", "http"])
def via(request: pytest.FixtureRequest) -> str:
    """How requests reach the app: "asgi" in-process, or "http" over Katar's protocol."""
    value: str = request.param
    return value


@pytest.fixture
async def client(katar: Katar, via: str) -> AsyncIterator[httpx.AsyncClient]:
    app = App(katar.engine, limits=Limits(max_wait=5, max_body_bytes=64 * 1024))
    async with app_client(app, via) as http:
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
async def app_client(app: App, via: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of ``app``: in-process through ASGI (``via`` "asgi"), or over a
    loopback socket through Katar's HTTP protocol ("http")."""
    if via == "asgi":
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://katar") as http:
            yield http
        return
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield http


@contextlib.asynccontextmanager
async def served(
    app: App,
    timeouts: tuple[float, float, float] | None = None,
    connections: list[set[Any]] | None = None,
) -> AsyncIterator[str]:
    """``app`` served on a loopback port by Katar's HTTP protocol, in this event loop; its
    base URL. (The app's engine is opened and closed by the caller.) With ``timeouts``
    (head, body, keep-alive), slow and idle connections are swept as ``katar serve`` does.
    ``connections``, if given, receives the set of the server's open connections (their
    :class:`HttpProtocol` objects), to look into."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, http=HttpProtocol, loop="none", lifespan="off", log_level="warning"
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    sweeper = None
    try:
        while not server.started:
            assert not serving.done(), "the test server did not start"
            await asyncio.sleep(0.01)
        if connections is not None:
            connections.append(server.server_state.connections)
        if timeouts is not None:
            sweeper = asyncio.create_task(sweep(server.server_state.connections, *timeouts))
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        if sweeper is not None:
            sweeper.cancel()
        server.stop()
        await asyncio.wait_for(serving, 10)
        listener.close()


class _Server(uvicorn.Server):
    """uvicorn's server, stopping as uvicorn does but without its pauses.

    uvicorn looks at ``should_exit`` ten times a second, and after asking each connection to
    shut down it waits a tenth of a second, then checks again every tenth: most of an HTTP
    test's time, when its client has already gone. Here a stop wakes it at once and the same
    steps follow, checking every few milliseconds."""

    _stopping: asyncio.Event | None = None

    def stop(self) -> None:
        self.should_exit = True
        if self._stopping is not None:
            self._stopping.set()

    async def main_loop(self) -> None:
        self._stopping = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000  # uvicorn counts tenths of a second
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()  # closes at once, or once the answer in flight is out
        # ASYNC110: uvicorn's state has no event to wait for; served bounds the wait.
        while state.connections or state.tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        for server in self.servers:
            await server.wait_closed()


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
