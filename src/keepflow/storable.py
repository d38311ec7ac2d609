"""Text the host can store: valid Unicode without NUL (docs/security.md#text-the-host-can-store).

JavaScript strings are sequences of UTF-16 code units, so a script can build a string holding a
*lone surrogate* (``"\\ud800"``): it crosses the sandbox boundary as a JSON escape, Python
decodes it into a ``str`` that UTF-8 cannot encode, and the first write to SQLite or PostgreSQL
fails with ``UnicodeEncodeError``. PostgreSQL also refuses U+0000 in ``text`` and ``jsonb``.
Either would crash the host outside any run, so the rule is the same on both stores:

* values a **script** hands to the host (payloads, titles, messageIds, state, PrepareResults,
  mutation parameters, return values) must be storable, or the run fails as a ``logic``
  failure naming the value's path (:func:`first_unstorable`) — before anything is recorded or
  sent;
* text a script writes for people (log lines, thrown messages, stacks) is kept, with each
  unstorable character written out visibly as ``\\uXXXX`` (:func:`escape_text`);
* values that come from the **outside world** (connector results and error messages) are kept,
  with each unstorable character replaced by U+FFFD (:func:`replace_unstorable`): they were
  never valid text, and what the script receives is exactly what is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Lone surrogates (never valid in UTF-8) and NUL (refused by PostgreSQL).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: In JSON text, such characters can only appear as escapes (JSON.stringify never writes them
#: raw): a payload without this pattern is storable and needs no walk (the fast path).
_ESCAPED = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Unstorable:
    """Where a value holds text the host cannot store."""

    path: str  # JSON path, ``$`` is the value itself: ``$.items[2].title``
    char: str

    @property
    def problem(self) -> str:
        code = ord(self.char)
        if code == 0:
            return "contains a NUL character (U+0000), which the store cannot keep"
        return (f"contains a lone UTF-16 surrogate (U+{code:04X}), which is not valid "
                "Unicode text")

    def describe(self, what: str) -> str:
        where = "" if self.path == "$" else f" at {self.path}"
        return (f"{what}{where} {self.problem}; send only valid text (check how the string is "
                "built, e.g. a slice that cuts an emoji in half), or encode binary data as "
                "base64 (docs/security.md#text-the-host-can-store)")


def maybe_unstorable(json_text: bytes) -> bool:
    """Cheap prefilter on JSON text: False means every string it holds is storable."""
    return _ESCAPED.search(json_text) is not None


def _key_path(path: str, key: str) -> str:
    if key.isidentifier() and key.isascii():
        return f"{path}.{key}"
    return f"{path}[{escape_text(repr(key))}]"


def first_unstorable(value: Any, path: str = "$") -> Unstorable | None:
    """The first string or key in a JSON value the host cannot store, or None."""
    if isinstance(value, str):
        m = _UNSTORABLE.search(value)
        return Unstorable(path, m.group()) if m else None
    if isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            m = _UNSTORABLE.search(key)
            if m:
                return Unstorable(f"{path} (a key)", m.group())
            found = first_unstorable(v, _key_path(path, key))
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = first_unstorable(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def escape_text(text: str) -> str:
    """``text`` with each unstorable character written as ``\\uXXXX`` (for human text)."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def escape_deep(value: Any) -> Any:
    """:func:`escape_text` applied to every string and key of a JSON value."""
    return _deep(value, escape_text)[0]


def replace_unstorable(value: Any) -> tuple[Any, int]:
    """A JSON value with each unstorable character replaced by U+FFFD, and how many were.

    Returns the same object when nothing needed replacing (the common case costs one walk).
    """
    count = 0

    def one(text: str) -> str:
        nonlocal count
        fixed, n = _UNSTORABLE.subn(REPLACEMENT, text)
        count += n
        return fixed

    out, _ = _deep(value, one)
    return out, count


def _deep(value: Any, fix: Any) -> tuple[Any, bool]:
    """``value`` with ``fix`` applied to strings; ``(value, changed)``, unchanged objects reused."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value) is None:
            return value, False
        return fix(value), True
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for k, v in value.items():
            nk, kc = _deep(k, fix) if isinstance(k, str) else (k, False)
            nv, vc = _deep(v, fix)
            changed = changed or kc or vc
            out[nk] = nv
        return (out, True) if changed else (value, False)
    if isinstance(value, (list, tuple)):
        items = [_deep(v, fix) for v in value]
        if any(c for _, c in items):
            return [v for v, _ in items], True
        return value, False
    return value, False
