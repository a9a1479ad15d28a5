"""The queue rules, as pure functions."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from katar.core import rules
from katar.core.model import Ack, NewTask, QueueOptions, State, Task, parse_priority
from katar.errors import Conflict, IllegalTransition, ValidationError

T0 = 1_000_000
OPTIONS = QueueOptions(persistent=True, timeout=100, max_attempts=3, retry_delay=10)


def task(state: State, attempts: int = 0, **fields: object) -> Task:
    return Task(
        id=7,
        queue="q",
        state=state,
        priority=0,
        data=msgspec.Raw(b"1"),
        attempts=attempts,
        created_at=T0,
        updated_at=T0,
        **fields,  # type: ignore[arg-type]
    )


# The contract's transitions for PATCH: (from status, to status) -> allowed.
ALLOWED = {
    ("paused", "cancelled"),
    ("queued", "cancelled"),
    ("queued", "paused"),
    ("paused", "queued"),
    ("failed", "queued"),
    ("cancelled", "queued"),
}


@pytest.mark.parametrize(("state", "target"), list(itertools.product(State, rules.PATCH_STATUSES)))
def test_every_status_change_is_allowed_or_refused_as_the_contract_says(
    state: State, target: str
) -> None:
    current = task(state, attempts=1 if state is State.RUNNING else 0, run_at=T0 + 5)
    if current.status == target:
        assert rules.change_status(current, target, T0) is None
    elif (current.status, target) == ("in progress", "cancelled"):  # requested, not made
        requested = rules.change_status(current, target, T0 + 1)
        assert requested is not None
        assert requested.status == "in progress"
        assert requested.cancel_requested
        assert rules.change_status(requested, target, T0 + 2) is None  # a repeat: no change
    elif (current.status, target) in ALLOWED:
        changed = rules.change_status(current, target, T0 + 1)
        assert changed is not None
        assert changed.status == target
        assert changed.updated_at == T0 + 1
    else:
        with pytest.raises(IllegalTransition) as caught:
            rules.change_status(current, target, T0)
        assert current.status in caught.value.message


def test_unknown_patch_status_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        rules.change_status(task(State.READY), "done", T0)


def test_resuming_a_paused_delayed_task_keeps_its_not_before_time() -> None:
    resumed = rules.change_status(task(State.PAUSED, run_at=T0 + 50), "queued", T0)
    assert resumed is not None
    assert resumed.state is State.SCHEDULED
    assert resumed.run_at == T0 + 50
    due = rules.change_status(task(State.PAUSED, run_at=T0 + 50), "queued", T0 + 50)
    assert due is not None
    assert due.state is State.READY
    assert due.run_at is None


def test_new_tasks_start_ready_scheduled_or_paused() -> None:
    raw = msgspec.Raw(b"{}")
    assert rules.new_task("q", NewTask(data=raw), 1, T0).state is State.READY
    later = rules.new_task("q", NewTask(data=raw, delay_ms=5), 1, T0)
    assert later.state is State.SCHEDULED
    assert later.run_at == T0 + 5
    assert rules.new_task("q", NewTask(data=raw, paused=True), 1, T0).state is State.PAUSED


def test_backoff_doubles_up_to_its_ceiling() -> None:
    options = QueueOptions(retry_delay=100, retry_delay_max=1000)
    assert [rules.retry_delay(options, n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    assert rules.retry_delay(QueueOptions(retry_delay=0), 3) == 0


def test_a_heartbeat_may_set_the_lease_or_give_the_task_back() -> None:
    running = task(State.RUNNING, attempts=2, lease_until=T0 + 100, started_at=T0 - 5)
    longer = rules.apply_ack(
        running, Ack(task_id="7", status="in progress", lease=5000), OPTIONS, T0
    )
    assert longer is not None
    assert longer.lease_until == T0 + 5000
    assert not rules.released(longer)
    given_back = rules.apply_ack(
        running, Ack(task_id="7", status="in progress", lease=0), OPTIONS, T0
    )
    assert given_back is not None
    assert (given_back.state, given_back.lease_until, given_back.run_at) == (
        State.READY,
        None,
        None,
    )
    assert given_back.attempts == 2  # the next delivery is the third
    assert rules.released(given_back)
    assert [d.outcome for d in rules.deliveries(given_back)] == ["released"]
    # A failed attempt that retries is not a release.
    failed = rules.apply_ack(running, Ack(task_id="7", status="failed", retry=True), OPTIONS, T0)
    assert failed is not None
    assert not rules.released(failed)


def test_an_ack_applies_only_to_the_current_delivery() -> None:
    running = task(State.RUNNING, attempts=2, lease_until=T0 + 100)
    done = rules.apply_ack(running, Ack(task_id="7", status="done"), OPTIONS, T0)
    assert done is not None
    assert done.state is State.DONE
    fenced = rules.apply_ack(running, Ack(task_id="7", status="done", attempt=1), OPTIONS, T0)
    assert fenced is None
    with pytest.raises(Conflict):
        rules.apply_ack(running, Ack(task_id="7", status="done", attempt=3), OPTIONS, T0)
    with pytest.raises(Conflict):
        rules.apply_ack(task(State.READY), Ack(task_id="7", status="done"), OPTIONS, T0)


@pytest.mark.parametrize("status", ["done", "failed", "in progress"])
def test_a_named_worker_acks_only_deliveries_leased_to_it_or_to_no_name(status: str) -> None:
    alices = task(State.RUNNING, attempts=2, worker="alice", lease_until=T0 + 100)
    ack = Ack(task_id="7", status=status)  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="leased to another worker"):
        rules.apply_ack(alices, ack, OPTIONS, T0, "bob")
    assert rules.apply_ack(alices, ack, OPTIONS, T0, "alice") is not None
    assert rules.apply_ack(alices, ack, OPTIONS, T0, None) is not None  # the original protocol
    nameless = task(State.RUNNING, attempts=1, lease_until=T0 + 100)
    assert rules.apply_ack(nameless, ack, OPTIONS, T0, "bob") is not None
    # An earlier delivery's ack stays a silent no-op, whoever sends it.
    earlier = Ack(task_id="7", status=status, attempt=1)  # type: ignore[arg-type]
    assert rules.apply_ack(alices, earlier, OPTIONS, T0, "bob") is None


def test_failed_retries_while_attempts_remain() -> None:
    failed = Ack(task_id="7", status="failed", error="e", retry=True)
    retried = rules.apply_ack(task(State.RUNNING, attempts=2), failed, OPTIONS, T0)
    assert retried is not None
    assert retried.state is State.SCHEDULED
    assert retried.run_at == T0 + 20
    assert retried.error == "e"
    final = rules.apply_ack(task(State.RUNNING, attempts=3), failed, OPTIONS, T0)
    assert final is not None
    assert final.state is State.FAILED
    no_retry = Ack(task_id="7", status="failed")
    assert rules.apply_ack(task(State.RUNNING, attempts=1), no_retry, OPTIONS, T0).state is (  # type: ignore[union-attr]
        State.FAILED
    )


def test_unlimited_attempts() -> None:
    options = QueueOptions(max_attempts=0)
    expired = rules.expire_lease(task(State.RUNNING, attempts=10_000), options, T0)
    assert expired is not None
    assert expired.state is State.READY


def test_discard_only_finished_tasks_of_queues_without_history() -> None:
    drop = QueueOptions(persistent=False)
    assert rules.discard(task(State.DONE), drop)
    assert rules.discard(task(State.FAILED), drop)
    assert not rules.discard(task(State.CANCELLED), drop)
    assert not rules.discard(task(State.DONE), OPTIONS)


@pytest.mark.parametrize(
    ("value", "expected"), [("high", 10), ("normal", 0), ("low", -10), (3, 3), (-(2**31), -(2**31))]
)
def test_priorities(value: object, expected: int) -> None:
    assert parse_priority(value) == expected


@pytest.mark.parametrize("value", ["urgent", 1.5, True, 2**31, None])
def test_bad_priorities(value: object) -> None:
    with pytest.raises(ValidationError):
        parse_priority(value)


# -- long-running work: progress and cancel ------------------------------------------------


def beat(progress: bytes | None = None, attempt: int | None = None) -> Ack:
    extra = {} if progress is None else {"progress": msgspec.Raw(progress)}
    return Ack(task_id="7", status="in progress", attempt=attempt, **extra)  # type: ignore[arg-type]


def test_a_heartbeat_with_progress_replaces_it_and_one_without_keeps_it() -> None:
    running = task(State.RUNNING, attempts=1, lease_until=T0 + 100)
    first = rules.apply_ack(running, beat(b'{"done":1}'), OPTIONS, T0 + 10)
    assert first is not None
    assert first.progress == msgspec.Raw(b'{"done":1}')
    second = rules.apply_ack(first, beat(b"[2]"), OPTIONS, T0 + 20)
    assert second is not None
    assert second.progress == msgspec.Raw(b"[2]")
    kept = rules.apply_ack(second, beat(), OPTIONS, T0 + 30)
    assert kept is not None
    assert kept.progress == msgspec.Raw(b"[2]")
    assert kept.lease_until == T0 + 30 + OPTIONS.timeout
    done = rules.apply_ack(kept, Ack(task_id="7", status="done"), OPTIONS, T0 + 40)
    assert done is not None
    assert done.progress == msgspec.Raw(b"[2]")  # done keeps the last progress
    again = rules.claimed(task(State.READY, progress=msgspec.Raw(b"1")), OPTIONS, None, T0)
    assert again.progress is None  # a new delivery reports its own


@pytest.mark.parametrize("status", ["in progress", "done", "failed"])
def test_the_first_ack_after_a_cancel_request_cancels_the_task(status: str) -> None:
    requested = rules.change_status(task(State.RUNNING, attempts=2, worker="w"), "cancelled", T0)
    assert requested is not None
    ack = Ack(task_id="7", status=status, attempt=2, retry=True)  # type: ignore[arg-type]
    cancelled = rules.apply_ack(requested, ack, OPTIONS, T0 + 1, "w")
    assert cancelled is not None
    assert cancelled.state is State.CANCELLED
    assert cancelled.error is not None
    assert "operator" in cancelled.error
    assert cancelled.lease_until is None
    assert rules.stops(cancelled, ack, "w") is (status == "in progress")
    # Later acks of that delivery change nothing; a repeated heartbeat hears it again.
    for late in ("done", "failed", "in progress"):
        stale = Ack(task_id="7", status=late, attempt=2)
        assert rules.apply_ack(cancelled, stale, OPTIONS, T0 + 2, "w") is None
    assert rules.stops(cancelled, beat(attempt=2), "w")
    assert not rules.stops(cancelled, beat(attempt=1), "w")  # an earlier delivery's
    assert not rules.stops(cancelled, beat(attempt=2), "other")  # not the lease holder


def test_a_lease_that_ends_after_a_cancel_request_cancels_the_task() -> None:
    running = task(State.RUNNING, attempts=1, lease_until=T0, cancel_requested=True)
    expired = rules.expire_lease(running, OPTIONS, T0)
    assert expired is not None
    assert expired.state is State.CANCELLED
    retried = rules.change_status(expired, "queued", T0 + 1)
    assert retried is not None
    assert not retried.cancel_requested  # a retry starts afresh
    assert retried.state is State.READY


# -- per-task options and unique keys ------------------------------------------------------


def test_a_task_timeout_overrides_the_queue_lease() -> None:
    own = rules.claimed(task(State.READY, timeout=40), OPTIONS, "w", T0)
    assert own.lease_until == T0 + 40
    assert rules.claimed(task(State.READY), OPTIONS, "w", T0).lease_until == T0 + 100
    beat = rules.apply_ack(own, Ack(task_id="7", status="in progress"), OPTIONS, T0 + 10)
    assert beat is not None
    assert beat.lease_until == T0 + 50
    expired = rules.expire_lease(own, OPTIONS, T0 + 40)
    assert expired is not None
    assert expired.error == "lease expired: no ack within 40 ms of delivery 1"


@pytest.mark.parametrize(
    ("own", "deliveries", "spent"), [(1, 1, True), (5, 3, False), (0, 99, False)]
)
def test_a_task_max_attempts_overrides_the_queue(own: int, deliveries: int, spent: bool) -> None:
    running = task(State.RUNNING, attempts=deliveries, max_attempts=own, lease_until=T0)
    after = rules.expire_lease(running, OPTIONS, T0)
    assert after is not None
    assert (after.state is State.FAILED) is spent


def test_a_task_expires_only_while_it_waits_never_delivered() -> None:
    waiting = task(State.SCHEDULED, expires_at=T0 + 5, run_at=T0 + 9)
    assert rules.expiry(waiting) == T0 + 5
    assert rules.expire(waiting, T0 + 4) is None
    cancelled = rules.expire(waiting, T0 + 5)
    assert cancelled is not None
    assert cancelled.state is State.CANCELLED
    assert cancelled.run_at is None
    assert cancelled.error == "expired: not delivered within 0.005 s"
    assert rules.expiry(task(State.READY, attempts=1, expires_at=T0)) is None  # delivered
    assert rules.expiry(task(State.RUNNING, attempts=1, expires_at=T0)) is None
    assert rules.expiry(task(State.PAUSED, expires_at=T0)) == T0
    retried = rules.change_status(cancelled, "queued", T0 + 6)
    assert retried is not None
    assert retried.expires_at is None  # an operator's retry lifts it


def test_who_holds_a_unique_key() -> None:
    for state in (State.PAUSED, State.READY, State.SCHEDULED, State.RUNNING):
        assert rules.holds_key(task(state, unique_key="k"), T0)
    for state in (State.DONE, State.FAILED, State.CANCELLED):
        assert not rules.holds_key(task(state, unique_key="k"), T0)
        held = task(state, unique_key="k", unique_until=T0 + 1)
        assert rules.holds_key(held, T0)
        assert not rules.holds_key(held, T0 + 1)
    assert not rules.holds_key(task(State.READY), T0)
    assert rules.duplicate(task(State.READY)).duplicate


def test_a_queue_without_history_keeps_a_finished_task_while_it_holds_its_key() -> None:
    drop = QueueOptions(persistent=False)
    done = task(State.DONE, unique_key="k", unique_until=T0 + 10)
    assert not rules.discard(done, drop)
    assert not rules.sweepable(done, drop, T0 + 9)
    assert rules.sweepable(done, drop, T0 + 10)
    assert not rules.sweepable(done, OPTIONS, T0 + 10)  # a queue with history keeps it
    assert rules.discard(task(State.DONE, unique_key="k", unique_until=T0), drop)
    assert rules.discard(task(State.DONE), drop)


def test_check_edges_bounds_each_task_and_the_request() -> None:
    data = msgspec.Raw(b"1")
    full = NewTask(data=data, after=tuple(range(1, rules.MAX_PARENTS)), refs=(0,))
    rules.check_edges([NewTask(data=data), full])  # MAX_PARENTS exactly: taken
    over = NewTask(data=data, after=tuple(range(1, rules.MAX_PARENTS + 1)), refs=(0,))
    with pytest.raises(
        ValidationError, match=rf"tasks\[1\]\.after names {rules.MAX_PARENTS + 1:,} tasks"
    ):
        rules.check_edges([NewTask(data=data), over])
    one = NewTask(data=data, after=(1,))
    rules.check_edges([one] * rules.MAX_EDGES)
    with pytest.raises(ValidationError, match=f"at most {rules.MAX_EDGES:,} in one request"):
        rules.check_edges([one] * (rules.MAX_EDGES + 1))


def test_bulk_in_sql_leaves_watched_and_fair_retries_to_the_rules() -> None:
    assert rules.bulk_in_sql("delete", report=True, fair=True)
    assert rules.bulk_in_sql("cancel", report=False, fair=True)
    assert rules.bulk_in_sql("retry", report=False, fair=False)
    assert not rules.bulk_in_sql("retry", report=False, fair=True)  # a place to take
    assert not rules.bulk_in_sql("cancel", report=True, fair=False)  # someone watches


def test_bulk_split_sends_dependencies_and_retried_keys_to_the_rules() -> None:
    rows = [
        (1, State.FAILED, None, False),  # a plain retry: in SQL
        (2, State.FAILED, "k", False),  # takes its unique_key back: by the rules
        (3, State.CANCELLED, None, True),  # has dependencies: by the rules
        (4, State.DONE, None, False),  # the action does not apply
        (5, State.CANCELLED, None, False),
    ]
    assert rules.bulk_split("retry", rows) == ([1, 5], {2, 3})
    assert rules.bulk_split("delete", rows) == ([1, 2, 4, 5], {3})  # a key is no matter
    assert rules.bulk_split("cancel", rows) == ([], set())
