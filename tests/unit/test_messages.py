"""Messages people see point to our docs, and the docs they point to exist (docs that cannot
rot): no string in the code cites the internal specification, and every ``docs/<page>.md#anchor``
a string names is a heading of that page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "src" / "keepflow").rglob("*.py"))
_DOC_REF = re.compile(r"docs/([a-z0-9_-]+\.md)(?:#([a-z0-9_-]+))?")


def _strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings (what can reach a person)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def _anchors(page: Path) -> set[str]:
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))  # GitHub keeps "_"
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_messages_never_cite_the_spec(path: Path) -> None:
    cited = [(line, s) for line, s in _strings(path) if "SPEC §" in s]
    assert cited == [], f"{path.name}: point to docs/… instead of SPEC: {cited}"


def test_every_docs_link_in_a_message_exists() -> None:
    missing = []
    for path in [*SOURCES, *sorted((ROOT / "src" / "keepflow").rglob("*.js"))]:
        text = path.read_text(encoding="utf-8")
        for m in _DOC_REF.finditer(text):
            page = ROOT / "docs" / m.group(1)
            if not page.exists():
                missing.append(f"{path.name}: docs/{m.group(1)} does not exist")
            elif m.group(2) and m.group(2) not in _anchors(page):
                missing.append(f"{path.name}: docs/{m.group(1)} has no heading #{m.group(2)}")
    assert sorted(set(missing)) == []
