"""The typed configuration that the TOML file and the command line both produce.

```toml
[store]
url = "sqlite:///katar.db"

[server]               # optional; the command line's flags win over it
host = "127.0.0.1"
port = 3000

[limits]               # optional; see katar.http.Limits for the defaults
max_body_bytes = 10485760

[queues.emails]
persistent = true
[queues.emails.configuration]
interval = 1000
```
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from katar.core.engine import QUEUE_NAME
from katar.core.model import QueueOptions, parse_queue_options
from katar.errors import ConfigError, ValidationError
from katar.http import Limits

DEFAULT_STORE: Final = "sqlite:///katar.db"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 3000

_TABLES: Final = ("store", "server", "limits", "queues", "tokens")


@dataclass(kw_only=True)
class Settings:
    """Everything ``katar serve`` needs."""

    store_url: str = DEFAULT_STORE
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    insecure: bool = False
    limits: Limits = field(default_factory=Limits)
    queues: dict[str, QueueOptions] = field(default_factory=dict)


class _Located:
    """Finds the line of a key in the file's text, so errors can point at it."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line(self, table: str, key: str | None = None) -> int | None:
        # The table's own header, or failing that the first header inside it.
        header = re.compile(
            r"^\s*\[\[?\s*"
            + r"\s*\.\s*".join(r'(?:"?' + re.escape(part) + r'"?)' for part in table.split("."))
            + r"\s*(\]|\.)"
        )
        start = None
        for number, text in enumerate(self.lines, 1):
            if start is None and header.match(text):
                start = number
                if key is None:
                    return number
            elif start is not None:
                if re.match(r"^\s*\[", text):
                    break
                if key is not None and re.match(r'^\s*"?' + re.escape(key) + r'"?\s*=', text):
                    return number
        return start

    def error(self, message: str, table: str, key: str | None = None) -> ConfigError:
        line = self.line(table, key)
        where = f"{self.path}, line {line}" if line else self.path
        name = f"[{table}] {key}" if key else f"[{table}]"
        return ConfigError(f"{where}: {name}: {message}")


def load(path: str | Path) -> Settings:
    """Read a TOML configuration file. Raises ConfigError that names the key and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the configuration file {str(path)!r}: {exc.strerror}"
        ) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse(raw, _Located(str(path), text))


def _table(raw: dict[str, Any], name: str, where: _Located) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise where.error("must be a table", name)
    return value


def parse(raw: dict[str, Any], where: _Located) -> Settings:
    """Settings from a decoded TOML document."""
    settings = Settings()
    for key in raw:
        if key not in _TABLES:
            raise where.error(f"unknown table; expected one of {', '.join(_TABLES)}", key)
    if "tokens" in raw:
        raise where.error(
            "authentication is not available in this version of Katar yet; remove the "
            "[[tokens]] blocks and keep the server on a loopback address or a private network",
            "tokens",
        )
    store = _table(raw, "store", where)
    for key, value in store.items():
        if key != "url":
            raise where.error("unknown key; the [store] table takes url", "store", key)
        if not isinstance(value, str):
            raise where.error('must be a string such as "sqlite:///katar.db"', "store", key)
        settings.store_url = value
    server = _table(raw, "server", where)
    for key, value in server.items():
        if key == "host" and isinstance(value, str):
            settings.host = value
        elif key == "port" and isinstance(value, int) and 0 <= value <= 65535:
            settings.port = value
        elif key in ("host", "port"):
            expected = "a string" if key == "host" else "an integer from 0 to 65535"
            raise where.error(f"must be {expected}", "server", key)
        else:
            raise where.error("unknown key; the [server] table takes host and port", "server", key)
    settings.limits = _limits(_table(raw, "limits", where), where)
    for name, options in _table(raw, "queues", where).items():
        table = f"queues.{name}"
        if not QUEUE_NAME.fullmatch(name):
            raise where.error(
                "invalid queue name: use letters, digits, '.', '_', ':' or '-'", table
            )
        try:
            settings.queues[name] = parse_queue_options(options)
        except ValidationError as exc:
            raise where.error(exc.message, table, exc.details.get("option")) from None
    return settings


def _limits(raw: dict[str, Any], where: _Located) -> Limits:
    fields = {f.name: f.type for f in dataclasses.fields(Limits)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise where.error(f"unknown limit; expected one of {', '.join(fields)}", "limits", key)
        number_ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if not number_ok or (fields[key] == "int" and not isinstance(value, int)):
            raise where.error(f"must be a positive {fields[key]}", "limits", key)
        values[key] = value
    return Limits(**values)
