"""The configuration file: what it accepts, and errors that name the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from katar import config
from katar.errors import ConfigError


def load(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "katar.toml"
    path.write_text(text)
    return config.load(path)


def test_a_full_file(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
[store]
url = "sqlite:///data/k.db"

[server]
host = "127.0.0.2"
port = 4000

[limits]
max_wait = 20
max_body_bytes = 1024

[queues.emails]
persistent = true
timeout = 30000

[queues.emails.configuration]
interval = 1000
smtp = {host = "mail", port = 25}

[queues."images.resize"]
""",
    )
    assert settings.store_url == "sqlite:///data/k.db"
    assert (settings.host, settings.port) == ("127.0.0.2", 4000)
    assert settings.limits.max_wait == 20 and settings.limits.max_body_bytes == 1024
    emails = settings.queues["emails"]
    assert emails.persistent and emails.timeout == 30000
    assert emails.worker_configuration() == {"interval": 1000, "smtp": {"host": "mail", "port": 25}}
    assert settings.queues["images.resize"].timeout == 60000


def test_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, "")
    assert settings.store_url == "sqlite:///katar.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 3000)
    assert settings.queues == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[queue.emails]\n", "line 1: [queue]: unknown table"),
        ("[store]\nurl = 5\n", "line 2: [store] url: must be a string"),
        ("[store]\npath = 'x'\n", "line 2: [store] path: unknown key"),
        ("[server]\nport = 70000\n", "line 2: [server] port: must be an integer"),
        ("[limits]\nmax_wait = -1\n", "line 2: [limits] max_wait: must be a positive"),
        ("[limits]\nmax_list = 2.5\n", "[limits] max_list: must be a positive int"),
        ("\n[queues.emails]\ntimeout = '1s'\n", "line 3: [queues.emails] timeout: queue option"),
        (
            "[queues.emails]\n\n\nretries = 3\n",
            "line 4: [queues.emails] retries: unknown queue option",
        ),
        ("[queues.emails.configuration]\ninterval = -5\n", "[queues.emails] configuration"),
        ('[queues."bad name"]\n', "invalid queue name"),
        ("[[tokens]]\nrole = 'worker'\n", "authentication is not available"),
        ("[store\n", "invalid TOML"),
    ],
)
def test_errors_name_the_key_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert fragment in str(caught.value)
    assert "katar.toml" in str(caught.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        config.load(tmp_path / "missing.toml")
