"""Which sites may talk to the server (katar.http.sites): the Host names a server without
tokens answers (DNS rebinding), browser requests from other sites' pages (refused on the
routes that change something), and the headers every API answer carries."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from katar import Katar
from katar.errors import ConfigError
from katar.http import App, Limits
from katar.http.app import ROUTE_CACHE_BYTES
from katar.http.auth import Role, Token, digest
from katar.http.sites import Hosts, check_host_pattern, cross_site, host_name
from katar.server import WorkerServer
from tests.http.conftest import app_client, opened

ADMIN = "admin-secret"


@pytest.fixture
async def katar() -> AsyncIterator[Katar]:
    """The rules are the HTTP layer's: one store will do."""
    instance = Katar("memory://")
    instance.queue("q", persistent=True)
    async with opened(instance):
        yield instance


@pytest.fixture
async def open_app(katar: Katar) -> App:
    """A server without tokens, as ``katar serve`` makes it (loopback names and one more)."""
    return App(katar.engine, allowed_hosts=["katar", "queue.internal", ".corp.example"])


@pytest.fixture
async def http(open_app: App, via: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(open_app, via) as client:
        yield client


async def count(katar: Katar, queue: str = "q") -> int:
    return len(await katar.queue(queue).tasks())


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:3000",
        "LOCALHOST.:3000",
        "app.localhost:8080",
        "127.0.0.1:3000",
        "127.0.0.2",
        "[::1]:3000",
        "192.168.1.20:3000",  # an address cannot be rebound: answered
        "queue.internal:3000",
        "corp.example",
        "a.b.corp.example:443",
    ],
)
async def test_a_server_without_tokens_answers_its_own_hosts(
    http: httpx.AsyncClient, host: str
) -> None:
    response = await http.get("/v1/queues", headers={"Host": host})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:3000", "localhost.evil.example", "xcorp.example"]
)
async def test_a_server_without_tokens_refuses_other_hosts(
    http: httpx.AsyncClient, katar: Katar, host: str
) -> None:
    # A page of evil.example whose name was rebound to 127.0.0.1 reaches nothing: no read,
    # no write, not even the open routes.
    for method, path, body in [
        ("GET", "/v1/queues", None),
        ("GET", "/healthz", None),
        ("POST", "/v1/queue/q/tasks", b'{"data": 1}'),
        ("POST", "/v1/queue/q/tasks/bulk", b'{"action": "cancel"}'),
    ]:
        response = await http.request(method, path, content=body, headers={"Host": host})
        assert response.status_code == 403, (method, path)
        assert "allowed_hosts" in response.json()["error"]
    assert await count(katar) == 0


async def test_a_server_with_tokens_answers_any_host(katar: Katar, via: str) -> None:
    admin = Token(sha256=digest(ADMIN), role=Role.ADMIN, queues=frozenset({"*"}))
    app = App(katar.engine, tokens=[admin], allowed_hosts=[])
    assert app.hosts is None
    async with app_client(app, via) as http:
        headers = {"Host": "queue.example.com", "Authorization": f"Bearer {ADMIN}"}
        response = await http.get("/v1/queues", headers=headers)
        assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://localhost:8000", "Sec-Fetch-Site": "same-site"},  # another port
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},  # a browser that sends no Sec-Fetch-Site
        {"Origin": "null"},  # a sandboxed frame, a file
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_writes_from_another_sites_page_are_refused(
    http: httpx.AsyncClient, katar: Katar, headers: dict[str, str]
) -> None:
    # What fetch(url, {mode: "no-cors", body, headers: {"Content-Type": "text/plain"}})
    # sends: no preflight, so the server is the one to refuse it.
    await katar.queue("q").enqueue({"n": 1})
    plain = {"Content-Type": "text/plain", **headers}
    for method, path, body in [
        ("POST", "/v1/queue/q/tasks", b'{"data": 1}'),
        ("POST", "/v1/queue/q/tasks/bulk", b'{"action": "cancel"}'),
        ("POST", "/v1/queue/q", b"{}"),
        ("PATCH", "/v1/queue/q", b'{"paused": true}'),
        ("DELETE", "/v1/queue/q", None),
    ]:
        response = await http.request(method, path, content=body, headers=plain)
        assert response.status_code == 403, (method, path, response.text)
        assert "another site" in response.json()["error"]
    tasks = await katar.queue("q").tasks()
    assert [task.status for task in tasks] == ["queued"]
    assert not katar.engine.options("q").paused
    # Reads are not refused: a page of another site cannot read their answers (no CORS).
    response = await http.get("/v1/queue/q/tasks", headers=plain)
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, a worker: no browser headers
        {"Content-Type": "application/x-www-form-urlencoded"},  # the README's curl -d
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost:3000"},  # the dashboard
        {"Sec-Fetch-Site": "none"},  # typed by the user
    ],
)
async def test_writes_from_programs_and_the_servers_own_pages_are_answered(
    http: httpx.AsyncClient, katar: Katar, headers: dict[str, str]
) -> None:
    response = await http.post("/v1/queue/q/tasks", content=b'{"data": 1}', headers=headers)
    assert response.status_code == 201, response.text
    assert await count(katar) == 1


async def test_a_browser_without_sec_fetch_site_is_judged_by_its_origin(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    host = str(http.base_url.netloc.decode())
    own = {"Origin": f"http://{host}", "Host": host}
    response = await http.post("/v1/queue/q/tasks", json={"data": 1}, headers=own)
    assert response.status_code == 201, response.text
    other = {"Origin": "http://localhost:1", "Host": host}
    response = await http.post("/v1/queue/q/tasks", json={"data": 1}, headers=other)
    assert response.status_code == 403


async def test_a_server_with_tokens_refuses_cross_site_writes_too(katar: Katar, via: str) -> None:
    admin = Token(sha256=digest(ADMIN), role=Role.ADMIN, queues=frozenset({"*"}))
    async with app_client(App(katar.engine, tokens=[admin]), via) as http:
        headers = {"Authorization": f"Bearer {ADMIN}", "Sec-Fetch-Site": "cross-site"}
        response = await http.post("/v1/queue/q/tasks", json={"data": 1}, headers=headers)
        assert response.status_code == 403
    assert await count(katar) == 0


def test_the_host_and_origin_rules() -> None:
    assert host_name(b"Example.COM.:80") == "example.com"
    assert host_name(b"[::1]:3000") == "[::1]"
    assert host_name(b"[::1]") == "[::1]"
    assert check_host_pattern(" Queue.Internal. ") == "queue.internal"
    assert check_host_pattern(".corp") == ".corp"
    for bad in ["http://x", "x:3000", "", "a b", "."]:
        with pytest.raises(ValueError, match="not a host name"):
            check_host_pattern(bad)
    hosts = Hosts([])
    assert hosts.allows(None)  # HTTP/1.0 without Host: no browser
    assert not hosts.allows(b"")
    for n in range(1000):  # what it remembers is bounded, however many hosts it answers
        assert hosts.allows(b"127.0.0.%d:%s" % (n % 250, b"1" * (n % 500)))
        assert not hosts.allows(b"evil%d.example" % n)
    assert len(hosts._known) <= 64
    assert all(len(header) <= 300 for header in hosts._known)
    assert Hosts(["*"]).allows(b"anything.example")
    assert not cross_site(None, None, b"localhost:3000")
    assert not cross_site(None, b"http://localhost:3000", b"localhost:3000")
    assert not cross_site(None, b"http://localhost", b"localhost:80")
    assert not cross_site(None, b"https://q.example", b"q.example:443")
    assert cross_site(None, b"https://q.example", b"q.example:80")
    assert cross_site(None, b"http://localhost:3001", b"localhost:3000")
    assert cross_site(b"same-site", b"http://localhost:3000", b"localhost:3000")


def test_katar_serve_answers_its_host_and_checks_the_configured_names() -> None:
    katar = Katar("memory://")
    server = WorkerServer(katar=katar, host="katar.lan", insecure=True, allowed_hosts=["q.lan"])
    assert server.app.hosts is not None
    assert server.app.hosts.allows(b"katar.lan:3000")
    assert server.app.hosts.allows(b"q.lan")
    assert not server.app.hosts.allows(b"evil.example")
    with pytest.raises(ConfigError, match="allowed_hosts"):
        WorkerServer(katar=katar, allowed_hosts=["http://q.lan"])


async def test_api_answers_are_not_cached_nor_sniffed(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    await katar.queue("q").enqueue({"n": 1})
    answers = [
        await http.get("/v1/queues"),
        await http.post("/v1/queue/q", json={"max": 1}),  # 200, a delivery
        await http.post("/v1/queue/q", json={}),  # 204
        await http.get("/v1/queue/nope/tasks"),  # 404
        await http.get("/metrics"),
        await http.get("/openapi.json"),
    ]
    for response in answers:
        assert response.headers["cache-control"] == "no-store", response.request.url
        assert response.headers["x-content-type-options"] == "nosniff"
    assert [r.status_code for r in answers[1:3]] == [200, 204]


async def test_the_docs_page_has_the_dashboards_security_headers(http: httpx.AsyncClient) -> None:
    docs = await http.get("/docs")
    ui = await http.get("/ui")
    for name in ["content-security-policy", "x-content-type-options", "referrer-policy"]:
        assert name in docs.headers
        assert name in ui.headers
    policy = docs.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'sha256-" in policy
    assert "unsafe-inline" not in policy


async def test_an_escaped_slash_through_asgi_is_part_of_a_segment(
    http: httpx.AsyncClient, katar: Katar
) -> None:
    await katar.queue("q").enqueue({"n": 1})
    response = await http.get("/v1/queue/q%2Ftasks")
    assert response.status_code == 404
    assert (await http.get("/v1/queue/%71/tasks")).json()["tasks"] != []


async def test_the_route_cache_holds_a_bounded_number_of_bytes(katar: Katar, via: str) -> None:
    # Unauthenticated requests to unique paths, long and short: the route cache (the only
    # thing such a request leaves behind) stays within its bound, counted as Python holds it.
    admin = Token(sha256=digest(ADMIN), role=Role.ADMIN, queues=frozenset({"*"}))
    app = App(katar.engine, tokens=[admin], limits=Limits())
    for n in range(3000):
        long_name = f"{n:05d}" + "x" * 60_000
        assert app.admit("GET", f"/v1/queue/{long_name}", []).refusal is not None
        assert app.admit("GET", f"/v1/queue/q{n}/tasks/{n}/children", []).refusal is not None
        assert app.admit("GET", f"/nothing/{n}" + "y" * 400, []).refusal is not None
        held = app.route_cache_bytes()
        assert held <= ROUTE_CACHE_BYTES
    routed = app._routed
    actual = sum(
        sys.getsizeof(path) + sys.getsizeof(value) + sum(sys.getsizeof(p) for p in value[2])
        for path, value in routed.items()
    )
    assert actual <= ROUTE_CACHE_BYTES
    async with app_client(app, via) as http:  # and over the wire, a few of them
        for n in range(20):
            response = await http.get(f"/v1/queue/{n:05d}" + "z" * 60_000)
            assert response.status_code == 401
    assert app.route_cache_bytes() <= ROUTE_CACHE_BYTES
