"""PostgreSQL: the ``tables`` allow-list checked on the server's own grammar (SPEC §9 scopes).

PostgreSQL has no authorizer callback, and a check on words of the SQL text is fooled by
quoting (``U&"secr\\0065ts"``), case, schema prefixes and functions that run SQL given as a
string (``query_to_xml('select …')``). So the exact text sent to the server is parsed with
libpg_query (PostgreSQL's own parser, through ``pgparse``), and the parse tree is walked with
allow-lists, never deny-lists:

* every node type and every field of it must be one this module knows (:data:`_NODES`);
  anything else (XMLTABLE, TABLESAMPLE, SQL/JSON syntax, syntax of a newer server) is refused;
* every relation (``RangeVar``) must be in ``tables``, after resolving the name the way the
  server will: unquoted names arrive folded, quoted ones exact, ``U&`` escapes decoded; a
  name bound to a CTE in scope is the CTE; an unqualified name is looked up with the
  server's own ``to_regclass`` under the transaction's ``search_path`` (``pg_catalog`` comes
  first there), and must land in the connection's schema; a qualified name must name it;
* every function must be in :data:`PG_FUNCTIONS` (built-ins that only compute on their
  arguments; none that runs SQL, reads files, settings, large objects or other databases);
  every type in a cast in :data:`PG_TYPES` (no ``regclass`` and friends, no table row types);
  operators may be unqualified or ``pg_catalog.``-qualified;
* attribute notation is a function call in disguise: ``(x).f`` and ``t.f`` call ``f(x)`` /
  ``f(t)`` when there is no field ``f`` (``(path).pg_read_file``, ``g.pg_read_file`` over
  ``unnest(…) AS g``). So every name after the first of a column reference, and every field
  name of an indirection, must be an allowed function, one of :data:`_ATTRIBUTE_SAFE`, or a
  name the server's ``pg_proc`` has no one-argument function for.

Limits: a listed *view* may read tables that are not listed (PostgreSQL checks the view's
privileges as its owner; that is what a view is for). Functions and operators the database
owner created with the same name as an allowed built-in may be chosen by the server's
overload resolution; they are the owner's code. Columns of an allowed table's row can be
passed to one-argument functions in attribute notation (``t.f``); the server only considers
functions taking that row type, again the owner's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pgparse
import sqlalchemy as sa

from keepflow.connectors.sql.allow import AllowList, shown
from keepflow.errors import PermanentError

#: Schemas whose relations are never readable on a connection with an allow-list.
_CATALOGS = frozenset({"pg_catalog", "information_schema", "pg_toast"})

PG_FUNCTIONS = frozenset({
    # aggregates
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "string_agg",
    "array_agg", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "stddev",
    "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "percentile_cont",
    "percentile_disc", "mode", "bit_and", "bit_or", "corr", "covar_pop", "covar_samp",
    "any_value",
    # window
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    # strings
    "lower", "upper", "initcap", "length", "char_length", "character_length", "octet_length",
    "bit_length", "substr", "substring", "btrim", "ltrim", "rtrim", "lpad", "rpad", "replace",
    "translate", "concat", "concat_ws", "left", "right", "reverse", "repeat", "position",
    "strpos", "split_part", "starts_with", "format", "md5", "sha224", "sha256", "sha384",
    "sha512", "encode", "decode", "to_hex", "ascii", "chr", "regexp_replace", "regexp_match",
    "regexp_matches", "regexp_split_to_array", "regexp_split_to_table", "regexp_count",
    "regexp_instr", "regexp_like", "regexp_substr", "string_to_array", "string_to_table",
    "array_to_string", "overlay", "like_escape", "similar_escape", "similar_to_escape",
    "normalize", "is_normalized", "quote_literal", "quote_nullable", "quote_ident",
    "convert_from", "convert_to", "unistr",
    # numbers
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power",
    "pow", "exp", "ln", "log", "log10", "mod", "div", "pi", "degrees", "radians",
    "width_bucket", "gcd", "lcm", "random", "scale", "min_scale", "trim_scale", "factorial",
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
    # date and time
    "now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "date_trunc",
    "date_part", "extract", "age", "to_char", "to_date", "to_timestamp", "to_number",
    "make_date", "make_time", "make_timestamp", "make_timestamptz", "make_interval",
    "date_bin", "justify_days", "justify_hours", "justify_interval", "isfinite", "timezone",
    "overlaps", "date_add", "date_subtract",
    # JSON
    "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
    "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object",
    "jsonb_object", "json_array_length", "jsonb_array_length", "json_extract_path",
    "json_extract_path_text", "jsonb_extract_path", "jsonb_extract_path_text", "json_typeof",
    "jsonb_typeof", "jsonb_set", "jsonb_set_lax", "jsonb_insert", "json_strip_nulls",
    "jsonb_strip_nulls", "jsonb_pretty", "json_each", "jsonb_each", "json_each_text",
    "jsonb_each_text", "json_array_elements", "jsonb_array_elements",
    "json_array_elements_text", "jsonb_array_elements_text", "json_object_keys",
    "jsonb_object_keys", "jsonb_path_exists", "jsonb_path_match", "jsonb_path_query",
    "jsonb_path_query_array", "jsonb_path_query_first", "json_to_record", "jsonb_to_record",
    "json_to_recordset", "jsonb_to_recordset",
    # arrays and sets
    "array_length", "array_position", "array_positions", "array_append", "array_prepend",
    "array_cat", "array_remove", "array_replace", "array_upper", "array_lower",
    "array_ndims", "cardinality", "unnest", "generate_series", "generate_subscripts",
    "trim_array", "array_fill",
    # other
    "coalesce", "nullif", "greatest", "least", "num_nulls", "num_nonnulls",
    "gen_random_uuid",
})

PG_TYPES = frozenset({
    "bool", "boolean", "int2", "int4", "int8", "smallint", "integer", "int", "bigint",
    "numeric", "decimal", "float4", "float8", "real", "text", "varchar", "bpchar", "char",
    "date", "time", "timetz", "timestamp", "timestamptz", "interval", "json", "jsonb",
    "jsonpath", "uuid", "bytea", "inet", "cidr", "macaddr", "bit", "varbit",
})

#: One-argument built-ins that are harmless and share their names with common columns
#: (``u.name``, ``p.path``, ``a.host``): casts, geometry and network accessors.
_ATTRIBUTE_SAFE = PG_FUNCTIONS | PG_TYPES | frozenset({
    "name", "path", "point", "line", "lseg", "box", "circle", "polygon", "area", "center",
    "width", "height", "diameter", "radius", "npoints", "isclosed", "isopen", "host",
    "family", "network", "masklen", "netmask", "broadcast", "hostmask", "abbrev", "money",
})

#: ``CURRENT_DATE`` and friends: allowed; ``CURRENT_USER``, ``CURRENT_SCHEMA`` … are not.
_TIME_VALUES = frozenset({
    "SVFOP_CURRENT_DATE", "SVFOP_CURRENT_TIME", "SVFOP_CURRENT_TIME_N",
    "SVFOP_CURRENT_TIMESTAMP", "SVFOP_CURRENT_TIMESTAMP_N", "SVFOP_LOCALTIME",
    "SVFOP_LOCALTIME_N", "SVFOP_LOCALTIMESTAMP", "SVFOP_LOCALTIMESTAMP_N",
})

# Field kinds: S a scalar; N a node, a list of nodes, or nothing; "@X" a struct of type X
# written inline (libpg_query's JSON wraps a Node* as {"Type": {...}}, not a typed pointer);
# OP an operator name; FUNC a function name; TYPE a type name; FALSE a flag that must be off.
S, N, OP, FUNC, TYPE, FALSE, SVF = "scalar", "node", "op", "func", "type", "false", "svf"
_NODES: dict[str, dict[str, str]] = {
    "SelectStmt": {
        "distinctClause": N, "targetList": N, "fromClause": N, "whereClause": N,
        "groupClause": N, "groupDistinct": S, "havingClause": N, "windowClause": N,
        "valuesLists": N, "sortClause": N, "limitOffset": N, "limitCount": N,
        "limitOption": S, "withClause": "@WithClause", "op": S, "all": S,
        "larg": "@SelectStmt", "rarg": "@SelectStmt"},
    "WithClause": {"ctes": N, "recursive": S, "location": S},
    "CommonTableExpr": {"ctename": S, "aliascolnames": N, "ctematerialized": S,
                        "ctequery": N, "location": S},
    "ResTarget": {"name": S, "indirection": N, "val": N, "location": S},
    "ColumnRef": {"fields": N, "location": S},
    "A_Star": {},
    "String": {"sval": S}, "Integer": {"ival": S}, "Float": {"fval": S},
    "Boolean": {"boolval": S}, "BitString": {"bsval": S},
    "A_Const": {"isnull": S, "sval": "@String", "ival": "@Integer", "fval": "@Float",
                "boolval": "@Boolean", "bsval": "@BitString", "location": S},
    "ParamRef": {"number": S, "location": S},
    "A_Expr": {"kind": S, "name": OP, "lexpr": N, "rexpr": N, "location": S},
    "BoolExpr": {"boolop": S, "args": N, "location": S},
    "NullTest": {"arg": N, "nulltesttype": S, "argisrow": S, "location": S},
    "BooleanTest": {"arg": N, "booltesttype": S, "location": S},
    "CaseExpr": {"arg": N, "args": N, "defresult": N, "location": S},
    "CaseWhen": {"expr": N, "result": N, "location": S},
    "CoalesceExpr": {"args": N, "location": S},
    "MinMaxExpr": {"op": S, "args": N, "location": S},
    "SubLink": {"subLinkType": S, "subLinkId": S, "testexpr": N, "operName": OP,
                "subselect": N, "location": S},
    "RangeVar": {"schemaname": S, "relname": S, "inh": S, "relpersistence": S,
                 "alias": "@Alias", "location": S},
    "Alias": {"aliasname": S, "colnames": N},
    "RangeSubselect": {"lateral": S, "subquery": N, "alias": "@Alias"},
    "RangeFunction": {"lateral": S, "ordinality": S, "is_rowsfrom": S, "functions": N,
                      "alias": "@Alias", "coldeflist": N},
    "List": {"items": N},
    "JoinExpr": {"jointype": S, "isNatural": S, "larg": N, "rarg": N, "usingClause": N,
                 "join_using_alias": "@Alias", "quals": N, "alias": "@Alias", "rtindex": S},
    "FuncCall": {"funcname": FUNC, "args": N, "agg_order": N, "agg_filter": N,
                 "over": "@WindowDef", "agg_within_group": S, "agg_star": S,
                 "agg_distinct": S, "func_variadic": S, "funcformat": S, "location": S},
    "NamedArgExpr": {"arg": N, "name": S, "argnumber": S, "location": S},
    "TypeCast": {"arg": N, "typeName": "@TypeName", "location": S},
    "TypeName": {"names": TYPE, "typeOid": S, "setof": FALSE, "pct_type": FALSE,
                 "typmods": N, "typemod": S, "arrayBounds": N, "location": S},
    "CollateClause": {"arg": N, "collname": N, "location": S},
    "SortBy": {"node": N, "sortby_dir": S, "sortby_nulls": S, "useOp": OP, "location": S},
    "WindowDef": {"name": S, "refname": S, "partitionClause": N, "orderClause": N,
                  "frameOptions": S, "startOffset": N, "endOffset": N, "location": S},
    "GroupingSet": {"kind": S, "content": N, "location": S},
    "GroupingFunc": {"args": N, "location": S},
    "A_ArrayExpr": {"elements": N, "location": S},
    "A_Indirection": {"arg": N, "indirection": N},
    "A_Indices": {"is_slice": S, "lidx": N, "uidx": N},
    "RowExpr": {"args": N, "row_format": S, "colnames": N, "location": S},
    "SQLValueFunction": {"op": SVF, "typmod": S, "location": S},
    "ColumnDef": {"colname": S, "typeName": "@TypeName", "is_local": S, "location": S},
}
_FRIENDLY = {
    "XmlExpr": "XML functions", "XmlSerialize": "XMLSERIALIZE", "RangeTableFunc": "XMLTABLE",
    "RangeTableSample": "TABLESAMPLE", "lockingClause": "FOR UPDATE/SHARE",
    "intoClause": "SELECT … INTO", "catalogname": "a database-qualified name (db.schema.table)",
}
#: SQLAlchemy's pyformat placeholders and escaped percent signs, as psycopg reads them.
_PYFORMAT = re.compile(r"%%|%\(([^)]+)\)s")
_MAX_DEPTH = 200


def server_sql(compiled: str) -> str:
    """The text psycopg sends for SQLAlchemy's compiled ``compiled``: ``%(name)s`` becomes
    ``$n`` (numbered by first appearance) and ``%%`` becomes ``%``, exactly as psycopg does."""
    order: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "%"
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    return _PYFORMAT.sub(sub, compiled)


def check_query(conn: sa.Connection, compiled: str, allow: AllowList,
                schema: str | None) -> None:
    """Refuse the statement (:class:`PermissionDenied`) unless it touches only allowed
    relations and safe functions. ``compiled`` is the driver-level text about to be sent."""
    _check_catalog(conn, inspect_statement(server_sql(compiled), allow), allow, schema)


def inspect_statement(sql: str, allow: AllowList) -> Findings:
    """Parse ``sql`` (server text, ``$n`` placeholders) and walk it; raise on the first thing
    that is not allowed. What only the catalog can decide is returned, to be checked there."""
    try:
        statements = pgparse.parse(sql)
    except pgparse.PGQueryError as exc:
        raise PermanentError(f"params.sql: {exc.message}", field="sql") from None
    except RecursionError:
        raise _too_deep() from None
    if len(statements) != 1:
        raise PermanentError("params.sql must be a single statement", field="sql")
    walker = _Walker(allow)
    try:
        walker.node(statements[0].get("stmt"), frozenset(), 0)
    except RecursionError:
        raise _too_deep() from None
    return Findings(tuple(walker.relations), tuple(walker.attributes))


@dataclass(frozen=True)
class Findings:
    #: (schema or None, name) of every relation the statement reads (CTE references removed),
    #: each already in the allow-list by name; where the server resolves it is still open.
    relations: tuple[tuple[str | None, str], ...]
    #: Attribute-notation names that are neither allowed functions nor known to be harmless.
    attributes: tuple[str, ...]


class _Walker:
    """Walks one parse tree; raises on the first thing not allowed; collects relations."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        #: (schema or None, name) of every relation reference that is not a CTE.
        self.relations: list[tuple[str | None, str]] = []
        #: Names used in attribute notation that only the catalog can clear (in order).
        self.attributes: list[str] = []
        self._checks: Mapping[str, Callable[[Any], None]] = {
            OP: self._operator, FUNC: self._function, TYPE: self._type, SVF: self._value_fn,
            FALSE: self._false, S: self._scalar}

    def node(self, value: Any, scope: frozenset[str], depth: int) -> None:
        """A Node* field: ``{"Type": {...}}``, a list of those, ``{}`` (NIL) or nothing."""
        if depth > _MAX_DEPTH:
            raise _too_deep()
        if value is None or value == {}:
            return
        if isinstance(value, list):
            for item in value:
                self.node(item, scope, depth + 1)
            return
        if not (isinstance(value, dict) and len(value) == 1):
            raise self.allow.syntax_denied("this construct")
        ((kind, body),) = value.items()
        self.struct(kind, body, scope, depth + 1)

    def struct(self, kind: str, body: Any, scope: frozenset[str], depth: int) -> None:
        fields = _NODES.get(kind)
        if fields is None or not isinstance(body, dict):
            raise self.allow.syntax_denied(_FRIENDLY.get(kind, kind))
        for name in body:
            if name not in fields:
                raise self.allow.syntax_denied(_FRIENDLY.get(name, f"{kind}.{name}"))
        if kind == "SelectStmt":
            scope = self._with(body, scope, depth)
        elif kind == "RangeVar":
            self._relation(body, scope)
        elif kind == "ColumnRef":
            self._attributes(list(_strings(body.get("fields")))[1:])
        elif kind == "A_Indirection":
            self._attributes(list(_strings(body.get("indirection"))))
        for name, value in body.items():
            if kind == "SelectStmt" and name == "withClause":
                continue  # walked by _with, with the CTE names in scope
            self._field(fields[name], value, scope, depth)

    def _field(self, spec: str, value: Any, scope: frozenset[str], depth: int) -> None:
        if spec == N:
            self.node(value, scope, depth)
        elif spec.startswith("@"):
            self.struct(spec[1:], value, scope, depth)
        else:
            self._checks[spec](value)

    def _with(self, body: dict[str, Any], scope: frozenset[str], depth: int) -> frozenset[str]:
        """CTE scoping as the server does it, or narrower: a CTE is visible to the CTEs after
        it and to the main query, and (WITH RECURSIVE) inside its own body. A name not in
        scope is treated as a table, which can only make the check stricter."""
        clause = body.get("withClause")
        if clause is None:
            return scope
        self.struct("WithClause", {k: v for k, v in clause.items() if k != "ctes"},
                    scope, depth)
        recursive = bool(clause.get("recursive"))
        visible = set(scope)
        for item in clause.get("ctes") or []:
            if not (isinstance(item, dict) and set(item) == {"CommonTableExpr"}):
                raise self.allow.syntax_denied("this WITH clause")
            cte = item["CommonTableExpr"]
            name = cte.get("ctename")
            if not isinstance(name, str):
                raise self.allow.syntax_denied("this WITH clause")
            inner = frozenset(visible | {name}) if recursive else frozenset(visible)
            self.struct("CommonTableExpr", cte, inner, depth + 1)
            visible.add(name)
        return frozenset(visible)

    def _relation(self, body: dict[str, Any], scope: frozenset[str]) -> None:
        schema, name = body.get("schemaname"), body.get("relname")
        if not isinstance(name, str) or (schema is not None and not isinstance(schema, str)):
            raise self.allow.syntax_denied("this table reference")
        if schema is None and name in scope:
            return  # a CTE of this statement
        shown_name = f"{schema}.{name}" if schema else name
        if schema in _CATALOGS:
            raise self.allow.schema_denied(shown_name)
        if not self.allow.allows_pg(name):
            raise self.allow.table_denied(shown_name)
        self.relations.append((schema, name))

    def _attributes(self, names: list[str]) -> None:
        for name in names:
            if name != "?" and name not in _ATTRIBUTE_SAFE and name not in self.attributes:
                self.attributes.append(name)

    def _function(self, names: Any) -> None:
        name = _qualified(names)
        if name is None or name not in PG_FUNCTIONS:
            raise self.allow.function_denied(name or _dotted(names))

    def _operator(self, names: Any) -> None:
        if _qualified(names) is None:
            raise self.allow.syntax_denied(f"operator {shown(_dotted(names))}")

    def _type(self, names: Any) -> None:
        name = _qualified(names)
        if name is None or name not in PG_TYPES:
            raise self.allow.syntax_denied(f"type '{shown(name or _dotted(names))}'")

    def _value_fn(self, op: Any) -> None:
        if op not in _TIME_VALUES:
            name = str(op).removeprefix("SVFOP_").lower()
            raise self.allow.function_denied(name)

    def _false(self, value: Any) -> None:
        if value:
            raise self.allow.syntax_denied("SETOF or %TYPE")

    def _scalar(self, value: Any) -> None:
        if not isinstance(value, (str, int, float, bool)):
            raise self.allow.syntax_denied("this construct")


def _strings(names: Any) -> Iterator[str]:
    """The names of a list of String nodes; ``?`` for any other item (``*``, subscripts)."""
    if not isinstance(names, list):
        return
    for item in names:
        if isinstance(item, dict) and set(item) == {"String"}:
            yield str(item["String"].get("sval", ""))
        else:
            yield "?"


def _qualified(names: Any) -> str | None:
    """The name of an unqualified or ``pg_catalog.``-qualified name list, else ``None``."""
    parts = list(_strings(names))
    if len(parts) == 1 and parts[0] != "?":
        return parts[0]
    if len(parts) == 2 and parts[0] == "pg_catalog" and parts[1] != "?":
        return parts[1]
    return None


def _dotted(names: Any) -> str:
    return ".".join(_strings(names)) or "?"


def _check_catalog(conn: sa.Connection, findings: Findings, allow: AllowList,
                   schema: str | None) -> None:
    """Ask the server (one query, same transaction and search_path as the statement): where
    each unqualified allowed name resolves (pg_catalog is searched first), and which
    attribute-notation names are one-argument functions."""
    relations, fields = findings.relations, list(findings.attributes)
    if not relations and not fields:
        return
    names = sorted({name for qualifier, name in relations if qualifier is None})
    row = conn.execute(_RESOLVE, {"names": names, "fields": fields}).one()
    callable_ = set(row.functions or ())
    for field in fields:
        if field in callable_:
            raise allow.function_denied(field)
    home = schema if schema else row.home
    found: dict[str, str | None] = dict(row.found or {})
    for qualifier, name in relations:
        where = qualifier if qualifier is not None else found.get(name)
        if qualifier is None and where is None:
            continue  # no such relation: the server will say so (a PreconditionError)
        if where in _CATALOGS:
            raise allow.schema_denied(f"{where}.{name}")
        if where != home:
            raise allow.table_denied(f"{where}.{name}")


_RESOLVE = sa.text(
    "SELECT pg_catalog.current_schema() AS home, ("
    " SELECT pg_catalog.json_object_agg(r.name, n.nspname)"
    " FROM pg_catalog.unnest(CAST(:names AS pg_catalog.text[])) AS r(name)"
    " LEFT JOIN pg_catalog.pg_class c"
    "  ON c.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(r.name))"
    " LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace) AS found, ("
    " SELECT pg_catalog.array_agg(DISTINCT p.proname::pg_catalog.text)"
    " FROM pg_catalog.pg_proc p"
    " WHERE p.proname::pg_catalog.text = ANY (CAST(:fields AS pg_catalog.text[]))"
    "  AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1) AS functions")


def _too_deep() -> PermanentError:
    return PermanentError("params.sql is nested too deeply to check; simplify the query",
                          field="sql")
