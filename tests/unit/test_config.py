"""The configuration file: what it accepts, and errors that name the key and the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from katar import Katar, config
from katar.core.model import QueueOptions, Rate, parse_queue_options
from katar.errors import ConfigError, ValidationError
from katar.http.auth import Role, Token, digest

H = "a" * 64


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
allowed_hosts = ["queue.internal", ".corp"]
otlp_endpoint = "http://collector:4318"

[limits]
max_wait = 20
max_body_bytes = 1024
max_long_polls_per_queue = 100
max_long_polls_per_token = 200

[queues.emails]
persistent = true
timeout = 30000
key_rate = {limit = 5, period = 60000}

[queues.emails.configuration]
interval = 1000
smtp = {host = "mail", port = 25}

[queues."images.resize"]
""",
    )
    assert settings.store_url == "sqlite:///data/k.db"
    assert (settings.host, settings.port) == ("127.0.0.2", 4000)
    assert settings.limits.max_wait == 20
    assert settings.limits.max_body_bytes == 1024
    assert settings.allowed_hosts == ["queue.internal", ".corp"]
    assert settings.otlp_endpoint == "http://collector:4318"
    assert settings.limits.max_long_polls_per_queue == 100
    assert settings.limits.max_long_polls_per_token == 200
    emails = settings.queues["emails"]
    assert emails.persistent
    assert emails.key_rate == Rate(limit=5, period=60000)
    assert emails.timeout == 30000
    assert emails.worker_configuration() == {"interval": 1000, "smtp": {"host": "mail", "port": 25}}
    assert settings.queues["images.resize"].timeout == 60000


def test_tokens_and_tls(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        f"""
[server]
tls_cert = "cert.pem"
tls_key = "key.pem"

[[tokens]]
name = "mailer"
token_sha256 = "{digest("w").hex()}"
role = "worker"
queues = ["emails", "sms"]

[[tokens]]
token_sha256 = "{digest("a").hex().upper()}"
role = "admin"
queues = ["*"]
""",
    )
    assert (settings.tls_cert, settings.tls_key) == ("cert.pem", "key.pem")
    worker, admin = settings.tokens
    assert worker == Token(
        sha256=digest("w"), role=Role.WORKER, queues=frozenset({"emails", "sms"}), name="mailer"
    )
    assert admin.role is Role.ADMIN
    assert admin.all_queues
    assert admin.sha256 == digest("a")


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
        (
            "[queues.emails.configuration]\ninterval = -5\n",
            "line 2: [queues.emails.configuration] interval: queue option 'configuration.interval'"
            " must be a whole number of milliseconds from 0 to 2147483647",
        ),
        ('[queues."bad name"]\n', "invalid queue name"),
        (
            "[[tokens]]\nrole = 'worker'\n",
            "line 1: [tokens] token_sha256: block 1: token_sha256 must be",
        ),
        (
            f"[[tokens]]\ntoken_sha256 = '{H}'\nrole = 'worker'\nqueues = ['*']\n\n"
            f"[[tokens]]\ntoken_sha256 = '{H.upper()}'\nrole = 'admin'\nqueues = ['*']\n",
            "line 7: [tokens] token_sha256: block 2: the same token_sha256 is declared twice",
        ),
        (
            f"[[tokens]]\ntoken_sha256 = '{H}'\nrole = 'root'\nqueues = ['*']\n",
            "line 3: [tokens] role: block 1: role must be one of worker, producer, admin",
        ),
        (
            f"[[tokens]]\ntoken_sha256 = '{H}'\nrole = 'worker'\n",
            'block 1: queues must be a list of queue names, or ["*"]',
        ),
        (
            f"[[tokens]]\ntoken_sha256 = '{H}'\nrole = 'worker'\nqueues = ['a b']\n",
            "line 4: [tokens] queues: block 1: invalid queue name 'a b'",
        ),
        (
            f"[[tokens]]\ntoken = 'secret'\ntoken_sha256 = '{H}'\nrole = 'worker'\n",
            "line 2: [tokens] token: block 1: unknown key",
        ),
        ("[tokens]\nrole = 'x'\n", "[tokens]: must be an array of tables"),
        ("[server]\ntls_cert = ''\n", "[server] tls_cert: must be a non-empty string"),
        ("[limits]\nmax_queue_name = 300\n", "max_queue_name must be from 1 to 255"),
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


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # A key written inline, or as a dotted key, is found on its line all the same.
        (
            "[queues.emails]\npersistent = true\nconfiguration = {interval = 1.5}\n",
            "line 3: [queues.emails.configuration] interval: queue option "
            "'configuration.interval' must be a whole number",
        ),
        (
            "[queues.emails]\n\nconfiguration.interval = -1\n",
            "line 3: [queues.emails.configuration] interval:",
        ),
        (
            '[queues."images.resize"]\ntimeout = 0\n',
            "line 2: [queues.\"images.resize\"] timeout: queue option 'timeout' must be an "
            "integer from 1 to 2147483647",
        ),
        ("[queues]\nsms = {}\nemails = 5\n", "line 3: [queues] emails: must be a table"),
        ("store = 5\n", "line 1: [store]: must be a table"),
        (
            f"[[tokens]]\ntoken_sha256 = '{H}'\nrole = 'worker'\nqueues = ['*']\n\n"
            f"[[tokens]]\ntoken_sha256 = '{'b' * 64}'\nrole = 'worker'\nqueues = []\n",
            "line 9: [tokens] queues: block 2: queues must be a list of queue names",
        ),
        ("[limits]\n\nmax_wait = 0\n", "line 3: [limits] max_wait: must be a positive number"),
        ("[limits]\nmax_list = 0\n", "line 2: [limits] max_list: must be a positive integer"),
        ("[limits]\nfoo = 1\n", "line 2: [limits] foo: unknown key; the [limits] table takes"),
        (
            "[logging]\nlevel = 'loud'\n",
            "line 2: [logging] level: must be one of debug, info, warning, error",
        ),
        ("[server]\nport = '3000'\n", "line 2: [server] port: must be an integer from 0 to"),
    ],
)
def test_nested_keys_and_their_lines(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert fragment in str(caught.value)


def test_whole_floats_are_integers(tmp_path: Path) -> None:
    """JSON and TOML floats with no fraction stand for integers; other values keep their
    type (a queue's own configuration is sent to workers as it is)."""
    settings = load(
        tmp_path,
        "[server]\nport = 4000.0\n"
        "[queues.q]\ntimeout = 5e3\n[queues.q.configuration]\ninterval = 1000.0\nratio = 1.0\n",
    )
    assert settings.port == 4000
    assert isinstance(settings.port, int)
    options = settings.queues["q"]
    assert options.timeout == 5000
    assert isinstance(options.timeout, int)
    assert options.worker_configuration() == {"interval": 1000, "ratio": 1.0}
    assert isinstance(options.configuration["interval"], int)
    assert isinstance(options.configuration["ratio"], float)


@pytest.mark.parametrize(
    ("raw", "option", "fragment"),
    [
        ({"timeout": "30000"}, "timeout", "'timeout' must be an integer from 1 to 2147483647"),
        ({"max_batch": 2.5}, "max_batch", "'max_batch' must be an integer from 1 to 10000"),
        ({"max_attempts": True}, "max_attempts", "'max_attempts' must be an integer from 0"),
        ({"retry_failed": 1}, "retry_failed", "'retry_failed' must be true or false"),
        ({"configuration": {1: 2}}, "configuration", "must be an object with string keys"),
        ({"configuration": {"x": object()}}, "configuration", "must hold JSON values only"),
        ({"timout": 1}, "timout", "unknown queue option 'timout'; expected one of persistent"),
    ],
)
def test_queue_options_errors_name_the_option(raw: object, option: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_queue_options(raw)
    assert fragment in caught.value.message
    assert caught.value.details == {"option": option}


def test_queue_options_take_whole_floats() -> None:
    options = parse_queue_options({"timeout": 30000.0, "configuration": {"interval": 2e3}})
    assert options == QueueOptions(timeout=30000, configuration={"interval": 2000})
    assert parse_queue_options({}) == QueueOptions()


def test_the_python_api_goes_through_the_same_struct() -> None:
    katar = Katar("memory://")
    katar.queue("q", timeout=30000.0, configuration={"interval": 5})
    assert katar.declared("q") == QueueOptions(timeout=30000, configuration={"interval": 5})
    with pytest.raises(ValidationError, match="'max_batch' must be an integer from 1 to 10000"):
        katar.queue("r", max_batch=0)


def test_schedules_in_the_file(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
[queues.reports]

[schedules.nightly]
cron = "30 2 * * MON-FRI"
timezone = "Europe/Berlin"
queue = "reports"
data = { kind = "daily" }
priority = "high"
overlap = "skip"
catch_up = true
""",
    )
    spec = settings.schedules["nightly"]
    assert (spec.cron, spec.timezone, spec.queue) == (
        "30 2 * * MON-FRI",
        "Europe/Berlin",
        "reports",
    )
    assert (spec.data, spec.priority, spec.overlap, spec.catch_up) == (
        {"kind": "daily"},
        10,
        "skip",
        True,
    )
    assert spec.paused is False


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        (
            'cron = "61 * * * *"\nqueue = "q"',
            "line 3: [schedules.s] cron: invalid cron '61 * * * *': Bad minute",
        ),
        (
            'cron = "* * * * *"\nqueue = "q"\ntimezone = "Nowhere/City"',
            "line 5: [schedules.s] timezone: unknown time zone 'Nowhere/City'",
        ),
        ('cron = "* * * * *"', "[schedules.s] queue: schedule field 'queue' is required"),
        (
            'cron = "* * * * *"\nqueue = "q"\nevery = 3',
            "[schedules.s] every: unknown schedule field 'every'",
        ),
    ],
)
def test_schedule_errors_name_the_key_and_line(tmp_path: Path, table: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"\n[schedules.s]\n{table}\n")
    assert fragment in str(caught.value)


def test_a_schedule_whose_data_is_over_max_task_bytes_is_refused(tmp_path: Path) -> None:
    table = 'cron = "* * * * *"\nqueue = "q"\ndata = "' + "x" * 100 + '"'
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"\n[limits]\nmax_task_bytes = 64\n\n[schedules.s]\n{table}\n")
    assert "[schedules.s] data: schedule: data is 102 bytes of JSON, over the limit of 64" in str(
        caught.value
    )


async def test_a_schedule_that_never_fires_stops_the_start(tmp_path: Path) -> None:
    katar = Katar(f"sqlite:///{tmp_path / 'k.db'}")
    katar.queue("q")
    katar.schedule("s", "30 2 * 3 7L", "q", timezone="Europe/Berlin")
    with pytest.raises(ConfigError, match=r"\[schedules.s\] cron: schedule never fires"):
        await katar.open()
    await katar.engine.close()


async def test_file_schedules_are_made_at_start_and_others_stay(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    first = Katar(url)
    first.queue("reports")
    first.schedule("kept", "0 * * * *", "reports")
    async with first:
        await first.put_schedule("made-over-http", "0 0 * * *", "reports")
    second = Katar(url)
    second.queue("reports")
    second.schedule("kept", "*/5 * * * *", "reports")  # the file changed
    async with second:
        schedules = {s.name: s.spec.cron for s in await second.schedules()}
    assert schedules == {"kept": "*/5 * * * *", "made-over-http": "0 0 * * *"}


async def test_a_schedule_on_an_unknown_queue_stops_the_start(tmp_path: Path) -> None:
    katar = Katar(f"sqlite:///{tmp_path / 'k.db'}")
    katar.schedule("s", "0 * * * *", "missing")
    with pytest.raises(
        ConfigError, match=r"\[schedules.s\] queue: schedule 's': no queue 'missing'"
    ):
        await katar.open()
    await katar.engine.close()


def test_aws_credentials_read_their_secret_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KATAR_TEST_SQS_SECRET", "from-the-environment")
    (tmp_path / "secret").write_text("from-a-file\n")
    settings = load(
        tmp_path,
        f"""
[[aws_credentials]]
access_key_id = "AKIAWORKER000001"
role = "worker"
queues = ["jobs"]
secret_env = "KATAR_TEST_SQS_SECRET"

[[aws_credentials]]
access_key_id = "AKIAADMIN0000001"
role = "admin"
queues = ["*"]
secret_file = "{tmp_path / "secret"}"
""",
    )
    worker, admin = settings.aws_credentials
    assert (worker.secret, worker.role, worker.queues) == (
        "from-the-environment",
        Role.WORKER,
        frozenset({"jobs"}),
    )
    assert (admin.secret, admin.role) == ("from-a-file", Role.ADMIN)
    assert "from-a-file" not in repr(admin)  # never shown, never logged


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        ('secret_env = "KATAR_TEST_UNSET_SECRET"', "is not set"),
        ('secret_file = "/nonexistent/secret"', "cannot read the secret_file"),
        ("", "secret_env (an environment variable) or secret_file"),
        ('secret = "inline"', "secret"),
    ],
)
def test_aws_credentials_never_hold_their_secret(tmp_path: Path, block: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load(
            tmp_path,
            f"""
[[aws_credentials]]
access_key_id = "AKIAWORKER000001"
role = "worker"
queues = ["jobs"]
{block}
""",
        )


def test_an_otlp_endpoint_must_be_an_http_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load(tmp_path, '[server]\notlp_endpoint = "collector:4318"\n')
