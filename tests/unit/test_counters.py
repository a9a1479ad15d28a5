"""The histograms behind katar_wait_seconds and katar_run_seconds."""

from __future__ import annotations

import pytest

from katar.core.counters import BUCKETS, Histogram


def _bucket(ms: int) -> int:
    return next((i for i, bound in enumerate(BUCKETS) if max(ms, 0) <= bound * 1000), len(BUCKETS))


@pytest.mark.parametrize("copies", [1, 4], ids=["one by one", "grouped by value"])
def test_a_histogram_counts_each_duration_in_its_bucket(copies: int) -> None:
    # Repeated values (a poll's tasks share one), distinct ones, bounds themselves, a
    # negative one (a clock that stepped back counts as 0) and one above the last bound;
    # four copies make a poll large enough to be counted by value first.
    durations = [3, 3, 3, 1, 10, -5, 90_000_000, 3] * copies
    histogram = Histogram()
    histogram.observe(durations)
    histogram.observe([])
    histogram.observe([2500])
    observed = [*durations, 2500]
    assert histogram.count == len(observed)
    assert histogram.sum_ms == sum(max(ms, 0) for ms in observed)
    expected = [0] * (len(BUCKETS) + 1)
    for ms in observed:
        expected[_bucket(ms)] += 1
    assert histogram.counts == expected
    assert histogram.cumulative()[-1] == histogram.count
