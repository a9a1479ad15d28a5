"""The ``katar`` command: a thin layer over the Python API and the configuration file."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from katar import config
from katar._version import __version__
from katar.api import Katar
from katar.errors import ConfigError, StoreError
from katar.server import WorkerServer


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
    serve.add_argument("--host", help=f"address to listen on (default {config.DEFAULT_HOST})")
    serve.add_argument(
        "--port", type=int, help=f"port to listen on (default {config.DEFAULT_PORT}; 0 picks one)"
    )
    serve.add_argument(
        "--db",
        metavar="URL",
        help=f"store URL: sqlite:///path.db, sqlite:////abs/path.db, memory:// "
        f"(default {config.DEFAULT_STORE})",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without authentication",
    )
    return parser


def serve(args: argparse.Namespace) -> None:
    """``katar serve``."""
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
    katar = Katar(settings.store_url)
    for name, options in settings.queues.items():
        katar.declare(name, options)
    server = WorkerServer(
        katar=katar,
        host=settings.host,
        port=settings.port,
        insecure=settings.insecure,
        limits=settings.limits,
    )
    server.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process's exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            serve(args)
    except ConfigError as exc:
        print(f"katar: error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"katar: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
