"""The span export to an https:// endpoint (katar.tracing): the collector's certificate
checked against OTEL_EXPORTER_OTLP_CERTIFICATE's CA bundle (else the system's CAs), the
headers of OTEL_EXPORTER_OTLP_HEADERS sent, and a certificate that is not trusted: a
warning and the spans dropped, nothing more."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trustme

from katar import Katar
from katar.core.model import State, Task
from katar.errors import ConfigError
from katar.server import WorkerServer
from katar.tracing import Tracing, _export_headers
from tests.helpers.otlp import Receiver, receiving

TRACE = b'{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_receiver(ca: trustme.CA) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with receiving(context) as receiver:
        yield receiver


@pytest.fixture(autouse=True)
def _no_otlp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY", "HEADERS"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", raising=False)


def _deliver(tracing: Tracing, task_id: int) -> None:
    """A poll that delivers one traced task: a receive span."""
    task = Task(
        id=task_id, queue="q", state=State.RUNNING, priority=0, data=msgspec.Raw(b"1"),
        created_at=1, updated_at=1, trace=msgspec.Raw(TRACE),
    )  # fmt: skip
    tracing.poll("q", [], [task], time.time_ns())


def test_spans_reach_an_https_collector_with_the_configured_headers(
    tls_receiver: Receiver, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(bundle))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=key%3Dvalue, authorization=Bearer a")
    tracing = Tracing(tls_receiver.url, export_every=60)
    try:
        _deliver(tracing, 1)
        tracing.flush(10)
    finally:
        tracing.shutdown()
    assert [span.name for span, _resource in tls_receiver.spans] == ["receive q"]
    assert tracing.dropped == 0
    (headers,) = tls_receiver.headers
    assert headers["x-team"] == "key=value"  # URL-decoded, as the specification says
    assert headers["authorization"] == "Bearer a"
    assert headers["content-type"] == "application/x-protobuf"


def test_an_untrusted_certificate_is_a_warning_and_the_spans_are_dropped(
    tls_receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the system's CAs, which do not include the test's
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=secret-value")
    tracing = Tracing(tls_receiver.url, export_every=60)
    try:
        with caplog.at_level(logging.WARNING, logger="katar.tracing"):
            _deliver(tracing, 1)
            tracing.flush(10)
            _deliver(tracing, 2)  # still taken: the server goes on
            tracing.flush(10)
    finally:
        tracing.shutdown()
    assert tls_receiver.spans == []
    assert tracing.dropped == 2
    (record,) = [r for r in caplog.records if r.name == "katar.tracing"]  # once, not per batch
    message = record.getMessage()
    assert "could not export 1 spans to https://127.0.0.1:" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "secret-value" not in caplog.text


@pytest.mark.storeless
def test_a_missing_ca_bundle_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_CERTIFICATE"):
        WorkerServer(katar=Katar("memory://"), otlp_endpoint="https://127.0.0.1:4318")
    # an http endpoint reads no TLS file
    WorkerServer(katar=Katar("memory://"), otlp_endpoint="http://127.0.0.1:4318")


@pytest.mark.storeless
def test_an_encrypted_client_key_stops_the_start_without_a_prompt(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL would ask for the key's password on the terminal: a server would wait there.
    from cryptography.hazmat.primitives import serialization

    client = ca.issue_cert("katar-client")
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a password"),
    )
    (tmp_path / "cert.pem").write_bytes(client.cert_chain_pems[0].bytes())
    (tmp_path / "key.pem").write_bytes(encrypted)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(tmp_path / "key.pem"))
    with pytest.raises(ConfigError, match="encrypted key"):
        WorkerServer(katar=Katar("memory://"), otlp_endpoint="https://127.0.0.1:4318")


def test_a_client_certificate_is_presented(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no export
    client = ca.issue_cert("katar-client")
    for name, blob in (
        ("CERTIFICATE", ca.cert_pem),
        ("CLIENT_CERTIFICATE", client.cert_chain_pems[0]),
        ("CLIENT_KEY", client.private_key_pem),
    ):
        path = tmp_path / f"{name.lower()}.pem"
        blob.write_to_path(str(path))
        monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", str(path))
    with receiving(server_context) as receiver:
        tracing = Tracing(receiver.url, export_every=60)
        try:
            _deliver(tracing, 1)
            tracing.flush(10)
        finally:
            tracing.shutdown()
        assert [span.name for span, _resource in receiver.spans] == ["receive q"]


@pytest.mark.storeless
def test_a_header_http_cannot_send_is_left_out_without_its_value(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-key=%E2%82%ACsecret,x-ok=1")
    with caplog.at_level(logging.WARNING, logger="katar.tracing"):
        headers = _export_headers()
    assert headers["x-ok"] == "1"
    assert "x-key" not in headers
    assert "x-key" in caplog.text
    assert "secret" not in caplog.text
