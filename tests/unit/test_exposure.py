"""Safe defaults: what a server refuses, and what it warns about, before it binds."""

from __future__ import annotations

import logging

import pytest

from katar import Katar, Token, WorkerServer
from katar.errors import ConfigError
from katar.http.auth import Role, digest

TOKEN = Token.declare(sha256=digest("secret").hex(), role="admin", queues=["*"])


def server(host: str, **options: object) -> WorkerServer:
    return WorkerServer(katar=Katar("memory://"), host=host, **options)  # type: ignore[arg-type]


def test_token_declare_reads_a_files_block() -> None:
    assert Token(sha256=digest("secret"), role=Role.ADMIN, queues=frozenset({"*"})) == TOKEN


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_nothing(host: str, caplog: pytest.LogCaptureFixture) -> None:
    server(host).check_exposure()
    assert not caplog.records


def test_a_reachable_address_without_tokens_is_refused() -> None:
    with pytest.raises(ConfigError, match="no tokens are configured"):
        server("0.0.0.0").check_exposure()


def test_insecure_is_allowed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server("0.0.0.0", insecure=True).check_exposure()
    assert "INSECURE" in caplog.text
    assert "anyone who reaches the port" in caplog.text


def test_tokens_without_tls_warn_about_clear_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server("10.1.2.3", tokens=[TOKEN]).check_exposure()
    assert "without TLS" in caplog.text


def test_tls_needs_both_files() -> None:
    with pytest.raises(ConfigError, match="needs both a certificate"):
        server("127.0.0.1", tls_cert="cert.pem")
