"""What the fault suite needs beside ``katar serve`` in a subprocess (the acceptance suite's
harness): a private PostgreSQL server that a test may stop and start, and a small disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.acceptance.conftest import servers  # noqa: F401  (the fixture, for this folder)
from tests.conftest import tmpfs

# The driver's checks are plain asserts: have pytest explain them.
pytest.register_assert_rewrite("tests.faults.driver")

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def cannot(reason: str) -> NoReturn:
    """Skip a fault this machine cannot make, with the reason; in CI
    (KATAR_REQUIRE_FAULTS=1), where every fault must run, fail instead."""
    if os.environ.get("KATAR_REQUIRE_FAULTS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivatePostgres:
    """A PostgreSQL server of the test's own, run as the user postgres from a temporary
    directory: stopping it disturbs nobody else."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.frozen = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def init(self) -> None:
        self._pg(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c fsync=off -c full_page_writes=off"
        )
        self._pg(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop it: "fast" ends every session as a restart does, "immediate" as a crash."""
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def processes(self) -> list[int]:
        """The postmaster and every process it started (backends, writers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    # "pid (comm) state ppid ...": comm may hold spaces, so after its ")".
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == postmaster:
                        found.append(int(entry.name))
        return found

    def freeze(self) -> None:
        """Stop every process of this server (SIGSTOP): it accepts connections and answers
        nothing, as a server that hangs or is cut off by the network."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = False


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        cannot(f"no PostgreSQL 15 binaries in {PG_BIN}")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        cannot("a private PostgreSQL runs as the user postgres: needs root and runuser")
    directory = Path(tempfile.mkdtemp(prefix="katar-faults-pg-"))
    server = PrivatePostgres(directory)
    try:
        shutil.chown(directory, "postgres")
        server.init()
        server.start()
    except (LookupError, OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        cannot(f"cannot run a private PostgreSQL here: {exc}")
    try:
        yield server
    finally:
        if server.frozen:
            server.thaw()
        if server.running():
            server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


class SmallDisk:
    """A tmpfs of a few MiB mounted on a temporary directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 16, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * size):
                        pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk() -> Iterator[SmallDisk]:
    directory = Path(tempfile.mkdtemp(prefix="katar-faults-disk-"))
    try:
        with tmpfs(directory, "8m", cannot):
            yield SmallDisk(directory)
    finally:
        directory.rmdir()
