"""The ``google_sheets`` connector: rows of a Google Sheets tab through the Sheets API v4
REST (SPEC §9; docs/connectors.md#google_sheets).

Tools:

* ``read_rows`` (read): a page of a tab's rows as ``{row, values: {column: value}}``, the
  column names taken from a header row; ``GET …/values/{range}`` with
  ``valueRenderOption=UNFORMATTED_VALUE`` (numbers stay numbers, booleans booleans) and
  ``dateTimeRenderOption=FORMATTED_STRING`` (a date reads as the text the sheet shows).
* ``append_row`` (mutation): one row after the tab's table, ``POST …/values/{range}:append``
  with ``valueInputOption=RAW`` and ``insertDataOption=INSERT_ROWS``. RAW stores every value
  as given: a text starting with ``=`` is stored as that text, never evaluated as a formula.
* ``update_row`` (mutation): the row whose ``key_column`` holds ``key`` gets new values in
  the named columns, ``PUT …/values/{range}?valueInputOption=RAW``; the other cells of the
  row are left as they are (null entries of a ValueRange are skipped).

Reconcile: the Sheets API takes no idempotency key, so a row is identified by the value of
its ``key_column`` (an order id, the event's messageId). After an uncertain ``append_row`` the
key column is read: one row with the key = applied (that row), several = applied (the last
one, noted), none = failed. After an uncertain ``update_row`` the row with the key is read
back: the written values there = applied, anything else = failed (writing the same values
again is harmless).

Auth is an OAuth 2.0 access token from ``token_secret`` / ``token_env`` (sent as
``Authorization: Bearer``). Signing service-account JWTs is not done here: a person supplies
the token, and an expired one is refused with 401, which asks to reconnect.

Every request goes through :class:`~keepflow.connectors.google_sheets_api.SheetsHttp`: the
whole tool call (often two requests: the header row, then the change) ends by
``call.timeout``; an answer is read to at most 2 MiB; every text handed back is cleaned of
control characters, lone surrogates and direction overrides and cut to a bound. Params are
checked by :mod:`~keepflow.connectors.google_sheets_params` before anything is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    ReconcileOutcome,
    ReconcileResult,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.feed import clean_text
from keepflow.connectors.google_sheets_api import (
    DEFAULT_BASE_URL,
    DOC,
    MAX_COLUMN,
    SheetsHttp,
    a1,
    column_letter,
    column_number,
    grid_limits,
    inert,
    parse_cells,
    shown_range,
    values_path,
)
from keepflow.connectors.google_sheets_params import (
    CELL_CHARS,
    MAX_EXACT,
    NAME_CHARS,
    SPREADSHEET_ID,
    ParamParser,
    Params,
    as_text,
    finite,
    key_text,
    same,
    shown,
)
from keepflow.connectors.http_transport import deadline_in
from keepflow.connectors.limits import CallLimits
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Redactor, Secret
from keepflow.connectors.setting_checks import (
    bearer_token,
    reject_unknown,
    service_base_url,
)
from keepflow.errors import (
    ConfigError,
    ConnectorError,
    PermanentError,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)

SETTINGS: Final = frozenset({"token", "base_url", "spreadsheets"})
#: Seconds ``check()`` may take.
CHECK_SECONDS: Final = 30.0
#: Seconds after a call's timeout during which Google may still finish an append it got.
SETTLE_SECONDS: Final = 30.0
#: A spreadsheet id that cannot exist: probing it proves the token (see check()).
PROBE_ID: Final = "keepflow-token-check"
_CONTROL: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069]")

_ROW_RESULT: Final = "{row, updated_range}"
_TARGET: Final = "spreadsheet, sheet"


def _mutation(name: str, description: str, params: str, strategy: str) -> ToolSpec:
    return ToolSpec(name, ToolKind.MUTATE, "sheets.write", RiskTier.MEDIUM, description,
                    ("spreadsheet",), reconcile=True, reconcile_doc=DOC, params=params,
                    result=_ROW_RESULT, reconcile_strategy=strategy)


@dataclass(frozen=True)
class _Header:
    """A tab's header row: column names in sheet order, each with its 1-based column."""

    names: list[tuple[str, int]]

    def column(self, name: str) -> int | None:
        return next((col for n, col in self.names if n == name), None)

    def listing(self) -> str:
        listed = ", ".join(repr(n) for n, _ in self.names[:20])
        return listed + (", …" if len(self.names) > 20 else "")


@dataclass(frozen=True)
class _Box:
    """A range to read: 1-based; ``None`` columns mean whole rows, a ``None`` last row an
    open end."""

    first_col: int | None
    first_row: int
    last_col: int | None
    last_row: int | None


class GoogleSheetsConnector(Connector):
    """Type ``google_sheets``. See the module docstring and docs/connectors.md#google_sheets."""

    type_name: ClassVar[str] = "google_sheets"
    #: 60 read and 60 write requests a minute per user (developers.google.com/sheets/api/
    #: limits); a tool call makes up to two reads, so 30 calls a minute keep under both.
    default_limits: ClassVar[CallLimits] = CallLimits(rate=0.5, burst=5)
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "read_rows": ToolSpec(
            "read_rows", ToolKind.READ, "sheets.read", RiskTier.LOW,
            "Read a page of a tab's rows, named by its header row", ("spreadsheet",),
            params=f"{{{_TARGET}, header_row?, range?, limit?, offset?}}",
            result="{columns, rows: [{row, values: {column: value}}], next_offset?}"),
        "append_row": _mutation(
            "append_row", "Append one row after the tab's table (values stored RAW)",
            f"{{{_TARGET}, values: {{column: value}} | [value, …], key_column, header_row?}}",
            "read the key column: one row holding the call's key value = applied (that row), "
            "several = applied (the last, noted), none = failed (the row is appended again)"),
        "update_row": _mutation(
            "update_row", "Set cells of the row whose key column holds a key (values RAW)",
            f"{{{_TARGET}, key_column, key, values: {{column: value}}, header_row?}}",
            "read the row with the key back: the values written = applied; else failed (the "
            "same values are written again, which is harmless)"),
    }

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self.validate_settings(config.settings)
        s = config.settings
        token: Secret = s["token"]
        listed = s.get("spreadsheets")
        self._allowed: frozenset[str] | None = None if listed is None else frozenset(listed)
        self._params = ParamParser(config.name, self._allowed)
        self._redact = Redactor([token.reveal()])
        self._http = SheetsHttp(str(s.get("base_url", DEFAULT_BASE_URL)), token, self._redact,
                                config.name)

    def __repr__(self) -> str:
        return f"GoogleSheetsConnector(name={self.name!r})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        reject_unknown("google_sheets", settings, SETTINGS)
        bearer_token("google_sheets", settings, what="an OAuth access token")
        service_base_url("google_sheets", settings.get("base_url", DEFAULT_BASE_URL),
                         example=DEFAULT_BASE_URL)
        listed = settings.get("spreadsheets")
        if listed is not None and (
                not isinstance(listed, list) or not listed or len(listed) > 1000 or
                not all(isinstance(i, str) and SPREADSHEET_ID.match(i) for i in listed)):
            raise ConfigError("must be a list of spreadsheet ids (the part of a sheet's URL "
                              "after /d/), at least one", key="spreadsheets")

    # -- declarations ------------------------------------------------------------------------

    def describe(self, call: ToolCall) -> str:
        p = call.params if isinstance(call.params, Mapping) else {}
        sheet, sid = p.get("sheet"), p.get("spreadsheet")
        where = (f"tab {inert(sheet, 60)!r}" if isinstance(sheet, str) else "a tab") + \
            (f" of spreadsheet {inert(sid, 60)}" if isinstance(sid, str) else "")
        if call.tool == "update_row":
            return f"update the row with {inert(str(p.get('key_column')), 60)} = " \
                   f"{shown(p.get('key'))} in {where}"
        if call.tool == "append_row":
            return f"append a row to {where}"
        return f"read rows of {where}"

    def validate(self, call: ToolCall) -> None:
        self._parse(call)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        p = self._parse(call)
        with deadline_in(call.timeout):
            if p.tool == "read_rows":
                return self._read_rows(p)
            if p.tool == "append_row":
                return self._append_row(p)
            return self._update_row(p)

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        p = self._parse(call)
        if p.tool not in ("append_row", "update_row"):
            raise NotImplementedError(f"google_sheets.{p.tool} does not reconcile")
        try:
            with deadline_in(call.timeout):
                if p.tool == "append_row":
                    return self._reconcile_append(p, call)
                return self._reconcile_update(p)
        except ConnectorError as exc:  # cannot look now: ask again later
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)

    def check(self) -> None:
        """Each allow-listed spreadsheet is opened (its id and title). Without a list, the
        token is proved by asking for a spreadsheet that cannot exist: Google checks the token
        first, so 404 (or any refusal that is not about the token) means it was accepted."""
        with deadline_in(CHECK_SECONDS):
            if self._allowed:
                for sid in sorted(self._allowed):
                    self._http.request(
                        "GET", f"/v4/spreadsheets/{sid}",
                        params={"fields": "spreadsheetId,properties.title"},
                        what=f"opening spreadsheet {sid}")
                return
            try:
                self._http.request("GET", f"/v4/spreadsheets/{PROBE_ID}",
                                   params={"fields": "spreadsheetId"},
                                   what="checking the access token")
            except (PreconditionError, PermanentError):  # 404, 400, a 403 about the
                return  # (absent) spreadsheet: the token itself was accepted

    def close(self) -> None:
        self._http.close()

    # -- read_rows ---------------------------------------------------------------------------

    def _read_rows(self, p: Params) -> dict[str, Any]:
        h = p.header_row
        start = h + 1 + p.offset
        end = start + p.limit  # one row more than a page: is there a next one?
        first, last = (p.first_col, p.last_col) if p.last_col else (None, None)
        header_cells: list[Any] = []
        if h and p.offset == 0:  # the header and the rows in one request
            got = self._values(p, _Box(first, h, last, end), reading=True)
            header_cells, rows = (got[0] if got else []), got[1:]
        else:
            if h:
                got = self._values(p, _Box(first, h, last, h), reading=True)
                header_cells = got[0] if got else []
            rows = self._values(p, _Box(first, start, last, end), reading=True)
        if h:
            header = self._header_of(p, header_cells)
        else:
            width = min(max((len(r) for r in rows), default=0),
                        (p.last_col or MAX_COLUMN) - p.first_col + 1)
            header = _Header([(column_letter(p.first_col + i), p.first_col + i)
                              for i in range(width)])
        out: list[dict[str, Any]] = []
        for i, raw in enumerate(rows[:p.limit]):
            values: dict[str, Any] = {}
            for name, col in header.names:
                j = col - p.first_col
                if j < len(raw):
                    value = self._cell(raw[j])
                    if value is not None:
                        values[name] = value
            if values:
                out.append({"row": start + i, "values": values})
        result: dict[str, Any] = {"columns": [n for n, _ in header.names], "rows": out}
        if len(rows) > p.limit:
            result["next_offset"] = p.offset + p.limit
        return result

    def _header_of(self, p: Params, cells: list[Any]) -> _Header:
        """Column names from a header row's cells: cleaned text; an empty cell, or one that
        repeats an earlier name, is named by its column letter. Empty cells at the end name
        nothing."""
        texts = [as_text(c) for c in cells[:MAX_COLUMN - p.first_col + 1]]
        cleaned = [clean_text(t, NAME_CHARS, self._redact) if t is not None else None
                   for t in texts]
        while cleaned and cleaned[-1] is None:
            cleaned.pop()
        if not cleaned:
            raise PreconditionError(
                f"row {p.header_row} of tab {inert(p.sheet)!r} is empty, so it names no "
                "columns; pass the row that holds the column names as header_row, or "
                "header_row: 0 to name columns by their letters")
        names: list[tuple[str, int]] = []
        seen: set[str] = set()
        for i, text in enumerate(cleaned):
            col = p.first_col + i
            letter = column_letter(col)
            name = text or letter
            while name in seen:
                name = f"{name} ({letter})"
            seen.add(name)
            names.append((name, col))
        return _Header(names)

    def _cell(self, value: Any) -> Any:
        """A cell as returned: text cleaned and cut, finite numbers, booleans; empty or
        anything else is None."""
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if abs(value) <= MAX_EXACT:
                return value
            try:
                return finite(float(value))
            except OverflowError:
                return None
        if isinstance(value, float):
            return finite(value)
        if not isinstance(value, str) or not value:
            return None
        text = _CONTROL.sub("", value)
        text, _ = self._redact.cut(text, CELL_CHARS)
        return text or None

    # -- append_row --------------------------------------------------------------------------

    def _append_row(self, p: Params) -> dict[str, Any]:
        row = self._row_to_write(p)
        where = a1(p.sheet, 1, max(p.header_row, 1), single=True)
        answer = self._http.request(
            "POST", values_path(p.spreadsheet, where, ":append"),
            params={"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS",
                    "includeValuesInResponse": "false"},
            body={"range": where, "majorDimension": "ROWS", "values": [row]}, mutate=True,
            what=f"appending a row to tab {inert(p.sheet)!r} of spreadsheet {p.spreadsheet}")
        updates = answer.get("updates")
        cells = parse_cells(updates.get("updatedRange") if isinstance(updates, dict) else None)
        if cells is None:
            raise UncertainOutcome(
                f"appending a row to tab {inert(p.sheet)!r}: Google's answer does not say "
                "which row was written (no updates.updatedRange); the row is looked up by "
                "its key", status=200)
        return {"row": cells.first_row,
                "updated_range": shown_range(p.sheet, cells.first_col, cells.first_row,
                                             cells.last_col, cells.last_row)}

    def _row_to_write(self, p: Params) -> list[Any]:
        """The cells of the appended row, from column A."""
        if p.listed is not None:
            return ["" if v is None else v for v in p.listed]
        header = self._header(p)
        placed: dict[int, Any] = {}
        for name, value in p.named.items():
            col = header.column(name)
            if col is None:
                raise self._no_column(p, header, name)
            placed[col] = "" if value is None else value
        return [placed.get(c, "") for c in range(1, max(placed) + 1)]

    def _reconcile_append(self, p: Params, call: ToolCall) -> ReconcileResult:
        if p.listed is not None:
            key_col = column_number(p.key_column) or 1
            width = len(p.listed)
            key = p.listed[key_col - 1]
        else:
            header = self._header(p)
            found = header.column(p.key_column)
            if found is None:
                raise self._no_column(p, header, p.key_column)
            key_col = found
            width = max(header.column(n) or 0 for n in p.named)
            key = p.named[p.key_column]
        rows = self._rows_with(p, key_col, key)
        said = f"{inert(p.key_column)} = {shown(key)}"
        if not rows and still_settling(call):
            return ReconcileResult(ReconcileOutcome.RETRY, detail=(
                f"no row of tab {inert(p.sheet)!r} has {said} yet, and Google may still be "
                "handling the append; ask again shortly"))
        if not rows:
            return ReconcileResult(ReconcileOutcome.FAILED,
                                   detail=f"no row of tab {inert(p.sheet)!r} has {said}")
        row = rows[-1]
        detail = "" if len(rows) == 1 else (
            f"{len(rows)} rows of tab {inert(p.sheet)!r} have {said} (rows "
            f"{', '.join(map(str, rows[:10]))}{', …' if len(rows) > 10 else ''}); the last "
            "one is taken as this call's")
        return ReconcileResult(ReconcileOutcome.APPLIED,
                               {"row": row, "updated_range": shown_range(p.sheet, 1, row,
                                                                         width, row)}, detail)

    # -- update_row --------------------------------------------------------------------------

    def _update_row(self, p: Params) -> dict[str, Any]:
        row, cols = self._locate(p)
        first, last = min(cols), max(cols)
        # None: skipped by Google (the cell keeps its value); a null param clears the cell.
        cells = [cols.get(c) for c in range(first, last + 1)]
        where = a1(p.sheet, first, row, last, row)
        self._http.request(
            "PUT", values_path(p.spreadsheet, where), params={"valueInputOption": "RAW"},
            body={"range": where, "majorDimension": "ROWS", "values": [cells]}, mutate=True,
            what=f"updating row {row} of tab {inert(p.sheet)!r} of spreadsheet "
                 f"{p.spreadsheet}")
        return {"row": row, "updated_range": shown_range(p.sheet, first, row, last, row)}

    def _locate(self, p: Params) -> tuple[int, dict[int, Any]]:
        """The one row holding the key, and column -> value to write there."""
        header = self._header(p)
        key_col = header.column(p.key_column)
        if key_col is None:
            raise self._no_column(p, header, p.key_column)
        cols: dict[int, Any] = {}
        for name, value in p.named.items():
            col = header.column(name)
            if col is None:
                raise self._no_column(p, header, name)
            cols[col] = "" if value is None else value
        rows = self._rows_with(p, key_col, p.key)
        said = f"{inert(p.key_column)} = {shown(p.key)}"
        if not rows:
            raise PreconditionError(
                f"no row of tab {inert(p.sheet)!r} has {said}: there is nothing to update "
                "(append_row adds a row)", field="key")
        if len(rows) > 1:
            raise PreconditionError(
                f"{len(rows)} rows of tab {inert(p.sheet)!r} have {said} (rows "
                f"{', '.join(map(str, rows[:10]))}): update_row changes exactly one row; make "
                "the key column's values unique", field="key")
        return rows[0], cols

    def _reconcile_update(self, p: Params) -> ReconcileResult:
        try:
            row, cols = self._locate(p)
        except PreconditionError as exc:  # no row to update: a new attempt says so
            return ReconcileResult(ReconcileOutcome.FAILED, detail=exc.message)
        first, last = min(cols), max(cols)
        got = self._values(p, _Box(first, row, last, row), reading=False)
        cells = got[0] if got else []
        for col, wanted in cols.items():
            j = col - first
            if not same(wanted, cells[j] if j < len(cells) else None):
                return ReconcileResult(
                    ReconcileOutcome.FAILED,
                    detail=f"row {row} does not hold the values written (column "
                           f"{column_letter(col)} differs)")
        return ReconcileResult(ReconcileOutcome.APPLIED,
                               {"row": row, "updated_range": shown_range(p.sheet, first, row,
                                                                         last, row)})

    # -- reading helpers ---------------------------------------------------------------------

    def _values(self, p: Params, box: _Box, *, reading: bool, columns: bool = False
                ) -> list[list[Any]]:
        """The ``values`` of one range: a list of rows (or columns), each a list.

        ``reading``: as ``read_rows`` shows them (dates as the sheet shows them); else
        exactly as stored, for comparing with what was written. A range that reaches past
        the tab's grid, which Google may refuse, is cut to the grid it names and asked again.
        """
        params = {"majorDimension": "COLUMNS" if columns else "ROWS",
                  "valueRenderOption": "UNFORMATTED_VALUE",
                  "dateTimeRenderOption": "FORMATTED_STRING" if reading else "SERIAL_NUMBER"}
        for _ in range(2):
            where = a1(p.sheet, box.first_col, box.first_row, box.last_col, box.last_row)
            what = f"reading {inert(where)} of spreadsheet {p.spreadsheet}"
            try:
                answer = self._http.request("GET", values_path(p.spreadsheet, where),
                                            params=params, what=what)
            except PermanentError as exc:
                grid = grid_limits(exc)
                if grid is None or box.last_row is None:
                    raise
                rows, cols = grid
                if box.first_row > rows or (box.first_col or 1) > cols:
                    return []  # it starts past the grid: nothing is there
                box = _Box(box.first_col, box.first_row,
                           box.last_col and min(box.last_col, cols), min(box.last_row, rows))
                continue
            values = answer.get("values", [])
            if not isinstance(values, list) or not all(isinstance(r, list) for r in values):
                raise TransientError(f"{what}: Google's answer holds no list of rows (values "
                                     f"is {type(values).__name__}); trying again")
            return values
        raise TransientError(f"reading tab {inert(p.sheet)!r} of spreadsheet "
                             f"{p.spreadsheet}: Google refused the range twice for the "
                             "tab's size; trying again")

    def _header(self, p: Params) -> _Header:
        h = p.header_row
        got = self._values(p, _Box(None, h, None, h), reading=True)
        return self._header_of(p, got[0] if got else [])

    def _rows_with(self, p: Params, col: int, key: Any) -> list[int]:
        """The rows below the header whose cell in column ``col`` holds ``key``: one read of
        the column, open-ended (to the tab's last row), as stored."""
        wanted = key_text(key)
        start = p.header_row + 1
        got = self._values(p, _Box(col, start, col, None), reading=False, columns=True)
        cells = got[0] if got else []
        return [start + i for i, v in enumerate(cells)
                if wanted is not None and key_text(v) == wanted]

    def _no_column(self, p: Params, header: _Header, name: str) -> PreconditionError:
        return PreconditionError(
            f"tab {inert(p.sheet)!r} has no column {inert(name)!r} in its header row "
            f"{p.header_row}; its columns are {header.listing()}", field="values")

    def _parse(self, call: ToolCall) -> Params:
        self.tool(call.tool)
        return self._params.parse(call)


def still_settling(call: ToolCall) -> bool:
    """Whether Google may still be working on the attempt: until the call's timeout and
    SETTLE_SECONDS have passed since the host recorded it (``ToolCall.attempted_at``), a row
    not found yet may still appear. Without that time (a connector driven directly): no."""
    if call.attempted_at is None:
        return False
    settled = call.attempted_at + timedelta(seconds=call.timeout + SETTLE_SECONDS)
    return datetime.now(UTC) < settled


register_connector(GoogleSheetsConnector)
