"""The peers a Python team would weigh against Katar, measured the same way: N jobs put on
a queue by one client, then drained by four consumers.

- beanstalkd (Debian's package; greenstalk): put, then reserve + delete.
- Huey on SQLite: enqueue, then drain with its consumer (4 threads).
- RQ on Redis: enqueue, then drain with 4 ``rq worker --burst`` processes (SimpleWorker).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("KATAR_BENCH_REDIS", "redis://127.0.0.1:6379/15")


def _beanstalk_consume(port: int) -> None:
    import greenstalk

    with greenstalk.Client(("127.0.0.1", port)) as client:
        while True:
            try:
                job = client.reserve(timeout=0)
            except greenstalk.TimedOutError:
                return
            client.delete(job)


def beanstalkd(jobs: int, consumers: int = 4) -> dict[str, float]:
    import greenstalk

    port = free_port()
    server = subprocess.Popen(["beanstalkd", "-l", "127.0.0.1", "-p", str(port)])
    try:
        wait_for_port(port)
        with greenstalk.Client(("127.0.0.1", port)) as client:
            started = time.perf_counter()
            for n in range(jobs):
                client.put(f'{{"n": {n}}}')
            put_rate = jobs / (time.perf_counter() - started)
        started = time.perf_counter()
        workers = [
            multiprocessing.Process(target=_beanstalk_consume, args=(port,))
            for _ in range(consumers)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return {"enqueue_per_s": put_rate, "drain_per_s": jobs / (time.perf_counter() - started)}
    finally:
        server.terminate()
        server.wait(10)


def huey(jobs: int, consumers: int = 4) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="katar-huey-"))
    os.environ["KATAR_BENCH_HUEY_DB"] = str(workdir / "huey.db")
    try:
        from bench import peer_tasks

        queue = peer_tasks.make_huey()
        started = time.perf_counter()
        task = queue.task()(peer_tasks.noop)
        for n in range(jobs):
            task(n)
        enqueue_rate = jobs / (time.perf_counter() - started)
        started = time.perf_counter()
        consumer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "huey.bin.huey_consumer",
                "bench.peer_tasks.HUEY",
                "-w",
                str(consumers),
                "-k",
                "thread",
                "-q",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            while queue.pending_count():
                time.sleep(0.01)
            drain_rate = jobs / (time.perf_counter() - started)
        finally:
            consumer.terminate()
            consumer.wait(30)
        return {"enqueue_per_s": enqueue_rate, "drain_per_s": drain_rate}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rq(jobs: int, consumers: int = 4) -> dict[str, float]:
    from redis import Redis
    from rq import Queue

    from bench import peer_tasks

    connection = Redis.from_url(REDIS_URL)
    queue = Queue("katar-bench", connection=connection)
    queue.empty()
    started = time.perf_counter()
    for n in range(jobs):
        queue.enqueue(peer_tasks.noop, n)
    enqueue_rate = jobs / (time.perf_counter() - started)
    started = time.perf_counter()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rq.cli",
                "worker",
                "--burst",
                "--quiet",
                "--worker-class",
                "rq.worker.SimpleWorker",  # no fork per job: RQ's fastest setting
                "--url",
                REDIS_URL,
                "katar-bench",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(consumers)
    ]
    for worker in workers:
        worker.wait(3600)
    drain_rate = jobs / (time.perf_counter() - started)
    left = len(queue)
    if left:
        raise RuntimeError(f"RQ left {left} jobs")
    return {"enqueue_per_s": enqueue_rate, "drain_per_s": drain_rate}
