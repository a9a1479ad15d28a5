"""The dashboard's files at /ui, and GET /v1/token, which tells the dashboard what to show."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from katar import Katar, ui
from katar.http import App
from tests.helpers.tokens import SECRETS, TOKENS, bearer
from tests.http.conftest import app_client, opened


@pytest.fixture
async def katar() -> AsyncIterator[Katar]:
    """One store is enough: nothing here reads or writes tasks."""
    async with opened(Katar("memory://")) as instance:
        yield instance


@pytest.fixture
async def guarded(katar: Katar, via: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(App(katar.engine, tokens=TOKENS), via) as client:
        yield client


async def test_the_page_is_served_without_a_token_and_holds_no_data(
    guarded: httpx.AsyncClient,
) -> None:
    response = await guarded.get("/ui")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/ui/app.mjs"></script>' in response.text
    assert (await guarded.get("/ui/")).text == response.text  # the same page


async def test_the_page_may_reach_this_server_only(guarded: httpx.AsyncClient) -> None:
    response = await guarded.get("/ui")
    policy = dict(
        part.strip().split(" ", 1)
        for part in response.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no inline script, no eval
    assert policy["frame-ancestors"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    # Nothing in the files names another host, which the policy would refuse anyway.
    static = Path(ui.__file__).parent / "static"
    # (The icon is left out: SVG names its XML namespace by a URL, which is fetched by no one.)
    for name in sorted(entry.name for entry in static.iterdir() if entry.suffix != ".svg"):
        text = (await guarded.get(f"/ui/{name}")).text
        assert not re.search(r"https?://", text), name


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("app.mjs", "text/javascript; charset=utf-8"),
        ("preact.mjs", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
async def test_each_file_is_served_with_its_type(
    guarded: httpx.AsyncClient, name: str, kind: str
) -> None:
    response = await guarded.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == kind
    assert response.content == ui.find(name).body  # type: ignore[union-attr]


async def test_a_current_copy_is_answered_304(guarded: httpx.AsyncClient) -> None:
    first = await guarded.get("/ui/app.mjs")
    assert first.headers["cache-control"] == "no-cache"
    etag = first.headers["etag"]
    again = await guarded.get("/ui/app.mjs", headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    stale = await guarded.get("/ui/app.mjs", headers={"if-none-match": '"old"'})
    assert stale.status_code == 200


@pytest.mark.parametrize("name", ["nothing.js", "preact.LICENSE", "..", "%2e%2e%2fpyproject.toml"])
async def test_an_unknown_file_is_a_404(guarded: httpx.AsyncClient, name: str) -> None:
    response = await guarded.get(f"/ui/{name}")
    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("who", "role", "queues", "name"),
    [
        ("worker", "worker", ["own"], ""),
        ("producer", "producer", ["own"], ""),
        ("admin", "admin", ["own"], ""),
        ("root", "admin", ["*"], "ops"),
    ],
)
async def test_a_token_learns_what_it_may_do(
    guarded: httpx.AsyncClient, who: str, role: str, queues: list[str], name: str
) -> None:
    response = await guarded.get("/v1/token", headers=bearer(who))
    assert response.status_code == 200
    assert response.json() == {"role": role, "queues": queues, "name": name, "auth": True}


async def test_without_a_valid_token_the_answer_is_401(guarded: httpx.AsyncClient) -> None:
    assert (await guarded.get("/v1/token")).status_code == 401
    wrong = {"authorization": "Bearer " + SECRETS["root"] + "x"}
    assert (await guarded.get("/v1/token", headers=wrong)).status_code == 401


async def test_a_server_without_tokens_says_it_is_open(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/token")
    assert response.json() == {"role": "admin", "queues": ["*"], "name": "", "auth": False}
