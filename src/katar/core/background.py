"""The background jobs of the engine's parts (the reaper, the scheduler, the reload of the
queues' options, the pruner): each part starts its own, and stops it the same way."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop(job: asyncio.Task[Any] | None) -> None:
    """Cancel ``job`` (None: nothing runs) and wait until it has ended."""
    if job is not None:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
