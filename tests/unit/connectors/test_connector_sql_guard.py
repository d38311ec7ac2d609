"""sql.query accepts exactly one read-only SELECT (SPEC §4: reads cannot write)."""

from __future__ import annotations

import pytest

from keepflow.connectors.sql.allow import AllowList
from keepflow.connectors.sql.allow_pg import inspect_statement, server_sql
from keepflow.connectors.sql.guard import check_select
from keepflow.errors import PermanentError


@pytest.mark.parametrize("sqlite", [True, False])
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM invoices",
        "  select id, subject from invoices where id = :id ;  ",
        "WITH recent AS (SELECT * FROM invoices) SELECT * FROM recent",
        "(SELECT 1)",
        "SELECT replace(subject, 'a', 'b') FROM invoices",
        "SELECT 'DROP TABLE x; DELETE' AS harmless",
        'SELECT "update" FROM t',
        "SELECT 1 -- ; DROP TABLE invoices",
        "SELECT 1 /* ; DELETE FROM invoices */",
        "SELECT last_update, deleted_at FROM t",
    ],
)
def test_accepted(sql: str, sqlite: bool) -> None:
    check_select(sql, sqlite=sqlite)


@pytest.mark.parametrize("sqlite", [True, False])
@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT 1; DROP TABLE invoices", "single statement"),
        ("SELECT 1;DROP TABLE invoices;", "single statement"),
        ("SELECT 1 /* */; DELETE FROM invoices", "single statement"),
        ("SELECT '1'';'; DROP TABLE x", "single statement"),
        ("DELETE FROM invoices", "must start with SELECT"),
        ("PRAGMA table_info(invoices)", "must start with SELECT"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "must start with SELECT"),
        ("WITH d AS (DELETE FROM invoices RETURNING *) SELECT * FROM d", "DELETE"),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT"),
        ("WITH x AS (SELECT 1) REPLACE INTO t SELECT * FROM x", "REPLACE"),
        ("SELECT * INTO newtable FROM invoices", "INTO"),
        ("SELECT * FROM t FOR UPDATE", "UPDATE"),
        ("SELECT $$;$$", "'$'"),
        ("SELECT * FROM t WHERE id = ?", "'?' placeholders"),
        ("SELECT 'unterminated", "unterminated"),
        ("SELECT /* unterminated", "unterminated"),
        ("SELECT /* /* nested */ */ 1", "nested"),
        ("", "is empty"),
        (" ; ", "is empty"),
        ("VALUES (1)", "must start with SELECT"),
    ],
)
def test_rejected(sql: str, fragment: str, sqlite: bool) -> None:
    with pytest.raises(PermanentError, match=r"params\.sql") as info:
        check_select(sql, sqlite=sqlite)
    assert fragment in info.value.message


def test_sqlite_bracket_and_backtick_identifiers_cannot_hide_a_statement() -> None:
    # SQLite reads [a'] as an identifier, so the ';' after it is real.
    with pytest.raises(PermanentError, match="single statement"):
        check_select("SELECT [a'] ; DROP TABLE t; --'", sqlite=True)
    with pytest.raises(PermanentError, match="single statement"):
        check_select("SELECT `a'` ; DROP TABLE t; --'", sqlite=True)


def test_postgres_escape_strings_cannot_hide_a_statement() -> None:
    # In E'...' a backslash escapes the quote: the string ends later than a naive lexer thinks.
    with pytest.raises(PermanentError, match="single statement"):
        check_select("SELECT E'\\' ' ; DROP TABLE t; -- '", sqlite=False)
    check_select("SELECT E'it\\'s; fine'", sqlite=False)


def test_binds_and_rewritten_sql() -> None:
    checked = check_select(
        "SELECT a::text, ':notabind' FROM Invoices -- :alsonot\nWHERE id = :id AND x = :x;",
        sqlite=False,
    )
    assert checked.binds == {"id", "x"}
    assert "--" not in checked.sql
    assert "'\\:notabind'" in checked.sql  # escaped for sqlalchemy.text
    assert not checked.sql.endswith(";")


@pytest.mark.parametrize("sqlite", [True, False])
@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        # A C parser stops at NUL: what follows would reach the database unchecked.
        ("SELECT 1 -- \x00\n; DROP TABLE invoices", "NUL"),
        ("SELECT '\x00'", "NUL"),
        ("SELECT '\ud800'", "surrogate"),
        ("SELECT 1 /* \udfff */", "surrogate"),
    ],
)
def test_text_no_parser_can_read_is_rejected(sql: str, fragment: str, sqlite: bool) -> None:
    with pytest.raises(PermanentError, match=r"params\.sql") as info:
        check_select(sql, sqlite=sqlite)
    assert fragment in info.value.message
    info.value.message.encode("utf-8")  # the message itself is always encodable


# ---------------------------------------------------------------- the PostgreSQL allow-list walk
# (pure: the parse tree alone; the catalog part runs against a real server in
# tests/security/test_sql_allowlist.py)

ALLOW = AllowList("shop", frozenset({"invoices", "orders"}))


def test_server_text_is_what_psycopg_sends() -> None:
    assert server_sql("SELECT '5%%', %(a)s, %(b)s, %(a)s LIMIT %(kf_limit)s") == \
        "SELECT '5%', $1, $2, $1 LIMIT $3"


@pytest.mark.parametrize(
    ("sql", "relations"),
    [
        ("SELECT * FROM invoices i JOIN orders o ON true", [(None, "invoices"), (None, "orders")]),
        ("SELECT * FROM s.invoices", [("s", "invoices")]),
        ("SELECT * FROM INVOICES", [(None, "invoices")]),
        ('SELECT * FROM U&"inv\\006fices"', [(None, "invoices")]),
        # CTE names are scoped as the server scopes them
        ("WITH secrets AS (SELECT * FROM invoices) SELECT * FROM secrets", [(None, "invoices")]),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r", []),
        ("SELECT (SELECT count(*) FROM orders), lower(subject) FROM invoices",
         [(None, "orders"), (None, "invoices")]),
    ],
)
def test_walk_collects_the_relations_the_server_will_read(
    sql: str, relations: list[tuple[str | None, str]]
) -> None:
    assert list(inspect_statement(sql, ALLOW).relations) == relations


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT * FROM secrets", "table 'secrets'"),
        ('SELECT * FROM "Invoices"', "table 'Invoices'"),
        # non-recursive: the CTE is not visible in its own body, that name is the table
        ("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets", "table 'secrets'"),
        ("SELECT * FROM pg_catalog.pg_class", "catalog"),
        ("SELECT query_to_xml('select 1', true, true, '')", "function 'query_to_xml'"),
        ("SELECT public.lower('x')", "function 'public.lower'"),
        ("SELECT current_user", "function 'current_user'"),
        ("SELECT 'x'::regclass", "type 'regclass'"),
        ("SELECT * FROM XMLTABLE('/a' PASSING '<a/>' COLUMNS x int)", "XMLTABLE"),
        ("SELECT 1 OPERATOR(public.+) 1", "operator"),
        ("SELECT 1; SELECT 2", "single statement"),
        ("SELECT FROM WHERE", "syntax error"),
        ("SELECT " + " || ".join(["'a'"] * 600), "nested too deeply"),
    ],
)
def test_walk_refuses_what_is_not_allowed(sql: str, fragment: str) -> None:
    with pytest.raises(PermanentError) as info:
        inspect_statement(sql, ALLOW)
    assert fragment in info.value.message


def test_attribute_notation_names_go_to_the_catalog() -> None:
    """`(x).f` may be f(x): harmless names pass, unknown ones are left for pg_proc to decide."""
    found = inspect_statement("SELECT t.name, t.ref, (t.ref).pg_read_file FROM orders t", ALLOW)
    assert found.attributes == ("ref", "pg_read_file")
