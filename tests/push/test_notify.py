"""Completion webhooks (the ``notify`` option) end to end: a Katar engine, its push dispatcher
(which runs the notify sender) and a real receiver on a loopback port (allowed explicitly),
which checks every signature with the unmodified ``standardwebhooks`` library."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest

from katar import Katar
from katar.client import _calls as calls
from katar.core.model import Ack, QueueOptions, Task, parse_queue_options
from katar.errors import ValidationError
from katar.http import App
from katar.push import Allow, Dispatcher
from tests.conftest import store_url
from tests.http.conftest import app_client, opened
from tests.push.conftest import ALLOW
from tests.push.receiver import Answer, Received, Receiver, serving

pytestmark = pytest.mark.xdist_group(name="push")


async def notify_queue(katar: Katar, port: int, name: str = "jobs", **options: Any) -> QueueOptions:
    notify = {"url": f"http://127.0.0.1:{port}/events", **options.pop("notify", {})}
    made = await katar.engine.put_queue(
        name,
        parse_queue_options({"persistent": True, "retry_delay": 10, "notify": notify, **options}),
    )
    assert made.notify is not None
    assert made.notify.secret is not None
    return made


def events(received: list[Received]) -> list[tuple[str, str]]:
    return [(r.task["task"]["_id"], r.task["type"]) for r in received]


async def settle(katar: Katar, queue: str, acks: list[dict[str, Any]]) -> None:
    """Take as many ready tasks of the queue as ``acks`` has, then ack them as ``acks`` say,
    by position."""
    engine = katar.engine
    taken = await engine.poll(queue, (), len(acks), 0.0, "test")
    assert len(taken) == len(acks)
    await engine.poll(
        queue,
        [
            Ack(
                task_id=task.id,
                attempt=task.attempts,
                status=ack["status"],
                error=ack.get("error"),
                result=msgspec.Raw(msgspec.json.encode(ack.get("result"))),
            )
            for task, ack in zip(taken, acks, strict=True)
        ],
        0,
        0.0,
        "test",
    )


async def test_each_end_arrives_signed_with_its_type_and_record(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    made = await notify_queue(katar, receiver.port, max_attempts=1, dead_letter="dead")
    assert made.notify is not None
    assert made.notify.secret is not None
    receiver.secrets.append(made.notify.secret)
    queue = katar.queue("jobs")
    done, failed, cancelled = [(await queue.enqueue({"n": n})).id for n in range(3)]
    await queue.cancel(cancelled)
    await settle(katar, "jobs", [{"status": "done", "result": {"ok": 1}}, {"status": "failed"}])
    await receiver.wait_for(3)
    assert all(r.verified for r in receiver.received)
    got = {r.task["task"]["_id"]: r.task for r in receiver.received}
    assert got[str(done)]["type"] == "task.done"
    assert got[str(done)]["task"]["status"] == "done"
    assert got[str(done)]["task"]["result"] == {"ok": 1}
    assert got[str(cancelled)]["type"] == "task.cancelled"
    assert got[str(cancelled)]["task"]["status"] == "cancelled"
    # max_attempts 1 and a dead-letter queue: the failed task moves, queued, to "dead".
    assert got[str(failed)]["type"] == "task.dead_lettered"
    assert got[str(failed)]["task"]["queue"] == "dead"
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(set(ids)) == 3
    async with asyncio.timeout(10):  # counted once the answer is read
        while katar.engine.counters.notifies.get(("jobs", "sent")) != 3:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_failed_and_the_events_asked_for_only(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    made = await notify_queue(katar, receiver.port, max_attempts=1, notify={"events": ["failed"]})
    assert made.notify is not None
    assert made.notify.secret is not None
    receiver.secrets.append(made.notify.secret)
    queue = katar.queue("jobs")
    first = (await queue.enqueue(1)).id
    second = (await queue.enqueue(2)).id
    await settle(katar, "jobs", [{"status": "done"}, {"status": "failed", "error": "no"}])
    await receiver.wait_for(1)
    await asyncio.sleep(0.3)  # a "done" event would have come by now
    assert events(receiver.received) == [(str(second), "task.failed")]
    assert receiver.received[0].task["task"]["error"] == "no"
    assert receiver.received[0].verified
    assert first != second


async def test_an_endpoint_down_then_back_gets_every_event_in_order(
    katar: Katar, dispatcher: Dispatcher
) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    made = await notify_queue(katar, port, max_attempts=0)
    assert made.notify is not None
    assert made.notify.secret is not None
    queue = katar.queue("jobs")
    ids = [(await queue.enqueue(n)).id for n in range(3)]
    # Each task: failed, then retried by an operator and done: two events per task.
    await settle(katar, "jobs", [{"status": "failed"}] * 3)
    async with asyncio.timeout(20):
        while not katar.engine.counters.notifies.get(("jobs", "failed")):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    for task_id in ids:
        await katar.queue("jobs").retry(task_id)
    await settle(katar, "jobs", [{"status": "done"}] * 3)
    await asyncio.sleep(0.5)
    # While it is down, sends pause (doubling from 1 s): the endpoint is not hammered.
    assert katar.engine.counters.notifies[("jobs", "failed")] < 10
    back = Receiver()
    back.secrets.append(made.notify.secret)
    async with serving(back, port):
        await back.wait_for(6, seconds=90)
    assert all(r.verified for r in back.received)
    for task_id in ids:
        mine = [t for i, t in events(back.received) if i == str(task_id)]
        assert mine == ["task.failed", "task.done"]


async def test_the_events_are_kept_across_a_restart(tmp_path: Path) -> None:
    url = store_url("sqlite", tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with opened(Katar(url)) as first:
        sender = Dispatcher(first.engine, ALLOW)
        first.engine.option_checks.append(sender.check)
        sender.start()
        made = await notify_queue(first, port)
        assert made.notify is not None
        assert made.notify.secret is not None
        queue = first.queue("jobs")
        ids = [(await queue.enqueue(n)).id for n in range(3)]
        await settle(first, "jobs", [{"status": "done"}] * 3)
        async with asyncio.timeout(20):
            while not first.engine.counters.notifies.get(("jobs", "failed")):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await sender.stop()
    receiver = Receiver()
    receiver.secrets.append(made.notify.secret)
    async with serving(receiver, port), opened(Katar(url)) as second:
        sender = Dispatcher(second.engine, ALLOW)
        sender.start()
        try:
            await receiver.wait_for(3)
        finally:
            await sender.stop()
    assert sorted(int(i) for i, _ in events(receiver.received)) == ids
    assert all(r.verified for r in receiver.received)


def body(event: str, task: Task) -> bytes:
    """An event's body that names it plainly: the tests of the outbox read it back."""
    return f"{event}:{task.id}".encode()


async def test_the_outbox_keeps_a_bounded_number_per_queue(tmp_path: Path) -> None:
    async with opened(Katar(store_url("sqlite", tmp_path))) as katar:
        engine = katar.engine
        engine.notify_with(body)
        await engine.put_queue("q", parse_queue_options({"notify": {"url": "https://x.test/"}}))
        ids = [(await katar.queue("q").enqueue(n)).id for n in range(5)]
        await settle(katar, "q", [{"status": "done"}] * 5)
        assert await engine.outbox_trim(3) == {"q": 2}
        assert await engine.outbox_trim(3) == {}
        taken = await engine.outbox_take(10, 1000)
        assert [row.task_id for row in taken] == ids[2:]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
async def test_a_tasks_events_are_taken_one_at_a_time_in_order(kind: str, tmp_path: Path) -> None:
    async with opened(Katar(store_url(kind, tmp_path))) as katar:
        engine = katar.engine
        engine.notify_with(body)
        notify = {"url": "https://x.test/"}
        options = {"persistent": True, "max_attempts": 1, "notify": notify}
        await engine.put_queue("q", parse_queue_options(options))
        one, two = [(await katar.queue("q").enqueue(n)).id for n in range(2)]
        await settle(katar, "q", [{"status": "failed"}, {"status": "done"}])
        await katar.queue("q").retry(one)
        await settle(katar, "q", [{"status": "done"}])
        first = await engine.outbox_take(10, 60_000)
        assert [row.body for row in first] == [f"failed:{one}".encode(), f"done:{two}".encode()]
        assert await engine.outbox_take(10, 60_000) == []  # held, and "done" waits for "failed"
        await engine.outbox_delete([first[0].id])
        second = await engine.outbox_take(10, 60_000)
        assert [row.body for row in second] == [f"done:{one}".encode()]
        await engine.outbox_retry(second[0].id, 0)
        again = await engine.outbox_take(10, 60_000)
        assert [(row.body, row.attempts) for row in again] == [(f"done:{one}".encode(), 1)]


async def test_two_postgres_servers_deliver_every_event_in_order(tmp_path: Path) -> None:
    url = store_url("postgres", tmp_path)
    receiver = Receiver()
    async with serving(receiver), opened(Katar(url)) as one, opened(Katar(url)) as two:
        senders = [Dispatcher(k.engine, ALLOW) for k in (one, two)]
        for katar, sender in zip((one, two), senders, strict=True):
            katar.engine.option_checks.append(sender.check)
            sender.start()
        try:
            made = await notify_queue(one, receiver.port, max_attempts=0)
            assert made.notify is not None
            assert made.notify.secret is not None
            receiver.secrets.append(made.notify.secret)
            assert await two.engine.find_queue("jobs") is not None
            for sender in senders:
                sender.sync()
            ids = [(await one.queue("jobs").enqueue(n)).id for n in range(20)]
            # Half fail on one server, then each is retried and done on the other.
            await settle(one, "jobs", [{"status": "failed"}] * 20)
            for task_id in ids:
                await two.queue("jobs").retry(task_id)
            await settle(two, "jobs", [{"status": "done"}] * 20)
            await receiver.wait_for(40, seconds=60)
        finally:
            for sender in senders:
                await sender.stop()
    assert all(r.verified for r in receiver.received)
    for task_id in ids:
        mine = [t for i, t in events(receiver.received) if i == str(task_id)]
        # At least once: a repeat is possible, never a "done" before its "failed".
        assert mine[0] == "task.failed"
        assert "task.done" in mine
        assert mine.index("task.done") > mine.index("task.failed")


@pytest.mark.storeless
def test_bad_notify_options_are_refused() -> None:
    with pytest.raises(Exception, match="events"):
        parse_queue_options({"notify": {"url": "https://x.example/", "events": ["started"]}})
    with pytest.raises(Exception, match="url"):
        parse_queue_options({"notify": {"url": "ftp://x.example/"}})


async def test_a_loopback_notify_url_is_refused_without_allow(katar: Katar) -> None:
    sender = Dispatcher(katar.engine, Allow())
    katar.engine.option_checks.append(sender.check)
    with pytest.raises(ValidationError):
        await katar.engine.put_queue(
            "jobs", parse_queue_options({"notify": {"url": "http://127.0.0.1:9/x"}})
        )


async def test_http_routes_of_a_notify_queue(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    app = App(katar.engine)
    async with app_client(app, "asgi") as http:
        url = f"http://127.0.0.1:{receiver.port}/events"
        made = await http.put("/v1/queue/jobs", json={"notify": {"url": url}})
        assert made.status_code == 200, made.text
        notify = made.json()["options"]["notify"]
        secret = notify["secret"]
        assert secret.startswith("whsec_")
        # Shown once: a later change does not show it, nor does the listing.
        patched = await http.patch("/v1/queue/jobs", json={"concurrency": 4})
        assert "secret" not in patched.json()["options"]["notify"]
        listing = (await http.get("/v1/queues")).json()
        assert secret not in str(listing)
        assert (await http.get("/v1/queue/jobs/notify/secret")).json() == {
            "secret": secret,
            "previous_secret": None,
            "previous_until": None,
        }
        rotated = (await http.post("/v1/queue/jobs/notify/rotate", json={"grace": 60})).json()
        assert rotated["previous_secret"] == secret
        assert rotated["secret"] != secret
        receiver.secrets.append(rotated["secret"])
        # Workers still poll a notify queue; its end is sent, signed with the new secret.
        await http.post("/v1/queue/jobs/tasks", json={"data": 1})
        [task] = (await http.post("/v1/queue/jobs", json={})).json()["tasks"]
        acked = await http.post(
            "/v1/queue/jobs", json={"tasks": [{"_id": task["_id"], "status": "done"}], "max": 0}
        )
        assert acked.status_code in (200, 204)
        await receiver.wait_for(1)
        assert receiver.received[0].verified
        assert receiver.received[0].task["type"] == "task.done"
        gone = await http.get("/v1/queue/other/notify/secret")
        assert gone.status_code == 404
        await http.put("/v1/queue/plain", json={})
        assert (await http.get("/v1/queue/plain/notify/secret")).status_code == 409
        bad = await http.put("/v1/queue/bad", json={"notify": {"url": url, "events": ["x"]}})
        assert bad.status_code == 422
        assert "notify.events" in bad.json()["error"]
        closed = Dispatcher(katar.engine, Allow())
        katar.engine.option_checks[:] = [closed.check]
        refused = await http.put("/v1/queue/bad", json={"notify": {"url": "http://10.0.0.1/"}})
        assert refused.status_code == 422
        assert "notify.url" in refused.json()["error"]
        assert "[push] allow" in refused.json()["error"]


async def test_the_python_clients_notify_calls(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    """The producer's calls (katar.client._calls), each sent to the app as the producers
    send it."""
    app = App(katar.engine)
    async with app_client(app, "asgi") as http:

        async def run(plan: calls.Plan[Any]) -> Any:
            request = next(plan)
            while True:
                response = await http.request(
                    request.method, request.path, json=request.json, params=request.params
                )
                try:
                    request = plan.send(response)
                except StopIteration as done:
                    return done.value

        await http.put("/v1/queue/jobs", json={})
        url = f"http://127.0.0.1:{receiver.port}/events"
        secret = await run(calls.set_notify("jobs", url, ["done"]))
        assert isinstance(secret, str)
        assert secret.startswith("whsec_")
        assert await run(calls.set_notify("jobs", url, None)) is None  # kept: not shown
        assert katar.engine.options("jobs").notify is not None
        assert (await run(calls.notify_secret("jobs"))).secret == secret
        rotated = await run(calls.rotate_notify_secret("jobs", 10))
        assert rotated.previous_secret == secret
        await run(calls.remove_notify("jobs"))
        assert katar.engine.options("jobs").notify is None


async def test_the_notify_status_shows_the_outbox_and_the_last_answers(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    answers = iter([Answer(500), Answer(200)])
    receiver.script = lambda received: next(answers)
    await notify_queue(katar, receiver.port, notify={"events": ["done", "failed"]})
    (task_id,) = [(await katar.queue("jobs").enqueue(1)).id]
    app = App(katar.engine)
    async with app_client(app, "asgi") as http:
        await http.put("/v1/queue/plain", json={})
        assert (await http.get("/v1/queue/plain/notify")).status_code == 409
        quiet = (await http.get("/v1/queue/jobs/notify")).json()
        assert quiet == {
            "url": f"http://127.0.0.1:{receiver.port}/events",
            "events": ["done", "failed"],
            "pending": 0,
            "failing": 0,
            "counts": {},
            "error_rate": None,
            "recent": [],
        }
        await settle(katar, "jobs", [{"status": "done"}])
        await receiver.wait_for(1)
        async with asyncio.timeout(10):
            while (status := (await http.get("/v1/queue/jobs/notify")).json())["failing"] < 1:  # noqa: ASYNC110 (over HTTP)
                await asyncio.sleep(0.02)
        assert status["pending"] == 1
        [failed] = status["recent"]
        assert (failed["outcome"], failed["status"], failed["task"], failed["type"]) == (
            "failed",
            500,
            str(task_id),
            "task.done",
        )
        assert failed["error"] == "answered 500"
        await receiver.wait_for(2)  # sent again after its pause (1 s)
        async with asyncio.timeout(10):
            while (status := (await http.get("/v1/queue/jobs/notify")).json())["pending"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert [a["outcome"] for a in status["recent"]] == ["sent", "failed"]
        assert status["counts"] == {"sent": 1, "failed": 1}
        assert status["error_rate"] == 0.5
