"""The apps and jobs of the Python peers on PostgreSQL and Redis (bench/pgpeers.py): a
procrastinate app and a Celery app, each with one job that does nothing (Celery's counts its
runs in Redis, the only way to count the runs of a prefork pool; procrastinate counts its own,
in its events table). Imported by the peers' worker commands, configured by environment."""

from __future__ import annotations

import os
from typing import Any

PROCRASTINATE_URL = os.environ.get(
    "KATAR_BENCH_PROCRASTINATE", "postgresql://postgres@127.0.0.1:5432/bench_procrastinate"
)
CELERY_REDIS = os.environ.get("KATAR_BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/14")
CELERY_RUNS = "katar-bench:celery-runs"


def noop(n: int) -> None:
    """The job."""


async def noop_async(n: int) -> None:
    """The job, for procrastinate's worker, which runs on asyncio."""


def make_procrastinate() -> Any:
    import procrastinate

    connector = procrastinate.SyncPsycopgConnector(conninfo=PROCRASTINATE_URL)
    app = procrastinate.App(connector=connector)
    app.task(name="noop")(noop)
    return app


def make_procrastinate_async() -> Any:
    """The same app for its worker."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=PROCRASTINATE_URL))
    app.task(name="noop")(noop_async)
    return app


def make_celery() -> Any:
    import celery
    import redis

    app = celery.Celery("katar-bench", broker=CELERY_REDIS)
    app.conf.task_ignore_result = True
    app.conf.worker_hijack_root_logger = False
    counter = redis.Redis.from_url(CELERY_REDIS)

    def counted_noop(n: int) -> None:
        """The job; the count is the harness's check, not the peer's work."""
        counter.incr(CELERY_RUNS)

    app.task(name="noop")(counted_noop)
    return app


PROCRASTINATE = make_procrastinate_async() if os.environ.get("KATAR_BENCH_WORKER") else None
CELERY = make_celery() if os.environ.get("KATAR_BENCH_WORKER") else None
