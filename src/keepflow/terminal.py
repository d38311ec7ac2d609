"""Text that is safe to show a person: untrusted strings never drive the operator's terminal.

Titles, messageIds, handler names, logs and error messages come from LLM-written scripts and
from outside servers. Printed raw, they can clear the screen (``ESC [2J``), overwrite or forge
lines (CR, LF), write the clipboard (OSC 52), hide links (OSC 8), or reorder what is shown
(bidi overrides). Every surface that shows such text to a person goes through this module:

* :func:`visible` — one untrusted value, shown unambiguously: each control or format character
  becomes a Python-style escape (``\\x1b``, ``\\r``, ``\\n``, ``\\u202e``), and a backslash
  becomes ``\\\\``, so the original can always be read back off the screen.
* :func:`visible_data` — the same, deep, over the JSON-shaped data a printer receives.
* :func:`visible_line` / :func:`visible_lines` — text keepflow composed itself (an error
  message that quotes a value with ``repr``, a whole output line): controls are shown, but
  backslashes stay as they are, so already-escaped parts are not escaped twice;
  :func:`visible_lines` keeps keepflow's own layout newlines.
* :func:`dumps_json` — JSON whose *values* are exact and whose *text* is safe to print.

What counts as unsafe is decided by Unicode category, not by a hand-kept list: ``Cc`` (C0,
DEL, C1), ``Cf`` (bidi embeddings, overrides and isolates, zero-width and other invisible
format characters, tag characters), ``Cs`` (lone surrogates: text decoded from invalid UTF-8,
or old data) and the line/paragraph separators ``Zl``/``Zp``. The result never depends on
whether the output is a terminal. No click here: the web UI reuses it. See
``docs/security.md#terminal-output``.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_unsafe(ch: str) -> bool:
    """True for a character that must never reach a terminal as itself."""
    return unicodedata.category(ch) in UNSAFE_CATEGORIES


def python_escape(cp: int) -> str:
    """``\\n``, ``\\xHH``, ``\\uHHHH`` or ``\\UHHHHHHHH``: how Python's ``repr`` writes it."""
    ch = chr(cp)
    if ch in _NAMED:
        return _NAMED[ch]
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def json_escape(cp: int) -> str:
    """``\\uHHHH`` (a surrogate pair above the BMP): valid inside any JSON string."""
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    cp -= 0x10000
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


class _EscapeTable(dict[int, str]):
    """A ``str.translate`` table filled on first sight of each code point.

    Deciding by category needs :mod:`unicodedata` per code point; building the whole table up
    front would cost every CLI call a scan of 1.1 million code points. Filled lazily, the cost
    is one lookup per distinct character ever seen, and ``str.translate`` stays in C.
    """

    def __init__(self, escape: Callable[[int], str], *, keep: str = "",
                 backslash: bool = False) -> None:
        super().__init__()
        self._escape = escape
        self._keep = keep
        if backslash:
            self[ord("\\")] = "\\\\"

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        out = self._escape(cp) if is_unsafe(ch) and ch not in self._keep else ch
        self[cp] = out
        return out


_VALUE = _EscapeTable(python_escape, backslash=True)
_LINE = _EscapeTable(python_escape)
_LINES = _EscapeTable(python_escape, keep="\n")
_JSON = _EscapeTable(json_escape, keep="\n")


class Shown(str):
    """Text already made safe to print (the result of :func:`visible` or :func:`dumps_json`).

    Like an HTML-escaping library's "markup" string: :func:`visible` and :func:`visible_data`
    pass it through unchanged, so text is never escaped twice. Only this module creates it.
    """

    __slots__ = ()


def visible(text: str) -> Shown:
    """One untrusted value, every control and format character shown as an escape."""
    if isinstance(text, Shown):
        return text
    if text.isprintable() and "\\" not in text:  # the common case: nothing to do
        return Shown(text)
    return Shown(text.translate(_VALUE))


def visible_line(text: str) -> str:
    """Text keepflow composed (it may quote values with ``repr``), shown on one line."""
    return text if text.isprintable() else text.translate(_LINE)


def visible_lines(text: str) -> str:
    """Text keepflow composed, keeping its own layout newlines: the last guard before output."""
    return text.translate(_LINES)


def visible_data(value: Any) -> Any:
    """JSON-shaped data with every string (keys too) passed through :func:`visible`.

    Numbers, booleans and ``None`` are kept, so printers can still format them; any other
    object becomes its visible ``str`` — a printer never receives raw text.
    """
    if isinstance(value, str):
        return visible(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {visible_data(k): visible_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [visible_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(visible_data(v) for v in value)
    return visible(str(value))


def dumps_json(value: Any, *, indent: int | None = 2) -> Shown:
    """JSON text with exact values that is also safe to print.

    ``json.dumps(ensure_ascii=False)`` escapes only C0 controls; DEL, C1, bidi and other format
    characters, U+2028/U+2029 and lone surrogates would stay raw (and a lone surrogate cannot
    even be encoded for output). They can only occur inside JSON strings, where a ``\\uXXXX``
    escape denotes the same value, so parsing the text gives back exactly ``value``. Other
    non-ASCII text stays readable. Objects JSON lacks are written as their ``str``.
    """
    text = json.dumps(value, indent=indent, ensure_ascii=False, default=str)
    return Shown(text.translate(_JSON))


def json_preview(value: Any, limit: int) -> Shown:
    """The first ``limit`` characters of :func:`dumps_json` on one line (e.g. a payload)."""
    return Shown(dumps_json(value, indent=None)[:limit])
