"""tree-sitter plumbing shared by the static checks and the manifest rules (SPEC §11.3).

Parses a script, turns nodes into 1-based line/column positions, reads literal values, and
finds things inside the ``Keep.workflow({...})`` definition object so that findings can point
at the exact key or string literal they are about.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import tree_sitter
import tree_sitter_javascript

Node = tree_sitter.Node

FUNCTION_TYPES = frozenset(
    {
        "function_expression",
        "function_declaration",
        "generator_function",
        "generator_function_declaration",
        "arrow_function",
        "method_definition",
    }
)


@cache
def _language() -> tree_sitter.Language:
    return tree_sitter.Language(tree_sitter_javascript.language())


@dataclass(frozen=True)
class Member:
    """One entry of an object literal: ``key: value``, a method, or a shorthand property."""

    key: str | None  # None for spreads and computed keys that are not string literals
    key_node: Node
    value: Node  # the method node itself for methods


class Script:
    """A parsed script plus the lookups the checks need."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.data = source.encode("utf-8")
        self.tree = tree_sitter.Parser(_language()).parse(self.data)
        self.root = self.tree.root_node
        self.top_level = _top_level_bindings(self.root)

    # ---- positions and text -------------------------------------------------------------

    def text(self, node: Node) -> str:
        return self.data[node.start_byte : node.end_byte].decode("utf-8", "replace")

    def position(self, node: Node) -> tuple[int, int]:
        """1-based (line, column); the column counts characters, not bytes."""
        row, byte_col = node.start_point
        line_start = node.start_byte - byte_col
        prefix = self.data[line_start : node.start_byte].decode("utf-8", "replace")
        return row + 1, len(prefix) + 1

    def line(self, node: Node) -> int:
        return node.start_point[0] + 1

    def snippet(self, node: Node, limit: int = 60) -> str:
        text = " ".join(self.text(node).split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    # ---- literals -----------------------------------------------------------------------

    def string_value(self, node: Node | None) -> str | None:
        """The value of a string literal or a template string without substitutions."""
        node = unwrap(node)
        if node is None or node.type not in ("string", "template_string"):
            return None
        parts: list[str] = []
        for child in node.named_children:
            if child.type == "string_fragment":
                parts.append(self.text(child))
            elif child.type == "escape_sequence":
                try:
                    parts.append(codecs.decode(self.text(child), "unicode_escape"))
                except UnicodeDecodeError:
                    parts.append(self.text(child))
            else:  # template_substitution: computed at run time
                return None
        return "".join(parts)

    def constant_string(self, node: Node | None) -> str | None:
        """Like :meth:`string_value`, also through top-level ``const`` names and properties of
        top-level ``const`` object literals (``TOPIC``, ``CONFIG.table``)."""
        node = unwrap(node)
        if node is not None and node.type == "member_expression":
            obj = self.resolve(node.child_by_field_name("object"))
            prop = node.child_by_field_name("property")
            if obj is None or obj.type != "object" or prop is None:
                return None
            found = [m.value for m in self.members(obj) if m.key == self.text(prop)]
            return self.constant_string(found[-1]) if found else None
        return self.string_value(self.resolve(node))

    def template_prefix(self, node: Node | None) -> str | None:
        """The literal text before the first substitution of a string, a template string,
        or a concatenation starting with one (``"https://h/" + id``)."""
        node = self.resolve(node)
        if node is not None and node.type == "binary_expression":
            operator = node.child_by_field_name("operator")
            if operator is None or operator.type != "+":
                return None
            return self.template_prefix(node.child_by_field_name("left"))
        if node is None or node.type not in ("string", "template_string"):
            return None
        parts: list[str] = []
        for child in node.named_children:
            if child.type == "template_substitution":
                break
            parts.append(self.text(child))
        return "".join(parts)

    def key_name(self, key: Node) -> str | None:
        if key.type in ("property_identifier", "identifier", "private_property_identifier"):
            return self.text(key)
        if key.type == "number":
            return self.text(key)
        if key.type == "string":
            return self.string_value(key)
        if key.type == "computed_property_name" and key.named_child_count == 1:
            inner = key.named_children[0]
            return self.string_value(inner)
        return None

    # ---- objects and resolution ---------------------------------------------------------

    def members(self, obj: Node) -> Iterator[Member]:
        for child in obj.named_children:
            if child.type == "pair":
                key = child.child_by_field_name("key")
                value = child.child_by_field_name("value")
                if key is not None and value is not None:
                    yield Member(self.key_name(key), key, value)
            elif child.type == "method_definition":
                name = child.child_by_field_name("name")
                if name is not None:
                    yield Member(self.key_name(name), name, child)
            elif child.type == "shorthand_property_identifier":
                yield Member(self.text(child), child, child)
            elif child.type == "spread_element":
                yield Member(None, child, child)

    def resolve(self, node: Node | None) -> Node | None:
        """Follow parentheses and identifiers bound at top level (``const x = ...``,
        ``function x() {}``) to the value they stand for."""
        for _ in range(8):
            node = unwrap(node)
            if node is None or node.type not in ("identifier", "shorthand_property_identifier"):
                return node
            bound = self.top_level.get(self.text(node))
            if bound is None:
                return node
            node = bound
        return node

    def object_value(self, node: Node | None) -> Node | None:
        """The object literal a value stands for, unwrapping ``Keep.consumer({...})``."""
        node = self.resolve(node)
        if (
            node is not None
            and node.type == "call_expression"
            and self.is_keep_call(node, "consumer")
        ):
            node = self.resolve(first_argument(node))
        return node if node is not None and node.type == "object" else None

    def is_keep_call(self, node: Node, method: str) -> bool:
        callee = node.child_by_field_name("function")
        return callee is not None and self.text(callee).replace(" ", "") == f"Keep.{method}"

    def keep_workflow_calls(self) -> list[Node]:
        return [
            n
            for n in walk(self.root)
            if n.type == "call_expression" and self.is_keep_call(n, "workflow")
        ]

    def default_export(self) -> Node | None:
        """The ``Keep.workflow(...)`` call of ``export default Keep.workflow(...)``."""
        for stmt in self.root.named_children:
            if stmt.type != "export_statement" or not any(
                c.type == "default" for c in stmt.children
            ):
                continue
            value = self.resolve(stmt.child_by_field_name("value"))
            if (
                value is not None
                and value.type == "call_expression"
                and self.is_keep_call(value, "workflow")
            ):
                return value
        return None

    def definition(self) -> Node | None:
        """The object literal passed to ``Keep.workflow`` (default export first)."""
        call = self.default_export()
        if call is None:
            calls = self.keep_workflow_calls()
            call = calls[0] if calls else None
        return self.object_value(first_argument(call)) if call is not None else None

    def find(self, path: Sequence[str | int], *, key: bool = True) -> Node | None:
        """The node at ``path`` inside the definition: the last key (``key=True``) or its
        value. Integer segments index arrays. ``None`` when the value was computed."""
        found = self.find_all(path, key=key)
        return found[-1] if found else None

    def find_all(self, path: Sequence[str | int], *, key: bool = True) -> list[Node]:
        """Like :meth:`find`, but every member with the last key (duplicate keys)."""
        node = self.definition()
        for i, segment in enumerate(path):
            last = i == len(path) - 1
            if node is None:
                return []
            if isinstance(segment, int):
                array = self.resolve(node)
                if array is None or array.type != "array":
                    return []
                items = [c for c in array.named_children if c.type != "comment"]
                if segment >= len(items):
                    return []
                node = items[segment]
                continue
            obj = self.object_value(node)
            if obj is None:
                return []
            matches = [m for m in self.members(obj) if m.key == segment]
            if not matches:
                return []
            if last:
                return [m.key_node if key else m.value for m in matches]
            node = matches[-1].value  # JS semantics: the last duplicate key wins
        return [node] if node is not None else []


def unwrap(node: Node | None) -> Node | None:
    while node is not None and node.type == "parenthesized_expression" and node.named_children:
        node = node.named_children[-1]
    return node


def await_operand(node: Node) -> Node | None:
    """The operand of ``await (x)`` when tree-sitter reads it as a call of a function named
    ``await`` (it does before a member access: ``await (ctx).sql.get()``); in a module,
    ``await`` is always the operator, never a name."""
    if node.type != "call_expression":
        return None
    callee = node.child_by_field_name("function")
    args = node.child_by_field_name("arguments")
    if callee is None or callee.type != "identifier" or callee.text != b"await":
        return None
    if args is None or args.type != "arguments":
        return None
    items = [c for c in args.named_children if c.type != "comment"]
    return items[0] if len(items) == 1 else None


def first_argument(call: Node | None) -> Node | None:
    if call is None:
        return None
    args = call.child_by_field_name("arguments")
    if args is None:
        return None
    items = [c for c in args.named_children if c.type != "comment"]
    return items[0] if items else None


def walk(node: Node) -> Iterator[Node]:
    """Every named descendant of ``node`` (including itself), in source order."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.named_children))


def enclosing_function(node: Node) -> Node | None:
    parent = node.parent
    while parent is not None and parent.type not in FUNCTION_TYPES:
        parent = parent.parent
    return parent


def is_within(node: Node, ancestor: Node) -> bool:
    return ancestor.start_byte <= node.start_byte and node.end_byte <= ancestor.end_byte


def parameters(func: Node) -> list[Node]:
    single = func.child_by_field_name("parameter")  # `x => ...`
    if single is not None:
        return [single]
    params = func.child_by_field_name("parameters")
    if params is None:
        return []
    return [c for c in params.named_children if c.type != "comment"]


def _top_level_bindings(root: Node) -> dict[str, Node]:
    bindings: dict[str, Node] = {}
    for stmt in root.named_children:
        decl = stmt.child_by_field_name("declaration") if stmt.type == "export_statement" else stmt
        if decl is None:
            continue
        if decl.type in ("function_declaration", "generator_function_declaration"):
            name = decl.child_by_field_name("name")
            if name is not None:
                bindings[name.text.decode() if name.text else ""] = decl
        elif decl.type in ("lexical_declaration", "variable_declaration"):
            if decl.child(0) is not None and decl.children[0].type != "const":
                continue  # `let`/`var` bindings may be reassigned: never resolve through them
            for declarator in decl.named_children:
                name = declarator.child_by_field_name("name")
                value = declarator.child_by_field_name("value")
                if name is not None and name.type == "identifier" and value is not None:
                    bindings[name.text.decode() if name.text else ""] = value
    return bindings
