"""``WorkerServer``: serves a :class:`~katar.api.Katar` over HTTP with uvicorn.

Shutdown on SIGTERM or SIGINT: stop accepting connections, release every long poll (it
answers 204), let in-flight requests finish, then close the store. A second SIGINT stops at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import uvicorn

from katar._version import __version__
from katar.api import Katar, Queue
from katar.auth import AwsCredential
from katar.errors import ConfigError
from katar.http import App, Limits
from katar.http.auth import Token
from katar.http.connection import HttpProtocol, sweep
from katar.http.sites import check_host_pattern
from katar.logs import configure as configure_logs
from katar.logs import mask_credentials
from katar.push import Allow, Dispatcher
from katar.sqs import Front

log = logging.getLogger("katar")


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_name(host: str) -> bool:
    """Whether ``host`` (--host) is a name, to answer as a Host (addresses always are)."""
    try:
        check_host_pattern(host)
    except ValueError:
        return False
    return not host.startswith(".") and host != "*"


class _Uvicorn(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        katar: Katar,
        limits: Limits,
        started: Callable[[int], None],
        pusher: Dispatcher,
    ) -> None:
        super().__init__(config)
        self.katar = katar
        self.pusher = pusher
        self.limits = limits
        self.on_started = started
        self._sweeper: asyncio.Task[None] | None = None
        self._wake_on_exit: Callable[[], object] = lambda: None

    async def main_loop(self) -> None:
        # uvicorn ticks ten times a second to notice a signal; on a virtual machine each
        # wake-up of an idle server costs CPU. Tick once a second (the Date header's
        # resolution), and wake at once on a signal (handle_exit).
        self._exit_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._wake_on_exit = lambda: loop.call_soon_threadsafe(self._exit_requested.set)
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864_000  # uvicorn counts tenths of a second
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), 1.0)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._wake_on_exit()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            sweeper = sweep(
                self.server_state.connections,
                self.limits.head_timeout,
                self.limits.body_timeout,
                self.config.timeout_keep_alive,
            )
            self._sweeper = asyncio.create_task(sweeper, name="katar-sweeper")
            self.on_started(self.servers[0].sockets[0].getsockname()[1])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        log.info("katar stopping: finishing the requests in flight")
        self.katar.engine.begin_shutdown()  # long polls answer now, not when they time out
        await super().shutdown(sockets)
        await self.pusher.stop()  # the pushes in flight end (or their leases run out)
        await self.katar.close()
        log.info("katar stopped")
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
        tokens: Iterable[Token] = (),
        tls_cert: str | None = None,
        tls_key: str | None = None,
        access_log: bool = False,
        allowed_hosts: Iterable[str] = (),
        aws_credentials: Iterable[AwsCredential] = (),
        push_allow: Iterable[str] = (),
        otlp_endpoint: str | None = None,
    ) -> None:
        """``allowed_hosts``: without tokens, the Host names answered beside loopback names,
        addresses and ``host`` (katar.http.sites.Hosts). ``aws_credentials``: the access keys
        that sign requests to the SQS API (katar.sqs); without them and without tokens, that
        API is open as the rest is. ``push_allow``: the hosts, host:port and URL prefixes that
        push queues may reach beside public addresses ([push] allow). ``otlp_endpoint``: the
        collector the server exports its spans to over OTLP/HTTP (katar.tracing)."""
        self.katar = katar
        self.port = port
        self.host = host
        self.insecure = insecure
        self.limits = limits or Limits()
        self.tokens = tuple(tokens)
        self.aws_credentials = tuple(aws_credentials)
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("TLS needs both a certificate (tls_cert) and its key (tls_key)")
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        if otlp_endpoint is not None:
            _check_otlp(otlp_endpoint)
        self.otlp_endpoint = otlp_endpoint
        #: The port actually bound, once serving (useful with port 0).
        self.bound_port: int | None = None
        hosts = [host, *allowed_hosts]
        for pattern in hosts[1:]:
            try:
                check_host_pattern(pattern)
            except ValueError as exc:
                raise ConfigError(f"[server] allowed_hosts (--allowed-host): {exc}") from None
        try:
            allow = Allow(push_allow)
        except ValueError as exc:
            raise ConfigError(f"[push] allow: {exc}") from None
        #: The push dispatcher (katar.push): started once Katar is open, stopped before it
        #: closes; its check refuses push URLs that the outbound safety never allows.
        self.pusher = Dispatcher(katar.engine, allow)
        katar.engine.option_checks.append(self.pusher.check)
        self.sqs = Front(
            katar.engine,
            credentials=self.aws_credentials,
            guarded=bool(self.tokens),
            scheme="https" if tls_cert else "http",
            limits=self.limits,
        )
        self.app = App(
            katar.engine,
            limits=self.limits,
            tokens=self.tokens,
            startup=katar.open,
            shutdown=katar.close,
            access_log=access_log,
            allowed_hosts=hosts if _is_name(host) else hosts[1:],
            sqs=self.sqs,
        )

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

    def run(self, listener: socket.socket | None = None) -> None:
        """Serve until SIGTERM or SIGINT; on ``listener`` (bound) when given, as each of
        ``katar serve --workers N``'s processes does.

        A program that has not configured logging gets Katar's own (info lines on standard
        error), so that it says where it serves, as ``katar serve`` does: Python's default
        would show warnings only, and the server would start in silence."""
        if not log.hasHandlers():
            configure_logs()
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is missing on Windows
            asyncio.run(self.serve(listener))
            return
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self.serve(listener))

    async def serve(self, listener: socket.socket | None = None) -> None:
        """Open Katar, serve until a signal, shut down gracefully."""
        self.check_exposure()
        ssl = self._ssl_options()
        if self.otlp_endpoint is not None:
            # Made here, in the process that serves: the export thread does not survive
            # the fork of katar serve --workers N.
            from katar.tracing import Tracing

            self.app.tracing = Tracing(self.otlp_endpoint)
            self.pusher.tracing = self.app.tracing  # each traced push: a process span
            self.sqs.actions.tracing = self.app.tracing
            # An ack may come to another server than the delivery: its settle span takes
            # the context from the task's row, which the store then hands back.
            self.katar.engine.trace_settles = self.katar.engine.store.shared
            # ... and then the delivery's own contexts need not be remembered for it.
            self.app.tracing.remember = not self.katar.engine.trace_settles
            log.info("exporting spans over OTLP/HTTP to %s", self.app.tracing.endpoint)
        await self.katar.open()
        self.app.throughput.start()  # the app's lifespan is off: the server runs it
        self.pusher.start()
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            loop="none",
            http=HttpProtocol,
            lifespan="off",  # Katar is opened above and closed by _Uvicorn.shutdown
            log_level="warning",
            log_config=None,  # its lines go to Katar's handlers, in Katar's format
            access_log=False,
            server_header=False,
            proxy_headers=False,  # Katar does not use client addresses
            timeout_graceful_shutdown=30,
            **ssl,
        )
        server = _Uvicorn(config, self.katar, self.limits, self._started, self.pusher)
        try:
            await server.serve(sockets=[listener or self.listen()])
        finally:
            await self.pusher.stop()
            await self.app.throughput.stop()
            await self.katar.close()
            tracing, self.app.tracing = self.app.tracing, None
            self.pusher.tracing = self.sqs.actions.tracing = None
            if tracing is not None:  # the spans queued, exported (in a thread: it blocks)
                await asyncio.to_thread(tracing.shutdown)

    def check_exposure(self) -> None:
        """Refuse an open server on a reachable address; warn about what remains exposed."""
        if is_loopback(self.host):
            return
        if not self.tokens and not self.insecure:
            raise ConfigError(
                f"refusing to listen on {self.host}: no tokens are configured, so anyone who "
                "reaches the port could use every queue. Configure [[tokens]] (see `katar "
                "token`), listen on 127.0.0.1, or pass --insecure (insecure=True) on an "
                "isolated network"
            )
        if not self.tokens:
            log.warning(
                "INSECURE: listening on %s with no tokens (--insecure): anyone who reaches the "
                "port can read, change and delete every queue",
                self.host,
            )
        elif self.tls_cert is None:
            log.warning(
                "listening on %s without TLS: tokens and tasks cross the network in clear "
                "text unless a TLS-terminating proxy is in front (--tls-cert, --tls-key)",
                self.host,
            )

    def _ssl_options(self) -> dict[str, Any]:
        """uvicorn's TLS settings; the files are checked here for a clear start-up error."""
        if self.tls_cert is None or self.tls_key is None:
            return {}
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use the TLS certificate {self.tls_cert!r} with the key "
                f"{self.tls_key!r}: {exc}"
            ) from exc
        return {"ssl_certfile": self.tls_cert, "ssl_keyfile": self.tls_key}

    def listen(self) -> socket.socket:
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
        scheme = "https" if self.tls_cert else "http"
        bare = self.host.strip("[]")  # --host may be given as ::1 or as [::1]
        host = f"[{bare}]" if ":" in bare else bare
        queues = ", ".join(sorted(self.katar.engine.queue_options())) or "none yet"
        access = f"{len(self.tokens)} tokens" if self.tokens else "open (no tokens)"
        log.info(
            "katar %s serving on %s://%s:%d, store %s, access: %s, queues: %s",
            __version__,
            scheme,
            host,
            port,
            mask_credentials(self.katar.store_url),
            access,
            queues,
        )


def _check_otlp(endpoint: str) -> None:
    """ConfigError unless ``endpoint`` is an http(s) URL, and, for https, unless the TLS
    files the standard variables name load (katar.tracing.tls_context)."""
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"the OTLP endpoint must be an http:// or https:// URL, not {endpoint[:80]!r}"
        )
    if endpoint.startswith("https://"):
        from katar.tracing import tls_context

        tls_context()
