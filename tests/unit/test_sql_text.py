"""The SQL the stores send, character for character: the statements are tuned against the
planners (PostgreSQL's plans, SQLite's instruction counts), so that a refactor of how they
are built (katar.store._sql: the predicates generated from the State values and the rules)
must not change one character. The snapshot is tests/unit/sql_snapshot.json; after a
deliberate change of a statement, regenerate it with
``python -m tests.unit.test_sql_text`` and review the diff."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

from katar.store.postgres.queries import queries

SNAPSHOT = Path(__file__).with_name("sql_snapshot.json")
MODULES = (
    "katar.store._rows",
    "katar.store._sql",
    "katar.store.sqlite.batch",
    "katar.store.sqlite.deps",
    "katar.store.sqlite.queues",
    "katar.store.sqlite.schema",
    "katar.store.sqlite.store",
    "katar.store.sqlite.writer",
    "katar.store.postgres.connection",
    "katar.store.postgres.deps",
    "katar.store.postgres.group",
    "katar.store.postgres.queries",
    "katar.store.postgres.schema",
    "katar.store.postgres.store",
)


def _texts(value: Any) -> Any:
    """The strings in a module constant (a statement, or a table of them), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        inner = {str(k): _texts(v) for k, v in value.items()}
        return inner if any(v is not None for v in inner.values()) else None
    if isinstance(value, (tuple, list)):
        items = [_texts(v) for v in value]
        return items if any(v is not None for v in items) else None
    return None


def statements() -> dict[str, Any]:
    """Every statement text the stores build: their module constants, and PostgreSQL's
    statements in a schema."""
    found: dict[str, Any] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attribute, value in sorted(vars(module).items()):
            if attribute.startswith("__") or not attribute.lstrip("_").isupper():
                continue
            text = _texts(value)
            if text is not None:
                found[f"{name}.{attribute}"] = text
    found["katar.store.postgres.queries.queries(katar)"] = dataclasses.asdict(queries("katar"))
    return found


def _leaves(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    children = value.values() if isinstance(value, dict) else value or ()
    return set().union(*(_leaves(child) for child in children))


def test_sql_text_is_unchanged() -> None:
    """A constant kept under its name has the same text; one moved or renamed (a fragment
    now built in katar.store._sql) still has its text built somewhere."""
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    actual = json.loads(json.dumps(statements()))
    changed = sorted(key for key in expected.keys() & actual.keys() if expected[key] != actual[key])
    assert not changed, f"statements changed: {changed}"
    lost = _leaves(expected) - _leaves(actual)
    assert not lost, f"statements no longer built: {sorted(lost)}"


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(statements(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
