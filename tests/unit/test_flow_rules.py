"""The flow-control rules (katar.core.rules), pure, on explicit times."""

from __future__ import annotations

import pytest

from katar.core import rules
from katar.core.model import QueueOptions, Rate, queue_options
from katar.core.typed import Invalid

T0 = 1_700_000_000_000
RATE = Rate(limit=4, period=1000)


def test_a_bucket_starts_full_refills_evenly_and_never_overflows() -> None:
    bucket = rules.Bucket.full(RATE, T0)
    assert bucket.tokens == 4
    bucket.take(4)
    bucket.refill(RATE, T0 + 250)
    assert bucket.tokens == pytest.approx(1.0)
    bucket.refill(RATE, T0 + 10_000)
    assert bucket.tokens == 4  # a long idle time fills it, no more
    bucket.refill(RATE, T0 + 5_000)  # a clock that steps back adds nothing
    assert bucket.tokens == 4


def test_the_next_token_comes_when_a_whole_one_has_dripped_in() -> None:
    bucket = rules.Bucket(0.5, T0)
    assert bucket.next_token(RATE, T0) == T0 + 125
    assert rules.Bucket(1.0, T0).next_token(RATE, T0) == T0


def test_the_allowance_is_the_tightest_limit() -> None:
    plain = QueueOptions()
    assert rules.claim_allowance(plain, 10, 1000, None) == 10
    assert rules.claim_allowance(QueueOptions(paused=True), 10, 0, None) == 0
    assert rules.claim_allowance(QueueOptions(concurrency=3), 10, 1, None) == 2
    assert rules.claim_allowance(QueueOptions(concurrency=3), 10, 5, None) == 0
    rated = QueueOptions(rate=RATE, concurrency=10)
    assert rules.claim_allowance(rated, 10, 0, rules.Bucket(2.9, T0)) == 2


def test_pick_by_key_keeps_each_keys_order_and_counts_what_runs() -> None:
    candidates = [(1, "a"), (2, "a"), (3, "b"), (4, None), (5, "c"), (6, "b")]
    taken: dict[str, int] = {}
    picked = rules.pick_by_key(candidates, 10, {"c": 1}, 1, taken)
    assert picked == [1, 3, 4]
    assert taken == {"a": 1, "b": 1}
    assert rules.blocked_keys({"c": 1}, taken, 1) == ["a", "b", "c"]
    assert rules.pick_by_key(candidates, 2, {}, None, {}) == [1, 2]


def test_a_fair_place_is_one_past_the_keys_last_but_never_before_the_front() -> None:
    assert rules.fair_seq(None, 40) == 40
    assert rules.fair_seq(90, 40) == 91
    assert rules.fair_seq(10, 40) == 40


def test_limits_are_checked_with_the_option_named() -> None:
    for raw, path in (
        ({"concurrency": 0}, ("concurrency",)),
        ({"rate": {"limit": 0, "period": 10}}, ("rate", "limit")),
        ({"rate": {"limit": 1}}, ("rate", "period")),
        ({"rate": {"limit": 1, "period": 1, "burst": 2}}, ("rate", "burst")),
        ({"key_concurrency": -1}, ("key_concurrency",)),
        ({"fair": "yes"}, ("fair",)),
        ({"key_rate": {"limit": 0, "period": 10}}, ("key_rate", "limit")),
        ({"key_rate": {"period": 10}}, ("key_rate", "limit")),
    ):
        with pytest.raises(Invalid) as caught:
            queue_options(raw)
        assert caught.value.path == path, raw
    assert queue_options({"rate": {"limit": 2.0, "period": 100}}).rate == Rate(limit=2, period=100)


def test_a_claim_plan_spends_what_was_taken_and_says_what_held_it() -> None:
    rated = QueueOptions(rate=RATE)
    plan = rules.ClaimPlan(rated, 10, 0, rules.Bucket(2.5, T0))
    assert (plan.allowed, plan.held) == (2, "rate")
    assert plan.settle(2) is plan.bucket  # the tokens of what was taken
    assert plan.bucket is not None
    assert plan.bucket.tokens == pytest.approx(0.5)
    assert plan.retry_at(10, 2, T0) == T0 + 125  # fewer than asked: the next token
    assert plan.retry_at(2, 2, T0) is None  # all it asked
    assert plan.held_after(2) == "rate"
    assert plan.held_after(1) is None  # fewer ready tasks than allowed: no limit held it


def test_a_claim_plan_without_a_rate_keeps_no_bucket() -> None:
    plan = rules.ClaimPlan(QueueOptions(concurrency=3), 10, 1, None)
    assert (plan.allowed, plan.held) == (2, "concurrency")
    assert plan.settle(2) is None
    assert plan.retry_at(10, 2, T0) is None


def test_a_key_bucket_kept_as_its_full_moment_is_the_queues_bucket() -> None:
    # Spent at T0 by 4: empty, full again at T0 + 1000; a token every 250 ms meanwhile.
    full_at = rules.key_spent(RATE, None, T0, 4)
    assert full_at == T0 + 1000
    assert rules.key_tokens(RATE, full_at, T0 + 250) == pytest.approx(1.0)
    assert rules.key_tokens(RATE, full_at, T0 + 5000) == 4  # full, no more
    assert rules.key_next_token(RATE, full_at, T0) == T0 + 250
    # Spending from a bucket that is not full starts from its full moment, not now.
    assert rules.key_spent(RATE, full_at, T0 + 500, 1) == T0 + 1250
    assert rules.key_spent(RATE, T0 - 7, T0, 1) == T0 + 250  # full already: from now


def test_key_rates_take_what_each_bucket_holds_and_say_when_the_next_comes() -> None:
    rates = rules.KeyRates(RATE, T0, {"busy": T0 + 900.0})  # busy: 0.4 tokens
    candidates = [(1, "busy"), (2, "a"), (3, None), (4, "a"), (5, "a"), (6, "a"), (7, "a")]
    taken: dict[str, int] = {}
    assert rules.pick_by_key(candidates, 10, {}, None, taken, rates) == [2, 3, 4, 5, 6]
    assert rates.taken == {"a": 4}
    assert rates.blocked() == {"busy", "a"}
    assert rates.next_at == T0 + 150  # busy's first whole token
    assert rates.spent() == {"a": T0 + 1000}


def test_key_buckets_drop_the_full_ones_from_the_oldest_take() -> None:
    buckets = rules.KeyBuckets()
    buckets.keep({"a": T0 + 100.0, "b": T0 + 1000.0, "c": T0 + 50.0})
    buckets.prune(T0 + 200)
    assert list(buckets.full_at) == ["b", "c"]  # a dropped; c waits behind b, bounded
    buckets.keep({"a": T0 + 1900.0})
    buckets.prune(T0 + 1000)
    assert list(buckets.full_at) == ["a"]
    assert len(buckets) == 1


def test_a_claim_held_by_key_rate_retries_at_the_first_keys_token() -> None:
    options = QueueOptions(key_rate=RATE, rate=Rate(limit=10, period=1000))
    plan = rules.ClaimPlan(options, 10, 0, rules.Bucket(10.0, T0))
    rates = rules.KeyRates(RATE, T0, {"a": T0 + 1000.0})
    assert not rates.take("a")
    plan.settle(0)
    assert rules.claim_retry_at(plan, 10, 0, T0, rates) == T0 + 250
    assert rules.claim_held(plan, 0, rates) == "key_rate"
    # Cut by the queue's own rate: its next token, and its reason.
    empty = rules.ClaimPlan(options, 10, 0, rules.Bucket(0.5, T0))
    assert rules.claim_retry_at(empty, 10, 0, T0, rates) == T0 + 50
    assert rules.claim_held(empty, 0, rates) == "rate"
