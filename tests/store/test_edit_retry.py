"""Edit and retry (PATCH to "queued" with data, priority or key) over every store: the task
takes the new fields and a fresh set of attempts, keeps its history, and a task in
progress or done is refused with nothing changed.

Part of the conformance suite (see test_conformance): the same tests run on every store.
"""

from __future__ import annotations

import msgspec
import pytest

from katar.core.model import Edit, QueueOptions, State
from katar.errors import IllegalTransition, ValidationError
from katar.store import Store
from tests.helpers.store import KEEP, T0, ack, claim, data, new, setup

FAIR = QueueOptions(persistent=True, fair=True)


def raw(value: object) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(value))


async def test_a_failed_task_runs_again_with_its_new_data(store: Store) -> None:
    await setup(store, QueueOptions(persistent=True, max_attempts=1))
    (task,) = await store.enqueue("q", [new({"to": "typo"})], T0)
    (claimed,) = await claim(store)
    await store.poll("q", KEEP, [ack(claimed, "failed", error="bad")], 0, "w1", T0 + 1)
    edit = Edit(data=raw({"to": "ok"}), priority=7, key="c1")
    change = await store.set_status("q", task.id, "queued", T0 + 2, edit)
    assert change is not None
    assert (change.old, change.task.state) == (State.FAILED, State.READY)
    got = await store.get_task("q", task.id)
    assert got is not None
    assert (data(got), got.priority, got.key, got.attempt_base) == ({"to": "ok"}, 7, "c1", 1)
    (again,) = await claim(store, now=T0 + 3)
    assert (again.id, data(again), again.attempts) == (task.id, {"to": "ok"}, 2)


async def test_what_an_edit_cannot_change_stays(store: Store) -> None:
    await setup(store)
    running, done = await store.enqueue("q", [new(1), new(2)], T0)
    await claim(store)
    (second,) = await claim(store)
    await store.poll("q", KEEP, [ack(second, "done")], 0, "w1", T0 + 1)
    for task in (running, done):
        with pytest.raises(IllegalTransition):
            await store.set_status("q", task.id, "queued", T0 + 2, Edit(data=raw(9)))
        with pytest.raises(ValidationError):
            await store.set_status("q", task.id, "paused", T0 + 2, Edit(data=raw(9)))
        got = await store.get_task("q", task.id)
        assert got is not None
        assert data(got) in (1, 2)


async def test_a_new_key_takes_a_place_as_that_keys_task_in_a_fair_queue(store: Store) -> None:
    await setup(store, FAIR)
    a1, a2, b1 = await store.enqueue(
        "q", [msgspec.structs.replace(new(n), key=k) for n, k in ((1, "a"), (2, "a"), (3, "b"))], T0
    )
    # By key in turn: a1, b1, a2. b1 moved to key a comes after a2.
    await store.set_status("q", b1.id, "queued", T0 + 1, Edit(key="a"))
    delivered = await claim(store, limit=3, options=FAIR, now=T0 + 2)
    assert [t.id for t in delivered] == [a1.id, a2.id, b1.id]
