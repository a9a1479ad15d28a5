"""A real ``katar serve`` with tokens, and Debian's Chromium driven by Playwright.

The browser is the system's (/usr/bin/chromium, ``apt-get install chromium``), never one
that Playwright downloads. Without it these tests skip, unless KATAR_REQUIRE_BROWSER=1 (CI),
when they fail. Every page records the requests it makes and what it logs: a request to any
other host is refused and fails the test, and so does a console error or an uncaught
exception.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, sync_playwright

from katar.auth import digest
from tests.acceptance.conftest import KatarProcess

CHROMIUM = Path("/usr/bin/chromium")
TOKENS = {"admin": "katar_admin-browser", "producer": "katar_producer-browser"}
#: An access key of the SQS API (admin, every queue) and its secret, kept in a file.
AWS_KEY = ("AKIAKATARBROWSER01", "browser-secret")
#: The producer's one queue; the admin's tests use others.
PRODUCER_QUEUE = "orders"


def _need_browser() -> None:
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("KATAR_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def config(path: Path) -> Path:
    """A configuration with an admin token (every queue), a producer token (one queue) and
    an SQS access key (admin, every queue)."""
    secret = path.with_name("aws-secret")
    secret.write_text(AWS_KEY[1], encoding="utf-8")
    path.write_text(
        f"""
[store]
url = "memory://"

[queues.{PRODUCER_QUEUE}]
persistent = true

[[tokens]]
name = "ops"
token_sha256 = "{digest(TOKENS["admin"]).hex()}"
role = "admin"
queues = ["*"]

[[tokens]]
name = "shop"
token_sha256 = "{digest(TOKENS["producer"]).hex()}"
role = "producer"
queues = ["{PRODUCER_QUEUE}"]

[[aws_credentials]]
access_key_id = "{AWS_KEY[0]}"
role = "admin"
queues = ["*"]
secret_file = "{secret}"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KatarProcess]:
    _need_browser()
    folder = tmp_path_factory.mktemp("katar")
    process = KatarProcess(folder, "--config", str(config(folder / "katar.toml"))).start()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def api(server: KatarProcess) -> Iterator[httpx.Client]:
    """The HTTP API with the admin token, to set the scene and check the outcome."""
    headers = {"authorization": f"Bearer {TOKENS['admin']}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def routes(api: httpx.Client) -> dict[str, str | None]:
    """The server's routes ("GET /v1/workers") and the role each needs (None: open), from
    its OpenAPI document."""
    paths: dict[str, dict[str, Any]] = api.get("/openapi.json").json()["paths"]
    return {
        f"{method.upper()} {path}": operation.get("x-katar-role")
        for path, item in paths.items()
        for method, operation in item.items()
        if method != "parameters"
    }


@pytest.fixture(scope="module")
def browser(server: KatarProcess) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watch:
    """What a page did: every request it made, and every error it logged or threw."""

    origin: str
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: "Failed to load resource" for these URL paths is expected (a 401 before sign-in).
    expected_failures: set[str] = field(default_factory=set)

    def route(self, route: Route, request: Request) -> None:
        self.requests.append(request.url)
        parts = urlsplit(request.url)
        if request.url.startswith(("data:", "blob:")) or f"{parts.scheme}://{parts.netloc}" == (
            self.origin
        ):
            route.continue_()
        else:
            self.outside.append(request.url)
            route.abort()

    def console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        failed = message.text.startswith("Failed to load resource")
        if failed and urlsplit(url).path in self.expected_failures:
            return
        self.errors.append(f"{message.text} ({url})")

    def check(self) -> None:
        assert not self.outside, f"the page tried to reach other hosts: {self.outside}"
        assert not self.errors, f"the page logged errors: {self.errors}"


@pytest.fixture
def watch(server: KatarProcess) -> Watch:
    return Watch(server.url, expected_failures={"/v1/token"})


@pytest.fixture
def page(browser: Browser, watch: Watch) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.route("**/*", watch.route)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("console", watch.console)
    page.on("pageerror", lambda error: watch.errors.append(f"uncaught: {error}"))
    try:
        yield page
        watch.check()
    finally:
        context.close()


def sign_in(page: Page, server: KatarProcess, who: str, hash_: str = "") -> None:
    """Open the dashboard (at ``hash_``, e.g. "#/workers") and sign in as ``who``."""
    page.goto(f"{server.url}/ui{hash_}")
    page.get_by_label("Token").fill(TOKENS[who])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


def fail_tasks(api: httpx.Client, queue: str, errors: list[str]) -> list[str]:
    """Tasks enqueued on ``queue``, delivered to a worker and failed with ``errors``."""
    # The highest priority, so that the poll below takes these, whatever else is queued.
    batch = [{"data": {"job": n}, "priority": 2**31 - 1} for n in range(len(errors))]
    response = api.post(f"/v1/queue/{queue}/tasks", json={"tasks": batch})
    assert response.status_code == 201, response.text
    ids = [task["_id"] for task in response.json()["tasks"]]
    taken = api.post(f"/v1/queue/{queue}", json={"max": len(ids), "worker": "mailer-1"})
    assert sorted(task["_id"] for task in taken.json()["tasks"]) == sorted(ids)
    acks = [{"_id": i, "status": "failed", "error": e} for i, e in zip(ids, errors, strict=True)]
    # max 0: the acks only, so that the poll takes no other task.
    assert api.post(f"/v1/queue/{queue}", json={"tasks": acks, "max": 0}).status_code == 204
    return ids


def counts(api: httpx.Client, queue: str) -> dict[str, int]:
    for info in api.get("/v1/queues").json()["queues"]:
        if info["name"] == queue:
            found: dict[str, int] = info["counts"]
            return found
    raise AssertionError(f"no queue {queue}")
