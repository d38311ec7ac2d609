"""The tool catalog (``keepflow.connectors.catalog``): the registry is the one source of the
tool reference in docs/connectors.md (SPEC §9), and every built-in tool declares what the
docs and the Planner need."""

from __future__ import annotations

from pathlib import Path

from keepflow.connectors import catalog
from keepflow.connectors.base import ToolKind

DOCS = Path(__file__).resolve().parents[3] / "docs" / "connectors.md"


def test_the_docs_tool_reference_is_the_registry_s() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert catalog.updated(text) == text, (
        "docs/connectors.md is stale: run python -m keepflow.connectors.catalog --write "
        "docs/connectors.md")


def test_every_builtin_tool_declares_params_result_and_for_mutations_its_reconcile() -> None:
    for type_name, tools in catalog.catalog().items():
        assert tools, type_name
        for t in tools:
            where = f"{type_name}.{t['name']}"
            assert all(t[k] for k in ("params", "result", "description")), where
            if t["kind"] == ToolKind.MUTATE.value:
                assert t["reconcile"], where


def test_the_reference_is_replaced_in_place_and_appended_when_missing() -> None:
    block = catalog.reference_markdown()
    stale = f"# Doc\n\n{catalog.BEGIN}\nold\n{catalog.END}\n\n## After\n"
    assert catalog.updated(stale) == f"# Doc\n\n{block}\n\n## After\n"
    assert catalog.updated("# Doc\n").endswith(block + "\n")


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "c.md"
    path.write_text("# Doc\n", encoding="utf-8")
    assert catalog.main(["--check", str(path)]) == 1
    assert catalog.main(["--write", str(path)]) == 0
    assert catalog.main(["--check", str(path)]) == 0
