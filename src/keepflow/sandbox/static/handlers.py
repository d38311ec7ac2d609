"""Find the handler functions inside ``export default Keep.workflow({...})`` (SPEC §2).

Producers are a bare function (method, ``function``, arrow) or ``{schedule, handler}``;
consumers are ``Keep.consumer({...})`` or a plain object with ``prepare``/``mutate``/``next``.
Values may be written inline or refer to top-level ``const``s and functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from keepflow.sandbox.findings import Finding, error, warning
from keepflow.sandbox.static.tree import FUNCTION_TYPES, Node, Script

Phase = Literal["producer", "prepare", "mutate", "next"]
CONSUMER_PHASES: tuple[Phase, ...] = ("prepare", "mutate", "next")


@dataclass(frozen=True)
class HandlerFn:
    """One function the host invokes: a producer, or one phase of a consumer."""

    handler: str
    phase: Phase
    func: Node
    #: Literal ``subscribe`` topics of a consumer; ``None`` for producers or when computed.
    subscribe: frozenset[str] | None = None

    @property
    def label(self) -> str:
        if self.phase == "producer":
            return f"producer {self.handler}"
        return f"consumer {self.handler}, {self.phase}"


@dataclass
class Definition:
    handlers: list[HandlerFn] = field(default_factory=list)
    #: Literal topic names declared in ``topics``; ``None`` when not statically known.
    topics: frozenset[str] | None = None
    findings: list[Finding] = field(default_factory=list)


def find_handlers(script: Script) -> Definition:
    result = Definition()
    if script.default_export() is None:
        calls = script.keep_workflow_calls()
        where = (
            f"; Keep.workflow(...) is called at line {script.line(calls[0])} but is not the "
            "default export"
            if calls
            else ""
        )
        result.findings.append(
            error(
                "default-export",
                "the script must define its workflow as `export default Keep.workflow({...})` "
                f"(docs/execution-model.md#handlers-and-phases){where}. Put the whole definition "
                f"in that one statement.",
                *(script.position(calls[0]) if calls else (1, 1)),
            )
        )
    definition = script.definition()
    if definition is None:
        if script.keep_workflow_calls():
            result.findings.append(
                _dynamic(script, script.keep_workflow_calls()[0], "the Keep.workflow argument")
            )
        return result

    topics = script.object_value(script.find(["topics"], key=False))
    if topics is not None:
        keys = [m.key for m in script.members(topics)]
        if None not in keys:
            result.topics = frozenset(k for k in keys if k is not None)

    producers = script.object_value(script.find(["producers"], key=False))
    for member in script.members(producers) if producers is not None else ():
        if member.key is None:
            result.findings.append(_dynamic(script, member.key_node, "a producer entry"))
            continue
        func = _function(script, member.value)
        if func is None:
            spec = script.object_value(member.value)
            members = script.members(spec) if spec is not None else ()
            func = _function(script, next((m.value for m in members if m.key == "handler"), None))
        if func is not None:
            result.handlers.append(HandlerFn(member.key, "producer", func))

    consumers = script.object_value(script.find(["consumers"], key=False))
    for member in script.members(consumers) if consumers is not None else ():
        if member.key is None:
            result.findings.append(_dynamic(script, member.key_node, "a consumer entry"))
            continue
        spec = script.object_value(member.value)
        if spec is None:
            continue  # the manifest rules report malformed consumers
        phases = {m.key: m.value for m in script.members(spec) if m.key is not None}
        subscribe = _literal_strings(script, phases.get("subscribe"))
        for phase in CONSUMER_PHASES:
            func = _function(script, phases.get(phase))
            if func is not None:
                result.handlers.append(HandlerFn(member.key, phase, func, subscribe))
    return result


def _function(script: Script, value: Node | None) -> Node | None:
    if value is None:
        return None
    if value.type == "method_definition":
        return value
    resolved = script.resolve(value)
    return resolved if resolved is not None and resolved.type in FUNCTION_TYPES else None


def _literal_strings(script: Script, value: Node | None) -> frozenset[str] | None:
    array = script.resolve(value)
    if array is None or array.type != "array":
        return None
    items = [c for c in array.named_children if c.type != "comment"]
    strings = [script.constant_string(c) for c in items]
    if any(s is None for s in strings):
        return None
    return frozenset(s for s in strings if s is not None)


def _dynamic(script: Script, node: Node, what: str) -> Finding:
    return warning(
        "dynamic-definition",
        f"{what} is computed at run time, so its handlers cannot be checked statically; "
        "write the workflow definition as an object literal with literal keys",
        *script.position(node),
    )
