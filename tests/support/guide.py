"""The fenced JavaScript blocks of docs/writing-workflows.md and their markers.

Every ```js block of the guide is preceded (on the line before its fence) by one HTML comment:

* ``<!-- example: NAME [connections=a,b] [warnings=rule,...] -->`` — a complete, deployable
  script; ``connections`` lists the connections it needs besides the default ``http``,
  ``warnings`` the deploy warnings it is expected to get (by rule name; none otherwise);
* ``<!-- fragment -->`` — a piece of a script, shown for explanation only.

The docs tests deploy and run every example and refuse an unmarked block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-workflows.md"

_FENCE = re.compile(r"^```(\S*)\s*$")
_EXAMPLE = re.compile(r"^<!-- example: ([a-z0-9][a-z0-9-]*)((?: [a-z]+=[^ ]*)*) -->$")
_FRAGMENT = "<!-- fragment -->"


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    marker: str | None  # the comment on the line before the fence, if any


@dataclass(frozen=True)
class Example:
    name: str
    line: int
    source: str
    connections: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the guide, in order."""
    lines = (GUIDE.read_text(encoding="utf-8") if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        before = lines[start - 1].strip() if start > 0 else ""
        marker = before if before.startswith("<!--") else None
        out.append(Block(start + 1, m.group(1), "\n".join(body) + "\n", marker))
        i += 1
    return out


def js_blocks(text: str | None = None) -> list[Block]:
    return [b for b in blocks(text) if b.lang in ("js", "javascript", "mjs")]


def is_fragment(block: Block) -> bool:
    return block.marker == _FRAGMENT


def example_of(block: Block) -> Example | None:
    """The example a block's marker declares, or ``None`` if it is not one."""
    m = _EXAMPLE.match(block.marker or "")
    if m is None:
        return None
    options = dict(opt.split("=", 1) for opt in m.group(2).split())
    unknown = set(options) - {"connections", "warnings"}
    if unknown:
        raise ValueError(f"line {block.line}: unknown example option(s) {sorted(unknown)}")
    def listed(key: str) -> tuple[str, ...]:
        return tuple(n for n in options.get(key, "").split(",") if n)

    return Example(m.group(1), block.line, block.source, listed("connections"),
                   listed("warnings"))


def examples(text: str | None = None) -> list[Example]:
    return [e for b in js_blocks(text) if (e := example_of(b)) is not None]
