"""The stores against the reference model: random sequences of operations, every answer and
every task record compared.

Each example opens a fresh store of one kind and drives it directly, with an explicit fake
clock (``now``), beside a :class:`~tests.model.reference.Model`. After every step the whole
state is compared: each queue's tasks, the counts and the queues. The rules here only
generate operations and compare answers; what the answers must be is the model's business.

CI runs a fixed sample (derandomized, not shrunk); ``KATAR_MODEL_EXAMPLES=N`` runs N fresh
random examples per store and shrinks a failure to a short sequence; ``KATAR_MODEL_STEPS``
sets the steps per example (30).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import shutil
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from katar.core import idempotency
from katar.core.model import (
    EVERY_TASK,
    UNFINISHED,
    Ack,
    Edit,
    NewTask,
    QueueOptions,
    Rate,
    State,
    Task,
    TaskFilter,
)
from katar.core.rules import with_expiry
from katar.errors import KatarError
from katar.store import Change, PollResult, Store, open_store
from tests.conftest import POSTGRES_URL, STORE_KINDS, store_url
from tests.model.reference import MChange, Model, MTask, Refusal

T = TypeVar("T")

T0 = 1_700_000_000_000
QUEUES = ("a", "b")
UNKNOWN_QUEUE = "nowhere"
WORKERS = (None, "w1", "w2")
AckStatus = Literal["done", "failed", "in progress"]
ACK_STATUSES: tuple[AckStatus, ...] = (
    "done",
    "failed",
    "in progress",
)

_examples = os.environ.get("KATAR_MODEL_EXAMPLES")
SETTINGS = settings(
    max_examples=int(_examples or 40),
    stateful_step_count=int(os.environ.get("KATAR_MODEL_STEPS") or 30),
    derandomize=_examples is None,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    # Shrinking a failure opens a store per attempt and can take many minutes: CI reports
    # the failing run as found (every step is printed); a local run shrinks it.
    phases=[p for p in Phase if _examples is not None or p is not Phase.shrink],
)

# -- inputs --------------------------------------------------------------------------------

json_values = st.sampled_from([None, 0, 1, -7, 2.5, "x", "été ✓", [], [1, "a"], {"k": {"n": 1}}])
raw_json = json_values.map(lambda value: msgspec.Raw(msgspec.json.encode(value)))
# No NUL: how a store keeps "\x00" in a text column is checked elsewhere (contract 13).
texts = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=8)

# Hypothesis favours the first value of a sampled_from: each list starts with the value
# that keeps a run busiest (tasks ready, queues with history, polls that take tasks).
options_strategy = st.builds(
    QueueOptions,
    persistent=st.sampled_from([True, False]),
    timeout=st.sampled_from([1000, 2000, 60000]),
    max_attempts=st.sampled_from([3, 0, 1, 2]),
    retry_failed=st.booleans(),
    max_batch=st.sampled_from([100, 3, 1]),
    retry_delay=st.sampled_from([0, 100, 1000]),
    retry_delay_max=st.sampled_from([3_600_000, 150, 0]),
    paused=st.sampled_from([False, False, False, True]),
    concurrency=st.sampled_from([None, None, 1, 2]),
    key_concurrency=st.sampled_from([None, None, 1]),
    rate=st.sampled_from([None, None, Rate(limit=2, period=1000), Rate(limit=1, period=300)]),
    key_rate=st.sampled_from([None, None, Rate(limit=1, period=300), Rate(limit=2, period=1000)]),
    fair=st.sampled_from([False, False, True]),
    # Section 14: the other queue, or one the store must create; never the queue itself
    # (the engine refuses it: see dead_letter_of).
    dead_letter=st.sampled_from(["b", None, "dead", "a"]),
    expires=st.sampled_from([None, None, None, 1500]),
)


def dead_letter_of(name: str, options: QueueOptions) -> QueueOptions:
    """The options as the engine lets them reach a store: no queue is its own dead_letter."""
    if options.dead_letter == name:
        return msgspec.structs.replace(options, dead_letter=None)
    return options


new_task_strategy = st.builds(
    NewTask,
    data=raw_json,
    priority=st.sampled_from([0, 1, 0, 10, -10, 2**31 - 1, -(2**31)]),
    delay_ms=st.sampled_from([0, 0, 0, 500, 1000, 5000]),
    # Absolute times: some passed when drawn (they mean now), some not yet; with a delay,
    # run_at wins (the HTTP layer refuses both at once).
    run_at=st.sampled_from([None, None, None, T0 - 1, T0 + 500, T0 + 3000, T0 + 100_000]),
    paused=st.sampled_from([False, False, False, True]),
    key=st.sampled_from([None, "a", "b"]),
    # The per-task options and unique keys (section 8): mostly absent.
    timeout=st.sampled_from([None, None, None, 500, 3000]),
    max_attempts=st.sampled_from([None, None, None, 0, 1, 4]),
    expires_in_ms=st.sampled_from([None, None, None, 500, 1000, 4000]),
    unique_key=st.sampled_from([None, None, "u1", "u2"]),
    unique_for_ms=st.sampled_from([None, None, 1000, 10_000]),
    # Debounce (section 14): a key of a few, so that enqueues meet the waiting task.
    debounce_key=st.sampled_from([None, None, None, "d1", "d2"]),
).map(
    # What is refused before any store sees it: unique_for without unique_key, and a
    # debounce_key beside a unique_key or without a delay or run_at (model.check_debounce).
    lambda spec: _debounced(
        spec if spec.unique_key is not None else msgspec.structs.replace(spec, unique_for_ms=None)
    )
)


def _debounced(spec: NewTask) -> NewTask:
    """A debounce_key, where one may be, else none; the debounce's time is the delay's."""
    if spec.debounce_key is None:
        return spec
    if spec.unique_key is not None:
        return msgspec.structs.replace(spec, debounce_key=None)
    if spec.delay_ms == 0 and spec.run_at is None:
        return msgspec.structs.replace(spec, delay_ms=1000)
    return spec


edits = st.builds(
    Edit,
    data=st.none() | raw_json,
    priority=st.sampled_from([None, None, 5, -3]),
    key=st.sampled_from([None, None, "a", "b"]),
)


KEYS = ("k1", "k2")
requests = st.sampled_from([1, 2, 4, 0])  # how many tasks a poll asks for
# Ids no store can have issued, in the forms a client may send.
garbage_ids: st.SearchStrategy[str | int] = st.sampled_from(
    ["0", "-1", "abc", "", "1e3", " 1", "99999999999999999999", 0, -5]
)


def pick(data: st.DataObject, pool: list[T]) -> T | None:
    """One of ``pool`` (None when it is empty), by a draw that does not depend on it."""
    index = data.draw(st.integers(0, 255))
    return pool[index % len(pool)] if pool else None


def record(task: Task, view: bool = True) -> tuple[Any, ...]:
    """The fields of a stored task that the model predicts (``view``: with its parents as
    its record shows them; a change, or a duplicate's answer, need not show them)."""
    shown = view and not task.duplicate and not task.debounced
    return (
        task.id,
        task.queue,
        task.state,
        task.priority,
        bytes(task.data),
        task.attempts,
        task.error,
        None if task.result is None else bytes(task.result),
        task.worker,
        task.created_at,
        task.updated_at,
        task.run_at,
        task.lease_until,
        task.key,
        task.cancel_requested,
        None if task.progress is None else bytes(task.progress),
        task.timeout,
        task.max_attempts,
        task.expires_at,
        task.unique_key,
        task.unique_until,
        task.duplicate,
        task.debounce_key,
        task.debounced,
        task.parents,
        task.waiting_for if shown else None,
        None if not shown or task.after is None else bytes(task.after),
        None if task.dead_letter is None else tuple(msgspec.structs.astuple(task.dead_letter)),
    )


def expected(task: MTask, view: bool = True) -> tuple[Any, ...]:
    shown = view and not task.duplicate and not task.debounced
    return (
        task.id,
        task.queue,
        task.state,
        task.priority,
        task.data,
        task.attempts,
        task.error,
        task.result,
        task.worker,
        task.created_at,
        task.updated_at,
        task.run_at,
        task.lease_until,
        task.key,
        task.cancel_requested,
        task.progress,
        task.timeout,
        task.max_attempts,
        task.expires_at,
        task.unique_key,
        task.unique_until,
        task.duplicate,
        task.debounce_key,
        task.debounced,
        len(task.parents),
        task.waiting_for if shown else None,
        task.after if shown else None,
        task.dead_letter,
    )


def change_records(changes: list[Change]) -> list[tuple[Any, ...]]:
    # The contract orders neither acks' changes nor expiries: compare them by task id.
    return sorted((record(c.task, view=False), c.old) for c in changes)


def expected_changes(changes: list[MChange]) -> list[tuple[Any, ...]]:
    return sorted((expected(c.task, view=False), c.old) for c in changes)


# -- the machine ---------------------------------------------------------------------------


class StoreVersusModel(RuleBasedStateMachine):
    """One store and the model, driven by the same operations."""

    def __init__(self, make_url: Callable[[], str], cleanup: Callable[[str], None]) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.url = make_url()
        self.cleanup = cleanup
        self.store: Store = open_store(self.url)
        self.run(self.store.open())
        self.watching = True
        self.store.watch = lambda: self.watching
        self.model = Model()
        self.now = T0
        self.requests: dict[tuple[str, str], list[NewTask]] = {}  # each key's last request

    def run(self, job: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(asyncio.wait_for(job, 30))

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()
            self.cleanup(self.url)

    def same(
        self, job: Coroutine[Any, Any, T], predicted: Callable[[], Any]
    ) -> tuple[T, Any] | None:
        """Run the store's operation and the model's. When the model refuses, the store
        must raise the same error (None); else the store's answer and the model's."""
        try:
            want = predicted()
        except Refusal as refusal:
            with pytest.raises(KatarError) as caught:
                self.run(job)
            # PT017: the refusal is compared field by field with the model's, inside the state machine.
            assert type(caught.value) is refusal.kind, (caught.value, refusal)  # noqa: PT017
            # PT017: the refusal is compared field by field with the model's, inside the state machine.
            assert caught.value.details.get("ack") == refusal.ack, caught.value.details  # noqa: PT017
            return None
        return self.run(job), want

    # -- drawing ids -------------------------------------------------------------------------

    # What a draw picks may depend on the model's state, and so on which order a store
    # served concurrent polls in; the draws themselves must not (hypothesis replays them and
    # calls a run whose draws differ flaky): every path makes the same draws, and a pick from
    # a list of the state's is an integer taken modulo its length (see pick).

    def draw_id(self, data: st.DataObject, queue: str) -> str | int:
        """A task id a client might name: mostly tasks of the queue, sometimes others."""
        mine = [t.id for t in self.model.of_queue(queue)]
        running = [t.id for t in self.model.of_queue(queue) if t.state is State.RUNNING]
        others = [t.id for t in self.model.tasks.values() if t.queue != queue]
        gone = [i for i in range(1, self.model.issued + 1) if i not in self.model.tasks]
        pools = {"running": running, "mine": mine, "other": others, "gone": gone}
        kinds = [k for k in ("running", "running", "mine", "other", "gone") if pools[k]]
        kind = pick(data, [*kinds, "never", "garbage"])
        garbage = data.draw(garbage_ids)
        beyond = data.draw(st.integers(1, 3))
        known = {k: pick(data, ids) for k, ids in pools.items()}
        as_int = data.draw(st.booleans())
        if kind == "garbage":
            return garbage
        task_id = known.get(kind or "") or self.model.issued + beyond  # else "never"
        return task_id if as_int else str(task_id)

    def draw_ack(
        self, data: st.DataObject, queue: str, statuses: tuple[AckStatus, ...] = ACK_STATUSES
    ) -> Ack | None:
        """Mostly a sound ack (a current delivery of the queue; None when there is none),
        else anything at all: a stale or future attempt, a repeat, a task never delivered,
        gone, of another queue, an id never issued or malformed. A poll with one unsound
        ack is refused whole, so they come one time in four."""
        running = [t for t in self.model.of_queue(queue) if t.state is State.RUNNING]
        sound = data.draw(st.sampled_from([True, True, True, False]))
        current = pick(data, running)
        which = data.draw(st.sampled_from([0, 1, 0, 2, 3]))
        any_id = self.draw_id(data, queue)
        status = data.draw(st.sampled_from(statuses[:1] + statuses))
        error = data.draw(st.none() | texts)
        retry = data.draw(st.sampled_from([None, True, False]))
        result = data.draw(raw_json)
        progress = data.draw(st.none() | raw_json)
        if sound:
            if current is None:
                return None
            task_id: str | int = str(current.id)
            attempt = [None, current.attempts][which % 2]
        else:
            task_id = any_id
            known = self.model.tasks.get(self.model.parse_id(task_id) or 0)
            attempts = known.attempts if known is not None else 1
            attempt = [None, attempts, max(attempts - 1, 1), attempts + 1][which]
        fields: dict[str, Any] = {"attempt": attempt}
        if status == "failed":
            fields["error"] = error
            fields["retry"] = retry
        elif status == "done":
            fields["result"] = result
        else:  # a heartbeat, with progress or without, with a lease of its own or not
            if progress is not None:
                fields["progress"] = progress
            fields["lease"] = data.draw(st.sampled_from([None, None, 0, 50, 5000]))
        return Ack(task_id=task_id, status=status, **fields)

    def draw_after(self, data: st.DataObject, index: int, spec: NewTask) -> NewTask:
        """The task, mostly as it is, else waiting for tasks (section 11): existing ones of
        any queue, earlier ones of the same enqueue ("$n"), or, rarely, one never issued."""
        how = data.draw(st.sampled_from(["none", "none", "ids", "refs", "both", "unknown"]))
        if spec.debounce_key is not None:  # a task that debounces waits for no other
            return spec
        picks = [data.draw(st.integers(0, 255)) for _ in range(data.draw(st.integers(1, 3)))]
        # Section 14: some run once every parent ended, whatever the outcome; those wait,
        # mostly, for tasks not finished yet, whose failures they must then outlive.
        run = data.draw(st.sampled_from(["cancel", "cancel", "run"])) == "run"
        existing = sorted(self.model.tasks)
        unfinished = [i for i, t in self.model.tasks.items() if t.state in UNFINISHED]
        if run:
            spec = msgspec.structs.replace(spec, after_failure="run")
            existing = unfinished or existing
        ids = tuple(existing[p % len(existing)] for p in picks) if existing else ()
        refs = tuple(p % index for p in picks) if index else ()
        if how == "ids":
            return msgspec.structs.replace(spec, after=ids)
        if how == "refs":
            return msgspec.structs.replace(spec, refs=refs)
        if how == "both":
            return msgspec.structs.replace(spec, after=ids, refs=refs)
        if how == "unknown":
            return msgspec.structs.replace(spec, after=(*ids, self.model.issued + 50))
        return spec

    def defaults(self, queue: str, specs: list[NewTask]) -> list[NewTask]:
        """The tasks as the engine hands them to the store: with the queue's ``expires``
        (section 14) where they give no expires_in of their own. The model is given them
        as sent, and applies the option itself."""
        options = self.model.queues.get(queue)
        if options is None or options.expires is None:
            return specs
        return with_expiry(specs, options.expires)

    # -- rules -------------------------------------------------------------------------------

    # Hypothesis runs each example with some rules switched off (swarm testing): tasks from
    # the start give the polls of an example without enqueues something to do.
    @initialize(options=options_strategy, specs=st.lists(new_task_strategy, min_size=3, max_size=8))
    def first_queue(self, options: QueueOptions, specs: list[NewTask]) -> None:
        """The first queue, and tasks in it."""
        options = dead_letter_of(QUEUES[0], options)
        self.run(self.store.save_queue(QUEUES[0], options))
        self.model.save_queue(QUEUES[0], options)
        got = self.run(self.store.enqueue(QUEUES[0], self.defaults(QUEUES[0], specs), self.now))
        want = self.model.enqueue(QUEUES[0], specs, self.now)
        assert [record(t) for t in got] == [expected(t) for t in want]

    # The first queue is never deleted, so that a deletion cannot throw away a whole run.
    @rule(
        name=st.sampled_from([*QUEUES, *QUEUES[1:], UNKNOWN_QUEUE]),
        options=st.none() | options_strategy,
    )
    def configure_queue(self, name: str, options: QueueOptions | None) -> None:
        """PUT a queue's options (create or replace), or, with None, DELETE the queue."""
        if options is not None:
            options = dead_letter_of(name, options)
            self.run(self.store.save_queue(name, options))
            self.model.save_queue(name, options)
            return
        if name == QUEUES[0]:
            return
        answers = self.same(
            self.store.delete_queue(name, self.now), lambda: self.model.delete_queue(name, self.now)
        )
        if answers is not None:
            got, want = answers
            assert got == want

    @rule(
        data=st.data(),
        queue=st.sampled_from([*QUEUES, *QUEUES, UNKNOWN_QUEUE]),
        specs=st.lists(new_task_strategy, min_size=1, max_size=4),
    )
    def enqueue(self, data: st.DataObject, queue: str, specs: list[NewTask]) -> None:
        specs = [self.draw_after(data, index, spec) for index, spec in enumerate(specs)]
        answers = self.same(
            self.store.enqueue(queue, self.defaults(queue, specs), self.now),
            lambda: self.model.enqueue(queue, specs, self.now),
        )
        if answers is not None:
            got, want = answers
            assert [record(t) for t in got] == [expected(t) for t in want]

    # Dependencies whose parents are still to end, most of all those that run whatever the
    # outcome (section 14): their parents' failures, cancellations and deletions must
    # release them, which tasks naming parents at random reach too rarely.
    @precondition(lambda self: any(t.state in UNFINISHED for t in self.model.tasks.values()))
    @rule(data=st.data(), spec=new_task_strategy, run=st.sampled_from([True, True, False]))
    def enqueue_child(self, data: st.DataObject, spec: NewTask, run: bool) -> None:
        unfinished = sorted(i for i, t in self.model.tasks.items() if t.state in UNFINISHED)
        # Mostly tasks in progress: an ack or a lease's end fails them soon.
        running = [i for i in unfinished if self.model.tasks[i].state is State.RUNNING]
        if data.draw(st.sampled_from([True, True, False])) and running:
            unfinished = running
        picks = [data.draw(st.integers(0, 255)) for _ in range(data.draw(st.integers(1, 3)))]
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        after = tuple(unfinished[p % len(unfinished)] for p in picks)
        spec = msgspec.structs.replace(spec, after=after, after_failure="run" if run else "cancel")
        answers = self.same(
            self.store.enqueue(queue, self.defaults(queue, [spec]), self.now),
            lambda: self.model.enqueue(queue, [spec], self.now),
        )
        if answers is not None:
            got, want = answers
            assert [record(t) for t in got] == [expected(t) for t in want]

    def waited_for(self) -> list[int]:
        """The unfinished tasks that others wait for, by id."""
        tasks = self.model.tasks
        return sorted(
            {
                parent_id
                for child_id, edges in self.model.edges.items()
                if child_id in tasks
                for parent_id, (done, _r) in edges.items()
                if not done and parent_id in tasks and tasks[parent_id].state in UNFINISHED
            }
        )

    # A parent's end, the moment that settles its children (sections 11 and 14): failed by
    # its worker for good, done, or cancelled by an operator.
    @precondition(lambda self: bool(self.waited_for()))
    @rule(data=st.data(), how=st.sampled_from(["failed", "failed", "done", "cancelled"]))
    def end_a_parent(self, data: st.DataObject, how: str) -> None:
        parent = self.model.tasks[pick(data, self.waited_for()) or 0]
        if parent.state is State.RUNNING and how != "cancelled":
            fields: dict[str, Any] = {"attempt": parent.attempts}
            if how == "failed":
                fields.update(error="gave up", retry=False)
            ended = Ack(task_id=str(parent.id), status=how, **fields)  # type: ignore[arg-type]
            self.check_poll(data, parent.queue, [ended], 0, parent.worker)
            return
        answers = self.same(
            self.store.set_status(parent.queue, parent.id, "cancelled", self.now),
            lambda: self.model.set_status(parent.queue, parent.id, "cancelled", self.now),
        )
        if answers is not None:
            got, want = answers
            assert (got is None) == (want is None)
            if got is not None:
                assert (record(got.task), got.old) == (expected(want.task), want.old)

    @rule(
        data=st.data(),
        queue=st.sampled_from([*QUEUES, UNKNOWN_QUEUE]),
        key=st.sampled_from(KEYS),
        specs=st.lists(new_task_strategy, min_size=1, max_size=3),
    )
    def enqueue_once(self, data: st.DataObject, queue: str, key: str, specs: list[NewTask]) -> None:
        """An enqueue with an Idempotency-Key: often a repeat of the key's last request,
        sometimes the same with one field changed (a different request), else a new one."""
        last = self.requests.get((queue, key))
        if last is not None:
            how = data.draw(st.sampled_from(["repeat", "repeat", "change", "new"]))
            if how == "repeat":
                specs = last
            elif how == "change":
                first = last[0]
                changes: list[dict[str, Any]] = [
                    {"priority": first.priority + 1},
                    {"delay_ms": first.delay_ms + 1},
                    {"run_at": (first.run_at or self.now) + 1},
                    {"paused": not first.paused},
                    {"data": msgspec.Raw(bytes(first.data) + b" ")},
                    {"timeout": (first.timeout or 1) + 1},
                    {"unique_key": (first.unique_key or "") + "x"},
                ]
                if first.debounce_key is not None:  # a unique_key would not go with it
                    changes[-1] = {"debounce_key": first.debounce_key + "x"}
                change = data.draw(st.sampled_from(changes))
                specs = [msgspec.structs.replace(first, **change), *last[1:]]
        once = idempotency.idempotency(key, specs)
        answers = self.same(
            self.store.enqueue_once(queue, self.defaults(queue, specs), self.now, once),
            lambda: self.model.enqueue_once(queue, specs, self.now, key),
        )
        if answers is None:
            return
        got, (tasks, created) = answers
        assert ([record(t) for t in got.tasks], got.created) == (
            [expected(t) for t in tasks],
            created,
        )
        if created:
            self.requests[(queue, key)] = specs

    # The only rule of one argument: hypothesis favours the first rule in its order (by
    # number of arguments, then name), and this one, which does the most, should be it.
    @rule(data=st.data())
    def poll(self, data: st.DataObject) -> None:
        """A worker's poll: acks (see draw_ack), then a claim."""
        queue = data.draw(st.sampled_from([*QUEUES, *QUEUES, *QUEUES, UNKNOWN_QUEUE]))
        count = data.draw(st.sampled_from([1, 0, 2, 4]))
        acks = [ack for _ in range(count) if (ack := self.draw_ack(data, queue)) is not None]
        worker = data.draw(st.sampled_from(WORKERS))
        if not self.model.ownership and any(self.model.owner_conflict(a, worker) for a in acks):
            worker = None  # an anonymous poll may ack any delivery
        self.check_poll(data, queue, acks, data.draw(requests), worker)

    def check_poll(
        self, data: st.DataObject, queue: str, acks: list[Ack], requested: int, worker: str | None
    ) -> None:
        # Whether anyone needs the tasks finished "done" (see Store.watch).
        self.watching = data.draw(st.booleans())
        options = self.model.queues.get(queue, QueueOptions())
        limit = min(requested, options.max_batch)  # as the engine caps it
        answers = self.same(
            self.store.poll(queue, options, acks, limit, worker, self.now),
            lambda: self.model.poll(queue, acks, limit, worker, self.now),
        )
        if answers is not None:
            got, want = answers
            assert self.poll_answer(got) == self.poll_answer(want)

    def poll_answer(self, answer: PollResult | tuple[list[MTask], list[MChange], list[int]]) -> Any:
        """What a poll answered, store's or model's, in one comparable form."""
        if isinstance(answer, PollResult):
            delivered = [record(t) for t in answer.delivered]
            changes = change_records(answer.changes)
            cancel = list(answer.cancel)
        else:
            delivered = [expected(t) for t in answer[0]]
            changes = expected_changes(answer[1])
            cancel = answer[2]
        if not self.watching:
            # Nobody watches: a store may leave out the tasks its acks finished "done".
            changes = [c for c in changes if c[0][2] is not State.DONE]
        return delivered, changes, cancel

    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data(), count=st.sampled_from([2, 3]))
    def concurrent_polls(self, data: st.DataObject, count: int) -> None:
        """Polls of one queue at once. What a store promises (docs/architecture.md): the
        polls' acks are applied one poll after another, each poll's together, in some
        order; their claims are served one after another in some order; either each
        poll's claim right after its acks (one poll after another), or every claim after
        every ack of the polls (the SQLite store's group commit), the two orders then
        possibly different."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        options = self.model.queues[queue]
        polls = []
        for _ in range(count):
            acks = [
                ack
                for _ in range(data.draw(st.sampled_from([1, 0, 2])))
                if (ack := self.draw_ack(data, queue)) is not None
            ]
            worker = data.draw(st.sampled_from(WORKERS))
            if not self.model.ownership and any(self.model.owner_conflict(a, worker) for a in acks):
                worker = None
            polls.append((acks, min(data.draw(requests), options.max_batch), worker))
        self.watching = data.draw(st.booleans())

        async def together() -> list[PollResult | BaseException]:
            return await asyncio.gather(
                *(self.store.poll(queue, options, *poll, self.now) for poll in polls),
                return_exceptions=True,
            )

        got = self.run(together())
        seen: list[Any] = []
        for answer in got:
            if isinstance(answer, KatarError):
                seen.append((type(answer), answer.details.get("ack")))
            elif isinstance(answer, BaseException):
                raise answer
            else:
                seen.append(self.poll_answer(answer))
        # Several orders may give the same answers (when nobody watches, a "done" is not
        # answered) yet leave different tasks (which of two "done"s of one task won): the
        # order is the one that also leaves the queue as the store did.
        stored = [record(t) for t in self.run(self.store.list_tasks(queue, EVERY_TASK, 10_000, 0))]
        answered = False
        for model, serial in self.orders(queue, polls):
            if serial == seen:
                answered = True
                if [expected(t) for t in model.of_queue(queue)] == stored:
                    self.model = model
                    return
        if answered:
            raise AssertionError(f"no order of the polls {polls} leaves {stored}")
        raise AssertionError(f"no order of the polls {polls} gives the answers {got}")

    def orders(
        self, queue: str, polls: list[tuple[list[Ack], int, str | None]]
    ) -> Iterator[tuple[Model, list[Any]]]:
        """Each order the polls may be served in (see concurrent_polls): the model after
        them, and their answers."""
        indexes = range(len(polls))
        for order in itertools.permutations(indexes):
            model = copy.deepcopy(self.model)
            serial: list[Any] = [None] * len(polls)
            for index in order:
                try:
                    serial[index] = self.poll_answer(model.poll(queue, *polls[index], self.now))
                except Refusal as refusal:
                    serial[index] = (refusal.kind, refusal.ack)
            yield model, serial
        for acked in itertools.permutations(indexes):
            for claimed in itertools.permutations(indexes):
                model = copy.deepcopy(self.model)
                changes: dict[int, tuple[list[MChange], list[int]]] = {}
                serial = [None] * len(polls)
                for index in acked:
                    acks, _limit, worker = polls[index]
                    try:
                        changes[index] = model.poll_acks(queue, acks, worker, self.now)
                    except Refusal as refusal:
                        serial[index] = (refusal.kind, refusal.ack)
                for index in claimed:
                    if index in changes:  # a refused poll claims nothing
                        _acks, limit, worker = polls[index]
                        delivered = model.claim(queue, limit, worker, self.now)
                        serial[index] = self.poll_answer((delivered, *changes[index]))
                yield model, serial

    # PATCH, DELETE and listing name a queue the engine has checked exists.
    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data(), status=st.sampled_from(["cancelled", "paused", "queued", "done"]))
    def set_status(self, data: st.DataObject, status: str) -> None:
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        task_id = data.draw(st.integers(1, self.model.issued + 2))
        # Section 14, edit and retry: some carry new data, priority or key.
        edit = data.draw(st.none() | st.none() | edits)
        answers = self.same(
            self.store.set_status(queue, task_id, status, self.now, edit),
            lambda: self.model.set_status(queue, task_id, status, self.now, edit),
        )
        if answers is None:
            return
        got, want = answers
        if want is None:
            assert got is None
        else:
            assert got is not None
            assert (record(got.task), got.old) == (expected(want.task), want.old)

    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data())
    def cancel_running(self, data: st.DataObject) -> None:
        """PATCH cancelled on a task in progress (section 9: recorded, the task runs on until
        its worker hears of it), or on any task of the queue when none runs."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        tasks = self.model.of_queue(queue)
        running = pick(data, [t.id for t in tasks if t.state is State.RUNNING])
        anyone = pick(data, [t.id for t in tasks])
        task_id = running or anyone
        if task_id is None:
            return
        answers = self.same(
            self.store.set_status(queue, task_id, "cancelled", self.now),
            lambda: self.model.set_status(queue, task_id, "cancelled", self.now),
        )
        if answers is None:
            return
        got, want = answers
        if want is None:
            assert got is None
        else:
            assert got is not None
            assert (record(got.task), got.old) == (expected(want.task), want.old)

    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data())
    def heartbeats(self, data: st.DataObject) -> None:
        """A poll of heartbeats, with progress or without, for tasks in progress (some with
        their cancel requested: the answer tells the worker to stop them)."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        count = data.draw(st.sampled_from([1, 2, 3]))
        acks = [
            ack
            for _ in range(count)
            if (ack := self.draw_ack(data, queue, ("in progress",))) is not None
        ]
        worker = data.draw(st.sampled_from(WORKERS))
        if not self.model.ownership and any(self.model.owner_conflict(a, worker) for a in acks):
            worker = None
        self.check_poll(data, queue, acks, data.draw(st.sampled_from([0, 1])), worker)

    @precondition(lambda self: bool(self.model.queues))
    @rule(
        data=st.data(),
        action=st.sampled_from(["retry", "cancel", "delete"]),
        step=st.sampled_from([1, 2, 1000]),
        report=st.booleans(),
    )
    def bulk(self, data: st.DataObject, action: str, step: int, report: bool) -> None:
        """A bulk action over a filter (states, key), in steps (each its own transaction),
        its changes reported or not (the SQL stores then change the tasks in SQL)."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        states = data.draw(st.none() | st.lists(st.sampled_from(list(State)), min_size=1))
        key = data.draw(st.none() | st.sampled_from(["a", "b"]))
        where = TaskFilter(states=None if states is None else tuple(states), key=key)

        async def steps() -> tuple[int, int]:
            matched = changed = after = 0
            while True:
                got = await self.store.bulk(queue, action, where, self.now, after, step, report)
                matched, changed, after = matched + got.matched, changed + got.changed, got.last
                if got.matched < step:
                    return matched, changed

        answers = self.same(
            steps(),
            lambda: self.model.bulk(
                queue, action, None if states is None else tuple(states), key, self.now, step
            ),
        )
        if answers is not None:
            got, want = answers
            assert got == want

    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data())
    def fail_for_good(self, data: st.DataObject) -> None:
        """A poll whose acks fail tasks in progress without a retry (section 14: a queue
        with a dead_letter option moves them), then claims."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        self.check_poll(data, queue, [], data.draw(st.sampled_from([2, 1, 4])), None)  # claim
        running = [t for t in self.model.of_queue(queue) if t.state is State.RUNNING]
        error = data.draw(st.none() | texts)
        acks = [
            Ack(task_id=str(t.id), status="failed", error=error, retry=False, attempt=t.attempts)
            for t in running[: data.draw(st.sampled_from([1, 2, 4]))]
        ]
        self.check_poll(data, queue, acks, 0, None)

    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data(), step=st.sampled_from([1, 2, 1000]))
    def redrive(self, data: st.DataObject, step: int) -> None:
        """A redrive (section 14) over a filter (states, key), in steps: to a queue, or each
        task back where it came from."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        to = pick(data, [None, *sorted(self.model.queues)])
        if to == queue:
            to = None  # the engine refuses it before a store sees it
        movable = [State.READY, State.SCHEDULED, State.FAILED]
        states = data.draw(st.none() | st.lists(st.sampled_from(movable), min_size=1, unique=True))
        key = data.draw(st.none() | st.sampled_from(["a", "b"]))
        # The engine narrows the filter to the states a redrive moves.
        where = TaskFilter(states=tuple(sorted(states or movable)), key=key)

        async def steps() -> tuple[int, int]:
            matched = moved = after = 0
            while True:
                got = await self.store.redrive(queue, to, where, self.now, after, step)
                matched, moved, after = matched + got.matched, moved + got.moved, got.last
                if got.matched < step:
                    return matched, moved

        answers = self.same(
            steps(),
            lambda: self.model.redrive(
                queue, to, None if states is None else tuple(states), key, self.now
            ),
        )
        if answers is not None:
            got, want = answers
            assert got == want

    @precondition(lambda self: bool(self.model.queues))
    @rule(
        data=st.data(),
        state=st.sampled_from([State.DONE, State.FAILED, State.CANCELLED]),
        back=st.sampled_from([0, 1, 1000, 100_000]),
        most=st.sampled_from([1, 1000]),
    )
    def prune(self, data: st.DataObject, state: State, back: int, most: int) -> None:
        """Retention's step: the finished tasks that finished ``back`` ms ago or earlier."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        before = self.now - back
        answers = self.same(
            self.store.prune(queue, state, before, self.now, most),
            lambda: self.model.prune(queue, state, before, self.now, most),
        )
        if answers is not None:
            got, want = answers
            assert got == want

    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data(), known=st.booleans())
    def delete_task(self, data: st.DataObject, known: bool) -> None:
        """DELETE a task of the queue, or any id at all (another queue's, gone, unknown)."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        mine = pick(data, [t.id for t in self.model.of_queue(queue)])
        task_id = data.draw(st.integers(1, self.model.issued + 2))
        if known and mine is not None:
            task_id = mine
        assert self.run(self.store.delete_task(queue, task_id, self.now)) == self.model.delete_task(
            queue, task_id, self.now
        )

    @rule(
        ms=st.sampled_from(
            [0, 1, 100, 499, 500, 999, 1000, 1001, 2000, 5000, 60000, idempotency.KEY_TTL_MS]
        ),
        reap=st.booleans(),
        prune=st.booleans(),
    )
    def tick(self, ms: int, reap: bool, prune: bool) -> None:
        """Time passes; then, or not, the reaper expires leases and promotes due tasks, and
        the housekeeping forgets expired idempotency keys."""
        self.now += ms
        if reap:
            got = self.run(self.store.expire(dict(self.model.queues), self.now))
            assert change_records(got) == expected_changes(self.model.expire(self.now))
        if prune:
            before = idempotency.fresh_since(self.now)
            pruned = self.run(self.store.prune_keys(before))
            assert pruned == self.model.prune_keys(before, idempotency.PRUNE_BATCH)

    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data(), limit=st.integers(1, 5))
    def read(self, data: st.DataObject, limit: int) -> None:
        """A page of a listing, by state, and one task by id."""
        queue = data.draw(st.sampled_from(sorted(self.model.queues)))
        states = data.draw(st.none() | st.lists(st.sampled_from(list(State)), unique=True))
        after = data.draw(st.integers(0, self.model.issued + 1))
        where = TaskFilter(states=None if states is None else tuple(states))
        got = self.run(self.store.list_tasks(queue, where, limit, after))
        want = [
            t
            for t in self.model.of_queue(queue)
            if t.id > after and (states is None or t.state in states)
        ][:limit]
        assert [record(t) for t in got] == [expected(t) for t in want]
        task_id = data.draw(st.integers(1, self.model.issued + 1))
        found = self.run(self.store.get_task(queue, task_id))
        task = self.model.tasks.get(task_id)
        if task is None or task.queue != queue:
            assert found is None
        else:
            assert found is not None
            assert record(found) == expected(self.model.shown(task))

    # -- the whole state, after every step ---------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert self.run(self.store.load_queues()) == self.model.queues
        for queue in self.model.queues:
            got = self.run(self.store.list_tasks(queue, EVERY_TASK, 10_000, 0))
            assert [record(t) for t in got] == [expected(t) for t in self.model.of_queue(queue)]
        counts = {
            name: {state: n for state, n in per_state.items() if n}
            for name, per_state in self.run(self.store.counts()).items()
        }
        assert counts == self.model.counts()


# -- one test per store --------------------------------------------------------------------


def _drop_schema(url: str) -> None:
    """Drop the PostgreSQL schema of one example at once: a long run makes thousands."""
    import psycopg

    schema = url.split("schema=")[1].split("&")[0]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# Forty runs of thirty steps, each on a new store (a PostgreSQL schema migrated from
# nothing): minutes on a loaded machine, well past the suite's default bound.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", STORE_KINDS)
def test_store_behaves_as_the_model(kind: str, tmp_path: Path) -> None:
    store_url(kind, tmp_path)  # skips (or fails, in CI) when the store is not available
    counter = itertools.count()

    def make_url() -> str:
        folder = tmp_path / str(next(counter))
        folder.mkdir()
        return store_url(kind, folder)

    def cleanup(url: str) -> None:
        if kind == "sqlite":
            shutil.rmtree(Path(url.removeprefix("sqlite:///")).parent)
        elif kind == "postgres":
            _drop_schema(url)

    # hypothesis takes any factory of machines, though its annotation says a class.
    factory: Any = lambda: StoreVersusModel(make_url, cleanup)  # noqa: E731
    run_state_machine_as_test(factory, settings=SETTINGS)


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_an_ack_after_one_that_finished_the_task_in_the_same_poll(
    kind: str, tmp_path: Path
) -> None:
    """Found by the model on the memory store: in a queue without history, a second ack of a
    task the same poll finished answered 409 (attempt 2 was never delivered) where the SQL
    stores, and the rule for a task that is gone, change nothing."""
    store = open_store(store_url(kind, tmp_path))
    await store.open()
    try:
        options = QueueOptions(persistent=False)
        await store.save_queue("q", options)
        (task,) = await store.enqueue("q", [NewTask(data=msgspec.Raw(b"1"))], T0)
        await store.poll("q", options, [], 1, None, T0)
        acks = [
            Ack(task_id=str(task.id), status="done"),
            Ack(task_id=task.id, status="done", attempt=2),
        ]
        result = await store.poll("q", options, acks, 0, None, T0)
        assert [change.task.state for change in result.changes] == [State.DONE]
        assert await store.get_task("q", task.id) is None
    finally:
        await store.close()
