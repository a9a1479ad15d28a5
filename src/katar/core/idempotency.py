"""Idempotency keys on enqueue: the rules every store applies the same way.

A producer that lost an enqueue's answer (a reset connection, a time-out, an outcome the
store could not tell) cannot know whether its tasks were created. Sent again with the same
``Idempotency-Key``, the enqueue creates nothing and answers what the first answered.

A store keeps, per (queue, key): a digest of the request, the ids it created, and when.
That is the whole answer: a repeat carries the same tasks (its digest says so), so their
records as first created follow from the ids and the time (:func:`replay`), and a key costs
a few dozen bytes however large its tasks. A key is kept for :data:`KEY_TTL_MS`; a store
ignores older ones and the engine prunes them in its housekeeping, never in a request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final, NamedTuple

import msgspec

from katar.core import rules
from katar.core.model import NewTask, Task
from katar.errors import ValidationError
from katar.protocol import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_PATTERN, MAX_IDEMPOTENCY_KEY

#: How long a key is remembered, in ms.
KEY_TTL_MS: Final = 24 * 3600 * 1000
#: The most expired keys one prune_keys call removes (each call is one short transaction).
PRUNE_BATCH: Final = 5000
#: The longest key accepted, in characters.
MAX_KEY_LENGTH: Final = MAX_IDEMPOTENCY_KEY
_KEY: Final = re.compile(IDEMPOTENCY_KEY_PATTERN)
_HEADER: Final = IDEMPOTENCY_KEY_HEADER.title()
_runs: Final = msgspec.json.Decoder(list[tuple[int, int]])


class Idempotency(NamedTuple):
    """An enqueue's key and the digest of what it asks."""

    key: str
    digest: bytes


class KeyReused(ValidationError):
    """This Idempotency-Key was already used on this queue, with a different request."""


def check_key(raw: bytes | str) -> str:
    """The key of an ``Idempotency-Key`` header: 1 to 255 printable ASCII characters."""
    key = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if not _KEY.fullmatch(key):
        raise ValidationError(
            f"invalid {_HEADER} header: use 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            header=_HEADER,
        )
    return key


#: The fields that digest() writes out one by one; any other a task sets goes in as JSON.
# The fields hashed apart, and the trace context, which says who asked, not what: a retry
# from another span of the same request is the same request.
_DIGESTED: Final = frozenset({"data", "priority", "delay_ms", "paused", "run_at", "trace"})
#: The later fields whose default is neither None nor empty: left out when they have it.
_DEFAULTS: Final = {"after_failure": "cancel"}


def digest(tasks: Sequence[NewTask]) -> bytes:
    """What identifies an enqueue's request: its tasks' fields (``run_at`` too), data byte
    for byte. Two bodies that differ only in whitespace between fields ask the same."""
    hasher = hashlib.sha256()
    for task in tasks:
        data = bytes(task.data)
        hasher.update(b"%d,%d,%d,%d" % (task.priority, task.delay_ms, task.paused, len(data)))
        if task.run_at is not None:
            # Only when given, so that the digests of tasks without one stay as they were.
            hasher.update(b",@%d" % task.run_at)
        extra = {
            name: value
            for name in task.__struct_fields__
            # An empty after (no dependencies) is absent, as None is; so is a default.
            if name not in _DIGESTED
            and (value := getattr(task, name)) not in (None, ())
            and _DEFAULTS.get(name) != value
        }
        if extra:  # the later fields, only when given, for the same reason
            hasher.update(b",+" + msgspec.json.encode(extra))
        hasher.update(b":")
        hasher.update(data)
    return hasher.digest()


def idempotency(key: bytes | str, tasks: Sequence[NewTask]) -> Idempotency:
    """The key checked, with the digest of ``tasks``."""
    return Idempotency(check_key(key), digest(tasks))


def pack(tasks: Sequence[Task]) -> bytes:
    """The tasks an enqueue answered, as a store keeps them (:func:`pack_ids`): a duplicate
    (an existing task that held the unique_key asked for) or a task debounced (an existing
    one that took the debounce_key's enqueue) by its id negated."""
    return pack_ids([-task.id if task.duplicate or task.debounced else task.id for task in tasks])


def pack_ids(ids: Sequence[int]) -> bytes:
    """The ids an enqueue created, as a store keeps them: runs of consecutive ids, as JSON
    ``[[first, count], ...]`` (one run when no other server enqueued at the same moment).
    A negative id is a duplicate's (see :func:`pack`): a run of its own."""
    runs: list[list[int]] = []
    for task_id in ids:
        if runs and task_id > 0 and runs[-1][0] > 0 and runs[-1][0] + runs[-1][1] == task_id:
            runs[-1][1] += 1
        else:
            runs.append([task_id, 1])
    return msgspec.json.encode(runs)


def unpack_ids(packed: bytes) -> list[int]:
    """The ids that :func:`pack_ids` packed."""
    runs = _runs.decode(packed)
    return [task_id for first, count in runs for task_id in range(first, first + count)]


def fresh_since(now: int) -> int:
    """Keys created at or before this time are expired at ``now``."""
    return now - KEY_TTL_MS


def current(first: Task, found: Task | None) -> Task:
    """What a repeat answers for a task of the first answer: as the first created it, but
    a duplicate, or a task that waits for others (its state depended on theirs), as it is
    now (``found``), when it still exists."""
    if found is None or not (first.duplicate or first.debounced or first.parents):
        return first
    if first.debounced:
        return rules.debounced(found)
    return rules.duplicate(found) if first.duplicate else found


def read_back(first: Task) -> bool:
    """Whether a repeat's answer for ``first`` is read from the store (see current)."""
    return first.duplicate or first.debounced or bool(first.parents)


def replay(
    queue: str,
    tasks: Sequence[NewTask],
    stored_digest: bytes,
    ids: Sequence[int],
    created: int,
    wanted: Idempotency,
) -> list[Task]:
    """The first enqueue's tasks as it created them, for a repeat that asks ``tasks``;
    KeyReused if the repeat asks something else. A duplicate (a task that held the
    unique_key asked for) is built from the request, marked ``duplicate`` (or
    ``debounced``, see :func:`_existing`): the store answers
    the task itself instead while it exists (see :func:`current`); so is a task that waits
    for others (``parents`` set)."""
    if stored_digest != wanted.digest or len(ids) != len(tasks):
        raise KeyReused(header=_HEADER, key=wanted.key)
    pairs = zip(tasks, ids, strict=True)
    return [
        _parents(rules.new_task(queue, spec, task_id, created), spec)
        if task_id > 0
        else _existing(rules.new_task(queue, spec, -task_id, created), spec)
        for spec, task_id in pairs
    ]


def _existing(task: Task, spec: NewTask) -> Task:
    """An existing task that the first enqueue answered (a negated id): debounced when the
    task asked for a debounce_key, else a duplicate (a unique_key's holder); never both, for
    a task cannot ask for both (model.check_debounce)."""
    return rules.debounced(task) if spec.debounce_key is not None else rules.duplicate(task)


def _parents(task: Task, spec: NewTask) -> Task:
    if not (spec.after or spec.refs):
        return task
    return msgspec.structs.replace(task, parents=len(spec.after) + len(spec.refs))
