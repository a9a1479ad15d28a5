"""``WorkerServer``: serves a :class:`~katar.api.Katar` over HTTP with uvicorn.

Shutdown on SIGTERM or SIGINT: stop accepting connections, release every long poll (it
answers 204), let in-flight requests finish, then close the store. A second SIGINT stops at
once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from katar._version import __version__
from katar.api import Katar, Queue
from katar.errors import ConfigError
from katar.http import App, Limits

log = logging.getLogger("katar")


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Uvicorn(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, katar: Katar, started: Callable[[int], None]
    ) -> None:
        super().__init__(config)
        self.katar = katar
        self.on_started = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            self.on_started(self.servers[0].sockets[0].getsockname()[1])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.katar.engine.begin_shutdown()  # long polls answer now, not when they time out
        await super().shutdown(sockets)
        await self.katar.close()
        # uvicorn re-raises the signal it caught once it is done, which would end the
        # process with the signal's status; a graceful stop exits 0 instead.
        self._captured_signals.clear()


class WorkerServer:
    """An HTTP server that workers poll for the tasks of a :class:`Katar`'s queues."""

    def __init__(
        self,
        *,
        katar: Katar,
        port: int = 3000,
        host: str = "127.0.0.1",
        insecure: bool = False,
        limits: Limits | None = None,
        ssl: dict[str, Any] | None = None,
    ) -> None:
        self.katar = katar
        self.port = port
        self.host = host
        self.insecure = insecure
        self.limits = limits or Limits()
        #: The port actually bound, once serving (useful with port 0).
        self.bound_port: int | None = None
        self._ssl = ssl or {}
        self.app = App(katar.engine, limits=self.limits, startup=katar.open, shutdown=katar.close)

    def config(
        self, queue: Queue | str, configuration: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Set a queue's worker configuration, or with one argument, return it.

        The configuration is what ``GET /v1/queue/{queue}`` sends to workers, merged over
        ``{"interval": 30000}``.
        """
        name = queue.name if isinstance(queue, Queue) else queue
        if configuration is not None:
            self.katar.configure(name, configuration)
        return Queue(self.katar, name).options.worker_configuration()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is missing on Windows
            asyncio.run(self.serve())
            return
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self.serve())

    async def serve(self) -> None:
        """Open Katar, serve until a signal, shut down gracefully."""
        if not is_loopback(self.host) and not self.insecure:
            raise ConfigError(
                f"refusing to listen on {self.host}: no tokens are configured, so anyone who "
                "reaches the port could use every queue. Listen on 127.0.0.1, or pass "
                "--insecure (insecure=True) on an isolated network"
            )
        if not is_loopback(self.host):
            log.warning("listening on %s without authentication (--insecure)", self.host)
        await self.katar.open()
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            loop="none",
            http="httptools",
            lifespan="off",  # Katar is opened above and closed by _Uvicorn.shutdown
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,  # Katar does not use client addresses
            timeout_graceful_shutdown=30,
            **self._ssl,
        )
        server = _Uvicorn(config, self.katar, self._started)
        try:
            listener = self._listen()
            await server.serve(sockets=[listener])
        finally:
            await self.katar.close()

    def _listen(self) -> socket.socket:
        """Bind the listening socket here, so that a port in use is a clear start-up error."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host.strip("[]"), self.port))
        except OSError as exc:
            listener.close()
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        return listener

    def _started(self, port: int) -> None:
        self.bound_port = port
        scheme = "https" if self._ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        queues = ", ".join(sorted(self.katar.engine.queues)) or "none yet"
        log.info(
            "katar %s serving on %s://%s:%d, store %s, queues: %s",
            __version__,
            scheme,
            host,
            port,
            self.katar.store_url,
            queues,
        )
