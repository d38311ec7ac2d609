"""Text keepflow ships for people never cites the internal specification (users do not have
it): the messages of the sandbox prelude (its JavaScript string literals) and the files a user
reads or copies — the policy defaults, the TypeScript declarations, the shipped examples, the
web pages, the README and docs/.
(tests/unit/test_messages.py does the same for Python string literals.) Comments inside the
prelude, which only developers read, may cite SPEC."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow.sandbox.static.tree import Script, walk

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "keepflow"
PRELUDE = PACKAGE / "sandbox" / "prelude.js"
#: Files a user reads or copies, whole (comments included): the policy defaults, the
#: declarations, the examples, the web pages and their script, the README and docs/.
USER_FILES = sorted([*PACKAGE.glob("*.toml"), *PACKAGE.glob("*.d.ts"),
                     *(p for p in (PACKAGE / "examples").rglob("*") if p.is_file()
                       and p.suffix in (".js", ".ts", ".toml", ".md")),
                     *(PACKAGE / "web").rglob("*.html"), *(PACKAGE / "web").rglob("*.js"),
                     ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def _js_strings(source: str) -> list[tuple[int, str]]:
    script = Script(source)
    return [(script.line(n), script.text(n)) for n in walk(script.root)
            if n.type in ("string", "template_string")]


def test_the_prelude_strings_are_found() -> None:
    strings = [s for _, s in _js_strings(PRELUDE.read_text(encoding="utf-8"))]
    assert any("is not available in keepflow scripts" in s for s in strings)
    assert _js_strings('// SPEC §1\nconst a = "SPEC §2";') == [(2, '"SPEC §2"')]


def test_prelude_messages_never_cite_the_spec() -> None:
    cited = [(line, s) for line, s in _js_strings(PRELUDE.read_text(encoding="utf-8"))
             if "SPEC" in s]
    assert cited == [], f"prelude.js: point to docs/… instead of SPEC: {cited}"


@pytest.mark.parametrize("path", USER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_for_users_never_cite_the_spec(path: Path) -> None:
    cited = [(i, line) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if "SPEC §" in line]
    assert cited == [], f"{path.name}: point to docs/… instead of SPEC: {cited}"


def test_the_user_files_include_the_policy_and_the_declarations() -> None:
    names = {p.name for p in USER_FILES}
    assert {"default_policy.toml", "keepflow.d.ts", "README.md", "ui.md", "base.html"} <= names
