"""The ceiling: a bare ASGI app that answers a small JSON POST, on the server and settings
``katar serve`` runs (uvicorn, uvloop, httptools, no access log). ``katar serve`` itself
answers through its own HTTP protocol (katar.http.connection) in place of uvicorn's ASGI
one: bench/run measures that floor too.

    python -m bench.ceiling PORT
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]
BODY = b'{"tasks":[{"_id":"1","data":{"n":1},"attempt":1}]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def serve(asgi: Callable[..., Awaitable[None]], port: int) -> None:
    """Serve ``asgi`` on uvicorn as ``katar serve`` is set up: every bare baseline runs
    through this."""
    uvicorn.run(
        asgi,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    serve(app, int(sys.argv[1]))
