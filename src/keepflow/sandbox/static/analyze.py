"""Static analysis of a workflow script: stage 2 of the validation pipeline (SPEC §11.3).

``analyze(source, tool_kinds)`` parses the script with tree-sitter, finds the handlers in
``export default Keep.workflow({...})`` and reports :class:`Finding` values (syntax, default
export, terminal mutation, phase rules, unknown tools, shared globals, dynamic ctx access,
code built from strings) plus
the statically visible tool calls with their literal scopes, the input of permission
compilation (SPEC §9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from keepflow.sandbox.findings import Finding, error, has_errors, sort_findings
from keepflow.sandbox.static.ctxcalls import Collector, CtxCall, ctx_parameter
from keepflow.sandbox.static.dynamic import check_dynamic_code
from keepflow.sandbox.static.handlers import HandlerFn, Phase, find_handlers
from keepflow.sandbox.static.phase_calls import check_phase
from keepflow.sandbox.static.shared import check_shared_globals
from keepflow.sandbox.static.terminal_mutation import check_mutate
from keepflow.sandbox.static.tree import Node, Script, first_argument, unwrap

MAX_SYNTAX_FINDINGS = 3


@dataclass(frozen=True)
class StaticCall:
    """One statically visible ``ctx.<connection>.<tool>(...)`` call of a handler."""

    handler: str
    phase: Phase
    connection: str
    tool: str
    kind: str  # "read" | "read_by_id" | "mutate"
    line: int
    column: int
    #: Literal scope values: ``host`` (from a literal ``url``), ``table`` (from ``table``).
    scope: Mapping[str, str] = field(default_factory=dict)
    #: Literal string properties of the first (object) argument, e.g. ``{"to": "a@b.c"}``.
    literals: Mapping[str, str] = field(default_factory=dict)
    #: Helper functions the call is reached through, outermost first.
    via: tuple[str, ...] = ()
    #: The property names of the first argument when it is an object literal without a
    #: spread (``None``: not statically known).
    keys: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "handler": self.handler,
            "phase": self.phase,
            "connection": self.connection,
            "tool": self.tool,
            "kind": self.kind,
            "line": self.line,
            "column": self.column,
            "scope": dict(self.scope),
            "literals": dict(self.literals),
            "via": list(self.via),
        }


@dataclass
class StaticReport:
    calls: list[StaticCall] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": [c.to_dict() for c in self.calls],
            "findings": [f.to_dict() for f in self.findings],
        }


#: Params whose literal value is the call's scope in that dimension.
_SCOPE_PARAMS = {"table": "table", "channel": "channel", "repo": "repository",
                 "spreadsheet": "spreadsheet", "database": "database", "folder": "folder"}


def analyze(source: str, tool_kinds: Mapping[str, Mapping[str, str]]) -> StaticReport:
    """Statically check a script. ``tool_kinds``: connection -> tool -> kind."""
    script = Script(source)
    syntax = check_syntax(script)
    if syntax:  # the rest would be guesses on a broken tree
        return StaticReport(findings=syntax)
    definition = find_handlers(script)
    findings = list(definition.findings)
    calls: list[StaticCall] = []
    collector = Collector(script, tool_kinds)
    for handler in definition.handlers:
        ctx, problem = ctx_parameter(script, handler.func, handler.label)
        if problem is not None:
            findings.append(problem)
        # Even without a ctx name, `arguments[0]` reaches the ctx (ctxcalls: arguments).
        facts = collector.analyze(handler.func, ctx)
        findings.extend(facts.findings)
        findings.extend(check_phase(script, handler, facts.calls, definition.topics))
        calls.extend(_static_call(script, handler, c) for c in facts.calls if c.target == "tool")
        if handler.phase == "mutate":
            direct = {c.node: c.display for c in facts.calls if c.kind == "mutate"}

            def describe(site: Node, direct: Mapping[Node, str] = direct) -> str:
                if site in direct:
                    return direct[site]
                callee = site.child_by_field_name("function")
                name = script.snippet(callee, 40) if callee is not None else "a call"
                return f"`{name}(...)` (which makes a mutation)"

            findings.extend(check_mutate(script, handler.func, facts.mutations, describe))
            for helper, helper_facts in facts.helpers:
                findings.extend(check_mutate(script, helper, helper_facts.mutations, describe))
    findings.extend(check_shared_globals(script))
    findings.extend(check_dynamic_code(script))  # the whole script: top-level code runs too
    calls.sort(key=lambda c: (c.line, c.column, c.handler, c.phase))
    return StaticReport(calls=calls, findings=sort_findings(findings))


def check_syntax(script: Script) -> list[Finding]:
    """tree-sitter ERROR/MISSING nodes (a fallback: the engine compiles the script too)."""
    if not script.root.has_error:
        return []
    findings: list[Finding] = []
    stack = [script.root]
    while stack and len(findings) < MAX_SYNTAX_FINDINGS:
        node = stack.pop()
        if node.is_missing:
            findings.append(
                error(
                    "syntax",
                    f"syntax error: missing `{node.type}` here; the script must be valid "
                    "JavaScript (an ES2020 module). Add it or fix the statement",
                    *script.position(node),
                )
            )
        elif node.type == "ERROR":
            findings.append(
                error(
                    "syntax",
                    f"syntax error near `{script.snippet(node, 40)}`; the script must be valid "
                    "JavaScript (an ES2020 module). Fix this statement",
                    *script.position(node),
                )
            )
        else:
            stack.extend(reversed([c for c in node.children if c.has_error or c.is_missing]))
    return findings


def _static_call(script: Script, handler: HandlerFn, call: CtxCall) -> StaticCall:
    assert call.connection is not None
    assert call.tool is not None
    line, column = script.position(call.node)
    literals: dict[str, str] = {}
    scope: dict[str, str] = {}
    arg = unwrap(first_argument(call.node))
    url_node: Node | None = arg if arg is not None and arg.type != "object" else None
    names: list[str] = []
    known = arg is not None and arg.type == "object"
    if arg is not None and arg.type == "object":
        for member in script.members(arg):
            if member.key is None:  # a spread or a computed key: the keys are not known
                known = False
                continue
            names.append(member.key)
            if member.value.type == "method_definition":
                continue
            value = script.constant_string(member.value)
            if value is not None:
                literals[member.key] = value
            if member.key == "url":
                url_node = member.value
    host = _literal_host(script.constant_string(url_node), script.template_prefix(url_node))
    if host:
        scope["host"] = host
    # A literal param that names a scope dimension (SPEC §9) narrows it: the param and the
    # dimension share a name, except github's ``repo`` (dimension ``repository``).
    for param, dimension in _SCOPE_PARAMS.items():
        if param in literals:
            scope[dimension] = literals[param]
    return StaticCall(
        handler=handler.handler,
        phase=handler.phase,
        connection=call.connection,
        tool=call.tool,
        kind=call.kind or "",
        line=line,
        column=column,
        scope=scope,
        literals=literals,
        via=call.via,
        keys=tuple(names) if known else None,
    )


def _literal_host(full: str | None, prefix: str | None) -> str | None:
    """The host of a literal URL, or of a template whose literal prefix reaches past the
    host (so a substitution cannot change it): ``https://api.x.com/${id}`` yes,
    ``https://api.x.com${p}`` no."""
    if full is not None:
        prefix = full
    elif not prefix or not any(sep in prefix.partition("://")[2] for sep in "/?#"):
        return None
    if "://" not in prefix:
        return None
    try:
        host = urlsplit(prefix).hostname
    except ValueError:
        return None
    return host or None
