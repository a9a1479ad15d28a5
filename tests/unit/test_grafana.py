"""docs/grafana/katar.json: valid JSON, and every metric it queries is one the server exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from katar.core.counters import Counters
from katar.http import metrics

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "katar.json"


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource"}
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"katar_[a-z_]+", target["expr"])
    }
    counters = Counters()
    for field in ("enqueued", "delivered", "done", "failed", "retries"):
        counters.add(getattr(counters, field), "q")
    counters.add(counters.lease_expiries, "q")
    counters.add(counters.cancellations, "q")
    counters.limited("q", "rate")
    counters.observe(counters.wait, "q", [5])
    counters.observe(counters.run, "q", [5])
    page = metrics.render({"q": {"queued": 1}}, counters, {}, 0, {"q": 0}, 1000).decode()
    exposed = set(re.findall(r"^(katar_[a-z_]+)", page, re.MULTILINE))
    assert queried
    assert queried <= exposed, queried - exposed
