"""The fault suite's check catches what it is meant to catch."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.driver import Ledger


def done(attempts: int) -> dict[str, Any]:
    return {"status": "done", "attempts": attempts}


def ledger() -> Ledger:
    book = Ledger()
    book.created = {"1": 0, "2": 0}
    book.deliveries = [(1, "1", 1), (1, "2", 1)]
    book.acked = [(3, "1", 1), (3, "2", 1)]
    return book


def test_a_clean_run_passes() -> None:
    ledger().check({"1": done(1), "2": done(1)})


def test_a_stale_ack_is_no_redelivery() -> None:
    book = ledger()
    # Delivered again by a poll sent before the first delivery's ack was answered: the
    # lease had run out, the ack changed nothing, the second delivery's ack stands.
    book.deliveries.append((2, "1", 2))
    book.acked.append((5, "1", 2))
    book.check({"1": done(2), "2": done(1)})


def test_a_stale_ack_after_an_unseen_delivery_is_no_redelivery() -> None:
    book = ledger()
    # Attempt 2 went out on a poll that got no answer (a 504, or a lost answer), sent before
    # attempt 1's ack was answered: that ack was a no-op; attempt 2's lease ran out, and
    # attempt 3's ack stands.
    book.lost_polls.append(2)
    book.deliveries.append((4, "1", 3))
    book.acked.append((6, "1", 3))
    book.check({"1": done(3), "2": done(1)})


def test_a_redelivery_after_a_later_lost_poll_is_caught() -> None:
    book = ledger()
    # The only poll that got no answer was sent after the ack of attempt 1 was answered: the
    # "done" was lost, whatever that poll claimed.
    book.lost_polls.append(4)
    book.deliveries.append((5, "1", 3))
    book.acked.append((7, "1", 3))
    with pytest.raises(AssertionError, match="delivered again"):
        book.check({"1": done(3), "2": done(1)})


def test_a_redelivery_after_a_stale_one_counts_from_the_stale_ack() -> None:
    book = ledger()
    # Attempt 2 went out before attempt 1's ack was answered (stale), attempt 3 after it:
    # attempt 2's lease ran out, no promise broken.
    book.deliveries += [(2, "1", 2), (4, "1", 3)]
    book.acked.append((6, "1", 3))
    book.check({"1": done(3), "2": done(1)})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, r: r.pop("2"), "answered 201 are gone"),
        (lambda b, r: r.update({"2": {"status": "queued", "attempts": 1}}), "not done"),
        (lambda b, r: b.deliveries.append((4, "1", 2)), "delivered again"),
        (lambda b, r: r.update({"3": done(1)}), None),  # a task nobody enqueued
    ],
)
def test_a_broken_promise_fails(change: Any, message: str | None) -> None:
    book = ledger()
    records = {"1": done(1), "2": done(1)}
    change(book, records)
    with pytest.raises(AssertionError, match=message):
        book.check(records)


def test_an_ack_after_the_lease_may_be_a_no_op() -> None:
    book = ledger()
    book.lease = 1.0
    # Attempt 1's ack was held through an outage and answered 5 s after the delivery: the
    # lease ran out meanwhile, the ack changed nothing, and attempt 2 (sent after the ack's
    # answer) stands.
    book.received[("1", 1)] = 100.0
    book.answered_at[("1", 1)] = 105.0
    book.deliveries.append((4, "1", 2))
    book.acked.append((6, "1", 2))
    book.check({"1": done(2), "2": done(1)})
    # Within the lease, the same is a redelivery of a task acknowledged done.
    book.answered_at[("1", 1)] = 100.5
    with pytest.raises(AssertionError, match="delivered again"):
        book.check({"1": done(2), "2": done(1)})
