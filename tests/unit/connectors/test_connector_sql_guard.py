"""sql.query accepts exactly one read-only SELECT (SPEC §4: reads cannot write)."""

from __future__ import annotations

import pytest

from keepflow.connectors.sql_guard import check_select
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


def test_binds_names_and_rewritten_sql() -> None:
    checked = check_select(
        "SELECT a::text, ':notabind' FROM Invoices -- :alsonot\nWHERE id = :id AND x = :x;",
        sqlite=False,
    )
    assert checked.binds == {"id", "x"}
    assert "invoices" in checked.names
    assert "--" not in checked.sql
    assert "'\\:notabind'" in checked.sql  # escaped for sqlalchemy.text
    assert not checked.sql.endswith(";")
