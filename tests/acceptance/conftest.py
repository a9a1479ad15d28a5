"""Start the real ``katar serve`` in a subprocess, and clean it up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import pytest

READY = re.compile(r"serving on (https?)://127\.0\.0\.1:(\d+)")
KATAR: Final = (sys.executable, "-m", "katar")


class KatarProcess:
    """One ``katar serve`` process on a free loopback port."""

    def __init__(self, cwd: Path, *args: str, katar: Sequence[str] = KATAR) -> None:
        self.cwd = cwd
        self.args = args
        self.katar = katar  # the command that runs katar
        self.lines: list[str] = []
        self.port = 0
        self.scheme = "http"
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> KatarProcess:
        command = [*self.katar, "serve", "--port", "0", *self.args]
        self.lines = []
        self.process = subprocess.Popen(
            command,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        started = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(started,), daemon=True)
        self._reader.start()
        if not started.wait(timeout):
            self.kill()
            raise AssertionError("katar serve did not start:\n" + "".join(self.lines))
        return self

    def _read(self, started: threading.Event) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            match = READY.search(line)
            if match:
                self.scheme, self.port = match.group(1), int(match.group(2))
                started.set()

    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        """kill -9."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(10)
            self._reader = None
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout)
        self._close()
        return status


def run_katar(cwd: Path, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``katar serve`` expecting it to stop by itself (a start-up error)."""
    return subprocess.run(
        [sys.executable, "-m", "katar", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[KatarProcess]]:
    """A list to put started servers in; every one is killed at the end of the test."""
    started: list[KatarProcess] = []
    yield started
    for server in started:
        server.kill()


def wait_until(check: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
