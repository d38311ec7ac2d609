"""Load-time rules on the engine's workflow manifest (SPEC §2, §7.2; pipeline stage 1, §11.3).

The sandbox evaluates a script in the real JS engine and describes the ``Keep.workflow({...})``
definition it registered as a JSON *manifest*. :func:`check_manifest` enforces the load-time
rules on it and points each finding at the key or string literal in the source (found with
tree-sitter; ``None`` when the value was computed). :func:`build_manifest` then turns a
manifest without errors into the typed :class:`WorkflowManifest` the runtime uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from keepflow.sandbox.findings import Finding, error, sort_findings, warning
from keepflow.sandbox.static.tree import Node, Script

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
PHASE_SIGNATURES = {
    "prepare": "async prepare(ctx, state)",
    "mutate": "async mutate(ctx, prepared) (it may make no mutation call)",
    "next": "async next(ctx, prepared, mutation)",
}


# ---- typed, validated view ----------------------------------------------------------------


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
            raise ScheduleError(f"interval {_show(value)} is invalid; {SCHEDULE_HELP}", "interval")
        seconds = int(match[1][:12]) * UNIT_SECONDS[match[2]]
        if len(match[1]) > 12 or seconds > MAX_INTERVAL_SECONDS:
            raise ScheduleError(f"interval {_show(value)} is longer than 366 days; use a cron "
                                'schedule for rarer runs, e.g. { cron: "0 9 1 1 *" }', "interval")
        return Schedule("interval", interval_seconds=seconds)
    if keys in ({"cron"}, {"cron", "tz"}):
        expr, tz = raw["cron"], raw.get("tz")
        if not isinstance(expr, str) or len(expr.split()) != 5:
            raise ScheduleError(
                f"cron {_show(expr)} must be a string of 5 fields (minute hour day month "
                'weekday), e.g. "0 9 * * 1-5"',
                "cron",
            )
        try:
            CronSim(expr, datetime(2000, 1, 1))
        except (CronSimError, ValueError) as exc:
            raise ScheduleError(f"cron {_show(expr)} is not valid: {exc}", "cron") from None
        if tz is not None:
            if not isinstance(tz, str) or not tz:
                raise ScheduleError(f"tz {_show(tz)} must be an IANA zone name", "tz")
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise ScheduleError(
                    f"tz {_show(tz)} is not a known IANA time zone; use a name such as "
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


# ---- load-time rules ----------------------------------------------------------------------


def check_manifest(manifest: Mapping[str, Any], source: str, *,
                   min_interval_seconds: int = DEFAULT_MIN_INTERVAL_SECONDS) -> list[Finding]:
    """Load-time rules of SPEC §2 on the engine's manifest of ``source``."""
    return _Checker(manifest, Script(source), min_interval_seconds).run()


class _Checker:
    def __init__(self, manifest: Mapping[str, Any], script: Script,
                 min_interval_seconds: int) -> None:
        self.m = manifest
        self.script = script
        self.min_interval = min_interval_seconds
        self.findings: list[Finding] = []

    def at(self, path: Sequence[str | int], *, key: bool = True) -> tuple[int | None, int | None]:
        node = self.script.find(path, key=key)
        return self.script.position(node) if node is not None else (None, None)

    def error(
        self, rule: str, message: str, path: Sequence[str | int] = (), *, key: bool = True
    ) -> None:
        self.findings.append(error(rule, message, *self.at(path, key=key)))

    def run(self) -> list[Finding]:
        registered = self.m.get("registered")
        if registered != 1:
            calls = self.script.keep_workflow_calls()
            pos = self.script.position(calls[1]) if len(calls) > 1 else (None, None)
            msg = (
                f"Keep.workflow(...) is called {registered} times; a script defines exactly one "
                "workflow (docs/execution-model.md#handlers-and-phases): keep one `export default "
                "Keep.workflow({...})`"
                if isinstance(registered, int) and registered > 1
                else "the script never calls Keep.workflow(...); it must end with `export "
                "default Keep.workflow({ name, topics, producers, consumers })` "
                "(docs/execution-model.md#handlers-and-phases)"
            )
            return [error("registration", msg, *pos)]
        for problem in self.m.get("problems") or []:
            first = str(problem).split(" ", 1)[0]
            self.error("definition", f"workflow definition: {problem} "
                                     f"(docs/execution-model.md#handlers-and-phases)", [first])
        self.check_name()
        topics = self.check_topics()
        self.check_producers()
        self.check_consumers(topics)
        self.check_handler_names()
        return sort_findings(self.findings)

    def check_name(self) -> None:
        name, kind = self.m.get("name"), self.m.get("nameType")
        if not isinstance(name, str):
            missing = kind in (None, "undefined", "string")
            self.error(
                "workflow-name",
                (
                    "the workflow definition has no name"
                    if missing
                    else f"the workflow name must be a string, not a {kind}"
                )
                + '; add `name: "invoice-rows"` (a short kebab-case name)',
                ["name"],
            )
        elif not NAME_RE.fullmatch(name):
            self.error(
                "workflow-name",
                f'workflow name "{name}" is invalid: use {NAME_RULE} '
                '(the same rule as topic names), e.g. "invoice-rows"',
                ["name"],
                key=False,
            )

    def check_topics(self) -> set[str] | None:
        topics = self.m.get("topics")
        if not isinstance(topics, dict):
            self.error(
                "topics",
                f"topics must be an object of topic names, not "
                f"{self.m.get('topicsType', 'undefined')}; declare every topic like "
                '`topics: { "email.received": {} }` (docs/execution-model.md#handlers-and-phases)',
                ["topics"],
            )
            return None
        for topic in topics:
            if not NAME_RE.fullmatch(topic):
                self.error(
                    "topic-name",
                    f'topic name "{topic}" is invalid: use {NAME_RULE} '
                    '(docs/execution-model.md#handlers-and-phases), e.g. "email.received"',
                    ["topics", topic],
                )
        return set(topics)

    def check_producers(self) -> None:
        for name, spec in _mapping(self.m.get("producers")).items():
            form = spec.get("form") if isinstance(spec, dict) else None
            if form == "scheduled":
                try:
                    schedule = parse_schedule(spec.get("schedule"))
                except ScheduleError as exc:
                    path = ["producers", name, "schedule", *([exc.key] if exc.key else [])]
                    self.error("schedule", f"producer {name}: {exc}", path)
                    continue
                every = schedule.interval_seconds
                if every is not None and every < self.min_interval:
                    self.error(
                        "schedule",
                        f"producer {name}: interval {every}s is shorter than the minimum of "
                        f"{self.min_interval}s (policy limits.min_interval_seconds); poll less "
                        "often, or ask the operator to lower the limit "
                        "(docs/security.md#limits)",
                        ["producers", name, "schedule", "interval"])
            elif form != "function":
                problem = spec.get("problem") if isinstance(spec, dict) else None
                self.error(
                    "producer-form",
                    f"producer {name}: "
                    f"{problem or 'not a function or {schedule, handler}'}; a producer "
                    "is either a function (manual trigger only) or { schedule: { "
                    'interval: "5m" }, async handler(ctx, state) {...} } '
                    "(docs/execution-model.md#handlers-and-phases)",
                    ["producers", name],
                )

    def check_consumers(self, topics: set[str] | None) -> None:
        consumers_of: dict[str, list[tuple[str, int]]] = {}
        for name, raw in _mapping(self.m.get("consumers")).items():
            spec = _mapping(raw)
            where = ["consumers", name]
            if spec.get("viaConsumer") is False:
                self.findings.append(
                    warning(
                        "consumer-wrapper",
                        f"consumer {name} is a plain object; wrap it in "
                        "Keep.consumer({...}) so the host recognises it "
                        "(docs/execution-model.md#handlers-and-phases)",
                        *self.at(where),
                    )
                )
            phases = _mapping(spec.get("phases"))
            for phase, signature in PHASE_SIGNATURES.items():
                kind = phases.get(phase, "undefined")
                if kind != "function":
                    present = kind != "undefined"
                    self.error(
                        "consumer-phases",
                        (
                            f"consumer {name}'s {phase} is a {kind}, not a function"
                            if present
                            else f"consumer {name} has no {phase} function"
                        )
                        + f"; define {signature} — every consumer has prepare, mutate and next "
                        "(docs/execution-model.md#handlers-and-phases)",
                        [*where, phase] if present else where,
                    )
            subscribe = spec.get("subscribe")
            if not isinstance(subscribe, list):
                self.error(
                    "consumer-subscribe",
                    f"consumer {name} must declare `subscribe: "
                    '["topic", ...]`, a non-empty array of declared topic names, not '
                    f"{spec.get('subscribeType', 'undefined')} "
                    f"(docs/execution-model.md#handlers-and-phases)",
                    where,
                )
                continue
            if not subscribe:
                self.error(
                    "consumer-subscribe",
                    f"consumer {name} subscribes to no topic; "
                    "list the topics it consumes in subscribe "
                    "(docs/execution-model.md#handlers-and-phases)",
                    [*where, "subscribe"],
                )
            for i, topic in enumerate(subscribe):
                if not isinstance(topic, str):
                    self.error(
                        "consumer-subscribe",
                        f"consumer {name}: subscribe entry "
                        f"{_show(topic)} is not a topic name string",
                        [*where, "subscribe", i],
                    )
                elif topics is not None and topic not in topics:
                    self.error(
                        "undeclared-topic",
                        f'consumer {name} subscribes to "{topic}", '
                        "which is not declared in topics (declared: "
                        f"{', '.join(sorted(topics)) or 'none'}); declare it in topics or "
                        "fix the name (docs/execution-model.md#handlers-and-phases)",
                        [*where, "subscribe", i],
                    )
                elif all(c != name for c, _ in consumers_of.get(topic, [])):
                    consumers_of.setdefault(topic, []).append((name, i))
        for topic in sorted(topics or ()):
            found = consumers_of.get(topic, [])
            if not found:
                self.error(
                    "topic-consumers",
                    f'topic "{topic}" has no consumer; events '
                    "published to it would never be processed — add a consumer or "
                    "remove the topic (docs/execution-model.md#handlers-and-phases)",
                    ["topics", topic],
                )
            for other, index in found[1:]:
                self.error(
                    "topic-consumers",
                    f'topic "{topic}" is consumed by both '
                    f"{found[0][0]} and {other}; each topic must have exactly one "
                    "consumer (docs/execution-model.md#handlers-and-phases) — merge them, or "
                    "publish to a separate topic for "
                    "each",
                    ["consumers", other, "subscribe", index],
                )

    def check_handler_names(self) -> None:
        """Unique across producers and consumers, and no duplicate keys in the source (the
        engine never sees those: in JS the last duplicate key silently wins)."""
        occurrences: list[tuple[str, str, Node | None]] = []
        for group in ("producers", "consumers"):
            kind = group[:-1]
            obj = self.script.object_value(self.script.find([group], key=False))
            members = [m for m in self.script.members(obj) if m.key] if obj is not None else []
            occurrences += [(m.key, kind, m.key_node) for m in members if m.key]
            in_source = {m.key for m in members}
            occurrences += [
                (n, kind, None) for n in _mapping(self.m.get(group)) if n not in in_source
            ]
        for group in ("producers", "consumers"):
            for name in _mapping(self.m.get(group)):
                if not HANDLER_RE.fullmatch(name):
                    self.error(
                        "handler-name",
                        f"{group[:-1]} name {json.dumps(name)} is invalid: a handler name is a "
                        "JavaScript identifier of at most 64 characters (letters, digits, _ "
                        "and $, not starting with a digit), e.g. pollInbox",
                        [group, name])
        first: dict[str, tuple[str, Node | None]] = {}
        for name, kind, node in occurrences:
            if name not in first:
                first[name] = (kind, node)
                continue
            other, other_node = first[name]
            line = f" (line {self.script.line(other_node)})" if other_node is not None else ""
            pos = self.script.position(node) if node is not None else (None, None)
            clash = (
                f"{kind} {name} is defined twice{line.replace('(line', '(first at line')}; "
                "in JavaScript the second definition silently replaces the first"
                if kind == other
                else f"handler name {name} is used by a {other}{line} and again by a {kind}"
            )
            self.findings.append(
                error(
                    "handler-name-clash",
                    f"{clash}; handler names must be unique in a workflow "
                    f"(docs/execution-model.md#handlers-and-phases) — rename one",
                    *pos,
                )
            )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _show(value: Any) -> str:
    """A script's value quoted in a message, at most 80 characters of it."""
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "…" + text[-2:]
