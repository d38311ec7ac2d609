"""The suite's own layout: pytest imports a test file outside a package by its base name
alone, so two such files with one name make collection fail — on a clean checkout, after
the whole suite ran. Caught here in a second instead."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_files_outside_packages_have_unique_names() -> None:
    by_name: defaultdict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        if not (path.parent / "__init__.py").exists():
            by_name[path.name].append(str(path.relative_to(TESTS)))
    assert {n: ps for n, ps in by_name.items() if len(ps) > 1} == {}
