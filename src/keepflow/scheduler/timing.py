"""When producers fire (SPEC §7.2). Pure functions of a schedule and instants, all in UTC.

* ``interval``: every N seconds, anchored on the last stored fire time (no drift).
* ``cron`` with an IANA ``tz``: wall-clock times in that zone, DST-correct (cronsim fires once
  on the autumn fall-back and skips to the next valid time in the spring gap).

A next fire time is always strictly after the instant it is computed from, and ticks missed
while the host was down collapse into one fire at start-up (:func:`first_due`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim

from keepflow.workflow import Schedule

_MAX_CRON_STEPS = 10_000  # a guard: cron expressions always advance, this never triggers


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (UTC-aware in, UTC-aware out)."""
    after = after.astimezone(UTC)
    if schedule.kind == "interval":
        assert schedule.interval_seconds is not None
        return after + timedelta(seconds=schedule.interval_seconds)
    assert schedule.cron is not None
    zone = ZoneInfo(schedule.tz) if schedule.tz else UTC
    it = CronSim(schedule.cron, after.astimezone(zone))
    for _ in range(_MAX_CRON_STEPS):
        candidate = next(it).astimezone(UTC)
        if candidate > after:  # guard against a "next" that is not after now
            return candidate
    raise RuntimeError(f"cron {schedule.cron!r} did not advance past {after.isoformat()}")


def first_due(schedule: Schedule, last_fired: datetime | None, now: datetime) -> datetime:
    """When a producer is next due, on start-up or after a (re)deploy.

    Never fired: an interval producer is due now (a new automation shows it works); a cron
    producer at its next matching time. Fired before: the next fire after the last one, or
    *now* if that is already past — however many ticks were missed, they collapse into one.
    """
    if last_fired is None:
        return now if schedule.kind == "interval" else next_fire(schedule, now)
    due = next_fire(schedule, last_fired)
    return now if due <= now else due


def following(schedule: Schedule, fired: datetime, now: datetime) -> datetime:
    """The fire after ``fired`` that is still in the future: a tick processed late (the host
    was busy) does not cause a burst of catch-up ticks."""
    due = next_fire(schedule, fired)
    while due <= now:
        due = next_fire(schedule, due)
    return due


def describe(schedule: Schedule) -> str:
    if schedule.kind == "interval":
        assert schedule.interval_seconds is not None
        secs = schedule.interval_seconds
        for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
            if secs % size == 0:
                return f"every {secs // size}{unit}"
        return f"every {secs}s"
    return f"cron '{schedule.cron}' ({schedule.tz or 'UTC'})"
