"""The job every peer runs: nothing, so that the queue itself is measured."""

from __future__ import annotations

import os
from typing import Any


def noop(n: int) -> None:
    """The job."""


def make_huey() -> Any:
    from huey import SqliteHuey

    return SqliteHuey("katar-bench", filename=os.environ["KATAR_BENCH_HUEY_DB"], results=False)


HUEY = make_huey() if "KATAR_BENCH_HUEY_DB" in os.environ else None
if HUEY is not None:
    HUEY.task()(noop)
