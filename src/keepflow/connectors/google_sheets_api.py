"""The wire side of the ``google_sheets`` connector: A1 ranges, one bounded HTTP exchange
with the Sheets API v4, and Google's errors as typed failures (SPEC §9;
docs/connectors.md#google_sheets).

Nothing here knows about tools. :class:`SheetsHttp` sends one request with the OAuth access
token as ``Authorization: Bearer``, through the ``http`` connector's deadline transport (every
socket operation ends by the call's deadline, see
:func:`~keepflow.connectors.http_transport.deadline_in`), reads at most
:data:`~keepflow.connectors.http_body.MAX_BODY_BYTES` of the answer (streamed and decoded
under that bound) and returns the JSON object it holds, or raises the typed error the status
and Google's error body mean (:func:`google_error`).

Google's error body (https://cloud.google.com/apis/design/errors) is
``{"error": {"code", "message", "status", "details": [{"@type": "...ErrorInfo", "reason"}],
"errors": [{"reason"}]}}``. The ``status`` and the ``reason`` decide where the HTTP status
alone would be ambiguous: a 403 whose reason is ``ACCESS_TOKEN_SCOPE_INSUFFICIENT`` is about
the token (reconnect), any other 403 about the spreadsheet (share it); a 400 "Unable to
parse range" names a tab the spreadsheet does not have (the connector builds every range
itself, always quoted, so a range it sends can only fail to parse that way).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx

from keepflow.connectors.http_body import ACCEPT_ENCODING, MAX_BODY_BYTES, decode_text, read_body
from keepflow.connectors.http_classify import parse_retry_after, transport_error
from keepflow.connectors.http_transport import DeadlineTransport, remaining
from keepflow.connectors.secret import Redactor, Secret
from keepflow.errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)

DOC: Final = "docs/connectors.md#google_sheets"
DEFAULT_BASE_URL: Final = "https://sheets.googleapis.com"
#: Google's quotas refill every minute (https://developers.google.com/sheets/api/limits):
#: a 429 without ``Retry-After`` waits this long.
DEFAULT_RETRY_AFTER: Final = 60.0
#: Seconds to connect at most (the rest of the call's time is for the exchange).
CONNECT_TIMEOUT: Final = 10.0
#: The largest sheet Google allows: 18,278 columns (ZZZ) and 10 million cells.
MAX_COLUMN: Final = 18_278
MAX_ROW: Final = 10_000_000
#: Characters of Google's error message quoted in ours.
MESSAGE_CHARS: Final = 500
USER_AGENT: Final = "keepflow-google-sheets"

_LETTERS: Final = re.compile(r"[A-Z]{1,3}\Z")
_CELL_RANGE: Final = re.compile(
    r"\$?([A-Z]{1,3})\$?([0-9]{1,8})(?::\$?([A-Z]{1,3})\$?([0-9]{1,8}))?\Z")
_PLAIN_TAB: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
_LOOKS_LIKE_CELL: Final = re.compile(r"[A-Za-z]{1,3}[0-9]+\Z|[Rr][0-9]*[Cc][0-9]*\Z")
_SCOPE_REASONS: Final = frozenset({"ACCESS_TOKEN_SCOPE_INSUFFICIENT", "insufficientPermissions"})
_RATE_REASONS: Final = frozenset({"RATE_LIMIT_EXCEEDED", "rateLimitExceeded",
                                  "userRateLimitExceeded"})
_GRID: Final = re.compile(r"exceeds grid limits\. Max rows: ([0-9]{1,8}), max columns: "
                          r"([0-9]{1,5})")
_INERT: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# -- A1 notation -----------------------------------------------------------------------------


def column_letter(number: int) -> str:
    """``1`` -> ``A``, ``27`` -> ``AA`` (1-based)."""
    letters = ""
    while number > 0:
        number, rest = divmod(number - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def column_number(letters: str) -> int | None:
    """``A`` -> 1, ``ZZZ`` -> 18278; ``None`` for anything that is not 1–3 capital letters
    naming a column Google allows."""
    if not _LETTERS.match(letters):
        return None
    number = 0
    for c in letters:
        number = number * 26 + ord(c) - 64
    return number if number <= MAX_COLUMN else None


def quote_tab(tab: str) -> str:
    """A tab name as A1 notation writes it in a request: always single-quoted, a quote inside
    doubled. ``Sheet1'!A1:Z;x`` stays one (odd) tab name: nothing in it can end the quote."""
    return "'" + tab.replace("'", "''") + "'"


def a1(tab: str, first_col: int | None, first_row: int | None, last_col: int | None = None,
       last_row: int | None = None, *, single: bool = False) -> str:
    """The range ``'tab'!<first>:<last>`` as sent; a ``None`` column or row leaves it open
    (``'T'!2:101`` is rows 2–101, ``'T'!C2:C`` column C from row 2 on). ``single``: just
    ``'tab'!<first>``."""
    start = (column_letter(first_col) if first_col else "") + (str(first_row) if first_row
                                                                else "")
    if single:
        return f"{quote_tab(tab)}!{start}"
    end = (column_letter(last_col) if last_col else "") + (str(last_row) if last_row else "")
    return f"{quote_tab(tab)}!{start}:{end}"


def shown_range(tab: str, first_col: int, first_row: int, last_col: int, last_row: int) -> str:
    """A range as Google writes one in its answers (``Orders!A5:C5``, ``'My tab'!A5:C5``):
    the tab quoted only when it must be."""
    name = tab if _PLAIN_TAB.match(tab) and not _LOOKS_LIKE_CELL.match(tab) else quote_tab(tab)
    start = f"{column_letter(first_col)}{first_row}"
    end = f"{column_letter(last_col)}{last_row}"
    return f"{name}!{start}" if start == end else f"{name}!{start}:{end}"


@dataclass(frozen=True)
class Cells:
    """A rectangle of cells, 1-based and inclusive."""

    first_col: int
    first_row: int
    last_col: int
    last_row: int


def parse_cells(text: Any) -> Cells | None:
    """The cells of a range Google answered (``'Tab'!A5:C5``, ``Tab!A5``); ``None`` when it
    is not one (the tab part may hold anything, so only what follows its last ``!`` counts)."""
    if not isinstance(text, str) or len(text) > 1024:
        return None
    m = _CELL_RANGE.match(text.rpartition("!")[2])
    if m is None:
        return None
    c1, c2 = column_number(m[1]), column_number(m[3] or m[1])
    r1, r2 = int(m[2]), int(m[4] or m[2])
    if c1 is None or c2 is None or not 1 <= r1 <= r2 or c1 > c2:
        return None
    return Cells(c1, r1, c2, r2)


def values_path(spreadsheet: str, cells: str, suffix: str = "") -> str:
    """``/v4/spreadsheets/{id}/values/{range}{suffix}``, the range percent-encoded whole (a
    ``/``, ``?`` or ``#`` in a tab name stays in the path segment)."""
    return f"/v4/spreadsheets/{spreadsheet}/values/{quote(cells, safe='')}{suffix}"


def inert(text: str, limit: int = 120) -> str:
    """``text`` for a message: control and direction characters removed, cut."""
    cleaned = _INERT.sub("", text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


# -- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoogleError:
    """What Google's error body says (every field empty when it says nothing usable)."""

    status: str
    message: str
    reasons: frozenset[str]


def read_google_error(body: bytes, content_type: str, redact: Redactor) -> GoogleError:
    try:
        doc = json.loads(decode_text(body, content_type))
    except (ValueError, RecursionError):
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        text, _ = redact.cut(" ".join(decode_text(body[:2000], content_type).split()),
                             MESSAGE_CHARS)
        return GoogleError("", inert(text, MESSAGE_CHARS), frozenset())
    reasons: set[str] = set()
    for key in ("details", "errors"):
        items = err.get(key)
        if isinstance(items, list):
            for item in items[:20]:
                reason = item.get("reason") if isinstance(item, dict) else None
                if isinstance(reason, str) and len(reason) <= 100:
                    reasons.add(reason)
    status = err.get("status")
    message = err.get("message")
    text, _ = redact.cut(message if isinstance(message, str) else "", MESSAGE_CHARS)
    return GoogleError(inert(status, 40) if isinstance(status, str) else "",
                       inert(" ".join(text.split()), MESSAGE_CHARS), frozenset(reasons))


def google_error(response: httpx.Response, body: bytes, *, mutate: bool, what: str,
                 redact: Redactor, connection: str) -> ConnectorError:
    """The typed error a non-2xx answer means (the table in docs/connectors.md#google_sheets).
    """
    code = response.status_code
    g = read_google_error(body, response.headers.get("content-type", ""), redact)
    said = f"{what} -> {code}{' ' + g.status if g.status else ''}"
    quoted = f" ({g.message})" if g.message else ""
    details: dict[str, Any] = {"status": code, "google_status": g.status or None,
                               "reason": ", ".join(sorted(g.reasons)) or None,
                               "google_message": g.message or None}
    reconnect = (f"get a new access token and run `keepflow connection secret {connection} "
                 f"token` (see {DOC})")
    if code == 401:
        return AuthError(f"{said}: Google refused the access token{quoted}; it has expired "
                         f"or was revoked (an OAuth access token lasts about an hour): "
                         f"{reconnect}", **details)
    if code == 429 or (code == 403 and g.reasons & _RATE_REASONS):
        wait = parse_retry_after(response.headers.get("retry-after"))
        return TransientError(
            f"{said}: over Google's per-minute quota{quoted}; trying again after "
            f"{DEFAULT_RETRY_AFTER if wait is None else wait:g} s",
            retry_after=DEFAULT_RETRY_AFTER if wait is None else wait, **details)
    if code == 403 and g.reasons & _SCOPE_REASONS:
        return AuthError(f"{said}: the access token lacks the Sheets scope{quoted}; "
                         "get one with https://www.googleapis.com/auth/spreadsheets (or "
                         f"spreadsheets.readonly for reads only), then {reconnect[4:]}",
                         **details)
    if code == 403:
        return PermissionDenied(f"{said}: Google refused access to this spreadsheet{quoted};"
                                " share it with the account the token belongs to (Editor to "
                                "write, Viewer to read)", **details)
    if code == 404:
        return PreconditionError(f"{said}: there is no such spreadsheet, or the token's "
                                 f"account cannot see it{quoted}; check the id (the part of "
                                 "the sheet's URL after /d/)", **details)
    if code == 400 and g.message.startswith("Unable to parse range"):
        return PreconditionError(f"{said}: the spreadsheet has no such tab{quoted}; check "
                                 "the sheet parameter (the tab's name as shown at the bottom "
                                 "of the spreadsheet)", **details)
    if code in (408, 409) or (code == 503 and not mutate):
        # 408: the request never arrived whole; 409 ABORTED: a concurrent change, not applied.
        wait = parse_retry_after(response.headers.get("retry-after"))
        return TransientError(f"{said}{quoted}; trying again", retry_after=wait, **details)
    if code >= 500:
        if code in (501, 505):
            return PermanentError(f"{said}: Google cannot handle this request{quoted}",
                                  **details)
        if not mutate:
            return TransientError(f"{said}: Google failed{quoted}; trying again", **details)
        return UncertainOutcome(f"{said}: Google failed while handling the change{quoted}; "
                                "it may or may not have been applied", **details)
    return PermanentError(f"{said}: Google rejected the request{quoted}", **details)


def grid_limits(exc: ConnectorError) -> tuple[int, int] | None:
    """``(max rows, max columns)`` when Google refused a range for reaching past the tab's
    grid (``Range ('T'!A1:Z5000) exceeds grid limits. Max rows: 1000, max columns: 26``)."""
    said = exc.details.get("google_message")
    m = _GRID.search(said) if isinstance(said, str) else None
    return (int(m[1]), int(m[2])) if m else None


# -- the exchange ----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class SheetsHttp:
    """One connection's HTTP client of the Sheets API (built on first use)."""

    def __init__(self, base_url: str, token: Secret, redact: Redactor, connection: str) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._redact = redact
        self._connection = connection
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    transport=DeadlineTransport(), follow_redirects=False, trust_env=False,
                    headers={"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING,
                             "User-Agent": USER_AGENT})
            return self._client

    def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                body: Any = None, mutate: bool = False, what: str) -> dict[str, Any]:
        """Send one request inside the current deadline; the JSON object answered.

        Before the request leaves, every failure is definite (``TransientError`` /
        ``PermanentError``); after it, a mutation's failure is an ``UncertainOutcome``
        unless the status says otherwise. A 2xx whose body is not a JSON object is a
        ``TransientError`` for a read and an ``UncertainOutcome`` for a mutation (it was
        applied, but the answer cannot say how: reconcile finds out).
        """
        left = remaining()
        if left is not None and left <= 0:
            raise TransientError(f"{what}: the call's time ran out before the request was "
                                 "sent; nothing was sent", sent=False)
        timeout = left if left is not None else 30.0
        headers = {"Authorization": f"Bearer {self._token.reveal()}"}
        client = self._http()
        try:
            request = client.build_request(
                method, self._base + path, params=params, json=body, headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)))
        except (ValueError, TypeError, UnicodeError, httpx.InvalidURL) as exc:
            raise PermanentError(f"{what}: the request could not be built "
                                 f"({type(exc).__name__}); nothing was sent", sent=False
                                 ) from None
        try:
            response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, mutate=mutate, what=what, redact=self._redact.text,
                                  deadline=timeout) from None
        try:
            data, cut = read_body(response)
        except Exception:  # a bug, never the server's say: the status decides
            data, cut = b"", True
        finally:
            response.close()
        if not 200 <= response.status_code < 300:
            raise google_error(response, data, mutate=mutate, what=what, redact=self._redact,
                               connection=self._connection)
        return self._answer(response, data, cut, mutate=mutate, what=what)

    def _answer(self, response: httpx.Response, data: bytes, cut: bool, *, mutate: bool,
                what: str) -> dict[str, Any]:
        problem = None
        if cut and len(data) >= MAX_BODY_BYTES:
            if not mutate:
                raise PermanentError(
                    f"{what}: the answer is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB, "
                    "more than keepflow reads (read_rows: ask for fewer rows with limit, or "
                    "fewer columns with range)", status=response.status_code)
            problem = "an answer too large to read"
        elif cut:
            problem = "an answer that broke off"
        else:
            try:
                doc = json.loads(data.decode("utf-8", errors="replace"),
                                 parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                doc = None
            if isinstance(doc, dict):
                return doc
            problem = "an answer that is not a JSON object"
        status = response.status_code
        if mutate:
            raise UncertainOutcome(f"{what} -> {status} with {problem}: the change was "
                                   "probably applied, but the answer does not say where",
                                   status=status)
        raise TransientError(f"{what} -> {status} with {problem}; trying again", status=status)
