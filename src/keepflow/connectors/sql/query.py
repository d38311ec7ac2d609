"""Running a script's ``sql.query`` within the connection's bounds (SPEC §9; sql_limits).

The statement (already checked by :mod:`sql_guard`) runs in one read-only transaction, in two
steps, both under the ``tables`` allow-list when there is one:

1. a probe, ``SELECT * FROM (<sql>) AS kf_q LIMIT 0``, which yields no row and tells how
   many columns the result has;
2. the statement itself, wrapped so that the database stops producing data at the bounds:

   * SQLite computes each value under ``SQLITE_LIMIT_LENGTH``: at most ``max_bytes`` per
     value, shared out among the columns of a result wider than :data:`SQLITE_WIDE`, so one
     row stays below ``SQLITE_WIDE × max_bytes`` (SQLite refuses to build a longer value,
     lazily-built ``zeroblob`` included). Rows are fetched one at a time.
   * PostgreSQL cannot bound a single value, so the wrapper keeps a running total of the
     text size of the rows it produces (a window over the subquery) and makes the server
     raise an error, instead of sending the row, once the total passes ``max_bytes``. The
     host therefore never receives much more than ``max_bytes`` of row data, however large
     the values the query computes; the server's own work is bounded by the deadline
     (``statement_timeout``). ``lead()`` tells whether a row follows the last one returned,
     so the truncation row is never sent.

While the rows are read, each is converted to JSON and counted the way the sandbox counts
it; the read stops with :meth:`ResultLimits.too_large` as soon as the result passes
``max_bytes``, and with a timeout once the call's deadline has passed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from keepflow.connectors.sql.allow import AllowList
from keepflow.connectors.sql.allow_pg import check_query
from keepflow.connectors.sql.allow_sqlite import guarded
from keepflow.connectors.sql.classify import PG_TOO_LARGE_MARKER
from keepflow.connectors.sql.db import Database
from keepflow.connectors.sql.limits import ResultLimits, TooDeep, json_size, too_deep
from keepflow.connectors.sql.reflect import to_json
from keepflow.errors import TransientError

#: Bind names the wrapper uses; a script's statement may not use them.
RESERVED_BINDS = frozenset({"kf_limit", "kf_rows", "kf_bytes"})
#: SQLite: a result with more columns than this shares ``max_bytes`` among them per value.
SQLITE_WIDE = 8
#: SQLite: the smallest per-value limit, however many columns a result has.
SQLITE_MIN_VALUE = 256
#: Room for ``{"rows":[],"rowCount":…,"truncated":true}`` around the rows.
_ENVELOPE = 64


@dataclass(frozen=True)
class QueryRunner:
    db: Database
    limits: ResultLimits
    allow: AllowList | None
    pg_schema: str | None

    def run(self, what: str, timeout: float, sql: str, params: Mapping[str, Any]) -> Any:
        """Run the checked statement ``sql`` with bound ``params``; the ``query`` result."""
        deadline = time.monotonic() + timeout
        sqlite = self.db.sqlite
        lim = self.limits
        with self.db.transaction(what, timeout, read_only=True,
                                 value_limit=lim.max_bytes if sqlite else None) as conn, \
                self._guard(conn):
            # The script's own statement, validated by sql_guard; values are bound.
            probe_sql = f"SELECT * FROM ({sql}\n) AS kf_q LIMIT 0"  # noqa: S608
            probe = self._execute(conn, probe_sql, params)
            names = _unique(list(probe.keys()))
            probe.close()
            width = len(names)
            args = {**params, "kf_limit": lim.max_rows + 1}
            if sqlite:
                self.db.limit_values(conn, sqlite_value_limit(lim.max_bytes, width))
                # The script's own statement, validated by sql_guard; values are bound.
                text = f"SELECT * FROM ({sql}\n) AS kf_q LIMIT :kf_limit"  # noqa: S608
            else:
                text = pg_guarded(sql, width)
                args.update(kf_rows=lim.max_rows, kf_bytes=lim.max_bytes)
            result = self._execute(conn, text, args)
            rows: list[dict[str, Any]] = []
            size = _ENVELOPE
            truncated = False
            for raw in result:
                if len(rows) == lim.max_rows:  # SQLite: the row after the last one
                    truncated = True
                    break
                if time.monotonic() > deadline:
                    raise TransientError(f"{what}: the call timed out while reading the "
                                         "result (nothing was written)")
                try:
                    row = dict(zip(names, (to_json(v) for v in raw[:width]), strict=True))
                except TooDeep:
                    raise too_deep(what) from None
                size += json_size(row) + 1
                if size > lim.max_bytes:
                    raise lim.too_large(what, f"reading stopped at row {len(rows) + 1}")
                rows.append(row)
                if not sqlite and len(rows) == lim.max_rows and raw[width + 3] is not None:
                    truncated = True  # PostgreSQL: lead() saw a row after this one
            result.close()
        out: dict[str, Any] = {"rows": rows, "rowCount": len(rows)}
        if truncated:
            out["truncated"] = True
        return out

    @contextmanager
    def _guard(self, conn: sa.Connection) -> Iterator[None]:
        """SQLite with an allow-list: the authorizer, while every statement compiles."""
        ctx = guarded(conn, self.allow, query=True) if (
            self.allow is not None and self.db.sqlite) else nullcontext()
        with ctx:
            yield

    def _execute(self, conn: sa.Connection, text: str,
                 args: Mapping[str, Any]) -> sa.CursorResult[Any]:
        """PostgreSQL with an allow-list: exactly the text that is sent is parsed and
        checked first (sql_allow_pg), the probe and the wrapper included."""
        stmt = sa.text(text)
        if self.allow is None or self.db.sqlite:  # the database user's privileges, or
            return conn.execute(stmt, dict(args))  # the authorizer (_guard), decide
        compiled = stmt.compile(dialect=conn.dialect).string
        check_query(conn, compiled, self.allow, self.pg_schema)
        return conn.exec_driver_sql(compiled, dict(args))


def sqlite_value_limit(max_bytes: int, columns: int) -> int:
    """The per-value limit for a SQLite result of ``columns`` columns."""
    if columns <= SQLITE_WIDE:
        return max_bytes
    return max(SQLITE_MIN_VALUE, SQLITE_WIDE * max_bytes // columns)


def pg_guarded(sql: str, columns: int) -> str:
    """The PostgreSQL text that runs ``sql`` and stops at ``:kf_rows`` rows / ``:kf_bytes``.

    Columns are renamed positionally (``kf_c1`` …) so that duplicate or odd names of the
    script's result cannot clash with the wrapper's; the result's own names come from the
    probe. The inner ``LIMIT`` keeps the script's subquery from being merged into the
    wrapper, so no expression of it is evaluated twice. A single row larger than
    ``:kf_bytes`` is refused as soon as it is computed (before the window buffers it); the
    window then keeps the running total. Output: the ``columns`` values, then ``kf_size``,
    ``kf_n`` (row number), ``kf_total`` (bytes so far), ``kf_more`` (a row follows)."""
    names = [f"kf_c{i}" for i in range(1, columns + 1)]
    alias = f"kf_q ({', '.join(names)})" if names else "kf_q"
    size = " + ".join(f"coalesce(octet_length(CAST({n} AS text)), 0)" for n in names) or "0"
    marker = PG_TOO_LARGE_MARKER
    # The script's own statement, validated by sql_guard (and sql_allow_pg); values are bound.
    return (
        "SELECT * FROM (SELECT kf_p.*, row_number() OVER kf_w AS kf_n, "  # noqa: S608
        "sum(kf_size) OVER kf_w AS kf_total, lead(1) OVER kf_w AS kf_more "
        f"FROM (SELECT kf_o.*, {size} AS kf_size "
        f"FROM (SELECT * FROM ({sql}\n) AS {alias} LIMIT :kf_limit) AS kf_o "
        f"WHERE CASE WHEN {size} > :kf_bytes "
        # Not a constant (the planner would fold a constant cast and fail every query).
        f"THEN CAST('{marker} in one row of ' || ({size}) AS integer) = 0 ELSE true END) "
        "AS kf_p "
        "WINDOW kf_w AS (ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS kf_s "
        "WHERE CASE WHEN kf_n > :kf_rows THEN false WHEN kf_total > :kf_bytes "
        f"THEN CAST('{marker} at row ' || kf_n AS integer) = 0 ELSE true END")


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}:{seen[n] - 1}")
    return out
