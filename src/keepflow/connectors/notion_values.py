"""Notion property values both ways, for the ``notion`` connector (SPEC §9,
docs/connectors.md#notion).

* :func:`flatten` turns a property value of a page object (as Notion's API returns it) into
  plain JSON: title/rich_text → text, number, select/status → name, multi_select → [names],
  date → start, checkbox, url, email, phone_number, people/relation → [ids],
  created_time/last_edited_time → the timestamp, formula → its result; any other type →
  its type name. Every string is cleaned and bounded; a value that does not have the shape
  of its type is ``null``.
* :func:`to_notion` turns a plain value a script gives into the property value Notion
  expects for the property's type in the database schema, or raises ``PermanentError``
  naming ``properties.<name>`` — before anything is sent.
* :func:`same_value` compares what a page holds with what a call wrote (reconcile).

Nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Final

from keepflow.connectors.feed import clean_text
from keepflow.connectors.secret import Redactor
from keepflow.errors import PermanentError

#: Characters of one text value handed back (title, rich_text, formula string).
TEXT_CHARS: Final = 10_000
#: Characters of a name (select option, property name) or a short value (email, phone).
NAME_CHARS: Final = 200
#: Characters of a url value or a timestamp handed back.
URL_CHARS: Final = 2048
STAMP_CHARS: Final = 64
#: Items of a multi_select, people or relation value handed back.
LIST_ITEMS: Final = 100
#: Rich-text pieces read at most from one value (Notion sends at most 100).
PIECES_READ: Final = 1000

#: Notion's request limits (developers.notion.com/reference/request-limits).
PIECE_UNITS: Final = 2000  # UTF-16 code units of one text object
MAX_PIECES: Final = 100  # elements of any array
MAX_WRITE_CHARS: Final = PIECE_UNITS * MAX_PIECES
MAX_URL: Final = 2000
MAX_EMAIL: Final = 200
MAX_PHONE: Final = 200
MAX_OPTION: Final = 100

#: Types a script may write, and those a ``key_property`` may have (filterable by equals).
WRITABLE: Final = frozenset({"title", "rich_text", "number", "select", "status",
                             "multi_select", "date", "checkbox", "url", "email",
                             "phone_number"})
KEY_TYPES: Final = frozenset({"title", "rich_text", "number", "select", "status", "url",
                              "email", "phone_number"})

_ID: Final = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                        r"[0-9a-fA-F]{12}\Z")
_TYPE_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_DATE_ONLY: Final = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
#: A number a script can use exactly (JavaScript's safe integers).
SAFE_INTEGER: Final = 2 ** 53

Bad = Callable[[str, str], PermanentError]


def notion_id(value: Any) -> str | None:
    """A Notion id (32 hex digits, dashes optional) in its canonical dashed lower-case form;
    ``None`` for anything else."""
    if not isinstance(value, str) or not _ID.match(value):
        return None
    h = value.replace("-", "").lower()
    if len(h) != 32:
        return None
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- reading ------------------------------------------------------------------------------


def flatten(prop: Any, redact: Redactor) -> Any:
    """A page's property value as plain JSON (see the module docstring)."""
    if not isinstance(prop, Mapping):
        return None
    kind = prop.get("type")
    if not isinstance(kind, str):
        return None
    value = prop.get(kind)
    if kind in ("title", "rich_text"):
        return plain_text(value, redact)
    if kind == "number":
        return _number(value)
    if kind in ("select", "status"):
        return _name(value, redact)
    if kind == "multi_select":
        return _names(value, redact)
    if kind == "date":
        return _date_start(value, redact)
    if kind == "checkbox":
        return value if isinstance(value, bool) else None
    if kind == "url":
        return clean_text(value, URL_CHARS, redact)
    if kind in ("email", "phone_number"):
        return clean_text(value, NAME_CHARS, redact)
    if kind in ("people", "relation"):
        return _ids(value)
    if kind in ("created_time", "last_edited_time"):
        return clean_text(value, STAMP_CHARS, redact)
    if kind == "formula":
        return _formula(value, redact)
    return kind if _TYPE_NAME.match(kind) else "unknown"


def plain_text(value: Any, redact: Redactor, limit: int = TEXT_CHARS) -> str:
    """The text of a rich-text array (``plain_text`` of each piece), cleaned and cut; ``""``
    when there is none. Reads no more than it needs, whatever the server sent."""
    raw = raw_text(value, 4 * limit)
    if raw is None:
        return ""
    return clean_text(raw, limit, redact, multiline=True) or ""


def raw_text(value: Any, limit: int = MAX_WRITE_CHARS + 1) -> str | None:
    """The uncleaned text of a rich-text array, at most about ``limit`` characters; ``None``
    when it is not an array."""
    if not isinstance(value, list):
        return None
    out: list[str] = []
    size = 0
    for piece in value[:PIECES_READ]:
        if not isinstance(piece, Mapping):
            continue
        text = piece.get("plain_text")
        if not isinstance(text, str):
            inner = piece.get("text")
            text = inner.get("content") if isinstance(inner, Mapping) else None
        if not isinstance(text, str):
            continue
        out.append(text[:limit - size])
        size += len(out[-1])
        if size >= limit:
            break
    return "".join(out)


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if abs(value) <= SAFE_INTEGER:
            return value
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _name(value: Any, redact: Redactor) -> str | None:
    if not isinstance(value, Mapping):
        return None
    return clean_text(value.get("name"), NAME_CHARS, redact)


def _names(value: Any, redact: Redactor) -> list[str] | None:
    if not isinstance(value, list):
        return None
    names = (_name(option, redact) for option in value[:LIST_ITEMS])
    return [n for n in names if n is not None]


def _date_start(value: Any, redact: Redactor) -> str | None:
    if not isinstance(value, Mapping):
        return None
    return clean_text(value.get("start"), STAMP_CHARS, redact)


def _ids(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    ids = (notion_id(item.get("id")) if isinstance(item, Mapping) else None
           for item in value[:LIST_ITEMS])
    return [i for i in ids if i is not None]


def _formula(value: Any, redact: Redactor) -> Any:
    if not isinstance(value, Mapping):
        return None
    kind = value.get("type")
    inner = value.get(kind) if isinstance(kind, str) else None
    if kind == "string":
        return clean_text(inner, TEXT_CHARS, redact, multiline=True)
    if kind == "number":
        return _number(inner)
    if kind == "boolean":
        return inner if isinstance(inner, bool) else None
    if kind == "date":
        return _date_start(inner, redact)
    return None


# -- writing ------------------------------------------------------------------------------


def check_plain(field: str, value: Any, bad: Bad) -> None:
    """The shape every written value must have, whatever its property's type (checked in
    ``validate``): null, a boolean, a finite number, text, a list of texts, or a date object
    ``{start, end?}``."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(field, "must be a finite number")
        return
    if isinstance(value, str):
        check_text(field, value, MAX_WRITE_CHARS, bad)
        return
    if isinstance(value, list):
        if len(value) > MAX_PIECES:
            raise bad(field, f"has more than {MAX_PIECES} items (Notion's limit)")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise bad(f"{field}[{i}]", "must be text")
            check_text(f"{field}[{i}]", item, MAX_OPTION, bad)
        return
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in set(value) - {"start", "end"})
        if unknown:
            raise bad(field, f"a date is {{start, end?}}; unknown key '{unknown[0][:40]}'")
        for key in ("start", "end"):
            if value.get(key) is not None and not isinstance(value.get(key), str):
                raise bad(f"{field}.{key}", "must be an ISO 8601 date or date-time")
        if not isinstance(value.get("start"), str):
            raise bad(f"{field}.start", "is required: an ISO 8601 date or date-time")
        return
    raise bad(field, "must be null, a boolean, a number, text, a list of texts or "
                     "{start, end?}")


def check_text(field: str, value: str, limit: int, bad: Bad) -> None:
    if len(value) > limit:
        raise bad(field, f"is longer than {limit} characters")
    if "\x00" in value:
        raise bad(field, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(field, "is not valid Unicode (it holds a lone UTF-16 surrogate)") from None


def rich_text(text: str, field: str, bad: Bad) -> list[dict[str, Any]]:
    """``text`` as Notion text objects of at most 2,000 UTF-16 code units each."""
    pieces: list[dict[str, Any]] = []
    start = units = 0
    for i, c in enumerate(text):
        width = 2 if ord(c) > 0xFFFF else 1
        if units + width > PIECE_UNITS:
            pieces.append(_text_piece(text[start:i]))
            start, units = i, 0
        units += width
    if start < len(text):
        pieces.append(_text_piece(text[start:]))
    if len(pieces) > MAX_PIECES:
        raise bad(field, f"is too long for Notion: at most {MAX_PIECES} pieces of "
                         f"{PIECE_UNITS} characters")
    return pieces


def paragraph(text: str, index: int, bad: Bad) -> dict[str, Any]:
    """A paragraph block holding ``text``."""
    return {"object": "block", "type": "paragraph",
            "paragraph": {"rich_text": rich_text(text, f"children[{index}]", bad)}}


def _text_piece(content: str) -> dict[str, Any]:
    return {"type": "text", "text": {"content": content}}


def to_notion(field: str, kind: str, value: Any, bad: Bad) -> dict[str, Any]:
    """The property value for a property of type ``kind`` (``field`` names it in errors)."""
    if kind not in WRITABLE:
        raise bad(field, f"is a {_shown(kind)} property, which this connector cannot set "
                         f"(it sets {', '.join(sorted(WRITABLE))})")
    if kind in ("title", "rich_text"):
        if value is None:
            return {kind: []}
        if not isinstance(value, str):
            raise bad(field, f"is a {kind} property: give text (or null to empty it)")
        return {kind: rich_text(value, field, bad)}
    if kind == "number":
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(field, "is a number property: give a number (or null)")
        return {"number": value}
    if kind in ("select", "status"):
        if value is None:
            if kind == "status":
                raise bad(field, "is a status property: give the name of one of its options")
            return {"select": None}
        option_name(field, kind, value, bad)
        return {kind: {"name": value}}
    if kind == "multi_select":
        if not isinstance(value, list):
            raise bad(field, "is a multi_select property: give a list of option names")
        for i, item in enumerate(value):
            option_name(f"{field}[{i}]", kind, item, bad)
        return {"multi_select": [{"name": item} for item in value]}
    if kind == "date":
        return {"date": _date_value(field, value, bad)}
    if kind == "checkbox":
        if not isinstance(value, bool):
            raise bad(field, "is a checkbox property: give true or false")
        return {"checkbox": value}
    limit = {"url": MAX_URL, "email": MAX_EMAIL, "phone_number": MAX_PHONE}[kind]
    if value is not None and not isinstance(value, str):
        raise bad(field, f"is a {kind} property: give text (or null)")
    if isinstance(value, str) and len(value) > limit:
        raise bad(field, f"is longer than {limit} characters (Notion's limit for {kind})")
    return {kind: value or None}


def option_name(field: str, kind: str, value: Any, bad: Bad) -> None:
    if not isinstance(value, str) or not value.strip():
        raise bad(field, f"is a {kind} property: give an option name (text)")
    if len(value) > MAX_OPTION:
        raise bad(field, f"is longer than {MAX_OPTION} characters (Notion's limit for "
                         "option names)")
    if "," in value:
        raise bad(field, "Notion option names cannot contain commas")


def _date_value(field: str, value: Any, bad: Bad) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"start": iso_moment(field, value, bad)}
    if isinstance(value, Mapping) and isinstance(value.get("start"), str):
        start, end = value["start"], value.get("end")
    else:
        raise bad(field, "is a date property: give an ISO 8601 date or date-time, or "
                         "{start, end?}")
    out: dict[str, Any] = {"start": iso_moment(f"{field}.start", start, bad)}
    if end is not None:
        if not isinstance(end, str):
            raise bad(f"{field}.end", "must be an ISO 8601 date or date-time")
        out["end"] = iso_moment(f"{field}.end", end, bad)
    return out


def iso_moment(field: str, text: str, bad: Bad) -> str:
    if len(text) > STAMP_CHARS or parse_moment(text) is None:
        raise bad(field, f"{text[:40]!r} is not an ISO 8601 date (2024-01-31) or date-time "
                         "(2024-01-31T09:30:00Z)")
    return text


def parse_moment(text: str) -> date | datetime | None:
    """An ISO 8601 date or date-time (naive date-times count as UTC); ``None`` otherwise."""
    try:
        if _DATE_ONLY.match(text):
            return date.fromisoformat(text)
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def key_filter(name: str, kind: str, value: Any) -> dict[str, Any]:
    """Notion's filter for ``name`` equal to ``value`` (``kind`` in :data:`KEY_TYPES`)."""
    condition = value if kind in ("number",) else str(value)
    return {"property": name, kind: {"equals": condition}}


# -- comparing (reconcile) ----------------------------------------------------------------


def same_value(kind: str, written: Any, prop: Any) -> bool:
    """Whether the page's property value ``prop`` holds what a call wrote as ``written``."""
    if not isinstance(prop, Mapping) or prop.get("type") != kind:
        return False
    held = prop.get(kind)
    if kind in ("title", "rich_text"):
        return raw_text(held) == (written or "")
    if kind == "number":
        number = _number(held)
        if written is None or number is None:
            return written is None and held is None
        return math.isclose(float(number), float(written), rel_tol=1e-12, abs_tol=0.0)
    if kind in ("select", "status"):
        name = held.get("name") if isinstance(held, Mapping) else None
        return bool(name == written)
    if kind == "multi_select":
        if not isinstance(held, list):
            return False
        names = [o.get("name") if isinstance(o, Mapping) else None for o in held]
        return names == list(written)
    if kind == "date":
        return _same_date(written, held)
    if kind == "checkbox":
        return held is written
    return bool((held or None) == (written or None))


def _same_date(written: Any, held: Any) -> bool:
    if written is None or held is None:
        return written is None and held is None
    if not isinstance(held, Mapping):
        return False
    start, end = (written, None) if isinstance(written, str) else (written.get("start"),
                                                                   written.get("end"))
    return _same_moment(start, held.get("start")) and _same_moment(end, held.get("end"))


def _same_moment(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    x, y = parse_moment(a), parse_moment(b)
    return x is not None and type(x) is type(y) and x == y


def _shown(text: str) -> str:
    return text if _TYPE_NAME.match(text) else "unknown"
