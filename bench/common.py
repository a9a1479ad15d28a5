"""What every benchmark needs: ports, processes, wrk, memory and CPU readings."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wrk(
    url: str, script: Path, seconds: float, connections: int, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start wrk (2 threads) with a Lua script."""
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wrk_rate(run: subprocess.Popen[str]) -> float:
    """The requests per second a finished wrk run printed."""
    output, _ = run.communicate()
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"wrk printed no rate:\n{output}")


def lua(text: str) -> Path:
    """A throw-away wrk script."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(text)
    return Path(script.name)


@dataclass
class Server:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def katar(store: str = "sqlite", options: Sequence[str] = ()) -> Iterator[Server]:
    """A fresh ``katar serve`` in a temporary folder, on its default settings but the
    command-line ``options`` given."""
    url = "memory://" if store == "memory" else "sqlite:///katar.db"
    with katars(url, 1, options) as servers:
        yield servers[0]


#: The PostgreSQL server for the PostgreSQL figures (skipped when it does not answer).
POSTGRES_URL = os.environ.get("KATAR_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception:
        return False
    return True


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A store URL on a fresh PostgreSQL schema, dropped afterwards."""
    import uuid

    import psycopg

    schema = f"katar_bench_{uuid.uuid4().hex[:10]}"
    try:
        # Its connections named after it, so that postgres_cpu finds their backends.
        yield f"{POSTGRES_URL}?schema={schema}&pool_size=20&application_name={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def postgres_cpu(url: str) -> float:
    """The CPU seconds that PostgreSQL's backends serving ``url``'s connections (those
    named by its ``application_name``, as postgres_schema's are) have spent so far: the
    run time the kernel counts for each (/proc/PID/schedstat, in ns), read on this
    machine, so PostgreSQL must run here. A backend gone (its connection closed) no longer
    counts: read it while the store is open."""
    from urllib.parse import parse_qs, urlsplit

    import psycopg

    name = parse_qs(urlsplit(url).query)["application_name"][0]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
    spent = 0
    for (pid,) in rows:
        with contextlib.suppress(OSError):  # a backend that has just ended
            spent += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return spent / 1e9


@contextmanager
def fresh_store(store: str, sqlite: str = "sqlite:///katar.db") -> Iterator[str]:
    """A fresh store's URL: a new PostgreSQL schema, a memory store, or ``sqlite`` (by
    default a file in the server's folder)."""
    if store == "postgres":
        with postgres_schema() as url:
            yield url
    elif store == "memory":
        yield "memory://"
    else:
        yield sqlite


@contextmanager
def katars(url: str, count: int, options: Sequence[str] = ()) -> Iterator[list[Server]]:
    """``count`` ``katar serve`` processes on the store ``url``, each in its own folder,
    with the command-line ``options`` given."""
    workdir = Path(tempfile.mkdtemp(prefix="katar-bench-"))
    processes = []
    try:
        for _ in range(count):
            port = free_port()
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "katar", "serve"),
                    *("--port", str(port), "--db", url, *options),
                ],
                cwd=workdir,
                stderr=subprocess.DEVNULL,
            )
            processes.append((port, process))
            wait_for_port(port)
        yield [Server(port, process.pid) for port, process in processes]
    finally:
        for _, process in processes:
            process.terminate()
        for _, process in processes:
            process.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)
