"""Cron parsing and next-tick computation across time zones and daylight saving changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from katar.core.schedule import (
    HORIZON_YEARS,
    MAX_CRON,
    MISSED_MS,
    Due,
    Schedule,
    ScheduleSpec,
    check_fires,
    due,
    fault,
    last_tick_by,
    next_tick,
    next_ticks,
    parse_schedule,
    stored,
    upcoming,
    wake_at,
)
from katar.errors import ValidationError


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


def iso(value: int) -> str:
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


def spec(cron: str, timezone: str = "UTC", **fields: Any) -> ScheduleSpec:
    return parse_schedule({"cron": cron, "queue": "q", "timezone": timezone, **fields})


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("*/15 * * * *", "2026-03-02T10:07:00Z", ["10:15", "10:30", "10:45", "11:00"]),
        ("0 9-11 * * *", "2026-03-02T10:00:00Z", ["11:00", "09:00", "10:00", "11:00"]),
        ("0,30 8 * * *", "2026-03-02T08:00:00Z", ["08:30", "08:00", "08:30", "08:00"]),
        # 2026-03-02 is a Monday: the next weekday mornings by name.
        ("0 6 * * MON-FRI/2", "2026-03-02T07:00:00Z", ["06:00", "06:00", "06:00", "06:00"]),
        ("0 0 1 JAN,JUL *", "2026-03-02T00:00:00Z", ["00:00", "00:00", "00:00", "00:00"]),
    ],
)
def test_syntax(cron: str, after: str, expected: list[str]) -> None:
    ticks = next_ticks(spec(cron), ms(after), 4)
    assert [iso(t)[-5:] for t in ticks] == expected
    assert ticks == sorted(ticks)
    assert ticks[0] > ms(after)


def test_names_steps_and_lists_give_the_right_days() -> None:
    ticks = next_ticks(spec("0 6 * * MON-FRI/2"), ms("2026-03-02T07:00:00Z"), 3)
    assert [iso(t)[:10] for t in ticks] == ["2026-03-04", "2026-03-06", "2026-03-09"]
    halves = next_ticks(spec("0 0 1 JAN,JUL *"), ms("2026-03-02T00:00:00Z"), 2)
    assert [iso(t)[:10] for t in halves] == ["2026-07-01", "2027-01-01"]


def test_a_time_zone_moves_the_ticks() -> None:
    ticks = next_ticks(spec("0 9 * * *", "Asia/Tokyo"), ms("2026-06-01T00:00:00Z"), 2)
    assert [iso(t) for t in ticks] == ["2026-06-02T00:00", "2026-06-03T00:00"]
    ticks = next_ticks(spec("30 9 * * *", "America/New_York"), ms("2026-06-01T00:00:00Z"), 1)
    assert [iso(t) for t in ticks] == ["2026-06-01T13:30"]  # EDT, UTC-4


def test_a_tick_that_does_not_exist_is_skipped() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    berlin = spec("30 2 * * *", "Europe/Berlin")
    ticks = next_ticks(berlin, ms("2026-03-27T12:00:00Z"), 3)
    assert [iso(t) for t in ticks] == [
        "2026-03-28T01:30",  # 02:30 CET
        "2026-03-30T00:30",  # 02:30 CEST; none on the 29th
        "2026-03-31T00:30",
    ]
    # America/New_York, 2026-03-08: 02:00 EST jumps to 03:00 EDT.
    every = spec("*/30 * * * *", "America/New_York")
    ticks = next_ticks(every, ms("2026-03-08T06:00:00Z"), 4)  # 01:00 EST
    assert [iso(t) for t in ticks] == [
        "2026-03-08T06:30",  # 01:30 EST
        "2026-03-08T07:00",  # 03:00 EDT: 02:00 and 02:30 never happen
        "2026-03-08T07:30",
        "2026-03-08T08:00",
    ]


def test_a_tick_that_happens_twice_fires_once() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    berlin = spec("30 2 * * *", "Europe/Berlin")
    ticks = next_ticks(berlin, ms("2026-10-24T12:00:00Z"), 2)
    assert [iso(t) for t in ticks] == ["2026-10-25T00:30", "2026-10-26T01:30"]
    # From inside the repeated hour (its second pass), the first 02:30 is past: none more.
    assert next_ticks(berlin, ms("2026-10-25T01:10:00Z"), 1) == [ms("2026-10-26T01:30:00Z")]
    assert last_tick_by(berlin, ms("2026-10-25T01:10:00Z")) == ms("2026-10-25T00:30:00Z")
    # America/New_York, 2026-11-01: 02:00 EDT goes back to 01:00 EST; 01:xx happens twice.
    hourly = spec("15 * * * *", "America/New_York")
    ticks = next_ticks(hourly, ms("2026-11-01T04:00:00Z"), 3)  # 00:00 EDT
    assert [iso(t) for t in ticks] == [
        "2026-11-01T04:15",  # 00:15 EDT
        "2026-11-01T05:15",  # 01:15 EDT, once: not again at 01:15 EST
        "2026-11-01T07:15",  # 02:15 EST
    ]


def test_last_tick_by() -> None:
    hourly = spec("0 * * * *")
    assert last_tick_by(hourly, ms("2026-03-02T10:00:00Z")) == ms("2026-03-02T10:00:00Z")
    assert last_tick_by(hourly, ms("2026-03-02T10:59:00Z")) == ms("2026-03-02T10:00:00Z")


def schedule(cron: str, cursor: str, **fields: Any) -> Schedule:
    return Schedule(name="s", spec=spec(cron, **fields), cursor=ms(cursor))


def test_due_on_time_ticks_fire_each() -> None:
    minutely = schedule("* * * * *", "2026-03-02T10:00:00Z")
    assert due(minutely, ms("2026-03-02T10:00:59Z")) == []
    assert due(minutely, ms("2026-03-02T10:01:00Z")) == [Due(ms("2026-03-02T10:01:00Z"), True)]
    assert wake_at(minutely) == ms("2026-03-02T10:01:00Z")


@pytest.mark.parametrize("catch_up", [False, True])
def test_due_missed_ticks_are_one_step(catch_up: bool) -> None:
    hourly = schedule("0 * * * *", "2026-03-02T01:30:00Z", catch_up=catch_up)
    now = ms("2026-03-02T10:00:30Z")  # down from 01:30 to 10:00: 02:00 to 09:00 missed
    assert due(hourly, now) == [
        Due(ms("2026-03-02T09:00:00Z"), catch_up),  # one task for them all, or none
        Due(ms("2026-03-02T10:00:00Z"), True),  # on time
    ]
    late = ms("2026-03-02T10:00:00Z") + MISSED_MS + 1
    assert due(hourly, late) == [Due(ms("2026-03-02T10:00:00Z"), catch_up)]


def test_paused_schedule_fires_nothing() -> None:
    paused = schedule("* * * * *", "2026-03-02T10:00:00Z", paused=True)
    assert due(paused, ms("2026-03-02T11:00:00Z")) == []
    assert wake_at(paused) is None


def test_a_cron_that_never_comes_is_refused() -> None:
    with pytest.raises(ValidationError, match="Bad day-of-month"):
        spec("0 0 30 2 *")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"cron": "61 * * * *"}, "invalid cron '61 * * * *': Bad minute"),
        ({"cron": "* * * *"}, "use five fields"),
        ({"cron": "0 * * * * *"}, "use five fields"),  # seconds: tests only
        ({"cron": "0 0 * FOO *"}, "Bad month"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"timezone": "../etc/passwd"}, "unknown time zone"),
        ({"overlap": "never"}, "schedule field 'overlap' must be"),
        ({"priority": "urgent"}, "must be an integer from -2147483648 to 2147483647 or one of"),
        ({"priority": 10**10}, "schedule field 'priority' must be an integer"),
        ({"every": 5}, "unknown schedule field 'every'"),
        ({"queue": None}, "schedule field 'queue' must be"),
    ],
)
def test_bad_fields_say_what_to_fix(fields: dict[str, object], words: str) -> None:
    raw = {"cron": "* * * * *", "queue": "q", **fields}
    with pytest.raises(ValidationError) as caught:
        parse_schedule(raw)
    assert words in caught.value.message


def test_missing_cron_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_schedule({"queue": "q"})
    assert caught.value.message == "schedule field 'cron' is required"
    assert caught.value.details == {"field": "cron"}


def test_seconds_only_with_the_test_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KATAR_TEST_SECOND_TICKS", "1")
    every = spec("* * * * * *")
    assert next_ticks(every, ms("2026-03-02T10:00:00Z"), 2) == [
        ms("2026-03-02T10:00:01Z"),
        ms("2026-03-02T10:00:02Z"),
    ]


# A cron whose every tick falls in the hour skipped when summer time starts: the last Sunday
# of March in Europe, the second Sunday of March in the United States.
NEVER = [
    ("30 2 * 3 7L", "Europe/Berlin"),
    ("30 2 * 3 SUN#2", "America/New_York"),
    ("* 2 * 3 7L", "Europe/Berlin"),  # each minute of the hour: one gap stepped over a year
]


@pytest.mark.parametrize(("cron", "timezone"), NEVER)
def test_a_cron_whose_every_tick_does_not_exist_has_no_tick(cron: str, timezone: str) -> None:
    never = spec(cron, timezone)
    start = ms("2026-01-01T00:00:00Z")
    assert next_tick(never, start) is None  # within the bounds, not an OverflowError
    with pytest.raises(ValidationError) as caught:
        check_fires(never, start)
    assert caught.value.details == {"field": "cron"}
    assert "never fires" in caught.value.message
    assert f"within {HORIZON_YEARS} years" in caught.value.message
    assert "choose times that exist" in caught.value.message


def test_ticks_right_after_a_gap_are_found() -> None:
    # Europe/Berlin, 2026-03-29: 02:00-02:59 do not exist; the walk steps over them whole.
    hours = spec("*/20 2-3 * * *", "Europe/Berlin")
    ticks = next_ticks(hours, ms("2026-03-28T23:00:00Z"), 3)  # 00:00 CET on the 29th
    assert [iso(t) for t in ticks] == [
        "2026-03-29T01:00",  # 03:00 CEST
        "2026-03-29T01:20",
        "2026-03-29T01:40",
    ]
    # Backwards over the same gap: from 03:10 CEST, the last tick is 03:00, then 01:40 the
    # day before is not reached through 02:xx.
    assert last_tick_by(hours, ms("2026-03-29T01:10:00Z")) == ms("2026-03-29T01:00:00Z")
    assert last_tick_by(hours, ms("2026-03-29T00:59:00Z")) == ms("2026-03-28T02:40:00Z")
    # A rare cron still comes: the fifth Monday of February (next in 2044).
    assert next_tick(spec("0 0 * 2 MON#5"), ms("2026-01-01T00:00:00Z")) == ms(
        "2044-02-29T00:00:00Z"
    )


def test_a_cron_too_long_or_with_huge_numbers_is_refused() -> None:
    for cron in ("0" * 4300 + " * * * *", "1," * MAX_CRON + "1 * * * *"):
        with pytest.raises(ValidationError) as caught:
            spec(cron)
        assert caught.value.details["field"] == "cron"
    with pytest.raises(ValidationError, match="Bad minute"):
        spec("0" * 500 + "60 * * * *")  # short enough to parse, and out of range


def test_a_stored_schedule_that_cannot_run_says_why() -> None:
    cursor = ms("2026-01-01T00:00:00Z")
    fine = Schedule(name="s", spec=spec("0 * * * *"), cursor=cursor)
    assert fault(fine) is None
    never = Schedule(name="s", spec=spec(*NEVER[0]), cursor=cursor)
    assert "never fires" in (fault(never) or "")
    paused = Schedule(name="s", spec=spec(*NEVER[0], paused=True), cursor=cursor)
    assert "never fires" in (fault(paused) or "")  # shown while paused too
    # Fields that no PUT accepts, as a database edit leaves them (a struct built directly
    # is not checked).
    for bad, words in [
        (ScheduleSpec(cron="61 * * * *", queue="q"), "Bad minute"),
        (ScheduleSpec(cron="* * * * *", queue="q", timezone="Mars/Base"), "unknown time zone"),
    ]:
        assert words in (fault(Schedule(name="s", spec=bad, cursor=cursor)) or "")
    far = Schedule(name="s", spec=spec("0 * * * *"), cursor=2**62)
    assert "cannot be computed" in (fault(far) or "")
    # One that cannot run fires nothing and shows no tick.
    broken = Schedule(name="s", spec=spec("* * * * *"), cursor=cursor, error="broken")
    assert due(broken, cursor + 3_600_000) == []
    assert wake_at(broken) is None
    assert upcoming(broken, cursor) == []
    assert len(upcoming(fine, cursor)) == 5


def test_a_stored_record_that_does_not_decode_is_one_schedule_with_its_error() -> None:
    good = stored("a", b'{"cron": "0 * * * *", "queue": "q"}', 5, 4, 3)
    assert (good.spec.cron, good.cursor, good.last_tick, good.last_task, good.error) == (
        "0 * * * *",
        5,
        4,
        3,
        None,
    )
    for raw in (b"not json {{{", b'{"cron": 5, "queue": "q"}', b"[1]", "{}"):
        bad = stored("b", raw, 5, 4, 3)
        assert bad.error is not None
        assert "PUT it again or DELETE it" in bad.error
        assert fault(bad) == bad.error
        assert upcoming(bad, 5) == []
    assert stored("c", b'{"cron": 5, "queue": "q"}', 5, None, None).spec.queue == "q"
