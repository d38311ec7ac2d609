"""The mutation is terminal (SPEC §5.2, §11.1 "mutation as the last statement").

In ``mutate`` the mutation call only *declares* the mutation: it never returns to the script,
so nothing may be meant to run after it — no following statement, no enclosing ``catch`` or
``finally``, no ``.then``, no use of its result — and at most one mutation can happen per run
(no loops, no second mutation reachable after the first).

A *site* is a call that makes a mutation: a direct ``ctx.<conn>.<mutating tool>(...)``, a
call of a helper function that makes one, or the call that runs a callback containing one.
Sites inside nested functions are checked there and then lifted to where the function runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from keepflow.sandbox.findings import Finding, error, warning
from keepflow.sandbox.static.tree import (
    FUNCTION_TYPES,
    Node,
    Script,
    enclosing_function,
    is_within,
    unwrap,
    walk,
)

LOOPS = frozenset({"for_statement", "for_in_statement", "while_statement", "do_statement"})
BLOCKS = frozenset({"statement_block", "switch_case", "switch_default", "program"})
#: Callbacks of these methods run once per element.
ITERATION_METHODS = frozenset(
    {
        "forEach",
        "map",
        "flatMap",
        "filter",
        "reduce",
        "reduceRight",
        "some",
        "every",
        "find",
        "findIndex",
        "findLast",
        "findLastIndex",
        "from",
        "sort",
    }
)
#: Statements that do nothing when reached (function declarations are hoisted).
INERT = frozenset(
    {"comment", "empty_statement", "function_declaration", "generator_function_declaration"}
)
TAIL_WRAPPERS = frozenset({"parenthesized_expression", "await_expression"})
SHORT_CIRCUIT = frozenset({"&&", "||", "??"})
HINT = (
    "A mutation is terminal: the script stops at the mutation call and never gets its result "
    "(docs/execution-model.md#the-terminal-mutation)."
)


@dataclass
class _Tail:
    findings: list[Finding] = field(default_factory=list)
    #: Nodes whose code could run after the site (following statements, catch, loops...).
    after: list[Node] = field(default_factory=list)


def check_mutate(
    script: Script, func: Node, mutations: Sequence[Node], describe: Callable[[Node], str]
) -> list[Finding]:
    """Findings for the mutation sites of one function (a mutate handler or a helper)."""
    pending: dict[Node, list[Node]] = {}
    for site in mutations:
        owner = enclosing_function(site)
        if owner is not None and is_within(owner, func):
            pending.setdefault(owner, []).append(site)
    findings: list[Finding] = []
    done: set[Node] = set()
    rounds: dict[Node, int] = {}  # mutually recursive local functions: stop eventually
    while True:
        inner = [g for g in pending if g != func and g not in done and rounds.get(g, 0) < 3]
        if not inner:
            break
        nested = max(inner, key=_depth)  # innermost first, so lifted sites land outside
        done.add(nested)
        rounds[nested] = rounds.get(nested, 0) + 1
        findings.extend(_check_sites(script, nested, pending[nested], describe))
        invocations, iteration, named = _invocations(script, nested)
        if iteration is not None:
            findings.append(
                error(
                    "second-mutation",
                    f"{describe(pending[nested][0])} is inside a callback of "
                    f"`{iteration}` (line {script.line(nested)}), which can run it more than "
                    "once; mutate may make at most one mutation call "
                    "(docs/execution-model.md#the-terminal-mutation). Reserve one "
                    "event per run in prepare, or publish one event per item from next and "
                    "let a consumer mutate each",
                    *script.position(pending[nested][0]),
                )
            )
        elif not invocations and not named:  # a named function never called is harmless
            findings.append(
                warning(
                    "dynamic-ctx-access",
                    f"{describe(pending[nested][0])} is inside a function whose call cannot "
                    "be found statically, so validation cannot check that the mutation is "
                    "terminal; call the mutation directly in mutate",
                    *script.position(pending[nested][0]),
                )
            )
        for call in invocations if iteration is None else ():  # loops are reported above
            owner = enclosing_function(call)
            if owner is not None and is_within(owner, func):
                pending.setdefault(owner, []).append(call)
                done.discard(owner)  # check it again with the new site
    findings.extend(_check_sites(script, func, pending.get(func, []), describe))
    return findings


def _depth(node: Node) -> int:
    depth = 0
    parent = node.parent
    while parent is not None:
        depth += 1
        parent = parent.parent
    return depth


def _invocations(script: Script, func: Node) -> tuple[list[Node], str | None, bool]:
    """Where a nested function runs: the calls that run it, the iteration method name if it
    is a per-element callback, and whether it is a named function (all uses were found)."""
    parent = func.parent
    while parent is not None and parent.type == "parenthesized_expression":
        parent = parent.parent
    if parent is None:
        return [], None, False
    if parent.type == "arguments" and parent.parent is not None:
        return [parent.parent], _iteration(script, parent.parent), False
    if parent.type == "call_expression":  # an IIFE
        return [parent], None, False
    name_node = (
        func.child_by_field_name("name")
        if func.type in ("function_declaration", "generator_function_declaration")
        else parent.child_by_field_name("name")
        if parent.type == "variable_declarator"
        else None
    )
    if name_node is None or name_node.type != "identifier":
        return [], None, False
    name = script.text(name_node)
    scope = enclosing_function(func) or script.root
    calls: list[Node] = []
    iteration: str | None = None
    for node in walk(scope):
        if node.type != "identifier" or script.text(node) != name or is_within(node, func):
            continue
        use = node.parent
        if use is None:
            continue
        if use.type == "call_expression" and use.child_by_field_name("function") == node:
            calls.append(use)
        elif use.type == "arguments" and use.parent is not None:  # passed as a callback
            calls.append(use.parent)
            iteration = iteration or _iteration(script, use.parent)
    return calls, iteration, True


def _iteration(script: Script, call: Node) -> str | None:
    callee = unwrap(call.child_by_field_name("function"))
    if callee is not None and callee.type == "member_expression":
        prop = callee.child_by_field_name("property")
        if prop is not None and script.text(prop) in ITERATION_METHODS:
            return f".{script.text(prop)}(...)"
    return None


def _check_sites(
    script: Script, func: Node, sites: Sequence[Node], describe: Callable[[Node], str]
) -> list[Finding]:
    findings: list[Finding] = []
    unique = list(dict.fromkeys(sites))
    preceded: dict[Node, Node] = {}  # a site -> the first site it can run after
    for site in unique:
        tail = _tail(script, site, func, unique, describe)
        findings.extend(tail.findings)
        for other in unique:
            if other != site and any(is_within(other, region) for region in tail.after):
                preceded.setdefault(other, site)
    for other, site in preceded.items():
        findings.append(
            error(
                "second-mutation",
                f"a second mutation {describe(other)} can run after {describe(site)} (line "
                f"{script.line(site)}); mutate may make at most one mutation call, and it is "
                "terminal (docs/execution-model.md#the-terminal-mutation). Make one mutation here "
                "and publish an event from next "
                "for another consumer to make the other",
                *script.position(other),
            )
        )
    return findings


def _tail(
    script: Script,
    site: Node,
    func: Node,
    sites: Sequence[Node],
    describe: Callable[[Node], str],
) -> _Tail:
    """Walk from the site up to ``func`` and report everything that could run after it."""
    result = _Tail()
    what = describe(site)
    node = site
    quiet = False  # the result is used: report that once, but keep collecting `after`
    while True:  # expression level
        parent = node.parent
        if parent is None or parent == func:  # an arrow function's expression body
            return result
        kind = parent.type
        if (
            kind in TAIL_WRAPPERS
            or (kind == "ternary_expression" and parent.child_by_field_name("condition") != node)
            or (
                kind == "binary_expression"
                and parent.child_by_field_name("right") == node
                and script.text(parent.child_by_field_name("operator") or parent) in SHORT_CIRCUIT
            )
        ):
            node = parent
            continue
        if kind in ("expression_statement", "return_statement"):
            break
        quiet = True
        chained = _chained(script, node, parent)
        if chained is not None:
            result.after.append(chained)
            msg = (
                f"`{script.snippet(chained)}` chained on {what} never runs. {HINT} Await "
                "the mutation as the last statement and handle its result in next(ctx, "
                "prepared, mutation)"
            )
            result.findings.append(error("code-after-mutation", msg, *script.position(chained)))
        else:
            result.findings.append(
                error(
                    "code-after-mutation",
                    f"the result of {what} is used (`{script.snippet(parent)}`), but it never "
                    f"arrives. {HINT} Make it the last statement (`await ...;` or `return ...;`) "
                    "and read the result in next(ctx, prepared, mutation) as mutation.result",
                    *script.position(site),
                )
            )
        while (
            parent is not None
            and parent.parent is not None
            and (parent.parent.type not in BLOCKS and parent.parent != func)
            and parent.type not in FUNCTION_TYPES
        ):
            parent = parent.parent
        if parent is None or parent.type in FUNCTION_TYPES:
            return result
        break
    statement = parent
    returns = statement.type == "return_statement"
    broke = False
    node = statement
    while node.parent is not None and node != func:
        parent = node.parent
        kind = parent.type
        if kind in BLOCKS:
            following = [
                c
                for c in parent.named_children
                if c.start_byte >= node.end_byte and c.type not in INERT
            ]
            if following and not returns and not broke:
                first = following[0]
                if first.type == "break_statement" and first.named_child_count == 0:
                    broke = True
                elif first.type == "return_statement" and first.named_child_count == 0:
                    returns = True
                else:
                    result.after.extend(following)
                    # a following mutation is reported as second-mutation instead
                    if not quiet and not any(is_within(x, first) for x in sites):
                        result.findings.append(
                            error(
                                "code-after-mutation",
                                f"`{script.snippet(first)}` (line {script.line(first)}) would run "
                                f"after {what} (line {script.line(site)}) but never does. {HINT} "
                                "Move this code before the mutation, or into next(ctx, prepared, "
                                "mutation), which runs after the mutation is applied",
                                *script.position(first),
                            )
                        )
        elif kind == "try_statement":
            handler = parent.child_by_field_name("handler")
            finalizer = parent.child_by_field_name("finalizer")
            regions = [
                r
                for r in (handler, finalizer)
                if r is not None
                and is_within(r, parent)
                and not is_within(node, r)
                and r.start_byte >= node.end_byte
            ]
            for region in regions:
                result.after.append(region)
                word = "catch" if region.type == "catch_clause" else "finally"
                result.findings.append(
                    error(
                        "code-after-mutation",
                        f"the `{word}` block (line {script.line(region)}) around {what} never "
                        f"runs for it. {HINT} Failures of a mutation are handled by the host "
                        "(retry, reconcile, escalate — "
                        "docs/execution-model.md#failures-and-the-workflow), never by the script: "
                        "remove the try/catch around the mutation",
                        *script.position(region),
                    )
                )
        elif kind in LOOPS and parent.child_by_field_name("body") == node:
            if broke:
                broke = False
            elif not returns:
                result.after.append(parent)
                result.findings.append(
                    error(
                        "second-mutation",
                        f"{what} is inside a loop (line {script.line(parent)}), so it can run "
                        "more than once; mutate may make at most one mutation call "
                        "(docs/execution-model.md#the-terminal-mutation). "
                        "Reserve one event per run in prepare, or publish one event per item "
                        "from next and let a consumer mutate each",
                        *script.position(site),
                    )
                )
        elif kind == "switch_statement":
            broke = False
        node = parent
    return result


def _chained(script: Script, node: Node, parent: Node) -> Node | None:
    """The ``x.then(...)``/``.catch``/``.finally`` call chained on ``node``, if any."""
    if parent.type != "member_expression" or parent.child_by_field_name("object") != node:
        return None
    prop = parent.child_by_field_name("property")
    call = parent.parent
    if prop is None or script.text(prop) not in ("then", "catch", "finally") or call is None:
        return None
    return call if call.type == "call_expression" else None
