"""``memory://``: a store that lives in the process. Fast, and gone when the process ends.

Every operation runs to completion on the event loop without awaiting, so each one is
atomic. Heaps keep the claim, the lease expiry and the promotion of due tasks O(log n); their
entries are checked against the task on the way out, so that a task whose state changed
since it was pushed is skipped rather than searched for and removed.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence

import msgspec

from katar.core import idempotency, rules
from katar.core.idempotency import Idempotency
from katar.core.model import (
    DONE,
    FAILED,
    READY,
    RUNNING,
    SCHEDULED,
    UNFINISHED,
    WAITING,
    Ack,
    Edit,
    MoveJob,
    NewTask,
    OutboxRow,
    QueueOptions,
    State,
    Task,
    TaskFilter,
    advanced,
    move_end_state,
    now_ms,
    parse_task_id,
    runs_on,
)
from katar.core.schedule import Schedule, ScheduleSpec
from katar.core.storage import (
    BulkStep,
    Change,
    Enqueued,
    Fired,
    LimitState,
    MoveLease,
    PollResult,
    RedriveStep,
    Store,
    changed,
)
from katar.errors import Conflict, KatarError, QueueNotFound, TaskNotFound
from katar.logs import mask_credentials


class MemoryStore(Store):
    """Queues and tasks in dictionaries and heaps."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = mask_credentials(url)
        self._queues: dict[str, QueueOptions] = {}
        self._tasks: dict[int, Task] = {}
        self._ids: dict[str, dict[int, None]] = {}  # per queue, in id order
        # per queue: (-priority, fair order, id); the fair order is 0 unless the queue is fair
        self._ready: dict[str, list[tuple[int, int, int]]] = {}
        self._scheduled: list[tuple[int, int]] = []  # (run_at, id)
        self._leases: list[tuple[int, int]] = []  # (lease_until, id)
        self._expiries: list[tuple[int, int]] = []  # (expires_at, id) of tasks never delivered
        # (queue, unique_key) -> the id of the last task created with it.
        self._unique: dict[tuple[str, str], int] = {}
        # (queue, debounce_key) -> the id of the last task created with it: the only one
        # that may hold it (rules.holds_debounce), for a key is free when a task takes it.
        self._debounce: dict[tuple[str, str], int] = {}
        # (unique_until, id): finished tasks kept while they hold their key (rules.discard).
        self._kept: list[tuple[int, int]] = []
        self._last_id = 0
        self._running: dict[str, dict[int, None]] = {}  # per queue: the tasks in progress
        # The completion webhooks' outbox, in id order: id -> (the event, held until).
        self._outbox: dict[int, tuple[OutboxRow, int]] = {}
        self._outbox_id = 0
        # Per queue: the tasks in progress per key (key_concurrency looks keys up here), and
        # the tasks per state (GET /v1/queues): kept as tasks change, never counted by a scan.
        self._running_keys: dict[str, dict[str, int]] = {}
        self._states: dict[str, dict[State, int]] = {}
        self._buckets: dict[str, rules.Bucket] = {}  # per queue with a rate limit
        # Per queue with key_rate: its keys' buckets (apart from the per-key counts of
        # key_concurrency: only key_rate queues pay for them).
        self._key_buckets: dict[str, rules.KeyBuckets] = {}
        # Fair queues (rules.fair_seq): each task's place, and per (queue, key) a heap of the
        # places of its tasks, (-place, id): the first whose task still waits or runs is the
        # key's last place (entries of tasks that moved on are dropped as they come up).
        self._seq: dict[int, int] = {}
        self._groups: dict[tuple[str, str | None], list[tuple[int, int]]] = {}
        # (queue, key) -> (digest, ids, created): the idempotency keys, oldest first.
        self._keys: dict[tuple[str, str], tuple[bytes, tuple[int, ...], int]] = {}
        self._schedules: dict[str, Schedule] = {}
        # Dependencies: per child, its parents in the order it named them, each with
        # (done, result); per parent, the children still waiting for it to end, and every
        # child that named it, by id (ids only grow: appended in order, paged by bisection).
        self._edges: dict[int, dict[int, tuple[bool, bytes | None]]] = {}
        #: Per child: its parents of other queues, with their queues (Task.foreign).
        self._foreign: dict[int, tuple[tuple[int, str], ...]] = {}
        self._children: dict[int, dict[int, None]] = {}
        # Per task: how many tasks named it while it was not done (rules.MAX_CHILDREN).
        self._waited: dict[int, int] = {}
        self._named_by: dict[int, list[int]] = {}
        #: The queues whose ids are out of order since a task moved in (see _ordered).
        self._unsorted: set[str] = set()
        #: The children that run whatever their parents' outcome (after_failure "run").
        self._run: set[int] = set()
        #: The queues that a task left (a dead letter, a redrive): their heaps of ready tasks
        #: may hold its entries, which a claim there must pass over (_claim, _head).
        self._left: set[str] = set()
        #: The move jobs (katar.core.moves), by id (ids only grow: by id is by age).
        self._moves: dict[int, MoveJob] = {}
        self._move_id = 0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def load_queues(self) -> dict[str, QueueOptions]:
        return dict(self._queues)

    async def load_queue(self, name: str) -> QueueOptions | None:
        return self._queues.get(name)

    async def save_queue(self, name: str, options: QueueOptions) -> None:
        self._save_queue(name, options)

    def _save_queue(self, name: str, options: QueueOptions) -> None:
        old = self._queues.get(name)
        self._queues[name] = options
        self._ids.setdefault(name, {})
        self._ready.setdefault(name, [])
        self._running.setdefault(name, {})
        self._running_keys.setdefault(name, {})
        self._states.setdefault(name, dict.fromkeys(State, 0))
        self._buckets.pop(name, None)  # new options: a rate limit starts with a full bucket
        self._key_buckets.pop(name, None)  # and so do key_rate's
        if old is not None and old.fair != options.fair:
            if options.fair:
                self._place_waiting(name)
            self._ready[name] = [
                self._entry(t) for i in self._ids[name] if (t := self._tasks[i]).state is READY
            ]
            heapq.heapify(self._ready[name])

    def _place_waiting(self, queue: str) -> None:
        """A queue made fair: its waiting tasks without a place get one, each key's in its
        own order from the front, so that the keys take turns from now on."""
        waiting = sorted(
            (
                t
                for i in self._ids[queue]
                if (t := self._tasks[i]).state in UNFINISHED and t.id not in self._seq
            ),
            key=lambda t: (-t.priority, t.id),
        )
        places: dict[str | None, int] = {}  # as the SQL stores number them: per key, from 0
        for task in waiting:
            place = places.get(task.key, 0)
            places[task.key] = place + 1
            self._place(task, place)

    def _place(self, task: Task, place: int) -> None:
        self._seq[task.id] = place
        heapq.heappush(self._groups.setdefault((task.queue, task.key), []), (-place, task.id))

    def _last_place(self, queue: str, key: str | None) -> int | None:
        """The highest place among the key's tasks that wait or run; None when none does."""
        group = self._groups.get((queue, key))
        while group:
            negative, task_id = group[0]
            task = self._tasks.get(task_id)
            if (
                task is not None
                and task.state in UNFINISHED
                and task.state is not WAITING  # as the SQL stores' index of places
                and self._seq.get(task_id) == -negative
                and task.key == key  # a task debounced to another key counts for that one
            ):
                return -negative
            heapq.heappop(group)
        return None

    def _entry(self, task: Task) -> tuple[int, int, int]:
        seq = self._seq.get(task.id, 0) if self._queues[task.queue].fair else 0
        return (-task.priority, seq, task.id)

    def _front(self, queue: str) -> int:
        """The fair place of the task a claim would take first; 0 when none is ready."""
        return 0 if self._head(queue) is None else self._ready[queue][0][1]

    def _head(self, queue: str) -> Task | None:
        """The task a claim would take first (stale entries dropped on the way)."""
        heap = self._ready[queue]
        while heap:
            task = self._tasks.get(heap[0][2])
            if (
                task is not None
                and task.state is READY
                and -task.priority == heap[0][0]
                and task.queue == queue  # not moved away (a redrive)
            ):
                return task
            heapq.heappop(heap)
        return None

    async def delete_queue(self, name: str, now: int | None = None) -> int:
        if name not in self._queues:
            raise QueueNotFound(queue=name)
        settled: list[Change] = []
        when = now_ms() if now is None else now
        for task_id in list(self._ids[name]):
            self._settle(self._tasks[task_id], None, when, settled)
        settled = [change for change in settled if change.task.queue != name]
        del self._queues[name]
        ids = self._ids.pop(name, {})
        self._ready.pop(name, None)
        self._running.pop(name, None)
        self._running_keys.pop(name, None)
        self._states.pop(name, None)
        self._buckets.pop(name, None)
        self._unsorted.discard(name)
        self._key_buckets.pop(name, None)
        self._left.discard(name)
        for task_id in ids:
            self._forget_edges(self._tasks.pop(task_id))
            self._seq.pop(task_id, None)
        self._keep_events(settled)
        self.report(settled)
        for group in [group for group in self._groups if group[0] == name]:
            del self._groups[group]
        for queue_key in [queue_key for queue_key in self._keys if queue_key[0] == name]:
            del self._keys[queue_key]
        for queue_key in [queue_key for queue_key in self._unique if queue_key[0] == name]:
            del self._unique[queue_key]
        for queue_key in [queue_key for queue_key in self._debounce if queue_key[0] == name]:
            del self._debounce[queue_key]
        for job in [job for job in self._moves.values() if job.queue == name]:
            del self._moves[job.id]
        return len(ids)

    def _ids_of(self, queue: str) -> dict[int, None]:
        try:
            return self._ids[queue]
        except KeyError:
            raise QueueNotFound(queue=queue) from None

    def _put(self, task: Task) -> None:
        old = self._tasks.get(task.id)
        self._tasks[task.id] = task
        state = task.state
        if old is None or old.state is not state:  # counted inline: every claim and ack
            states = self._states[task.queue]
            states[state] += 1
            if old is not None:
                states[old.state] -= 1
            if task.key is not None:
                if state is RUNNING:
                    self._key_running(task, 1)
                elif old is not None and old.state is RUNNING:
                    self._key_running(task, -1)
        if state is RUNNING:
            self._running[task.queue][task.id] = None
        elif old is not None and old.state is RUNNING:
            self._running[task.queue].pop(task.id, None)
        seq = self._seq.get(task.id)
        if (
            seq is not None
            and task.state in UNFINISHED
            and (old is None or old.state not in UNFINISHED)
        ):
            # Waiting again (a retry): its place counts again for its key.
            heapq.heappush(self._groups.setdefault((task.queue, task.key), []), (-seq, task.id))
        if task.state is READY:
            heapq.heappush(self._ready[task.queue], self._entry(task))
        elif task.state is SCHEDULED:
            assert task.run_at is not None
            heapq.heappush(self._scheduled, (task.run_at, task.id))
        elif task.state is RUNNING:
            assert task.lease_until is not None
            heapq.heappush(self._leases, (task.lease_until, task.id))
        expiry = rules.expiry(task)
        if expiry is not None:  # pushed again at each change: stale entries are skipped
            heapq.heappush(self._expiries, (expiry, task.id))
        if task.unique_until is not None and task.state in (DONE, FAILED):
            heapq.heappush(self._kept, (task.unique_until, task.id))

    def _key_running(self, task: Task, step: int) -> None:
        """One more (``step`` 1) or one fewer (-1) task of the task's key in progress."""
        keys = self._running_keys[task.queue]
        assert task.key is not None
        running = keys.get(task.key, 0) + step
        if running:
            keys[task.key] = running
        else:
            del keys[task.key]

    def _remove(self, task: Task) -> None:
        self._detach(task)
        # Only a child (_link gives it its edges and a count of parents) or a task named as
        # a parent has edges: most tasks have neither, and skip the call.
        if task.parents or task.id in self._named_by:
            self._forget_edges(task)

    def _detach(self, task: Task) -> None:
        """The task out of its queue's books (its edges stay: see _remove, _move)."""
        old = self._tasks.pop(task.id)
        self._states[old.queue][old.state] -= 1
        if old.key is not None and old.state is RUNNING:
            self._key_running(old, -1)
        del self._ids[task.queue][task.id]
        self._running[task.queue].pop(task.id, None)
        self._seq.pop(task.id, None)
        if old.debounce_key is not None:  # the key's entry goes with its last task
            debounce = (old.queue, old.debounce_key)
            if self._debounce.get(debounce) == old.id:
                del self._debounce[debounce]

    def _forget_edges(self, task: Task) -> None:
        """A task removed: its own edges go (as a child, and as a parent: the children still
        linked to it were settled when it ended or was deleted)."""
        if task.id in self._named_by:  # named as a parent once (_link): its entries go
            del self._named_by[task.id]
            self._children.pop(task.id, None)
            self._waited.pop(task.id, None)
        edges = self._edges.pop(task.id, None)
        if edges is None:  # not a child (_link gives every child its edges)
            return
        self._foreign.pop(task.id, None)
        self._run.discard(task.id)  # after_failure "run": only a child has it
        for parent_id in edges:
            waiting = self._children.get(parent_id)
            if waiting is not None:
                waiting.pop(task.id, None)
            named = self._named_by.get(parent_id)
            if named is not None:
                at = bisect.bisect_left(named, task.id)
                if at < len(named) and named[at] == task.id:
                    del named[at]

    def _write(
        self, old: Task, new: Task | None, options: QueueOptions, also: list[Change]
    ) -> Change | None:
        """Write a task's new version; the tasks its end settles go in ``also``."""
        if new is None:
            return None
        # To another queue (rules.moved): a move names the other queue's name, never the
        # object the task holds, so an identity test (cheaper than ==) tells moves apart.
        if new.queue is not old.queue:
            return self._move(old, new, also)
        if old.id in self._children:  # before a removal, which forgets its edges
            self._settle(old, new, new.updated_at, also)
        if rules.discard(new, options):
            self._remove(old)
        else:
            self._put(new)
        return changed((new, old.state, None))

    def _move(self, old: Task, new: Task, also: list[Change]) -> Change:
        """Move a task to another queue (a dead letter, a redrive), creating that queue with
        default options when there is none; the tasks its failure settles go in ``also``."""
        if old.id in self._children:
            self._settle(old, new, new.updated_at, also)
        if new.queue not in self._queues:
            self._save_queue(new.queue, QueueOptions())
        # Its heap of ready tasks may hold entries of the task (one per time it became ready),
        # which would look current once it is ready in its new queue.
        self._left.add(old.queue)
        self._detach(old)
        ids = self._ids[new.queue]
        if ids and next(reversed(ids)) > new.id:
            self._unsorted.add(new.queue)  # an older id among newer ones: see _ordered
        ids[new.id] = None
        if self._queues[new.queue].fair:
            self._place(
                new, rules.fair_seq(self._last_place(new.queue, new.key), self._front(new.queue))
            )
        self._put(new)
        return Change(self._view(new), old.state, old.queue)

    def _ordered(self, queue: str) -> dict[int, None]:
        """The queue's ids in id order (what listings and steps page through): a task moved
        in from another queue may have come in after newer ones."""
        ids = self._ids_of(queue)
        if queue in self._unsorted:
            self._unsorted.discard(queue)
            ids = self._ids[queue] = dict.fromkeys(sorted(ids))
        return ids

    def _settle(
        self, parent: Task, new: Task | None, now: int, also: list[Change], how: str | None = None
    ) -> None:
        """The tasks waiting for ``parent``, now ``new`` (None: deleted): released when it
        is done and it was their last, cancelled when it failed, was cancelled or deleted
        (and theirs after them), released too when they run whatever the outcome and it
        was their last (after_failure "run"); ``also`` receives their changes. ``how``:
        how the parent ended, when another change than ``new`` ends it (rules.parent_end:
        a dead-letter move ends it as "failed")."""
        if how is None:
            ends = None if new is None else rules.dependants_see(parent, new)
            how = rules.parent_end(parent.state, ends)
        stack = [(parent.id, how, new)]
        while stack:
            parent_id, ended, version = stack.pop()
            if ended is None or parent_id not in self._children:
                continue
            if ended == "done":
                assert version is not None
                result = None if version.result is None else bytes(version.result)
                for child_id in self._children.pop(parent_id):
                    edges = self._edges[child_id]
                    if child_id in self._run:
                        edges[parent_id] = (True, rules.outcome(ended, version))
                    else:
                        edges[parent_id] = (True, result)
                    self._release(child_id, edges, now, also)
                continue
            waiting = self._children[parent_id]
            for child_id in list(waiting):
                if child_id in self._run:
                    del waiting[child_id]
                    edges = self._edges[child_id]
                    edges[parent_id] = (True, rules.outcome(ended, version))
                    self._release(child_id, edges, now, also)
                    continue
                child = self._tasks[child_id]
                cancelled = rules.orphaned(child, parent_id, ended, now)
                if cancelled is not None:
                    self._put(cancelled)  # cancelled tasks stay in every queue
                    also.append(Change(self._view(cancelled), child.state))
                    stack.append((child_id, "was cancelled", cancelled))

    def _release(
        self,
        child_id: int,
        edges: dict[int, tuple[bool, bytes | None]],
        now: int,
        also: list[Change],
    ) -> None:
        """A child whose parent just ended: ready once it was its last (rules.release)."""
        child = self._tasks[child_id]
        if child.state is WAITING and all(done for done, _r in edges.values()):
            released = rules.release(child, now)
            assert released is not None
            self._put(released)
            also.append(Change(self._view(released), child.state))

    def _view(self, task: Task) -> Task:
        """The task with its dependencies as its record shows them."""
        if not task.parents:
            return task
        edges = self._edges.get(task.id, {})
        return msgspec.structs.replace(
            task,
            waiting_for=tuple(p for p, (done, _r) in edges.items() if not done),
            after=rules.after_json([(p, r) for p, (done, r) in edges.items() if done]),
            foreign=self._foreign.get(task.id, ()),
        )

    def _link(self, task: Task, parents: Sequence[Task], run: bool) -> Task:
        """A new task and its edges to ``parents`` (rules.depend decides its state); ``run``:
        it runs whatever their outcome (after_failure "run")."""
        task = rules.depend(task, [(p.id, p.state) for p in parents], run)
        edges: dict[int, tuple[bool, bytes | None]] = {}
        if run:
            self._run.add(task.id)
        for parent in parents:
            self._named_by.setdefault(parent.id, []).append(task.id)
            if parent.state is not DONE:
                self._waited[parent.id] = self._waited.get(parent.id, 0) + 1
            result = None if parent.result is None else bytes(parent.result)
            edge = edges[parent.id] = rules.first_edge(parent.state, result, parent.error, run)
            if not edge[0]:
                self._children.setdefault(parent.id, {})[task.id] = None
        self._edges[task.id] = edges
        foreign = tuple((p.id, p.queue) for p in parents if p.queue != task.queue)
        if foreign:
            self._foreign[task.id] = foreign
        return task

    async def linked(
        self,
        queue: str,
        task_id: int,
        limit: int,
        after: int,
        queues: Collection[str] | None = None,
        parents: bool = False,
    ) -> list[Task] | None:
        task = self._tasks.get(task_id)
        if task is None or task.queue != queue:
            return None
        # Both by id: a child's parents were named sorted (_link).
        ids = list(self._edges.get(task_id, ())) if parents else self._named_by.get(task_id, [])
        found: list[Task] = []
        for other_id in itertools.islice(ids, bisect.bisect_right(ids, after), None):
            other = self._tasks.get(other_id)  # a parent removed keeps its edge (its result)
            if other is not None and (queues is None or other.queue in queues):
                found.append(self._view(other))
                if len(found) >= limit:
                    break
        return found

    async def queues_of(self, ids: Sequence[int]) -> dict[int, str]:
        return {i: task.queue for i in ids if (task := self._tasks.get(i)) is not None}

    async def enqueue(self, queue: str, tasks: Sequence[NewTask], now: int) -> list[Task]:
        ids = self._ids_of(queue)
        fair = self._queues[queue].fair
        front = self._front(queue) if fair else 0
        waited: dict[int, int] = {}
        for index, spec in enumerate(tasks):
            for parent_id in spec.after:
                parent = self._tasks.get(parent_id)
                if parent is None:
                    raise rules.unknown_parent(f"tasks[{index}]", parent_id)
                if parent.state in UNFINISHED:
                    waited[parent_id] = self._waited.get(parent_id, 0)
        if waited:
            rules.check_children(tasks, waited)
        created: list[Task] = []
        for spec in tasks:
            if spec.debounce_key is not None:
                held = self._debouncing(queue, spec.debounce_key)
                if held is not None:
                    created.append(self._debounce_task(held, spec, now, fair))
                    continue
            if spec.unique_key is not None:
                holder_id = self._unique.get((queue, spec.unique_key))
                holder = None if holder_id is None else self._tasks.get(holder_id)
                if holder is not None and rules.holds_key(holder, now):
                    created.append(rules.duplicate(holder))
                    continue
            self._last_id += 1
            task = rules.new_task(queue, spec, self._last_id, now)
            if spec.after or spec.refs:
                named = sorted({*spec.after, *(created[n].id for n in spec.refs)})
                parents = [self._tasks[parent_id] for parent_id in named]
                task = self._link(task, parents, spec.after_failure == "run")
            ids[task.id] = None
            if fair:
                self._place(task, rules.fair_seq(self._last_place(queue, task.key), front))
            self._put(task)
            if task.unique_key is not None:
                self._unique[(queue, task.unique_key)] = task.id
            if task.debounce_key is not None:
                self._debounce[(queue, task.debounce_key)] = task.id
            created.append(task)
        return [self._view(task) for task in created]

    def _debouncing(self, queue: str, key: str) -> Task | None:
        """The task of the queue that holds the debounce_key (rules.holds_debounce), if any."""
        held_id = self._debounce.get((queue, key))
        held = None if held_id is None else self._tasks.get(held_id)
        return held if held is not None and rules.holds_debounce(held) else None

    def _debounce_task(self, held: Task, spec: NewTask, now: int, fair: bool) -> Task:
        """Replace the task that holds spec's debounce_key (rules.debounce); the answer."""
        new = rules.debounce(held, spec, now)
        seq = self._seq.get(held.id)
        if fair and seq is not None and new.key != held.key:
            # Its place stays (rules.debounce): it counts for its new key from now on.
            heapq.heappush(self._groups.setdefault((new.queue, new.key), []), (-seq, new.id))
        self._put(new)
        return rules.debounced(new)

    async def enqueue_once(
        self, queue: str, tasks: Sequence[NewTask], now: int, once: Idempotency
    ) -> Enqueued:
        self._ids_of(queue)
        found = self._keys.get((queue, once.key))
        if found is not None and found[2] > idempotency.fresh_since(now):
            stored_digest, ids, created = found
            first = idempotency.replay(queue, tasks, stored_digest, ids, created, once)
            return Enqueued([self._current(t) for t in first], False)
        new = await self.enqueue(queue, tasks, now)
        # Popped first so that the dict stays in creation order, which prune_keys relies on.
        self._keys.pop((queue, once.key), None)
        packed = tuple(-t.id if t.duplicate or t.debounced else t.id for t in new)
        self._keys[(queue, once.key)] = (once.digest, packed, now)
        return Enqueued(new, True)

    def _current(self, first: Task) -> Task:
        if not idempotency.read_back(first):
            return first
        found = self._tasks.get(first.id)
        mine = found if found and found.queue == first.queue else None
        return idempotency.current(first, None if mine is None else self._view(mine))

    async def prune_keys(self, before: int) -> int:
        expired = []
        for queue_key, (_digest, _ids, created) in self._keys.items():
            if created > before:
                break
            expired.append(queue_key)
        for queue_key in expired:
            del self._keys[queue_key]
        return len(expired)

    def _find(self, queue: str, raw_id: str | int, index: int | None = None) -> Task | None:
        """The task an ack or request names; None when it existed once and is gone, or is
        another queue's (see rules.apply_ack)."""
        task_id = parse_task_id(raw_id)
        if task_id is None or task_id > self._last_id:
            raise TaskNotFound.named(raw_id, queue, **({} if index is None else {"ack": index}))
        task = self._tasks.get(task_id)
        if task is not None and task.queue != queue:
            return None
        return task

    async def poll(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        self._ids_of(queue)
        # Decide every ack before writing any, so that one bad ack changes nothing.
        decided: dict[int, tuple[Task, Task]] = {}  # id -> (as stored, as decided)
        cancel: list[int] = []
        for index, ack in enumerate(acks):
            found = self._find(queue, ack.task_id, index)
            if found is None:
                continue
            earlier = decided.get(found.id)
            if earlier is None:
                first = current = found
            else:
                first, current = earlier
            if rules.discard(current, options):
                continue  # finished by an earlier ack of this poll: gone, as in the SQL stores
            try:
                new = rules.apply_ack(current, ack, options, now, worker)
            except KatarError as exc:
                exc.details.setdefault("ack", index)
                raise
            if new is not None:
                decided[found.id] = (first, new)
            # Only a heartbeat can be told to stop: a "done" asks no more (the hot path).
            if ack.status == "in progress" and rules.stops(
                current if new is None else new, ack, worker
            ):
                cancel.append(found.id)
        changes = []
        also: list[Change] = []
        for first, new in decided.values():
            change = self._write(first, new, options, also)
            if change is not None and change.task.state != change.old:
                changes.append(change)
        changes += also
        if self.notify is not None:
            self._keep_events(changes)
        now = self.lease_start(now)
        if options.custom_claim and limit > 0:
            limited = self._claim_limited(queue, options, limit, worker, now, changes)
            return limited._replace(cancel=cancel)
        return PollResult(self._claim(queue, options, limit, worker, now), changes, cancel=cancel)

    def _claim(
        self,
        queue: str,
        options: QueueOptions,
        limit: int,
        worker: str | None,
        now: int,
        running: dict[str, int] | None = None,
        rates: rules.KeyRates | None = None,
    ) -> list[Task]:
        """Take up to ``limit`` ready tasks in order; with ``running`` (tasks in progress
        per key, kept current as each task is leased) or ``rates`` (key_rate's buckets),
        pass over the keys at their key_concurrency or out of tokens, keeping their place."""
        heap = self._ready[queue]
        tasks, leases, in_progress = self._tasks, self._leases, self._running[queue]
        delivered: list[Task] = []
        passed: list[tuple[int, int, int]] = []
        by_key = running is not None or rates is not None
        left = queue in self._left  # asked once: a plain queue's claim pays nothing per task
        while heap and len(delivered) < limit:
            entry = heapq.heappop(heap)
            task = tasks.get(entry[2])
            if task is None or task.state is not READY or task.priority != -entry[0]:
                continue
            if left and task.queue != queue:  # moved away (a redrive) while ready here
                continue
            if rules.expired(task, now):
                # Its expiry came before the reaper did: the reaper cancels it (as in the SQL
                # stores). Out of the heap: it cannot become claimable again without a change
                # of state, which pushes it anew.
                continue
            if (
                by_key
                and (key := task.key) is not None
                and (
                    (running is not None and running.get(key, 0) >= (options.key_concurrency or 0))
                    or (rates is not None and not rates.take(key))
                )
            ):
                passed.append(entry)
                continue
            leased = rules.claimed(task, options, worker, now)
            # What _put would write for READY -> RUNNING, written here (the hottest write):
            # the task is in progress until its lease ends; its place (fair), expiry (lifted
            # by a delivery, rules.expiry) and unique key stay as they were; its queue's
            # counts of states move once for the whole claim, below.
            tasks[leased.id] = leased
            in_progress[leased.id] = None
            if leased.key is not None:
                self._key_running(leased, 1)
            assert leased.lease_until is not None
            heapq.heappush(leases, (leased.lease_until, leased.id))
            delivered.append(self._view(leased) if leased.parents else leased)
        for entry in passed:
            heapq.heappush(heap, entry)
        if delivered:
            states = self._states[queue]
            states[READY] -= len(delivered)
            states[RUNNING] += len(delivered)
        return delivered

    def _claim_limited(
        self,
        queue: str,
        options: QueueOptions,
        limit: int,
        worker: str | None,
        now: int,
        changes: list[Change],
    ) -> PollResult:
        in_progress = self._running[queue]
        bucket = self._bucket(queue, options, now)
        plan = rules.ClaimPlan(options, limit, len(in_progress), bucket)
        allowed = plan.allowed
        running: dict[str, int] | None = None
        if options.key_concurrency is not None:
            running = self._running_keys[queue]
        rates = None
        if options.key_rate is not None and allowed:
            buckets = self._key_buckets.get(queue)
            if buckets is None:
                buckets = self._key_buckets[queue] = rules.KeyBuckets()
            buckets.prune(now)
            rates = rules.KeyRates(options.key_rate, now, buckets.full_at)
        delivered = (
            self._claim(queue, options, allowed, worker, now, running, rates) if allowed else []
        )
        plan.settle(len(delivered))
        if rates is not None:
            self._key_buckets[queue].keep(rates.spent())
        retry_at = rules.claim_retry_at(plan, limit, len(delivered), now, rates)
        held = rules.claim_held(plan, len(delivered), rates)
        return PollResult(delivered, changes, retry_at, held=held)

    def _bucket(self, queue: str, options: QueueOptions, now: int) -> rules.Bucket | None:
        if options.rate is None:
            return None
        return rules.Bucket.kept_in(self._buckets, queue, options.rate, now)

    async def limit_state(self, queue: str, options: QueueOptions, now: int) -> LimitState:
        self._ids_of(queue)
        bucket = self._bucket(queue, options, now)
        keys = rate_limited = None
        if options.key_concurrency is not None:
            limit = options.key_concurrency
            keys = sum(1 for n in self._running_keys[queue].values() if n >= limit)
        if options.key_rate is not None:
            buckets = self._key_buckets.get(queue)
            known = {} if buckets is None else buckets.full_at
            rate_limited = rules.KeyRates(options.key_rate, now, known).limited_keys()
        return LimitState(None if bucket is None else bucket.tokens, keys, rate_limited)

    async def get_task(self, queue: str, task_id: int) -> Task | None:
        task = self._tasks.get(task_id)
        return self._view(task) if task is not None and task.queue == queue else None

    async def list_tasks(
        self, queue: str, where: TaskFilter, limit: int, after: int, newest_first: bool = False
    ) -> list[Task]:
        ids: Iterable[int] = self._ordered(queue)
        if newest_first:
            ids = (i for i in reversed(self._ordered(queue)) if not after or i < after)
        found: list[Task] = []
        for task_id in ids:
            if not newest_first and task_id <= after:
                continue
            task = self._tasks[task_id]
            if where.matches(task):
                found.append(self._view(task))
                if len(found) >= limit:
                    break
        return found

    async def count_tasks(self, queue: str, where: TaskFilter) -> int:
        tasks = self._tasks
        return sum(1 for task_id in self._ids_of(queue) if where.matches(tasks[task_id]))

    async def bulk(
        self,
        queue: str,
        action: str,
        where: TaskFilter,
        now: int,
        after: int,
        limit: int,
        report: bool = True,
    ) -> BulkStep:
        selected = self._select(queue, where, after, limit)
        if not selected:
            return BulkStep(0, 0, after, [])
        last = selected[-1].id
        also: list[Change] = []
        if action == "delete":
            deleted = [task for task in selected if task.state in rules.BULK_STATES[action]]
            for task in deleted:
                self._settle(task, None, now, also)
                self._remove(task)
            settled = [change for change in also if change.task.id in self._tasks]
            self._keep_events(settled)
            self.report(settled)
            return BulkStep(len(selected), len(deleted), last, [])
        changes: list[Change] = []
        for task in selected:
            task = self._tasks.get(task.id, task)  # a cascade of this step may have changed it
            new = rules.bulk_change(task, action, now, self._still_waits(task))
            if new is None:
                continue
            try:
                change = self._change(queue, task, new, now, also)
            except Conflict:
                continue  # a retry whose unique_key another task holds now
            if change is not None:
                changes.append(change)
        self._keep_events(changes + also)
        return BulkStep(len(selected), len(changes), last, changes + also)

    def _select(self, queue: str, where: TaskFilter, after: int, limit: int) -> list[Task]:
        """A step's tasks: the first ``limit`` that ``where`` selects above the id ``after``."""
        selected: list[Task] = []
        for task_id in self._ordered(queue):
            task = self._tasks[task_id]
            if task_id > after and where.matches(task):
                selected.append(task)
                if len(selected) >= limit:
                    break
        return selected

    async def redrive(
        self,
        queue: str,
        to: str | None,
        where: TaskFilter,
        now: int,
        after: int,
        limit: int,
        allowed: Collection[str] | None = None,
        job: MoveLease | None = None,
    ) -> RedriveStep:
        held = None
        if job is not None:
            held = self._moves.get(job.job)
            if not runs_on(held, job.runner):
                return RedriveStep(0, 0, after, [], job=held)
        selected = self._select(queue, where, after, limit)
        changes: list[Change] = []
        also: list[Change] = []  # none: a redrive moves tasks that do not end
        created: list[str] = []
        for task in selected:
            task = self._tasks.get(task.id, task)
            target = rules.redrive_target(task, to, allowed)
            if task.queue != queue or task.state not in rules.REDRIVE_STATES or target is None:
                continue
            if target not in self._queues:
                created.append(target)
            changes.append(self._move(task, rules.redriven(task, target, now), also))
        moved = len(changes)
        self._keep_events(changes + also)
        last = selected[-1].id if selected else after
        if held is not None and job is not None:
            held = advanced(held, len(selected), moved, last, limit, now, job.until)
            self._moves[held.id] = held
        return RedriveStep(len(selected), moved, last, changes + also, tuple(created), held)

    async def move_start(self, job: MoveJob, keep: int) -> tuple[MoveJob, bool]:
        for kept in self._moves.values():
            if kept.queue == job.queue and kept.state == "running":
                return kept, False
        self._move_id += 1
        job = msgspec.structs.replace(job, id=self._move_id)
        self._moves[job.id] = job
        ended = [j.id for j in self._moves.values() if j.queue == job.queue]
        for job_id in ended[: max(len(ended) - keep, 0)]:
            if self._moves[job_id].state != "running":
                del self._moves[job_id]
        return job, True

    async def move_list(self, queue: str, limit: int) -> list[MoveJob]:
        return [job for job in reversed(self._moves.values()) if job.queue == queue][:limit]

    async def move_get(self, job_id: int) -> MoveJob | None:
        return self._moves.get(job_id)

    async def move_end(
        self,
        job_id: int,
        state: str,
        now: int,
        error: str | None = None,
        runner: str | None = None,
    ) -> MoveJob | None:
        job = self._moves.get(job_id)
        if job is not None and job.state == "running" and runner in (None, job.runner):
            job = msgspec.structs.replace(
                job, state=move_end_state(state), ended_at=now, error=error
            )
            self._moves[job_id] = job
        return job

    async def move_take(self, runner: str, now: int, until: int) -> MoveJob | None:
        for job in self._moves.values():
            if job.state == "running" and job.lease_until < now:
                job = msgspec.structs.replace(job, runner=runner, lease_until=until)
                self._moves[job.id] = job
                return job
        return None

    async def move_release(self, job_id: int, runner: str) -> None:
        job = self._moves.get(job_id)
        if job is not None and runs_on(job, runner):
            self._moves[job_id] = msgspec.structs.replace(job, lease_until=0)

    async def prune(self, queue: str, state: State, before: int, now: int, limit: int) -> int:
        pruned: list[Task] = []
        for task_id in self._ids_of(queue):
            task = self._tasks[task_id]
            if task.state is state and task.updated_at <= before and not rules.holds_key(task, now):
                pruned.append(task)
                if len(pruned) >= limit:
                    break
        for task in pruned:
            self._remove(task)
        return len(pruned)

    async def heads(self) -> dict[str, int]:
        return {
            queue: head.updated_at
            for queue in self._queues
            if (head := self._head(queue)) is not None
        }

    async def running_by_worker(self) -> dict[tuple[str, str | None], int]:
        counts: dict[tuple[str, str | None], int] = {}
        for queue, running in self._running.items():
            for task_id in running:
                found = (queue, self._tasks[task_id].worker)
                counts[found] = counts.get(found, 0) + 1
        return counts

    async def counts(self) -> dict[str, dict[State, int]]:
        return {
            name: {state: count for state, count in self._states[name].items() if count}
            for name in self._queues
        }

    async def set_status(
        self, queue: str, task_id: int, status: str, now: int, edit: Edit | None = None
    ) -> Change | None:
        task = self._tasks.get(task_id)
        if task is None or task.queue != queue:
            raise TaskNotFound.named(task_id, queue)
        new = rules.change_status(task, status, now, self._still_waits(task), edit)
        if new is not None and new.key != task.key and task.id in self._seq:
            # An edit moved it to another key: a fair queue places it as that key's task,
            # and its entry of the ready heap (by its old place) goes: an operator's rare
            # change pays for it, not the claims, which check the priority only.
            del self._seq[task.id]
            heap = self._ready[queue]
            if any(entry[2] == task.id for entry in heap):
                heap[:] = [entry for entry in heap if entry[2] != task.id]
                heapq.heapify(heap)
        also: list[Change] = []
        change = self._change(queue, task, new, now, also)
        self._keep_events(also if change is None else [change, *also])
        self.report(also)
        return None if change is None else change._replace(task=self._view(change.task))

    def _still_waits(self, task: Task) -> bool:
        """Whether the task names a parent that is not finished (not done, failed or
        cancelled): resumed or retried, it waits for it again."""
        return any(
            not done
            and (parent := self._tasks.get(parent_id)) is not None
            and parent.state in UNFINISHED
            for parent_id, (done, _result) in self._edges.get(task.id, {}).items()
        )

    def _change(
        self, queue: str, task: Task, new: Task | None, now: int, also: list[Change]
    ) -> Change | None:
        """Write an operator's change to a task (a PATCH's, a bulk action's)."""
        if rules.retakes_key(task, new, now):
            assert task.unique_key is not None
            holder_id = self._unique.get((queue, task.unique_key))
            holder = None if holder_id in (None, task.id) else self._tasks.get(holder_id or 0)
            if holder is not None and rules.holds_key(holder, now):
                raise rules.key_taken(task, holder)
            self._unique[(queue, task.unique_key)] = task.id
        fair = self._queues[queue].fair
        if fair and new is not None and new.state in UNFINISHED and task.id not in self._seq:
            # A retry of a task finished before the queue became fair: it needs a place.
            # (An edit's new key is the key it is placed by.)
            self._place(new, rules.fair_seq(self._last_place(queue, new.key), self._front(queue)))
        return self._write(task, new, self._queues[queue], also)

    async def delete_task(self, queue: str, task_id: int, now: int | None = None) -> bool:
        task = self._tasks.get(task_id)
        if task is None or task.queue != queue:
            return False
        also: list[Change] = []
        self._settle(task, None, now_ms() if now is None else now, also)
        self._remove(task)
        self._keep_events(also)
        self.report(also)
        return True

    def _keep_events(self, changes: Sequence[Change]) -> None:
        """Keep the events the changes make (Store.notify), with the changes: an operation
        here is atomic, nothing runs between its writes."""
        notify = self.notify
        if notify is None or not changes:
            return
        outbox = self._outbox
        for queue, task_id, body in notify(changes):
            self._outbox_id += 1
            outbox[self._outbox_id] = (OutboxRow(self._outbox_id, queue, task_id, body), 0)

    async def outbox_trim(self, queues: Collection[str], keep: int) -> dict[str, int]:
        outbox = self._outbox
        dropped: dict[str, int] = {}
        for queue in queues:
            ids = [i for i, (row, _) in outbox.items() if row.queue == queue]
            for i in ids[: max(len(ids) - keep, 0)]:
                del outbox[i]
                dropped[queue] = dropped.get(queue, 0) + 1
        return dropped

    async def outbox_pending(self, queue: str) -> tuple[int, int]:
        rows = [row for row, _until in self._outbox.values() if row.queue == queue]
        return len(rows), sum(1 for row in rows if row.attempts)

    async def outbox_take(self, limit: int, now: int, lease_ms: int) -> list[OutboxRow]:
        taken: list[OutboxRow] = []
        seen: set[int] = set()
        for row, until in list(self._outbox.values()):
            if row.task_id in seen:
                continue
            seen.add(row.task_id)
            if until > now:
                continue
            self._outbox[row.id] = (row, now + lease_ms)
            taken.append(row)
            if len(taken) >= limit:
                break
        return taken

    async def outbox_delete(self, ids: Sequence[int]) -> None:
        for i in ids:
            self._outbox.pop(i, None)

    async def outbox_retry(self, event_id: int, until: int) -> None:
        kept = self._outbox.get(event_id)
        if kept is not None:
            row = kept[0]
            self._outbox[event_id] = (row._replace(attempts=row.attempts + 1), until)

    async def expire(self, queues: Mapping[str, QueueOptions], now: int) -> list[Change]:
        changes: list[Change] = []
        while self._leases and self._leases[0][0] <= now:
            lease_until, task_id = heapq.heappop(self._leases)
            task = self._tasks.get(task_id)
            if task is None or task.state is not RUNNING or task.lease_until != lease_until:
                continue
            options = queues[task.queue]
            change = self._write(task, rules.expire_lease(task, options, now), options, changes)
            if change is not None:
                changes.append(change)
        while self._expiries and self._expiries[0][0] <= now:
            _at, task_id = heapq.heappop(self._expiries)
            task = self._tasks.get(task_id)
            if task is None or task.queue not in queues:
                continue
            change = self._write(task, rules.expire(task, now), queues[task.queue], changes)
            if change is not None:
                changes.append(change)
        while self._kept and self._kept[0][0] <= now:
            _at, task_id = heapq.heappop(self._kept)
            task = self._tasks.get(task_id)
            kept_options = None if task is None else queues.get(task.queue)
            if task and kept_options and rules.sweepable(task, kept_options, now):
                self._remove(task)
        while self._scheduled and self._scheduled[0][0] <= now:
            run_at, task_id = heapq.heappop(self._scheduled)
            task = self._tasks.get(task_id)
            if task is None or task.state is not SCHEDULED or task.run_at != run_at:
                continue
            change = self._write(task, rules.promote(task, now), queues[task.queue], changes)
            if change is not None:
                changes.append(change)
        self._keep_events(changes)
        return changes

    async def next_deadline(self) -> int | None:
        earliest = None
        while self._expiries:
            when, task_id = self._expiries[0]
            task = self._tasks.get(task_id)
            if task is not None and rules.expiry(task) == when:
                earliest = when
                break
            heapq.heappop(self._expiries)
        for heap, state, field in (
            (self._leases, RUNNING, "lease_until"),
            (self._scheduled, SCHEDULED, "run_at"),
        ):
            # Entries whose task has moved on are dropped here, as expire would drop them.
            while heap:
                when, task_id = heap[0]
                task = self._tasks.get(task_id)
                if task is not None and task.state is state and getattr(task, field) == when:
                    if earliest is None or when < earliest:
                        earliest = when
                    break
                heapq.heappop(heap)
        return earliest

    # -- schedules ---------------------------------------------------------------------------

    async def load_schedules(self) -> dict[str, Schedule]:
        return dict(self._schedules)

    async def save_schedule(self, name: str, spec: ScheduleSpec, cursor: int | None) -> Schedule:
        old = self._schedules.get(name)
        if old is None:
            assert cursor is not None, "a new schedule needs a cursor"
            saved = Schedule(name=name, spec=spec, cursor=cursor)
        else:
            moved = old.cursor if cursor is None else max(cursor, old.cursor)
            saved = msgspec.structs.replace(old, spec=spec, cursor=moved)
        self._schedules[name] = saved
        return saved

    async def delete_schedule(self, name: str) -> bool:
        return self._schedules.pop(name, None) is not None

    async def fire_schedule(
        self, name: str, cursor: int, tick: int, task: NewTask | None, now: int
    ) -> Fired:
        schedule = self._schedules.get(name)
        if schedule is None or schedule.cursor != cursor:
            return Fired(False)
        made = None
        if task is not None and not self._overlaps(schedule):
            (created,) = await self.enqueue(schedule.spec.queue, [task], now)
            made = msgspec.structs.replace(created, schedule=name, scheduled_for=tick)
            self._tasks[made.id] = made
        self._schedules[name] = msgspec.structs.replace(
            schedule,
            cursor=tick,
            last_tick=tick,
            last_task=schedule.last_task if made is None else made.id,
        )
        return Fired(True, made)

    def _overlaps(self, schedule: Schedule) -> bool:
        """Whether overlap "skip" holds the tick back: the last task is unfinished."""
        if schedule.spec.overlap != "skip" or schedule.last_task is None:
            return False
        last = self._tasks.get(schedule.last_task)
        return last is not None and last.state in UNFINISHED
