"""The dashboard's own logic, and the files that make it up.

The logic (routing, formatting, the token's rights, the tasks' actions and filters, the
API calls against a fake fetch) is tested in JavaScript by tests/ui/*.test.mjs with
``node --test``, which the first test below runs so that the suite's one command runs them
too; the others hold the dashboard to the server (its routes and their roles) and to its
page (every module preloaded, every module type-checked). Without Node they skip with the
reason, unless KATAR_REQUIRE_BROWSER=1 or KATAR_REQUIRE_EXAMPLES=1 (as .ci/run sets): then
they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from katar import Katar, ui
from katar.http import App

HERE = Path(__file__).resolve().parent
STATIC = Path(ui.__file__).resolve().parent / "static"
#: A module's static imports of another of the dashboard's files: ``from "./x.mjs"``.
IMPORT = re.compile(r"""(?:^|[;\s])(?:import|export)\b[^"';]*?["']\./([\w.-]+\.mjs)["']""", re.M)
PRELOAD = re.compile(r'<link rel="modulepreload" href="/ui/([\w.-]+\.mjs)">')
ENTRY = re.compile(r'<script type="module" src="/ui/([\w.-]+\.mjs)"></script>')


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        reason = "no node on this machine (apt-get install nodejs) for tests/ui/*.test.mjs"
        if "1" in (
            os.environ.get("KATAR_REQUIRE_BROWSER"),
            os.environ.get("KATAR_REQUIRE_EXAMPLES"),
        ):
            pytest.fail(reason)
        pytest.skip(reason)
    return node


def _run(*args: str) -> str:
    """What ``node args`` prints; a failure with its output if it fails."""
    done = subprocess.run(
        [_node(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=HERE
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _server_routes() -> dict[str, str | None]:
    """The server's routes ("GET /v1/workers") and the least role each needs (None: open)."""
    document = json.loads(App(Katar("memory://").engine).openapi_json)
    return {
        f"{method.upper()} {path}": operation.get("x-katar-role")
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }


def test_the_logic_tests_pass() -> None:
    files = sorted(HERE.glob("*.test.mjs"))
    assert files, "no tests/ui/*.test.mjs"
    out = _run("--test", *(file.name for file in files))
    # Tests ran, and every one passed (node --test ends with "# tests N", "# pass N").
    ran = re.search(r"^# tests (\d+)$", out, re.M)
    passed = re.search(r"^# pass (\d+)$", out, re.M)
    assert ran is not None, out
    assert passed is not None, out
    assert int(ran.group(1)) >= len(files), out
    assert passed.group(1) == ran.group(1), out


def _imports(name: str) -> set[str]:
    asset = ui.find(name)
    assert asset is not None, f"{name} is imported but not served"
    return set(IMPORT.findall(asset.body.decode()))


def test_the_page_preloads_every_module_it_loads_and_no_other() -> None:
    """index.html names every module the page will import, so that the browser fetches them
    all at once rather than each only after the module that imports it; and the server
    serves each of them."""
    index = ui.find(ui.INDEX)
    assert index is not None
    page = index.body.decode()
    [entry] = ENTRY.findall(page)
    loaded: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name not in loaded:
            loaded.add(name)
            todo.extend(_imports(name))
    preloaded = PRELOAD.findall(page)
    assert len(preloaded) == len(set(preloaded)), "a module is preloaded twice"
    assert set(preloaded) == loaded - {entry}


def test_every_module_of_the_dashboard_is_type_checked() -> None:
    """tools/dashboard's type check (CI) reads the modules that ask for it: every one."""
    modules = sorted(STATIC.glob("*.mjs"))
    assert len(modules) > 10
    for module in modules:
        assert module.read_text(encoding="utf-8").startswith("// @ts-check\n"), module.name


def test_the_dashboard_calls_only_routes_the_server_has() -> None:
    """tests/ui/calls.mjs calls every endpoint function of api.mjs and names the route each
    reaches (api.test.mjs checks that it does): each is a route of this server."""
    called = json.loads(_run("calls.mjs"))
    assert len(called) >= 10
    assert set(called) <= set(_server_routes())


#: The routes behind each action the dashboard offers (rights.mjs, NEEDS).
RIGHTS = {
    "pauseQueue": ["PATCH /v1/queue/{queue}"],
    "enqueue": ["POST /v1/queue/{queue}/tasks"],
    "changeTasks": [
        "PATCH /v1/queue/{queue}/tasks/{id}",
        "DELETE /v1/queue/{queue}/tasks/{id}",
        "POST /v1/queue/{queue}/tasks/bulk",
        "POST /v1/queue/{queue}/redrive",
    ],
    "pauseSchedule": ["PATCH /v1/schedules/{schedule}"],
    "rotateSecret": ["POST /v1/queue/{queue}/push/rotate"],
}
RANK = {"worker": 0, "producer": 1, "admin": 2}


def test_the_dashboard_offers_no_action_the_server_would_refuse() -> None:
    """Each action is offered only to roles the server lets do it (never a button that can
    only answer 403)."""
    script = 'import("../../src/katar/ui/static/rights.mjs").then((m) => console.log(JSON.stringify(m.NEEDS)))'
    needs: dict[str, str] = json.loads(_run("--input-type=module", "-e", script))
    assert set(needs) == set(RIGHTS)
    server = _server_routes()
    for right, role in needs.items():
        for route in RIGHTS[right]:
            least = server[route]
            assert least is not None, route
            assert RANK[role] >= RANK[least], f"{right} is offered to {role}; {route} needs {least}"


def test_the_type_check_reads_the_types_of_the_vendored_versions() -> None:
    """tools/dashboard pins the npm packages whose types stand for the vendored files: the
    versions the vendored files' first lines name."""
    package = json.loads((HERE.parents[1] / "tools" / "dashboard" / "package.json").read_text())
    pinned = package["devDependencies"]
    vendor = STATIC.parent / "vendor"
    for file, name in [("preact.mjs", "preact"), ("hooks.mjs", "preact"), ("htm.mjs", "htm")]:
        first = (vendor / file).read_text(encoding="utf-8").partition("\n")[0]
        version = re.search(r"\b(\d+\.\d+\.\d+)\b", first)
        assert version is not None, first
        assert pinned[name] == version.group(1), (
            f"{file} is {version.group(1)}; types pinned at {pinned[name]}"
        )
