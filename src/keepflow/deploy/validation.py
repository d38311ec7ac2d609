"""The validation pipeline every script passes before it is deployed (SPEC §11.3).

1. parse with the real engine + load-time rules of SPEC §2 on the engine's manifest;
2. static checks (tree-sitter): terminal mutation, shared globals, phase calls, tools exist;
   a warning for each mutation whose outcome could not be verified (no reconcile strategy).
(3. permission compilation, 4. dry run, 5. LLM review come with the Planner/Maintainer.)

Each stage yields structured findings (rule, message, line) that people read and that are fed
back to an LLM on retry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from keepflow.connectors.base import ToolSpec
from keepflow.connectors.config import Connections
from keepflow.errors import ScriptError
from keepflow.policies import PolicyBook
from keepflow.sandbox.findings import Finding, has_errors
from keepflow.sandbox.manifest_rules import check_manifest
from keepflow.sandbox.pool import SandboxPool
from keepflow.sandbox.static import analyze
from keepflow.sandbox.static.analyze import StaticCall
from keepflow.workflow import WorkflowManifest, build_manifest


@dataclass
class Validation:
    findings: list[Finding] = field(default_factory=list)
    manifest: WorkflowManifest | None = None
    static_calls: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not has_errors(self.findings)


def validate_script(source: str, pool: SandboxPool, connections: Connections,
                    policies: PolicyBook | None = None) -> Validation:
    """Stages 1 and 2; ``policies`` give the limits a script must fit (e.g. the shortest
    schedule interval), for the workflow the script names."""
    out = Validation()
    try:
        raw = pool.describe(source)
    except ScriptError as exc:
        rule = "syntax" if exc.js_name == "SyntaxError" else "load-error"
        out.findings.append(Finding(rule=rule, severity="error", message=exc.message,
                                    line=exc.line, column=exc.column))
        return out
    book = policies or PolicyBook()
    name = raw.get("name")
    policy = book.for_workflow(name) if isinstance(name, str) and name else book.system
    out.findings.extend(check_manifest(
        raw, source, min_interval_seconds=policy.limits.min_interval_seconds))
    tool_kinds = {c: {t: k.value for t, k in tools.items()}
                  for c, tools in connections.tool_kinds().items()}
    report = analyze(source, tool_kinds)
    out.findings.extend(report.findings)
    out.findings.extend(check_reconcile(report.calls, connections.tool_specs()))
    out.static_calls = list(report.calls)
    out.findings.sort(key=lambda f: (f.line or 0, f.column or 0, f.rule))
    if not has_errors(out.findings):
        used = sorted({c.connection for c in report.calls if c.connection})
        out.manifest = replace(build_manifest(raw), connections=tuple(used))
    return out


def check_reconcile(calls: Iterable[StaticCall],
                    specs: Mapping[str, Mapping[str, ToolSpec]]) -> list[Finding]:
    """A warning for every mutation that keepflow could not verify after an uncertain outcome
    (SPEC §6): the deploy goes ahead, but such a run will stop and ask a person."""
    found = []
    for call in calls:
        spec = specs.get(call.connection, {}).get(call.tool)
        if call.kind != "mutate" or spec is None:
            continue
        display = f"ctx.{call.connection}.{call.tool}"
        if not spec.reconcile:
            why = f"its connector cannot check whether a {call.tool} took effect"
        elif spec.reconcile_param and call.keys is not None and \
                spec.reconcile_param not in call.keys:
            why = f"the call gives no `{spec.reconcile_param}`, so keepflow cannot check it"
        else:
            continue
        found.append(Finding(
            rule="no-reconcile", severity="warning", line=call.line, column=call.column,
            message=(f"{display} has no reconcile strategy: {why}. If its outcome is ever "
                     "uncertain (e.g. a timeout after the request was sent), the run stops and "
                     "a person must check the target system and answer (keepflow never "
                     f"repeats it blindly). See {spec.reconcile_doc}")))
    return found
