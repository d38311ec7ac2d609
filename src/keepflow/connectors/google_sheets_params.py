"""The params of the ``google_sheets`` tools, checked before anything is sent (SPEC §9;
docs/connectors.md#google_sheets), and how cell values compare.

Every param a script passes is checked here: the spreadsheet id (a path segment: letters,
digits, ``-`` and ``_`` only, and in the connection's ``spreadsheets`` list when it has one),
the tab name (any text Google allows, always single-quoted in a range, so nothing in it can
end the quote), row numbers, column spans, and each value written (text, a finite number a
double holds exactly, a boolean or null; at most one cell's 50,000 characters).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from keepflow.connectors.base import ToolCall
from keepflow.connectors.google_sheets_api import DOC, MAX_COLUMN, MAX_ROW, column_number, inert
from keepflow.errors import PermanentError, PermissionDenied

PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "read_rows": frozenset({"spreadsheet", "sheet", "header_row", "range", "limit", "offset"}),
    "append_row": frozenset({"spreadsheet", "sheet", "values", "key_column", "header_row"}),
    "update_row": frozenset({"spreadsheet", "sheet", "key_column", "key", "values",
                             "header_row"}),
}
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
#: Characters of a cell Google allows (and so at most what a cell value is cut to).
CELL_CHARS: Final = 50_000
#: Characters of a column name (a header cell) returned, and of one a script names.
NAME_CHARS: Final = 256
#: Characters of a tab name Google allows.
TAB_CHARS: Final = 100
#: Bytes of the values of one change, as JSON (Google recommends at most 2 MB a request).
MAX_WRITE_BYTES: Final = 1024 * 1024
#: The largest whole number a cell (a double) holds exactly.
MAX_EXACT: Final = 2 ** 53
SPREADSHEET_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_COLUMNS: Final = re.compile(r"([A-Z]{1,3}):([A-Z]{1,3})\Z")
_TAB_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Params:
    """A call's checked params."""

    tool: str
    spreadsheet: str
    sheet: str
    header_row: int
    first_col: int = 1
    last_col: int | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    #: append_row / update_row: column name -> value as sent (append_row: or a list).
    named: dict[str, Any] = field(default_factory=dict)
    listed: list[Any] | None = None
    key_column: str = ""
    key: Any = None


class ParamParser:
    """The params checks of one connection (its name and spreadsheets list)."""

    def __init__(self, name: str, allowed: frozenset[str] | None) -> None:
        self.name = name
        self._allowed = allowed

    def parse(self, call: ToolCall) -> Params:
        """Check the params before anything is sent (SPEC §6); ``call.tool`` is known."""
        tool = call.tool
        p = call.params
        if not isinstance(p, Mapping):
            raise PermanentError(f"{self.name}.{tool}: params must be an object")
        unknown = sorted(set(p) - PARAMS[tool])
        if unknown:
            raise self._bad(tool, unknown[0], f"unknown parameter; {tool} takes "
                            f"{sorted(PARAMS[tool])}")
        sid = p.get("spreadsheet")
        if not isinstance(sid, str) or not SPREADSHEET_ID.match(sid):
            raise self._bad(tool, "spreadsheet", "must be a spreadsheet id: the part of the "
                            "sheet's URL after /d/ (letters, digits, - and _)")
        if self._allowed is not None and sid not in self._allowed:
            raise PermissionDenied(f"{self.name}.{tool}: spreadsheet {sid} is not in this "
                                   "connection's spreadsheets list (see "
                                   f"{DOC})", field="spreadsheet", sent=False)
        sheet = p.get("sheet")
        if not isinstance(sheet, str) or not sheet.strip() or len(sheet) > TAB_CHARS or \
                _TAB_FORBIDDEN.search(sheet):
            raise self._bad(tool, "sheet", f"must be the tab's name, 1 to {TAB_CHARS} "
                            "characters without control characters")
        header_row = whole(p.get("header_row"), 1)
        least = 0 if tool == "read_rows" or isinstance(p.get("values"), list) else 1
        if header_row is None or not least <= header_row < MAX_ROW:
            raise self._bad(tool, "header_row", f"must be a row number from {least} (the row "
                            "holding the column names; 0: none, columns by letter) to "
                            f"{MAX_ROW - 1}")
        base = {"tool": tool, "spreadsheet": sid, "sheet": sheet, "header_row": header_row}
        if tool == "read_rows":
            return self._parse_read(tool, p, base)
        if tool == "append_row":
            return self._parse_append(tool, p, base)
        return self._parse_update(tool, p, base)

    def _parse_read(self, tool: str, p: Mapping[str, Any], base: dict[str, Any]) -> Params:
        limit = whole(p.get("limit"), DEFAULT_LIMIT)
        if limit is None or not 1 <= limit <= MAX_LIMIT:
            raise self._bad(tool, "limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        offset = whole(p.get("offset"), 0)
        if offset is None or not 0 <= offset < MAX_ROW - base["header_row"] - limit - 1:
            raise self._bad(tool, "offset", "must be a whole number of rows from 0 (the "
                            "next_offset of the page before)")
        first, last = 1, None
        span = p.get("range")
        if span is not None:
            m = _COLUMNS.match(span) if isinstance(span, str) else None
            first_n = column_number(m[1]) if m else None
            last_n = column_number(m[2]) if m else None
            if first_n is None or last_n is None or first_n > last_n:
                raise self._bad(tool, "range", "must be a span of columns such as \"A:F\" "
                                "(capital letters, first to last)")
            first, last = first_n, last_n
        return Params(**base, first_col=first, last_col=last, limit=limit, offset=offset)

    def _parse_append(self, tool: str, p: Mapping[str, Any], base: dict[str, Any]) -> Params:
        values = p.get("values")
        key_column = p.get("key_column")
        if not isinstance(key_column, str) or not key_column.strip():
            raise self._bad(tool, "key_column", "is required: the column whose value "
                            "identifies the row (e.g. \"Order id\"), so that an uncertain "
                            "append can be looked up")
        if isinstance(values, list):
            if not 1 <= len(values) <= MAX_COLUMN:
                raise self._bad(tool, "values", f"must hold 1 to {MAX_COLUMN} values")
            for i, v in enumerate(values):
                self._check_value(tool, f"values[{i}]", v)
            col = column_number(key_column)
            if col is None or col > len(values):
                raise self._bad(tool, "key_column", "with values as a list, must be the "
                                "letter of a column the list fills (A is its first value)")
            if blank(values[col - 1]):
                raise self._bad(tool, "values", f"values[{col - 1}] (column {key_column}, "
                                "the key column) must not be empty")
            self._check_size(tool, values)
            return Params(**base, listed=list(values), key_column=key_column)
        named = self._named(tool, values)
        if key_column not in named or blank(named[key_column]):
            raise self._bad(tool, "key_column", f"names {inert(key_column)!r}, which values "
                            "must set to a non-empty value (it identifies the row)")
        return Params(**base, named=named, key_column=key_column)

    def _parse_update(self, tool: str, p: Mapping[str, Any], base: dict[str, Any]) -> Params:
        key_column = p.get("key_column")
        if not isinstance(key_column, str) or not key_column.strip():
            raise self._bad(tool, "key_column", "is required: the column that holds the key")
        key = p.get("key")
        if blank(key):
            raise self._bad(tool, "key", "is required: the value of key_column in the row to "
                            "update (text, a number or a boolean)")
        self._check_value(tool, "key", key)
        named = self._named(tool, p.get("values"))
        if key_column in named and key_text(named[key_column]) != key_text(key):
            raise self._bad(tool, "values", f"must not change the key column "
                            f"{inert(key_column)!r}: the row is found (and its update verified)"
                            " by it")
        return Params(**base, named=named, key_column=key_column, key=key)

    def _named(self, tool: str, values: Any) -> dict[str, Any]:
        if not isinstance(values, Mapping) or not 1 <= len(values) <= MAX_COLUMN:
            raise self._bad(tool, "values", "must be an object of column name -> value "
                            f"(1 to {MAX_COLUMN} columns)" +
                            (", or a list of values" if tool == "append_row" else ""))
        named: dict[str, Any] = {}
        for name, value in values.items():
            if not isinstance(name, str) or not name or len(name) > NAME_CHARS:
                raise self._bad(tool, "values", f"column names must be text of 1 to "
                                f"{NAME_CHARS} characters")
            self._check_value(tool, f"values.{inert(name, 40)}", value)
            named[name] = value
        self._check_size(tool, named)
        return named

    def _check_value(self, tool: str, where: str, value: Any) -> None:
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or abs(value) > MAX_EXACT:
                raise self._bad(tool, where, "must be a finite number of at most 2^53 (a cell "
                                "holds a double); pass a longer number as text")
            return
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise self._bad(tool, where, "holds a lone surrogate (not valid text)")
            if len(value) > CELL_CHARS:
                raise self._bad(tool, where, f"is longer than {CELL_CHARS} characters, the "
                                "most a cell holds")
            return
        raise self._bad(tool, where, "must be text, a number, a boolean or null (a cell "
                        f"holds no {type(value).__name__})")

    def _check_size(self, tool: str, values: Any) -> None:
        size = len(json.dumps(values, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size > MAX_WRITE_BYTES:
            raise self._bad(tool, "values", f"is {size} bytes as JSON; one change writes at "
                            f"most {MAX_WRITE_BYTES}")

    def _bad(self, tool: str, name: str, problem: str) -> PermanentError:
        return PermanentError(f"{self.name}.{tool}: params.{name}: {problem} (see {DOC})",
                              field=re.split(r"[.\[]", name, maxsplit=1)[0], sent=False)


# -- values ----------------------------------------------------------------------------------


def whole(value: Any, default: int) -> int | None:
    """A whole number param (``null`` -> ``default``; ``3.0`` -> 3); ``None`` if it is not
    one."""
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def as_text(value: Any) -> str | None:
    """A header cell as text (a number or boolean header is written as the sheet shows it)."""
    if isinstance(value, str):
        return value
    return key_text(value)


def key_text(value: Any) -> str | None:
    """The text a key cell is compared by: ``"A-1"``, ``1001`` and ``"1001"`` alike,
    ``TRUE``; ``None`` for an empty cell or anything else."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() and abs(value) <= MAX_EXACT else repr(value)
    if isinstance(value, str) and value != "":
        return value
    return None


def same(written: Any, stored: Any) -> bool:
    """Whether a cell holds what was written RAW (read back unformatted)."""
    if written == "":
        return stored in (None, "")
    if isinstance(written, bool) or isinstance(stored, bool):
        return written is stored
    if isinstance(written, (int, float)):
        return isinstance(stored, (int, float)) and float(written) == float(stored)
    return isinstance(stored, str) and stored == written


def shown(value: Any) -> str:
    return repr(inert(value, 80)) if isinstance(value, str) else repr(value)
