"""The histograms behind katar_wait_seconds and katar_run_seconds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from katar.core.counters import BUCKETS, DeliveryStarts, Histogram


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


@dataclass(frozen=True)
class _Task:
    id: int
    lease_until: int | None


def _delivered(starts: DeliveryStarts, ids: range, now: int, lease: int = 1000) -> None:
    starts.started([_Task(i, now + lease) for i in ids], now)


def test_a_delivery_start_is_taken_out_by_its_ack() -> None:
    starts = DeliveryStarts()
    _delivered(starts, range(3), now=100)
    assert starts.ended("1") == 100
    assert starts.ended("1") is None  # once
    assert len(starts) == 2


def test_delivery_starts_acked_elsewhere_go_when_their_lease_runs_out() -> None:
    # A server whose deliveries are acked through another: no ack ever comes here, and no
    # reap (the other server may reap). What it holds stays at the deliveries in their lease.
    starts = DeliveryStarts()
    for second in range(60):
        _delivered(starts, range(second * 100, second * 100 + 100), now=second * 1000)
        assert len(starts) <= 200  # this second's and the last's (a 1 s lease)
    assert starts.ended("5999") == 59_000  # the latest are still timed
    assert starts.ended("0") is None


def test_a_heartbeat_here_keeps_the_start_past_the_first_lease() -> None:
    starts = DeliveryStarts()
    _delivered(starts, range(2), now=0)
    starts.extended("0", now=900)  # the lease runs to 1900 now
    starts.extended("7", now=900)  # unknown here: nothing
    _delivered(starts, range(10, 11), now=1500)  # prunes task 1, whose lease ended at 1000
    assert starts.ended("1") is None
    assert starts.ended("0") == 0
    assert len(starts) == 1


def test_tasks_with_leases_of_their_own_are_pruned_at_theirs() -> None:
    starts = DeliveryStarts()
    starts.started([_Task(1, 500), _Task(2, 5000), _Task(3, None)], 0)
    assert len(starts) == 2  # a task without a lease is not a delivery to time
    _delivered(starts, range(10, 11), now=600)
    assert starts.ended("1") is None
    assert starts.ended("2") == 0


def test_past_the_cap_new_deliveries_go_unmeasured() -> None:
    starts = DeliveryStarts(limit=10)
    _delivered(starts, range(8), now=0)
    _delivered(starts, range(8, 11), now=1)  # 11 would pass the cap
    assert len(starts) == 8
    assert starts.ended("9") is None
    _delivered(starts, range(20, 22), now=2)
    assert len(starts) == 10
    _delivered(starts, range(30, 31), now=2000)  # the earlier leases ran out: room again
    assert len(starts) == 1


def test_a_polls_acks_take_their_starts_out_at_once() -> None:
    starts = DeliveryStarts()
    _delivered(starts, range(40), now=100)  # a large claim: one lease, written at once
    # Ids as the wire has them (str) or the store (int); unknown ones are not timed.
    assert starts.ran(["1", 2, "77"], now=350) == [250, 250]
    assert starts.ran(["1"], now=400) == []  # once
    assert len(starts) == 38
    assert starts.ran([str(i) for i in range(40)], now=500) == [400] * 38
    assert len(starts) == 0


def test_a_large_claim_with_leases_of_their_own_is_pruned_at_each() -> None:
    starts = DeliveryStarts()
    # Two leases among a large claim's tasks (not one entry for all): each keeps its own.
    starts.started([_Task(i, 500 if i < 10 else 5000) for i in range(20)], 0)
    assert len(starts) == 20
    _delivered(starts, range(100, 101), now=600)  # prunes the first ten, whose leases ended
    assert starts.ended("9") is None
    assert starts.ended("10") == 0
    assert len(starts) == 10
