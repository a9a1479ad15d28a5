"""A task's children and parents over every store (Store.linked): the tasks of any queue that
named it in their ``after``, or that it named, paged by id, narrowed to some queues, gone
with the tasks removed.

Part of the conformance suite (see test_conformance): the same tests run on every store.
"""

from __future__ import annotations

from katar.core.model import State
from katar.store import Store
from tests.helpers.store import DROP, KEEP, T0, child, finish, new, results, setup


async def ids(
    store: Store,
    queue: str,
    task_id: int,
    limit: int = 100,
    after: int = 0,
    queues: list[str] | None = None,
    parents: bool = False,
) -> list[int] | None:
    found = await store.linked(queue, task_id, limit, after, queues, parents)
    return None if found is None else [task.id for task in found]


async def test_a_task_lists_the_tasks_that_named_it_in_every_queue(store: Store) -> None:
    await setup(store, KEEP, "a")
    await setup(store, KEEP, "b")
    parent, other, alone = await store.enqueue("a", [new("p"), new("o"), new("x")], T0)
    first, second = await store.enqueue("a", [child(1, parent.id), child(2, other.id)], T0)
    (third,) = await store.enqueue("b", [child(3, other.id, parent.id)], T0)
    found = await store.linked("a", parent.id, 100, 0)
    assert found is not None
    assert [(task.id, task.queue) for task in found] == [(first.id, "a"), (third.id, "b")]
    # As records: waiting, and what for.
    assert found[1].state is State.WAITING
    assert found[1].waiting_for == (parent.id, other.id)
    assert await ids(store, "a", other.id) == [second.id, third.id]
    assert await ids(store, "a", alone.id) == []
    assert await ids(store, "a", first.id) == []


async def test_children_stay_listed_once_their_parent_is_done(store: Store) -> None:
    await setup(store)
    (parent,) = await store.enqueue("q", [new("p")], T0)
    (waiting,) = await store.enqueue("q", [child("c", parent.id)], T0)
    await finish(store, parent, {"rows": 2})
    # And a child named after the parent was done: ready at once, listed too.
    (late,) = await store.enqueue("q", [child("late", parent.id)], T0 + 2)
    found = await store.linked("q", parent.id, 100, 0)
    assert found is not None
    assert [task.id for task in found] == [waiting.id, late.id]
    assert {task.state for task in found} == {State.READY}
    assert all(results(task) == {str(parent.id): {"rows": 2}} for task in found)


async def test_children_are_paged_by_id(store: Store) -> None:
    await setup(store)
    (parent,) = await store.enqueue("q", [new("p")], T0)
    made = await store.enqueue("q", [child(i, parent.id) for i in range(250)], T0)
    # Tasks that name other parents, between them, are not the parent's.
    await store.enqueue("q", [new("other"), child("theirs", refs=(0,))], T0)
    more = await store.enqueue("q", [child(i, parent.id) for i in range(3)], T0)
    expected = [task.id for task in [*made, *more]]
    seen: list[int] = []
    after = 0
    while True:
        page = await ids(store, "q", parent.id, limit=100, after=after)
        assert page is not None
        if not page:
            break
        assert len(page) <= 100
        seen += page
        after = page[-1]
    assert seen == expected
    assert await ids(store, "q", parent.id, limit=2, after=expected[9]) == expected[10:12]
    assert await ids(store, "q", parent.id, after=expected[-1]) == []


async def test_children_may_be_narrowed_to_some_queues(store: Store) -> None:
    await setup(store, KEEP, "a")
    await setup(store, KEEP, "b")
    await setup(store, KEEP, "c")
    (parent,) = await store.enqueue("a", [new("p")], T0)
    (in_a,) = await store.enqueue("a", [child("a", parent.id)], T0)
    (in_b,) = await store.enqueue("b", [child("b", parent.id)], T0)
    (in_c,) = await store.enqueue("c", [child("c", parent.id)], T0)
    assert await ids(store, "a", parent.id, queues=["b"]) == [in_b.id]
    assert await ids(store, "a", parent.id, queues=["c", "a"]) == [in_a.id, in_c.id]
    assert await ids(store, "a", parent.id, queues=["nowhere"]) == []
    assert await ids(store, "a", parent.id, queues=[]) == []
    # The limit counts the children kept, not those left out.
    assert await ids(store, "a", parent.id, limit=1, queues=["c"]) == [in_c.id]


async def test_an_unknown_task_has_no_children_list(store: Store) -> None:
    await setup(store, KEEP, "a")
    await setup(store, KEEP, "b")
    (parent,) = await store.enqueue("a", [new("p")], T0)
    await store.enqueue("b", [child("c", parent.id)], T0)
    assert await ids(store, "a", parent.id + 1000) is None
    assert await ids(store, "b", parent.id) is None  # not a task of that queue


async def test_children_removed_are_no_longer_listed(store: Store) -> None:
    await setup(store, KEEP, "a")
    await setup(store, DROP, "gone")
    await setup(store, KEEP, "deleted")
    (parent,) = await store.enqueue("a", [new("p")], T0)
    kept, removed = await store.enqueue("a", [child(1, parent.id), child(2, parent.id)], T0)
    (dropped,) = await store.enqueue("gone", [child(3, parent.id)], T0)
    (in_deleted,) = await store.enqueue("deleted", [child(4, parent.id)], T0)
    assert await ids(store, "a", parent.id) == [kept.id, removed.id, dropped.id, in_deleted.id]
    assert await store.delete_task("a", removed.id, T0 + 1)
    await store.delete_queue("deleted", T0 + 1)
    await finish(store, parent, "r", KEEP, "a")
    await finish(store, dropped, "done", DROP, "gone")  # a queue without history drops it
    assert await ids(store, "a", parent.id) == [kept.id]


async def test_a_task_lists_the_tasks_it_named_that_are_still_there(store: Store) -> None:
    await setup(store, KEEP, "a")
    await setup(store, KEEP, "b")
    (first,) = await store.enqueue("a", [new(1)], T0)
    (second,) = await store.enqueue("b", [new(2)], T0)
    third, fourth, waiting = await store.enqueue(
        "a", [new(3), new(4), child("c", second.id, first.id, refs=(0, 1))], T0
    )
    named = [first.id, second.id, third.id, fourth.id]
    found = await store.linked("a", waiting.id, 100, 0, parents=True)
    assert found is not None
    assert [(task.id, task.queue) for task in found] == [
        (first.id, "a"),
        (second.id, "b"),
        (third.id, "a"),
        (fourth.id, "a"),
    ]
    assert await ids(store, "a", waiting.id, limit=2, after=first.id, parents=True) == named[1:3]
    assert await ids(store, "a", waiting.id, queues=["b"], parents=True) == [second.id]
    assert await ids(store, "a", first.id, parents=True) == []
    assert await ids(store, "b", waiting.id, parents=True) is None
    # A parent done in a queue without history, or deleted, is no longer there: left out
    # (its result stays with the child).
    await setup(store, DROP, "gone")
    (dropped,) = await store.enqueue("gone", [new(5)], T0)
    (late,) = await store.enqueue("a", [child("late", dropped.id, first.id)], T0)
    await finish(store, dropped, "kept", DROP, "gone")
    assert await store.delete_task("a", first.id, T0 + 2)
    assert await ids(store, "a", late.id, parents=True) == []
    assert await ids(store, "a", waiting.id, parents=True) == named[1:]
    gone = await store.get_task("a", late.id)
    assert gone is not None
    assert results(gone) == {str(dropped.id): "kept"}
