"""No shared mutable globals between handlers (SPEC §2, §11.3).

Every handler invocation evaluates the script in a fresh context, so a top-level ``let``/``var``
assigned inside a function, or a top-level ``const`` object/array/Map/Set mutated inside one,
is reset on every run: the code can never work as intended. Top-level code itself (which runs
again in every context) and ``const`` values that are only read are fine.
"""

from __future__ import annotations

from dataclasses import dataclass

from keepflow.sandbox.findings import Finding, error
from keepflow.sandbox.static.tree import (
    Node,
    Script,
    enclosing_function,
    parameters,
    unwrap,
    walk,
)

MUTATING_METHODS = frozenset(
    {
        "push",
        "pop",
        "shift",
        "unshift",
        "splice",
        "sort",
        "reverse",
        "fill",
        "copyWithin",
        "set",
        "delete",
        "add",
        "clear",
    }
)
CONTAINER_VALUES = frozenset({"object", "array", "new_expression"})
_VERBS = {"assigning": "assigns to", "calling": "mutates", "mutating": "mutates"}
PATTERN_NAMES = frozenset({"identifier", "shorthand_property_identifier_pattern"})


@dataclass(frozen=True)
class _Global:
    name: str
    keyword: str  # let | var | const
    line: int


def check_shared_globals(script: Script) -> list[Finding]:
    bindings = _top_level(script)
    if not bindings:
        return []
    findings: list[Finding] = []
    for node in walk(script.root):
        target, how = _mutation(script, node)
        if target is None:
            continue
        root = _root_identifier(target)
        if root is None:
            continue
        binding = bindings.get(script.text(root))
        if binding is None or enclosing_function(node) is None:
            continue
        if binding.keyword == "const" and root == unwrap(target) and how == "assigning":
            continue  # reassigning a const throws anyway; not a sharing problem
        if _declared_locally(script, root, binding.name):
            continue
        findings.append(
            error(
                "shared-mutable-global",
                f"`{script.snippet(node)}` {_VERBS[how]} the top-level `{binding.keyword} "
                f"{binding.name}` (line {binding.line}) inside a function: handlers run in "
                f"fresh contexts; {binding.name} is reset every run, so this change is lost — "
                "keep data in state (returned by a producer or next) or PrepareResult.data "
                "(docs/execution-model.md#handlers-and-phases)",
                *script.position(node),
            )
        )
    return findings


def _top_level(script: Script) -> dict[str, _Global]:
    found: dict[str, _Global] = {}
    for stmt in script.root.named_children:
        decl = stmt.child_by_field_name("declaration") if stmt.type == "export_statement" else stmt
        if decl is None or decl.type not in ("lexical_declaration", "variable_declaration"):
            continue
        keyword = decl.children[0].type if decl.children else "var"
        for declarator in decl.named_children:
            name = declarator.child_by_field_name("name")
            value = unwrap(declarator.child_by_field_name("value"))
            if name is None or declarator.type != "variable_declarator":
                continue
            if keyword == "const" and (value is None or value.type not in CONTAINER_VALUES):
                continue
            for ident in walk(name):
                if ident.type in PATTERN_NAMES:
                    text = script.text(ident)
                    found[text] = _Global(text, keyword, script.line(decl))
    return found


def _mutation(script: Script, node: Node) -> tuple[Node | None, str]:
    """The expression a node changes (assignment target, mutated object) and a verb."""
    kind = node.type
    if kind in ("assignment_expression", "augmented_assignment_expression"):
        return node.child_by_field_name("left"), "assigning"
    if kind == "update_expression":
        return node.child_by_field_name("argument"), "assigning"
    if kind == "unary_expression" and node.children and node.children[0].type == "delete":
        return node.child_by_field_name("argument"), "mutating"
    if kind == "call_expression":
        callee = unwrap(node.child_by_field_name("function"))
        if callee is None or callee.type != "member_expression":
            return None, ""
        prop = callee.child_by_field_name("property")
        method = script.text(prop) if prop is not None else ""
        if method in MUTATING_METHODS:
            return callee.child_by_field_name("object"), "calling"
        if script.text(callee).replace(" ", "") in ("Object.assign", "Object.defineProperty"):
            args = node.child_by_field_name("arguments")
            first = args.named_children[0] if args is not None and args.named_children else None
            return first, "mutating"
    return None, ""


def _root_identifier(target: Node) -> Node | None:
    node = unwrap(target)
    while node is not None and node.type in ("member_expression", "subscript_expression"):
        node = unwrap(node.child_by_field_name("object"))
    return node if node is not None and node.type == "identifier" else None


def _declared_locally(script: Script, use: Node, name: str) -> bool:
    """Whether ``name`` is a parameter or declared inside a function enclosing ``use``
    (approximate: anywhere in that function)."""
    func = enclosing_function(use)
    while func is not None:
        for param in parameters(func):
            if any(n.type in PATTERN_NAMES and script.text(n) == name for n in walk(param)):
                return True
        for node in walk(func):
            if node.type in ("variable_declarator", "function_declaration", "class_declaration"):
                decl = node.child_by_field_name("name")
                if decl is not None and any(
                    n.type in PATTERN_NAMES and script.text(n) == name for n in walk(decl)
                ):
                    return True
            elif node.type == "catch_clause":
                caught = node.child_by_field_name("parameter")
                if caught is not None and script.text(caught) == name:
                    return True
        func = enclosing_function(func)
    return False
