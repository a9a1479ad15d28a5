"""``postgresql://user@host:port/dbname``: a store that several Katar servers can share.

Needs the optional driver: ``pip install 'katar[postgres]'`` (psycopg 3 and its pool).
Every operation is one transaction on a pooled connection. Claims take rows with
``FOR UPDATE SKIP LOCKED``, so servers never hand out the same task and never wait on one
another; an ack locks the row it changes. Task ids come from one sequence, so they only grow
across all servers, and a finished task of a queue without history is known by its id being
at or below the sequence's last value.

URL parameters: ``pool_size`` (connections per server, default 10), ``schema`` (the
PostgreSQL schema that holds Katar's tables, default ``katar``), ``query_timeout`` (seconds a
transaction may take, default 10; 0: none) and ``health_timeout`` (seconds for /healthz's
check, default 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

from katar.core import idempotency, rules
from katar.core.idempotency import Idempotency
from katar.core.model import (
    READY,
    UNFINISHED,
    Ack,
    Edit,
    MoveJob,
    NewTask,
    OutboxRow,
    QueueOptions,
    Rate,
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
from katar.core.schedule import stored as stored_schedule
from katar.core.storage import (
    BulkStep,
    Change,
    Enqueued,
    Event,
    Fired,
    LimitState,
    MoveLease,
    Observer,
    PollResult,
    RedriveStep,
    Store,
)
from katar.errors import (
    ConfigError,
    Conflict,
    QueueNotFound,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
)
from katar.store import _settle, _sql
from katar.store._moves import advance_values, insert_values, job_from_row, move_statements
from katar.store._reap import expiries
from katar.store._rows import COLUMNS, Dialect, move_values, view, where_sql
from katar.store._rows import checked_task_from_row as task_from_row  # apps write here too
from katar.store.postgres.connection import OPTIONS_CHECK, Connections, Listener
from katar.store.postgres.deps import Dependencies, Edge
from katar.store.postgres.group import Done, GroupCommit, Share, claim, plain_dones
from katar.store.postgres.literals import byteas, floats, ints, texts
from katar.store.postgres.queries import Queries, queries
from katar.store.postgres.schema import migrate

if TYPE_CHECKING:
    from psycopg import AsyncConnection

log = logging.getLogger("katar")


def _columns(queue_id: int, tasks: Sequence[Task], now: int) -> tuple[int | str, ...]:
    """An insert's parameters for the columns that every new task has: queue_id,
    created_at and updated_at (one value each), then the arrays of state, priority, data,
    run_at and key (the statements unnest them) as array literals (postgres.literals)."""
    return (
        queue_id,
        now,
        now,
        ints([int(t.state) for t in tasks]),
        ints([t.priority for t in tasks]),
        byteas([t.data for t in tasks]),
        ints([t.run_at for t in tasks]),
        texts([t.key for t in tasks]),
    )


def _ready_payload(queue: str, count: int) -> str:
    """The notification that ``count`` tasks of ``queue`` became ready: a server that hears
    it wakes that many of its long polls on the queue (see _listen)."""
    return f"r:{count}:{queue}"


def _ready_payloads(tasks: Iterable[Task]) -> list[str]:
    """The notifications for the ready ones among ``tasks``: one per queue."""
    ready = Counter(task.queue for task in tasks if task.state is READY)
    return [_ready_payload(queue, count) for queue, count in ready.items()]


def _options_digest(rows: Iterable[tuple[str, bytes]]) -> str:
    """A digest of the queues' (name, stored options) in id order, as the statement
    "options_digest" computes it in SQL: names hold no NUL, the options' JSON no control
    character, so the separators cannot occur in what they separate."""
    joined = b"\x01".join(name.encode() + b"\x00" + options for name, options in rows)
    return hashlib.md5(joined, usedforsecurity=False).hexdigest()


def _created(drafts: Sequence[Task], ids: list[int]) -> list[Task]:
    """The tasks an insert created: the drafts with the ids it returned (RETURNING promises
    no order; unnest keeps the order of its arrays, and a sequence hands out growing ids)."""
    ids.sort()
    return [msgspec.structs.replace(t, id=i) for t, i in zip(drafts, ids, strict=True)]


_EXPIRE_BATCH: Final = 1000
#: The most key_rate buckets one prune's transaction drops (_prune_key_buckets); a full batch
#: is followed by another, in a transaction of its own: a claim that writes one of those
#: buckets waits for one short transaction at most.
_KEY_BUCKETS_PRUNE_BATCH: Final = 1024
#: A server prunes a key_rate queue's buckets every period / _KEY_BUCKETS_PRUNE_PARTS, of the
#: rows full for at least as long (_prune_key_buckets).
_KEY_BUCKETS_PRUNE_PARTS: Final = 8
#: The most prune transactions one housekeeping pass runs for a queue (expire): lease
#: expiries wait for it.
_HOUSEKEEPING_PRUNES: Final = 4
#: The most key_rate buckets a server keeps a copy of, per queue (_KeyCache): a queue with
#: more keys in use than that has its buckets read at each claim instead, so that neither
#: the server's memory nor the one read of them all (under the queue's lock) grows with them.
_KEY_CACHE_MAX: Final = 20_000
_options_decoder: Final = msgspec.json.Decoder(QueueOptions)
_spec_decoder: Final = msgspec.json.Decoder(ScheduleSpec)


@dataclass(slots=True)
class _KeyCache:
    """What a server knows of a key_rate queue's buckets (its rows of key_buckets), so that
    a claim need not read them again. Each claim that writes buckets sets the queue's
    key_epoch, under the queue's lock, to a new random number: while the row still holds the
    number this server's last claim set, no other claim has written a bucket since, and what
    this server wrote is what the rows say (a prune drops only full buckets, the same as no
    row; a change of options, which empties them, sets key_epoch to NULL). ``complete``: it
    holds every bucket not full (read once, key_buckets_kept), so that a key it lacks is
    full; else it holds only what claims read or wrote, and the others must be read. A
    claim that rolls back leaves the row's old number, which no longer matches."""

    epoch: int | None
    buckets: rules.KeyBuckets
    complete: bool


def _new_key_epoch() -> int:
    """A claim's key_epoch: random, so that no two claims set the same (_KeyCache)."""
    return secrets.randbits(63)


class PostgresStore(Store):
    """Queues and tasks in PostgreSQL, shared by any number of Katar servers."""

    shared = True  # other servers' leases and delays: see Store.shared

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "the PostgreSQL store needs its driver: pip install 'katar[postgres]'"
            ) from exc
        self._db = Connections(url)
        self._schema = self._db.schema
        self.url = self._db.url
        #: A transaction on a pooled connection (Connections.transaction).
        self._transaction = self._db.transaction
        self._queue_ids: dict[str, int] = {}
        self._queue_names: dict[int, str] = {}
        self._fair: set[int] = set()  # the ids of the fair queues, as last loaded or saved
        #: Per key_rate queue id, when this server prunes its buckets next (_prune_key_buckets).
        self._key_buckets_prune_at: dict[int, int] = {}
        #: Per key_rate queue id, what this server knows of its buckets (_KeyCache).
        self._key_caches: dict[int, _KeyCache] = {}
        #: Per key_rate queue id with more buckets than _KEY_CACHE_MAX, when to try again.
        self._key_caches_too_many: dict[int, int] = {}
        #: Per key_rate queue id, its prune under way, if any (_prune_key_buckets_soon).
        self._key_buckets_pruning: dict[int, asyncio.Task[None]] = {}
        self._channel = f"katar_{self._schema}"
        self._listener = Listener(self._db, self._channel)
        self._listening: asyncio.Task[None] | None = None  # Listener.listen
        self._checker: asyncio.Task[None] | None = None  # _check_options
        #: The digest of the queue options last loaded (_options_digest).
        self._options_digest: str | None = None
        self._sql = queries(self._schema)
        self._moves = move_statements(
            f"{self._schema}.move_jobs", "%s", " FOR UPDATE", " FOR UPDATE SKIP LOCKED"
        )
        self._deps = Dependencies(self._sql, self._name, self._move)
        self._group = GroupCommit(
            self._sql,
            self._db,
            self._deps,
            self._poll_alone,
            self._claim_limited,
            self._notify_ready,
            self._watching,
            self.lease_start,
            self._keep_events,
        )

    # -- connections -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._db.open()
        try:
            self.schema_change = await migrate(self._db, self._schema, self._channel)
            await self._load_queue_ids()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._db.stop_probe()
        for job in (self._listening, self._checker):
            if job is not None:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        self._listening = self._checker = None
        for job in list(self._key_buckets_pruning.values()):
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await self._group.finish()
        await self._db.close()

    def _watching(self) -> bool:
        """Whether anybody watches the tasks' changes (Store.watch)."""
        return self.watch is None or self.watch()

    # -- what the other servers do -----------------------------------------------------------

    async def _notify(self, conn: AsyncConnection[tuple[Any, ...]], payload: str) -> None:
        # Delivered to every listening server when the transaction commits, and not at all
        # if it rolls back.
        await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))

    async def _notify_ready(
        self, conn: AsyncConnection[tuple[Any, ...]], tasks: Iterable[Task]
    ) -> None:
        for payload in _ready_payloads(tasks):
            await self._notify(conn, payload)

    async def _keep_events(
        self, conn: AsyncConnection[tuple[Any, ...]], changes: Sequence[Change]
    ) -> None:
        """Keep the events the changes make (Store.notify) in the operation's transaction."""
        notify = self.notify
        if notify is None or not changes:
            return
        events: list[Event] = notify(changes)
        if events:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    f"INSERT INTO {self._schema}.outbox (queue, task_id, body) VALUES (%s, %s, %s)",
                    events,
                )

    async def listen(self, observer: Observer) -> None:
        listening = asyncio.Event()
        self._listening = asyncio.create_task(self._listener.listen(observer, listening))
        self._checker = asyncio.create_task(self._check_options(observer))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listening.wait(), 10)

    async def _check_options(self, observer: Observer) -> None:
        """Every OPTIONS_CHECK seconds, compare a digest of the stored queue options with
        that of the options last loaded: a change this server heard nothing of (a
        notification lost with a connection, or missed otherwise) is reloaded within
        seconds, whatever happened to the notifications."""
        while True:
            await asyncio.sleep(OPTIONS_CHECK)
            if self._db.probe is not None:
                continue  # down: the reload that follows the outage does it
            try:
                async with self._transaction(writes=False) as conn:
                    row = await (await conn.execute(self._sql.options_digest)).fetchone()
            except StoreError:
                continue  # an outage: said by the requests that meet it
            if row is not None and row[0] != self._options_digest:
                observer.queue_changed("")

    async def ping(self) -> None:
        # Bounded by health_timeout, to wait for a connection and for the answer: /healthz
        # says 503 soon when PostgreSQL does not answer (stopped, or cut off by the network).
        async with self._transaction(writes=False, limit=self._db.health_timeout) as conn:
            await conn.execute("SELECT 1")

    # -- queues ------------------------------------------------------------------------------

    async def _load_queue_ids(self) -> None:
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(f"SELECT id, name FROM {self._schema}.queues")
            ).fetchall()
        self._queue_ids = {name: qid for qid, name in rows}
        self._queue_names.update({qid: name for qid, name in rows})

    async def _queue_id(self, queue: str) -> int:
        if queue not in self._queue_ids:  # another server may have made it
            await self._load_queue_ids()
        try:
            return self._queue_ids[queue]
        except KeyError:
            raise QueueNotFound(queue=queue) from None

    async def _name(self, conn: AsyncConnection[tuple[Any, ...]], queue_id: int) -> str:
        if queue_id not in self._queue_names:
            cursor = await conn.execute(
                f"SELECT name FROM {self._schema}.queues WHERE id = %s", (queue_id,)
            )
            row = await cursor.fetchone()
            self._queue_names[queue_id] = row[0] if row else f"#{queue_id}"
        return self._queue_names[queue_id]

    async def _tasks(
        self, conn: AsyncConnection[tuple[Any, ...]], rows: Sequence[Sequence[Any]]
    ) -> list[Task]:
        return [task_from_row(row, await self._name(conn, row[1])) for row in rows]

    async def load_queues(self) -> dict[str, QueueOptions]:
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(
                    f"SELECT id, name, options FROM {self._schema}.queues ORDER BY id"
                )
            ).fetchall()
        self._queue_ids = {name: qid for qid, name, _ in rows}
        self._queue_names.update({qid: name for qid, name, _ in rows})
        queues = {name: _options_decoder.decode(options) for _, name, options in rows}
        self._fair = {self._queue_ids[name] for name, options in queues.items() if options.fair}
        self._options_digest = _options_digest((name, bytes(opts)) for _, name, opts in rows)
        return queues

    async def load_queue(self, name: str) -> QueueOptions | None:
        async with self._transaction(writes=False) as conn:
            row = await (
                await conn.execute(
                    f"SELECT id, options FROM {self._schema}.queues WHERE name = %s", (name,)
                )
            ).fetchone()
        if row is None:
            return None
        queue_id, encoded = row
        options = _options_decoder.decode(encoded)
        self._queue_ids[name] = queue_id
        self._queue_names[queue_id] = name
        if options.fair:
            self._fair.add(queue_id)
        else:
            self._fair.discard(queue_id)
        return options

    async def save_queue(self, name: str, options: QueueOptions) -> None:
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"INSERT INTO {self._schema}.queues (name, options) VALUES (%s, %s)"
                # New options: a rate limit starts with a full bucket (NULL: full), key_rate
                # with none kept (key_epoch NULL: no server knows them, _KeyCache).
                " ON CONFLICT (name) DO UPDATE SET options = excluded.options,"
                " bucket_tokens = NULL, bucket_at = NULL, key_epoch = NULL RETURNING id",
                (name, msgspec.json.encode(options)),
            )
            row = await cursor.fetchone()
            assert row is not None
            # key_rate's buckets start full too.
            await conn.execute(
                f"DELETE FROM {self._schema}.key_buckets WHERE queue_id = %s", (row[0],)
            )
            if options.fair and row[0] not in self._fair:
                await conn.execute(self._sql.place_waiting, (row[0],))
            await self._notify(conn, f"q:{name}")
        self._queue_ids[name] = row[0]
        self._queue_names[row[0]] = name
        if options.fair:
            self._fair.add(row[0])
        else:
            self._fair.discard(row[0])

    async def delete_queue(self, name: str, now: int | None = None) -> int:
        queue_id = await self._queue_id(name)
        when = now_ms() if now is None else now
        settled: list[Change] = []
        # No bound: a queue of millions of tasks takes its time to delete.
        async with self._transaction(limit=0) as conn:
            await conn.execute("SET LOCAL statement_timeout = 0")
            # Its move jobs first: a job's step locks its job, then the tasks; in that order
            # here too, so that a step under way and this delete never wait for each other.
            await conn.execute(self._moves.forget, (name,))
            # The tasks of other queues that wait for this one's are cancelled.
            cursor = await conn.execute(
                f"SELECT {COLUMNS} FROM {self._schema}.tasks WHERE queue_id = %s AND children"
                " ORDER BY id FOR UPDATE",
                (queue_id,),
            )
            also: list[Change] = []
            for row in await cursor.fetchall():
                await self._deps.settle(conn, task_from_row(row, name), None, when, also)
            settled = [change for change in also if change.task.queue != name]
            await self._keep_events(conn, settled)
            await self._notify_ready(conn, (change.task for change in settled))
            await conn.execute(
                f"DELETE FROM {self._schema}.deps WHERE child_id IN (SELECT id FROM"
                f" {self._schema}.tasks WHERE queue_id = %s AND parents > 0)",
                (queue_id,),
            )
            cursor = await conn.execute(
                f"DELETE FROM {self._schema}.tasks WHERE queue_id = %s", (queue_id,)
            )
            count: int = cursor.rowcount
            await conn.execute(f"DELETE FROM {self._schema}.queues WHERE id = %s", (queue_id,))
            await conn.execute(
                f"DELETE FROM {self._schema}.key_buckets WHERE queue_id = %s", (queue_id,)
            )
            await conn.execute(
                f"DELETE FROM {self._schema}.idempotency_keys WHERE queue_id = %s", (queue_id,)
            )
            await self._notify(conn, f"q:{name}")
        self._queue_ids.pop(name, None)
        self._key_buckets_prune_at.pop(queue_id, None)
        self._key_caches.pop(queue_id, None)
        self._key_caches_too_many.pop(queue_id, None)
        self.report(settled)
        return count

    # -- tasks -------------------------------------------------------------------------------

    async def enqueue(self, queue: str, tasks: Sequence[NewTask], now: int) -> list[Task]:
        queue_id = await self._queue_id(queue)
        if queue_id not in self._fair and not any(map(rules.special, tasks)):
            return await self._insert_alone(queue_id, queue, tasks, now)
        async with self._transaction() as conn:
            return await self._insert(conn, queue_id, queue, tasks, now)

    async def _insert_alone(
        self, queue_id: int, queue: str, tasks: Sequence[NewTask], now: int
    ) -> list[Task]:
        """:meth:`_insert` of plain tasks as one statement outside a transaction block: the
        rows and their notification, committed as the statement ends. One round trip where
        a transaction takes four (BEGIN, the insert, the notification, COMMIT), which is
        most of what one task enqueued at a time costs."""
        drafts = [rules.new_task(queue, spec, 0, now) for spec in tasks]
        columns = _columns(queue_id, drafts, now)
        ready = _ready_payloads(drafts)  # one queue: one notification at most
        async with self._transaction(alone=True) as conn:
            if ready:
                payload = (*columns, self._channel, *ready)
                cursor = await conn.execute(self._sql.insert_notify, payload)
            else:
                cursor = await conn.execute(self._sql.insert, columns)
            ids = [row[0] for row in await cursor.fetchall()]
        return _created(drafts, ids)

    async def _insert(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        queue: str,
        tasks: Sequence[NewTask],
        now: int,
    ) -> list[Task]:
        if any(map(rules.special, tasks)):
            return await self._insert_special(conn, queue_id, queue, tasks, now)
        drafts = [rules.new_task(queue, spec, 0, now) for spec in tasks]
        columns = _columns(queue_id, drafts, now)
        if queue_id in self._fair:
            places = await self._fair_places(conn, queue_id, drafts)
            cursor = await conn.execute(self._sql.insert_fair, (*columns, places))
        else:
            cursor = await conn.execute(self._sql.insert, columns)
        ids = [row[0] for row in await cursor.fetchall()]
        await self._notify_ready(conn, drafts)
        return _created(drafts, ids)

    async def _insert_special(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        queue: str,
        tasks: Sequence[NewTask],
        now: int,
    ) -> list[Task]:
        """:meth:`_insert` for tasks with per-task options or unique keys: a unique_key held
        by a task of the queue (one of this batch's included) creates nothing, and answers
        that task. Servers enqueueing one key at once take turns: each transaction first
        takes an advisory lock on each of its (queue, key) pairs, in one order (no
        deadlock), held until it commits; then looks, then inserts. The next one to get the
        lock sees the committed row (READ COMMITTED reads anew at each statement)."""
        keys = sorted({spec.unique_key for spec in tasks if spec.unique_key is not None})
        debounce_keys = sorted({t.debounce_key for t in tasks if t.debounce_key is not None})
        holders: dict[str, Task] = {}
        if keys or debounce_keys:
            prefix = f"katar:{self._schema}"
            lock_names = [f"{prefix}:unique:{queue_id}:{key}" for key in keys]
            lock_names += [f"{prefix}:debounce:{queue_id}:{key}" for key in debounce_keys]
            await conn.execute(self._sql.lock_keys, (lock_names,))
        debouncing: dict[str, Task] = {}
        if debounce_keys:
            cursor = await conn.execute(self._sql.debouncing, (queue_id, debounce_keys))
            for row in await cursor.fetchall():
                waiting = task_from_row(row, queue)
                assert waiting.debounce_key is not None
                debouncing[waiting.debounce_key] = waiting
        if keys:
            cursor = await conn.execute(self._sql.holders, (queue_id, keys, now))
            for row in await cursor.fetchall():
                holder = task_from_row(row, queue)
                assert holder.unique_key is not None
                holders[holder.unique_key] = rules.duplicate(holder)
        answered: list[Task | int] = []  # a duplicate, or the index of a task to create
        drafts: list[Task] = []
        taken: dict[str, int] = {}  # a key this batch takes: the index of its draft
        sql = self._sql
        parents = await self._deps.parents(conn, tasks)
        # Ids are taken first: a task's edges, and the errors of those cancelled at once,
        # name the ids of the batch's earlier tasks. As many as there are tasks to create:
        # an id taken and not used would count as a task that existed (see _issued).
        fresh, seen = 0, set()
        seen_debounce: set[str] = set()
        for spec in tasks:
            if spec.debounce_key is not None:
                # One task per key at most: the one that holds it, or the batch's first.
                if spec.debounce_key not in debouncing and spec.debounce_key not in seen_debounce:
                    fresh += 1
                    seen_debounce.add(spec.debounce_key)
                continue
            key = spec.unique_key
            if key is None or (key not in holders and key not in seen):
                fresh += 1
                seen.add(key)
        free: list[int] = []
        if fresh:
            cursor = await conn.execute(sql.next_ids, (fresh,))
            free = sorted(row[0] for row in await cursor.fetchall())
        edges: list[Edge] = []
        made: list[Task] = []  # each answered task, as far as this batch knows it
        replaced: dict[int, Task] = {}  # existing tasks debounced, by id: their new version
        drafted: dict[int, int] = {}  # the batch's tasks with a debounce_key: id -> draft
        for spec in tasks:
            debounce_key = spec.debounce_key
            held = None if debounce_key is None else debouncing.get(debounce_key)
            if held is not None:
                assert debounce_key is not None
                new = rules.debounce(held, spec, now)
                if held.id in drafted:  # the batch's own: inserted as the batch leaves it
                    index = drafted[held.id]
                    # The places that answered the draft keep it as it was then.
                    answered = [drafts[index] if e == index else e for e in answered]
                    drafts[index] = new
                else:
                    replaced[held.id] = new
                debouncing[debounce_key] = new
                answered.append(rules.debounced(new))
                made.append(new)
                continue
            key = spec.unique_key
            if key is not None and key in holders:
                answered.append(holders[key])
                made.append(holders[key])
            elif key is not None and key in taken:
                answered.append(-1 - taken[key])  # a duplicate of this batch's draft
                made.append(drafts[taken[key]])
            else:
                answered.append(len(drafts))
                if len(drafts) == len(free):
                    # A key whose first task of the batch was cancelled at once (a parent had
                    # failed): it holds nothing, and the next task of the key is new too.
                    cursor = await conn.execute(sql.next_ids, (1,))
                    free += [row[0] for row in await cursor.fetchall()]
                draft = rules.new_task(queue, spec, free[len(drafts)], now)
                if spec.after or spec.refs:
                    mine = {parent_id: parents[parent_id] for parent_id in spec.after}
                    for ref in spec.refs:  # new in this request, or a unique_key's holder
                        earlier = made[ref]
                        result = None if earlier.result is None else bytes(earlier.result)
                        mine[earlier.id] = (earlier.state, result, earlier.queue, earlier.error)
                    draft, mine_edges = self._deps.depend(draft, mine, spec.after_failure == "run")
                    edges += [(draft.id, *edge) for edge in mine_edges]
                    draft = view(draft, [edge[:4] for edge in mine_edges])
                if key is not None and rules.holds_key(draft, now):
                    taken[key] = len(drafts)
                if debounce_key is not None:
                    debouncing[debounce_key] = draft
                    drafted[draft.id] = len(drafts)
                drafts.append(draft)
                made.append(draft)
        if replaced:
            await self._debounce(conn, list(replaced.values()), now)
        ids: list[int] = []
        if drafts:
            places: Sequence[int | None] = [None] * len(drafts)
            if queue_id in self._fair:
                places = await self._fair_places(conn, queue_id, drafts)
            cursor = await conn.execute(
                self._sql.insert_full,
                (
                    *_columns(queue_id, drafts, now),
                    list(places),
                    [t.timeout for t in drafts],
                    [t.max_attempts for t in drafts],
                    [t.expires_at for t in drafts],
                    [t.unique_key for t in drafts],
                    [t.unique_until for t in drafts],
                    [t.parents for t in drafts],
                    [t.id for t in drafts],
                    [t.error for t in drafts],  # a task cancelled at once: its parent failed
                    [t.debounce_key for t in drafts],
                    [None if t.attributes is None else bytes(t.attributes) for t in drafts],
                    [None if t.trace is None else bytes(t.trace) for t in drafts],
                ),
            )
            ids = sorted(row[0] for row in await cursor.fetchall())
            await self._deps.link(conn, edges)
            await self._notify_ready(conn, drafts)
        created = [msgspec.structs.replace(t, id=i) for t, i in zip(drafts, ids, strict=True)]
        return [
            entry
            if isinstance(entry, Task)
            else created[entry]
            if entry >= 0
            else rules.duplicate(created[-1 - entry])
            for entry in answered
        ]

    async def _debounce(
        self, conn: AsyncConnection[tuple[Any, ...]], tasks: Sequence[Task], now: int
    ) -> None:
        """Write the tasks an enqueue debounced (rules.debounce): a fair queue's keep their
        places."""
        await conn.execute(
            self._sql.debounce,
            (
                now,
                [t.id for t in tasks],
                [int(t.state) for t in tasks],
                [t.priority for t in tasks],
                [bytes(t.data) for t in tasks],
                [t.run_at for t in tasks],
                [t.key for t in tasks],
                [t.timeout for t in tasks],
                [t.max_attempts for t in tasks],
                [t.expires_at for t in tasks],
            ),
        )
        await self._notify_ready(conn, tasks)

    async def _fair_places(
        self, conn: AsyncConnection[tuple[Any, ...]], queue_id: int, tasks: Sequence[Task]
    ) -> list[int]:
        """Each new task's place in a fair queue (rules.fair_seq): the batch's keys' last
        places in one statement."""
        head = await (await conn.execute(self._sql.fair_front, (queue_id,))).fetchone()
        front = 0 if head is None else int(head[0])
        keys = {task.key for task in tasks}
        named = sorted(k for k in keys if k is not None)
        cursor = await conn.execute(self._sql.fair_lasts, (queue_id, named))
        last: dict[str | None, int | None] = {
            key: None if seq is None else int(seq) for key, seq in await cursor.fetchall()
        }
        if None in keys:
            cursor = await conn.execute(self._sql.fair_last, (queue_id, None))
            found = await cursor.fetchone()
            last[None] = None if found is None or found[0] is None else int(found[0])
        return rules.fair_places([task.key for task in tasks], last, front)

    async def enqueue_once(
        self, queue: str, tasks: Sequence[NewTask], now: int, once: Idempotency
    ) -> Enqueued:
        queue_id = await self._queue_id(queue)
        s = self._schema
        async with self._transaction() as conn:
            # The key's row first: a server enqueueing with the same key at the same moment
            # waits here for this transaction, then finds the key taken (the primary key
            # decides; a row that has expired is taken over).
            cursor = await conn.execute(
                f"INSERT INTO {s}.idempotency_keys AS k (queue_id, key, digest, created)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (queue_id, key) DO UPDATE SET"
                " digest = excluded.digest, ids = NULL, created = excluded.created"
                " WHERE k.created <= %s RETURNING 1",
                (queue_id, once.key, once.digest, now, idempotency.fresh_since(now)),
            )
            if await cursor.fetchone() is None:
                cursor = await conn.execute(
                    f"SELECT digest, ids, created FROM {s}.idempotency_keys"
                    " WHERE queue_id = %s AND key = %s",
                    (queue_id, once.key),
                )
                row = await cursor.fetchone()
                assert row is not None
                assert row[1] is not None
                digest, ids, created = row
                first = idempotency.replay(
                    queue, tasks, digest, idempotency.unpack_ids(ids), created, once
                )
                answer = []
                for task in first:
                    found = None
                    if idempotency.read_back(task):  # as it is now (idempotency.current)
                        cursor = await conn.execute(self._sql.task, (task.id,))
                        row = await cursor.fetchone()
                        if row is not None and row[1] == queue_id:
                            (found,) = await self._deps.views(conn, [task_from_row(row, queue)])
                    answer.append(idempotency.current(task, found))
                return Enqueued(answer, False)
            new = await self._insert(conn, queue_id, queue, tasks, now)
            await conn.execute(
                f"UPDATE {s}.idempotency_keys SET ids = %s WHERE queue_id = %s AND key = %s",
                (idempotency.pack(new), queue_id, once.key),
            )
            return Enqueued(new, True)

    async def prune_keys(self, before: int) -> int:
        s = self._schema
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"DELETE FROM {s}.idempotency_keys WHERE (queue_id, key) IN (SELECT queue_id,"
                f" key FROM {s}.idempotency_keys WHERE created <= %s ORDER BY created LIMIT %s"
                " FOR UPDATE SKIP LOCKED)",
                (before, idempotency.PRUNE_BATCH),
            )
            pruned: int = cursor.rowcount
            return pruned

    async def _move(self, conn: AsyncConnection[tuple[Any, ...]], old: Task, task: Task) -> None:
        """Write the row of a task moved to another queue, creating that queue with default
        options when there is none (and telling the other servers, as save_queue does)."""
        place = None
        known = self._queue_ids.get(task.queue)
        if known is not None and known in self._fair:
            (place,) = await self._fair_places(conn, known, [task])
        full = rules.leaves_behind(old)
        values = move_values(task, task.queue, place, full)  # the queue by its name
        sql = self._sql.move_full if full else self._sql.move
        cursor = await conn.execute(sql, values)
        if known is not None and cursor.rowcount > 0:
            return  # the common case, kept short: a move costs no more than a retry
        for _attempt in range(3):
            if cursor.rowcount > 0:
                if known is None:  # its id, for what this server does next in that queue
                    found = await conn.execute(self._sql.queue_id, (task.queue,))
                    row = await found.fetchone()
                    if row is not None:
                        self._queue_ids[task.queue] = row[0]
                        self._queue_names[row[0]] = task.queue
                return
            cursor = await conn.execute(self._sql.create_queue, (task.queue, _DEFAULT_OPTIONS))
            if await cursor.fetchone() is not None:
                await self._notify(conn, f"q:{task.queue}")
            # Else another server made it a moment ago: this statement's snapshot may not
            # see it yet, the move's next statement does.
            cursor = await conn.execute(sql, values)
        raise StoreError(f"could not move task {task.id} to queue {task.queue!r}")

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
        queue_id = await self._queue_id(queue)
        conditions, params = where_sql(where, _DIALECT)
        select = (
            f"SELECT {COLUMNS} FROM {self._schema}.tasks WHERE queue_id = %s{conditions}"
            " AND id > %s ORDER BY id LIMIT %s FOR UPDATE"
        )
        changes: list[Change] = []
        also: list[Change] = []  # none: a redrive moves tasks that do not end
        created: list[str] = []
        held = None
        async with self._transaction() as conn:
            if job is not None:
                # Locked first: a cancel (move_end) waits for this step's commit, or this
                # step for the cancel's, and then moves nothing.
                found = await (await conn.execute(self._moves.lock, (job.job,))).fetchone()
                held = None if found is None else job_from_row(found)
                if held is None or not runs_on(held, job.runner):
                    return RedriveStep(0, 0, after, [], job=held)
            rows = await (await conn.execute(select, (queue_id, *params, after, limit))).fetchall()
            for row in rows:
                task = task_from_row(row, queue)
                target = rules.redrive_target(task, to, allowed)
                if target is None or task.state not in rules.REDRIVE_STATES:
                    continue
                if target not in self._queue_ids:
                    created.append(target)
                change = await self._deps.write(
                    conn, task, rules.redriven(task, target, now), _KEEP, also
                )
                assert change is not None
                changes.append(change)
            if changes:
                await self._keep_events(conn, changes + also)
                await self._notify_ready(conn, (change.task for change in changes))
            last = rows[-1][0] if rows else after
            if held is not None and job is not None:
                held = advanced(held, len(rows), len(changes), last, limit, now, job.until)
                await conn.execute(self._moves.advance, advance_values(held))
        moved = len(changes)
        return RedriveStep(len(rows), moved, last, changes + also, tuple(created), held)

    async def move_start(self, job: MoveJob, keep: int) -> tuple[MoveJob, bool]:
        async with self._transaction() as conn:
            row = await (await conn.execute(self._moves.insert, insert_values(job))).fetchone()
            if row is None:
                running = await (await conn.execute(self._moves.running, (job.queue,))).fetchone()
                if running is not None:
                    return job_from_row(running), False
                raise Conflict(
                    f"a redrive of queue {job.queue!r} ended as this one started; try again",
                    queue=job.queue,
                )
            await conn.execute(self._moves.prune, (job.queue, job.queue, keep))
            return job_from_row(row), True

    async def move_list(self, queue: str, limit: int) -> list[MoveJob]:
        async with self._transaction(writes=False) as conn:
            rows = await (await conn.execute(self._moves.list, (queue, limit))).fetchall()
        return [job_from_row(row) for row in rows]

    async def move_get(self, job_id: int) -> MoveJob | None:
        async with self._transaction(writes=False) as conn:
            row = await (await conn.execute(self._moves.get, (job_id,))).fetchone()
        return None if row is None else job_from_row(row)

    async def move_end(
        self,
        job_id: int,
        state: str,
        now: int,
        error: str | None = None,
        runner: str | None = None,
    ) -> MoveJob | None:
        async with self._transaction() as conn:
            await conn.execute(self._moves.end, (move_end_state(state), now, error, job_id, runner))
            row = await (await conn.execute(self._moves.get, (job_id,))).fetchone()
        return None if row is None else job_from_row(row)

    async def move_take(self, runner: str, now: int, until: int) -> MoveJob | None:
        async with self._transaction() as conn:
            cursor = await conn.execute(self._moves.take, (runner, until, now, now))
            row = await cursor.fetchone()
        return None if row is None else job_from_row(row)

    async def move_release(self, job_id: int, runner: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(self._moves.release, (job_id, runner))

    async def _acked_row(
        self, conn: AsyncConnection[tuple[Any, ...]], task_id: int
    ) -> tuple[Any, ...] | None:
        """The row of a task an ack names, locked when it is in progress. An ack changes
        no other (rules.apply_ack): such a row is read without a lock, which would make
        the claim of a concurrent poll (SKIP LOCKED) pass over a queued task that the ack
        leaves as it is, and deliver one that comes after it."""
        row = await (await conn.execute(self._sql.lock_running, (task_id,))).fetchone()
        if row is None:
            row = await (await conn.execute(self._sql.task, (task_id,))).fetchone()
            if row is not None and row[2] == _sql.RUNNING:  # delivered since: lock it now
                row = await (await conn.execute(self._sql.lock, (task_id,))).fetchone()
        return row

    async def _issued(self, conn: AsyncConnection[tuple[Any, ...]], task_id: int) -> bool:
        row = await (await conn.execute(self._sql.issued)).fetchone()
        return row is not None and bool(row[1]) and task_id <= row[0]

    async def poll(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        queue_id = await self._queue_id(queue)
        grouped = not options.custom_claim or options.key_rate is not None
        if grouped and (ids := plain_dones(acks)) is not None:
            # The hot path: with the polls that arrive with it (katar.store.postgres.group);
            # a key_rate queue's too, whose claim serves the group's polls at once.
            return await self._group.poll(queue, queue_id, options, acks, ids, limit, worker, now)
        return await self._poll_alone(queue, options, acks, limit, worker, now)

    async def _poll_alone(
        self,
        queue: str,
        options: QueueOptions,
        acks: Sequence[Ack],
        limit: int,
        worker: str | None,
        now: int,
    ) -> PollResult:
        """A poll in a transaction of its own, every ack by the rules but its plain "done"s."""
        queue_id = await self._queue_id(queue)
        changes: list[Change] = []
        cancel: list[int] = []
        async with self._transaction() as conn:
            ids = [parse_task_id(ack.task_id) for ack in acks]
            finished: dict[int, Change | None] = {}
            # No task named twice: the order of the acks cannot matter, and the plain "done"s
            # of current deliveries go in one statement (the rest by the rules).
            if len(set(ids)) == len(ids):
                pairs = zip(ids, acks, strict=True)
                done = Done([(i, a, worker) for i, a in pairs if a.status == "done" and i])
                if done.acks:
                    watching = self.watch is None or self.watch()
                    sql, args = done.statement(self._sql, queue_id, options, now, watching)
                    rows = await (await conn.execute(sql, args)).fetchall()
                    finished = done.changes(rows, queue, options, now, watching)
                    changes += await self._group.finish_edges(
                        conn, done, rows, options, now, watching
                    )
            rest = [i for i in ids if i not in finished]
            if len(rest) > 1:
                # Lock the acked tasks in id order first: two polls acking the same tasks in
                # different orders would otherwise each hold one and wait for the other (a
                # deadlock, which PostgreSQL breaks by failing one of them).
                await conn.execute(self._sql.lock_many, (sorted({i for i in rest if i}),))
            for index, ack in enumerate(acks):
                task_id = ids[index]
                if task_id in finished:
                    change = finished[task_id]
                    if change is not None:
                        changes.append(change)
                    continue
                row = None
                if task_id is not None:
                    row = await self._acked_row(conn, task_id)
                if row is None:
                    if task_id is not None and await self._issued(conn, task_id):
                        continue  # finished and gone: a queue without history
                    raise TaskNotFound.named(ack.task_id, queue, ack=index)
                if row[1] != queue_id:
                    continue  # another queue's: ignored, as a gone one (rules.apply_ack)
                task = task_from_row(row, queue)
                plan = _settle.ack(task, ack, index, options, now, worker, changes, cancel)
                await self._deps.run(conn, plan)
            retry_at = held = None
            delivered: list[Task] = []
            now = self.lease_start(now)  # after the waits for the connection and the locks
            if limit > 0 and options.custom_claim:
                asks = [(limit, worker)]
                (share,) = await self._claim_limited(conn, queue, queue_id, options, asks, now)
                delivered, retry_at, held = share
            elif limit > 0:
                workers = [worker] * limit
                taken = await claim(conn, self._sql, queue, queue_id, options, workers, now)
                delivered = [task for _slot, task in taken]
            delivered = await self._deps.views(conn, delivered)
            if self.notify is not None:
                await self._keep_events(conn, changes)
            await self._notify_ready(conn, (change.task for change in changes))
        return PollResult(delivered, changes, retry_at, cancel, held)

    async def _claim_limited(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue: str,
        queue_id: int,
        options: QueueOptions,
        asks: Sequence[tuple[int, str | None]],
        now: int,
    ) -> list[Share]:
        """The claim of a limited or fair queue (QueueOptions.custom_claim) for polls that
        share a transaction, each (limit, worker) in ``asks``: one count and one selection
        for them all, served in their order, so that the limits hold inside a group as
        between groups. Per poll, its tasks and what it learns (PollResult.retry_at, held)."""
        sql = self._sql
        stored = None
        if options.limited:  # a fair queue alone has nothing to count
            stored = await (await conn.execute(sql.lock_queue, (queue_id,))).fetchone()
            now = self.lease_start(now)  # the lock may have been waited for
        bucket = None
        if options.rate is not None:
            tokens, at = (None, None) if stored is None else stored[:2]
            bucket = rules.Bucket.stored(options.rate, now, tokens, at)
        running = 0
        if options.concurrency is not None:
            row = await (await conn.execute(sql.running, (queue_id,))).fetchone()
            running = row[0] if row else 0
        asked = sum(limit for limit, _worker in asks)
        plan = rules.ClaimPlan(options, asked, running, bucket)
        allowed = plan.allowed
        # Each slot's worker: the polls' in their order (the claim's n-th task is the n-th).
        workers = [worker for limit, worker in asks for _ in range(limit)][:allowed]
        per_key: dict[str, int] = {}  # in progress, for the keys met so far
        taken: dict[str, int] = {}
        lease = (now, options.timeout, now, now)  # rules.lease_ms: the task's own, else this
        delivered: list[Task] = []
        by_key = options.key_concurrency is not None or options.key_rate is not None
        if allowed > 0 and not by_key and queue_id not in self._fair:
            # Nothing to pick by key: the plain claim, cut to what the limits allow.
            claimed = await claim(conn, sql, queue, queue_id, options, workers, now)
            delivered = [task for _slot, task in claimed]
            allowed = 0
        # key_rate: the buckets of the keys met (the queue's lock, held, keeps every other
        # server's claim of the queue out until this one commits), from what this server
        # knows of them if it wrote them last, else read with the candidates (_KeyCache).
        rates = cache = None
        probe = False
        if options.key_rate is not None:
            cache, probe = await self._key_cache(conn, queue_id, options.key_rate, stored, now)
            rates = rules.KeyRates(options.key_rate, now, cache.buckets.full_at)
            self._prune_key_buckets_soon(queue_id, options.key_rate, now)
        extra = rules.CLAIM_EXTRA if by_key else 0
        while len(delivered) < allowed:
            want = allowed - len(delivered)
            blocked = rules.blocked_keys(per_key, taken, options.key_concurrency)
            if rates is not None:
                blocked = sorted(rates.blocked().union(blocked))
            # More than wanted: some may belong to keys at their limit, or that fill up on
            # the way (the next look passes over those keys, and looks further).
            chunk = want + extra
            rows = await self._candidates(conn, queue_id, blocked, chunk, now, probe)
            candidates = [(task_id, key) for task_id, key, _full_at in rows]
            if probe and cache is not None:
                cache.buckets.full_at.update(
                    (k, at) for _id, k, at in rows if k is not None and at is not None
                )
            # key_concurrency: the tasks in progress of the keys met (key_rate alone has
            # its buckets with the candidates).
            counts = options.key_concurrency is not None
            met = rules.unseen_keys(candidates, per_key) if counts else []
            if met:
                per_key.update(dict.fromkeys(met, 0))
                cursor = await conn.execute(sql.running_of_keys, (queue_id, met))
                per_key.update(await cursor.fetchall())
            ids = rules.pick_by_key(
                candidates, want, per_key, options.key_concurrency, taken, rates
            )
            last = len(delivered) + len(ids) >= allowed or len(rows) < chunk
            slots = workers[len(delivered) : len(delivered) + len(ids)]
            # The arrays as literals (katar.store.postgres.literals): the driver's adaptation
            # of the lists, element by element, cost more than the rest of the claim's Python.
            pairs = (ints(ids), texts(slots))
            if last and rates is not None and cache is not None and rates.taken:
                # The last take writes the buckets spent, and the claim's key_epoch, in the
                # same statement; this server knows them then (_KeyCache).
                kept = rates.spent()
                epoch = _new_key_epoch()
                save = (queue_id, texts(list(kept)), floats(list(kept.values())))
                args = (*pairs, *lease, *save, epoch, queue_id)
                cursor = await conn.execute(sql.take_rated, args)
                cache.buckets.keep(kept)
                cache.epoch = epoch
            elif ids:
                cursor = await conn.execute(sql.take, (*pairs, *lease))
            if ids:
                took = {row[0]: row for row in await cursor.fetchall()}
                delivered += [task_from_row(took[i], queue) for i in ids]  # the claim order
            if last:
                break  # no more ready tasks that a free key could take
            extra *= 2
        spent = plan.settle(len(delivered))
        if spent is not None:
            await conn.execute(sql.save_bucket, (spent.tokens, spent.at, queue_id))
        return _shares(plan, asks, delivered, now, rates)

    async def _key_cache(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        rate: Rate,
        stored: Sequence[Any] | None,
        now: int,
    ) -> tuple[_KeyCache, bool]:
        """What this server knows of a key_rate queue's buckets, at a claim that holds the
        queue's lock (``stored``: the row lock_queue read), and whether the claim must read
        the buckets of the keys it meets (the candidates' probe) all the same."""
        epoch = None if stored is None else stored[2]
        cache = self._key_caches.get(queue_id)
        many = now < self._key_caches_too_many.get(queue_id, 0)
        if cache is None or epoch is None or cache.epoch != epoch or many:
            # Another server's claim, or a change of options, wrote them since (or there are
            # too many to keep): this claim reads those it meets, and knows no more.
            cache = self._key_caches[queue_id] = _KeyCache(epoch, rules.KeyBuckets(), False)
            return cache, True
        if not cache.complete:
            # The second claim in a row of this server's: every bucket kept, read once, then
            # known while no other server claims from the queue.
            args = (queue_id, now, _KEY_CACHE_MAX + 1)
            rows = await (await conn.execute(self._sql.key_buckets_kept, args)).fetchall()
            cache.buckets = rules.KeyBuckets()
            cache.buckets.keep(dict(rows))
            cache.complete = True
        else:
            cache.buckets.prune(now)
        if len(cache.buckets) > _KEY_CACHE_MAX:
            # Read at each claim for a period, then see again.
            self._key_caches_too_many[queue_id] = now + rate.period
            cache = self._key_caches[queue_id] = _KeyCache(None, rules.KeyBuckets(), False)
            return cache, True
        return cache, False

    def _prune_key_buckets_soon(self, queue_id: int, rate: Rate, now: int) -> None:
        """Prune the queue's key_rate buckets if due (_prune_key_buckets), in a task of its
        own: not in the claim, whose lock of the queue's row every server's claims of the
        queue wait for, nor in its transaction."""
        if not self._key_buckets_due(queue_id, now):
            return
        job = asyncio.create_task(self._prune_key_buckets(queue_id, rate, now))
        self._key_buckets_pruning[queue_id] = job
        job.add_done_callback(lambda _job: self._key_buckets_pruning.pop(queue_id, None))

    def _key_buckets_due(self, queue_id: int, now: int) -> bool:
        """Whether this server prunes the queue's key_rate buckets now: none under way, and
        the last one an eighth of a period ago (_prune_key_buckets)."""
        if queue_id in self._key_buckets_pruning:
            return False
        return now >= self._key_buckets_prune_at.get(queue_id, 0)

    async def _prune_key_buckets(
        self, queue_id: int, rate: Rate, now: int, batches: int | None = None
    ) -> None:
        """Drop the key_rate buckets of the queue that have been full for an eighth of a
        period (a full bucket is no row), a bounded batch per transaction, every eighth of a
        period: when a claim finds it due (_prune_key_buckets_soon), and at housekeeping
        (expire). A key taken from at t is full by t + period: its row goes by
        t + 1.25 x period while the queue is claimed from, so that what stays is bounded by
        the keys taken from within the last period and a quarter. A key in steady use keeps
        its row, which its claims update in place (take_rated), instead of deleting and
        inserting it again at every claim. ``batches``: the most transactions it runs (the
        housekeeping's bound, so that expiries never wait long behind it; the next prune
        goes on)."""
        every = math.ceil(rate.period / _KEY_BUCKETS_PRUNE_PARTS)
        self._key_buckets_prune_at[queue_id] = now + every
        full_since = now - every
        args = (queue_id, full_since, queue_id, full_since, _KEY_BUCKETS_PRUNE_BATCH)
        try:
            while batches is None or batches > 0:
                async with self._transaction() as conn:
                    cursor = await conn.execute(self._sql.prune_key_buckets, args)
                if cursor.rowcount < _KEY_BUCKETS_PRUNE_BATCH:
                    return
                if batches is not None:
                    batches -= 1
        except StoreUnavailable:
            pass  # the outage is told by what waits for the store; the next prune tries again
        except Exception:  # housekeeping: the next prune tries again
            log.exception("pruning key_rate buckets failed")

    async def _candidates(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        blocked: list[str],
        chunk: int,
        now: int,
        rated: bool,
    ) -> list[tuple[int, str | None, float | None]]:
        """Ready tasks (id, key, and with ``rated`` the full_at of the key's bucket, if
        kept) in claim order, up to ``chunk``, passing over the ``blocked`` keys."""
        sql = self._sql
        fair = queue_id in self._fair
        if fair:
            statement = sql.candidates_fair_rated if rated else sql.candidates_fair
        else:
            statement = sql.candidates_rated if rated else sql.candidates
        cursor = await conn.execute(statement, (queue_id, now, texts(blocked), chunk))
        rows: list[tuple[int, str | None, float | None]] = [
            (row[0], row[1], row[2] if rated else None) for row in await cursor.fetchall()
        ]
        if fair and len(rows) < chunk:
            statement = sql.candidates_unplaced_rated if rated else sql.candidates_unplaced
            args = (queue_id, now, texts(blocked), chunk - len(rows))
            cursor = await conn.execute(statement, args)
            rows += [(row[0], row[1], row[2] if rated else None) for row in await cursor.fetchall()]
        return rows

    async def limit_state(self, queue: str, options: QueueOptions, now: int) -> LimitState:
        queue_id = await self._queue_id(queue)
        async with self._transaction(writes=False) as conn:
            keys = None
            if options.key_concurrency is not None:
                limit = options.key_concurrency
                cursor = await conn.execute(self._sql.keys_at_limit, (queue_id, limit))
                row = await cursor.fetchone()
                keys = row[0] if row else 0
            tokens = None
            if options.rate is not None:
                row = await (
                    await conn.execute(
                        f"SELECT bucket_tokens, bucket_at FROM {self._schema}.queues WHERE id = %s",
                        (queue_id,),
                    )
                ).fetchone()
                stored_tokens, at = (None, None) if row is None else row
                tokens = rules.Bucket.stored(options.rate, now, stored_tokens, at).tokens
            rate_limited = None
            if options.key_rate is not None:
                empty = rules.key_empty_after(options.key_rate, now)
                cursor = await conn.execute(self._sql.key_buckets_empty, (queue_id, empty))
                row = await cursor.fetchone()
                rate_limited = row[0] if row else 0
        return LimitState(tokens, keys, rate_limited)

    async def linked(
        self,
        queue: str,
        task_id: int,
        limit: int,
        after: int,
        queues: Collection[str] | None = None,
        parents: bool = False,
    ) -> list[Task] | None:
        async with self._transaction(writes=False) as conn:
            return await self._deps.linked(conn, queue, task_id, limit, after, queues, parents)

    async def get_task(self, queue: str, task_id: int) -> Task | None:
        async with self._transaction(writes=False) as conn:
            row = await (await conn.execute(self._sql.task, (task_id,))).fetchone()
            if row is None or await self._name(conn, row[1]) != queue:
                return None
            (task,) = await self._deps.views(conn, [task_from_row(row, queue)])
            return task

    async def queues_of(self, ids: Sequence[int]) -> dict[int, str]:
        async with self._transaction(writes=False) as conn:
            cursor = await conn.execute(
                f"SELECT id, queue_id FROM {self._schema}.tasks WHERE id = ANY(%s)", (list(ids),)
            )
            return {
                task_id: await self._name(conn, queue_id)
                for task_id, queue_id in await cursor.fetchall()
            }

    async def list_tasks(
        self, queue: str, where: TaskFilter, limit: int, after: int, newest_first: bool = False
    ) -> list[Task]:
        queue_id = await self._queue_id(queue)
        conditions, params = where_sql(where, _DIALECT)
        if newest_first:
            page, order = (" AND id < %s" if after else ""), " ORDER BY id DESC"
        else:
            page, order = " AND id > %s", " ORDER BY id"
        sql = (
            f"SELECT {COLUMNS} FROM {self._schema}.tasks WHERE queue_id = %s{conditions}{page}"
            f"{order} LIMIT %s"
        )
        args = (queue_id, *params, *((after,) if page else ()), limit)
        async with self._transaction(writes=False) as conn:
            rows = await (await conn.execute(sql, args)).fetchall()
            tasks = [task_from_row(row, queue) for row in rows]
            return await self._deps.views(conn, tasks)

    async def count_tasks(self, queue: str, where: TaskFilter) -> int:
        queue_id = await self._queue_id(queue)
        conditions, params = where_sql(where, _DIALECT)
        sql = f"SELECT count(*) FROM {self._schema}.tasks WHERE queue_id = %s{conditions}"
        async with self._transaction(writes=False) as conn:
            row = await (await conn.execute(sql, (queue_id, *params))).fetchone()
        assert row is not None
        count: int = row[0]
        return count

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
        queue_id = await self._queue_id(queue)
        conditions, params = where_sql(where, _DIALECT)
        s = self._schema
        select = (
            f"FROM {s}.tasks WHERE queue_id = %s{conditions} AND id > %s"
            " ORDER BY id LIMIT %s FOR UPDATE"
        )
        args = (queue_id, *params, after, limit)
        in_sql = rules.bulk_in_sql(action, report, queue_id in self._fair)
        async with self._transaction() as conn:
            if not in_sql:
                rows = await (await conn.execute(f"SELECT {COLUMNS} {select}", args)).fetchall()
                return await self._bulk_by_rules(conn, queue_id, queue, action, rows, now, after)
            settled: list[Change] = []
            found = await conn.execute(
                # A retry of a task with a unique_key or a debounce_key goes by the rules.
                f"SELECT id, state, coalesce(unique_key, debounce_key), parents > 0 OR children"
                f" {select}",
                args,
            )
            rows = await found.fetchall()
            if not rows:
                return BulkStep(0, 0, after, [])
            ids, apart = rules.bulk_split(
                action, ((r[0], _sql.STATES[r[1]], r[2], r[3]) for r in rows)
            )
            times = () if action == "delete" else (now,)
            await conn.execute(_bulk_statement(self._sql, action), (*times, ids))
            step = BulkStep(len(rows), len(ids), rows[-1][0], [])
            if apart:
                full = await conn.execute(
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY(%s) ORDER BY id",
                    (sorted(apart),),
                )
                if action == "delete":
                    deleted = [task_from_row(row, queue) for row in await full.fetchall()]
                    also: list[Change] = []
                    await self._delete(conn, deleted, now, also)
                    gone = {task.id for task in deleted} | set(ids)
                    settled = [change for change in also if change.task.id not in gone]
                    await self._keep_events(conn, settled)
                    await self._notify_ready(conn, (change.task for change in settled))
                    step = step._replace(changed=step.changed + len(deleted))
                else:
                    more = await self._bulk_by_rules(
                        conn, queue_id, queue, action, await full.fetchall(), now, after
                    )
                    step = step._replace(changed=step.changed + more.changed, changes=more.changes)
            if action == "retry" and ids:
                await self._notify(conn, _ready_payload(queue, len(ids)))
        self.report(settled)
        return step

    async def _delete(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        tasks: Sequence[Task],
        now: int,
        also: list[Change],
    ) -> None:
        """Remove tasks: those that waited for them are cancelled (``also``)."""
        for task in tasks:
            await self._deps.settle(conn, task, None, now, also)
        ids = [task.id for task in tasks]
        await conn.execute(f"DELETE FROM {self._schema}.tasks WHERE id = ANY(%s)", (ids,))
        await self._deps.forget(conn, [task.id for task in tasks if task.parents])

    async def _bulk_by_rules(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        queue: str,
        action: str,
        rows: list[tuple[Any, ...]],
        now: int,
        after: int,
    ) -> BulkStep:
        """A step of a retry or a cancel, task by task, as rules.bulk_change says."""
        if not rows:
            return BulkStep(0, 0, after, [])
        changes: list[Change] = []
        also: list[Change] = []  # the tasks that waited for those cancelled
        for row in rows:
            task = task_from_row(row, queue)
            if also:  # a cascade of this step may have changed it
                found = await (await conn.execute(self._sql.task, (task.id,))).fetchone()
                assert found is not None
                task = task_from_row(found, queue)
            waits = await self._deps.still_waits(conn, task)
            new = rules.bulk_change(task, action, now, waits)
            if new is None:
                continue
            try:
                async with conn.transaction():  # a savepoint: a refused retry undoes itself
                    change = await self._change(conn, queue_id, task, new, now, also)
            except Conflict:
                continue  # a retry whose unique_key another task holds now
            if change is not None:
                changes.append(change)
        await self._keep_events(conn, changes + also)
        await self._notify_ready(conn, (change.task for change in [*changes, *also]))
        return BulkStep(len(rows), len(changes), rows[-1][0], changes + also)

    async def prune(self, queue: str, state: State, before: int, now: int, limit: int) -> int:
        queue_id = await self._queue_id(queue)
        async with self._transaction() as conn:
            cursor = await conn.execute(self._sql.prune, (queue_id, int(state), before, now, limit))
            rows = await cursor.fetchall()
            await self._deps.forget(conn, [task_id for task_id, parents in rows if parents])
            return len(rows)

    async def heads(self) -> dict[str, int]:
        s = self._schema
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(
                    f"SELECT q.name, (SELECT updated_at FROM {s}.tasks WHERE queue_id = q.id"
                    f" AND state = {_sql.READY} ORDER BY priority DESC, id LIMIT 1)"
                    f" FROM {s}.queues AS q"
                )
            ).fetchall()
        return {name: at for name, at in rows if at is not None}

    async def running_by_worker(self) -> dict[tuple[str, str | None], int]:
        s = self._schema
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(
                    f"SELECT q.name, t.worker, count(*) FROM {s}.tasks AS t JOIN {s}.queues AS q"
                    f" ON q.id = t.queue_id WHERE t.state = {_sql.RUNNING}"
                    " GROUP BY q.name, t.worker"
                )
            ).fetchall()
        return {(name, worker): count for name, worker, count in rows}

    async def counts(self) -> dict[str, dict[State, int]]:
        async with self._transaction(writes=False) as conn:
            names = dict(
                await (await conn.execute(f"SELECT id, name FROM {self._schema}.queues")).fetchall()
            )
            rows = await (
                await conn.execute(
                    f"SELECT queue_id, state, count(*) FROM {self._schema}.tasks"
                    " GROUP BY queue_id, state"
                )
            ).fetchall()
        result: dict[str, dict[State, int]] = {name: {} for name in names.values()}
        for queue_id, state, count in rows:
            if queue_id in names:
                result[names[queue_id]][_sql.STATES[state]] = count
        return result

    async def set_status(
        self, queue: str, task_id: int, status: str, now: int, edit: Edit | None = None
    ) -> Change | None:
        queue_id = await self._queue_id(queue)
        async with self._transaction() as conn:
            row = await (await conn.execute(self._sql.lock, (task_id,))).fetchone()
            if row is None or row[1] != queue_id:
                raise TaskNotFound.named(task_id, queue)
            task = task_from_row(row, queue)
            waits = await self._deps.still_waits(conn, task)
            also: list[Change] = []
            new = rules.change_status(task, status, now, waits, edit)
            if edit is not None and new is not None:
                # What the UPDATE of a status change leaves: an edit's data and key; a fair
                # queue places a task whose key it changed again, as that key's task.
                unplace = ", fair_seq = NULL" if new.key != task.key else ""
                await conn.execute(
                    f"UPDATE {self._schema}.tasks SET data = %s, key = %s{unplace} WHERE id = %s",
                    (bytes(new.data), new.key, task.id),
                )
            change = await self._change(conn, queue_id, task, new, now, also)
            await self._keep_events(conn, also if change is None else [change, *also])
            if change is not None:
                await self._notify_ready(conn, [change.task, *(c.task for c in also)])
                (viewed,) = await self._deps.views(conn, [change.task])
                change = change._replace(task=viewed)
        self.report(also)
        return change

    async def _change(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        queue_id: int,
        task: Task,
        new: Task | None,
        now: int,
        also: list[Change],
    ) -> Change | None:
        """Write an operator's change to a task (a PATCH's, a bulk action's)."""
        if rules.retakes_key(task, new, now):
            # As an enqueue of the key would: its lock, then a look for another holder.
            key = task.unique_key
            lock_name = f"katar:{self._schema}:unique:{queue_id}:{key}"
            await conn.execute(self._sql.lock_keys, ([lock_name],))
            cursor = await conn.execute(self._sql.holders, (queue_id, [key], now))
            for found in await cursor.fetchall():
                holder = task_from_row(found, task.queue)
                if holder.id != task.id:
                    raise rules.key_taken(task, holder)
        if new is not None and new.debounce_key is None and task.debounce_key is not None:
            # A retry: out of its debounce, before it waits again (tasks_debounce is unique).
            await conn.execute(self._sql.undebounce, (task.id,))
        # A status change never finishes a task: the history option plays no part.
        change = await self._deps.write(conn, task, new, _KEEP, also)
        if change is not None and queue_id in self._fair and change.task.state in UNFINISHED:
            # A retry of a task finished before the queue became fair: it needs a place.
            (place,) = await self._fair_places(conn, queue_id, [change.task])
            await conn.execute(
                f"UPDATE {self._schema}.tasks SET fair_seq = %s WHERE id = %s AND fair_seq IS NULL",
                (place, task.id),
            )
        return change

    async def delete_task(self, queue: str, task_id: int, now: int | None = None) -> bool:
        queue_id = await self._queue_id(queue)
        also: list[Change] = []
        async with self._transaction() as conn:
            row = await (await conn.execute(self._sql.lock, (task_id,))).fetchone()
            if row is None or row[1] != queue_id:
                return False
            when = now_ms() if now is None else now
            await self._delete(conn, [task_from_row(row, queue)], when, also)
            await self._keep_events(conn, also)
            await self._notify_ready(conn, (change.task for change in also))
        self.report(also)
        return True

    async def expire(self, queues: Mapping[str, QueueOptions], now: int) -> list[Change]:
        s = self._schema
        changes: list[Change] = []
        async with self._transaction() as conn:
            # SKIP LOCKED: each expired delivery is handled by exactly one server.
            for sql, lease in (
                (
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE state = {_sql.RUNNING}"
                    " AND lease_until <= %s"
                    " ORDER BY lease_until LIMIT %s FOR UPDATE SKIP LOCKED",
                    True,
                ),
                (
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE {_sql.HAS_EXPIRY} AND expires_at <= %s"
                    " ORDER BY expires_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                    None,
                ),
                (
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE state = {_sql.SCHEDULED}"
                    " AND run_at <= %s"
                    " ORDER BY run_at LIMIT %s FOR UPDATE SKIP LOCKED",
                    False,
                ),
            ):
                rows = await (await conn.execute(sql, (now, _EXPIRE_BATCH))).fetchall()
                tasks = await self._tasks(conn, rows)
                # Expiries settle the tasks that wait for them: see _reap.
                for task in expiries(tasks, changes, now) if lease is None else tasks:
                    options = queues.get(task.queue)
                    if options is None:
                        continue
                    new = (
                        rules.expire(task, now)
                        if lease is None
                        else rules.expire_lease(task, options, now)
                        if lease
                        else rules.promote(task, now)
                    )
                    change = await self._deps.write(conn, task, new, options, changes)
                    if change is not None:
                        changes.append(change)
            # Finished tasks kept only while they held their unique_key (rules.discard):
            # removed at the first reap after that.
            # Only queues without history keep tasks so.
            dropping = [
                queue_id
                for name, options in queues.items()
                if not options.persistent and (queue_id := self._queue_ids.get(name)) is not None
            ]
            rows = []
            if dropping:
                cursor = await conn.execute(
                    f"SELECT {COLUMNS} FROM {s}.tasks WHERE unique_until IS NOT NULL"
                    f" AND {_sql.ENDED_KEPT} AND queue_id = ANY(%s) AND unique_until <= %s"
                    " LIMIT %s FOR UPDATE SKIP LOCKED",
                    (dropping, now, _EXPIRE_BATCH),
                )
                rows = await cursor.fetchall()
            for task in await self._tasks(conn, rows):
                options = queues.get(task.queue)
                if options is not None and rules.sweepable(task, options, now):
                    await conn.execute(self._sql.delete, (task.id,))
                    await self._deps.forget(conn, [task.id] if task.parents else [])
            await self._keep_events(conn, changes)
            await self._notify_ready(conn, (change.task for change in changes))
        # key_rate's buckets, pruned here too (at least every second on a shared store's
        # housekeeping): a queue no longer claimed from keeps its buckets no longer.
        for name, options in queues.items():
            queue_id = self._queue_ids.get(name)
            rate = options.key_rate
            if rate is not None and queue_id is not None and self._key_buckets_due(queue_id, now):
                await self._prune_key_buckets(queue_id, rate, now, _HOUSEKEEPING_PRUNES)
        return changes

    async def next_deadline(self) -> int | None:
        s = self._schema
        # LEAST ignores NULLs; each min() is one step down the partial index it names.
        async with self._transaction() as conn:
            row = await (
                await conn.execute(
                    "SELECT LEAST((SELECT min(lease_until) FROM"
                    f" {s}.tasks WHERE state = {_sql.RUNNING}),"
                    f" (SELECT min(run_at) FROM {s}.tasks WHERE state = {_sql.SCHEDULED}),"
                    f" (SELECT min(expires_at) FROM {s}.tasks WHERE {_sql.HAS_EXPIRY}))"
                )
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- schedules ---------------------------------------------------------------------------

    async def load_schedules(self) -> dict[str, Schedule]:
        async with self._transaction(writes=False) as conn:
            rows = await (
                await conn.execute(
                    f"SELECT name, spec, cursor, last_tick, last_task FROM {self._schema}.schedules"
                )
            ).fetchall()
        return {row[0]: _schedule(row) for row in rows}

    async def save_schedule(self, name: str, spec: ScheduleSpec, cursor: int | None) -> Schedule:
        async with self._transaction() as conn:
            row = await (
                await conn.execute(
                    f"INSERT INTO {self._schema}.schedules (name, spec, cursor)"
                    " VALUES (%s, %s, coalesce(%s, 0)) ON CONFLICT (name)"
                    " DO UPDATE SET spec = excluded.spec,"
                    f" cursor = GREATEST(%s, {self._schema}.schedules.cursor)"
                    " RETURNING name, spec, cursor, last_tick, last_task",
                    (name, msgspec.json.encode(spec), cursor, cursor),
                )
            ).fetchone()
            await self._notify(conn, "s:")
        assert row is not None
        return _schedule(row)

    async def outbox_trim(self, queues: Collection[str], keep: int) -> dict[str, int]:
        s = self._schema
        dropped: dict[str, int] = {}
        async with self._transaction() as conn:
            for queue in queues:
                cursor = await conn.execute(
                    f"DELETE FROM {s}.outbox WHERE queue = %(q)s AND id <= (SELECT id FROM"
                    f" {s}.outbox WHERE queue = %(q)s ORDER BY id DESC LIMIT 1 OFFSET %(k)s)",
                    {"q": queue, "k": keep},
                )
                if cursor.rowcount > 0:
                    dropped[queue] = cursor.rowcount
        return dropped

    async def outbox_pending(self, queue: str) -> tuple[int, int]:
        async with self._transaction() as conn:
            row = await (
                await conn.execute(
                    f"SELECT count(*), count(*) FILTER (WHERE attempts > 0)"
                    f" FROM {self._schema}.outbox WHERE queue = %s",
                    (queue,),
                )
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async def outbox_take(self, limit: int, now: int, lease_ms: int) -> list[OutboxRow]:
        s = self._schema
        async with self._transaction() as conn:
            # The first event of each task, unless held. SKIP LOCKED: of servers taking at
            # once, each takes other events; one that meets a row another has just taken
            # (and committed) finds it held. A task's next event is not its first until
            # this one is deleted, so one server sends a task's events, in order.
            rows = await (
                await conn.execute(
                    f"UPDATE {s}.outbox SET held_until = %(until)s WHERE id IN (SELECT o.id"
                    f" FROM {s}.outbox o WHERE o.held_until <= %(now)s AND NOT EXISTS"
                    f" (SELECT 1 FROM {s}.outbox p WHERE p.task_id = o.task_id AND p.id < o.id)"
                    f" ORDER BY o.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                    f" AND held_until <= %(now)s"
                    " RETURNING id, queue, task_id, body, attempts",
                    {"until": now + lease_ms, "now": now, "limit": limit},
                )
            ).fetchall()
            return sorted(OutboxRow(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows)

    async def outbox_delete(self, ids: Sequence[int]) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                f"DELETE FROM {self._schema}.outbox WHERE id = ANY(%s)", (list(ids),)
            )

    async def outbox_retry(self, event_id: int, until: int) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                f"UPDATE {self._schema}.outbox SET held_until = %s, attempts = attempts + 1"
                " WHERE id = %s",
                (until, event_id),
            )

    async def delete_schedule(self, name: str) -> bool:
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"DELETE FROM {self._schema}.schedules WHERE name = %s", (name,)
            )
            await self._notify(conn, "s:")
            return bool(cursor.rowcount)

    async def fire_schedule(
        self, name: str, cursor: int, tick: int, task: NewTask | None, now: int
    ) -> Fired:
        s = self._schema
        async with self._transaction() as conn:
            # The compare-and-set: of servers firing one tick at once, the first locks the
            # row; the others wait for its commit, then find the cursor moved and match none.
            row = await (
                await conn.execute(
                    f"UPDATE {s}.schedules SET cursor = %s, last_tick = %s"
                    " WHERE name = %s AND cursor = %s RETURNING spec, last_task",
                    (tick, tick, name, cursor),
                )
            ).fetchone()
            if row is None:
                return Fired(False)
            spec, last_task = _spec_decoder.decode(row[0]), row[1]
            if task is None:
                return Fired(True)
            if spec.overlap == "skip" and last_task is not None:
                found = await (
                    await conn.execute(f"SELECT state FROM {s}.tasks WHERE id = %s", (last_task,))
                ).fetchone()
                if found is not None and State(found[0]) in UNFINISHED:
                    return Fired(True)
            queue_id = await self._queue_id(spec.queue)
            (created,) = await self._insert(conn, queue_id, spec.queue, [task], now)
            await conn.execute(
                f"UPDATE {s}.tasks SET schedule = %s, scheduled_for = %s WHERE id = %s",
                (name, tick, created.id),
            )
            await conn.execute(
                f"UPDATE {s}.schedules SET last_task = %s WHERE name = %s", (created.id, name)
            )
        return Fired(True, msgspec.structs.replace(created, schedule=name, scheduled_for=tick))


def _shares(
    plan: rules.ClaimPlan,
    asks: Sequence[tuple[int, str | None]],
    delivered: list[Task],
    now: int,
    rates: rules.KeyRates | None,
) -> list[Share]:
    """Each poll's share of a claim made for several (limit, worker) ``asks``, in their
    order: a poll that got less than it asked learns, from the claim as a whole, when to
    look again and what held it back (rules.claim_retry_at, claim_held)."""
    asked = sum(limit for limit, _worker in asks)
    got = len(delivered)
    shares: list[Share] = []
    start = 0
    for limit, _worker in asks:
        mine = delivered[start : start + limit]
        start += len(mine)
        if len(mine) < limit:
            retry_at = rules.claim_retry_at(plan, asked, got, now, rates)
            shares.append(Share(mine, retry_at, rules.claim_held(plan, got, rates)))
        else:
            shares.append(Share(mine))
    return shares


def _bulk_statement(sql: Queries, action: str) -> str:
    """A bulk action's step in SQL (the actions of rules.BULK_STATES)."""
    if action == "delete":
        return sql.bulk_delete
    if action == "cancel":
        return sql.bulk_cancel
    if action == "retry":
        return sql.bulk_retry
    raise ValueError(f"no bulk action {action!r}")


def _schedule(row: Sequence[Any]) -> Schedule:
    name, spec, cursor, last_tick, last_task = row
    return stored_schedule(name, spec, cursor, last_tick, last_task)


_KEEP: Final = QueueOptions(persistent=True)
# A queue a task moves to that does not exist (a dead letter's target, a redrive's origin
# deleted meanwhile): made with default options, as PUT with {} makes one.
_DEFAULT_OPTIONS: Final = msgspec.json.encode(QueueOptions())
_DIALECT: Final = Dialect(
    param="%s", ids="id = ANY(%s)", ids_value=list, contains="strpos(error, %s) > 0"
)
