"""The dashboard in a real browser against a real ``katar serve`` with tokens: a newcomer
signs in, finds the failed tasks, looks at one and retries them; a producer only looks."""

from __future__ import annotations

import re

import boto3
import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.acceptance.conftest import KatarProcess
from tests.browser.conftest import (
    AWS_KEY,
    PRODUCER_QUEUE,
    TOKENS,
    Watch,
    counts,
    fail_tasks,
    sign_in,
)

# Its tests share module-wide fixtures: pytest-xdist runs them in one process (--dist
# loadgroup), which makes those once.
pytestmark = pytest.mark.xdist_group("browser")


def queue(api: httpx.Client, name: str) -> str:
    response = api.put(f"/v1/queue/{name}", json={"persistent": True})
    assert response.status_code == 200, response.text
    return name


def card(page: Page, name: str) -> object:
    return page.get_by_role("article").filter(has=page.get_by_role("heading", name=name))


def test_nothing_is_shown_before_a_token_is_accepted(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    queue(api, "secret-plans")
    page.goto(f"{server.url}/ui")
    token = page.get_by_label("Token")
    expect(token).to_be_visible()
    token.fill("katar_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("The token was not accepted")
    expect(page.get_by_text("secret-plans")).to_have_count(0)
    token.fill(TOKENS["admin"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="secret-plans")).to_be_visible()
    expect(page.get_by_text("ops · admin · every queue")).to_be_visible()
    # Signing out forgets the token: a reload asks for one again.
    page.get_by_role("button", name="Sign out").click()
    page.reload()
    expect(page.get_by_label("Token")).to_be_visible()
    expect(page.get_by_text("secret-plans")).to_have_count(0)


def test_the_overview_shows_a_queue_and_its_counts(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    name = queue(api, "overview")
    api.post(f"/v1/queue/{name}/tasks", json={"tasks": [{"data": n} for n in range(3)]})
    fail_tasks(api, name, ["boom"])
    sign_in(page, server, "admin")
    counts_of = page.get_by_role("list", name=f"Tasks of {name} by status")
    expect(counts_of.get_by_role("link", name="3 queued")).to_be_visible()
    expect(counts_of.get_by_role("link", name="1 failed")).to_be_visible()
    expect(counts_of.get_by_role("link", name="0 done")).to_be_visible()


def test_the_counts_move_without_a_reload(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    name = queue(api, "live")
    sign_in(page, server, "admin")
    queued = page.get_by_role("list", name=f"Tasks of {name} by status").locator(
        '[data-status="queued"]'
    )
    expect(queued).to_have_text("0")
    page.evaluate("window.notReloaded = true")
    api.post(f"/v1/queue/{name}/tasks", json={"tasks": [{"data": n} for n in range(5)]})
    expect(queued).to_have_text("5")
    assert page.evaluate("window.notReloaded") is True


def test_a_newcomer_finds_a_failed_task_and_retries_it(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    name = queue(api, "emails")
    [first, _] = fail_tasks(api, name, ["SMTP 550: mailbox unavailable", "timeout"])
    sign_in(page, server, "admin")
    page.get_by_role("list", name=f"Tasks of {name} by status").get_by_role(
        "link", name="2 failed"
    ).click()
    page.get_by_role("link", name=f"#{first}", exact=True).click()
    expect(page.get_by_role("heading", name=f"Task #{first}")).to_be_visible()
    expect(page.get_by_role("region", name="Error")).to_contain_text(
        "SMTP 550: mailbox unavailable"
    )
    deliveries = page.get_by_role("region", name="Deliveries")
    expect(deliveries.get_by_role("cell", name="mailer-1")).to_be_visible()
    page.get_by_role("button", name="Retry", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Queued again.")
    assert api.get(f"/v1/queue/{name}/tasks/{first}").json()["status"] == "queued"
    # Edit and retry: the data as JSON in a dialog; bad JSON is said, and nothing is sent.
    page.get_by_role("button", name="Edit and retry…").click()
    dialog = page.get_by_role("dialog", name=f"Edit and retry task #{first}")
    editor = dialog.get_by_role("textbox", name="Data as JSON")
    editor.fill("{oops")
    dialog.get_by_role("button", name="Retry with this data").click()
    expect(dialog).to_contain_text("That is not valid JSON")
    editor.fill('{"to": "fixed@example.com"}')
    dialog.get_by_role("button", name="Retry with this data").click()
    expect(page.get_by_role("status")).to_have_text("Queued again with the new data.")
    record = api.get(f"/v1/queue/{name}/tasks/{first}").json()
    assert (record["status"], record["data"]) == ("queued", {"to": "fixed@example.com"})


def test_a_bulk_retry_of_failed_tasks(
    page: Page, server: KatarProcess, api: httpx.Client, routes: dict[str, str | None]
) -> None:
    if "POST /v1/queue/{queue}/tasks/bulk" not in routes:
        pytest.skip("this server has no bulk route (POST /v1/queue/{queue}/tasks/bulk)")
    name = queue(api, "bulk")
    fail_tasks(api, name, ["a", "b", "c"])
    api.post(f"/v1/queue/{name}/tasks", json={"data": "still queued"})
    sign_in(page, server, "admin", f"#/queue/{name}?status=failed")
    page.get_by_role("button", name="Retry all…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("3 tasks match; 3 will be retried")
    dialog.get_by_role("button", name="Retry 3 tasks").click()
    expect(page.get_by_role("status")).to_have_text("3 of 3 matching tasks retried.")
    assert counts(api, name)["failed"] == 0
    assert counts(api, name)["queued"] == 4


def test_the_sign_in_text_and_the_chart_say_what_they_mean(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    name = queue(api, "charted")
    page.goto(f"{server.url}/ui")
    # "made with" and the command ran together ("made withkatar token").
    expect(page.locator("#token-hint")).to_contain_text("(made with katar token)")
    sign_in(page, server, "admin")
    # The chart covers ten minutes, as docs/dashboard.md says, also on a server just started
    # (it said "last 1 min", then "last 2 min").
    expect(card(page, name).get_by_text("per second, last 10 min")).to_be_visible()  # type: ignore[attr-defined]


def test_a_tab_offers_only_the_actions_that_apply_to_its_tasks(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    name = queue(api, "tabs")
    api.post(f"/v1/queue/{name}/tasks", json={"data": "queued"})
    sign_in(page, server, "admin", f"#/queue/{name}?status=queued")
    actions = page.get_by_role("group", name="Actions")
    expect(actions.get_by_role("button", name="Cancel all…")).to_be_visible()
    expect(actions.get_by_role("button", name="Delete all…")).to_be_visible()
    expect(actions.get_by_role("button", name="Retry all…")).to_have_count(0)
    page.get_by_role("link", name=re.compile("^in progress")).click()
    expect(page.get_by_role("group", name="Actions")).to_have_count(0)
    page.get_by_role("link", name=re.compile("^failed")).click()
    expect(actions.get_by_role("button", name="Retry all…")).to_be_visible()
    expect(actions.get_by_role("button", name="Cancel all…")).to_have_count(0)


def test_a_retried_task_shows_its_old_error_as_such(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    name = queue(api, "again")
    [task] = fail_tasks(api, name, ["SMTP 550: mailbox unavailable"])
    api.patch(f"/v1/queue/{name}/tasks/{task}", json={"status": "queued"})
    sign_in(page, server, "admin", f"#/queue/{name}?status=queued")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"#{task}"))
    expect(row).to_contain_text("earlier attempt: mailer-1")
    expect(row).to_contain_text("earlier attempt: SMTP 550: mailbox unavailable")
    row.get_by_role("link", name=f"#{task}").click()
    expect(page.get_by_role("region", name="Error of an earlier attempt")).to_contain_text(
        "SMTP 550"
    )
    expect(page.get_by_text("Worker (earlier attempt)")).to_be_visible()


def test_the_date_filters_show_their_whole_value(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    name = queue(api, "dated")
    sign_in(page, server, "admin", f"#/queue/{name}")
    for label in ("Created from", "Created before"):
        field = page.get_by_label(label)
        field.fill("2026-12-07T09:30")
        # Cut off, the field's content is wider than the field (the picker's icon and the
        # AM/PM were hidden at 11rem).
        box = field.bounding_box()
        assert box is not None
        assert box["width"] >= 14 * 16


def test_a_producer_token_may_look_but_not_act(
    page: Page, server: KatarProcess, api: httpx.Client, routes: dict[str, str | None], watch: Watch
) -> None:
    if routes["GET /v1/queues"] != "producer":
        pytest.skip("this server lists queues to admin tokens only (GET /v1/queues)")
    [failed] = fail_tasks(api, PRODUCER_QUEUE, ["card declined"])
    queue(api, "not-for-the-shop")
    sign_in(page, server, "producer")
    expect(page.get_by_text("shop · producer, read-only · orders")).to_be_visible()
    expect(page.get_by_role("heading", name=PRODUCER_QUEUE)).to_be_visible()
    expect(page.get_by_text("not-for-the-shop")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Pause|Resume"))).to_have_count(0)

    page.goto(f"{server.url}/ui#/queue/{PRODUCER_QUEUE}?status=failed")
    expect(page.get_by_role("link", name=f"#{failed}", exact=True)).to_be_visible()
    expect(page.get_by_role("checkbox")).to_have_count(0)
    expect(
        page.get_by_role("button", name=re.compile("Retry|Cancel|Delete|Purge|Enqueue"))
    ).to_have_count(0)

    page.goto(f"{server.url}/ui#/task/{PRODUCER_QUEUE}/{failed}")
    expect(page.get_by_role("region", name="Error")).to_contain_text("card declined")
    expect(page.get_by_role("button", name=re.compile("Retry|Cancel|Delete"))).to_have_count(0)

    # And the API refuses the token, whatever a page might send (the browser logs the 403).
    watch.expected_failures.add(f"/v1/queue/{PRODUCER_QUEUE}/tasks/{failed}")
    status = page.evaluate(
        """async ([queue, id]) => (await fetch(`/v1/queue/${queue}/tasks/${id}`, {
            method: "PATCH",
            headers: {
                Authorization: `Bearer ${sessionStorage.getItem("katar.token")}`,
                "Content-Type": "application/json",
            },
            body: JSON.stringify({status: "queued"}),
        })).status""",
        [PRODUCER_QUEUE, failed],
    )
    assert status == 403
    assert api.get(f"/v1/queue/{PRODUCER_QUEUE}/tasks/{failed}").json()["status"] == "failed"


def test_every_page_stays_on_this_server_and_logs_no_error(
    page: Page, server: KatarProcess, api: httpx.Client, watch: Watch
) -> None:
    name = queue(api, "tour")
    [task] = fail_tasks(api, name, ["oops"])
    sign_in(page, server, "admin")
    for where, heading in [
        (f"#/queue/{name}", name),
        (f"#/task/{name}/{task}", f"Task #{task}"),
        ("#/workers", "Workers"),
        ("#/", "Queues"),
    ]:
        page.goto(f"{server.url}/ui{where}")
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    page.goto(f"{server.url}/ui#/queue/{name}")
    page.get_by_role("button", name="Enqueue…").click()
    dialog = page.get_by_role("dialog")
    # A task the server refuses: its message is shown (and the browser logs the 422).
    watch.expected_failures.add(f"/v1/queue/{name}/tasks")
    dialog.get_by_label("Task as JSON").fill('{"data": 1, "priority": "urgent"}')
    dialog.get_by_role("button", name="Enqueue").click()
    expect(dialog.get_by_role("alert")).to_contain_text("The server refused the input")
    dialog.get_by_label("Task as JSON").fill('{"data": {"to": "someone"}}')
    dialog.get_by_role("button", name="Enqueue").click()
    expect(page.get_by_role("status")).to_contain_text("Enqueued task")


def test_the_keyboard_is_enough(page: Page, server: KatarProcess, api: httpx.Client) -> None:
    name = queue(api, "keys")
    fail_tasks(api, name, ["first", "second"])
    page.goto(f"{server.url}/ui#/queue/{name}?status=failed")
    page.get_by_label("Token").focus()
    page.keyboard.type(TOKENS["admin"])
    page.keyboard.press("Enter")
    retry_all = page.get_by_role("button", name="Retry all…")
    retry_all.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("2 tasks match")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    assert counts(api, name)["failed"] == 2  # closing the dialog changed nothing
    # The error filter, typed and submitted with Enter.
    page.get_by_label("Error contains").focus()
    page.keyboard.type("seco")
    page.keyboard.press("Enter")
    expect(page.get_by_role("cell", name="second")).to_be_visible()
    expect(page.get_by_role("cell", name="first")).to_have_count(0)


def test_schedules_and_a_task_that_waits_for_another(
    page: Page, server: KatarProcess, api: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shots = tmp_path_factory.mktemp("pipeline")  # pictures of the pages, to look at
    name = queue(api, "nightly")
    made = api.put(
        "/v1/schedules/nightly-report",
        json={"cron": "0 3 * * *", "timezone": "Europe/Berlin", "queue": name, "data": {}},
    )
    assert made.status_code == 200, made.text
    [parent] = fail_tasks(api, name, ["first try"])
    api.patch(f"/v1/queue/{name}/tasks/{parent}", json={"status": "queued"}).raise_for_status()
    waiting = api.post(f"/v1/queue/{name}/tasks", json={"data": "after", "after": [parent]})
    assert waiting.status_code == 201, waiting.text
    child = waiting.json()["tasks"][0]["_id"]
    sign_in(page, server, "admin", "#/schedules")
    row = page.get_by_role("row").filter(has_text="nightly-report")
    expect(row).to_contain_text("0 3 * * *")
    expect(row).to_contain_text("Europe/Berlin")
    row.get_by_role("button", name="Pause").click()
    expect(row).to_contain_text("paused")
    assert api.get("/v1/schedules/nightly-report").json()["paused"] is True
    page.goto(f"{server.url}/ui#/task/{name}/{child}")
    waits = page.get_by_role("region", name="Tasks it waits for")
    expect(waits).to_contain_text("Not delivered until this task is done")
    expect(waits.get_by_role("row").filter(has_text=f"#{parent}")).to_contain_text("queued")
    # The parent is a link; its page lists the tasks waiting for it, of every queue, a page
    # at a time.
    later = api.post(
        f"/v1/queue/{name}/tasks",
        json={"tasks": [{"data": n, "after": [parent]} for n in range(20)]},
    )
    assert later.status_code == 201, later.text
    other = queue(api, "nightly-mail")
    across = api.post(f"/v1/queue/{other}/tasks", json={"data": "mail", "after": [parent]})
    assert across.status_code == 201, across.text
    elsewhere = across.json()["tasks"][0]["_id"]
    waits.get_by_role("link", name=f"#{parent}", exact=True).click()
    expect(page).to_have_url(re.compile(f"#/task/{name}/{parent}$"))
    children = page.get_by_role("region", name="Tasks waiting for it")
    expect(children.get_by_role("row")).to_have_count(21)  # the heading's, and 20 tasks
    expect(children.get_by_role("link", name=f"#{child}", exact=True)).to_be_visible()
    expect(children).to_contain_text("queued")
    page.screenshot(path=str(shots / "children.png"), full_page=True)
    children.get_by_role("button", name="Next ›").click()
    expect(children.get_by_role("row")).to_have_count(3)
    expect(children.get_by_role("link", name=other, exact=True)).to_be_visible()
    children.get_by_role("link", name=f"#{elsewhere}", exact=True).click()
    expect(page).to_have_url(re.compile(f"#/task/{other}/{elsewhere}$"))
    parents = page.get_by_role("region", name="Tasks it waits for")
    expect(parents.get_by_role("link", name=f"#{parent}", exact=True)).to_be_visible()
    expect(parents.get_by_role("link", name=name, exact=True)).to_be_visible()
    page.screenshot(path=str(shots / "parent.png"), full_page=True)


def test_a_dead_letter_queue_shows_its_sources_and_redrives(
    page: Page, server: KatarProcess, api: httpx.Client, routes: dict[str, str | None]
) -> None:
    if "POST /v1/queue/{queue}/redrive" not in routes:
        pytest.skip("this server has no redrive route (POST /v1/queue/{queue}/redrive)")
    options = {"persistent": True, "max_attempts": 1, "dead_letter": "invoices.dead"}
    assert api.put("/v1/queue/invoices", json=options).status_code in (200, 201)
    [first, _] = fail_tasks(api, "invoices", ["PDF renderer crashed", "PDF renderer crashed"])
    sign_in(page, server, "admin", f"#/queue/{PRODUCER_QUEUE}")
    page.goto(f"{server.url}/ui#/queue/invoices.dead")
    expect(page.get_by_text("Dead-letter queue of")).to_be_visible()
    expect(page.get_by_role("link", name="invoices", exact=True)).to_be_visible()
    page.get_by_role("link", name=f"#{first}", exact=True).click()
    expect(page.get_by_text("Dead letter from")).to_be_visible()
    expect(page.get_by_role("region", name="Error of an earlier attempt")).to_contain_text(
        "PDF renderer crashed"
    )
    page.goto(f"{server.url}/ui#/queue/invoices.dead")
    page.get_by_role("button", name="Redrive all…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("invoices")
    dialog.get_by_role("button", name="Redrive").click()
    expect(page.get_by_role("status")).to_have_text(
        "2 of 2 matching tasks moved back to the queues they came from."
    )
    assert counts(api, "invoices")["queued"] == 2
    assert counts(api, "invoices.dead")["queued"] == 0


def test_a_notify_queue_shows_its_endpoint_and_its_outbox(
    page: Page, server: KatarProcess, api: httpx.Client, routes: dict[str, str | None]
) -> None:
    if "GET /v1/queue/{queue}/notify" not in routes:
        pytest.skip("this server has no notify status route (GET /v1/queue/{queue}/notify)")
    # A name that never resolves: each send fails, and the event waits in the outbox.
    url = "https://hooks.invalid/katar-events"
    notify = {"url": url, "events": ["done", "failed"]}
    made = api.put("/v1/queue/receipts", json={"persistent": True, "notify": notify})
    assert made.status_code in (200, 201), made.text
    api.post("/v1/queue/receipts/tasks", json={"data": 1}).raise_for_status()
    [task] = api.post("/v1/queue/receipts", json={}).json()["tasks"]
    acks = [{"_id": task["_id"], "status": "done"}]
    api.post("/v1/queue/receipts", json={"tasks": acks, "max": 0}).raise_for_status()
    sign_in(page, server, "admin", f"#/queue/{PRODUCER_QUEUE}")
    page.goto(f"{server.url}/ui#/queue/receipts")
    panel = page.get_by_role("region", name="Completion webhooks")
    expect(panel.get_by_role("heading")).to_contain_text(url)
    expect(panel).to_contain_text("Events: done, failed.")
    expect(panel).to_contain_text("Waiting to be sent: 1")
    # The failed send, among the last answers, once the server tried (the page polls).
    row = panel.get_by_role("row").filter(has_text="task.done").first
    expect(row).to_contain_text("failed", timeout=30_000)
    expect(row.get_by_role("link", name=task["_id"], exact=True)).to_be_visible()
    expect(panel).to_contain_text("after a failed send")
    expect(panel).to_contain_text("error rate of the last sends: 100%")
    # A queue without notify shows no such panel.
    page.goto(f"{server.url}/ui#/queue/{PRODUCER_QUEUE}")
    expect(page.get_by_role("heading", name=PRODUCER_QUEUE)).to_be_visible()
    expect(page.get_by_role("region", name="Completion webhooks")).to_have_count(0)


def test_a_message_sent_over_sqs_shows_its_attributes(
    page: Page, server: KatarProcess, api: httpx.Client
) -> None:
    name = queue(api, "sqs-orders")
    native = api.post(f"/v1/queue/{name}/tasks", json={"data": {"order": 1}}).json()["tasks"][0]
    sqs = boto3.client(
        "sqs",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=AWS_KEY[0],
        aws_secret_access_key=AWS_KEY[1],
    )
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody="order 2",
        MessageAttributes={
            "SellerName": {"DataType": "String", "StringValue": "Example Store"},
            "raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
        },
    )
    sign_in(page, server, "admin", f"#/task/{name}/{sent['MessageId']}")
    expect(page.get_by_role("heading", name=f"Task #{sent['MessageId']}")).to_be_visible()
    shown = page.get_by_role("region", name="Message attributes")
    expect(shown.get_by_role("row")).to_have_count(3)  # the header and two attributes
    expect(shown.get_by_role("row", name="SellerName String Example Store")).to_be_visible()
    expect(shown.get_by_role("row", name="raw Binary AAH/ (base64)")).to_be_visible()
    expect(page.get_by_role("region", name="Data")).to_contain_text("order 2")
    # The native task of the same queue: its data, and no attributes to show.
    page.goto(f"{server.url}/ui#/task/{name}/{native['_id']}")
    expect(page.get_by_role("heading", name=f"Task #{native['_id']}")).to_be_visible()
    expect(page.get_by_role("region", name="Data")).to_contain_text('"order"')
    expect(page.get_by_role("region", name="Message attributes")).to_have_count(0)
