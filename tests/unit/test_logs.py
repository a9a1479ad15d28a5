"""Log lines: credentials masked, JSON lines, outages said once."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

from katar import config, logs
from katar.errors import ConfigError
from katar.logs import mask_credentials


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:secret@h:5432/db?pool_size=3", "postgresql://u:***@h:5432/db?pool_size=3"),
        ("postgres://u:se@cr/et@h/db", "postgres://u:***@h/db"),  # raw "@" and "/" in it
        ("postgresql://:secret@h/db", "postgresql://:***@h/db"),
        ("postgresql://u:s@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        (
            "postgresql://h/db?user=u&password=secret&x=1",
            "postgresql://h/db?user=u&password=***&x=1",
        ),
        ("failed: host=h PASSWORD=secret user=u", "failed: host=h PASSWORD=*** user=u"),
        ("at postgresql://u:secret@h/db: refused", "at postgresql://u:***@h/db: refused"),
        # Nothing to mask: unchanged.
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        ("sqlite:////var/lib/katar/k.db", "sqlite:////var/lib/katar/k.db"),
        ("memory://", "memory://"),
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


def test_mask_credentials_also_masks_the_urls_password_quoted_elsewhere() -> None:
    url = "postgresql://u:p%40ssword@h/db"
    message = 'FATAL: bad password "p@ssword" (p%40ssword)'
    assert mask_credentials(message, url) == 'FATAL: bad password "***" (***)'


def test_store_urls_are_masked_by_the_stores() -> None:
    from katar.store import open_store

    store = open_store("memory://u:secret@x")
    assert store.url == "memory://u:***@x"
    with pytest.raises(ConfigError) as caught:
        open_store("mysql://u:secret@h/db")
    assert "secret" not in str(caught.value)
    assert "u:***@h" in str(caught.value)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("katar", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_json_lines_have_time_level_message_and_fields() -> None:
    line = logs.JsonFormatter().format(
        record("store %s unreachable", "postgresql://u:pw@h/d", route="/x", status=503)
    )
    parsed = json.loads(line)
    assert parsed["time"].endswith("Z")
    assert parsed["level"] == "warning"
    assert parsed["logger"] == "katar"
    assert parsed["message"] == "store postgresql://u:***@h/d unreachable"
    assert parsed["route"] == "/x"
    assert parsed["status"] == 503
    try:
        raise RuntimeError("boom postgresql://u:pw@h/d")
    except RuntimeError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    parsed = json.loads(logs.JsonFormatter().format(failed))
    assert "RuntimeError: boom postgresql://u:***@h/d" in parsed["exception"]


def test_text_lines_are_masked_too() -> None:
    line = logs.TextFormatter().format(record("at %s", "postgresql://u:pw@h/d"))
    assert line.endswith("WARNING katar: at postgresql://u:***@h/d")


def test_configure_sets_the_level_and_the_format() -> None:
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    stream = io.StringIO()
    try:
        logs.configure("warning", "json", stream)
        logs.configure("warning", "json", stream)  # again: still one handler of ours
        logging.getLogger("katar").info("not shown")
        logging.getLogger("katar").warning("shown")
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "shown"


def test_an_outage_is_said_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    outages = logs.Outages()
    outages.up()  # nothing was down: nothing to say
    for _ in range(100):
        outages.down("PostgreSQL is unavailable")
    outages.up()
    outages.up()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("store unavailable: PostgreSQL is unavailable")
    assert messages[1].startswith("store available again")
    assert "(100 operation(s)" in messages[1]


def test_an_outage_lasts_while_the_store_says_it_still_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A full SQLite disk: reads and acks succeed between refused writes. Each success must
    # not end the outage (a pair of lines a second), only the store's recovery does.
    caplog.set_level(logging.INFO)
    failing: list[str] = []
    outages = logs.Outages(lambda: failing[0] if failing else None)
    failing.append("the disk refused a write")
    for _ in range(50):
        outages.down("SQLite cannot write: database or disk is full")
        outages.up()
    failing.clear()
    outages.up()
    outages.up()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("store unavailable: SQLite cannot write")
    assert messages[1].startswith("store available again")
    assert "(50 operation(s)" in messages[1]


def test_the_logging_table(tmp_path: Path) -> None:
    path = tmp_path / "katar.toml"
    path.write_text('[logging]\nlevel = "debug"\nformat = "json"\naccess_log = true\n')
    settings = config.load(path)
    assert (settings.log_level, settings.log_format, settings.access_log) == ("debug", "json", True)
    path.write_text('[logging]\nformat = "xml"\n')
    with pytest.raises(ConfigError, match=r"line 2: \[logging\] format: must be one of text, json"):
        config.load(path)
    path.write_text("[logging]\nlevle = 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        config.load(path)
