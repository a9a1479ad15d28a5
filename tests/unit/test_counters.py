"""The histograms behind katar_wait_seconds and katar_run_seconds."""

from __future__ import annotations

from katar.core.counters import BUCKETS, Histogram


def test_a_histogram_counts_each_duration_in_its_bucket() -> None:
    histogram = Histogram()
    # Repeated values (a poll's tasks share one), distinct ones, bounds themselves, a
    # negative one (a clock that stepped back counts as 0) and one above the last bound.
    histogram.observe([3, 3, 3, 1, 10, -5, 90_000_000, 3])
    histogram.observe([])
    histogram.observe(iter([2500]))
    assert histogram.count == 9
    assert histogram.sum_ms == 3 * 4 + 1 + 10 + 0 + 90_000_000 + 2500
    expected = [0] * (len(BUCKETS) + 1)
    for ms in (3, 3, 3, 1, 10, 0, 90_000_000, 3, 2500):
        bucket = next((i for i, bound in enumerate(BUCKETS) if ms <= bound * 1000), len(BUCKETS))
        expected[bucket] += 1
    assert histogram.counts == expected
    assert histogram.cumulative()[-1] == histogram.count
