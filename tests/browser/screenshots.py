"""Make the dashboard's screenshots in docs/img: ``python -m tests.browser.screenshots``.

A real ``katar serve`` with a few queues at work, and Debian's Chromium, as in the browser
tests: the overview, a queue's failed tasks, a task and the workers, in light and dark, and
the overview and a queue at a phone's width.
"""

from __future__ import annotations

import random
import tempfile
import threading
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

from tests.acceptance.conftest import KatarProcess
from tests.browser.conftest import CHROMIUM, TOKENS, config

OUT = Path(__file__).resolve().parents[2] / "docs" / "img"
ERRORS = [
    "SMTP 550: mailbox unavailable",
    "timeout after 30 s talking to mail.internal:25",
    "template 'welcome' has no field 'first_name'",
]


def scene(api: httpx.Client) -> str:
    """Queues with tasks in every state; the id of a failed task of "emails"."""
    api.put("/v1/queue/emails", json={"persistent": True, "max_attempts": 3})
    api.put("/v1/queue/reports", json={"persistent": True, "concurrency": 2})
    api.put("/v1/queue/thumbnails", json={"persistent": True})
    emails = [
        {
            "data": {"to": f"user{n}@example.com", "template": "welcome"},
            "key": f"user{n}@example.com",
        }
        for n in range(40)
    ]
    api.post("/v1/queue/emails/tasks", json={"tasks": emails})
    taken = api.post("/v1/queue/emails", json={"max": 30, "worker": "mailer-1"}).json()["tasks"]
    acks = []
    for n, task in enumerate(taken[:27]):
        if n % 4 == 1:
            acks.append({"_id": task["_id"], "status": "failed", "error": ERRORS[n % 3]})
        else:
            acks.append({"_id": task["_id"], "status": "done", "result": {"sent": True}})
    api.post("/v1/queue/emails", json={"tasks": acks, "max": 0})
    reports = [{"data": {"month": f"2026-{m:02}"}} for m in range(1, 12)]
    api.post("/v1/queue/reports/tasks", json={"tasks": reports})
    api.post("/v1/queue/reports", json={"max": 2, "worker": "reporter-a"})
    api.post("/v1/queue/thumbnails/tasks", json={"tasks": [{"data": n} for n in range(120)]})
    api.patch("/v1/queue/thumbnails", json={"paused": True})
    return str(next(a["_id"] for a in acks if a["status"] == "failed"))


def traffic(api: httpx.Client, stop: threading.Event) -> None:
    """Tasks enqueued and done on "emails" while the overview draws its charts."""
    while not stop.wait(0.5):
        api.post("/v1/queue/emails/tasks", json={"tasks": [{"data": 1}] * random.randint(3, 9)})
        taken = api.post("/v1/queue/emails", json={"max": 8, "worker": "mailer-2"})
        if taken.status_code == 200:
            acks = [{"_id": t["_id"], "status": "done"} for t in taken.json()["tasks"]]
            api.post("/v1/queue/emails", json={"tasks": acks, "max": 0})


def shoot(page: Page, url: str, name: str, wait: float = 1.5) -> None:
    page.goto(url)
    page.mouse.move(0, 0)  # no hover effect in the picture
    page.wait_for_timeout(wait * 1000)
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        server = KatarProcess(work, "--config", str(config(work / "katar.toml"))).start()
        headers = {"authorization": f"Bearer {TOKENS['admin']}"}
        try:
            with httpx.Client(base_url=server.url, headers=headers, timeout=10) as api:
                failed = scene(api)
                stop = threading.Event()
                busy = threading.Thread(target=traffic, args=(api, stop), daemon=True)
                busy.start()
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(
                        executable_path=str(CHROMIUM), args=["--no-sandbox"]
                    )
                    for scheme in ("light", "dark"):
                        for width, suffix in ((1280, ""), (390, "-phone")):
                            if suffix and scheme == "dark":
                                continue
                            context = browser.new_context(
                                color_scheme=scheme,
                                viewport={"width": width, "height": 800},
                                device_scale_factor=1 if width > 600 else 2,
                            )
                            page = context.new_page()
                            page.goto(f"{server.url}/ui")
                            page.get_by_label("Token").fill(TOKENS["admin"])
                            page.get_by_role("button", name="Sign in").click()
                            page.get_by_role("button", name="Sign out").wait_for()
                            base = f"{server.url}/ui"
                            shoot(page, base + "#/", f"overview-{scheme}{suffix}", 14)
                            shoot(
                                page,
                                base + "#/queue/emails?status=failed",
                                f"queue-{scheme}{suffix}",
                            )
                            if not suffix:
                                shoot(page, f"{base}#/task/emails/{failed}", f"task-{scheme}")
                                shoot(page, base + "#/workers", f"workers-{scheme}")
                            context.close()
                    browser.close()
                stop.set()
                busy.join(10)
        finally:
            server.kill()


if __name__ == "__main__":
    main()
