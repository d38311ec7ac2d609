"""When producers fire (SPEC §7.2): intervals, cron with time zones across both DST changes,
missed ticks collapsing, and the "next is after now" guard. Pure, exact, no sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from keepflow.scheduler.timing import describe, first_due, following, next_fire
from keepflow.workflow import Schedule

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(schedule: Schedule, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = next_fire(schedule, t)
        out.append(t)
    return out


def test_interval_is_anchored_on_the_last_fire() -> None:
    s = Schedule("interval", interval_seconds=300)
    assert fires(s, utc(2026, 1, 1, 12), 3) == [utc(2026, 1, 1, 12, 5), utc(2026, 1, 1, 12, 10),
                                                utc(2026, 1, 1, 12, 15)]


def test_daily_cron_in_the_spring_gap_fires_once_at_the_next_valid_time() -> None:
    """2026-03-29 02:30 does not exist in Berlin: the job runs at 03:00 CEST, once."""
    s = Schedule("cron", cron="30 2 * * *", tz="Europe/Berlin")
    got = [t.astimezone(BERLIN) for t in fires(s, utc(2026, 3, 28, 12), 3)]
    assert [t.isoformat() for t in got] == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]


def test_daily_cron_in_the_autumn_overlap_fires_once() -> None:
    """2026-10-25 02:30 happens twice in Berlin: the job runs once (the first)."""
    s = Schedule("cron", cron="30 2 * * *", tz="Europe/Berlin")
    got = fires(s, utc(2026, 10, 24, 12), 3)
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]


def test_hourly_cron_across_both_dst_changes_keeps_real_time_hourly() -> None:
    s = Schedule("cron", cron="0 * * * *", tz="Europe/Berlin")
    spring = fires(s, utc(2026, 3, 28, 23, 30), 3)
    assert spring == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)]
    assert [t.astimezone(BERLIN).hour for t in spring] == [1, 3, 4]  # 02:00 does not exist
    autumn = fires(s, utc(2026, 10, 24, 22, 30), 4)
    assert autumn == [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 1),
                      utc(2026, 10, 25, 2)]
    assert [t.astimezone(BERLIN).hour for t in autumn] == [1, 2, 2, 3]  # 02:00 twice: real hours


def test_cron_without_tz_is_utc() -> None:
    s = Schedule("cron", cron="15 6 * * 1", tz=None)  # Mondays 06:15 UTC
    assert next_fire(s, utc(2026, 11, 27, 0)) == utc(2026, 11, 30, 6, 15)


def test_next_fire_is_strictly_after_the_instant() -> None:
    s = Schedule("cron", cron="0 12 * * *", tz="Europe/Berlin")
    at_noon = utc(2026, 6, 1, 10)  # exactly 12:00 CEST
    assert next_fire(s, at_noon) == utc(2026, 6, 2, 10)


@pytest.mark.parametrize(("last", "expected"), [
    (None, utc(2026, 1, 1, 12)),  # never fired: an interval producer is due now
    (utc(2026, 1, 1, 11, 58), utc(2026, 1, 1, 12, 3)),  # not yet due
    (utc(2025, 12, 28, 12), utc(2026, 1, 1, 12)),  # 1,152 missed ticks collapse into one
])
def test_first_due_collapses_missed_ticks(last: datetime | None, expected: datetime) -> None:
    s = Schedule("interval", interval_seconds=300)
    assert first_due(s, last, utc(2026, 1, 1, 12)) == expected


def test_first_due_of_a_new_cron_producer_is_its_next_match() -> None:
    s = Schedule("cron", cron="0 9 * * *", tz="Europe/Berlin")
    assert first_due(s, None, utc(2026, 1, 1, 12)) == utc(2026, 1, 2, 8)


def test_a_late_tick_does_not_cause_a_burst() -> None:
    s = Schedule("interval", interval_seconds=60)
    fired = utc(2026, 1, 1, 12)
    now = fired + timedelta(minutes=10, seconds=30)  # the host was busy for ten minutes
    assert following(s, fired, now) == utc(2026, 1, 1, 12, 11)


def test_describe() -> None:
    assert describe(Schedule("interval", interval_seconds=3600)) == "every 1h"
    assert describe(Schedule("interval", interval_seconds=90)) == "every 90s"
    assert describe(Schedule("cron", cron="0 * * * *", tz="Europe/Berlin")) == \
        "cron '0 * * * *' (Europe/Berlin)"
