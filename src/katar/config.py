"""The typed configuration that the TOML file and the command line both produce.

```toml
[store]
url = "sqlite:///katar.db"

[server]               # optional; the command line's flags win over it
host = "127.0.0.1"
port = 3000
tls_cert = "/etc/katar/cert.pem"   # both, to serve HTTPS
tls_key = "/etc/katar/key.pem"

[limits]               # optional; see katar.limits.Limits for the defaults
max_body_bytes = 10485760

[queues.emails]
persistent = true
[queues.emails.configuration]
interval = 1000

[logging]              # optional; the command line's flags win over it
level = "info"         # debug, info, warning or error
format = "text"        # or "json": one object a line
access_log = false     # a line per answered request

[[tokens]]             # none: the server is open (and then only on loopback addresses)
name = "mailer"        # optional, for people
token_sha256 = "..."   # `katar token` prints a token and this block
role = "worker"        # worker, producer or admin
queues = ["emails"]    # or ["*"]
```
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from katar import logs
from katar._defaults import DEFAULT_HOST as DEFAULT_HOST
from katar._defaults import DEFAULT_PORT as DEFAULT_PORT
from katar._defaults import DEFAULT_STORE as DEFAULT_STORE
from katar.auth import ALL_QUEUES, Role, Token
from katar.core.engine import check_queue_name
from katar.core.model import QueueOptions, parse_queue_options
from katar.errors import ConfigError, ValidationError
from katar.limits import Limits

_TABLES: Final = ("store", "server", "limits", "logging", "queues", "tokens")


@dataclass(kw_only=True)
class Settings:
    """Everything ``katar serve`` needs."""

    store_url: str = DEFAULT_STORE
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    insecure: bool = False
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, serve HTTPS
    tls_key: str | None = None
    tokens: list[Token] = field(default_factory=list)  # none: an open server
    limits: Limits = field(default_factory=Limits)
    queues: dict[str, QueueOptions] = field(default_factory=dict)
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = False


class _Located:
    """Finds the line of a key in the file's text, so errors can point at it."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line(self, table: str, key: str | None = None, occurrence: int = 1) -> int | None:
        # The table's own header (its n-th, for an array of tables), or failing that the
        # first header inside it.
        header = re.compile(
            r"^\s*\[\[?\s*"
            + r"\s*\.\s*".join(r'(?:"?' + re.escape(part) + r'"?)' for part in table.split("."))
            + r"\s*(\]|\.)"
        )
        start = None
        for number, text in enumerate(self.lines, 1):
            if start is None and header.match(text):
                occurrence -= 1
                if occurrence > 0:
                    continue
                start = number
                if key is None:
                    return number
            elif start is not None:
                if re.match(r"^\s*\[", text):
                    break
                if key is not None and re.match(r'^\s*"?' + re.escape(key) + r'"?\s*=', text):
                    return number
        return start

    def error(
        self, message: str, table: str, key: str | None = None, occurrence: int = 1
    ) -> ConfigError:
        line = self.line(table, key, occurrence)
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
    store = _table(raw, "store", where)
    for key, value in store.items():
        if key != "url":
            raise where.error("unknown key; the [store] table takes url", "store", key)
        if not isinstance(value, str):
            raise where.error('must be a string such as "sqlite:///katar.db"', "store", key)
        settings.store_url = value
    server = _table(raw, "server", where)
    for key, value in server.items():
        if key == "port":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
                raise where.error("must be an integer from 0 to 65535", "server", key)
            settings.port = value
        elif key in ("host", "tls_cert", "tls_key"):
            if not isinstance(value, str) or not value:
                raise where.error("must be a non-empty string", "server", key)
            setattr(settings, key, value)
        else:
            raise where.error(
                "unknown key; the [server] table takes host, port, tls_cert and tls_key",
                "server",
                key,
            )
    settings.limits = _limits(_table(raw, "limits", where), where)
    _logging(_table(raw, "logging", where), where, settings)
    for name, options in _table(raw, "queues", where).items():
        table = f"queues.{name}"
        try:
            check_queue_name(name, settings.limits.max_queue_name)
            settings.queues[name] = parse_queue_options(options)
        except ValidationError as exc:
            raise where.error(exc.message, table, exc.details.get("option")) from None
    settings.tokens = _tokens(raw.get("tokens", []), where)
    return settings


_TOKEN_KEYS: Final = ("token_sha256", "role", "queues", "name")


def _tokens(raw: Any, where: _Located) -> list[Token]:
    if not isinstance(raw, list):
        raise where.error("must be an array of tables: write each one as [[tokens]]", "tokens")
    tokens: list[Token] = []
    seen: set[str] = set()
    for number, entry in enumerate(raw, 1):
        # Errors say which block, counting from 1, since the blocks have no names of their own.
        def error(message: str, key: str | None = None, number: int = number) -> ConfigError:
            return where.error(f"block {number}: {message}", "tokens", key, number)

        if not isinstance(entry, dict):
            raise error("must be a table")
        for key in entry:
            if key not in _TOKEN_KEYS:
                raise error(f"unknown key; expected one of {', '.join(_TOKEN_KEYS)}", key)
        hexdigest = entry.get("token_sha256")
        if not isinstance(hexdigest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", hexdigest):
            raise error(
                "token_sha256 must be the 64 hex digits of the token's SHA-256 "
                "(`katar token` prints a token with its block)",
                "token_sha256",
            )
        sha256 = hexdigest.lower()
        if sha256 in seen:
            raise error("the same token_sha256 is declared twice", "token_sha256")
        seen.add(sha256)
        role = entry.get("role")
        roles = [r.label for r in Role]
        if role not in roles:
            raise error(f"role must be one of {', '.join(roles)}", "role")
        queues = entry.get("queues")
        if (
            not isinstance(queues, list)
            or not queues
            or not all(isinstance(q, str) for q in queues)
        ):
            raise error('queues must be a list of queue names, or ["*"] for every queue', "queues")
        for queue in queues:
            if queue != ALL_QUEUES:
                try:
                    check_queue_name(queue)
                except ValidationError as exc:
                    raise error(exc.message, "queues") from None
        name = entry.get("name", "")
        if not isinstance(name, str):
            raise error("name must be a string", "name")
        tokens.append(Token.declare(sha256=hexdigest, role=role, queues=queues, name=name))
    return tokens


def _logging(raw: dict[str, Any], where: _Located, settings: Settings) -> None:
    for key, value in raw.items():
        if key == "access_log":
            if not isinstance(value, bool):
                raise where.error("must be true or false", "logging", key)
            settings.access_log = value
        elif key in ("level", "format"):
            choices = logs.LEVELS if key == "level" else logs.FORMATS
            if value not in choices:
                raise where.error(f"must be one of {', '.join(choices)}", "logging", key)
            setattr(settings, "log_level" if key == "level" else "log_format", value)
        else:
            raise where.error(
                "unknown key; the [logging] table takes level, format and access_log",
                "logging",
                key,
            )


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
    try:
        return Limits(**values)
    except ConfigError as exc:
        raise where.error(exc.message, "limits") from None
