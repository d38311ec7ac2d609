"""A fake Google Sheets API v4 on loopback, built from the published REST reference.

It follows https://developers.google.com/sheets/api/reference/rest/v4/spreadsheets.values
and https://developers.google.com/sheets/api/reference/rest/v4/spreadsheets/get for the four
methods the ``google_sheets`` connector uses:

* ``GET /v4/spreadsheets/{id}`` (``spreadsheets.get``; ``fields`` narrows the answer to
  ``spreadsheetId`` and ``properties.title``);
* ``GET /v4/spreadsheets/{id}/values/{range}`` (``values.get``): a ValueRange
  ``{range, majorDimension, values}``, trailing empty rows and columns left out, rows (or
  columns, ``majorDimension=COLUMNS``) anchored at the range's top-left cell;
  ``valueRenderOption`` FORMATTED_VALUE (the default: every value as text) or
  UNFORMATTED_VALUE (numbers and booleans as they are);
* ``POST /v4/spreadsheets/{id}/values/{range}:append`` (``values.append``): the rows go after
  the last non-empty row at or below the range's first row, from column A; an
  AppendValuesResponse ``{spreadsheetId, tableRange, updates: {spreadsheetId, updatedRange,
  updatedRows, updatedColumns, updatedCells}}``;
* ``PUT /v4/spreadsheets/{id}/values/{range}`` (``values.update``): the values fill the range
  from its top-left cell, a ``null`` entry leaves its cell as it is, ``""`` empties it; an
  UpdateValuesResponse ``{spreadsheetId, updatedRange, updatedRows, updatedColumns,
  updatedCells}``.

Both writes require ``valueInputOption`` (RAW or USER_ENTERED); values are stored as sent
(RAW: ``"=1+2"`` is the text ``=1+2``). A1 ranges are parsed as Google writes them:
``'My tab'!A1:C``, ``'It''s'!2:5``, ``Sheet1!C2:C``, ``Sheet1`` alone; an unquoted tab name
may hold letters, digits and ``_`` only, and a tab that does not exist (or a range that does
not parse) is ``400 INVALID_ARGUMENT "Unable to parse range: …"``, as Google answers. Errors
have Google's shape ``{"error": {"code", "message", "status", "details"?}}``
(https://cloud.google.com/apis/design/errors).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.support.fake_api import FakeApi, Request, Response

Cell = Any  # str | float | int | bool; "" is an empty cell

_QUOTED = re.compile(r"'((?:[^']|'')+)'")
_PLAIN = re.compile(r"[A-Za-z0-9_]+")
_CELLS = re.compile(r"([A-Z]{0,3})([0-9]{0,8})(?::([A-Z]{0,3})([0-9]{0,8}))?\Z")
GRID_COLUMNS = 26
GRID_ROWS = 1000


def google_error(code: int, status: str, message: str, reason: str | None = None
                 ) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason is not None:
        err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                           "reason": reason, "domain": "googleapis.com",
                           "metadata": {"service": "sheets.googleapis.com"}}]
    return {"error": err}


def letters(n: int) -> str:
    s = ""
    while n > 0:
        n, r = divmod(n - 1, 26)
        s = chr(65 + r) + s
    return s


def number(col: str) -> int:
    n = 0
    for c in col:
        n = n * 26 + ord(c) - 64
    return n


@dataclass
class Spreadsheet:
    title: str
    #: tab name -> rows (each a list of cells); row 1 is index 0.
    tabs: dict[str, list[list[Cell]]] = field(default_factory=dict)
    #: tab name -> [rows, columns] of its grid (a new sheet has 1000 x 26).
    grid: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Range:
    tab: str
    c1: int | None
    r1: int | None
    c2: int | None
    r2: int | None


class BadRange(Exception):
    pass


def parse_range(text: str) -> tuple[str, str]:
    """``(tab, cells)`` of an A1 range; raises BadRange."""
    m = _QUOTED.match(text)
    if m is not None:
        tab, rest = m[1].replace("''", "'"), text[m.end():]
    else:
        tab, _, cells = text.partition("!")
        if not _PLAIN.fullmatch(tab):
            raise BadRange(text)
        return tab, cells
    if rest == "":
        return tab, ""
    if not rest.startswith("!"):
        raise BadRange(text)
    return tab, rest[1:]


@dataclass
class FakeSheets(FakeApi):
    """The fake API; ``spreadsheets`` holds its state. ``narrow_tokens`` are accepted but
    lack the Sheets scope (403 ACCESS_TOKEN_SCOPE_INSUFFICIENT); ``private`` ids answer 403
    PERMISSION_DENIED."""

    spreadsheets: dict[str, Spreadsheet] = field(default_factory=dict)
    narrow_tokens: set[str] = field(default_factory=set)
    private: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        super().__post_init__()
        sid = r"/v4/spreadsheets/([^/]+)"
        self.route("GET", sid, self._get)
        self.route("GET", sid + r"/values/([^/]+)", self._values_get)
        self.route("POST", sid + r"/values/([^/]+):append", self._append)
        self.route("PUT", sid + r"/values/([^/]+)", self._update)

    def start(self) -> FakeSheets:
        super().start()
        server = self._server
        assert server is not None
        report = server.handle_error

        def handle_error(request: Any, client_address: Any) -> None:
            # A client that stops reading (the connector caps what it reads) is no error.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                report(request, client_address)

        server.handle_error = handle_error  # type: ignore[method-assign]
        return self

    # -- what Google says ------------------------------------------------------------------

    def auth_error(self, req: Request) -> Response:
        if req.token is not None and req.token in self.narrow_tokens:
            return 403, {}, google_error(
                403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.",
                "ACCESS_TOKEN_SCOPE_INSUFFICIENT")
        return 401, {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                                         'error="invalid_token"'}, google_error(
            401, "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential. See "
            "https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "ACCESS_TOKEN_EXPIRED" if req.token else "CREDENTIALS_MISSING")

    def rate_limited(self, req: Request, retry_after: float | None) -> Response:
        kind = "Read" if req.method == "GET" else "Write"
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return 429, headers, google_error(
            429, "RESOURCE_EXHAUSTED",
            f"Quota exceeded for quota metric '{kind} requests' and limit '{kind} requests "
            "per minute per user' of service 'sheets.googleapis.com' for consumer "
            "'project_number:000000000000'.", "RATE_LIMIT_EXCEEDED")

    def not_found(self, req: Request) -> Response:
        return 404, {}, google_error(404, "NOT_FOUND", "Requested entity was not found.")

    # -- set-up and inspection -------------------------------------------------------------

    def add(self, sid: str, tabs: dict[str, list[list[Cell]]], title: str = "Book",
            grid: tuple[int, int] | None = None) -> None:
        """A spreadsheet; ``grid`` (rows, columns) of every tab, else at least 1000 x 26."""
        with self.lock:
            book = Spreadsheet(title, {k: [list(r) for r in v] for k, v in tabs.items()})
            for name, rows in book.tabs.items():
                wide = max((len(r) for r in rows), default=0)
                book.grid[name] = list(grid) if grid else [max(GRID_ROWS, len(rows)),
                                                           max(GRID_COLUMNS, wide)]
            self.spreadsheets[sid] = book

    def tab(self, sid: str, name: str) -> list[list[Cell]]:
        with self.lock:
            return [list(r) for r in self.spreadsheets[sid].tabs[name]]

    # -- handlers --------------------------------------------------------------------------

    def _book(self, sid: str) -> Spreadsheet | Response:
        if sid in self.private:
            return 403, {}, google_error(403, "PERMISSION_DENIED",
                                         "The caller does not have permission")
        book = self.spreadsheets.get(sid)
        return book if book is not None else self.not_found(Request("GET", "", {}, {}, b""))

    def _get(self, req: Request, m: re.Match[str]) -> Response:
        book = self._book(m[1])
        if not isinstance(book, Spreadsheet):
            return book
        answer: dict[str, Any] = {"spreadsheetId": m[1], "properties": {"title": book.title}}
        if req.arg("fields") is None:
            answer["sheets"] = [{"properties": {"sheetId": i, "title": name, "index": i}}
                                for i, name in enumerate(book.tabs)]
        return 200, {}, answer

    def _resolve(self, book: Spreadsheet, raw: str) -> Range | Response:
        text = unquote(raw)
        bad = (400, {}, google_error(400, "INVALID_ARGUMENT", f"Unable to parse range: {text}"))
        try:
            tab, cells = parse_range(text)
        except BadRange:
            return bad
        if tab not in book.tabs:
            return bad
        if cells == "":
            return Range(tab, 1, 1, None, None)
        m = _CELLS.match(cells)
        if m is None or (not m[1] and not m[2]):
            return bad
        c1, r1 = (number(m[1]) if m[1] else None), (int(m[2]) if m[2] else None)
        if m.group(3) is None and m.group(4) is None:  # one cell
            if c1 is None or r1 is None:
                return bad
            return Range(tab, c1, r1, c1, r1)
        c2, r2 = (number(m[3]) if m[3] else None), (int(m[4]) if m[4] else None)
        if (c1 is None) != (c2 is None) and r1 is None:
            return bad
        return Range(tab, c1 or 1, r1 or 1, c2, r2)

    @staticmethod
    def _shown(tab: str, c1: int, r1: int, c2: int, r2: int) -> str:
        name = tab if _PLAIN.fullmatch(tab) and not re.fullmatch(r"[A-Za-z]{1,3}[0-9]+", tab) \
            else "'" + tab.replace("'", "''") + "'"
        a, b = f"{letters(c1)}{r1}", f"{letters(c2)}{r2}"
        return f"{name}!{a}" if a == b else f"{name}!{a}:{b}"

    @staticmethod
    def _beyond(book: Spreadsheet, rng: Range, raw: str) -> Response | None:
        """Google's refusal of a range that reaches past the tab's grid (an open end, or
        whole rows, never does)."""
        height, width = book.grid[rng.tab]
        if (rng.r1 or 1) > height or (rng.c1 or 1) > width or \
                (rng.r2 or 0) > height or (rng.c2 or 0) > width:
            return 400, {}, google_error(
                400, "INVALID_ARGUMENT", f"Range ({unquote(raw)}) exceeds grid limits. Max "
                f"rows: {height}, max columns: {width}")
        return None

    def _values_get(self, req: Request, m: re.Match[str]) -> Response:
        book = self._book(m[1])
        if not isinstance(book, Spreadsheet):
            return book
        rng = self._resolve(book, m[2])
        if not isinstance(rng, Range):
            return rng
        rows = book.tabs[rng.tab]
        height, width = book.grid[rng.tab]
        beyond = self._beyond(book, rng, m[2])
        if beyond is not None:
            return beyond
        c1, r1 = rng.c1 or 1, rng.r1 or 1
        c2, r2 = rng.c2 or width, rng.r2 or height
        unformatted = req.arg("valueRenderOption") == "UNFORMATTED_VALUE"
        grid: list[list[Cell]] = []
        for r in range(r1, min(r2, len(rows)) + 1):
            row = rows[r - 1][c1 - 1:c2]
            grid.append([v if unformatted else _formatted(v) for v in row])
        if req.arg("majorDimension") == "COLUMNS":
            span = max((len(r) for r in grid), default=0)
            grid = [[r[i] if i < len(r) else "" for r in grid] for i in range(span)]
        grid = [_trim(r) for r in grid]
        while grid and not grid[-1]:
            grid.pop()
        answer: dict[str, Any] = {"range": self._shown(rng.tab, c1, r1, c2, r2),
                                  "majorDimension": req.arg("majorDimension") or "ROWS"}
        if grid:
            answer["values"] = grid
        return 200, {}, answer

    def _written(self, req: Request) -> list[list[Cell]] | Response:
        if req.arg("valueInputOption") not in ("RAW", "USER_ENTERED"):
            return 400, {}, google_error(400, "INVALID_ARGUMENT",
                                         "Invalid valueInputOption: INPUT_VALUE_OPTION_"
                                         "UNSPECIFIED")
        body = req.json
        values = body.get("values") if isinstance(body, dict) else None
        if not isinstance(values, list) or not all(isinstance(r, list) for r in values) or \
                any(isinstance(v, (dict, list)) for r in values for v in r):
            return 400, {}, google_error(400, "INVALID_ARGUMENT",
                                         "Invalid JSON payload received.")
        return values

    def _append(self, req: Request, m: re.Match[str]) -> Response:
        book = self._book(m[1])
        if not isinstance(book, Spreadsheet):
            return book
        rng = self._resolve(book, m[2])
        if not isinstance(rng, Range):
            return rng
        values = self._written(req)
        if not isinstance(values, list):
            return values
        rows = book.tabs[rng.tab]
        first = rng.r1 or 1
        last = max((i + 1 for i, r in enumerate(rows) if any(v != "" for v in r)), default=0)
        at = max(last + 1, first)
        table_last = max(last, first)
        while len(rows) < at - 1:
            rows.append([])
        width = max((len(r) for r in values), default=1)
        for offset, row in enumerate(values):
            cells = ["" if v is None else v for v in row]
            rows.insert(at - 1 + offset, cells)  # INSERT_ROWS: new rows, nothing overwritten
        end = at + len(values) - 1
        grid = book.grid[rng.tab]
        grid[0], grid[1] = max(grid[0] + len(values), end), max(grid[1], width)
        return 200, {}, {
            "spreadsheetId": m[1],
            "tableRange": self._shown(rng.tab, 1, first, width, table_last),
            "updates": {"spreadsheetId": m[1],
                        "updatedRange": self._shown(rng.tab, 1, at, width, end),
                        "updatedRows": len(values), "updatedColumns": width,
                        "updatedCells": sum(len(r) for r in values)}}

    def _update(self, req: Request, m: re.Match[str]) -> Response:
        book = self._book(m[1])
        if not isinstance(book, Spreadsheet):
            return book
        rng = self._resolve(book, m[2])
        if not isinstance(rng, Range):
            return rng
        values = self._written(req)
        if not isinstance(values, list):
            return values
        c1, r1 = rng.c1 or 1, rng.r1 or 1
        c2 = rng.c2 or (c1 + max((len(r) for r in values), default=1) - 1)
        r2 = rng.r2 or (r1 + len(values) - 1)
        if len(values) > r2 - r1 + 1 or any(len(r) > c2 - c1 + 1 for r in values):
            return 400, {}, google_error(
                400, "INVALID_ARGUMENT",
                f"Requested writing within range [{unquote(m[2])}], but tried writing "
                "beyond it.")
        beyond = self._beyond(book, Range(rng.tab, c1, r1, c2, r2), m[2])
        if beyond is not None:
            return beyond
        rows = book.tabs[rng.tab]
        cells = 0
        for i, row in enumerate(values):
            r = r1 + i
            while len(rows) < r:
                rows.append([])
            target = rows[r - 1]
            for j, v in enumerate(row):
                if v is None:
                    continue  # "Null values will be skipped"
                c = c1 + j
                while len(target) < c:
                    target.append("")
                target[c - 1] = v
                cells += 1
        return 200, {}, {"spreadsheetId": m[1],
                         "updatedRange": self._shown(rng.tab, c1, r1, c2, r2),
                         "updatedRows": len(values), "updatedColumns": c2 - c1 + 1,
                         "updatedCells": cells}


def _formatted(value: Cell) -> Cell:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _trim(row: list[Cell]) -> list[Cell]:
    row = list(row)
    while row and row[-1] in ("", None):
        row.pop()
    return row
