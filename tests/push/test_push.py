"""Push delivery end to end: a Katar engine, its push dispatcher and a real receiver on a
loopback port (allowed explicitly, as the test configuration must), which checks every
signature with the unmodified ``standardwebhooks`` library."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from katar import Katar
from katar.core.model import QueueOptions, Task, parse_queue_options
from katar.errors import ValidationError
from katar.http import App
from katar.push import Allow, Dispatcher, safety
from katar.push.dispatcher import MAX_ANSWER_BYTES
from tests.conftest import store_url
from tests.http.conftest import app_client, opened
from tests.push.receiver import Answer, Received, Receiver, serving

pytestmark = pytest.mark.xdist_group(name="push")


async def push_queue(
    katar: Katar, receiver: Receiver, name: str = "hooks", path: str = "/hook", **options: Any
) -> QueueOptions:
    push = {"url": f"http://127.0.0.1:{receiver.port}{path}", **options.pop("push", {})}
    made = await katar.engine.put_queue(
        name,
        parse_queue_options(
            {"persistent": True, "retry_delay": 20, "max_attempts": 5, "push": push, **options}
        ),
    )
    assert made.push is not None
    assert made.push.secret is not None
    receiver.secrets.append(made.push.secret)
    return made


async def finished(katar: Katar, queue: str, task_id: int, seconds: float = 20) -> Task:
    async with asyncio.timeout(seconds):
        while True:
            task = await katar.engine.get_task(queue, task_id, wait=1.0)
            if task.status in ("done", "failed", "cancelled"):
                return task


async def enqueue(katar: Katar, queue: str, *data: Any) -> list[int]:
    tasks = [await katar.queue(queue).enqueue(value) for value in data]
    return [task.id for task in tasks]


async def test_a_push_is_signed_and_its_json_answer_is_the_result(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.script = lambda received: Answer(200, b'{"sent": true}')
    await push_queue(katar, receiver, push={"headers": {"X-Team": "mail"}})
    [task_id] = await enqueue(katar, "hooks", {"to": "a@example.com"})
    task = await finished(katar, "hooks", task_id)
    assert task.status == "done"
    assert task.result is not None
    assert bytes(task.result) == b'{"sent": true}'
    [received] = receiver.received
    assert received.verified
    assert received.task == {
        "queue": "hooks",
        "_id": str(task_id),
        "data": {"to": "a@example.com"},
        "attempt": 1,
    }
    assert received.headers["webhook-id"] == f"{task_id}-1"
    assert received.headers["x-team"] == "mail"
    assert received.headers["content-type"] == "application/json"
    assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < 60
    counts = katar.engine.counters.pushes
    assert counts[("hooks", "done")] == 1


async def test_a_500_is_a_failed_attempt_pushed_again(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.script = lambda received: (
        Answer(500, b"boom") if len(receiver.received) == 1 else Answer(204)
    )
    await push_queue(katar, receiver)
    [task_id] = await enqueue(katar, "hooks", 1)
    task = await finished(katar, "hooks", task_id)
    assert task.status == "done"
    assert task.attempts == 2
    assert [r.task["attempt"] for r in receiver.received] == [1, 2]
    assert [r.headers["webhook-id"] for r in receiver.received] == [
        f"{task_id}-1",
        f"{task_id}-2",
    ]
    assert all(r.verified for r in receiver.received)
    assert katar.engine.counters.pushes[("hooks", "failed")] == 1


async def test_attempts_spent_fail_the_task_with_the_answer(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.script = lambda received: Answer(422, b"no such user", content_type=b"text/plain")
    await push_queue(katar, receiver, max_attempts=2)
    [task_id] = await enqueue(katar, "hooks", 1)
    task = await finished(katar, "hooks", task_id)
    assert task.status == "failed"
    assert task.attempts == 2
    assert task.error == "push answered 422: no such user"


async def test_a_timeout_is_a_failed_attempt(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.script = lambda received: (
        Answer(200, delay=3.0) if len(receiver.received) == 1 else Answer(200)
    )
    await push_queue(katar, receiver, push={"timeout": 300})
    [task_id] = await enqueue(katar, "hooks", 1)
    task = await finished(katar, "hooks", task_id)
    assert task.status == "done"
    assert task.attempts == 2
    assert katar.engine.counters.pushes[("hooks", "timeout")] == 1
    [timed_out] = [a for a in katar.engine.counters.push_answers["hooks"] if a.status is None]
    assert timed_out.error is not None
    assert "timed out" in timed_out.error


async def test_retry_after_of_a_429_is_honoured(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    arrivals: list[float] = []

    def script(received: Received) -> Answer:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            return Answer(429, headers=[(b"retry-after", b"1")])
        return Answer(200)

    receiver.script = script
    await push_queue(katar, receiver)  # its own backoff: 20 ms
    [task_id] = await enqueue(katar, "hooks", 1)
    task = await finished(katar, "hooks", task_id)
    assert task.status == "done"
    # A lower bound only: the second push waits for the Retry-After, not for 20 ms.
    assert arrivals[1] - arrivals[0] >= 0.9


async def test_an_endpoint_down_then_back_gets_every_task(
    katar: Katar, dispatcher: Dispatcher
) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = Receiver()
    down.port = port
    await push_queue(katar, down, max_attempts=0)  # no limit: retried until it answers
    ids = await enqueue(katar, "hooks", *range(5))
    async with asyncio.timeout(20):
        while not katar.engine.counters.pushes.get(("hooks", "unreachable")):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # While it is down, the dispatcher probes one task at a time, after a pause.
    await asyncio.sleep(0.5)
    unreachable = katar.engine.counters.pushes[("hooks", "unreachable")]
    assert unreachable < 20
    back = Receiver()
    back.secrets = down.secrets
    async with serving(back, port):
        for task_id in ids:
            assert (await finished(katar, "hooks", task_id, seconds=90)).status == "done"
    assert sorted(int(r.task["_id"]) for r in back.received) == ids
    assert all(r.verified for r in back.received)


async def test_concurrency_bounds_the_pushes_in_flight(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.script = lambda received: Answer(200, delay=0.2)
    await push_queue(katar, receiver, concurrency=3)
    ids = await enqueue(katar, "hooks", *range(12))
    for task_id in ids:
        assert (await finished(katar, "hooks", task_id)).status == "done"
    assert receiver.most_in_flight == 3
    assert len(receiver.received) == 12


async def test_a_redirect_is_not_followed(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    receiver.script = lambda received: Answer(
        302, headers=[(b"location", f"http://127.0.0.1:{receiver.port}/elsewhere".encode())]
    )
    await push_queue(katar, receiver, max_attempts=1)
    [task_id] = await enqueue(katar, "hooks", 1)
    task = await finished(katar, "hooks", task_id)
    assert task.status == "failed"
    assert task.error == "push answered 302"
    assert len(receiver.received) == 1


async def test_loopback_is_refused_without_allow(katar: Katar) -> None:
    closed = Dispatcher(katar.engine, Allow())
    katar.engine.option_checks.append(closed.check)
    for url in (
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal/",
    ):
        with pytest.raises(ValidationError, match=r"push\.url"):
            await katar.engine.put_queue("hooks", parse_queue_options({"push": {"url": url}}))
    # Allowed by a URL prefix: only under it.
    prefix = Allow(["http://127.0.0.1:8080/hooks/"])
    assert prefix.permits("http://127.0.0.1:8080/hooks/a")
    assert prefix.refused_without_dns("http://127.0.0.1:8080/other") is not None


async def test_a_name_resolving_to_a_private_address_is_refused_at_connect(
    katar: Katar, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def private(*args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 80))]

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", private)
    pusher = Dispatcher(katar.engine, Allow())
    katar.engine.option_checks.append(pusher.check)
    await katar.engine.put_queue(
        "hooks",
        parse_queue_options(
            {"push": {"url": "http://hooks.example.com/in"}, "max_attempts": 1, "persistent": True}
        ),
    )  # a name: checked when connecting
    pusher.start()
    try:
        [task_id] = await enqueue(katar, "hooks", 1)
        task = await finished(katar, "hooks", task_id)
    finally:
        await pusher.stop()
    assert task.status == "failed"
    assert task.error is not None
    assert "resolves to a private address (10.0.0.7)" in task.error
    assert katar.engine.counters.pushes[("hooks", "refused")] == 1


def test_the_addresses_refused() -> None:
    import ipaddress

    for text in (
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "100.64.0.1",
        "0.0.0.0",
    ):
        assert safety.refused_address(ipaddress.ip_address(text)) is not None, text
    for text in ("8.8.8.8", "2606:4700::1111"):
        assert safety.refused_address(ipaddress.ip_address(text)) is None, text


async def test_rotation_signs_with_both_secrets_during_the_grace(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    made = await push_queue(katar, receiver)
    assert made.push is not None
    old = made.push.secret
    assert old is not None
    rotated = await katar.engine.rotate_push_secret("hooks", 60_000)
    assert rotated.push is not None
    new = rotated.push.secret
    assert new is not None
    assert new != old
    [task_id] = await enqueue(katar, "hooks", 1)
    assert (await finished(katar, "hooks", task_id)).status == "done"
    [received] = receiver.received
    assert len(received.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):  # a receiver with either secret verifies
        receiver.secrets = [secret]
        assert receiver.verify(received.body, received.headers)
    # A PUT that names no secret keeps the queue's.
    again = await katar.engine.put_queue(
        "hooks", parse_queue_options({"push": {"url": made.push.url}})
    )
    assert again.push is not None
    assert again.push.secret == new


async def test_http_routes_of_a_push_queue(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    app = App(katar.engine)
    async with app_client(app, "asgi") as http:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        made = await http.put("/v1/queue/hooks", json={"push": {"url": url}})
        assert made.status_code == 200, made.text
        push = made.json()["options"]["push"]
        secret = push["secret"]
        assert secret.startswith("whsec_")
        assert made.json()["options"]["timeout"] == 35_000  # the push's 30 s and a margin
        # Shown once: a later change does not show it.
        patched = await http.patch("/v1/queue/hooks", json={"concurrency": 4})
        assert "secret" not in patched.json()["options"]["push"]
        listing = (await http.get("/v1/queues")).json()
        [queue] = [q for q in listing["queues"] if q["name"] == "hooks"]
        assert queue["options"]["push"] == {"url": url}  # the defaults left out
        assert secret not in str(listing)
        assert (await http.get("/v1/queue/hooks/push/secret")).json() == {
            "secret": secret,
            "previous_secret": None,
            "previous_until": None,
        }
        rotated = (await http.post("/v1/queue/hooks/push/rotate", json={"grace": 60})).json()
        assert rotated["previous_secret"] == secret
        assert rotated["secret"] != secret
        polled = await http.post("/v1/queue/hooks", json={})
        assert polled.status_code == 409
        assert "push queue" in polled.json()["error"]
        refused = await http.put("/v1/queue/bad", json={"push": {"url": "ftp://x/"}})
        assert refused.status_code == 422
        assert "push.url" in refused.json()["error"]
        loopback = Dispatcher(katar.engine, Allow())
        katar.engine.option_checks[:] = [loopback.check]
        refused = await http.put("/v1/queue/bad", json={"push": {"url": "http://127.0.0.1/"}})
        assert refused.status_code == 422
        assert "[push] allow" in refused.json()["error"]
        status = await http.get("/v1/queue/hooks/push")
        assert status.status_code == 200
        assert status.json()["url"] == url


async def test_pushes_stop_when_the_option_goes(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    await push_queue(katar, receiver)
    [task_id] = await enqueue(katar, "hooks", 1)
    assert (await finished(katar, "hooks", task_id)).status == "done"
    await katar.engine.patch_queue("hooks", {"push": None})
    dispatcher.sync()
    assert "hooks" not in dispatcher.pushers
    await enqueue(katar, "hooks", 2)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1
    assert httpx  # the client library is the receiver's peer in the HTTP tests


async def test_https_with_the_urls_name_on_the_checked_address(
    katar: Katar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    ca_file, cert_file, key_file = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    authority.cert_pem.write_to_path(str(ca_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the default context trusts the CA
    receiver = Receiver()
    pusher = Dispatcher(katar.engine, Allow(["localhost"]))
    katar.engine.option_checks.append(pusher.check)
    async with serving(receiver, tls=(str(cert_file), str(key_file))):
        made = await katar.engine.put_queue(
            "hooks",
            parse_queue_options(
                {"persistent": True, "push": {"url": f"https://localhost:{receiver.port}/in"}}
            ),
        )
        assert made.push is not None
        assert made.push.secret is not None
        receiver.secrets.append(made.push.secret)
        pusher.start()
        try:
            [task_id] = await enqueue(katar, "hooks", "secure")
            assert (await finished(katar, "hooks", task_id)).status == "done"
        finally:
            await pusher.stop()
    [received] = receiver.received
    assert received.verified
    assert received.headers["host"] == f"localhost:{receiver.port}"


async def test_an_answer_is_read_up_to_its_bound(
    katar: Katar, dispatcher: Dispatcher, receiver: Receiver
) -> None:
    huge = b'{"pad": "' + b"x" * (MAX_ANSWER_BYTES + 10) + b'"}'
    receiver.script = lambda received: Answer(200, huge)
    await push_queue(katar, receiver)
    [task_id] = await enqueue(katar, "hooks", 1)
    task = await finished(katar, "hooks", task_id)
    assert task.status == "done"
    assert task.result is None or bytes(task.result) == b"null"  # too large to be a result


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_push_option_and_its_secret_survive_a_restart(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    push = {"url": "https://hooks.example.com/in", "headers": {"X-A": "b"}}
    async with opened(Katar(url)) as first:
        made = await first.engine.put_queue("hooks", parse_queue_options({"push": push}))
        rotated = await first.engine.rotate_push_secret("hooks", 60_000)
    async with opened(Katar(url)) as second:
        kept = second.engine.options("hooks")
    assert kept == rotated
    assert kept.push is not None
    assert made.push is not None
    assert kept.push.previous_secret == made.push.secret
    assert kept.timeout == 35_000
