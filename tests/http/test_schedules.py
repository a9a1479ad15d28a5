"""The schedule routes over HTTP: create, read, list, pause, resume, delete, and their errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from katar import Katar
from katar.cli import main
from katar.core.clock import FakeClock
from katar.core.schedule import ScheduleSpec, parse_schedule
from katar.http import App, Limits
from tests.http.conftest import app_client, eventually, opened, served


async def test_a_schedule_is_created_read_listed_paused_and_deleted(
    client: httpx.AsyncClient,
) -> None:
    body = {
        "cron": "30 2 * * MON-FRI",
        "timezone": "Europe/Berlin",
        "queue": "q",
        "data": {"report": "daily"},
        "priority": "high",
        "overlap": "skip",
    }
    put = await client.put("/v1/schedules/nightly", json=body)
    assert put.status_code == 200, put.text
    record = put.json()
    assert record["name"] == "nightly"
    assert (record["cron"], record["timezone"], record["queue"]) == (
        "30 2 * * MON-FRI",
        "Europe/Berlin",
        "q",
    )
    assert (record["data"], record["priority"], record["overlap"]) == (
        {"report": "daily"},
        10,
        "skip",
    )
    assert (record["catch_up"], record["paused"]) == (False, False)
    assert (record["last_tick"], record["last_task"]) == (None, None)
    ticks = record["next_ticks"]
    assert len(ticks) == 5
    assert ticks == sorted(ticks)
    assert all(t.endswith("Z") for t in ticks)
    assert all(t[11:16] in ("00:30", "01:30") for t in ticks)  # 02:30 in Berlin, in UTC
    got = await client.get("/v1/schedules/nightly")
    assert got.json() == record
    listed = await client.get("/v1/schedules")
    assert listed.json() == {"schedules": [record]}
    paused = await client.patch("/v1/schedules/nightly", json={"paused": True})
    assert paused.status_code == 200
    assert (paused.json()["paused"], paused.json()["next_ticks"]) == (True, [])
    resumed = await client.patch("/v1/schedules/nightly", json={"paused": False})
    assert resumed.json()["paused"] is False
    assert resumed.json()["next_ticks"] == ticks
    # PUT replaces the whole schedule; the fields left out take their defaults.
    replaced = await client.put("/v1/schedules/nightly", json={"cron": "0 * * * *", "queue": "q"})
    assert (replaced.json()["timezone"], replaced.json()["overlap"]) == ("UTC", "allow")
    deleted = await client.delete("/v1/schedules/nightly")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": "nightly"}
    assert (await client.get("/v1/schedules")).json() == {"schedules": []}


async def test_errors_say_what_to_fix_and_change_nothing(client: httpx.AsyncClient) -> None:
    cases = [
        ({"cron": "61 * * * *", "queue": "q"}, "cron", "Bad minute"),
        ({"cron": "* * *", "queue": "q"}, "cron", "use five fields"),
        ({"cron": "* * * * *", "queue": "q", "timezone": "Mars/Base"}, "timezone", "Mars/Base"),
        ({"cron": "* * * * *", "queue": "q", "overlap": "no"}, "overlap", "overlap"),
        ({"cron": "* * * * *"}, "queue", "'queue' is required"),
        ({"cron": "* * * * *", "queue": "q", "when": 1}, "when", "unknown schedule field"),
    ]
    for body, field, words in cases:
        answer = await client.put("/v1/schedules/s", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == field
        assert words in answer.json()["error"]
    no_queue = await client.put("/v1/schedules/s", json={"cron": "* * * * *", "queue": "nope"})
    assert no_queue.status_code == 404
    assert no_queue.json() == {
        "error": "schedule 's': no queue 'nope'; create the queue first",
        "queue": "nope",
    }
    assert (await client.put("/v1/schedules/s", json=[1])).status_code == 422
    assert (await client.put("/v1/schedules/s", content=b"{")).status_code == 400
    bad_name = await client.put("/v1/schedules/-x", json={"cron": "* * * * *", "queue": "q"})
    assert bad_name.status_code == 422
    assert "invalid schedule name" in bad_name.json()["error"]
    assert (await client.get("/v1/schedules")).json() == {"schedules": []}
    for method in ("GET", "PATCH", "DELETE"):
        missing = await client.request(method, "/v1/schedules/s", json={"paused": True})
        assert missing.status_code == 404
        assert missing.json()["error"] == "no schedule 's'"
    await client.put("/v1/schedules/s", json={"cron": "* * * * *", "queue": "q"})
    for body in ({"paused": "yes"}, {"cron": "0 * * * *"}, {}):
        answer = await client.patch("/v1/schedules/s", json=body)
        assert answer.status_code == 422, answer.text
        assert "paused" in answer.json()["error"]
    assert (await client.get("/v1/schedules/s")).json()["paused"] is False


async def test_scheduled_tasks_show_their_schedule(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/queue/q/tasks", json={"data": 1})
    (record,) = created.json()["tasks"]
    assert (record["schedule"], record["scheduled_for"]) == (None, None)


async def test_a_scheduled_task_is_delivered_with_its_schedule_and_tick(
    make_url: Callable[[], str], via: str
) -> None:
    clock = FakeClock(start_ms=1_700_000_000_000)  # 2023-11-14T22:13:20Z
    katar = Katar(make_url(), clock=clock)
    katar.queue("q", persistent=True)
    app = App(katar.engine, limits=Limits(max_wait=5))
    async with opened(katar), app_client(app, via) as client:
        await client.post("/v1/queue/q/tasks", json={"data": "plain"})
        body = {"cron": "* * * * *", "queue": "q", "data": {"n": 1}}
        assert (await client.put("/v1/schedules/every", json=body)).status_code in (200, 201)
        await clock.advance(60_000)  # the tick of 22:14 comes on the way

        async def fired() -> bool:
            schedule = (await client.get("/v1/schedules/every")).json()
            return schedule["last_task"] is not None

        await eventually(fired)  # the store's write is not the clock's to wait for
        plain, made = (await client.post("/v1/queue/q", json={"max": 2})).json()["tasks"]
        # A task no schedule made is delivered as it always was: no such fields.
        assert set(plain) == {"_id", "data", "attempt"}
        assert made["data"] == {"n": 1}
        assert made["schedule"] == "every"
        assert made["scheduled_for"] == "2023-11-14T22:14:00.000Z"
        record = (await client.get(f"/v1/queue/q/tasks/{made['_id']}")).json()
        assert (record["schedule"], record["scheduled_for"]) == ("every", made["scheduled_for"])


@pytest.mark.storeless
async def test_the_routes_are_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/v1/schedules/{schedule}"]) == {"parameters", "get", "put", "patch", "delete"}
    assert paths["/v1/schedules"]["get"]["operationId"] == "listSchedules"


async def test_katar_schedules_lists_pauses_resumes_and_deletes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    katar = Katar(f"sqlite:///{tmp_path / 'k.db'}")
    katar.queue("reports")
    katar.schedule("nightly", "30 2 * * *", "reports", timezone="Europe/Berlin")
    async with opened(katar), served(App(katar.engine)) as url:
        errors: list[str] = []

        async def cli(*args: str) -> tuple[int, str]:
            status = await asyncio.to_thread(main, ["schedules", *args, "--url", url])
            said = capsys.readouterr()
            errors.append(said.err)
            return status, said.out

        status, table = await cli()
        assert status == 0
        header, row = table.splitlines()
        assert header.split() == [
            "NAME",
            "CRON",
            "TIMEZONE",
            "QUEUE",
            "PAUSED",
            "NEXT",
            "TICK",
            "LAST",
            "TASK",
        ]
        assert row.split()[:3] == ["nightly", "30", "2"]
        assert "Europe/Berlin" in row
        assert row.split()[-1] == "-"
        assert await cli("pause", "nightly") == (0, "schedule nightly paused\n")
        assert (await katar.schedules())[0].spec.paused
        status, listed = await cli("--json")
        assert json.loads(listed)["schedules"][0]["paused"] is True
        assert await cli("resume", "nightly") == (0, "schedule nightly resumed\n")
        assert await cli("delete", "nightly") == (0, "schedule nightly deleted\n")
        assert await katar.schedules() == []
        assert (await cli("delete", "nightly"))[0] == 1  # 404: said on standard error
        assert "no schedule 'nightly'" in errors[-1]
        assert (await cli("pause"))[0] == 2


# Every tick in the hour skipped when summer time starts: such a schedule never fires.
NEVER_BODIES = [
    {"cron": "30 2 * 3 7L", "timezone": "Europe/Berlin", "queue": "q"},
    {"cron": "30 2 * 3 SUN#2", "timezone": "America/New_York", "queue": "q"},
]


async def test_a_schedule_that_never_fires_or_too_long_a_cron_is_422_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    for body in NEVER_BODIES:
        answer = await client.put("/v1/schedules/x", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "cron"
        assert "never fires" in answer.json()["error"]
        assert "choose times that exist" in answer.json()["error"]
    for cron in ("0" * 4300 + " * * * *", "9" * 4300 + " * * * *"):
        answer = await client.put("/v1/schedules/x", json={"cron": cron, "queue": "q"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "cron"
        assert "over the limit of 1000" in answer.json()["error"]
    assert (await client.get("/v1/schedules")).json() == {"schedules": []}
    assert (await client.get("/v1/schedules/x")).status_code == 404


async def test_a_stored_schedule_that_cannot_run_is_marked_and_the_others_answer(
    client: httpx.AsyncClient, katar: Katar, caplog: pytest.LogCaptureFixture
) -> None:
    # As a server without the check stored it (or a database edit): straight into the store.
    never = ScheduleSpec(cron="30 2 * 3 7L", timezone="Europe/Berlin", queue="q")
    await katar.engine.store.save_schedule("old", never, katar.engine.clock.now_ms())
    fine = {"cron": "0 * * * *", "queue": "q"}
    assert (await client.put("/v1/schedules/fine", json=fine)).status_code == 200
    listed = await client.get("/v1/schedules")
    assert listed.status_code == 200, listed.text
    records = {r["name"]: r for r in listed.json()["schedules"]}
    assert records["fine"]["error"] is None
    assert len(records["fine"]["next_ticks"]) == 5
    old = records["old"]
    assert "never fires" in old["error"]
    assert (old["next_ticks"], old["cron"], old["queue"]) == ([], "30 2 * 3 7L", "q")
    assert (await client.get("/v1/schedules/old")).json() == old
    for _ in range(3):
        await client.get("/v1/schedules")
    assert caplog.text.count("schedule old cannot run") == 1  # once, not per look
    # A pause or resume of it is refused, saying what to do; a PUT that fires replaces it.
    patched = await client.patch("/v1/schedules/old", json={"paused": True})
    assert patched.status_code == 422
    assert "cannot run" in patched.json()["error"]
    assert "PUT it again or DELETE it" in patched.json()["error"]
    fixed = await client.put("/v1/schedules/old", json={**NEVER_BODIES[0], "cron": "30 3 * 3 7L"})
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["error"] is None
    assert len(fixed.json()["next_ticks"]) == 5


async def test_a_schedules_data_is_held_to_max_task_bytes_as_an_enqueue(
    katar: Katar, via: str
) -> None:
    limits = Limits(max_task_bytes=1024)
    big = "x" * 2000
    async with app_client(App(katar.engine, limits=limits), via) as client:
        enqueued = await client.post("/v1/queue/q/tasks", json={"data": big})
        assert enqueued.status_code == 413
        body = {"cron": "* * * * *", "queue": "q", "data": big}
        put = await client.put("/v1/schedules/big", json=body)
        assert put.status_code == 413, put.text
        # The same answer as the enqueue's, naming the schedule rather than the task.
        assert put.json() == {"error": enqueued.json()["error"].replace("task:", "schedule:")}
        assert "data is 2002 bytes of JSON, over the limit of 1024" in put.json()["error"]
        assert (await client.get("/v1/schedules")).json() == {"schedules": []}
        # One stored before (or under a higher limit) is refused a PATCH, and left as it is.
        spec = parse_schedule(body)
        await katar.engine.put_schedule("big", spec)
        patched = await client.patch("/v1/schedules/big", json={"paused": True})
        assert patched.status_code == 413, patched.text
        assert (await client.get("/v1/schedules/big")).json()["paused"] is False
        fits = {**body, "data": "x" * 1000}
        assert (await client.put("/v1/schedules/big", json=fits)).status_code == 200


async def test_a_queue_made_on_another_server_a_moment_ago_is_found(
    store_kind: str, make_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if store_kind != "postgres":
        pytest.skip("only PostgreSQL is shared by servers")
    url = make_url()
    one, other = Katar(url), Katar(url)
    async with opened(one), opened(other):
        # The other server has not heard of the new queue yet (its notification is late).
        monkeypatch.setattr(other.engine, "queue_changed", lambda name: None)
        async with (
            app_client(App(one.engine), "asgi") as here,
            app_client(App(other.engine), "asgi") as there,
        ):
            assert (await here.put("/v1/queue/reports", json={"persistent": True})).is_success
            body = {"cron": "0 * * * *", "queue": "reports"}
            put = await there.put("/v1/schedules/nightly", json=body)
            assert put.status_code == 200, put.text
            assert (await here.put("/v1/queue/later", json={})).is_success
            enqueued = await there.post("/v1/queue/later/tasks", json={"data": 1})
            assert enqueued.status_code == 201, enqueued.text
            assert (await there.get("/v1/queue/later")).status_code == 200
            missing = await there.get("/v1/queue/never-made")
            assert missing.status_code == 404
            refused = await there.put("/v1/schedules/x", json={**body, "queue": "never-made"})
            assert refused.status_code == 404
            assert "no queue 'never-made'" in refused.json()["error"]
