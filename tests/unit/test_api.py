"""The Python API: Katar, its queues, and callbacks, without HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest

from katar import Katar, KatarError, QueueOptions, WorkerServer
from katar.errors import IllegalTransition, QueueNotFound, TaskNotFound, ValidationError


async def test_produce_inspect_and_change_tasks(make_url: Callable[[], str]) -> None:
    katar = Katar(make_url())
    queue = katar.queue("emails", persistent=True, timeout=30000)
    assert queue.options.timeout == 30000
    async with katar:
        first = await queue.enqueue({"to": "a@b"}, priority="high")
        later = await queue.enqueue("later", delay=60)
        paused = await queue.enqueue("p", paused=True)
        assert (first.status, later.status, paused.status) == ("queued", "queued", "paused")
        assert msgspec.json.decode(first.data) == {"to": "a@b"}
        assert first.priority == 10
        assert later.run_at is not None
        many = await queue.enqueue_many(range(3), priority=-1)
        assert [msgspec.json.decode(t.data) for t in many] == [0, 1, 2]
        assert [t.id for t in await queue.tasks("paused")] == [paused.id]
        assert len(await queue.tasks(["queued", "paused"], limit=2)) == 2
        assert (await queue.pause(first.id)).status == "paused"
        assert (await queue.resume(str(first.id))).status == "queued"
        assert (await queue.cancel(first.id)).status == "cancelled"
        with pytest.raises(IllegalTransition):
            await queue.pause(first.id)
        await queue.delete(paused.id)
        with pytest.raises(TaskNotFound):
            await queue.get(paused.id)
        with pytest.raises(TaskNotFound):
            await queue.get("nope")
        assert (await katar.engine.stats())["emails"]["cancelled"] == 1


async def test_wait_for_an_outcome_from_python(make_url: Callable[[], str]) -> None:
    async with Katar(make_url(), reap_interval=0.02) as katar:
        queue = await katar.put_queue("jobs", persistent=False)
        task = await queue.enqueue(1)
        waiter = asyncio.create_task(queue.get(task.id, wait=5))
        await asyncio.sleep(0.1)  # the waiter is parked before the task finishes
        (delivered,) = await katar.engine.poll("jobs")
        from katar.core.model import Ack

        await katar.engine.poll("jobs", [Ack(task_id=str(delivered.id), status="done")], limit=0)
        finished = await asyncio.wait_for(waiter, 3)
        assert finished.status == "done"


@pytest.mark.parametrize("persistent", [True, False], ids=["history", "no-history"])
async def test_a_done_listener_sees_tasks_finished_together(
    make_url: Callable[[], str], persistent: bool
) -> None:
    # Unwatched, a store may skip building finished tasks (Store.watch); a "done" listener
    # watches, so it must get every one, with the worker's result, whether the acks came
    # one per poll (served together) or many in one.
    from katar.core.model import Ack

    katar = Katar(make_url())
    queue = katar.queue("q", persistent=persistent)
    seen: list[tuple[int, object]] = []
    queue.on("done", lambda task: seen.append((task.id, msgspec.json.decode(task.result or b""))))
    async with katar:
        tasks = await queue.enqueue_many(range(6))
        held = await katar.engine.poll("q", limit=6)

        def done(task_id: int) -> Ack:
            return Ack(task_id=str(task_id), status="done", result=msgspec.Raw(b"%d" % task_id))

        singles = [katar.engine.poll("q", [done(t.id)], limit=0) for t in held[:3]]
        await asyncio.gather(*singles)
        await katar.engine.poll("q", [done(t.id) for t in held[3:]], limit=0)
    assert sorted(seen) == [(t.id, t.id) for t in tasks]


async def test_callbacks_see_every_status_change(make_url: Callable[[], str]) -> None:
    katar = Katar(make_url(), reap_interval=0.02)
    queue = katar.queue("q", persistent=True, timeout=50, max_attempts=1)
    seen: list[str] = []
    queue.on("in progress", lambda task: seen.append(task.status))
    katar.on("*.failed", lambda task: seen.append(f"{task.queue} {task.error}"))
    async with katar:
        await queue.enqueue(1)
        await katar.engine.poll("q")

        async def failed() -> None:
            # ASYNC110: polling a flag set by another thread or process, which cannot set an asyncio event.
            while len(seen) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        await asyncio.wait_for(failed(), 5)
    assert seen[0] == "in progress"
    assert seen[1].startswith("q lease expired")


def test_bad_declarations_fail_early() -> None:
    katar = Katar("memory://")
    with pytest.raises(ValidationError, match="unknown queue option 'timout'"):
        katar.queue("q", timout=5)
    with pytest.raises(ValidationError, match="invalid queue name"):
        katar.queue("no spaces")
    with pytest.raises(ValidationError, match="invalid event"):
        katar.on("q.finished", print)
    with pytest.raises(KatarError, match="unknown store scheme"):
        Katar("redis://localhost")


async def test_declared_queues_replace_stored_options(make_url: Callable[[], str]) -> None:
    url = make_url()
    async with Katar(url) as katar:
        await katar.put_queue("q", timeout=1234)
        with pytest.raises(KatarError, match="before Katar opens"):
            katar.queue("q", timeout=5)
        with pytest.raises(QueueNotFound):
            await katar.queue("missing").enqueue(1)


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_a_pause_outlasts_a_restart_that_declares_the_queue(
    make_url: Callable[[], str],
) -> None:
    url = make_url()
    katar = Katar(url)
    katar.queue("q", timeout=1000)
    async with katar:
        await katar.engine.patch_queue("q", {"paused": True})
    again = Katar(url)
    again.queue("q", timeout=2000)  # the file changed, and says nothing of a pause
    async with again:
        options = again.engine.options("q")
        assert (options.timeout, options.paused) == (2000, True)
        await again.engine.patch_queue("q", {"paused": False})
        assert not again.engine.options("q").paused


def test_worker_server_config_mirrors_the_original() -> None:
    katar = Katar("memory://")
    queue = katar.queue("emails", persistent=False)
    server = WorkerServer(katar=katar, port=3000, host="127.0.0.1")
    assert server.config("emails") == {"interval": 30000}
    server.config(queue, {"interval": 1000, "custom": "config"})
    assert server.config("emails") == {"interval": 1000, "custom": "config"}
    assert katar.declared("emails") == QueueOptions(
        persistent=False, configuration={"interval": 1000, "custom": "config"}
    )
    with pytest.raises(ValidationError):
        server.config("emails", {"interval": "often"})


async def test_nul_in_a_worker_name_or_an_error_is_refused_through_the_engine(
    make_url: Callable[[], str],
) -> None:
    # The same answer on every store, from the Python API as from HTTP: a ValidationError
    # that names the field, and nothing changed.
    from katar.core.model import Ack

    katar = Katar(make_url())
    queue = katar.queue("q", persistent=True)
    async with katar:
        task = await queue.enqueue({"nul": "\u0000"})
        with pytest.raises(ValidationError, match="worker"):
            await katar.engine.poll("q", (), 1, 0, "w\u0000")
        (delivered,) = await katar.engine.poll("q", (), 1, 0, "w1")
        assert msgspec.json.decode(delivered.data) == {"nul": "\u0000"}
        failed = Ack(task_id=str(task.id), status="failed", error="x\u0000y")
        with pytest.raises(ValidationError, match=r"tasks\[0\].error") as refused:
            await katar.engine.poll("q", [failed], 0, 0, "w1")
        assert refused.value.details["ack"] == 0
        assert (await queue.get(task.id)).status == "in progress"


@pytest.mark.parametrize(
    ("host", "shown"), [("::1", "[::1]"), ("[::1]", "[::1]"), ("127.0.0.1", "127.0.0.1")]
)
def test_the_start_line_shows_an_ipv6_host_in_one_pair_of_brackets(
    host: str, shown: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = WorkerServer(katar=Katar("memory://"), host=host, port=0)
    with caplog.at_level("INFO", logger="katar"):
        server._started(3000)
    assert f"serving on http://{shown}:3000," in caplog.text


async def test_a_declared_queue_that_replaces_stored_options_says_so(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    # The README's [queues.emails] reset the queue made over HTTP (persistent, its interval)
    # with no word at start-up.
    url = f"sqlite:///{tmp_path}/k.db"
    async with Katar(url) as first:
        await first.put_queue("emails", persistent=True, configuration={"interval": 1000})
        await first.put_queue("same", timeout=5000)
    again = Katar(url)
    again.queue("emails")
    again.queue("same", timeout=5000)
    with caplog.at_level("WARNING", logger="katar"):
        async with again:
            assert not again.engine.options("emails").persistent
    (line,) = [
        r.getMessage() for r in caplog.records if "replaces its stored options" in r.getMessage()
    ]
    assert line == (
        "queue emails: the configuration file's [queues.emails] replaces its stored options: "
        "configuration {'interval': 1000} -> {}, persistent True -> False"
    )


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_an_enqueue_carries_the_trace_context_given_or_current(
    make_url: Callable[[], str],
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    async with Katar(make_url()) as katar:
        queue = await katar.put_queue("q")
        given = await queue.enqueue(1, traceparent=TRACEPARENT, tracestate="rojo=1")
        assert msgspec.json.decode(given.trace or b"") == {
            "traceparent": TRACEPARENT,
            "tracestate": "rojo=1",
        }
        assert (await queue.get(given.id)).trace == given.trace  # stored
        assert (await queue.enqueue(2)).trace is None  # no context: none
        # the current OpenTelemetry span's, when none is given
        tracer = TracerProvider().get_tracer("app")
        with tracer.start_as_current_span("request") as span:
            (current,) = await queue.enqueue_many([3])
        context = span.get_span_context()
        traceparent = msgspec.json.decode(current.trace or b"")["traceparent"]
        assert traceparent[:-2] == f"00-{context.trace_id:032x}-{context.span_id:016x}-"
        assert int(traceparent[-2:], 16) & 1  # sampled
        assert trace.get_current_span() is not span
        with pytest.raises(ValidationError, match="not a W3C traceparent"):
            await queue.enqueue(4, traceparent="00-nope")
        with pytest.raises(ValidationError, match="tracestate needs a traceparent"):
            await queue.enqueue(4, tracestate="rojo=1")


async def test_run_at_holds_a_task_and_debounces(make_url: Callable[[], str]) -> None:
    from datetime import UTC, datetime, timedelta

    async with Katar(make_url()) as katar:
        queue = await katar.put_queue("later", persistent=True)
        at = datetime.now(UTC) + timedelta(hours=1)
        task = await queue.enqueue("x", run_at=at)
        assert task.run_at == round(at.timestamp() * 1000)
        assert await katar.engine.poll("later") == []  # not due yet
        first = await queue.enqueue(1, run_at=at, debounce_key="k")
        second = await queue.enqueue(2, run_at=at + timedelta(minutes=1), debounce_key="k")
        assert second.id == first.id
        assert second.debounced
        assert second.run_at == round((at + timedelta(minutes=1)).timestamp() * 1000)
        with pytest.raises(ValidationError, match="not both"):
            await queue.enqueue("x", run_at=at, delay=5)
        with pytest.raises(ValidationError, match="time zone"):
            await queue.enqueue("x", run_at=datetime.now())
        with pytest.raises(ValidationError, match="ten years"):
            await queue.enqueue("x", run_at=at + timedelta(days=3700))
        assert len(await queue.tasks()) == 2  # the refused ones changed nothing


async def test_redrive_from_python(make_url: Callable[[], str]) -> None:
    from katar.core.model import Ack

    async with Katar(make_url()) as katar:
        await katar.put_queue("dead", persistent=True)
        work = await katar.put_queue("work", persistent=True, max_attempts=1, dead_letter="dead")
        dead = katar.queue("dead")
        for n in range(3):
            await work.enqueue(n)
        polled = await katar.engine.poll("work", limit=3)
        acks = [Ack(task_id=str(t.id), status="failed", error="boom") for t in polled]
        await katar.engine.poll("work", acks, limit=0)
        assert len(await dead.tasks("queued")) == 3
        with pytest.raises(ValidationError, match="unknown status"):
            await dead.redrive(status="nope")
        one = await dead.redrive(ids=[polled[0].id])
        assert (one.matched, one.moved) == (1, 1)
        rest = await dead.redrive(status="queued")
        assert (rest.matched, rest.moved) == (2, 2)
        assert len(await work.tasks("queued")) == 3
        polled = await katar.engine.poll("work", limit=3)
        acks = [Ack(task_id=str(t.id), status="failed", error="again") for t in polled]
        await katar.engine.poll("work", acks, limit=0)
        job = await dead.start_redrive(1000.0, key=None)
        assert job.queue == "dead"
        assert job.state in ("running", "completed")
        assert (await dead.redrive_job()).id == job.id
        for _ in range(200):  # a rated redrive runs in the background
            if (await dead.redrive_job()).state == "completed":
                break
            await asyncio.sleep(0.05)
        assert (await dead.redrive_job()).moved == 3
