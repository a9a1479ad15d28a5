"""The real ``katar serve`` with tokens, TLS and its guards against slow clients."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import trustme

from katar.client import Job, Producer, Worker
from katar.errors import RequestRejected
from katar.http.auth import digest
from tests.acceptance.conftest import KatarProcess, run_katar, wait_until


def make_token(tmp_path: Path, role: str, *queues: str) -> tuple[str, str]:
    """A token from ``katar token``, and the block it printed for the file."""
    args = ["token", "--role", role, "--name", f"test {role}"]
    for queue in queues:
        args += ["--queue", queue]
    result = run_katar(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    secret, *rest = result.stdout.splitlines()
    block = "\n".join(line for line in rest if not line.startswith("#"))
    return secret, block


def test_katar_token_prints_a_token_and_its_block(tmp_path: Path) -> None:
    secret, block = make_token(tmp_path, "worker", "emails", "sms")
    assert secret.startswith("katar_")
    assert len(secret) >= 40
    assert block.splitlines() == [
        "[[tokens]]",
        'name = "test worker"',
        f'token_sha256 = "{digest(secret).hex()}"',
        'role = "worker"',
        'queues = ["emails", "sms"]',
    ]
    assert make_token(tmp_path, "worker", "emails")[0] != secret  # random every time
    refused = run_katar(tmp_path, "token", "--role", "boss", "--queue", "x")
    assert refused.returncode == 2
    assert "invalid choice" in refused.stderr


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_https_with_tokens_end_to_end(
    tmp_path: Path, servers: list[KatarProcess], ca: trustme.CA
) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    worker_token, worker_block = make_token(tmp_path, "worker", "emails")
    producer_token, producer_block = make_token(tmp_path, "producer", "emails")
    admin_token, admin_block = make_token(tmp_path, "admin", "*")
    config = tmp_path / "katar.toml"
    config.write_text(
        "[queues.emails]\npersistent = true\n\n"
        + "\n\n".join([worker_block, producer_block, admin_block])
        + "\n"
    )
    server = KatarProcess(
        tmp_path,
        "--config",
        str(config),
        "--tls-cert",
        str(tmp_path / "server.pem"),
        "--tls-key",
        str(tmp_path / "server.pem"),
    ).start()
    servers.append(server)
    assert server.url.startswith("https://")
    assert "access: 3 tokens" in server.output()

    # The client verifies the server's certificate against the test's CA ...
    with (
        httpx.Client(base_url=server.url, timeout=10) as unverified,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        unverified.get("/healthz")
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with httpx.Client(base_url=server.url, timeout=10, verify=context) as client:
        assert client.get("/healthz").status_code == 200  # open
        assert client.post("/v1/queue/emails", json={}).status_code == 401
        forbidden = client.put(
            "/v1/queue/emails", json={}, headers={"authorization": f"Bearer {producer_token}"}
        )
        assert forbidden.status_code == 403
        # ... and plain HTTP on the TLS port gets nowhere.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)

    ca_file = str(tmp_path / "ca.pem")
    with Producer(server.url, token=producer_token, verify=ca_file) as producer:
        ids = [task.id for task in producer.enqueue_many("emails", list(range(20)))]
        with pytest.raises(RequestRejected, match="403"):
            producer.enqueue("other", 1)
    seen: list[int] = []

    def handler(job: Job) -> None:
        seen.append(job.data)

    worker = Worker(server.url, "emails", handler, token=worker_token, verify=ca_file, wait=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: worker.processed == 20)
    finally:
        worker.stop()
        thread.join(20)
    assert sorted(seen) == list(range(20))
    with Producer(server.url, token=admin_token, verify=ca_file) as admin:
        assert {admin.get("emails", task_id).status for task_id in ids} == {"done"}
    assert not any(secret in server.output() for secret in (worker_token, producer_token))


def test_a_bad_certificate_is_a_clear_startup_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    result = run_katar(
        tmp_path, "serve", "--port", "0", "--tls-cert", "bad.pem", "--tls-key", "bad.pem"
    )
    assert result.returncode == 2
    assert "cannot use the TLS certificate 'bad.pem'" in result.stderr
    half = run_katar(tmp_path, "serve", "--port", "0", "--tls-cert", "bad.pem")
    assert half.returncode == 2
    assert "needs both a certificate" in half.stderr


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_slow_and_silent_clients_are_cut_off(tmp_path: Path, servers: list[KatarProcess]) -> None:
    config = tmp_path / "katar.toml"
    config.write_text("[limits]\nhead_timeout = 1\nbody_timeout = 1\n[queues.q]\n")
    server = KatarProcess(tmp_path, "--config", str(config), "--db", "memory://").start()
    servers.append(server)
    address = ("127.0.0.1", server.port)

    with socket.create_connection(address) as silent:  # connects, sends nothing
        started = time.monotonic()
        answer = read_until_closed(silent, 10)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 8

    with socket.create_connection(address) as slowloris:  # a header line now and then
        slowloris.sendall(b"POST /v1/queue/q HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for n in range(3):
            time.sleep(0.4)
            try:
                slowloris.sendall(b"X-Slow-%d: 1\r\n" % n)
            except OSError:
                break
        answer = read_until_closed(slowloris, 10)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request line and headers did not arrive within 1 seconds" in answer

    with socket.create_connection(address) as slow_body:  # headers at once, body never
        slow_body.sendall(
            b"POST /v1/queue/q/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"data"'
        )
        answer = read_until_closed(slow_body, 10)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body did not arrive within 1 seconds" in answer

    # A long poll longer than the head timeout is not cut off: its head came in time.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/v1/queue/q", json={"wait": 2}).status_code == 204
        assert client.post("/v1/queue/q/tasks", json={"data": 1}).status_code == 201
        assert client.get("/v1/queue/q/tasks").json()["tasks"][0]["data"] == 1


def test_a_reachable_address_needs_tokens_or_insecure(tmp_path: Path) -> None:
    result = run_katar(tmp_path, "serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "no tokens are configured" in result.stderr
    assert "--insecure" in result.stderr


def test_an_open_server_answers_its_own_host_names_only(
    tmp_path: Path, servers: list[KatarProcess]
) -> None:
    config = tmp_path / "katar.toml"
    config.write_text('[server]\nallowed_hosts = ["queue.lan"]\n[queues.q]\n')
    server = KatarProcess(
        tmp_path, "--config", str(config), "--db", "memory://", "--allowed-host", ".corp.lan"
    ).start()
    servers.append(server)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for host in ("localhost", f"127.0.0.1:{server.port}", "queue.lan", "a.corp.lan:80"):
            assert client.get("/v1/queues", headers={"Host": host}).status_code == 200, host
        refused = client.post("/v1/queue/q/tasks", json={"data": 1}, headers={"Host": "evil.lan"})
        assert refused.status_code == 403
        assert "--allowed-host" in refused.json()["error"]
        cross = client.post(
            "/v1/queue/q/tasks",
            content=b'{"data": 1}',
            headers={"Content-Type": "text/plain", "Origin": "http://localhost:8000"},
        )
        assert cross.status_code == 403
        assert client.get("/v1/queue/q/tasks").json()["tasks"] == []
    bad = run_katar(tmp_path, "serve", "--port", "0", "--allowed-host", "http://x")
    assert bad.returncode == 2
    assert "allowed_hosts" in bad.stderr
