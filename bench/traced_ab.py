"""Wall-clock drains with and without tracing, in one sitting, alternating: the seed drain
(one task a poll) and the batched drain (``max`` 100) of ``katar serve`` on SQLite (wrk,
bench/drain.lua), each run plain (no endpoint, tasks without trace context), with context
(the same server, every task enqueued with a sampled ``traceparent``, delivered with it) and
traced (that, with ``--otlp-endpoint`` to a cheap OTLP receiver, bench/otlp_sink.py, so
that every poll makes its spans).

    python -m bench.traced_ab [--rounds 5] [--seed-tasks 20000] [--batched-tasks 200000]

Each round runs the six drains, plain, with context and traced in turn, the order reversed
every round so that a drift of the machine's load does not favour one. After each traced
drain the server is stopped (it exports what it still holds) and the receiver's count of
spans is checked against the polls' (a receive span a delivery, a settle span an ack).
Prints one JSON line a drain, then the medians and the traced/plain and traced/context
ratios of the medians, with each round's own ratio beside them to show how noisy the
sitting was.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

from bench.common import HERE, free_port, katar, wait_for_port
from bench.throughput import drain_servers

#: The producer's context of a traced run: sampled, so that every span is exported.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#: Of the spans a traced drain should make, the share that must have reached the receiver.
EXPORTED = 0.99


def _traced(_n: int) -> dict[str, object]:
    return {"trace": {"traceparent": TRACEPARENT}}


def _spans(sink: str) -> int:
    counted: int = httpx.get(f"{sink}/count", timeout=10).json()["spans"]
    return counted


def run(
    tasks: int, batch: int, connections: int, sink: str | None, context: bool = True
) -> dict[str, Any]:
    """One drain: plain (``sink`` None), or traced, exporting to ``sink``; the tasks carry
    a trace context when ``context`` (always when traced)."""
    options = () if sink is None else ("--otlp-endpoint", sink)
    before = 0 if sink is None else _spans(sink)
    with katar("sqlite", options) as server:
        figures = drain_servers(
            [server], tasks, batch, connections, extra=_traced if context else None
        )
    result: dict[str, Any] = {"tasks_per_s": figures["tasks_per_s"]}
    if sink is not None:
        # The server has stopped, exporting what it held. Each poll that delivered made a
        # receive span, each that acked a settle span (drain.lua's polls may carry acks of
        # several deliveries): at least one span a delivery of `batch`, and its settle.
        expected = tasks // batch + 1
        deadline = time.monotonic() + 10
        while (exported := _spans(sink) - before) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        result["spans"] = exported
        if exported < EXPORTED * expected:
            raise SystemExit(f"the receiver counted {exported} spans, expected {expected}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed-tasks", type=int, default=20_000)
    parser.add_argument("--batched-tasks", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench.otlp_sink", str(port)], cwd=HERE.parent
    )
    sink = f"http://127.0.0.1:{port}"
    runs: dict[str, list[float]] = {}
    try:
        wait_for_port(port)
        drains = {"seed": (args.seed_tasks, 1), "batched": (args.batched_tasks, 100)}
        for round_ in range(args.rounds):
            order = ["plain", "context", "traced"]
            if round_ % 2:
                order.reverse()
            for drain, (tasks, batch) in drains.items():
                for mode in order:
                    result = run(
                        tasks,
                        batch,
                        args.connections,
                        sink if mode == "traced" else None,
                        context=mode != "plain",
                    )
                    name = f"{drain}_{mode}"
                    runs.setdefault(name, []).append(result["tasks_per_s"])
                    print(json.dumps({"round": round_, "drain": name, **result}), flush=True)
    finally:
        receiver.terminate()
        receiver.wait(10)
    medians = {name: round(statistics.median(values)) for name, values in runs.items()}
    ratios = {}
    for drain in ("seed", "batched"):
        each = [
            round(t / p, 3)
            for t, p in zip(runs[f"{drain}_traced"], runs[f"{drain}_plain"], strict=True)
        ]
        against_context = [
            round(t / c, 3)
            for t, c in zip(runs[f"{drain}_traced"], runs[f"{drain}_context"], strict=True)
        ]
        ratios[drain] = {
            "of_medians": round(medians[f"{drain}_traced"] / medians[f"{drain}_plain"], 3),
            "each_round": each,
            "median_of_rounds": statistics.median(each),
            # The same tasks, each with its trace context, on a server without an endpoint:
            # what exporting spans costs, apart from carrying the context.
            "vs_context_of_medians": round(
                medians[f"{drain}_traced"] / medians[f"{drain}_context"], 3
            ),
            "vs_context_each_round": against_context,
        }
    print(json.dumps({"medians": medians, "ratios": ratios, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
