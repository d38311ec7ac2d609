"""No code built from strings, refused at deploy (SPEC §2, §9, §11.3 stage 2).

``eval("ctx.api.post(...)")``, ``new Function(...)``, ``(async () => {}).constructor("...")``,
``setTimeout("...")`` and ``import(...)`` run code that the deploy-time checks never see: its
ctx calls escape the phase rules, the terminal-mutation rule and permission compilation. A
workflow never needs them, so every spelling a tree-sitter walk can see is an ERROR finding
(rule ``dynamic-code``) with the place, the reason and what to write instead.

The sandbox makes these constructors throw as well (``prelude.js``); this check exists so that
the person or the LLM learns it at deploy, with a line number, instead of from a failed run.
Spellings computed at run time (``globalThis["ev" + "al"]``, ``Reflect.get(g, name)``, a
function value reaching ``.constructor`` through a variable, ``globalThis`` passed around as a
value) cannot be seen statically and are left to the runtime.

``with (...)`` is reported here too: it hides which names are ctx members, and it is a syntax
error in a module (the engine refuses it at load; this makes the static report say so alone).
"""

from __future__ import annotations

from dataclasses import dataclass

from keepflow.sandbox.findings import Finding, error
from keepflow.sandbox.static.tree import (
    Node,
    Script,
    await_operand,
    first_argument,
    unwrap,
    walk,
)

RULE = "dynamic-code"
DOCS = "docs/security.md#code-from-strings"
#: Global names that turn strings into code.
EVALUATORS = frozenset({"eval", "Function"})
#: Timer functions that run a string argument as code (none exist in the sandbox).
TIMERS = frozenset({"setTimeout", "setInterval", "setImmediate"})
#: Names of the global object.
GLOBAL_OBJECTS = frozenset({"globalThis", "window", "self", "global"})
#: Calls that read a property like ``obj[key]`` does.
REFLECTIVE_READS = frozenset(
    {"Reflect.get", "Reflect.getOwnPropertyDescriptor", "Object.getOwnPropertyDescriptor"}
)
#: A ``.constructor`` used only in these ways cannot run code: ``x.constructor === Object``.
COMPARISONS = frozenset({"===", "!==", "==", "!=", "instanceof"})


@dataclass(frozen=True)
class _Kind:
    why: str
    instead: str


_EVAL = _Kind("eval runs a string as code", "Write the code directly in the script")
_FUNCTION = _Kind(
    "the Function constructor builds a function from strings",
    "Write the function directly (`function name(...) {...}` or an arrow function)",
)
_CONSTRUCTOR = _Kind(
    "`.constructor` can reach the Function constructor: the `.constructor` of any function "
    "(async and generator functions included) builds functions from strings",
    "Write the function directly; to check a value's type compare it "
    "(`x.constructor === Object`), read `x.constructor.name`, or use typeof, instanceof or "
    "Array.isArray",
)
_TIMER = _Kind(
    "a timer given a string runs it as code (and timers are not available in keepflow "
    "scripts)",
    "Call the code directly; to run later, let a producer's schedule start a new run",
)
_IMPORT = _Kind(
    "import(...) loads code at run time",
    "Put everything the workflow needs in this one script; scripts cannot load modules",
)


def check_dynamic_code(script: Script) -> list[Finding]:
    """Every statically visible spelling of code built from strings, as ERROR findings."""
    aliases = _global_aliases(script)
    #: One finding per position: `Function.prototype.constructor` is one spelling, reported
    #: for its innermost part (the walk visits outer nodes first).
    found: dict[tuple[int, int], Finding] = {}
    for node in walk(script.root):
        if node.type == "with_statement":
            found[script.position(node)] = _with(script, node)
            continue
        kind = _kind(script, node, aliases)
        if kind is not None:
            shown = node.parent if node.type == "object_pattern" and node.parent else node
            found[script.position(node)] = error(
                RULE,
                f"`{script.snippet(shown, 50)}`: {kind.why}. Code built from strings is never "
                "needed by a workflow and hides its calls from every deploy-time check (phase "
                f"rules, terminal mutation, permissions), so it is refused. {kind.instead} "
                f"({DOCS})",
                *script.position(node),
            )
    return list(found.values())


def _kind(script: Script, node: Node, aliases: frozenset[str]) -> _Kind | None:
    kind = node.type
    if kind in ("identifier", "shorthand_property_identifier"):
        name = script.text(node)
        if name == "eval":  # strict mode: `eval` can never be a local binding
            return _EVAL
        if name == "Function" and not _instanceof_operand(node):
            return _FUNCTION
        return None
    if kind in ("member_expression", "subscript_expression"):
        obj = node.child_by_field_name("object")
        return _property(script, node, obj, _key(script, node), aliases)
    if kind == "call_expression":
        return _call(script, node, aliases)
    if kind == "object_pattern":
        return _pattern(script, node, aliases)
    return None


def _property(
    script: Script, node: Node, obj: Node | None, key: str | None, aliases: frozenset[str]
) -> _Kind | None:
    """``obj.key`` / ``obj["key"]`` / ``Reflect.get(obj, "key")``, written at ``node``."""
    if key is None or obj is None:
        # A key computed at run time (`globalThis["ev" + "al"]`, `o[name]`) is invisible to a
        # tree walk: the sandbox blocks what it reaches (prelude.js, docs/security.md#the-sandbox).
        return None
    if key in EVALUATORS and _is_global(script, obj, aliases):
        return _EVAL if key == "eval" else _FUNCTION
    if key == "constructor" and not _harmless_use(script, node):
        inner = unwrap(obj)
        if inner is not None and _key(script, inner) == "constructor":
            return None  # `x.constructor.constructor`: the inner access is reported
        return _CONSTRUCTOR
    return None


def _call(script: Script, call: Node, aliases: frozenset[str]) -> _Kind | None:
    callee = unwrap(call.child_by_field_name("function"))
    if callee is None:
        return None
    if callee.type == "import":
        return _IMPORT
    name = script.text(callee).replace(" ", "")
    if name in REFLECTIVE_READS:
        args = _arguments(call)
        key = script.constant_string(args[1]) if len(args) > 1 else None
        return _property(script, call, args[0], key, aliases) if args else None
    timer = callee.type == "identifier" and name in TIMERS
    if callee.type in ("member_expression", "subscript_expression"):
        timer = _key(script, callee) in TIMERS and _is_global(
            script, callee.child_by_field_name("object"), aliases
        )
    return _TIMER if timer and _string_like(script, first_argument(call)) else None


def _pattern(script: Script, pattern: Node, aliases: frozenset[str]) -> _Kind | None:
    """``const { constructor: F } = fn``; ``const { eval: e } = globalThis``."""
    keys: list[str] = []
    for child in pattern.named_children:
        if child.type == "shorthand_property_identifier_pattern":
            keys.append(script.text(child))
        elif child.type == "pair_pattern":
            key = child.child_by_field_name("key")
            name = script.key_name(key) if key is not None else None
            if name is not None:
                keys.append(name)
    if "constructor" in keys:
        return _CONSTRUCTOR
    if not EVALUATORS.intersection(keys):
        return None
    parent = pattern.parent
    source: Node | None = None
    if parent is not None and parent.type == "variable_declarator":
        source = parent.child_by_field_name("value")
    elif parent is not None and parent.type == "assignment_expression":
        source = parent.child_by_field_name("right")
    if source is None or not _is_global(script, source, aliases):
        return None
    return _EVAL if "eval" in keys else _FUNCTION


def _with(script: Script, node: Node) -> Finding:
    return error(
        "syntax",
        "`with (...)` is not allowed: a script is a JavaScript module, which runs in strict "
        "mode where `with` is a syntax error, and it would hide which names are ctx calls. "
        f"Name what you use explicitly, e.g. ctx.<connection>.<tool>(...) ({DOCS})",
        *script.position(node),
    )


# ---- helpers ----------------------------------------------------------------------------


def _key(script: Script, node: Node) -> str | None:
    """The literal property name of ``a.b`` / ``a["b"]``; ``None`` if computed."""
    if node.type == "member_expression":
        prop = node.child_by_field_name("property")
        return script.text(prop) if prop is not None else None
    if node.type == "subscript_expression":
        return script.constant_string(node.child_by_field_name("index"))
    return None


def _arguments(call: Node) -> list[Node]:
    args = call.child_by_field_name("arguments")
    if args is None or args.type != "arguments":
        return []
    return [c for c in args.named_children if c.type != "comment"]


def _outer(node: Node) -> Node:
    while node.parent is not None and node.parent.type == "parenthesized_expression":
        node = node.parent
    return node


def _instanceof_operand(node: Node) -> bool:
    """``x instanceof Function`` only compares prototypes; it cannot run code."""
    outer = _outer(node)
    parent = outer.parent
    if parent is None or parent.type != "binary_expression":
        return False
    operator = parent.child_by_field_name("operator")
    return (
        operator is not None
        and operator.type == "instanceof"
        and parent.child_by_field_name("right") == outer
    )


def _harmless_use(script: Script, node: Node) -> bool:
    """A use of ``x.constructor`` that cannot call it: a comparison (``x.constructor ===
    Object``), ``x.constructor.name``, ``typeof``/``!``, a condition, or the left of ``&&``
    (and through ``&&``/``||``/``??`` into one of those)."""
    outer = _outer(node)
    parent = outer.parent
    if parent is None:
        return False
    if parent.type == "binary_expression":
        operator = parent.child_by_field_name("operator")
        if operator is None:
            return False
        if operator.type == "&&" and parent.child_by_field_name("left") == outer:
            return True  # only decides whether the right side is evaluated
        if operator.type in ("&&", "||", "??"):
            return _harmless_use(script, parent)  # the value flows on: judge where it goes
        return operator.type in COMPARISONS
    if parent.type == "member_expression" and parent.child_by_field_name("object") == outer:
        return _key(script, parent) == "name"
    if parent.type == "unary_expression":
        operator = parent.child_by_field_name("operator")
        return operator is not None and operator.type in ("typeof", "!")
    if parent.type in ("if_statement", "while_statement", "do_statement", "ternary_expression"):
        return parent.child_by_field_name("condition") == outer
    return False


def _is_global(script: Script, node: Node | None, aliases: frozenset[str]) -> bool:
    """Whether an expression is (statically) the global object: ``globalThis``, ``window``,
    ``self``, ``global``, ``globalThis.self``, ``(0, globalThis)``, ``a ?? globalThis``, or
    a name assigned one of those anywhere in the script."""
    node = unwrap(node)
    if node is None:
        return False
    operand = await_operand(node)
    if operand is not None or node.type == "await_expression":  # awaiting it gives it back
        inner = operand if operand is not None else node.named_children[-1]
        return _is_global(script, inner, aliases)
    if node.type == "identifier":
        name = script.text(node)
        return name in GLOBAL_OBJECTS or name in aliases
    if node.type == "call_expression":  # its `.eval` is eval's descriptor
        callee = node.child_by_field_name("function")
        return (
            callee is not None
            and script.text(callee).replace(" ", "") == "Object.getOwnPropertyDescriptors"
            and _is_global(script, first_argument(node), aliases)
        )
    if node.type in ("member_expression", "subscript_expression"):
        return _key(script, node) in GLOBAL_OBJECTS and _is_global(
            script, node.child_by_field_name("object"), aliases
        )
    if node.type == "sequence_expression":
        items = [c for c in node.named_children if c.type != "comment"]
        return bool(items) and _is_global(script, items[-1], aliases)
    if node.type == "binary_expression":
        operator = node.child_by_field_name("operator")
        return (
            operator is not None
            and operator.type in ("||", "&&", "??")
            and (
                _is_global(script, node.child_by_field_name("left"), aliases)
                or _is_global(script, node.child_by_field_name("right"), aliases)
            )
        )
    if node.type == "ternary_expression":
        return _is_global(
            script, node.child_by_field_name("consequence"), aliases
        ) or _is_global(script, node.child_by_field_name("alternative"), aliases)
    return False


def _global_aliases(script: Script) -> frozenset[str]:
    """Names bound anywhere to the global object (``const g = globalThis``), by name: an
    over-approximation that only matters when such a name is then asked for ``eval``."""
    bindings: list[tuple[str, Node]] = []
    for node in walk(script.root):
        if node.type == "variable_declarator":
            name, value = node.child_by_field_name("name"), node.child_by_field_name("value")
        elif node.type == "assignment_expression":
            name, value = node.child_by_field_name("left"), node.child_by_field_name("right")
        else:
            continue
        if name is not None and name.type == "identifier" and value is not None:
            bindings.append((script.text(name), value))
    aliases: frozenset[str] = frozenset()
    while True:  # aliases of aliases
        found = frozenset(n for n, v in bindings if _is_global(script, v, aliases))
        if found == aliases:
            return aliases
        aliases = found


def _string_like(script: Script, node: Node | None) -> bool:
    """A string literal, a template, a ``+`` concatenation with one, or a constant string."""
    node = unwrap(node)
    if node is None:
        return False
    if node.type in ("string", "template_string"):
        return True
    if node.type == "binary_expression":
        operator = node.child_by_field_name("operator")
        return (
            operator is not None
            and operator.type == "+"
            and (
                _string_like(script, node.child_by_field_name("left"))
                or _string_like(script, node.child_by_field_name("right"))
            )
        )
    return script.constant_string(node) is not None
