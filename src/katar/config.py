"""The typed configuration that the TOML file and the command line both produce.

```toml
[store]
url = "sqlite:///katar.db"

[server]               # optional; the command line's flags win over it
host = "127.0.0.1"
port = 3000
tls_cert = "/etc/katar/cert.pem"   # both, to serve HTTPS
tls_key = "/etc/katar/key.pem"
allowed_hosts = ["queue.internal"]  # without tokens: Host names answered beside localhost
otlp_endpoint = "http://localhost:4318"  # export spans over OTLP/HTTP (docs/tracing.md)

[limits]               # optional; see katar.limits.Limits for the defaults
max_body_bytes = 10485760

[queues.emails]
persistent = true
[queues.emails.configuration]
interval = 1000

[schedules.nightly]    # a task on a queue at each tick of a cron
cron = "30 2 * * *"    # five fields: minute hour day-of-month month day-of-week
timezone = "Europe/Berlin"
queue = "emails"
data = { report = "daily" }

[push]                 # optional: what push queues may reach beside public addresses
allow = ["127.0.0.1:8080", "http://hooks.internal/katar/"]  # hosts, host:port or URL prefixes

[logging]              # optional; the command line's flags win over it
level = "info"         # debug, info, warning or error
format = "text"        # or "json": one object a line
access_log = false     # a line per answered request

[[tokens]]             # none: the server is open (and then only on loopback addresses)
name = "mailer"        # optional, for people
token_sha256 = "..."   # `katar token` prints a token and this block
role = "worker"        # worker, producer or admin
queues = ["emails"]    # or ["*"]

[[aws_credentials]]    # an access key that signs requests to the SQS API (docs/sqs.md)
access_key_id = "AKIAKATARMAILER01"
role = "producer"      # as for tokens
queues = ["emails"]
secret_env = "KATAR_SQS_SECRET"   # or secret_file = "/run/secrets/..."; never the secret here
```
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from katar import logs
from katar._defaults import DEFAULT_HOST as DEFAULT_HOST
from katar._defaults import DEFAULT_PORT as DEFAULT_PORT
from katar._defaults import DEFAULT_STORE as DEFAULT_STORE
from katar.auth import ALL_QUEUES, AwsCredential, Role, Token
from katar.core import typed
from katar.core.model import QueueOptions, check_queue_name, option_error, queue_options
from katar.core.schedule import ScheduleSpec, parse_schedule, task_data
from katar.core.schedule import check_name as check_schedule_name
from katar.errors import ConfigError, ValidationError
from katar.limits import Limits, task_too_large


def _one_of(choices: typing.Iterable[str]) -> msgspec.Meta:
    """The constraint on a string that must be one of ``choices``, named in its errors."""
    choices = tuple(choices)
    pattern = "^(" + "|".join(re.escape(c) for c in choices) + ")$"
    return msgspec.Meta(pattern=pattern, description=f"one of {', '.join(choices)}")


_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _Store(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(description='a string such as "sqlite:///katar.db"')] = (
        DEFAULT_STORE
    )


class _Server(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: _NonEmpty = DEFAULT_HOST
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = DEFAULT_PORT
    tls_cert: _NonEmpty | None = None  # TOML has no null: None is "not given"
    tls_key: _NonEmpty | None = None
    #: Host names a server without tokens answers beside loopback names and addresses.
    allowed_hosts: list[_NonEmpty] = msgspec.field(default_factory=list)
    #: The OTLP/HTTP collector the server exports its spans to (docs/tracing.md).
    otlp_endpoint: Annotated[str, msgspec.Meta(pattern="^https?://")] | None = None


class _Push(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Hosts, host:port or URL prefixes a push may reach although they are loopback,
    #: private or link-local addresses (katar.push.safety).
    allow: list[_NonEmpty] = msgspec.field(default_factory=list)


class _Logging(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    level: Annotated[str, _one_of(logs.LEVELS)] = "info"
    format: Annotated[str, _one_of(logs.FORMATS)] = "text"
    access_log: bool = False


class _TokenBlock(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    token_sha256: Annotated[
        str,
        msgspec.Meta(
            pattern="^[0-9a-fA-F]{64}$",
            description="the 64 hex digits of the token's SHA-256 "
            "(`katar token` prints a token with its block)",
        ),
    ]
    role: Annotated[str, _one_of(r.label for r in Role)]
    queues: Annotated[
        list[str],
        msgspec.Meta(min_length=1, description='a list of queue names, or ["*"] for every queue'),
    ]
    name: str = ""


class _AwsCredentialBlock(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    access_key_id: Annotated[
        str,
        msgspec.Meta(
            pattern="^[A-Za-z0-9]{16,128}$",
            description="the access key id the SDKs sign with (16 to 128 letters and digits)",
        ),
    ]
    role: Annotated[str, _one_of(r.label for r in Role)]
    queues: Annotated[
        list[str],
        msgspec.Meta(min_length=1, description='a list of queue names, or ["*"] for every queue'),
    ]
    #: The secret access key is read from this environment variable, or from this file;
    #: never written in the configuration file itself.
    secret_env: str | None = None
    secret_file: str | None = None
    name: str = ""


class _File(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    store: _Store = msgspec.field(default_factory=_Store)
    server: _Server = msgspec.field(default_factory=_Server)
    # Converted on their own: limits by the struct made from Limits below; each queue by
    # QueueOptions, since msgspec's error paths do not name a dict's keys (the queue).
    limits: dict[str, Any] = msgspec.field(default_factory=dict)
    logging: _Logging = msgspec.field(default_factory=_Logging)
    push: _Push = msgspec.field(default_factory=_Push)
    queues: dict[str, Any] = msgspec.field(default_factory=dict)
    schedules: dict[str, Any] = msgspec.field(default_factory=dict)  # each by parse_schedule
    tokens: Annotated[
        list[_TokenBlock],
        msgspec.Meta(description="an array of tables: write each one as [[tokens]]"),
    ] = msgspec.field(default_factory=list)
    aws_credentials: Annotated[
        list[_AwsCredentialBlock],
        msgspec.Meta(description="an array of tables: write each one as [[aws_credentials]]"),
    ] = msgspec.field(default_factory=list)


#: The [limits] table: Limits's fields, each a positive number of its type.
_Limits: Final = msgspec.defstruct(
    "_Limits",
    [
        (f.name, Annotated[kind, msgspec.Meta(gt=0)], f.default)
        for f in dataclasses.fields(Limits)
        for kind in [typing.get_type_hints(Limits)[f.name]]
    ],
    kw_only=True,
    forbid_unknown_fields=True,
)


@dataclass(kw_only=True)
class Settings:
    """Everything ``katar serve`` needs."""

    store_url: str = DEFAULT_STORE
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    insecure: bool = False
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, serve HTTPS
    tls_key: str | None = None
    #: Without tokens, the Host names answered beside loopback ones (katar.http.sites).
    allowed_hosts: list[str] = field(default_factory=list)
    #: Export spans over OTLP/HTTP to this collector (katar.tracing); None: no tracing.
    otlp_endpoint: str | None = None
    tokens: list[Token] = field(default_factory=list)  # none: an open server
    #: The access keys that sign requests to the SQS API (katar.sqs).
    aws_credentials: list[AwsCredential] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    queues: dict[str, QueueOptions] = field(default_factory=dict)
    #: Created or updated at start-up; a schedule the store has and the file does not name
    #: stays as it is (delete it with DELETE /v1/schedules/NAME).
    schedules: dict[str, ScheduleSpec] = field(default_factory=dict)
    #: [push] allow: where push queues may go beside public addresses.
    push_allow: list[str] = field(default_factory=list)
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = False


class _Located:
    """Finds the line of a key in the file's text, so errors can point at it."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def _section(
        self, table: typing.Sequence[str], occurrence: int = 1, inner: bool = False
    ) -> tuple[int, int] | None:
        """The lines (first, after last) of a table's own part of the file: from its header
        (its n-th, for an array of tables) to the next header; the top of the file for ().
        With ``inner``, the header of a table inside it will do."""
        start = 0
        if table:
            header = re.compile(
                r"^\s*\[\[?\s*"
                + r"\s*\.\s*".join(r'["\']?' + re.escape(part) + r'["\']?' for part in table)
                + (r"\s*[].]" if inner else r"\s*\]")
            )
            for number, text in enumerate(self.lines):
                if header.match(text):
                    occurrence -= 1
                    if occurrence == 0:
                        start = number + 1
                        break
            else:
                return None
        end = start
        while end < len(self.lines) and not re.match(r"^\s*\[", self.lines[end]):
            end += 1
        return start, end

    def line(self, path: typing.Sequence[str | int]) -> int | None:
        """The line of the key at ``path`` (an int counts blocks of an array of tables), or
        else of the nearest table header above it; None when neither is in the text."""
        names = [str(step) for step in path if isinstance(step, str)]
        # The block of an array of tables that an index after a table's name points at.
        blocks = [
            after + 1 if isinstance(after, int) else 1
            for step, after in zip(path, [*path[1:], None], strict=True)
            if isinstance(step, str)
        ]
        # The key in its table, or a dotted or inline key that holds it in a table above.
        for cut in range(len(names) - 1, -1, -1):
            section = self._section(names[:cut], blocks[cut - 1] if cut else 1)
            if section is None:
                continue
            key = re.compile(r'^\s*["\']?' + re.escape(names[cut]) + r'["\']?\s*[=.]')
            for number in range(*section):
                if key.match(self.lines[number]):
                    return number + 1
        for cut in range(len(names), 0, -1):
            section = self._section(names[:cut], blocks[cut - 1], inner=True)
            if section is not None:
                return section[0]
        return None

    def error(self, path: typing.Sequence[str | int], message: str) -> ConfigError:
        """An error for the key at ``path``: "FILE, line N: [TABLE] KEY: MESSAGE"."""
        line = self.line(path)
        where = f"{self.path}, line {line}" if line else self.path
        names = [_toml_key(step) for step in path if isinstance(step, str)]
        if len(names) == 1:
            return ConfigError(f"{where}: [{names[0]}]: {message}")
        return ConfigError(f"{where}: [{'.'.join(names[:-1])}] {names[-1]}: {message}")

    def invalid(self, exc: typed.Invalid, at: typing.Sequence[str | int] = ()) -> ConfigError:
        """The error for a value that does not fit its type, found at ``at`` + its path."""
        path = (*at, *exc.path)
        names = [step for step in path if isinstance(step, str)]
        if path and path[0] == "tokens" and len(path) > 1:
            block = f"block {int(path[1]) + 1}: "
            if len(path) == 2:
                return self.error(path, f"{block}must be a table")
            if exc.problem == "unknown":
                return self.error(
                    path, f"{block}unknown key; expected one of {', '.join(exc.choices)}"
                )
            return self.error(path, f"{block}{path[-1]} {exc.must()}")
        if exc.problem == "unknown":
            if len(names) == 1:
                return self.error(path, f"unknown table; expected one of {', '.join(exc.choices)}")
            table = ".".join(_toml_key(n) for n in names[:-1])
            return self.error(path, f"unknown key; the [{table}] table takes {_and(exc.choices)}")
        return self.error(path, exc.must())


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _and(words: typing.Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


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


def parse(raw: dict[str, Any], where: _Located) -> Settings:
    """Settings from a decoded TOML document."""
    try:
        file = typed.convert(raw, _File, object_word="a table")
    except typed.Invalid as exc:
        raise where.invalid(exc) from None
    try:
        limits = typed.convert(file.limits, _Limits, object_word="a table")
    except typed.Invalid as exc:
        raise where.invalid(exc, ("limits",)) from None
    try:
        settings_limits = Limits(**msgspec.structs.asdict(limits))
    except ConfigError as exc:
        raise where.error(["limits"], exc.message) from None
    settings = Settings(
        store_url=file.store.url,
        host=file.server.host,
        port=file.server.port,
        tls_cert=file.server.tls_cert,
        tls_key=file.server.tls_key,
        allowed_hosts=file.server.allowed_hosts,
        otlp_endpoint=file.server.otlp_endpoint,
        limits=settings_limits,
        log_level=file.logging.level,
        log_format=file.logging.format,
        access_log=file.logging.access_log,
        push_allow=file.push.allow,
    )
    for name, table in file.queues.items():
        try:
            check_queue_name(name, settings.limits.max_queue_name)
        except ValidationError as exc:
            raise where.error(["queues", name], exc.message) from None
        try:
            settings.queues[name] = queue_options(table)
        except typed.Invalid as exc:
            path = ("queues", name, *exc.path)
            if not exc.path:
                raise where.error(path, "must be a table") from None
            raise where.error(path, option_error(exc)) from None
    for name, table in file.schedules.items():
        try:
            check_schedule_name(name)
            spec = parse_schedule(table)
        except ValidationError as exc:
            field_name = exc.details.get("field")
            path = ("schedules", name) if field_name is None else ("schedules", name, field_name)
            raise where.error(path, exc.message) from None
        size, limit = len(task_data(spec)), settings.limits.max_task_bytes
        if size > limit:  # its ticks would make tasks that no enqueue may
            too_large = task_too_large("schedule", size, limit)
            raise where.error(("schedules", name, "data"), too_large.message)
        settings.schedules[name] = spec
    settings.tokens = _tokens(file.tokens, where)
    settings.aws_credentials = _aws_credentials(file.aws_credentials, where)
    return settings


def _check_queues(queues: list[str], error: typing.Callable[[str, str], ConfigError]) -> None:
    """Refuse a block's queue name that is not one (``["*"]`` stands for every queue)."""
    for queue in queues:
        if queue != ALL_QUEUES:
            try:
                check_queue_name(queue)
            except ValidationError as exc:
                raise error(exc.message, "queues") from None


def _aws_credentials(blocks: list[_AwsCredentialBlock], where: _Located) -> list[AwsCredential]:
    """The [[aws_credentials]] blocks, each with its secret read from the environment
    variable or the file it names (the secret itself is never in the configuration file)."""
    credentials: list[AwsCredential] = []
    seen: set[str] = set()
    for index, block in enumerate(blocks):

        def error(message: str, key: str, index: int = index) -> ConfigError:
            return where.error(("aws_credentials", index, key), f"block {index + 1}: {message}")

        if block.access_key_id in seen:
            raise error("the same access_key_id is declared twice", "access_key_id")
        seen.add(block.access_key_id)
        _check_queues(block.queues, error)
        if (block.secret_env is None) == (block.secret_file is None):
            raise error(
                "name where its secret access key is: secret_env (an environment variable) or"
                " secret_file (a file), one of them",
                "secret_env",
            )
        if block.secret_env is not None:
            secret = os.environ.get(block.secret_env)
            if not secret:
                raise error(
                    f"the environment variable {block.secret_env} (secret_env) is not set",
                    "secret_env",
                )
        else:
            assert block.secret_file is not None
            try:
                secret = Path(block.secret_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise error(
                    f"cannot read the secret_file {block.secret_file!r}: {exc.strerror}",
                    "secret_file",
                ) from None
            if not secret:
                raise error(f"the secret_file {block.secret_file!r} is empty", "secret_file")
        credentials.append(
            AwsCredential(
                access_key_id=block.access_key_id,
                secret=secret,
                role=Role[block.role.upper()],
                queues=frozenset(block.queues),
                name=block.name,
            )
        )
    return credentials


def _tokens(blocks: list[_TokenBlock], where: _Located) -> list[Token]:
    tokens: list[Token] = []
    seen: set[str] = set()
    for index, block in enumerate(blocks):
        # Errors say which block, counting from 1, since the blocks have no names of their own.
        def error(message: str, key: str, index: int = index) -> ConfigError:
            return where.error(("tokens", index, key), f"block {index + 1}: {message}")

        sha256 = block.token_sha256.lower()
        if sha256 in seen:
            raise error("the same token_sha256 is declared twice", "token_sha256")
        seen.add(sha256)
        _check_queues(block.queues, error)
        tokens.append(
            Token.declare(
                sha256=block.token_sha256, role=block.role, queues=block.queues, name=block.name
            )
        )
    return tokens
