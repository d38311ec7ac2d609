"""Secret setting values that cannot leak by accident (SPEC §9: never logged, never shown).

``connections.toml`` never holds secrets itself: a key ending in ``_env`` names an environment
variable, and :mod:`keepflow.connectors.config` wraps the variable's value in :class:`Secret`.
Because the wrapper's ``repr``/``str`` never show the value, a ``ConnectionConfig`` (a plain
dataclass with the generated ``repr``), a connector, a log line or an f-string in an error
message can print its settings without exposing anything. Code that really needs the value
calls :meth:`Secret.reveal` at the last moment (building a request header, opening a database).

:class:`Redactor` is the other half: whatever a remote system sends back (a body, a header, an
error text) may echo a secret, whole, in pieces, encoded, or cut off by a length limit; it is
masked before anything keeps it (docs/connectors.md#configuring-connections).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

#: What a secret looks like wherever it is printed.
MASK = "***"


class Secret:
    """A secret string from the environment variable ``source``, or from the store's
    credential ``source`` = ``stored:<name>`` (keepflow.credentials)."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        """The secret value. Call only where it is sent to the external system."""
        return self._value

    @property
    def source(self) -> str:
        """The environment variable (or ``stored:<credential>``) it came from (not secret)."""
        return self._source

    def __repr__(self) -> str:
        stored = self._source.startswith("stored:")
        return f"Secret({self._source})" if stored else f"Secret(${self._source})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        # Pickling would copy the value to wherever the pickle goes (a worker, a file).
        raise TypeError("a Secret cannot be pickled")


def reveal(value: Any) -> Any:
    """``value`` with a :class:`Secret` replaced by its plain value; other values unchanged."""
    return value.reveal() if isinstance(value, Secret) else value


def is_secret(value: Any) -> bool:
    return isinstance(value, Secret)


def secret_values(settings: Mapping[str, Any]) -> list[str]:
    """Every secret value found in ``settings`` (nested mappings and lists included)."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, Secret):
            found.append(v.reveal())
        elif isinstance(v, Mapping):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    walk(settings)
    return found


#: Secrets (and secret pieces) shorter than this are not masked: masking them would mangle
#: ordinary text and protects nothing.
MIN_SECRET_CHARS = 4
#: A text that *ends* with at least this many characters of a credential is taken to be a
#: cut-off echo of it, and that tail is masked (a response cut at a size limit, a body that
#: broke off). Shorter tails are left alone so that ordinary text is not mangled.
MIN_CUT_PREFIX_CHARS = 6

# "<scheme> <credential>": the shape of an Authorization-style header value (RFC 9110 §11.4).
_SCHEMED = re.compile(r"([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)[ \t]+(\S(?:.*\S)?)\s*\Z", re.S)
_JSON_SHORT = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n",
               "\r": "\\r", "\t": "\\t"}
# An encoded character cut in the middle (``%2``, ``%C3%A``, ``\u00``) at the end of a text.
_PARTIAL_ESCAPE = re.compile(
    r"(?:(?:%[0-9A-Fa-f]{2}){0,3}%[0-9A-Fa-f]?|(?:%[0-9A-Fa-f]{2}){1,3}"
    r"|\\(?:u[0-9A-Fa-f]{0,4}(?:\\(?:u[0-9A-Fa-f]{0,3})?)?)?)\Z")
# A percent-encoded or JSON-escaped character takes at most 12 characters (4 UTF-8 bytes).
_MAX_ENCODED_CHAR = 12


def secret_pieces(secret: str) -> list[tuple[str, bool]]:
    """The strings that give ``secret`` away, each with whether a cut-off prefix counts.

    The value itself; for ``Scheme credential`` values (``Bearer x``, ``Token x``, ``Basic x``)
    the bare credential, and for Basic the decoded ``user:password`` and the password; for a
    URL with a password, the password and ``user:password``. A cut-off prefix gives away
    only the *credential* pieces: ``Bearer …`` or ``postgresql://…`` cut short reveal nothing,
    and masking them would mangle ordinary text.
    """
    pieces: list[tuple[str, bool]] = []
    schemed = _SCHEMED.match(secret)
    is_url = "://" in secret
    pieces.append((secret, schemed is None and not is_url))
    if schemed is not None:
        scheme, credential = schemed.group(1), schemed.group(2)
        pieces.append((credential, True))
        if scheme.lower() == "basic":
            pieces += _userinfo_pieces(_decode_basic(credential))
    if is_url:
        try:
            parts = urlsplit(secret.strip())
            user, password = parts.username, parts.password
        except ValueError:
            user = password = None
        if password:
            pieces += _userinfo_pieces(f"{unquote(user or '')}:{unquote(password)}")
    return pieces


def _decode_basic(credential: str) -> str:
    try:
        return base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return ""


def _userinfo_pieces(userinfo: str) -> list[tuple[str, bool]]:
    if ":" not in userinfo:
        return [(userinfo, True)] if userinfo else []
    password = userinfo.split(":", 1)[1]
    return [(userinfo, True), (password, True)]


def _char_pattern(c: str) -> str:
    """A regex for one character of a secret, written plainly or in any encoding."""
    alts = [re.escape(c), "".join(f"%{b:02x}" for b in c.encode("utf-8"))]
    if c == " ":
        alts.append(r"\+")  # application/x-www-form-urlencoded
    cp = ord(c)
    if cp < 0x10000:
        alts.append(rf"\\u{cp:04x}")
    else:  # JSON writes astral characters as a surrogate pair
        cp -= 0x10000
        alts.append(rf"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}")
    if c in _JSON_SHORT:
        alts.append(re.escape(_JSON_SHORT[c]))
    return "(?:" + "|".join(alts) + ")"


@dataclass(frozen=True)
class _Needle:
    """One secret piece, with the pattern of each of its characters."""

    value: str
    chars: tuple[str, ...]
    cut_prefix: bool

    @classmethod
    def of(cls, value: str, cut_prefix: bool) -> _Needle:
        return cls(value, tuple(_char_pattern(c) for c in value), cut_prefix)

    @property
    def pattern(self) -> str:
        return "".join(self.chars)


class Redactor:
    """Masks secret values — whole, in pieces, encoded, or cut off — with :data:`MASK`.

    Connectors pass everything a remote system sends back (results, error texts, headers,
    log records) through this *before* cutting it to a size limit: a server that echoes the
    ``Authorization`` header must not put the token into the ledger, a log or the UI, and a
    cut must not leave all but its last characters behind.

    For each secret it masks every piece of :func:`secret_pieces` (at least
    :data:`MIN_SECRET_CHARS` long), written plainly, percent-encoded (``%2F`` or ``%2f``,
    ``+`` for a space), JSON-escaped (``\\u0041``, ``\\/``) or any mix of these, in any
    letter case (a server may lower-case a header name or upper-case a hex token). A text
    that ends with at least :data:`MIN_CUT_PREFIX_CHARS` characters of a credential piece
    has that tail masked.
    """

    MIN_LENGTH = MIN_SECRET_CHARS

    def __init__(self, secrets: Iterable[str]) -> None:
        needles: dict[str, _Needle] = {}
        for secret in secrets:
            for value, cut_prefix in secret_pieces(secret):
                if len(value) < MIN_SECRET_CHARS:
                    continue
                known = needles.get(value)
                if known is None or (cut_prefix and not known.cut_prefix):
                    needles[value] = _Needle.of(value, cut_prefix)
        # Longest first: where two pieces start at the same place, the whole one is masked.
        ordered = sorted(needles.values(), key=lambda n: len(n.value), reverse=True)
        self._whole = _alternatives(ordered) if ordered else None
        self._folded = [n.value.casefold() for n in ordered]
        self._prefixed = [(n, re.compile("".join(n.chars[:MIN_CUT_PREFIX_CHARS]), re.I),
                           [re.compile(p, re.I) for p in n.chars])
                          for n in ordered if n.cut_prefix and len(n.value) > MIN_CUT_PREFIX_CHARS]

    def __bool__(self) -> bool:
        return self._whole is not None

    def text(self, s: str) -> str:
        """``s`` with every secret piece masked, and a cut-off credential at its end."""
        if self._whole is None:
            return s
        if self._may_contain(s):
            s = self._whole.sub(MASK, s)
        return self._mask_cut_tail(s)

    def _may_contain(self, s: str) -> bool:
        """A fast, conservative pre-check (the full pattern is slow on megabytes of text).

        Without ``%``, ``\\`` or ``+`` in ``s`` no piece can be there encoded, so a
        case-folded substring search decides; otherwise the full pattern must look.
        """
        if "%" in s or "\\" in s or "+" in s:
            return True
        folded = s.casefold()
        return any(n in folded for n in self._folded)

    def cut(self, s: str, limit: int) -> tuple[str, bool]:
        """``s`` redacted, *then* cut to ``limit`` characters; returns (text, was_cut)."""
        s = self.text(s)
        if len(s) <= limit:
            return s, False
        return self._mask_cut_tail(s[:limit]), True

    def deep(self, value: Any) -> Any:
        """``value`` (a JSON value) with every string — keys included — redacted.

        A number that spells a secret (a numeric PIN echoed as JSON) becomes :data:`MASK`.
        """
        if self._whole is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        if isinstance(value, dict):
            return {self.text(str(k)): self.deep(v) for k, v in value.items()}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return MASK if self.text(str(value)) != str(value) else value
        return value

    def _mask_cut_tail(self, s: str) -> str:
        """Mask the end of ``s`` if it is the beginning of a credential (a cut-off echo)."""
        cut_at = len(s)
        for needle, head, chars in self._prefixed:
            start = max(0, len(s) - _MAX_ENCODED_CHAR * len(needle.value))
            while (m := head.search(s, start)) is not None and m.start() < cut_at:
                if _runs_to_end(s, m.end(), chars, MIN_CUT_PREFIX_CHARS):
                    cut_at = m.start()
                    break
                start = m.start() + 1
        return s if cut_at == len(s) else s[:cut_at] + MASK


def _alternatives(needles: list[_Needle]) -> re.Pattern[str]:
    """One pattern for all needles; the look-ahead lets the regex engine skip ahead fast."""
    first = {"%", "\\"}
    for n in needles:
        first.add(n.value[0])
        if n.value[0] == " ":
            first.add("+")
    lead = "[" + "".join(re.escape(c) for c in sorted(first)) + "]"
    return re.compile(f"(?={lead})(?:" + "|".join(n.pattern for n in needles) + ")", re.I)


def _runs_to_end(s: str, pos: int, chars: list[re.Pattern[str]], matched: int) -> bool:
    """Whether the characters ``chars[matched:]`` continue at ``pos`` up to the end of ``s``."""
    for char in chars[matched:]:
        if pos == len(s):
            return True
        m = char.match(s, pos)
        if m is None:
            break
        pos = m.end()
    return pos == len(s) or _PARTIAL_ESCAPE.match(s, pos) is not None
