"""Reading one row by key for the row tools, within ``max_bytes`` (SPEC §6, §9; sql_limits).

``get`` returns a row; every mutation returns the row it wrote or deleted; reconcile returns
the row it found. A stored row can be far larger than a result may be (a 900 MB document, a
table of 1,600 wide columns), so a row is never fetched blindly:

1. the size of every column's value is asked first (``octet_length`` on PostgreSQL, the
   length as a blob on SQLite): a handful of integers;
2. the values are fetched only for the columns that fit together, each fetch guarded by
   ``CASE WHEN size <= measured THEN value END``, so a value that grew in between is not
   sent either (both reads run in one transaction: PostgreSQL reads with REPEATABLE READ or
   hold the row's lock, SQLite reads one snapshot);
3. the values are converted to JSON and measured exactly, the way the sandbox counts them.

A read (``get``) that does not fit fails with :meth:`ResultLimits.row_too_large`. A
mutation's result must not fail, because the write has happened: values that do not fit are
replaced by :func:`size_marker` (largest first) or :func:`depth_marker`, and the result says
``truncated: true``.

JSON columns are fetched as text and decoded here, so a stored document nested a thousand
levels deep cannot crash the driver's decoder; text in a JSON column that is not JSON (SQLite
does not check) comes back as that text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from keepflow.connectors.sql.limits import (
    ResultLimits,
    TooDeep,
    check_depth,
    depth_marker,
    json_size,
    size_marker,
    too_deep,
)
from keepflow.connectors.sql.reflect import TableInfo, to_json

#: What a value's JSON may take beyond its stored bytes (quotes, a comma, the key).
_PER_VALUE = 8


@dataclass(frozen=True)
class Fetched:
    """A row as JSON values, and the names of the columns replaced by markers."""

    row: dict[str, Any]
    truncated: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowReader:
    limits: ResultLimits
    sqlite: bool

    def exists(self, conn: sa.Connection, info: TableInfo, where: Sequence[Any], *,
               lock: bool = False) -> bool:
        q = sa.select(sa.literal(1)).select_from(info.table).where(*where)
        if lock and not self.sqlite:  # SQLite: BEGIN IMMEDIATE already holds the write lock
            q = q.with_for_update()
        return conn.execute(q).first() is not None

    def sizes(self, conn: sa.Connection, info: TableInfo, where: Sequence[Any], *,
              lock: bool = False) -> dict[str, int | None] | None:
        """Bytes of each column's stored value (``None`` for NULL); ``None`` if no row."""
        cols = list(info.table.c)
        q = sa.select(*(self._size(c).label(f"kf_s{i}") for i, c in enumerate(cols))) \
            .select_from(info.table).where(*where)
        if lock and not self.sqlite:
            q = q.with_for_update()
        found = conn.execute(q).first()
        if found is None:
            return None
        return {c.name: (None if found[i] is None else int(found[i]))
                for i, c in enumerate(cols)}

    def read(self, conn: sa.Connection, info: TableInfo, where: Sequence[Any], *,
             what: str, marked: bool, lock: bool = False) -> Fetched | None:
        sizes = self.sizes(conn, info, where, lock=lock)
        if sizes is None:
            return None
        return self.values(conn, info, where, sizes, what=what, marked=marked)

    def values(self, conn: sa.Connection, info: TableInfo, where: Sequence[Any],
               sizes: Mapping[str, int | None], *, what: str, marked: bool) -> Fetched:
        """The row's values within ``max_bytes``. ``marked``: a mutation's result (markers
        instead of values that do not fit); otherwise a read, which fails instead."""
        budget = self.limits.max_bytes
        estimate = {n: _estimate(info.table.c[n], s) for n, s in sizes.items() if s is not None}
        skipped: set[str] = set()
        total = sum(estimate.values())
        if total > budget:
            if not marked:
                raise self.limits.row_too_large(what, {n: s for n, s in sizes.items() if s})
            for name in sorted(estimate, key=lambda n: -estimate[n]):
                if total <= budget:
                    break
                skipped.add(name)
                total -= estimate[name]
        wanted = [c for c in info.table.c if sizes[c.name] is not None and c.name not in skipped]
        fetched: dict[str, Any] = {}
        if wanted:
            q = sa.select(*(self._guarded(c, int(sizes[c.name] or 0)).label(f"kf_v{i}")
                            for i, c in enumerate(wanted))).select_from(info.table).where(*where)
            found = conn.execute(q).first()
            if found is None:  # cannot happen within the transaction; be safe anyway
                raise self.limits.too_large(what, "the row changed while it was read")
            fetched = {c.name: found[i] for i, c in enumerate(wanted)}
        row: dict[str, Any] = {}
        markers: dict[str, dict[str, Any]] = {}
        for c in info.table.c:
            size = sizes[c.name]
            if size is None:
                row[c.name] = None
            elif c.name in skipped:
                markers[c.name] = size_marker(size)
            elif fetched[c.name] is None:  # the guard held it back: it grew in between
                if not marked:
                    raise self.limits.row_too_large(what, {c.name: size})
                markers[c.name] = size_marker(size)
            else:
                try:
                    row[c.name] = self._json(c, fetched[c.name])
                except TooDeep:
                    if not marked:
                        raise too_deep(what) from None
                    markers[c.name] = depth_marker()
        return self._fit({c.name: markers.get(c.name, row.get(c.name)) for c in info.table.c},
                         set(markers), sizes, what=what, marked=marked)

    def _fit(self, row: dict[str, Any], marked_names: set[str],
             stored: Mapping[str, int | None], *, what: str, marked: bool) -> Fetched:
        """Exact JSON sizes: the stored size of a text with many characters JSON must
        escape understates its JSON. Mark the largest values until the row fits."""
        total = json_size(row)
        if total <= self.limits.max_bytes:
            return Fetched(row, tuple(n for n in row if n in marked_names))
        sizes = {n: json_size(v) for n, v in row.items() if n not in marked_names}
        if not marked:
            raise self.limits.row_too_large(what, sizes)
        for name in sorted(sizes, key=lambda n: -sizes[n]):
            if total <= self.limits.max_bytes:
                break
            row[name] = size_marker(stored.get(name) or sizes[name])
            marked_names.add(name)
            total += json_size(row[name]) - sizes[name]
        return Fetched(row, tuple(n for n in row if n in marked_names))

    # -- SQL of one column ---------------------------------------------------------------------

    def _size(self, col: sa.Column[Any]) -> sa.ColumnElement[Any]:
        if self.sqlite:
            return sa.func.length(sa.cast(col, sa.LargeBinary))
        if isinstance(col.type, (sa.String, sa.LargeBinary)) and not isinstance(
                col.type, sa.Enum):  # octet_length takes text and bytea (no enum)
            return sa.func.octet_length(col)  # from the stored header: nothing is read
        return sa.func.octet_length(sa.cast(col, sa.Text))

    def _guarded(self, col: sa.Column[Any], size: int) -> sa.ColumnElement[Any]:
        value: sa.ColumnElement[Any] = sa.cast(col, sa.Text) if _is_json(col) else col
        return sa.type_coerce(sa.case((self._size(col) <= size, value), else_=sa.null()),
                              value.type)

    @staticmethod
    def _json(col: sa.Column[Any], value: Any) -> Any:
        if _is_json(col) and isinstance(value, str):
            try:
                decoded = json.loads(value)
            except RecursionError:
                raise TooDeep(col.name) from None
            except ValueError:
                return value  # not JSON (SQLite does not check): the text as it is
            check_depth(decoded)
            return decoded
        return to_json(value)


def _is_json(col: sa.Column[Any]) -> bool:
    return isinstance(col.type, sa.JSON)


def _estimate(col: sa.Column[Any], size: int) -> int:
    """JSON bytes a stored value of ``size`` bytes will take, about (exact in _fit)."""
    if isinstance(col.type, sa.LargeBinary):
        return (size + 2) // 3 * 4 + _PER_VALUE  # base64
    return size + _PER_VALUE + len(col.name)
