"""The ``katar`` command: a thin layer over the Python API and the configuration file.

Each command imports what it needs when it runs: ``katar worker`` and ``katar enqueue`` load
the client only, not the server (uvicorn, the engine, the stores).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from katar import cli_admin, logs
from katar._defaults import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_STORE
from katar._version import __version__
from katar.auth import Role
from katar.errors import ClientError, ConfigError, StoreError, ValidationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="katar", description="Katar: an HTTP work-queue server.")
    parser.add_argument("--version", action="version", version=f"katar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP interface",
        description="Serve Katar's HTTP interface. Flags override the configuration file.",
    )
    serve.add_argument("--config", metavar="FILE", help="a TOML configuration file")
    serve.add_argument("--host", help=f"address to listen on (default {DEFAULT_HOST})")
    serve.add_argument(
        "--port", type=int, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks one)"
    )
    serve.add_argument(
        "--db",
        metavar="URL",
        help="store URL: sqlite:///path.db, sqlite:////abs/path.db, memory://, "
        f"postgresql://user@host:port/dbname (default {DEFAULT_STORE})",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address with no tokens configured",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="without tokens, answer requests for this host name too (beside localhost and "
        "addresses); .example.com allows a domain and its subdomains; repeatable",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    serve.add_argument(
        "--log-level", choices=logs.LEVELS, help="the least severe lines to log (default info)"
    )
    serve.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        help="text lines, or one JSON object a line (time, level, message, fields); default text",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve with N processes sharing the port (PostgreSQL store only; default 1)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log a line per answered request: method, route, status, time, bytes",
    )
    serve.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="export spans of enqueues, deliveries and acks over OTLP/HTTP to this collector "
        "(its base URL, e.g. http://localhost:4318; /v1/traces is added). "
        "Default: [server] otlp_endpoint, else OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    token = commands.add_parser(
        "token",
        help="make a new token and print the [[tokens]] block for the configuration file",
        description="Print a new random token, then the [[tokens]] block that declares it "
        "(holding only its SHA-256). Give the token to its user; paste the block into the "
        "configuration file and restart the server.",
    )
    token.add_argument(
        "--role", required=True, choices=[role.label for role in Role], help="what it may do"
    )
    token.add_argument(
        "--queue",
        action="append",
        required=True,
        metavar="QUEUE",
        help='a queue it may use (repeat for more; "*" for every queue)',
    )
    token.add_argument("--name", default="", help="a label for people, such as the worker's name")
    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the store's schema, then exit",
        description="Create or upgrade the store's schema (katar serve does it too, at start).",
    )
    migrate.add_argument("--config", metavar="FILE", help="a TOML configuration file")
    migrate.add_argument("--db", metavar="URL", help="the store URL (default: the file's)")
    listing = commands.add_parser(
        "schedules",
        help="list the server's schedules, or pause, resume or delete one",
        description="List the server's schedules (a table, or --json), or pause, resume or"
        " delete one: katar schedules [pause|resume|delete NAME]. Needs an admin token.",
    )
    listing.add_argument("action", nargs="?", choices=("list", "pause", "resume", "delete"))
    listing.add_argument("name", nargs="?", help="the schedule, for pause, resume and delete")
    listing.add_argument("--json", action="store_true", help="print the answer's JSON")
    for name, text in (
        ("schedules", ""),
        ("worker", "run a Python function as a worker: katar worker ... module:function"),
        ("enqueue", "put tasks on a queue: katar enqueue ... DATA (JSON, or - for JSON lines)"),
    ):
        command = listing if name == "schedules" else commands.add_parser(name, help=text)
        _connection(command)
        if name == "schedules":
            continue
        command.add_argument("--queue", required=True, help="the queue's name")
        if name == "worker":
            command.add_argument("--concurrency", type=int, default=1, help="tasks at once (1)")
            command.add_argument("--wait", type=float, default=20.0, help="long poll, s (20)")
            command.add_argument(
                "--grace", type=float, default=30.0, help="s to finish tasks on SIGTERM (30)"
            )
            command.add_argument("function", help="the handler, as module:function")
        else:
            command.add_argument("--priority", help="an integer, or high, normal, low")
            later = command.add_mutually_exclusive_group()
            later.add_argument("--delay", type=float, help="seconds before it may run")
            later.add_argument(
                "--run-at",
                type=_iso_time,
                metavar="TIME",
                help="ISO 8601 time before which it may not run, e.g. 2030-01-31T09:00:00Z "
                "(UTC when it names no zone)",
            )
            command.add_argument("--paused", action="store_true", help="enqueue paused")
            command.add_argument(
                "--timeout", type=int, metavar="MS", help="the task's lease in ms (the queue's)"
            )
            command.add_argument(
                "--max-attempts",
                type=int,
                metavar="N",
                help="deliveries before it fails for good (the queue's); 0: no limit",
            )
            command.add_argument(
                "--expires-in",
                type=float,
                metavar="SECONDS",
                help="cancel the task if it is not delivered within this time",
            )
            command.add_argument(
                "--key",
                help="the tasks' group (a customer, an account): the queue's key_concurrency,"
                " key_rate and fair count by it",
            )
            command.add_argument(
                "--unique-key",
                metavar="KEY",
                help="create nothing while a task of the queue holds this key (the id printed"
                " is then that task's); with JSON lines, only the first task is created",
            )
            command.add_argument(
                "--unique-for",
                type=float,
                metavar="SECONDS",
                help="hold the unique key this long, whatever the task's status",
            )
            command.add_argument(
                "--debounce-key",
                metavar="KEY",
                help="with --delay or --run-at: replace the task of the queue with this key"
                " that waits, never delivered (its data, options and due time; the id printed"
                " is then that task's); with JSON lines, the last task wins",
            )
            command.add_argument(
                "--traceparent",
                metavar="TRACEPARENT",
                help="the W3C trace context the tasks carry (00-<trace id>-<parent id>-<flags>);"
                " else the current OpenTelemetry context, with katar[otel] configured",
            )
            command.add_argument(
                "--tracestate", help="with --traceparent: the W3C tracestate it goes with"
            )
            command.add_argument(
                "--attributes",
                type=_json_object,
                metavar="JSON",
                help="SQS message attributes the tasks carry, as SendMessage's:"
                ' {"MessageAttributes": {"name": {"DataType": "String", "StringValue": "..."}}}',
            )
            command.add_argument("data", help="the task's data as JSON; - reads JSON lines")
    cli_admin.add_parsers(commands, _connection)
    return parser


def _connection(command: argparse.ArgumentParser) -> None:
    """The options of the commands that talk to a server: where, and with which token."""
    command.add_argument(
        "--url",
        type=_server_url,
        default=os.environ.get("KATAR_URL", "http://127.0.0.1:3000"),
        help="the server, http://HOST:PORT or https://HOST:PORT; a bare HOST:PORT means"
        " http:// (default $KATAR_URL, else http://127.0.0.1:3000)",
    )
    command.add_argument(
        "--token",
        default=os.environ.get("KATAR_TOKEN"),
        help="bearer token (default $KATAR_TOKEN; the variable keeps it out of `ps`)",
    )
    command.add_argument(
        "--ca-file",
        default=os.environ.get("KATAR_CA_FILE"),
        metavar="FILE",
        help="verify an https server with this CA bundle (default $KATAR_CA_FILE, else "
        "the system's)",
    )


def _server_url(text: str) -> str:
    """``--url`` (or ``$KATAR_URL``, which argparse checks the same way)."""
    from katar.client._base import server_url

    try:
        return server_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (from --url or $KATAR_URL)") from None


def _json_object(text: str) -> dict[str, Any]:
    """``--attributes``: a JSON object (the server checks what it holds)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object, {...}")
    return value


def _iso_time(text: str) -> datetime:
    """``--run-at``: an ISO 8601 time; UTC when it names no zone, as the server reads it."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time, e.g. 2030-01-31T09:00:00Z"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _handler(spec: str) -> Callable[..., Any]:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"the handler must be module:function, not {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise ConfigError(f"{module_name!r} has no function {attribute!r}")
    return handler  # type: ignore[no-any-return]


def worker(args: argparse.Namespace) -> int:
    """``katar worker``; a refused request (a setup mistake) reaches main as its error."""
    import asyncio

    from katar.client.worker import AsyncWorker

    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    handler = _handler(args.function)
    asyncio.run(
        AsyncWorker(
            args.url,
            args.queue,
            handler,
            token=args.token,
            verify=args.ca_file or True,
            concurrency=args.concurrency,
            wait=args.wait,
            grace=args.grace,
        ).run()
    )
    return 0


def _json_lines(lines: Iterable[str]) -> Iterator[Any]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"standard input, line {number}: not JSON: {exc}") from exc


def enqueue(args: argparse.Namespace) -> int:
    """``katar enqueue``: prints the new tasks' ids, one per line."""
    from katar.client import Producer

    if args.unique_for is not None and args.unique_key is None:
        raise ConfigError("--unique-for needs --unique-key")
    if args.debounce_key is not None and args.delay is None and args.run_at is None:
        raise ConfigError("--debounce-key needs --delay or --run-at")
    if args.debounce_key is not None and args.unique_key is not None:
        raise ConfigError("give --debounce-key or --unique-key, not both")
    _check_trace(args.traceparent, args.tracestate)
    raw_priority: str | None = args.priority
    priority: int | str | None = raw_priority
    if raw_priority is not None and raw_priority.isascii() and raw_priority.lstrip("-").isdigit():
        priority = int(raw_priority)
    if args.data == "-":
        items: Iterable[Any] = _json_lines(sys.stdin)
    else:
        try:
            items = [json.loads(args.data)]
        except json.JSONDecodeError as exc:
            raise ConfigError(f"DATA is not JSON ({exc}); quote strings: '\"text\"'") from exc
    with Producer(args.url, token=args.token, verify=args.ca_file or True) as producer:
        batch: list[Any] = []
        for item in itertools.chain(items, [_END]):
            if item is not _END:
                batch.append(item)
            if batch and (item is _END or len(batch) == _BATCH):
                tasks = producer.enqueue_many(
                    args.queue,
                    batch,
                    priority=priority,
                    delay=args.delay,
                    paused=args.paused,
                    run_at=args.run_at,
                    timeout=args.timeout,
                    max_attempts=args.max_attempts,
                    expires_in=args.expires_in,
                    unique_keys=args.unique_key,
                    unique_for=args.unique_for,
                    key=args.key,
                    debounce_key=args.debounce_key,
                    traceparent=args.traceparent,
                    tracestate=args.tracestate,
                    attributes=args.attributes,
                )
                print("\n".join(task.id for task in tasks), flush=True)
                batch = []
    return 0


def _check_trace(traceparent: str | None, tracestate: str | None) -> None:
    """ConfigError unless ``--traceparent`` (and ``--tracestate``) are W3C's: the server
    would ignore them, and the tasks would carry no context without a word."""
    from katar.core.model import trace_context

    if traceparent is None:
        if tracestate is not None:
            raise ConfigError("--tracestate needs --traceparent")
        return
    trace = trace_context(traceparent, tracestate)
    if trace is None:
        raise ConfigError(
            f"--traceparent {traceparent[:100]!r} is not a W3C traceparent"
            " (00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>)"
        )
    if tracestate is not None and b"tracestate" not in bytes(trace):
        raise ConfigError("--tracestate is not a W3C tracestate (at most 512 characters)")


_END: Final = object()
_BATCH: Final = 1000


def schedules(args: argparse.Namespace) -> int:
    """``katar schedules``: the server's schedules as a table (or JSON); or pause, resume or
    delete one."""
    import httpx

    from katar.errors import RequestRejected, ServerUnavailable, TransportError

    action = args.action or "list"
    if (action == "list") != (args.name is None):
        raise ConfigError(
            f"katar schedules {action} " + ("takes no NAME" if action == "list" else "needs a NAME")
        )
    headers = {} if not args.token else {"authorization": f"Bearer {args.token}"}
    url = args.url.rstrip("/")
    path = "/v1/schedules" + ("" if args.name is None else f"/{args.name}")
    method, body = {
        "list": ("GET", None),
        "pause": ("PATCH", {"paused": True}),
        "resume": ("PATCH", {"paused": False}),
        "delete": ("DELETE", None),
    }[action]
    try:
        with httpx.Client(verify=args.ca_file or True, timeout=30) as http:
            answer = http.request(method, url + path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise TransportError(f"{url}: {exc}") from exc
    if answer.status_code >= 400:
        try:
            message = answer.json().get("error", answer.text)
        except ValueError:
            message = answer.text
        kind = RequestRejected if answer.status_code < 500 else ServerUnavailable
        raise kind(f"{answer.status_code}: {message}", status=answer.status_code)
    payload = answer.json()
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    if action != "list":
        state = "deleted" if action == "delete" else "paused" if payload["paused"] else "resumed"
        print(f"schedule {args.name} {state}")
        return 0
    rows = [("NAME", "CRON", "TIMEZONE", "QUEUE", "PAUSED", "NEXT TICK", "LAST TASK")]
    for item in payload["schedules"]:
        rows.append(
            (
                item["name"],
                item["cron"],
                item["timezone"],
                item["queue"],
                "yes" if item["paused"] else "no",
                (item["next_ticks"] or ["-"])[0],
                item["last_task"] or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    for item in payload["schedules"]:
        if item.get("error"):
            print(f"katar: schedule {item['name']} cannot run: {item['error']}", file=sys.stderr)
    return 0


def migrate(args: argparse.Namespace) -> int:
    """``katar migrate``: open the store, which brings its schema up to date, close it, and
    say what it did."""
    import asyncio

    from katar import config
    from katar.store import open_store

    settings = config.load(args.config) if args.config else config.Settings()
    store = open_store(args.db or settings.store_url)

    async def run() -> None:
        await store.open()
        await store.close()

    asyncio.run(run())
    change = store.schema_change
    if change is None:
        done = f"the store {store.url} keeps no schema: nothing to migrate"
    elif change[0] == 0:
        done = f"created the schema (version {change[1]}) in the store {store.url}"
    elif change[0] < change[1]:
        done = f"upgraded the store {store.url} from schema {change[0]} to {change[1]}"
    else:
        done = f"the store {store.url} is already up to date (schema {change[1]})"
    print(f"katar: {done}", file=sys.stderr)
    return 0


def token(args: argparse.Namespace) -> int:
    """``katar token``: a new token on the first line, then its block for the file."""
    from katar.auth import ALL_QUEUES, digest, new_token
    from katar.core.model import check_queue_name

    queues = list(dict.fromkeys(args.queue))
    for queue in queues:
        if queue != ALL_QUEUES:
            check_queue_name(queue)
    secret = new_token()
    block = [
        "[[tokens]]",
        *([f"name = {json.dumps(args.name)}"] if args.name else []),
        f'token_sha256 = "{digest(secret).hex()}"',
        f'role = "{args.role}"',
        f"queues = {json.dumps(queues)}",
    ]
    print(secret)
    print(
        "# The token is shown once: give it to its user (for example as KATAR_TOKEN).\n"
        "# Paste this block into the configuration file, then restart the server:",
    )
    print("\n".join(block))
    return 0


def serve(args: argparse.Namespace) -> int:
    """``katar serve``; its exit status."""
    from katar import config, processes
    from katar.api import Katar
    from katar.core.schedule import SECONDS_FOR_TESTS
    from katar.server import WorkerServer

    settings = config.load(args.config) if args.config else config.Settings()
    if args.host is not None:
        settings.host = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port must be from 0 to 65535")
        settings.port = args.port
    if args.db is not None:
        settings.store_url = args.db
    settings.insecure = settings.insecure or args.insecure
    settings.allowed_hosts = [*settings.allowed_hosts, *args.allowed_host]
    if args.tls_cert is not None:
        settings.tls_cert = args.tls_cert
    if args.tls_key is not None:
        settings.tls_key = args.tls_key
    if args.log_level is not None:
        settings.log_level = args.log_level
    if args.log_format is not None:
        settings.log_format = args.log_format
    settings.access_log = settings.access_log or args.access_log
    if args.otlp_endpoint is not None:
        settings.otlp_endpoint = args.otlp_endpoint or None
    elif settings.otlp_endpoint is None:
        settings.otlp_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    logs.configure(settings.log_level, settings.log_format)
    katar = Katar(settings.store_url)
    for name, options in settings.queues.items():
        katar.declare(name, options)
    for name, spec in settings.schedules.items():
        katar.declare_schedule(name, spec)
    if os.environ.get(SECONDS_FOR_TESTS) == "1":
        logging.getLogger("katar").warning(
            "%s is set: cron may have a seconds field (for tests only)", SECONDS_FOR_TESTS
        )
    server = WorkerServer(
        katar=katar,
        host=settings.host,
        port=settings.port,
        insecure=settings.insecure,
        limits=settings.limits,
        tokens=settings.tokens,
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        access_log=settings.access_log,
        allowed_hosts=settings.allowed_hosts,
        aws_credentials=settings.aws_credentials,
        push_allow=settings.push_allow,
        otlp_endpoint=settings.otlp_endpoint,
    )
    workers = args.workers
    if workers == 1:
        server.run()
        return 0
    if not 1 <= workers <= processes.MAX_WORKERS:
        raise ConfigError(f"--workers must be from 1 to {processes.MAX_WORKERS}")
    if not settings.store_url.startswith(("postgresql:", "postgres:")):
        raise ConfigError(
            "--workers needs the PostgreSQL store: several processes share a PostgreSQL"
            " database, while one SQLite file is served by one process (and a memory store"
            " lives in one)"
        )
    server.check_exposure()
    listener = server.listen()
    return processes.serve_many(listener, workers, lambda: server.run(listener))


_COMMANDS: Final[dict[str, Callable[[argparse.Namespace], int]]] = {
    "serve": serve,
    "migrate": migrate,
    "worker": worker,
    "enqueue": enqueue,
    "token": token,
    "schedules": schedules,
    **dict.fromkeys(cli_admin.COMMANDS, cli_admin.run),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process's exit status."""
    args = _parser().parse_args(argv)
    logs.configure()  # katar serve configures it again from its flags and file
    try:
        status = _COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader gone shows here, within the try, not at exit
        return status
    except (ConfigError, ValidationError) as exc:
        print(f"katar: error: {logs.mask_credentials(str(exc))}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"katar: error: {logs.mask_credentials(str(exc))}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"katar: error: {logs.mask_credentials(_for_people(exc, args))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _for_people(exc: ClientError, args: argparse.Namespace) -> str:
    """A client error in the command line's words: the server speaks of HTTP headers and
    routes, the user has flags and variables."""
    from katar.errors import APIError

    url = args.url
    if not isinstance(exc, APIError):
        return str(exc)
    if exc.status == 401:
        if not args.token:
            return f"{url} needs a token: pass --token TOKEN or set KATAR_TOKEN"
        return (
            f"{url} does not accept this token (from --token or KATAR_TOKEN): it is unknown"
            " or revoked there; ask the server's operator for one"
        )
    queue = exc.details.get("queue")
    if exc.status == 404 and isinstance(queue, str) and "queue" in exc.message.lower():
        return (
            f"no queue {queue!r} on {url}: create it with PUT /v1/queue/{queue}"
            f" (e.g. curl -X PUT {url}/v1/queue/{queue} -d '{{}}') or a [queues.{queue}]"
            " table in the server's configuration file"
        )
    return str(exc)


def _reader_gone() -> int:
    """The exit status when the output's reader went away (``katar queues --json | head``):
    no traceback, and the failing flush at exit silenced, as a shell tool ends on SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + 13  # what a shell reports for a command ended by SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
