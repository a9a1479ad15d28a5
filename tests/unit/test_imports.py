"""What importing Katar's light parts loads: a worker host needs no server module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import katar

# The server and its dependencies: none of them may load for the client or its commands.
SERVER_MODULES = (
    "uvicorn",
    "httptools",
    "uvloop",
    "psycopg",
    "katar.api",
    "katar.server",
    "katar.config",
    "katar.core",
    "katar.store",
    "katar.http.app",
    "katar.http.connection",
)


def loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    shown = "import json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{shown}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    modules: list[str] = json.loads(out)
    return modules


def server_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == s or m.startswith(f"{s}.") for s in SERVER_MODULES)]


@pytest.mark.parametrize(
    "code",
    [
        "import katar.client",
        "import katar.protocol",
        "from katar.client import Producer, Worker, AsyncProducer, AsyncWorker",
        "import katar; katar.KatarError; katar.__version__",
        # the command line as `katar worker` and `katar enqueue` start: parser, then client
        "from katar.cli import _parser; _parser(); import katar.client.worker",
    ],
)
def test_the_client_loads_no_server_module(code: str) -> None:
    modules = loaded_after(code)
    assert "katar.errors" in modules
    assert server_modules(modules) == []


def test_the_server_names_load_on_first_use() -> None:
    modules = loaded_after("import katar; katar.WorkerServer; from katar import Katar, Token")
    assert {"katar.server", "katar.api", "uvicorn"} <= set(modules)


def test_lazy_names_are_the_real_ones() -> None:
    from katar.api import Katar
    from katar.http import Limits
    from katar.http.app import Limits as AppLimits

    assert katar.Katar is Katar
    assert Limits is AppLimits
    assert {"Katar", "WorkerServer", "Token", "KatarError"} <= set(dir(katar))
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = katar.Nothing


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        # The route table is a leaf of the HTTP layer: the OpenAPI builder reads it without
        # the app, and neither imports the other.
        ("import katar.http.routes", ["katar.http.app", "katar.http.openapi"]),
        ("import katar.http.openapi", ["katar.http.app", "katar.http.asgi"]),
        # The limits need the model's bound on a queue name, not the engine.
        ("import katar.limits", ["katar.core.engine", "katar.store"]),
    ],
)
def test_a_module_loads_none_above_it(code: str, absent: list[str]) -> None:
    modules = loaded_after(code)
    assert [m for m in absent if m in modules] == []
