"""The validation pipeline every script passes before it is deployed (SPEC §11.3).

1. parse with the real engine + load-time rules of SPEC §2 on the engine's manifest;
2. static checks (tree-sitter): terminal mutation, shared globals, phase calls, tools exist.
(3. permission compilation, 4. dry run, 5. LLM review come with the Planner/Maintainer.)

Each stage yields structured findings (rule, message, line) that people read and that are fed
back to an LLM on retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keepflow.connectors.config import Connections
from keepflow.errors import ScriptError
from keepflow.policies import PolicyBook
from keepflow.sandbox.findings import Finding, has_errors
from keepflow.sandbox.manifest_rules import check_manifest
from keepflow.sandbox.pool import SandboxPool
from keepflow.sandbox.static import analyze
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
    out.static_calls = list(report.calls)
    out.findings.sort(key=lambda f: (f.line or 0, f.column or 0, f.rule))
    if not has_errors(out.findings):
        out.manifest = build_manifest(raw)
    return out
