"""Load-time rules on the engine's workflow manifest (SPEC §2, §7.2; pipeline stage 1, §11.3).

The sandbox evaluates a script in the real JS engine and describes the ``Keep.workflow({...})``
definition it registered as a JSON *manifest*. :func:`check_manifest` enforces the load-time
rules on it and points each finding at the key or string literal in the source (found with
tree-sitter; ``None`` when the value was computed). ``keepflow.workflow.build_manifest`` then
turns a manifest without errors into the typed manifest the runtime uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from keepflow.sandbox.findings import Finding, error, sort_findings, warning
from keepflow.sandbox.static.tree import Node, Script
from keepflow.workflow import (
    DEFAULT_MIN_INTERVAL_SECONDS,
    HANDLER_RE,
    NAME_RE,
    NAME_RULE,
    ScheduleError,
    parse_schedule,
    show_value,
)

PHASE_SIGNATURES = {
    "prepare": "async prepare(ctx, state)",
    "mutate": "async mutate(ctx, prepared) (it may make no mutation call)",
    "next": "async next(ctx, prepared, mutation)",
}


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
                        f"{show_value(topic)} is not a topic name string",
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


