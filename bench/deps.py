"""Dependencies at scale, on the stores themselves (no HTTP): a fan-out of 10,000 children
waiting on one parent, and a fan-in of one child waiting on 10,000 parents.

    python -m bench.deps [--children 10000] [--postgres postgresql://...]

Figures (seconds): the enqueue of the waiting tasks; the parent's 10,000 children, and the
child's 10,000 parents, read 100 a page (Store.linked, as GET .../children and .../parents
page them; the slowest page too); the one "done" that releases 10,000 children (one
transaction); the fan-in's parents finished 100 per poll, and the delivery of the child
with its 10,000 results. PostgreSQL runs in a schema of its own, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from katar.core.model import Ack, NewTask, QueueOptions, State
from katar.store import Store, open_store

OPTIONS = QueueOptions(persistent=False, timeout=600_000, max_batch=10_000)
T0 = 1_700_000_000_000


async def timed(job: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await job()
    return time.perf_counter() - start, result


def task(data: object, after: tuple[int, ...] = ()) -> NewTask:
    return NewTask(data=msgspec.Raw(msgspec.json.encode(data)), after=after)


async def pages(store: Store, queue: str, task_id: int, parents: bool) -> dict[str, float]:
    """Every task linked to ``task_id`` read 100 a page: the whole, and the slowest page."""
    after, slowest, total, count = 0, 0.0, 0.0, 0
    while True:
        took, page = await timed(partial(store.linked, queue, task_id, 100, after, None, parents))
        assert page is not None
        total, slowest = total + took, max(slowest, took)
        if not page:
            return {"read_all": total, "slowest_page": slowest, "tasks": count}
        count += len(page)
        after = page[-1].id


async def fan_out(store: Store, children: int) -> dict[str, float]:
    await store.save_queue("out", OPTIONS)
    (parent,) = await store.enqueue("out", [task("parent")], T0)
    waiting = [task(i, (parent.id,)) for i in range(children)]
    enqueue, _ = await timed(lambda: store.enqueue("out", waiting, T0))
    listed = await pages(store, "out", parent.id, parents=False)
    assert listed["tasks"] == children, listed
    (claimed,) = (await store.poll("out", OPTIONS, [], 1, "w", T0)).delivered
    done = Ack(task_id=str(claimed.id), status="done", result=msgspec.Raw(b'{"rows":42}'))
    release, result = await timed(lambda: store.poll("out", OPTIONS, [done], 0, "w", T0 + 1))
    released = sum(1 for change in result.changes if change.task.state is State.READY)
    assert released == children, released
    return {
        "enqueue": enqueue,
        "children_read_all": listed["read_all"],
        "children_slowest_page": listed["slowest_page"],
        "release": release,
    }


async def fan_in(store: Store, parents: int) -> dict[str, float]:
    await store.save_queue("in", OPTIONS)
    made = await store.enqueue("in", [task(i) for i in range(parents)], T0)
    enqueue, (child,) = await timed(
        lambda: store.enqueue("in", [task("sum", tuple(t.id for t in made))], T0)
    )
    listed = await pages(store, "in", child.id, parents=True)
    assert listed["tasks"] == parents, listed

    async def finish_all() -> None:
        claimed = (await store.poll("in", OPTIONS, [], parents, "w", T0)).delivered
        for start in range(0, len(claimed), 100):
            acks = [
                Ack(task_id=str(t.id), status="done", result=msgspec.Raw(b"1"))
                for t in claimed[start : start + 100]
            ]
            await store.poll("in", OPTIONS, acks, 0, "w", T0 + 1)

    finish, _ = await timed(finish_all)
    deliver, result = await timed(lambda: store.poll("in", OPTIONS, [], 1, "w", T0 + 2))
    (delivered,) = result.delivered
    assert delivered.after is not None
    assert len(msgspec.json.decode(delivered.after)) == parents
    return {
        "enqueue": enqueue,
        "parents_read_all": listed["read_all"],
        "parents_slowest_page": listed["slowest_page"],
        "parents_done": finish,
        "deliver": deliver,
    }


async def measure(url: str, count: int) -> dict[str, dict[str, float]]:
    store = open_store(url)
    await store.open()
    try:
        return {"fan_out": await fan_out(store, count), "fan_in": await fan_in(store, count)}
    finally:
        await store.close()


def drop_schema(postgres: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--postgres", default="", help="a PostgreSQL URL to measure too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'deps.db'}"
        print("sqlite", asyncio.run(measure(url, args.children)))
    if args.postgres:
        schema = f"katar_bench_{uuid.uuid4().hex[:8]}"
        separator = "&" if "?" in args.postgres else "?"
        try:
            url = f"{args.postgres}{separator}schema={schema}"
            print("postgres", asyncio.run(measure(url, args.children)))
        finally:
            drop_schema(args.postgres, schema)


if __name__ == "__main__":
    main()
