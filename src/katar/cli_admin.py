"""The operator's commands of ``katar``: queues, tasks, retry, redrive, pause, resume,
workers, push.

Each one is a call of the Python client (katar.client.Producer) over HTTP, printed as an
aligned table for people, or as JSON with ``--json`` for scripts. The server's refusals
reach the user as its message, with exit status 1 (katar.cli maps the errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from katar.errors import ConfigError
from katar.protocol import NOTIFY_EVENTS, STATUSES, WAITING_COUNT

if TYPE_CHECKING:  # loaded when a command runs: `katar serve` needs no HTTP client
    from katar.client import Producer

#: The operator's commands: name -> help.
COMMANDS: Final = {
    "queues": "list the queues with their task counts",
    "tasks": "list a queue's tasks: katar tasks QUEUE [--status S ...]",
    "retry": "retry every failed task of a queue (or those of --status)",
    "redrive": (
        "move a queue's waiting tasks (queued, failed) back to the queues they came from,"
        " or --to a queue: katar redrive QUEUE [--to Q] [--rate N] [--status S ...]"
    ),
    "pause": "pause a queue: its workers' polls take nothing until resumed",
    "resume": "resume a paused queue",
    "workers": "list the workers seen in the last hour",
    "push": "a push queue: its endpoint and last pushes; --to URL sets it, --rotate, --secret",
    "notify": "a queue's completion webhooks: --to URL [--event E] sets them, --remove,"
    " --secret, --rotate",
}
#: The statuses a redrive moves (katar.core.rules.REDRIVE_STATES).
_REDRIVEN: Final = ("queued", "failed")
#: A task's record keeps the error of its last failed attempt and the worker that last held
#: it: once the task is queued again they belong to an earlier attempt, and the table says so.
_ERROR_IS_THE_OUTCOME: Final = frozenset({"failed", "cancelled"})
_WORKER_OF_AN_EARLIER_ATTEMPT: Final = frozenset({"queued", "paused"})
#: The most characters of a task's error a table shows.
_ERROR_WIDTH: Final = 60


def add_parsers(commands: Any, connection: Callable[[argparse.ArgumentParser], None]) -> None:
    """Declare the commands on ``commands`` (argparse's subparsers); ``connection`` adds
    the options every client command has (--url, --token, --ca-file)."""
    for name, text in COMMANDS.items():
        command = commands.add_parser(name, help=text, description=text[0].upper() + text[1:])
        connection(command)
        command.add_argument(
            "--json", action="store_true", help="print JSON for scripts instead of a table"
        )
        if name == "push":
            command.add_argument("queue", metavar="QUEUE", help="the queue's name")
            command.add_argument(
                "--to", metavar="URL", help="make the queue a push queue to this endpoint"
            )
            command.add_argument(
                "--timeout", type=int, metavar="MS", help="with --to: ms to wait for an answer"
            )
            command.add_argument(
                "--header",
                action="append",
                default=[],
                metavar="NAME:VALUE",
                help="with --to: a header sent with each push (repeat for more)",
            )
            command.add_argument("--remove", action="store_true", help="stop pushing the queue")
            _secret_arguments(command, "its")
        if name == "notify":
            command.add_argument("queue", metavar="QUEUE", help="the queue's name")
            command.add_argument(
                "--to", metavar="URL", help="POST the ends of the queue's tasks to this endpoint"
            )
            command.add_argument(
                "--event",
                action="append",
                choices=NOTIFY_EVENTS,
                metavar="EVENT",
                help=f"with --to: an event to send (repeat for more): {', '.join(NOTIFY_EVENTS)}"
                " (default all)",
            )
            command.add_argument("--remove", action="store_true", help="stop the webhooks")
            _secret_arguments(command, "their")
        if name in ("tasks", "retry", "redrive", "pause", "resume"):
            command.add_argument("queue", metavar="QUEUE", help="the queue's name")
        if name in ("tasks", "retry", "redrive"):
            choices = _REDRIVEN if name == "redrive" else STATUSES
            default = {"tasks": "", "retry": " (default failed)", "redrive": " (default both)"}
            command.add_argument(
                "--status",
                action="append",
                choices=choices,
                metavar="STATUS",
                help=f"only tasks of this status (repeat for more): {', '.join(choices)}"
                + default[name],
            )
            command.add_argument("--key", help="only tasks of this key")
            command.add_argument("--error", metavar="TEXT", help="only tasks whose error has TEXT")
        if name == "redrive":
            command.add_argument(
                "--to", metavar="QUEUE", help="move them to this queue (default: their origin)"
            )
            command.add_argument(
                "--rate",
                type=float,
                metavar="N",
                help="move at most N tasks a second, in the background on the server"
                " (follow it with GET /v1/queue/QUEUE/redrive)",
            )
        if name == "retry":
            command.add_argument(
                "--id", metavar="ID", help="retry this one task (failed, cancelled or paused)"
            )
            command.add_argument(
                "--data",
                metavar="JSON",
                help="with --id: run the task with this data instead (edit and retry)",
            )
        if name == "tasks":
            command.add_argument(
                "--limit", type=int, default=20, metavar="N", help="show N tasks (default 20)"
            )
            command.add_argument("--worker", help="only tasks its worker last held")
            command.add_argument("--after", metavar="ID", help="start after this task id")


def _secret_arguments(command: argparse.ArgumentParser, whose: str) -> None:
    """The signing secret's options of `katar push` and `katar notify`."""
    command.add_argument(
        "--secret", action="store_true", help=f"print {whose} signing secrets (admin)"
    )
    noun = "it" if whose == "its" else "them"
    command.add_argument(
        "--rotate", action="store_true", help=f"give {noun} a new signing secret (admin)"
    )
    command.add_argument(
        "--grace",
        type=float,
        default=86_400.0,
        metavar="S",
        help="with --rotate: seconds the old secret still signs (default a day)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the operator's command ``args.command``."""
    from katar.client import Producer

    with Producer(args.url, token=args.token, verify=args.ca_file or True) as producer:
        return _RUNNERS[args.command](producer, args)


#: The counts `katar queues` shows: by status, and the queued tasks waiting for others.
_COUNTED: Final = (*STATUSES, WAITING_COUNT)


def _queues(producer: Producer, args: argparse.Namespace) -> int:
    queues = producer.queues()
    if args.json:
        return _print_json([msgspec.to_builtins(queue) for queue in queues])
    rows = [
        [
            queue.name,
            "paused" if queue.paused else "active",
            *(str(queue.counts.get(status, 0)) for status in _COUNTED),
        ]
        for queue in queues
    ]
    _print_table(["QUEUE", "STATE", *(s.upper() for s in _COUNTED)], rows, numeric_from=2)
    return 0


def _tasks(producer: Producer, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise _usage("--limit must be at least 1")
    tasks = producer.tasks(
        args.queue,
        args.status,
        args.limit,
        args.after,
        key=args.key,
        worker=args.worker,
        error=args.error,
    )
    if args.json:
        return _print_json([msgspec.to_builtins(task) for task in tasks])
    now = datetime.now(UTC)
    rows = [
        [
            task.id,
            task.status,
            str(task.priority),
            str(task.attempts),
            _age(task.created_at, now),
            task.key or "",
            _earlier(task.worker or "", task.status in _WORKER_OF_AN_EARLIER_ATTEMPT),
            _one_line(_earlier(task.error or "", task.status not in _ERROR_IS_THE_OUTCOME)),
        ]
        for task in tasks
    ]
    header = ["ID", "STATUS", "PRIORITY", "ATTEMPTS", "AGE", "KEY", "WORKER", "ERROR"]
    _print_table(header, rows)
    return 0


def _retry(producer: Producer, args: argparse.Namespace) -> int:
    if args.id is not None:
        return _retry_one(producer, args)
    if args.data is not None:
        raise _usage("--data edits one task: give its --id")
    status = args.status or ["failed"]
    done = producer.bulk(args.queue, "retry", status=status, key=args.key, error=args.error)
    if args.json:
        return _print_json(msgspec.to_builtins(done))
    print(f"retried {done.changed} of the {done.matched} task(s) that matched")
    return 0


def _redrive(producer: Producer, args: argparse.Namespace) -> int:
    if args.rate is not None:
        if args.rate <= 0:
            raise _usage("--rate must be above 0 (tasks per second)")
        job = producer.start_redrive(
            args.queue, args.rate, to=args.to, status=args.status, key=args.key, error=args.error
        )
        if args.json:
            return _print_json(msgspec.to_builtins(job))
        print(
            f"redrive of {job.remaining} task(s) of {args.queue} started at {job.rate:g} a"
            f" second; follow it with GET /v1/queue/{args.queue}/redrive"
        )
        return 0
    done = producer.redrive(
        args.queue, to=args.to, status=args.status, key=args.key, error=args.error
    )
    if args.json:
        return _print_json(msgspec.to_builtins(done))
    where = f"to {args.to}" if args.to else "back to their origin"
    print(f"moved {done.moved} of the {done.matched} task(s) that matched {where}")
    if done.no_origin:
        print(f"{done.no_origin} task(s) stayed: no origin to go back to (name one with --to)")
    return 0


def _pause(producer: Producer, args: argparse.Namespace) -> int:
    producer.pause(args.queue)
    return _said(args, {"queue": args.queue, "paused": True}, f"queue {args.queue} paused")


def _resume(producer: Producer, args: argparse.Namespace) -> int:
    producer.resume(args.queue)
    return _said(args, {"queue": args.queue, "paused": False}, f"queue {args.queue} resumed")


def _workers(producer: Producer, args: argparse.Namespace) -> int:
    workers = producer.workers()
    if args.json:
        return _print_json([msgspec.to_builtins(worker) for worker in workers])
    now = datetime.now(UTC)
    rows = [
        [w.name, ",".join(w.queues), _age(w.last_poll, now), str(w.in_progress)] for w in workers
    ]
    _print_table(["WORKER", "QUEUES", "LAST POLL", "IN PROGRESS"], rows)
    return 0


def _push(producer: Producer, args: argparse.Namespace) -> int:
    if args.to is not None:
        headers: dict[str, str] = {}
        for header in args.header:
            name, colon, value = header.partition(":")
            if not colon or not name.strip():
                raise _usage(f"--header {header!r}: write it NAME:VALUE")
            headers[name.strip()] = value.strip()
        secret = producer.set_push(args.queue, args.to, timeout_ms=args.timeout, headers=headers)
        if secret is None:
            return _said(args, {"push": args.to}, f"{args.queue} pushes to {args.to}")
        text = f"{args.queue} pushes to {args.to}; its signing secret (shown once): {secret}"
        return _said(args, {"push": args.to, "secret": secret}, text)
    if args.remove:
        producer.remove_push(args.queue)
        return _said(args, {"push": None}, f"{args.queue} is polled by workers again")
    if args.secret or args.rotate:
        if args.rotate:
            secrets = producer.rotate_push_secret(args.queue, args.grace)
        else:
            secrets = producer.push_secret(args.queue)
        if args.json:
            return _print_json(msgspec.to_builtins(secrets))
        print(secrets.secret)
        if secrets.previous_secret is not None:
            until = secrets.previous_until
            print(f"{secrets.previous_secret} (the previous one: signs too until {until})")
        return 0
    status = producer.push_status(args.queue)
    if args.json:
        return _print_json(msgspec.to_builtins(status))
    rate = "-" if status.error_rate is None else f"{status.error_rate:.0%}"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status.counts.items())) or "none yet"
    print(f"{args.queue} pushes to {status.url} (timeout {status.timeout} ms)")
    print(f"pushes by this server: {counts}; error rate of the last ones: {rate}")
    rows = [
        [a.at, a.outcome, "-" if a.status is None else str(a.status), str(a.ms), a.error or ""]
        for a in status.recent
    ]
    if rows:
        _print_table(["AT", "OUTCOME", "STATUS", "MS", "ERROR"], rows)
    return 0


def _notify(producer: Producer, args: argparse.Namespace) -> int:
    if args.to is not None:
        secret = producer.set_notify(args.queue, args.to, events=args.event)
        if secret is None:
            return _said(args, {"notify": args.to}, f"{args.queue} notifies {args.to}")
        text = f"{args.queue} notifies {args.to}; its signing secret (shown once): {secret}"
        return _said(args, {"notify": args.to, "secret": secret}, text)
    if args.remove:
        producer.remove_notify(args.queue)
        return _said(args, {"notify": None}, f"{args.queue} sends no completion webhooks")
    if args.rotate:
        secrets = producer.rotate_notify_secret(args.queue, args.grace)
    elif args.secret:
        secrets = producer.notify_secret(args.queue)
    else:
        raise _usage("say what to do: --to URL, --remove, --secret or --rotate")
    if args.json:
        return _print_json(msgspec.to_builtins(secrets))
    print(secrets.secret)
    if secrets.previous_secret is not None:
        until = secrets.previous_until
        print(f"{secrets.previous_secret} (the previous one: signs too until {until})")
    return 0


_RUNNERS: Final[dict[str, Callable[[Producer, argparse.Namespace], int]]] = {
    "queues": _queues,
    "tasks": _tasks,
    "retry": _retry,
    "redrive": _redrive,
    "pause": _pause,
    "resume": _resume,
    "workers": _workers,
    "push": _push,
    "notify": _notify,
}


def _retry_one(producer: Producer, args: argparse.Namespace) -> int:
    """`katar retry QUEUE --id ID [--data JSON]`: one task, edited or not."""
    if args.status or args.key or args.error:
        raise _usage("--id names the task: --status, --key and --error do not apply")
    edit: dict[str, Any] = {}
    if args.data is not None:
        try:
            edit["data"] = json.loads(args.data)
        except ValueError as exc:
            raise _usage(f"--data must be JSON: {exc}") from None
    task = producer.retry(args.queue, args.id, **edit)
    if args.json:
        return _print_json(msgspec.to_builtins(task))
    print(f"task {task.id} is {task.status} (attempts so far: {task.attempts})")
    return 0


def _usage(message: str) -> ConfigError:
    return ConfigError(message)  # exit status 2, as katar.cli maps it


def _said(args: argparse.Namespace, value: Any, text: str) -> int:
    if args.json:
        return _print_json(value)
    print(text)
    return 0


def _print_json(value: Any) -> int:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _print_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = -1
) -> None:
    """Columns aligned to their widest cell; those from ``numeric_from`` on to the right."""
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [
            cell.rjust(width) if 0 <= numeric_from <= i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _age(when: str | None, now: datetime) -> str:
    """How long ago an ISO time was, for people: 45s, 12m, 3h, 2d."""
    if not when:
        return ""
    try:
        then = datetime.fromisoformat(when)
    except ValueError:
        return when
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(int((now - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _earlier(text: str, earlier: bool) -> str:
    """``text``, marked as of an earlier attempt when ``earlier`` (and there is text)."""
    return f"(earlier attempt) {text}" if text and earlier else text


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_WIDTH else text[: _ERROR_WIDTH - 1] + "…"
