"""PostgreSQL array literals, built by str.join: for a large enqueue the driver's adaptation
of a Python list, element by element, cost more than the insert itself (docs/benchmarks.md),
so the store's bulk statements take their arrays as one literal string each and unnest them."""

from __future__ import annotations

from collections.abc import Sequence


def ints(values: Sequence[int | None]) -> str:
    """An array literal of integers (NULL for None)."""
    return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"


def floats(values: Sequence[float]) -> str:
    """An array literal of finite floats, each as repr writes it (exact: it reads back the
    same double)."""
    return "{" + ",".join([repr(v) for v in values]) + "}"


def bools(values: Sequence[bool]) -> str:
    """An array literal of booleans."""
    return "{" + ",".join(["t" if v else "f" for v in values]) + "}"


def texts(values: Sequence[str | None]) -> str:
    """An array literal of strings (NULL for None), each quoted."""
    return "{" + ",".join(["NULL" if v is None else _quoted(v) for v in values]) + "}"


def byteas(values: Sequence[bytes | bytearray | memoryview | None]) -> str:
    """An array literal of bytea (NULL for None), each in hex, quoted."""
    hexes = ["NULL" if v is None else f'"\\\\x{bytes(v).hex()}"' for v in values]
    return "{" + ",".join(hexes) + "}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
