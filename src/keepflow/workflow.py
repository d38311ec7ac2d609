"""What a workflow is (SPEC §2): its name, topics, producers with their schedules, and
consumers with their subscriptions — the typed manifest every layer uses (the store keeps it
with each version, the scheduler fires from it, the executor runs its handlers).

A script's manifest is produced by the sandbox, checked by ``keepflow.sandbox.manifest_rules``
and turned into :class:`WorkflowManifest` by :func:`build_manifest` at deploy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
NAME_RULE = (
    '1–64 characters of lowercase letters, digits, ".", "_" and "-", starting with a letter or '
    "digit"
)
#: Handler names are JavaScript identifiers: they are printed in logs, the CLI and the UI, and
#: typed as CLI arguments, so nothing else (no control characters, no spaces) is allowed.
HANDLER_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}")
INTERVAL_RE = re.compile(r"([1-9][0-9]*)([smhd])")
#: The longest interval: beyond it a cron schedule says what is meant (and dates stay in range).
MAX_INTERVAL_SECONDS = 366 * 86_400
#: The shortest producer interval allowed unless a policy says otherwise (docs/security.md).
DEFAULT_MIN_INTERVAL_SECONDS = 30
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SCHEDULE_HELP = (
    'a schedule is { interval: "30s" | "5m" | "2h" | "1d" } (a positive integer and a unit '
    's/m/h/d) or { cron: "<minute hour day month weekday>", tz: "<IANA zone, optional>" }'
)


class ScheduleError(ValueError):
    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key  # the schedule key the problem is about, for locating it


@dataclass(frozen=True)
class Schedule:
    kind: Literal["interval", "cron"]
    interval_seconds: int | None = None
    cron: str | None = None
    tz: str | None = None  # cron only; None: not given (the scheduler's default zone)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "interval":
            return {"kind": "interval", "interval_seconds": self.interval_seconds}
        return {"kind": "cron", "cron": self.cron, "tz": self.tz}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        if data.get("kind") == "interval":
            return cls("interval", interval_seconds=int(data["interval_seconds"]))
        if data.get("kind") == "cron":
            return cls("cron", cron=str(data["cron"]), tz=data.get("tz"))
        raise ValueError(f"not a stored schedule: {data!r}")


def parse_schedule(raw: Any) -> Schedule:
    """A script's ``schedule`` value -> :class:`Schedule`; raises :class:`ScheduleError`."""
    if not isinstance(raw, dict):
        raise ScheduleError(f"the schedule must be an object; {SCHEDULE_HELP}")
    keys = set(raw)
    if keys == {"interval"}:
        value = raw["interval"]
        match = INTERVAL_RE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ScheduleError(f"interval {show_value(value)} is invalid; {SCHEDULE_HELP}",
                                "interval")
        seconds = int(match[1][:12]) * UNIT_SECONDS[match[2]]
        if len(match[1]) > 12 or seconds > MAX_INTERVAL_SECONDS:
            raise ScheduleError(f"interval {show_value(value)} is longer than 366 days; use a cron "
                                'schedule for rarer runs, e.g. { cron: "0 9 1 1 *" }', "interval")
        return Schedule("interval", interval_seconds=seconds)
    if keys in ({"cron"}, {"cron", "tz"}):
        expr, tz = raw["cron"], raw.get("tz")
        if not isinstance(expr, str) or len(expr.split()) != 5:
            raise ScheduleError(
                f"cron {show_value(expr)} must be a string of 5 fields (minute hour day month "
                'weekday), e.g. "0 9 * * 1-5"',
                "cron",
            )
        try:
            CronSim(expr, datetime(2000, 1, 1))
        except (CronSimError, ValueError) as exc:
            raise ScheduleError(f"cron {show_value(expr)} is not valid: {exc}", "cron") from None
        if tz is not None:
            if not isinstance(tz, str) or not tz:
                raise ScheduleError(f"tz {show_value(tz)} must be an IANA zone name", "tz")
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise ScheduleError(
                    f"tz {show_value(tz)} is not a known IANA time zone; use a name such as "
                    '"Europe/Berlin" or "UTC"',
                    "tz",
                ) from None
        return Schedule("cron", cron=" ".join(expr.split()), tz=tz)
    extra = sorted(keys - {"interval", "cron", "tz"})
    detail = f"unknown key(s) {', '.join(extra)}" if extra else f"keys {', '.join(sorted(keys))}"
    raise ScheduleError(f"the schedule has {detail or 'no keys'}; {SCHEDULE_HELP}")


@dataclass(frozen=True)
class ProducerSpec:
    schedule: Schedule | None = None  # None: manual trigger only


@dataclass(frozen=True)
class ConsumerSpec:
    subscribe: tuple[str, ...]


@dataclass(frozen=True)
class WorkflowManifest:
    name: str
    topics: tuple[str, ...]
    producers: Mapping[str, ProducerSpec] = field(default_factory=dict)
    consumers: Mapping[str, ConsumerSpec] = field(default_factory=dict)
    #: The connections the script calls (``ctx.<connection>.<tool>``), found at deploy by
    #: static analysis: a run refuses to start when one is no longer configured.
    connections: tuple[str, ...] = ()

    FORMAT = 1

    def consumer_of(self, topic: str) -> str:
        """The one consumer of a topic (SPEC §2)."""
        for name, spec in self.consumers.items():
            if topic in spec.subscribe:
                return name
        raise KeyError(topic)

    @property
    def handler_names(self) -> tuple[str, ...]:
        return (*self.producers, *self.consumers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "name": self.name,
            "topics": list(self.topics),
            "producers": {
                n: {"schedule": p.schedule.to_dict() if p.schedule else None}
                for n, p in self.producers.items()
            },
            "consumers": {n: {"subscribe": list(c.subscribe)} for n, c in self.consumers.items()},
            "connections": list(self.connections),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowManifest:
        if data.get("format") != cls.FORMAT:
            raise ValueError(f"unsupported manifest format {data.get('format')!r}")
        return cls(
            name=str(data["name"]),
            topics=tuple(data["topics"]),
            producers={
                n: ProducerSpec(Schedule.from_dict(p["schedule"]) if p["schedule"] else None)
                for n, p in data["producers"].items()
            },
            consumers={
                n: ConsumerSpec(tuple(c["subscribe"])) for n, c in data["consumers"].items()
            },
            connections=tuple(data.get("connections", ())),  # absent before it was recorded
        )


def build_manifest(manifest: Mapping[str, Any]) -> WorkflowManifest:
    """The typed view of an engine manifest. Call only when :func:`check_manifest` reported
    no errors; raises ``ValueError`` if the manifest is malformed anyway."""
    try:
        producers = {
            name: ProducerSpec(parse_schedule(p["schedule"]) if p["form"] == "scheduled" else None)
            for name, p in manifest["producers"].items()
        }
        consumers = {
            name: ConsumerSpec(tuple(dict.fromkeys(c["subscribe"])))
            for name, c in manifest["consumers"].items()
        }
        return WorkflowManifest(
            str(manifest["name"]), tuple(manifest["topics"]), producers, consumers
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed workflow manifest: {exc!r}") from exc


def show_value(value: Any) -> str:
    """A script's value quoted in a message, at most 80 characters of it."""
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "…" + text[-2:]
