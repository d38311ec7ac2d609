"""Collect every ``ctx`` call a handler can make (SPEC §4–§5, §9, §11.3).

Starting from the handler's first parameter (whatever it is called), every use of that name is
classified: ``ctx.publish/peek/getByIds/log(...)``, ``ctx.<connection>.<tool>(...)``, ``ctx``
passed to a helper function (followed into local and top-level functions), or something the
analysis cannot see through (``ctx[name]``, aliases, destructuring) which becomes a warning.

``arguments`` reaches the same value: ``arguments[0]`` of a handler *is* its ctx (the host
passes ctx first; in a module, strict mode never links ``arguments`` to the parameters). So
``arguments[i]``, where ``i`` is the literal position of ctx, is analyzed exactly like the ctx
name (the phase rules, the terminal-mutation rule and permission compilation all apply), and
``...arguments`` spread into a helper call is followed like passing ctx; every other use that
can reach ctx (``arguments[k]``, ``Array.from(arguments)``, ``const a = arguments``) warns like
an alias. ``arguments`` belongs to the nearest non-arrow function, so inside an arrow function
it is the enclosing function's, and an arrow handler has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from keepflow.sandbox.findings import Finding, error, warning
from keepflow.sandbox.static.tree import (
    FUNCTION_TYPES,
    Node,
    Script,
    await_operand,
    first_argument,
    parameters,
    unwrap,
    walk,
)

Target = Literal["tool", "publish", "peek", "getByIds"]
TOPIC_CALLS: tuple[Target, ...] = ("publish", "peek", "getByIds")
#: ``ctx`` members that are not connections. ``log`` may be called or used as ``ctx.log.info``.
CTX_BUILTINS = ("publish", "peek", "getByIds", "log")
HIDDEN_DOCS = "docs/security.md#hidden-ctx-calls"


@dataclass(frozen=True)
class CtxCall:
    node: Node  # the call_expression
    target: Target
    connection: str | None = None
    tool: str | None = None
    kind: str | None = None  # "read" | "read_by_id" | "mutate"
    topic: str | None = None  # literal topic of publish/peek/getByIds
    via: tuple[str, ...] = ()  # helper functions the call is reached through

    @property
    def display(self) -> str:
        if self.target == "tool":
            return f"ctx.{self.connection}.{self.tool}"
        return f"ctx.{self.target}"


@dataclass
class Facts:
    """What one function does with its ctx parameter (independent of the phase)."""

    calls: list[CtxCall] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    #: Calls in this function's own tree that make a mutation: direct mutating tool calls and
    #: calls of top-level helpers that make one.
    mutations: list[Node] = field(default_factory=list)
    #: Top-level helper functions reached (transitively) with the facts of their bodies.
    helpers: list[tuple[Node, Facts]] = field(default_factory=list)


def ctx_parameter(script: Script, func: Node, label: str) -> tuple[str | None, Finding | None]:
    """The name of the handler's ctx parameter, or a warning if it is destructured."""
    params = parameters(func)
    if not params:
        return None, None
    param = params[0]
    if param.type == "assignment_pattern":
        param = param.child_by_field_name("left") or param
    if param.type == "identifier":
        return script.text(param), None
    return None, warning(
        "destructured-ctx",
        f"{label} destructures its ctx parameter (`{script.snippet(param)}`); destructuring "
        "ctx hides calls from validation — name the parameter `ctx` and call "
        "ctx.<connection>.<tool>(...), ctx.publish(...) etc. directly",
        *script.position(param),
    )


class Collector:
    def __init__(self, script: Script, tool_kinds: Mapping[str, Mapping[str, str]]) -> None:
        self.script = script
        self.tool_kinds = tool_kinds
        self._memo: dict[tuple[int, str | None, int], Facts] = {}

    def analyze(self, func: Node, ctx: str | None, index: int = 0) -> Facts:
        """What ``func`` does with the ctx it receives as argument ``index``, named ``ctx``
        (``None``: no parameter names it, so only ``arguments[index]`` reaches it)."""
        key = (func.id, ctx, index)
        if key in self._memo:
            return self._memo[key]
        facts = Facts()
        self._memo[key] = facts  # a recursive helper sees the (partial) facts: no loop
        seen: set[int] = set()
        roots = self._roots(func, ctx)
        stack = list(reversed(roots)) if ctx is not None else []
        while stack:
            node = stack.pop()
            if node.type in FUNCTION_TYPES and self._rebinds(node, ctx):
                continue  # `rows.map((ctx) => ...)`: a different value named like ctx
            if node.type in ("identifier", "shorthand_property_identifier") and (
                self.script.text(node) == ctx
            ):
                self._use(func, node, facts, seen)
            stack.extend(reversed(node.named_children))
        if func.type != "arrow_function":  # an arrow function has no `arguments` of its own
            stack = list(reversed(roots))
            while stack:
                node = stack.pop()
                if node.type in FUNCTION_TYPES and node.type != "arrow_function":
                    continue  # its own `arguments`
                if node.type in ("identifier", "shorthand_property_identifier") and (
                    self.script.text(node) == "arguments"
                ):
                    self._arguments(func, index, node, facts, seen)
                stack.extend(reversed(node.named_children))
        return facts

    def _roots(self, func: Node, ctx: str | None) -> list[Node]:
        """The parameters (default values can call tools too) and the body, without the
        declaration of the ctx parameter itself."""
        roots: list[Node] = []
        for param in parameters(func):
            defaulted = param.type == "assignment_pattern"
            declared = param.child_by_field_name("left") if defaulted else param
            if declared is None or declared.type != "identifier" or (
                self.script.text(declared) != ctx
            ):
                roots.append(param)
            elif defaulted and (default := param.child_by_field_name("right")) is not None:
                roots.append(default)
        body = func.child_by_field_name("body")
        if body is not None:
            roots.append(body)
        return roots

    def _rebinds(self, func: Node, name: str | None) -> bool:
        return any(
            self.script.text(n) == name for param in parameters(func) for n in _bound(param)
        )

    # ---- one use of the ctx name --------------------------------------------------------

    def _use(self, func: Node, ident: Node, facts: Facts, seen: set[int]) -> None:
        """One expression that is ctx: the ctx name, or ``arguments[<ctx position>]``."""
        s = self.script
        if _is_declaration(ident):
            return
        ident = _outer(ident)  # `(ctx).api` is `ctx.api`
        parent = ident.parent
        assert parent is not None
        if parent.type in ("member_expression", "subscript_expression") and (
            parent.child_by_field_name("object") == ident
        ):
            name = self._member_name(parent)
            if name is None:
                facts.findings.append(self._dynamic(parent, f"`{s.snippet(parent)}`"))
            elif name in CTX_BUILTINS:
                self._builtin(name, parent, facts, seen)
            elif name in self.tool_kinds:
                self._tool(name, parent, facts, seen)
            else:
                facts.findings.append(self._unknown_connection(name, parent))
        elif parent.type == "arguments":
            self._passed(func, ident, parent, facts, seen)
        elif parent.type == "variable_declarator" and (
            (pattern := parent.child_by_field_name("name")) is not None
            and pattern.type == "object_pattern"
        ):
            facts.findings.append(
                warning(
                    "destructured-ctx",
                    f"`{s.snippet(parent)}` destructures ctx; destructuring ctx hides calls "
                    "from validation — call ctx.<connection>.<tool>(...) directly",
                    *s.position(parent),
                )
            )
        else:
            facts.findings.append(self._dynamic(ident, f"`{s.snippet(parent)}`"))

    def _member_name(self, member: Node) -> str | None:
        if member.type == "member_expression":
            prop = member.child_by_field_name("property")
            return self.script.text(prop) if prop is not None else None
        return self.script.string_value(member.child_by_field_name("index"))

    def _called(self, member: Node) -> Node | None:
        member = _outer(member)
        call = member.parent
        if (
            call is not None
            and call.type == "call_expression"
            and (call.child_by_field_name("function") == member)
        ):
            return call
        return None

    def _builtin(self, name: str, member: Node, facts: Facts, seen: set[int]) -> None:
        if name == "log":
            return
        call = self._called(member)
        if call is None:
            facts.findings.append(self._dynamic(member, f"ctx.{name} without calling it"))
            return
        if call.id in seen:
            return
        seen.add(call.id)
        target: Target = (
            "publish" if name == "publish" else "peek" if name == "peek" else "getByIds"
        )
        topic = self.script.constant_string(first_argument(call))
        facts.calls.append(CtxCall(call, target, topic=topic))

    def _tool(self, connection: str, member: Node, facts: Facts, seen: set[int]) -> None:
        s = self.script
        wrapped = _outer(member)
        outer = wrapped.parent
        if (
            outer is None
            or outer.type not in ("member_expression", "subscript_expression")
            or (outer.child_by_field_name("object") != wrapped)
        ):
            facts.findings.append(self._dynamic(member, f"ctx.{connection} used as a value"))
            return
        tool = self._member_name(outer)
        tools = self.tool_kinds[connection]
        if tool is None:
            facts.findings.append(self._dynamic(outer, f"`{s.snippet(outer)}`"))
            return
        if tool not in tools:
            facts.findings.append(
                error(
                    "unknown-tool",
                    f"ctx.{connection}.{tool} does not exist: connection {connection} has the "
                    f"tools {_listing(tools)}. Use one of those, or ask for a connection that "
                    "provides what you need",
                    *s.position(outer),
                )
            )
            return
        call = self._called(outer)
        if call is None:
            facts.findings.append(
                self._dynamic(outer, f"ctx.{connection}.{tool} used without calling it")
            )
            return
        if call.id not in seen:
            seen.add(call.id)
            kind = tools[tool]
            facts.calls.append(CtxCall(call, "tool", connection, tool, kind))
            if kind == "mutate":
                facts.mutations.append(call)

    def _passed(
        self,
        func: Node,
        ident: Node,
        args: Node,
        facts: Facts,
        seen: set[int],
        index: int | None = None,
    ) -> None:
        """``ctx`` passed as an argument (at ``index``, by default where ``ident`` is): follow
        it into the helper function if we can."""
        s = self.script
        call = args.parent
        assert call is not None
        callee = unwrap(call.child_by_field_name("function"))
        if index is None:
            items = [c for c in args.named_children if c.type != "comment"]
            index = next(i for i, c in enumerate(items) if c == ident)
        helper = self._local_function(func, callee) if callee is not None else None
        local = helper is not None
        if helper is None and callee is not None:
            resolved = s.resolve(callee)
            helper = resolved if resolved is not None and resolved.type in FUNCTION_TYPES else None
        if helper is None or callee is None:
            facts.findings.append(self._dynamic(ident, f"ctx passed to `{s.snippet(call)}`"))
            return
        params = parameters(helper)
        param = params[index] if index < len(params) else None
        if param is not None and param.type == "assignment_pattern":
            param = param.child_by_field_name("left")
        named = param is not None and param.type == "identifier"
        if any(p.type == "rest_pattern" for p in params[: index + 1]) or (
            param is not None and not named
        ):  # `function h(...all)`, `function h({ sql })`
            facts.findings.append(
                self._dynamic(ident, f"ctx passed to `{s.snippet(call)}`, which does not name it")
            )
        # No parameter at all: only `arguments[index]` can reach it (analyzed as ctx).
        sub = self.analyze(helper, s.text(param) if param is not None and named else None, index)
        name = s.text(callee)
        for c in sub.calls:
            if c.node.id not in seen:
                seen.add(c.node.id)
                facts.calls.append(c if local else replace(c, via=(name, *c.via)))
        facts.findings.extend(sub.findings)
        if local:  # its calls sit inside this function's tree
            facts.mutations.extend(m for m in sub.mutations if m not in facts.mutations)
        else:
            if sub.mutations and call not in facts.mutations:
                facts.mutations.append(call)
            if all(h != helper for h, _ in facts.helpers):
                facts.helpers.append((helper, sub))
        facts.helpers.extend(h for h in sub.helpers if all(h[0] != x for x, _ in facts.helpers))

    def _arguments(self, func: Node, index: int, node: Node, facts: Facts, seen: set[int]) -> None:
        """One use of ``func``'s own ``arguments``, whose item ``index`` is the ctx."""
        s = self.script
        wrapped = _outer(node)
        parent = wrapped.parent
        if parent is None:
            return
        if parent.type in ("member_expression", "subscript_expression") and (
            parent.child_by_field_name("object") == wrapped
        ):
            position = self._position(parent)
            if position == index:
                self._use(func, parent, facts, seen)  # `arguments[0]` is the ctx itself
            elif position is None and self._member_name(parent) != "length":
                facts.findings.append(
                    self._dynamic(parent, f"`{s.snippet(parent)}` (ctx reached through arguments)")
                )
            return  # another argument (state, prepared, ...) or `arguments.length`
        if parent.type == "spread_element" and parent.parent is not None and (
            parent.parent.type == "arguments"
        ):
            items = [c for c in parent.parent.named_children if c.type != "comment"]
            before = items[: items.index(parent)]
            if all(c.type != "spread_element" for c in before):
                self._passed(func, parent, parent.parent, facts, seen, len(before) + index)
                return
        what = parent if parent.type != "arguments" else wrapped
        facts.findings.append(
            self._dynamic(wrapped, f"`{s.snippet(what)}` (ctx reached through arguments)")
        )

    def _position(self, member: Node) -> int | None:
        """The literal index of ``arguments[0]`` / ``arguments["0"]``; ``None`` otherwise."""
        if member.type != "subscript_expression":
            return None
        index = unwrap(member.child_by_field_name("index"))
        text = self.script.text(index) if index is not None and index.type == "number" else (
            self.script.string_value(index)
        )
        if text is None or not text.isdigit() or (text != "0" and text.startswith("0")):
            return None
        return int(text)

    def _local_function(self, func: Node, callee: Node) -> Node | None:
        if callee.type != "identifier":
            return None
        name = self.script.text(callee)
        found: Node | None
        for node in walk(func):
            if node.type in ("function_declaration", "generator_function_declaration"):
                decl_name, found = node.child_by_field_name("name"), node
            elif node.type == "variable_declarator":
                decl_name = node.child_by_field_name("name")
                found = unwrap(node.child_by_field_name("value"))
                if found is None or found.type not in FUNCTION_TYPES:
                    continue
            else:
                continue
            if decl_name is not None and self.script.text(decl_name) == name and found != func:
                return found
        return None

    # ---- findings -----------------------------------------------------------------------

    def _dynamic(self, node: Node, what: str) -> Finding:
        return warning(
            "dynamic-ctx-access",
            f"{what}: calls made this way are invisible to validation and to permission "
            "compilation. Call ctx.<connection>.<tool>(...) or ctx.publish(...) directly with "
            f"literal names ({HIDDEN_DOCS})",
            *self.script.position(node),
        )

    def _unknown_connection(self, name: str, node: Node) -> Finding:
        return error(
            "unknown-tool",
            f"ctx.{name} does not exist: ctx has {', '.join(CTX_BUILTINS)} and the "
            f"connections {_listing(self.tool_kinds)}. Use one of those names",
            *self.script.position(node),
        )


def _is_declaration(ident: Node) -> bool:
    """A variable declared with the ctx name (``const ctx = ...``), not a use of ctx."""
    parent = ident.parent
    return (
        parent is not None
        and parent.type == "variable_declarator"
        and parent.child_by_field_name("name") == ident
    )


def _bound(pattern: Node) -> list[Node]:
    """The names a parameter binds, without its default values (``x = ctx.sql.get()`` binds
    ``x``; the default is code that runs with the outer ctx)."""
    kind = pattern.type
    if kind in ("identifier", "shorthand_property_identifier_pattern"):
        return [pattern]
    if kind in ("assignment_pattern", "object_assignment_pattern"):
        left = pattern.child_by_field_name("left")
        return _bound(left) if left is not None else []
    if kind == "pair_pattern":
        value = pattern.child_by_field_name("value")
        return _bound(value) if value is not None else []
    if kind in ("object_pattern", "array_pattern", "rest_pattern"):
        return [n for child in pattern.named_children for n in _bound(child)]
    return []


def _outer(node: Node) -> Node:
    """``node`` with the parentheses around it: ``(ctx)``, ``((ctx.sql))``, and the
    ``await (ctx)`` that tree-sitter reads as a call (see :func:`await_operand`)."""
    while node.parent is not None:
        parent = node.parent
        if parent.type == "parenthesized_expression":
            node = parent
        elif (
            parent.type == "arguments"
            and parent.parent is not None
            and await_operand(parent.parent) == node
        ):
            node = parent.parent
        else:
            break
    return node


def _listing(names: Mapping[str, object]) -> str:
    return ", ".join(sorted(names)) if names else "(none)"
