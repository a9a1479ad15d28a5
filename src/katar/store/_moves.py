"""The move jobs (katar.core.moves) as the SQL stores keep them: the table's columns, the
statements (SQLite and PostgreSQL write them alike, but for their parameters' mark and
PostgreSQL's locks), and a job from a row and back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import msgspec

from katar.core.model import MoveJob, TaskFilter

JOB_COLUMNS: Final = (
    "id, queue, target, filter, allowed, rate, state, total, matched, moved, no_origin,"
    " after_id, started_at, ended_at, error, runner, lease_until"
)
_filter: Final = msgspec.json.Decoder(TaskFilter)
_allowed: Final = msgspec.json.Decoder(tuple[str, ...])


class MoveStatements(NamedTuple):
    """The move jobs' statements for a table and a parameter mark."""

    insert: str
    running: str
    prune: str
    list: str
    get: str
    #: The job read at the start of a step's transaction (PostgreSQL locks it: a cancel
    #: waits for the step's commit, and the next step waits for the cancel's).
    lock: str
    advance: str
    end: str
    take: str
    release: str
    forget: str


def move_statements(table: str, p: str, lock: str = "", skip: str = "") -> MoveStatements:
    """The statements on ``table`` with ``p`` as the parameter mark; ``lock`` ends the read
    of a step's job, ``skip`` the pick of a job to take over (PostgreSQL's row locks)."""
    running = "state = 'running'"
    return MoveStatements(
        insert=(
            f"INSERT INTO {table} (queue, target, filter, allowed, rate, state, total, matched,"
            " moved, no_origin, after_id, started_at, ended_at, error, runner, lease_until)"
            f" VALUES ({', '.join([p] * 16)})"
            # Another server's job running for the queue (the unique partial index): none.
            f" ON CONFLICT (queue) WHERE {running} DO NOTHING RETURNING {JOB_COLUMNS}"
        ),
        running=f"SELECT {JOB_COLUMNS} FROM {table} WHERE queue = {p} AND {running}",
        prune=(
            f"DELETE FROM {table} WHERE queue = {p} AND state <> 'running' AND id NOT IN"
            f" (SELECT id FROM {table} WHERE queue = {p} ORDER BY id DESC LIMIT {p})"
        ),
        list=f"SELECT {JOB_COLUMNS} FROM {table} WHERE queue = {p} ORDER BY id DESC LIMIT {p}",
        get=f"SELECT {JOB_COLUMNS} FROM {table} WHERE id = {p}",
        lock=f"SELECT {JOB_COLUMNS} FROM {table} WHERE id = {p}{lock}",
        advance=(
            f"UPDATE {table} SET matched = {p}, moved = {p}, no_origin = {p}, after_id = {p},"
            f" state = {p}, ended_at = {p}, lease_until = {p} WHERE id = {p}"
        ),
        end=(
            f"UPDATE {table} SET state = {p}, ended_at = {p}, error = {p}"
            f" WHERE id = {p} AND {running} AND runner = coalesce({p}, runner)"
        ),
        take=(
            f"UPDATE {table} SET runner = {p}, lease_until = {p} WHERE id = (SELECT id FROM"
            f" {table} WHERE {running} AND lease_until < {p} ORDER BY lease_until LIMIT 1{skip})"
            f" AND {running} AND lease_until < {p} RETURNING {JOB_COLUMNS}"
        ),
        release=(
            f"UPDATE {table} SET lease_until = 0 WHERE id = {p} AND {running} AND runner = {p}"
        ),
        forget=f"DELETE FROM {table} WHERE queue = {p}",
    )


def job_from_row(row: Sequence[Any]) -> MoveJob:
    """The job a row of JOB_COLUMNS holds."""
    return MoveJob(
        id=row[0],
        queue=row[1],
        to=row[2],
        where=_filter.decode(row[3]),
        allowed=None if row[4] is None else _allowed.decode(row[4]),
        rate=row[5],
        state=row[6],
        total=row[7],
        matched=row[8],
        moved=row[9],
        no_origin=row[10],
        after=row[11],
        started_at=row[12],
        ended_at=row[13],
        error=row[14],
        runner=row[15],
        lease_until=row[16],
    )


def insert_values(job: MoveJob) -> tuple[Any, ...]:
    """The values of ``insert`` for a new job."""
    return (
        job.queue,
        job.to,
        msgspec.json.encode(job.where),
        None if job.allowed is None else msgspec.json.encode(job.allowed),
        job.rate,
        job.state,
        job.total,
        job.matched,
        job.moved,
        job.no_origin,
        job.after,
        job.started_at,
        job.ended_at,
        job.error,
        job.runner,
        job.lease_until,
    )


def advance_values(job: MoveJob) -> tuple[Any, ...]:
    """The values of ``advance`` for a job after a step (model.advanced)."""
    return (
        job.matched,
        job.moved,
        job.no_origin,
        job.after,
        job.state,
        job.ended_at,
        job.lease_until,
        job.id,
    )
