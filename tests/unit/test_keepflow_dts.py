"""keepflow.d.ts ships inside the package and declares the script API as implemented: every
name the prelude defines (``Keep``, ``console``, the ``ctx`` methods), the ``ctx`` of each phase
as the phase table allows it, every ``mutation.status`` the runtime hands to ``next``, and the
tools of the built-in connectors with their kinds. The lists are derived from the code, never
written by hand here."""

from __future__ import annotations

import ast
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import get_args

import pytest

from keepflow.connectors.base import ToolKind
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.sql import SqlConnector
from keepflow.model import Phase
from keepflow.runtime.phases import RULES
from keepflow.sandbox.api import HostCallTarget

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "keepflow"
PRELUDE = (PACKAGE / "sandbox" / "prelude.js").read_text(encoding="utf-8")


def dts() -> str:
    """The declarations, read the way `keepflow init` reads them: as a package resource."""
    return resources.files("keepflow").joinpath("keepflow.d.ts").read_text(encoding="utf-8")


def _block(text: str, header: str) -> str:
    """The body of the `{ ... }` that follows ``header`` (braces balanced)."""
    start = text.index(header)
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    raise AssertionError(f"unbalanced braces after {header!r}")


def _members(body: str) -> set[str]:
    """Top-level member names of an interface body (comments skipped)."""
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    body = re.sub(r"//[^\n]*", "", body)
    out, depth = set(), 0
    for line in body.splitlines():
        if depth == 0:
            m = re.match(r"\s*(?:readonly\s+)?([A-Za-z_$][\w$]*)\??\s*[:(<]", line)
            if m:
                out.add(m.group(1))
        depth += line.count("{") - line.count("}")
    return out


def _interface(name: str) -> set[str]:
    return _members(_block(dts(), f"interface {name} "))


# ------------------------------------------------------------------ it ships


def test_the_declarations_are_a_package_resource() -> None:
    path = PACKAGE / "keepflow.d.ts"
    assert path.is_file()
    assert resources.files("keepflow").joinpath("keepflow.d.ts").is_file()
    # The wheel is the package directory as it is (hatch `packages`), minus ignored files.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "src/keepflow" in wheel["packages"]
    assert not wheel.get("exclude")
    assert not wheel.get("only-include")
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert not any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), "keepflow.d.ts")
                   for p in ignored)


def test_the_declarations_are_a_global_script_not_a_module() -> None:
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", dts(), flags=re.S)
    assert not re.search(r"^\s*(import|export)\b", code, flags=re.M), (
        "a top-level import/export would turn the globals into module members")
    assert "declare const Keep: keepflow.KeepApi;" in code


def test_messages_in_the_declarations_point_to_docs_not_the_spec() -> None:
    assert "SPEC" not in dts()
    assert "docs/writing-workflows.md" in dts()


# ------------------------------------------------------------------ names of the prelude


def _prelude_object(name: str) -> set[str]:
    body, top, depth = _block(PRELUDE, f"const {name} = freeze("), "", 0
    for ch in body:  # only the object's own keys, not those inside its functions
        depth += {"{": 1, "}": -1}.get(ch, 0)
        top += ch if depth == 0 and ch != "}" else ""
    return set(re.findall(r"(?:^|,)\s*([A-Za-z_$][\w$]*)\s*:", top))


def test_keep_declares_what_the_prelude_defines() -> None:
    keep = _prelude_object("Keep")
    assert keep >= {"workflow", "consumer"}
    assert _interface("KeepApi") == keep


def test_console_declares_what_the_prelude_defines() -> None:
    assert _interface("Console") == _prelude_object("consoleObject")


def test_ctx_declares_every_method_the_prelude_defines() -> None:
    prelude = set(re.findall(r'defineProperty\(ctx, "([A-Za-z_$][\w$]*)"', PRELUDE))
    targets = set(get_args(HostCallTarget)) - {"tool"}
    assert targets <= prelude
    declared = set().union(*(_interface(f"{p.value.capitalize()}CtxMethods") for p in RULES))
    assert declared == prelude


@pytest.mark.parametrize("phase", list(RULES), ids=lambda p: p.value)
def test_each_phase_ctx_matches_the_phase_table(phase: Phase) -> None:
    rules = RULES[phase]
    name = f"{phase.value.capitalize()}Ctx"
    expected = {"log"} | {m for m, ok in (("publish", rules.publish), ("peek", rules.peek),
                                           ("getByIds", rules.get_by_ids)) if ok}
    assert _interface(f"{name}Methods") == expected
    alias = re.search(rf"type {name} = ([^;]+);", dts())
    assert alias is not None
    assert ("Connections" in alias.group(1)) == bool(rules.tool_kinds)


def _runtime_statuses() -> set[str]:
    """Every `... .mutation_result = {"status": X, ...}` the runtime writes."""
    found = set()
    for path in (PACKAGE / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                    and any(isinstance(t, ast.Attribute) and t.attr == "mutation_result"
                            for t in node.targets)):
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "status":
                        assert isinstance(value, ast.Constant), f"{path}: computed status"
                        found.add(value.value)
    return found


def test_every_mutation_status_is_in_the_union() -> None:
    statuses = _runtime_statuses()
    assert statuses >= {"applied", "none", "skipped"}
    union = re.search(r"type MutationResult<R = Json> = ([^;]+);", dts())
    assert union is not None
    declared = set()
    for member in re.findall(r"\w+", union.group(1)):
        if member.startswith("Mutation"):
            declared |= set(re.findall(r'status: "(\w+)"',
                                       _block(dts(), f"interface {member}<" if member ==
                                              "MutationApplied" else f"interface {member} ")))
    assert declared == statuses


# ------------------------------------------------------------------ built-in connectors

_KIND_WORDS = {ToolKind.READ: "read", ToolKind.READ_BY_ID: "by-id read",
               ToolKind.MUTATE: "mutation"}


@pytest.mark.parametrize(("interface", "connector"),
                         [("HttpConnection", HttpConnector), ("SqlConnection", SqlConnector)])
def test_connection_tools_and_kinds(interface: str, connector: type) -> None:
    body = _block(dts(), f"interface {interface} ")
    kinds = {tool: word for word, tool in
             re.findall(r"/\*\* ([a-z -]+) \*/\s*readonly (\w+):", body)}
    assert set(kinds) == set(connector.tools)
    for tool, spec in connector.tools.items():
        assert kinds[tool] == _KIND_WORDS[spec.kind], tool
