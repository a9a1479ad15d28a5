"""The clients' parts that follow the server: the TypeScript client's types, generated from
the OpenAPI document, must match it. (The clients' own suites run in .ci/run: `npm test` in
clients/typescript, `go test` in clients/go.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_typescript_clients_types_match_the_openapi_document() -> None:
    if shutil.which("node") is None:
        reason = "the TypeScript client's types check needs node, missing on this machine"
        if os.environ.get("KATAR_REQUIRE_EXAMPLES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run(
        ["node", "scripts/openapi-types.mjs", "--check"],
        cwd=ROOT / "clients" / "typescript",
        env={**os.environ, "KATAR_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
