"""Schedules: a cron expression in a time zone that enqueues a task at each of its ticks.

The cron syntax is cronsim's (five fields: minute, hour, day of month, month, day of week;
ranges, steps, lists, names, ``L`` and ``#``), evaluated on the wall clock of the schedule's
zone without any zone: the zone is applied here, with :mod:`zoneinfo`, so that the rule for
daylight saving is Katar's own and the same everywhere:

- a wall-clock time that does not exist (the hour skipped in spring) is no tick at all;
- a wall-clock time that happens twice (the hour repeated in autumn) is one tick, at its
  first occurrence.

A schedule's ticks after a moment and before it are found by walking the wall clock from the
moment's wall time (for the ticks before it, from later by as much as the clocks went back,
when the moment is in the second pass of a repeated hour), keeping the first tick on the
right side: the mapping from wall clock to UTC above is monotonic, so the first one found is
the nearest.

The walk is bounded (HORIZON_YEARS, MAX_SKIPPED): a cron whose every tick falls in the hour
skipped in spring (``30 2 * 3 7L`` in Europe/Berlin) would otherwise be walked to the year
9999. A schedule with no tick within the bounds never fires: it is refused when it is put,
and one stored before (or edited in the database) is marked with its error (:func:`fault`)
and left alone by the scheduler.
"""

from __future__ import annotations

import contextlib
import os
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import msgspec
from cronsim import CronSim, CronSimError

from katar.core import typed
from katar.errors import ScheduleNotFound, ValidationError
from katar.protocol import PRIORITY_MAX, PRIORITY_MIN, PRIORITY_NAMES

#: How many upcoming ticks a schedule's record shows.
NEXT_TICKS: Final = 5
#: A tick more than this late (ms) when a server looks at it was missed (no server ran at
#: its time): it is skipped, or caught up in one task with ``catch_up``. A tick less late is
#: fired as usual, however busy the servers were.
MISSED_MS: Final = 60_000
#: Test-only: with this environment variable set to 1, a cron expression may have six
#: fields, seconds first, so that tests of firing need not wait minutes. Not a setting of
#: the configuration file, the HTTP interface or the Python API; ``katar serve`` logs a
#: warning when it is set.
SECONDS_FOR_TESTS: Final = "KATAR_TEST_SECOND_TICKS"
#: How far from its start (in years of wall-clock time) a search for a tick goes: a cron
#: with no tick that near never fires. Legitimate crons come back within 40 years (the fifth
#: Monday of February); cronsim itself gives up after 50 years without a match.
HORIZON_YEARS: Final = 50
#: How many gaps in the wall clock (the hour skipped when summer time starts) one search
#: steps over before it gives up, whatever their ticks: a safety net below HORIZON_YEARS
#: (zones change their clocks at most a few times a year).
MAX_SKIPPED: Final = 1000
#: The longest cron expression: every value of every field listed is some 600 characters.
#: Longer is refused before it is parsed (a field of thousands of digits is no number).
MAX_CRON: Final = 1000
_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
MAX_NAME: Final = 255


# The formats name what JSON Schema cannot state (the OpenAPI document shows them).
Cron = Annotated[
    str,
    msgspec.Meta(
        description="five fields: minute hour day-of-month month day-of-week",
        # Stated for the OpenAPI document; check_cron enforces it with its own message.
        extra_json_schema={
            "format": "cron",
            "maxLength": MAX_CRON,
            "examples": ["30 2 * * MON-FRI"],
        },
    ),
]
TimeZone = Annotated[
    str,
    msgspec.Meta(
        description="an IANA time zone name",
        extra_json_schema={"format": "iana-time-zone", "examples": ["Europe/Berlin"]},
    ),
]
Priority = (
    Annotated[int, msgspec.Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)]
    | Literal["high", "normal", "low"]
)


class ScheduleSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What a schedule does: the keys of a ``[schedules.NAME]`` table and of a PUT body.
    Build one with :func:`parse_schedule`, which checks the cron and the zone."""

    cron: Cron  # five fields, in the zone below
    queue: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
    timezone: TimeZone = "UTC"  # an IANA name
    data: Any = None  # the data of each task, as JSON
    priority: Priority = 0  # an integer, or "high", "normal", "low"
    #: "skip": no new task while the last one this schedule made is unfinished (the tick is
    #: used up); "allow": a task at every tick.
    overlap: Literal["skip", "allow"] = "allow"
    #: Ticks missed while no server ran: false, skipped; true, one task for them all.
    catch_up: bool = False
    paused: bool = False  # while true, ticks pass without a task


class Schedule(msgspec.Struct, kw_only=True, frozen=True):
    """A schedule as stored: its spec and where its ticks stand."""

    name: str
    spec: ScheduleSpec
    #: Every tick at or before this time (ms) is used up: fired, skipped or missed. The
    #: store advances it by compare-and-set (see Store.fire_schedule).
    cursor: int
    last_tick: int | None = None  # the last tick fired (with or without a task), ms
    last_task: int | None = None  # the id of the last task it made
    #: Why the schedule cannot run (see :func:`fault`), or None. Not stored: the server finds
    #: it when it reads the record.
    error: str | None = None


def not_found(name: str) -> ScheduleNotFound:
    """The error for a schedule that does not exist, or that the caller may not see: the same
    answer for both, so that another scope's schedules stay out of sight."""
    return ScheduleNotFound(f"no schedule {name!r}", schedule=name)


_spec_decoder: Final = msgspec.json.Decoder(ScheduleSpec)


def stored(
    name: str, spec: bytes | str, cursor: int, last_tick: int | None, last_task: int | None
) -> Schedule:
    """A schedule from a store's row (its spec as JSON). A spec that no longer decodes (the
    record was edited in the database) makes a schedule with its ``error`` set, the fields
    it can still read, and no tick: one bad record does not hide the others."""
    try:
        decoded = _spec_decoder.decode(spec)
    except msgspec.DecodeError as exc:
        raw: Any = None
        with contextlib.suppress(msgspec.DecodeError):
            raw = msgspec.json.decode(spec)
        known = raw if isinstance(raw, dict) else {}
        text = {key: value for key, value in known.items() if isinstance(value, str)}
        decoded = ScheduleSpec(
            cron=text.get("cron", ""),
            queue=text.get("queue", ""),
            timezone=text.get("timezone", "UTC"),
        )
        error = f"its stored record is not a valid schedule ({exc}); PUT it again or DELETE it"
        return Schedule(name=name, spec=decoded, cursor=cursor, error=error)
    return Schedule(
        name=name, spec=decoded, cursor=cursor, last_tick=last_tick, last_task=last_task
    )


def task_data(spec: ScheduleSpec) -> bytes:
    """The data of the task each tick makes, as JSON."""
    return msgspec.json.encode(spec.data)


def check_name(name: str) -> str:
    """``name`` if it is a valid schedule name (the characters of a queue name)."""
    if not 0 < len(name) <= MAX_NAME or not _NAME_CHARS.issuperset(name) or name[0] in "._:-":
        raise ValidationError(
            f"invalid schedule name {name[: MAX_NAME + 10]!r}: use 1 to {MAX_NAME} letters, "
            "digits, '.', '_', ':' or '-', starting with a letter or digit",
            schedule=name[: MAX_NAME + 10],
        )
    return name


def parse_schedule(raw: Any) -> ScheduleSpec:
    """A schedule's spec from plain data (decoded JSON or TOML, keyword arguments), checked:
    raises ValidationError whose ``details["field"]`` names the faulty field."""
    try:
        spec = typed.convert(raw, ScheduleSpec)
    except typed.Invalid as exc:
        if not exc.path:
            raise ValidationError(
                'a schedule must be an object, e.g. {"cron": "0 * * * *", "queue": "q"}'
            ) from None
        name = ".".join(str(step) for step in exc.path)
        if exc.problem == "unknown":
            message = f"unknown schedule field {name!r}; expected one of {', '.join(exc.choices)}"
        elif exc.problem == "missing":
            message = f"schedule field {name!r} is required"
        else:
            message = f"schedule field {name!r} {exc.must()}"
        raise ValidationError(message, field=str(exc.path[0])) from None
    zone(spec.timezone)
    check_cron(spec.cron)
    try:
        msgspec.json.encode(spec.data)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(f"schedule field 'data' must be JSON: {exc}", field="data") from None
    return msgspec.structs.replace(spec, priority=_priority(spec.priority))


def _priority(value: int | str) -> int:
    return PRIORITY_NAMES[value] if isinstance(value, str) else value


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; ValidationError when there is none of that name."""
    try:
        if name and not name.startswith(("/", ".")) and "\x00" not in name:
            return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    raise ValidationError(
        f"unknown time zone {name[:100]!r}: use an IANA name such as 'UTC', 'Europe/Berlin' "
        "or 'America/New_York'",
        field="timezone",
    )


def check_cron(cron: str) -> None:
    """Raise ValidationError unless ``cron`` is a cron expression a schedule may have."""
    if len(cron) > MAX_CRON:
        raise ValidationError(
            f"invalid cron {cron[:100]!r}...: {len(cron)} characters, over the limit of "
            f"{MAX_CRON}; use ranges and steps (e.g. '*/5') rather than long lists",
            field="cron",
        )
    fields = cron.split()
    allowed = (5, 6) if os.environ.get(SECONDS_FOR_TESTS) == "1" else (5,)
    if len(fields) not in allowed or "\x00" in cron:
        raise ValidationError(
            f"invalid cron {cron[:100]!r}: use five fields (minute hour day-of-month month "
            "day-of-week), e.g. '*/15 9-17 * * MON-FRI'",
            field="cron",
        )
    try:
        CronSim(cron, datetime(2000, 1, 1))
    except (CronSimError, ValueError) as exc:  # ValueError: a number too long for int()
        raise ValidationError(
            f"invalid cron {cron[:100]!r}: {exc} (fields: minute 0-59, hour 0-23, "
            "day-of-month 1-31, month 1-12 or JAN-DEC, day-of-week 0-7 or SUN-SAT)",
            field="cron",
        ) from None


def _to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _utc(wall: datetime, tz: zoneinfo.ZoneInfo) -> datetime | None:
    """The UTC moment of a wall-clock time in ``tz``: its first occurrence when it happens
    twice; None when it does not exist (skipped by a change to daylight saving)."""
    local = wall.replace(tzinfo=tz, fold=0)
    moment = local.astimezone(UTC)
    if moment.astimezone(tz).replace(tzinfo=None) != wall:
        return None  # it round-trips to another wall time: it does not exist
    return moment


def _walk(spec: ScheduleSpec, after_ms: int, reverse: bool) -> Iterator[int]:
    """The ticks on one side of ``after_ms``, nearest first, within the bounds (the module's
    docstring): the walk ends when it passes HORIZON_YEARS or MAX_SKIPPED."""
    tz = zone(spec.timezone)
    local = datetime.fromtimestamp(after_ms / 1000, UTC).astimezone(tz)
    wall = local.replace(tzinfo=None, microsecond=0)
    if reverse:
        # Ticks up to the moment. In the second pass of a repeated hour, wall times later
        # than the moment's happened at their first pass, before it: start that much later.
        first_pass = local.replace(fold=0).utcoffset()
        now_offset = local.utcoffset()
        assert first_pass is not None
        assert now_offset is not None
        later = max(first_pass - now_offset, timedelta(0))
        start = wall + later + timedelta(seconds=1)  # cronsim's reverse walk starts before
    else:
        # A wall time before the moment's is never after it: the first passes of repeated
        # times come first, and skipped ones are no ticks.
        start = wall
    horizon = timedelta(days=366 * HORIZON_YEARS)
    limit = start - horizon if reverse else start + horizon
    ticks = CronSim(spec.cron, start, reverse=reverse)
    gaps = 0
    while (tick := next(ticks, None)) is not None:
        if (tick < limit) if reverse else (tick > limit):
            return
        found = _utc(tick, tz)
        if found is None:
            # Every wall time of the gap is no tick: walk on from its far side at once
            # rather than through each of its minutes (or seconds).
            gaps += 1
            if gaps > MAX_SKIPPED:
                return
            before, after = _gap(tick, tz)
            resume = before + timedelta(seconds=1) if reverse else after - timedelta(seconds=1)
            ticks = CronSim(spec.cron, resume, reverse=reverse)
            continue
        ms = _to_ms(found)
        if (ms <= after_ms) if reverse else (ms > after_ms):
            yield ms


def _gap(wall: datetime, tz: zoneinfo.ZoneInfo) -> tuple[datetime, datetime]:
    """For a wall time that does not exist in ``tz``: the last wall time (to the second)
    before its gap, and the first after it."""
    # Read with the offset from before the change, the time is an instant after it; with
    # the offset from after, one before it: the change lies between (found to the second).
    before = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    after = int(wall.replace(tzinfo=tz, fold=0).timestamp())
    offset = datetime.fromtimestamp(before, tz).utcoffset()
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset:
            before = middle
        else:
            after = middle
    return (
        datetime.fromtimestamp(before, tz).replace(tzinfo=None),
        datetime.fromtimestamp(max(after, before + 1), tz).replace(tzinfo=None),
    )


def ticks_after(spec: ScheduleSpec, after_ms: int) -> Iterator[int]:
    """The schedule's ticks after ``after_ms`` (ms since the epoch), in order, as ms."""
    return _walk(spec, after_ms, reverse=False)


def next_tick(spec: ScheduleSpec, after_ms: int) -> int | None:
    """The first tick after ``after_ms``; None when there is none within the bounds (the
    module's docstring): every tick in a daylight-saving gap, for one."""
    return next(ticks_after(spec, after_ms), None)


def last_tick_by(spec: ScheduleSpec, at_ms: int) -> int | None:
    """The last tick at or before ``at_ms``; None when there is none."""
    return next(_walk(spec, at_ms, reverse=True), None)


def next_ticks(spec: ScheduleSpec, after_ms: int, count: int = NEXT_TICKS) -> list[int]:
    """The next ``count`` ticks after ``after_ms``."""
    found = []
    for tick in ticks_after(spec, after_ms):
        found.append(tick)
        if len(found) >= count:
            break
    return found


class Due(msgspec.Struct, frozen=True):
    """A step of firing a schedule: advance its cursor to ``tick``, with a task or not."""

    tick: int
    task: bool  # False: the tick is used up without a task (missed)


def check_fires(spec: ScheduleSpec, now: int) -> None:
    """Raise ValidationError, saying what to change, unless the schedule has a tick to come
    after ``now`` (within the bounds of the module's docstring)."""
    if next_tick(spec, now) is None:
        raise ValidationError(_never(spec), field="cron")


def _never(spec: ScheduleSpec) -> str:
    return (
        f"schedule never fires: cron {spec.cron[:100]!r} has no tick in {spec.timezone} within"
        f" {HORIZON_YEARS} years (a time skipped when the clocks go forward, as 02:30 on the"
        " day summer time starts in much of Europe and North America, is no tick); choose"
        " times that exist, e.g. an hour outside the change"
    )


def fault(schedule: Schedule) -> str | None:
    """Why a stored schedule cannot run, or None: its record does not decode, its cron or
    time zone is not valid here, or it has no tick to come (records stored before these
    were checked at PUT, or edited in the database). Said as what to fix."""
    if schedule.error is not None:
        return schedule.error
    spec = schedule.spec
    try:
        zone(spec.timezone)
        check_cron(spec.cron)
        if next_tick(spec, schedule.cursor) is None:
            reason = _never(spec)
        else:
            return None
    except ValidationError as exc:
        reason = exc.message
    except (ArithmeticError, ValueError) as exc:  # e.g. a cursor edited past the year 9999
        reason = f"its ticks cannot be computed ({exc})"
    return f"{reason}; PUT it again or DELETE it"


def upcoming(schedule: Schedule, now: int) -> list[int]:
    """The next NEXT_TICKS ticks of a schedule that can run (its ``error`` is None: see
    :func:`fault`), from ``now`` on; none while it is paused."""
    if schedule.spec.paused or schedule.error is not None:
        return []
    return next_ticks(schedule.spec, max(now, schedule.cursor))


def due(schedule: Schedule, now: int) -> list[Due]:
    """What firing ``schedule`` at ``now`` does, step by step (each its own compare-and-set
    of the cursor): the ticks missed (more than MISSED_MS late) as one step, with one task
    if it catches up; then each tick on time, with a task."""
    spec = schedule.spec
    steps: list[Due] = []
    if spec.paused or schedule.error is not None:
        return steps  # a paused schedule's ticks pass: resuming moves its cursor to then
    cursor = schedule.cursor
    first = next_tick(spec, cursor)
    if first is None or first > now:
        return steps
    if first <= now - MISSED_MS:
        missed = last_tick_by(spec, now - MISSED_MS)
        if missed is None:  # the walk back gave up (MAX_SKIPPED): ``first`` is one of them
            missed = first
        steps.append(Due(missed, spec.catch_up))
        cursor = missed
    for tick in ticks_after(spec, cursor):
        if tick > now:
            break
        steps.append(Due(tick, True))
    return steps


def wake_at(schedule: Schedule) -> int | None:
    """When the schedule next needs firing: its first tick after the cursor; None when it
    is paused, cannot run, or has no tick to come."""
    if schedule.spec.paused or schedule.error is not None:
        return None
    return next_tick(schedule.spec, schedule.cursor)
