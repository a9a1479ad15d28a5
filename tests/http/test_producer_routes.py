"""Producer and operator routes (contract section 3), validation and limits, on every store."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from katar import Katar, Task
from katar.http import parse
from tests.http.conftest import enqueue, eventually


async def test_enqueue_one_task_answers_its_record(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/queue/q/tasks", json={"data": {"to": "a@b"}, "priority": "high"}
    )
    assert response.status_code == 201
    (record,) = response.json()["tasks"]
    assert record["status"] == "queued"
    assert record["priority"] == 10
    assert record["data"] == {"to": "a@b"}
    assert record["attempts"] == 0
    assert record["created_at"].endswith("Z")


@pytest.mark.storeless
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "data is required"),
        ({"data": 1, "priority": "urgent"}, "Invalid enum value 'urgent' - at `$.priority`"),
        ({"data": 1, "priority": 1.5}, "$.priority"),
        ({"data": 1, "delay": -1}, "$.delay"),
        ({"data": 1, "status": "done"}, "$.status"),
        ({"tasks": []}, "at least one task"),
        ({"tasks": [{"data": 1}, {"priority": 1}]}, "tasks[1]: data is required"),
        ({"tasks": [{"data": 1}], "data": 2}, "not both"),
    ],
)
async def test_bad_enqueues_are_422_and_change_nothing(
    client: httpx.AsyncClient, body: dict[str, object], fragment: str
) -> None:
    response = await client.post("/v1/queue/q/tasks", json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]
    assert (await client.get("/v1/queue/q/tasks")).json()["tasks"] == []


@pytest.mark.storeless
async def test_too_many_tasks_per_enqueue(katar: Katar) -> None:
    from katar.http import App, Limits

    app = App(katar.engine, limits=Limits(max_tasks_per_enqueue=3))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://k") as c:
        response = await c.post(
            "/v1/queue/q/tasks", json={"tasks": [{"data": i} for i in range(4)]}
        )
    assert response.status_code == 422
    assert "at most 3 tasks" in response.json()["error"]


@pytest.mark.storeless
async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    for url in ("/v1/queue/q/tasks", "/v1/queue/q"):
        response = await client.post(url, content=b'{"data": ')
        assert response.status_code == 400
        assert "not valid JSON" in response.json()["error"]


@pytest.mark.storeless
async def test_a_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queue/q/tasks", json={"data": "x" * 70_000})
    assert response.status_code == 413
    assert "limit of 65536 bytes" in response.json()["error"]


@pytest.mark.storeless
async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v2/things")
    assert missing.status_code == 404
    assert "no route" in missing.json()["error"]
    wrong = await client.delete("/v1/queues")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET"
    assert "not allowed" in wrong.json()["error"]


async def test_put_queue_creates_updates_and_persists_options(client: httpx.AsyncClient) -> None:
    body = {"persistent": True, "timeout": 30000, "configuration": {"interval": 1000, "x": [1]}}
    response = await client.put("/v1/queue/emails", json=body)
    assert response.status_code == 200
    assert response.json()["options"]["timeout"] == 30000
    assert response.json()["configuration"] == {"interval": 1000, "x": [1]}
    assert (await client.get("/v1/queue/emails")).json() == {
        "configuration": {"interval": 1000, "x": [1]}
    }
    await client.put("/v1/queue/emails", json={})
    assert (await client.get("/v1/queue/emails")).json() == {"configuration": {"interval": 30000}}


async def test_put_queue_takes_whole_floats_as_integers(client: httpx.AsyncClient) -> None:
    # JSON has one number type: 30000.0 is 30000, and is answered as such.
    body = b'{"timeout": 30000.0, "configuration": {"interval": 1e3, "ratio": 1.0}}'
    response = await client.put("/v1/queue/floats", content=body)
    assert response.status_code == 200
    assert '"timeout":30000,' in response.text
    assert response.json()["configuration"] == {"interval": 1000, "ratio": 1.0}
    refused = await client.put("/v1/queue/floats", json={"retry_delay": -1})
    assert refused.status_code == 422
    assert refused.json()["option"] == "retry_delay"


@pytest.mark.storeless
@pytest.mark.parametrize(
    ("name", "body", "fragment"),
    [
        ("ok", {"timeot": 1}, "unknown queue option 'timeot'"),
        ("ok", {"timeout": 0}, "'timeout' must be an integer from 1"),
        ("ok", {"timeout": "30000"}, "'timeout' must be an integer from 1"),
        ("ok", {"max_batch": 10.5}, "'max_batch' must be an integer from 1 to 10000"),
        ("ok", {"persistent": "yes"}, "true or false"),
        ("ok", {"configuration": []}, "must be an object"),
        ("ok", {"configuration": {"interval": "soon"}}, "interval"),
        ("ok", [], "JSON object"),
        ("bad name!", {}, "invalid queue name"),
    ],
)
async def test_bad_queue_options_are_422(
    client: httpx.AsyncClient, name: str, body: object, fragment: str
) -> None:
    response = await client.put(f"/v1/queue/{name}", json=body)
    assert response.status_code in (400, 422)
    assert fragment in response.json()["error"]
    assert name not in [q["name"] for q in (await client.get("/v1/queues")).json()["queues"]]


async def test_list_queues_with_counts_and_delete_a_queue(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": 1}, {"data": 2}, {"data": 3, "status": "paused"})
    await client.post("/v1/queue/q", json={})
    queues = {q["name"]: q for q in (await client.get("/v1/queues")).json()["queues"]}
    assert set(queues) == {"q", "history", "plain"}
    assert queues["q"]["counts"] == {
        "paused": 1,
        "queued": 1,
        "in progress": 1,
        "done": 0,
        "failed": 0,
        "cancelled": 0,
        "waiting": 0,
    }
    assert queues["q"]["options"]["persistent"] is True
    deleted = await client.delete("/v1/queue/q")
    assert deleted.json() == {"deleted": "q", "tasks": 3}
    assert (await client.get("/v1/queue/q")).status_code == 404
    assert (await client.delete("/v1/queue/q")).status_code == 404


async def test_list_tasks_by_status_and_page(client: httpx.AsyncClient) -> None:
    ids = await enqueue(client, "q", *({"data": i} for i in range(5)))
    await client.post("/v1/queue/q", json={"max": 2})
    running = (await client.get("/v1/queue/q/tasks", params={"status": "in progress"})).json()
    assert [t["_id"] for t in running["tasks"]] == ids[:2]
    assert running["next"] is None
    first = (await client.get("/v1/queue/q/tasks", params={"limit": 3})).json()
    assert [t["_id"] for t in first["tasks"]] == ids[:3]
    second = (
        await client.get("/v1/queue/q/tasks", params={"limit": 3, "after": first["next"]})
    ).json()
    assert [t["_id"] for t in second["tasks"]] == ids[3:]
    assert second["next"] is None
    # A full last page still has a next, which leads to an empty page (docs/protocol.md).
    full = (await client.get("/v1/queue/q/tasks", params={"limit": 5})).json()
    assert full["next"] == ids[4]
    after = (await client.get("/v1/queue/q/tasks", params={"after": full["next"]})).json()
    assert after == {"tasks": [], "next": None}
    both = await client.get("/v1/queue/q/tasks", params={"status": "queued,in progress"})
    assert len(both.json()["tasks"]) == 5
    for params in ({"status": "running"}, {"limit": 0}, {"limit": "ten"}, {"limit": 5000}):
        bad = await client.get("/v1/queue/q/tasks", params=params)
        assert bad.status_code == 422, params


async def test_get_and_delete_a_task(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": [1, 2]})
    record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
    assert record["_id"] == task_id
    assert record["data"] == [1, 2]
    assert record["status"] == "queued"
    assert (await client.get(f"/v1/queue/history/tasks/{task_id}")).status_code == 404
    assert (await client.get("/v1/queue/q/tasks/not-an-id")).status_code == 404
    assert (await client.delete(f"/v1/queue/q/tasks/{task_id}")).json()["deleted"] is True
    assert (await client.get(f"/v1/queue/q/tasks/{task_id}")).status_code == 404
    assert (await client.delete(f"/v1/queue/q/tasks/{task_id}")).status_code == 404


async def test_get_task_waits_for_its_outcome(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "plain", {"data": 1})
    waiting = asyncio.create_task(client.get(f"/v1/queue/plain/tasks/{task_id}?wait=4"))
    await client.post("/v1/queue/plain", json={})
    await asyncio.sleep(0.1)
    assert not waiting.done()
    ack = {"_id": task_id, "status": "done", "result": {"ok": True}}
    await client.post("/v1/queue/plain", json={"tasks": [ack]})
    record = (await asyncio.wait_for(waiting, 3)).json()
    # The queue keeps no history, yet the waiting producer still learns the outcome.
    assert record["status"] == "done"
    assert record["result"] == {"ok": True}


async def test_get_task_wait_times_out_with_the_current_record(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    response = await client.get(f"/v1/queue/q/tasks/{task_id}", params={"wait": 0.1})
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert (
        await client.get(f"/v1/queue/q/tasks/{task_id}", params={"wait": -1})
    ).status_code == 422


async def test_delayed_task_becomes_available(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1, "delay": 0.1})
    record = (await client.get(f"/v1/queue/q/tasks/{task_id}")).json()
    assert record["status"] == "queued"
    assert record["run_at"] is not None

    async def delivered() -> bool:
        return (await client.post("/v1/queue/q", json={})).status_code == 200

    await eventually(delivered)


async def test_delayed_task_wakes_a_long_poll(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": "later", "delay": 0.2})
    response = await client.post("/v1/queue/q", json={"wait": 4})
    assert response.status_code == 200
    assert response.json()["tasks"][0]["data"] == "later"


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_status_callbacks(client: httpx.AsyncClient, katar: Katar) -> None:
    seen: list[tuple[str, str]] = []
    katar.on("q.done", lambda task: seen.append((task.queue, task.status)))

    async def on_any_queued(task: Task) -> None:
        seen.append(("*", task.status))

    katar.on("*.queued", on_any_queued)
    (task_id,) = await enqueue(client, "q", {"data": 1})
    await client.post("/v1/queue/q", json={})
    await client.post("/v1/queue/q", json={"tasks": [{"_id": task_id, "status": "done"}]})
    await eventually(lambda: asyncio.sleep(0, len(seen) == 2))
    assert sorted(seen) == [("*", "queued"), ("q", "done")]


async def test_metrics_in_prometheus_text_format(client: httpx.AsyncClient) -> None:
    await enqueue(client, "q", {"data": 1}, {"data": 2})
    assert (await client.post("/v1/queue/q", json={})).status_code == 200
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    assert 'katar_tasks{queue="q",status="queued"} 1' in lines
    assert 'katar_tasks{queue="q",status="in progress"} 1' in lines
    assert 'katar_tasks_enqueued_total{queue="q"} 2' in lines
    assert 'katar_tasks_delivered_total{queue="q"} 1' in lines
    assert "katar_long_polls 0" in lines
    assert (
        'katar_http_requests_total{method="POST",route="/v1/queue/{queue}/tasks",status="201"} 1'
        in lines
    )
    for line in lines:  # every sample is "name{labels} number"
        if not line.startswith("#"):
            float(line.rpartition(" ")[2])


async def test_the_status_hint_of_an_enqueue_speaks_of_new_tasks(
    client: httpx.AsyncClient,
) -> None:
    for body in ({"data": 1, "status": "done"}, {"tasks": [{"data": 1, "status": "done"}]}):
        response = await client.post("/v1/queue/q/tasks", json=body)
        assert response.status_code == 422
        error = response.json()["error"]
        assert "queued (the default) or paused" in error
        assert "ack" not in error


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": "caf\xe9"}',  # Latin-1, not UTF-8
        b'{"data": {"name": "\xff\xfe"}}',
        b'{"tasks": [{"data": 1}, {"data": ["ok", "\xc3"]}]}',  # a sequence cut short
        b'{"data": "\xed\xa0\x80"}',  # an encoded surrogate
    ],
)
async def test_bytes_that_are_not_utf8_are_400_and_nothing_is_stored(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/v1/queue/q/tasks", content=body)
    assert response.status_code == 400, response.text
    assert "not valid UTF-8" in response.json()["error"]
    assert (await client.get("/v1/queue/q/tasks")).json()["tasks"] == []
    fine = await client.post("/v1/queue/q/tasks", content='{"data": "café ✓"}'.encode())
    assert fine.status_code == 201
    assert fine.json()["tasks"][0]["data"] == "café ✓"


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


async def test_deep_nesting_is_refused_with_a_4xx_and_one_line_at_most(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    limit = parse.MAX_DEPTH
    assert limit >= 64
    accepted = await client.post("/v1/queue/q/tasks", content=b'{"data":%s}' % nested(limit))
    assert accepted.status_code == 201
    for body in (
        b'{"data":%s}' % nested(limit + 1),
        b'{"tasks":[{"data":1},{"data":%s}]}' % nested(limit + 1),
        b'{"data":%s}' % nested(990),
        b'{"data":%s}' % nested(30_000),
    ):
        response = await client.post("/v1/queue/q/tasks", content=body)
        assert response.status_code == 400, response.text
        assert f"over {limit} levels deep" in response.json()["error"]
    options = b'{"configuration": {"deep": %s}}' % nested(limit)
    assert (await client.put("/v1/queue/q", content=options)).status_code == 400
    assert len((await client.get("/v1/queue/q/tasks")).json()["tasks"]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_ids_are_canonical_decimal(client: httpx.AsyncClient) -> None:
    (task_id,) = await enqueue(client, "q", {"data": 1})
    assert task_id == "1"
    assert (await client.get("/v1/queue/q/tasks/1")).status_code == 200
    for alias in ("01", "001", "0"):
        assert (await client.get(f"/v1/queue/q/tasks/{alias}")).status_code == 404, alias


@pytest.mark.parametrize("interval", [2**31, 10**20, 1e20, 10**30, 1e30, -1, 1.5])
async def test_an_interval_beyond_its_bound_is_422_whatever_its_size(
    client: httpx.AsyncClient, interval: float
) -> None:
    response = await client.put("/v1/queue/q", json={"configuration": {"interval": interval}})
    assert response.status_code == 422, response.text
    assert "from 0 to 2147483647" in response.json()["error"]
    good = await client.put("/v1/queue/q", json={"configuration": {"interval": 2**31 - 1}})
    assert good.status_code == 200
