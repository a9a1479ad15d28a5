"""`katar enqueue --run-at`: an ISO 8601 time, UTC when it names no zone."""

from __future__ import annotations

from katar.client import Producer
from tests.acceptance.conftest import KatarProcess
from tests.acceptance.test_cli_client import katar, server

__all__ = ["server"]  # the fixture, used by name


def test_enqueue_run_at(server: KatarProcess) -> None:
    later = katar(server, "enqueue", "--queue", "jobs", "--run-at", "2030-01-31T10:00", "1")
    out, err = later.communicate(timeout=30)
    assert later.returncode == 0, err
    with Producer(server.url) as producer:
        assert producer.get("jobs", out.strip()).run_at == "2030-01-31T10:00:00.000Z"
    both = katar(
        server, "enqueue", "--queue", "jobs", "--delay", "5", "--run-at", "2030-01-01", "1"
    )
    _, err = both.communicate(timeout=30)
    assert both.returncode == 2
    assert "not allowed with argument" in err
    bad = katar(server, "enqueue", "--queue", "jobs", "--run-at", "soon", "1")
    _, err = bad.communicate(timeout=30)
    assert bad.returncode == 2
    assert "not an ISO 8601 time" in err
