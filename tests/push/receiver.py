"""A real push receiver for the tests: a plain ASGI app served by uvicorn on a loopback port,
which verifies each push with the unmodified ``standardwebhooks`` library and answers as the
test scripts it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import standardwebhooks
import uvicorn


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering
    content_type: bytes = b"application/json"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def task(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class Receiver:
    """Records every push; ``script(received) -> Answer`` decides each answer."""

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.received: list[Received] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.script: Callable[[Received], Answer] = lambda received: Answer()
        self.port = 0
        self.arrived = asyncio.Event()

    def verify(self, body: bytes, headers: dict[str, str]) -> bool:
        for secret in self.secrets:
            try:
                standardwebhooks.Webhook(secret).verify(body, headers)
                return True
            except standardwebhooks.WebhookVerificationError:
                continue
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        received = Received(headers, body, self.verify(body, headers))
        self.received.append(received)
        self.arrived.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            answer = self.script(received)
            if answer.delay:
                await asyncio.sleep(answer.delay)
        finally:
            self.in_flight -= 1
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(b"content-type", answer.content_type), *answer.headers],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    async def wait_for(self, count: int, seconds: float = 20.0) -> None:
        async with asyncio.timeout(seconds):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def serving(
    receiver: Receiver, port: int = 0, tls: tuple[str, str] | None = None
) -> AsyncIterator[uvicorn.Server]:
    """``receiver`` on a loopback port; with ``tls`` (certificate, key files), over HTTPS."""
    config = uvicorn.Config(
        receiver,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="off",
        loop="none",
        ssl_certfile=None if tls is None else tls[0],
        ssl_keyfile=None if tls is None else tls[1],
    )
    server = uvicorn.Server(config)
    job = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event)
            await asyncio.sleep(0.01)
    receiver.port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        server.should_exit = True
        await job
