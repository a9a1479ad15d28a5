"""``katar serve --workers N``: N server processes on one listening socket.

One Python process runs one event loop on one core. On PostgreSQL, where several servers may
share the store, a machine with more cores serves more with several processes: the parent
binds the port, forks the processes, which each accept connections on that socket (the kernel
spreads them), each with its own engine and connection pool, as separate servers on one
database would be. The parent does nothing else: it forwards SIGTERM and SIGINT as SIGTERM
(each process then drains, as a single server does), starts again a process that dies after
it had been serving a while, and stops them all when one fails at start-up.

Written by hand: a few dozen lines of os.fork and os.waitpid; gunicorn or uvicorn's own
supervisor would bring a second server model and configuration for the same thing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

log = logging.getLogger("katar")

#: A process that ends within this many seconds of its start failed to start: the parent
#: stops them all rather than start it again and again.
STARTUP_SECONDS: Final = 10.0
#: The most processes ``--workers`` may ask for.
MAX_WORKERS: Final = 256


def serve_many(listener: socket.socket, workers: int, serve: Callable[[], None]) -> int:
    """Run ``serve()`` in ``workers`` forked processes that share ``listener`` (bound); the
    exit status: 0 after a graceful stop, 1 when a process failed to start."""
    listener.listen(2048)
    children: dict[int, float] = {}  # pid -> when it started
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without the parent's clean-up
            status = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                serve()
            except BaseException:
                log.exception("katar server process %d failed", os.getpid())
                status = 1
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = time.monotonic()

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("katar stopping its %d server processes", len(children))
        stopping = True
        for pid in list(children):
            # SIGTERM, whatever came: a second SIGINT would stop a process at once, and a
            # terminal's Ctrl-C reaches the children already.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    log.info("katar serving with %d processes (pids %s)", workers, sorted(children))
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - Python retries os.wait itself
            continue
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        exit_code = os.waitstatus_to_exitcode(code)
        if time.monotonic() - started < STARTUP_SECONDS:
            log.error(
                "katar server process %d ended at start-up (exit status %d): stopping all",
                pid,
                exit_code,
            )
            status = 1
            stop(signal.SIGTERM, None)
            continue
        log.error(
            "katar server process %d ended (exit status %d): starting another", pid, exit_code
        )
        spawn()
    listener.close()
    return status
