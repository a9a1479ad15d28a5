"""The dashboard's own logic, and the files that make it up.

The logic (routing, formatting, the token's rights, the tasks' actions and filters) is
tested in JavaScript by tests/ui/*.test.mjs with ``node --test``, which the test below runs
so that the suite's one command runs them too. Without Node it skips with the reason,
unless KATAR_REQUIRE_BROWSER=1 or KATAR_REQUIRE_EXAMPLES=1 (as .ci/run sets): then it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from katar import ui

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


def test_the_logic_tests_pass() -> None:
    files = sorted(HERE.glob("*.test.mjs"))
    assert files, "no tests/ui/*.test.mjs"
    done = subprocess.run(
        [_node(), "--test", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Tests ran, and every one passed (node --test ends with "# tests N", "# pass N").
    ran = re.search(r"^# tests (\d+)$", done.stdout, re.M)
    passed = re.search(r"^# pass (\d+)$", done.stdout, re.M)
    assert ran is not None, done.stdout
    assert passed is not None, done.stdout
    assert int(ran.group(1)) >= len(files), done.stdout
    assert passed.group(1) == ran.group(1), done.stdout


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
