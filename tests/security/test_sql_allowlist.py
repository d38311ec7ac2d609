"""Attacks on the ``tables`` allow-list of the ``sql`` connector, on real SQLite and PostgreSQL.

A connection with ``tables = ["invoices", "orders"]`` must never let a script read anything
else: not by quoting, case, schema prefixes, CTEs, views, subqueries, set operations,
table-valued functions, catalogs, or functions that run SQL themselves. Every refusal is a
``PermissionDenied`` raised before the statement runs, naming only the refused thing, and no
byte of the forbidden data appears in a result or a message. Legitimate queries over the
allowed tables keep working. (docs/connectors.md#table-allow-list)
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The connector fixtures (and their helper modules) live beside the connector integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "connectors"))

from sql_shop import SqlTarget, connector, create_shop, get, m, q

from keepflow.connectors.base import ToolCall
from keepflow.connectors.sql import SqlConnector
from keepflow.errors import KeepflowError, PermanentError, PermissionDenied, PreconditionError
from tests.integration.connectors import conftest as connector_fixtures

# The real SQLite file and PostgreSQL schema of the connector tests, both backends.
sql_target_url = connector_fixtures.sql_target_url
sql_target = connector_fixtures.sql_target

pytestmark = pytest.mark.integration
#: Run a test on one backend only (the connector fixtures run both by default).
SQLITE_ONLY = pytest.mark.parametrize("sql_target_url", ["sqlite"], indirect=True)
PG_ONLY = pytest.mark.parametrize("sql_target_url", ["postgresql"], indirect=True)

SECRET = "TOPSECRET-4d1f"
ALLOWED = ["invoices", "orders"]
#: Every relation of the test database: a refusal may name the refused one and no other.
RELATIONS = ("invoices", "orders", "logs", "secrets", "v_secrets", "v_invoices", "É")
DOCS = "docs/connectors.md#table-allow-list"


def build(target: SqlTarget) -> None:
    create_shop(target)
    target.execute(
        f"UPDATE secrets SET v = '{SECRET}'",
        "INSERT INTO orders (id, ref, note) VALUES (1, 'r-1', 'first'), (2, 'r-2', NULL)",
        "CREATE VIEW v_secrets AS SELECT k, v FROM secrets",
        "CREATE VIEW v_invoices AS SELECT message_id, subject FROM invoices",
        'CREATE TABLE "É" (v TEXT)',
        f"INSERT INTO \"É\" (v) VALUES ('{SECRET}')",
    )


@pytest.fixture
def shop(sql_target: SqlTarget) -> Iterator[SqlConnector]:
    build(sql_target)
    c = connector(sql_target, tables=[*ALLOWED, "é"])
    yield c
    c.close()


def refused(c: SqlConnector, call: ToolCall, *names: str) -> PermissionDenied:
    """Assert ``call`` is refused with a clean PermissionDenied that leaks nothing and names
    ``names`` (the refused thing, and the script's own view or CTE it was reached through)."""
    with pytest.raises(PermissionDenied) as info:
        c.call(call)
    assert_clean(info.value, *names)
    assert DOCS in info.value.message
    return info.value


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None


def assert_clean(error: KeepflowError, *names: str, echoed: str = "") -> None:
    """The message is encodable, short, holds no secret data, names ``names`` and no other
    relation of the database (except inside ``echoed``, the script's own text)."""
    msg = error.message
    msg.encode("utf-8")  # no lone surrogate can make the message unusable
    json.dumps(error.to_dict())
    assert SECRET not in msg
    assert len(msg) < 600
    for name in names:
        assert name in msg
    for other in RELATIONS:
        if not any(_mentions(name, other) for name in (*names, echoed)):
            assert not _mentions(msg, other), (other, msg)


def rows(c: SqlConnector, sql: str, **params: Any) -> list[dict[str, Any]]:
    result = c.call(q(sql, **params))
    assert SECRET not in json.dumps(result)
    out: list[dict[str, Any]] = result["rows"]
    return out


# ------------------------------------------------------------------ attacks on both backends

BOTH = [
    ("SELECT * FROM secrets", "secrets"),
    ("SELECT v FROM SECRETS", "secrets"),
    ('SELECT v FROM "secrets"', "secrets"),
    ("SELECT count(*) AS n FROM secrets", "secrets"),
    ("SELECT 1 AS one FROM secrets WHERE 1 = 0", "secrets"),
    ("SELECT EXISTS (SELECT 1 FROM secrets) AS e", "secrets"),
    ("SELECT (SELECT v FROM secrets) AS x", "secrets"),
    ("SELECT subject FROM invoices WHERE subject IN (SELECT v FROM secrets)", "secrets"),
    ("SELECT subject FROM invoices WHERE EXISTS "
     "(SELECT 1 FROM secrets s WHERE s.v LIKE 'TOP%')", "secrets"),
    ("SELECT subject FROM invoices UNION ALL SELECT v FROM secrets", "secrets"),
    ("SELECT subject FROM invoices EXCEPT SELECT v FROM secrets", "secrets"),
    ("SELECT i.subject, s.v FROM invoices i JOIN secrets s ON 1 = 1", "secrets"),
    ("SELECT * FROM invoices i, (SELECT v FROM secrets) s", "secrets"),
    ("SELECT * FROM invoices NATURAL JOIN secrets", "secrets"),
    ("WITH invoices AS (SELECT * FROM secrets) SELECT * FROM invoices", "secrets",
     "invoices"),
    ("WITH x AS (SELECT v FROM secrets) SELECT * FROM x", "secrets"),
    ("WITH a AS (SELECT 1 AS n), b AS (SELECT v FROM secrets) SELECT * FROM a, b", "secrets"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
     "SELECT v FROM r, secrets", "secrets"),
    ("SELECT * FROM v_secrets", "v_secrets", "secrets"),
    ("SELECT count(*) AS n FROM v_secrets", "v_secrets", "secrets"),
    ('SELECT * FROM "É"', "É"),
    ("SELECT * FROM no_such_table", "no_such_table"),  # missing or not: same answer
    ("SELECT * FROM secr/**/ets", "secr"),
    ("SELECT subject FROM invoices WHERE subject = (SELECT v FROM secrets LIMIT 1)", "secrets"),
    ("SELECT * FROM logs", "logs"),
]


@pytest.mark.parametrize("case", BOTH, ids=lambda c: c[0][:70])
def test_other_tables_are_refused(shop: SqlConnector, sql_target: SqlTarget,
                                  case: tuple[str, ...]) -> None:
    sql, name, *sqlite_also = case
    if sql_target.kind == "sqlite" and sqlite_also:
        # SQLite names the table actually read, and the view or CTE it was read through.
        refused(shop, q(sql), name, *sqlite_also)
    else:
        refused(shop, q(sql), name)


def test_a_refused_query_never_runs(shop: SqlConnector) -> None:
    """The refusal comes before execution: this query would run until its deadline."""
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
               "SELECT count(*) AS n FROM c, secrets")
    started = time.monotonic()
    refused(shop, q(endless, timeout=5.0), "secrets")
    assert time.monotonic() - started < 2.5


def test_the_same_names_work_as_aliases_and_ctes(shop: SqlConnector) -> None:
    """Precision, not words: 'secrets' as an alias, a column alias or a CTE name is fine."""
    assert rows(shop, "SELECT secrets.subject AS secrets FROM invoices AS secrets "
                      "WHERE secrets.message_id = 'm-1'") == [{"secrets": "Invoice December"}]
    assert rows(shop, "WITH secrets AS (SELECT message_id FROM invoices) "
                      "SELECT count(*) AS n FROM secrets") == [{"n": 3}]


def test_a_listed_table_that_does_not_exist_is_a_precondition(sql_target: SqlTarget) -> None:
    build(sql_target)
    c = connector(sql_target, tables=["invoices", "missing_table"])
    try:
        with pytest.raises(PreconditionError):
            c.call(q("SELECT * FROM missing_table"))
    finally:
        c.close()


def test_without_an_allow_list_the_database_user_decides(sql_target: SqlTarget) -> None:
    """No `tables`: behaviour as before, every table the database user can read is readable."""
    build(sql_target)
    c = connector(sql_target)
    try:
        assert c.call(q("SELECT v FROM secrets"))["rows"] == [{"v": SECRET}]
    finally:
        c.close()


# ------------------------------------------------------------------ SQLite-specific attacks

SQLITE = [
    ("SELECT * FROM 'secrets'", "secrets"),
    ("SELECT * FROM [secrets]", "secrets"),
    ("SELECT * FROM `secrets`", "secrets"),
    ("SELECT * FROM main.secrets", "secrets"),
    ("SELECT * FROM main.'secrets'", "secrets"),
    ('SELECT * FROM "main"."secrets"', "secrets"),
    ("SELECT rowid FROM secrets", "secrets"),
    ("SELECT * FROM secrets INDEXED BY sqlite_autoindex_secrets_1", "secrets"),
    ("SELECT sql FROM sqlite_master", "sqlite_master"),
    ("SELECT sql FROM sqlite_schema", "sqlite_master"),
    ("SELECT sql FROM main.sqlite_schema", "sqlite_master"),
    ("SELECT count(*) AS n FROM sqlite_master", "sqlite_master"),
    ("SELECT rowid FROM sqlite_master", "sqlite_master"),
    ("SELECT name FROM sqlite_temp_master", "sqlite_temp_master"),
    ("SELECT name FROM temp.sqlite_master", "sqlite_temp_master"),
    ("SELECT name FROM sqlite_temp_schema", "sqlite_temp_master"),
    ("SELECT name FROM pragma_table_list", "pragma_table_list"),
    ("SELECT name FROM pragma_table_info('secrets')", "pragma_table_info"),
    ("SELECT * FROM pragma_index_list('secrets')", "pragma_index_list"),
    ("SELECT * FROM pragma_database_list", "pragma_database_list"),
    ("SELECT * FROM pragma_function_list", "pragma_function_list"),
    ("SELECT name FROM dbstat", "dbstat"),
    ("SELECT value FROM json_each((SELECT json_group_array(v) FROM secrets))", "secrets"),
    ("SELECT value FROM json_tree((SELECT json_object('v', v) FROM 'secrets'))", "secrets"),
    ("SELECT load_extension('/tmp/kf-evil.so')", "load_extension"),
    ("SELECT sqlite_compileoption_get(0) AS o", "sqlite_compileoption_get"),
    ("SELECT last_insert_rowid() AS r", "last_insert_rowid"),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("sql", "name"), SQLITE)
def test_sqlite_specific_routes_are_refused(shop: SqlConnector, sql: str, name: str) -> None:
    refused(shop, q(sql), name)


@SQLITE_ONLY
def test_sqlite_views_are_transparent(sql_target: SqlTarget) -> None:
    """SQLite reports every table a view reads (and names a view or a CTE responsible for a
    read in the same place), so what counts is the tables read: a view over listed tables is
    readable, a listed view over an unlisted table is not, and a CTE named like a listed view
    is no way round that."""
    build(sql_target)
    c = connector(sql_target, tables=["invoices", "v_secrets"])
    try:
        refused(c, q("SELECT * FROM v_secrets"), "secrets", "v_secrets")
        refused(c, q("SELECT count(*) AS n FROM v_secrets"), "secrets", "v_secrets")
        refused(c, q("WITH v_secrets AS (SELECT v FROM secrets) SELECT * FROM v_secrets"),
                "secrets", "v_secrets")
        assert rows(c, "SELECT count(*) AS n FROM v_invoices") == [{"n": 3}]
        assert rows(c, "SELECT subject FROM v_invoices WHERE message_id = 'm-2'") == [
            {"subject": "Invoice January"}]
    finally:
        c.close()


@SQLITE_ONLY
def test_sqlite_ctes_the_database_does_not_flatten(shop: SqlConnector,
                                                   sql_target: SqlTarget) -> None:
    """A recursive or materialized CTE is read as a whole (SQLite reports its name like a
    table's); that is no table of the database, and its own reads are checked."""
    assert rows(shop, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                      "WHERE x < 4) SELECT count(*) AS n FROM c") == [{"n": 4}]
    assert rows(shop, "WITH m AS MATERIALIZED (SELECT message_id FROM invoices) "
                      "SELECT count(*) AS n FROM m") == [{"n": 3}]
    refused(shop, q("WITH m AS MATERIALIZED (SELECT v FROM secrets) "
                    "SELECT count(*) AS n FROM m"), "secrets")
    refused(shop, q("WITH secrets AS MATERIALIZED (SELECT 1 AS x) "
                    "SELECT count(*) AS n FROM secrets"), "secrets")


@SQLITE_ONLY
def test_sqlite_a_table_named_like_a_table_function_is_a_table(sql_target: SqlTarget) -> None:
    build(sql_target)
    sql_target.execute("CREATE TABLE json_each (value TEXT)",
                       f"INSERT INTO json_each (value) VALUES ('{SECRET}')")
    c = connector(sql_target, tables=ALLOWED)
    try:
        refused(c, q("SELECT value FROM json_each"), "json_each")
    finally:
        c.close()


@SQLITE_ONLY
def test_sqlite_names_fold_like_sqlite_folds_them(sql_target: SqlTarget) -> None:
    """ASCII case-insensitive (as SQLite), but 'É' and 'é' stay two different tables."""
    build(sql_target)
    c = connector(sql_target, tables=["INVOICES", "é"])
    try:
        assert rows(c, "SELECT count(*) AS n FROM Invoices") == [{"n": 3}]
        refused(c, q('SELECT v FROM "É"'), "É")
    finally:
        c.close()


# ------------------------------------------------------------------ PostgreSQL-specific attacks

PG = [
    ('SELECT * FROM U&"secr\\0065ts"', "secrets"),
    ('SELECT * FROM "SECRETS"', "SECRETS"),
    ("SELECT * FROM {schema}.secrets", "{schema}.secrets"),
    ('SELECT * FROM "{schema}"."secrets"', "{schema}.secrets"),
    ("SELECT * FROM {schema}.invoices i JOIN {schema}.secrets s ON true", "{schema}.secrets"),
    ("SELECT * FROM (TABLE secrets) t", "secrets"),
    ("SELECT * FROM ONLY secrets", "secrets"),
    ("SELECT row_to_json((SELECT s FROM secrets s)) AS x", "secrets"),
    ("SELECT * FROM invoices i CROSS JOIN LATERAL (SELECT v FROM secrets) s", "secrets"),
    ("SELECT ARRAY(SELECT v FROM secrets) AS a", "secrets"),
    ("SELECT unnest(ARRAY(SELECT v FROM secrets)) AS a", "secrets"),
    ("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets", "secrets"),
    ("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT v FROM secrets) SELECT * FROM a",
     "b"),
    ("SELECT relname FROM pg_class", "pg_class"),
    ("SELECT relname FROM pg_catalog.pg_class", "pg_catalog.pg_class"),
    ("SELECT rolpassword FROM pg_catalog.pg_authid", "pg_catalog.pg_authid"),
    ("SELECT * FROM pg_stats", "pg_stats"),
    ("SELECT table_name FROM information_schema.tables", "information_schema.tables"),
    ("SELECT column_name FROM information_schema.columns", "information_schema.columns"),
    ("SELECT * FROM pg_toast.pg_toast_1", "pg_toast.pg_toast_1"),
    ("SELECT * FROM pg_temp.secrets", "pg_temp.secrets"),
    ("SELECT * FROM postgres.{schema}.invoices", "db.schema.table"),
    # functions that run SQL, read files, settings, objects or other databases
    ("SELECT query_to_xml('select * from secrets', true, true, '') AS x", "query_to_xml"),
    ("SELECT pg_catalog.query_to_xml('select v from secrets', true, true, '') AS x",
     "query_to_xml"),
    ("SELECT query_to_xml_and_xmlschema('select 1', true, true, '') AS x",
     "query_to_xml_and_xmlschema"),
    ("SELECT table_to_xml('secrets', true, true, '') AS x", "table_to_xml"),
    ("SELECT cursor_to_xml('c', 1, true, true, '') AS x", "cursor_to_xml"),
    ("SELECT database_to_xml(true, true, '') AS x", "database_to_xml"),
    ("SELECT schema_to_xml('{schema}', true, true, '') AS x", "schema_to_xml"),
    ("SELECT xpath('/a', '<a/>') AS x", "xpath"),
    ("SELECT pg_read_file('/etc/passwd') AS x", "pg_read_file"),
    ("SELECT pg_read_binary_file('/etc/passwd') AS x", "pg_read_binary_file"),
    ("SELECT pg_ls_dir('.') AS x", "pg_ls_dir"),
    ("SELECT pg_stat_file('.') AS x", "pg_stat_file"),
    ("SELECT lo_get(1) AS x", "lo_get"),
    ("SELECT lo_import('/etc/passwd') AS x", "lo_import"),
    ("SELECT dblink('dbname=postgres', 'select v from secrets') AS x", "dblink"),
    ("SELECT current_setting('search_path') AS x", "current_setting"),
    ("SELECT set_config('search_path', 'public', true) AS x", "set_config"),
    ("SELECT pg_sleep(3) AS x", "pg_sleep"),
    ("SELECT nextval('s') AS x", "nextval"),
    ("SELECT txid_current() AS x", "txid_current"),
    ("SELECT pg_advisory_lock(1) AS x", "pg_advisory_lock"),
    ("SELECT to_regclass('secrets') AS x", "to_regclass"),
    ("SELECT has_table_privilege('secrets', 'select') AS x", "has_table_privilege"),
    ("SELECT pg_get_viewdef('v_secrets') AS x", "pg_get_viewdef"),
    ("SELECT pg_relation_size('secrets') AS x", "pg_relation_size"),
    ("SELECT version() AS x", "version"),
    ("SELECT current_database() AS x", "current_database"),
    ("SELECT json_populate_record(NULL::invoices, '{}') AS x", "json_populate_record"),
    ("SELECT public.lower('x') AS x", "public.lower"),
    ('SELECT "{schema}".lower(\'x\') AS x', "{schema}.lower"),
    ("SELECT current_user AS x", "current_user"),
    ("SELECT session_user AS x", "session_user"),
    ("SELECT current_schema AS x", "current_schema"),
    # attribute notation: x.f and (x).f call f(x) when x has no field f
    ("SELECT (subject).pg_read_file AS x FROM invoices", "pg_read_file"),
    ("SELECT ('/etc/passwd'::text).pg_read_file AS x", "pg_read_file"),
    ("SELECT g.pg_read_file AS x FROM unnest(ARRAY['/etc/passwd']) AS g", "pg_read_file"),
    ("SELECT j.current_setting AS x FROM json_array_elements_text('[\"search_path\"]') j",
     "current_setting"),
    ("SELECT ('secrets'::text).to_regclass AS x", "to_regclass"),
    ("SELECT (('secrets'::text)).pg_table_size AS x", "pg_table_size"),
    ("SELECT i.pg_column_size AS x FROM invoices i", "pg_column_size"),
    # casts and syntax that reach the catalog or cannot be checked
    ("SELECT 'secrets'::regclass::oid AS x", "regclass"),
    ("SELECT CAST('lower' AS regproc) AS x", "regproc"),
    ("SELECT NULL::secrets AS x", "type 'secrets'"),
    ("SELECT 1 OPERATOR(public.+) 1 AS x", "operator"),
    ("SELECT * FROM invoices TABLESAMPLE SYSTEM (100)", "TABLESAMPLE"),
    ("SELECT * FROM XMLTABLE('/a' PASSING '<a/>' COLUMNS x int)", "XMLTABLE"),
    ("SELECT xmlelement(name a) AS x", "XML"),
]


@PG_ONLY
@pytest.mark.parametrize(("sql", "name"), PG)
def test_postgres_specific_routes_are_refused(shop: SqlConnector, sql_target: SqlTarget,
                                              sql: str, name: str) -> None:
    assert sql_target.schema
    refused(shop, q(sql.replace("{schema}", sql_target.schema)),
            name.replace("{schema}", sql_target.schema))


@PG_ONLY
def test_postgres_another_schema_with_a_listed_name_is_refused(
    shop: SqlConnector, sql_target: SqlTarget
) -> None:
    other = f"kf_other_{uuid.uuid4().hex[:8]}"
    sql_target.execute(f'CREATE SCHEMA "{other}"',
                       f'CREATE TABLE "{other}".invoices (v TEXT)',
                       f"INSERT INTO \"{other}\".invoices (v) VALUES ('{SECRET}')")
    try:
        refused(shop, q(f"SELECT v FROM {other}.invoices"), f"{other}.invoices")
    finally:
        sql_target.execute(f'DROP SCHEMA "{other}" CASCADE')


@PG_ONLY
def test_postgres_names_resolve_the_way_the_server_resolves_them(sql_target: SqlTarget) -> None:
    """A listed 'pg_class' in the connection's schema: unqualified, the server would read
    pg_catalog.pg_class (searched first), so that is refused; qualified, it is the table."""
    build(sql_target)
    sql_target.execute("CREATE TABLE pg_class (n INTEGER)",
                       f"INSERT INTO {sql_target.schema}.pg_class VALUES (7)")
    c = connector(sql_target, tables=["invoices", "pg_class"])
    try:
        refused(c, q("SELECT * FROM pg_class"), "pg_catalog.pg_class")
        assert rows(c, f"SELECT n FROM {sql_target.schema}.pg_class") == [{"n": 7}]
    finally:
        c.close()


@PG_ONLY
def test_postgres_case_and_quoting_are_exact(sql_target: SqlTarget) -> None:
    """Unquoted names fold to lower case, quoted ones stay exact: "Orders" is another table."""
    build(sql_target)
    sql_target.execute('CREATE TABLE "Orders" (v TEXT)',
                       f"INSERT INTO \"Orders\" (v) VALUES ('{SECRET}')")
    c = connector(sql_target, tables=ALLOWED)
    try:
        refused(c, q('SELECT v FROM "Orders"'), "Orders")
        assert rows(c, "SELECT count(*) AS n FROM ORDERS") == [{"n": 2}]
    finally:
        c.close()


@PG_ONLY
def test_postgres_a_listed_view_may_read_unlisted_tables(sql_target: SqlTarget) -> None:
    """Documented difference: PostgreSQL views run with their owner's privileges, so listing
    a view exposes what the view exposes (and nothing more)."""
    build(sql_target)
    c = connector(sql_target, tables=["invoices", "v_invoices"])
    try:
        assert rows(c, "SELECT count(*) AS n FROM v_invoices") == [{"n": 3}]
        refused(c, q("SELECT * FROM v_secrets"), "v_secrets")
        refused(c, q("SELECT * FROM v_invoices, secrets"), "secrets")
    finally:
        c.close()


@PG_ONLY
def test_postgres_an_unlisted_view_is_refused(shop: SqlConnector,
                                              sql_target: SqlTarget) -> None:
    """PostgreSQL checks the names the statement uses: a view must itself be listed."""
    refused(shop, q("SELECT * FROM v_invoices"), "v_invoices")


# ------------------------------------------------------------------ legitimate queries work

def test_legitimate_queries_over_allowed_tables(shop: SqlConnector,
                                                sql_target: SqlTarget) -> None:
    sqlite = sql_target.kind == "sqlite"
    assert rows(shop, "SELECT o.ref, i.subject FROM orders o JOIN invoices i "
                      "ON i.message_id = 'm-' || o.id ORDER BY o.ref") == [
        {"ref": "r-1", "subject": "Invoice December"},
        {"ref": "r-2", "subject": "Invoice January"}]
    assert rows(shop, "WITH big AS (SELECT * FROM invoices WHERE amount > :a) "
                      "SELECT count(*) AS n FROM big", a=15) == [{"n": 2}]
    assert rows(shop, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                      "WHERE x < 3) SELECT sum(x) AS s FROM c") == [{"s": 6}]
    assert rows(shop, "SELECT subject FROM invoices WHERE amount = "
                      "(SELECT max(amount) FROM invoices)") == [{"subject": "Invoice February"}]
    assert rows(shop, "SELECT count(*) AS n FROM invoices i WHERE EXISTS "
                      "(SELECT 1 FROM orders o WHERE 'm-' || o.id = i.message_id)") == [{"n": 2}]
    assert rows(shop, "SELECT status, count(*) AS n, sum(amount) AS total FROM invoices "
                      "GROUP BY status HAVING count(*) > 1") == [
        {"status": "new", "n": 3, "total": 60 if sqlite else "60"}]
    assert rows(shop, "SELECT lower(subject) AS l, upper(status) AS u, length(subject) AS n, "
                      "coalesce(note, 'none') AS c, replace(ref, 'r', 'R') AS r, "
                      "substr(ref, 3) AS tail, abs(-id) AS a "
                      "FROM invoices, orders WHERE message_id = 'm-1' ORDER BY id") == [
        {"l": "invoice december", "u": "NEW", "n": 16, "c": "first", "r": "R-1",
         "tail": "1", "a": 1},
        {"l": "invoice december", "u": "NEW", "n": 16, "c": "none", "r": "R-2",
         "tail": "2", "a": 2}]
    assert rows(shop, "SELECT CASE WHEN amount > 15 THEN 'big' ELSE 'small' END AS size, "
                      "row_number() OVER (ORDER BY amount DESC) AS rank FROM invoices "
                      "ORDER BY rank LIMIT 2 OFFSET 1") == [
        {"size": "big", "rank": 2}, {"size": "small", "rank": 3}]
    assert rows(shop, "SELECT ref AS x FROM orders UNION SELECT message_id FROM invoices "
                      "ORDER BY x") == [{"x": v} for v in ("m-1", "m-2", "m-3", "r-1", "r-2")]
    assert rows(shop, "SELECT DISTINCT status FROM invoices WHERE subject LIKE :p",
                p="Invoice %") == [{"status": "new"}]
    assert rows(shop, "SELECT 1 AS one, NULL AS empty") == [{"one": 1, "empty": None}]
    # A list of values bound as one JSON parameter, the usual way to say "IN (...)".
    listed = ("SELECT message_id FROM invoices WHERE message_id IN "
              "(SELECT value FROM json_each(:ids)) ORDER BY message_id" if sqlite else
              "SELECT message_id FROM invoices WHERE message_id IN (SELECT "
              "jsonb_array_elements_text(CAST(:ids AS jsonb))) ORDER BY message_id")
    assert rows(shop, listed, ids='["m-1", "m-3"]') == [{"message_id": "m-1"},
                                                        {"message_id": "m-3"}]


def test_date_functions_work(shop: SqlConnector, sql_target: SqlTarget) -> None:
    if sql_target.kind == "sqlite":
        got = rows(shop, "SELECT date('2024-03-05', '+1 day') AS d, "
                         "strftime('%Y', '2024-03-05') AS y, "
                         "julianday('2024-03-06') - julianday('2024-03-05') AS days, "
                         "datetime('now') IS NOT NULL AS now_ok")
        assert got == [{"d": "2024-03-06", "y": "2024", "days": 1.0, "now_ok": 1}]
    else:
        got = rows(shop, "SELECT date_trunc('month', TIMESTAMP '2024-03-05 10:00') AS m, "
                         "extract(year FROM DATE '2024-03-05') AS y, "
                         "DATE '2024-03-05' + INTERVAL '1 day' AS d, "
                         "CAST('2024-03-05' AS date) AS c, now() IS NOT NULL AS now_ok, "
                         "current_date IS NOT NULL AS today_ok, "
                         "to_char(DATE '2024-03-05', 'YYYY-MM') AS t, "
                         "amount::text AS a FROM invoices WHERE message_id = 'm-1'")
        assert got == [{"m": "2024-03-01T00:00:00", "y": "2024", "d": "2024-03-06T00:00:00",
                        "c": "2024-03-05", "now_ok": True, "today_ok": True,
                        "t": "2024-03", "a": "10"}]


@PG_ONLY
def test_postgres_qualified_names_of_the_connection_schema_work(
    shop: SqlConnector, sql_target: SqlTarget
) -> None:
    schema = sql_target.schema
    assert rows(shop, f'SELECT count(*) AS n FROM {schema}.invoices i JOIN "{schema}".orders o '
                      "ON true") == [{"n": 6}]
    assert rows(shop, "SELECT pg_catalog.lower(subject) AS s, subject::varchar(7) AS v, "
                      "jsonb_build_object('id', message_id) ->> 'id' AS j, "
                      "string_agg(ref, ',' ORDER BY ref) AS refs "
                      "FROM invoices CROSS JOIN orders WHERE message_id = 'm-1' "
                      "GROUP BY subject, message_id") == [
        {"s": "invoice december", "v": "Invoice", "j": "m-1", "refs": "r-1,r-2"}]
    # Attribute notation on real fields and harmless names keeps working.
    assert rows(shop, "SELECT t.name, (t).name AS n2, t.date FROM (SELECT ref AS name, "
                      "DATE '2024-01-02' AS date FROM orders WHERE id = 1) t") == [
        {"name": "r-1", "n2": "r-1", "date": "2024-01-02"}]
    assert rows(shop, "SELECT e.key, (e).value FROM jsonb_each('{\"a\": 1}'::jsonb) e") == [
        {"key": "a", "value": 1}]


# ------------------------------------------------------------------ the row tools

HOSTILE_TABLES = ["'secrets'", "main.secrets", "SECRETS", "secrets ", " invoices", "invoices ",
                  "INVOICES", '"invoices"', "invoices; DROP TABLE secrets", "sec\x00rets",
                  "invoices\x00", "\ud800", "inv\udfffoices", "x" * 10_000_000, "{schema}.secrets"]
ROW_CALLS = [
    ("get", None), ("insert", {"subject": "x"}), ("update", {"subject": "x"}),
    ("upsert", {"subject": "x"}), ("delete", None)]


@pytest.mark.parametrize("table", HOSTILE_TABLES, ids=lambda t: ascii(t)[:24])
@pytest.mark.parametrize("listed", [True, False], ids=["allow-list", "no-allow-list"])
def test_row_tools_refuse_hostile_table_names_cleanly(
    sql_target: SqlTarget, table: str, listed: bool,
) -> None:
    """Every row tool, with and without an allow-list: a typed refusal (never a crash, a raw
    driver error or a UnicodeEncodeError), a short clean message, nothing written."""
    build(sql_target)
    c = connector(sql_target, tables=ALLOWED) if listed else connector(sql_target)
    table = table.replace("{schema}", sql_target.schema or "main")
    key = {"k": "root"} if "secrets" in table else {"message_id": "m-1"}
    try:
        for tool, values in ROW_CALLS:
            call = get(table, key) if tool == "get" else m(tool, table, key, values)
            with pytest.raises((PermissionDenied, PermanentError, PreconditionError)) as info:
                c.call(call)
            assert_clean(info.value, echoed=table)
            if tool != "get":
                detail = c.reconcile(call).detail or ""
                assert SECRET not in detail
                detail.encode("utf-8")
    finally:
        c.close()
    assert sql_target.scalar("SELECT v FROM secrets") == SECRET
    assert sql_target.scalar("SELECT count(*) FROM invoices") == 3
    assert sql_target.scalar("SELECT count(*) FROM invoices WHERE subject = 'x'") == 0


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ({"message_id\x00": "m-1"}, {"subject": "x"}),
        ({"\ud800": "m-1"}, {"subject": "x"}),
        ({"m" * 1_000_000: "m-1"}, {"subject": "x"}),
        ({"message_id": "m-\ud800"}, {"subject": "x"}),
        ({"message_id": "m-9"}, {"subject\x00": "x"}),
        ({"message_id": "m-9"}, {"subject": "x\udfff"}),
        ({"message_id": "m-9"}, {"data": {"k\ud800": [1]}}),
        ({"message_id": "m-9"}, {"s" * 300: "x"}),
    ],
    ids=lambda v: ascii(v)[:30],
)
def test_row_tools_refuse_hostile_columns_and_values_cleanly(
    shop: SqlConnector, sql_target: SqlTarget, key: dict[str, Any], values: dict[str, Any],
) -> None:
    for tool in ("insert", "upsert", "update"):
        with pytest.raises(PermanentError) as info:
            shop.call(m(tool, "invoices", key, values))
        assert_clean(info.value)
    assert sql_target.scalar("SELECT count(*) FROM invoices") == 3


@pytest.mark.parametrize(
    "params",
    [{"sql": "SELECT :p AS x", "params": {"p": "\ud800"}},
     {"sql": "SELECT :p AS x", "params": {"p" * 1_000_000: 1}},
     {"sql": "SELECT '\ud800' AS x"},
     {"sql": "SELECT 1 AS x -- \x00\n FROM secrets"},
     {"sql": "SELECT 1 AS x", "params": {"\ud800": 1}}],
    ids=lambda p: ascii(p)[:30],
)
def test_query_refuses_text_no_database_can_take(shop: SqlConnector,
                                                 params: dict[str, Any]) -> None:
    call = ToolCall("query", params, timeout=5.0)
    for attempt in (shop.validate, shop.call):
        with pytest.raises(PermanentError) as info:
            attempt(call)
        assert_clean(info.value)
    assert shop.describe(call).encode("utf-8")


def test_row_tools_work_on_allowed_tables(shop: SqlConnector, sql_target: SqlTarget) -> None:
    """The SQLite authorizer is installed around the row tools too; they still work."""
    assert shop.call(get("invoices", {"message_id": "m-1"}))["row"]["subject"] == \
        "Invoice December"
    ins = m("insert", "invoices", {"message_id": "m-9"}, {"subject": "New", "data": {"a": [1]}})
    assert shop.call(ins)["rowCount"] == 1
    assert shop.call(ins)["alreadyPresent"] is True
    assert shop.reconcile(ins).outcome.value == "applied"
    assert shop.call(m("update", "invoices", {"message_id": "m-9"}, {"subject": "Newer"}))[
        "row"]["subject"] == "Newer"
    assert shop.call(m("upsert", "orders", {"ref": "r-3"}, {"id": 3, "note": "n"}))[
        "rowCount"] == 1
    assert shop.call(m("delete", "invoices", {"message_id": "m-9"}))["rowCount"] == 1
    assert sql_target.scalar("SELECT v FROM secrets") == SECRET


@SQLITE_ONLY
def test_sqlite_row_tools_allow_the_databases_own_triggers(sql_target: SqlTarget) -> None:
    """A trigger, AUTOINCREMENT and a cascading foreign key of the database are its owner's
    design: a mutation of an allowed table may set them off (they touch unlisted tables)."""
    build(sql_target)
    sql_target.execute(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT UNIQUE)",
        "CREATE TABLE note_tags (note_id INTEGER REFERENCES notes(id) ON DELETE CASCADE, t TEXT)",
        "CREATE TRIGGER notes_log AFTER INSERT ON notes BEGIN "
        "INSERT INTO logs (line) VALUES ('note ' || NEW.body); END",
    )
    c = connector(sql_target, tables=["notes"])
    try:
        row = c.call(m("insert", "notes", {"body": "hello"}, {}))["row"]
        sql_target.execute(f"INSERT INTO note_tags VALUES ({row['id']}, 't')")
        assert c.call(m("delete", "notes", {"body": "hello"}))["rowCount"] == 1
    finally:
        c.close()
    assert sql_target.scalar("SELECT line FROM logs") == "note hello"
